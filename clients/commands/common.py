"""What every client command shares: how to reach the suite, and how to answer."""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

from clients.client import DEFAULT_TIMEOUT, CvhClient
from wire.channels import DEFAULT_SERVER, Tls


# -- argument types: each turns a flag's text into a value or a usage error (exit 2) that says what is allowed

def whole_number(low: int, high: int | None = None, zero_means: str = "") -> Callable[[str], int]:
    """An argparse type for integers from ``low`` (to ``high``); ``zero_means`` says what 0 stands for."""
    allowed = f"a whole number from {low:,}" + (f" to {high:,}" if high is not None else "") \
        + (f" (0: {zero_means})" if zero_means else "")

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value:,} is out of range: give {allowed}")
        return value
    return parse


COUNT_SUFFIXES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def count(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for a count from ``low`` (to ``high``), also written with a suffix: 500k, 10m, 1.5m."""
    allowed = f"a whole number from {low:,}" + (f" to {high:,}" if high is not None else "") \
        + " (e.g. 20000, 500k, 10m)"

    def parse(text: str) -> int:
        cleaned = text.strip().lower().replace("_", "").replace(",", "")
        scale = COUNT_SUFFIXES.get(cleaned[-1:], 1)
        digits = cleaned[:-1] if scale > 1 else cleaned
        try:  # Decimal, so that 1.5m is exact; the result must be whole (2.5k yes, 1.0005k no)
            amount = Decimal(digits) * scale
        except InvalidOperation:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not amount.is_finite() or amount != amount.to_integral_value():
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        value = int(amount)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value:,} is out of range: give {allowed}")
        return value
    return parse


def seconds(low: float = 0.0, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite number of seconds above ``low`` (or from it, when ``inclusive``)."""
    allowed = f"a number of seconds {'from' if inclusive else 'above'} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {allowed}")
        return value
    return parse


def fraction(text: str) -> float:
    """An argparse type for a share from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def existing_file(text: str) -> str:
    """An argparse type for a file to read: it must exist (and not be a folder)."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file")
    return str(path)


def existing_path(text: str) -> str:
    """An argparse type for a file or a folder (of Parquet part files) to read: it must exist."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name a file or a folder")
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return str(path)


def point_in_time(text: str) -> int:
    """An argparse type for a date or an RFC 3339 time (no offset: UTC), as microseconds since the epoch."""
    from clients.tabular import BadRow, _parse_time

    try:
        return _parse_time(text.strip(), "time")
    except BadRow:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or an RFC 3339 time, e.g. 2026-11-30 or "
                                         "2026-11-30T18:00:00Z") from None


def past_point_in_time(text: str) -> int:
    """point_in_time, at most 5 minutes ahead of now (the registry's allowance for clock skew)."""
    from clients.tabular import MAX_FUTURE_US

    moment = point_in_time(text)
    if moment > time.time_ns() // 1000 + MAX_FUTURE_US:
        raise argparse.ArgumentTypeError(f"{text} is more than 5 minutes in the future (the allowance for clock skew)")
    return moment


def png_file(text: str) -> str:
    """An argparse type for a picture to write: a name ending in .png."""
    if not text.lower().endswith(".png") or len(text) <= len(".png"):
        raise argparse.ArgumentTypeError(f"{text!r}: name a .png file, e.g. holdout.png")
    return text


def database_url(text: str) -> str:
    """An argparse type for a SQLAlchemy URL (checked for its form only; nothing is opened)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(text)
    except ArgumentError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a database URL, e.g. sqlite:///.cvh/cvh.db or "
                                         "postgresql://user@host:5432/cvh") from None
    return text


positive_int = whole_number(1)
non_negative_int = whole_number(0)
port_number = whole_number(1, 65_535)
seed_number = whole_number(0, 2**63 - 1)
positive_seconds = seconds(0.0)
non_negative_seconds = seconds(0.0, inclusive=True)


def export_target(command: argparse.ArgumentParser) -> None:
    """The PATH and --format of a command that writes a table (cvh export, cvh run export)."""
    command.add_argument("path", metavar="PATH", help="the folder (parquet) or file (csv, jsonl) to write")
    command.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet",
                         help="output format (default parquet)")


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
    group.add_argument("--tls-ca", type=existing_file, default=os.environ.get("CVH_TLS_CA"), metavar="PEM",
                       help="CA certificate that signed the server's (env CVH_TLS_CA; implies --tls)")
    group.add_argument("--tls-cert", type=existing_file, default=os.environ.get("CVH_TLS_CLIENT_CERT"), metavar="PEM",
                       help="client certificate for mutual TLS (env CVH_TLS_CLIENT_CERT)")
    group.add_argument("--tls-key", type=existing_file, default=os.environ.get("CVH_TLS_CLIENT_KEY"), metavar="PEM",
                       help="key of --tls-cert (env CVH_TLS_CLIENT_KEY)")
    group.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
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
