"""What every client command shares: how to reach the suite, and how to answer."""

from __future__ import annotations

import argparse
import os

from clients.client import DEFAULT_TIMEOUT, CvhClient
from wire.channels import DEFAULT_SERVER, Tls


def client_options() -> argparse.ArgumentParser:
    """Flags of every command that talks to a running suite (a parent parser)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument("--server", default=os.environ.get("CVH_SERVER"), metavar="HOST:PORT",
                       help=f"where the suite listens (env CVH_SERVER, default {DEFAULT_SERVER}); "
                            "dns:///name:port resolves every address")
    group.add_argument("--token", default=os.environ.get("CVH_TOKEN"), metavar="TOKEN",
                       help="bearer token (env CVH_TOKEN; prefer the environment: flags show in `ps`)")
    group.add_argument("--tls", action="store_true", default=os.environ.get("CVH_TLS") in ("1", "true", "yes"),
                       help="use TLS, verifying the server against the system's CAs or --tls-ca (env CVH_TLS=1)")
    group.add_argument("--tls-ca", default=os.environ.get("CVH_TLS_CA"), metavar="PEM",
                       help="CA certificate that signed the server's (env CVH_TLS_CA; implies --tls)")
    group.add_argument("--tls-cert", default=os.environ.get("CVH_TLS_CLIENT_CERT"), metavar="PEM",
                       help="client certificate for mutual TLS (env CVH_TLS_CLIENT_CERT)")
    group.add_argument("--tls-key", default=os.environ.get("CVH_TLS_CLIENT_KEY"), metavar="PEM",
                       help="key of --tls-cert (env CVH_TLS_CLIENT_KEY)")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"deadline of each single call (default {DEFAULT_TIMEOUT:g})")
    options.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")
    return options


def connect(args: argparse.Namespace) -> CvhClient:
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = Tls(args.tls_ca, args.tls_cert, args.tls_key)
    return CvhClient(server(args), tls=tls, token=args.token, timeout=args.timeout)


def server(args: argparse.Namespace) -> str:
    """--server, else CVH_SERVER, else the default address."""
    return getattr(args, "server", None) or DEFAULT_SERVER


def enum_word(enum_type, value: int) -> str:
    """STAKEHOLDER_ROLE_BUYER -> buyer; for people."""
    name = enum_type.Name(value) if value in enum_type.values() else str(value)
    prefix = os.path.commonprefix([n for n in enum_type.keys()])
    return name[len(prefix):].lower().replace("_", " ") if name.startswith(prefix) else name
