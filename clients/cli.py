"""The ``cvh`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc

from clients.batch import BatchUnavailable
from clients.commands import adoption, batch, decisions, demo, hierarchy, outcomes, purchases, registry, scoring
from clients.commands.common import (client_options, database_url, existing_file, non_negative_int,
                                     non_negative_seconds, port_number, positive_int, positive_seconds, server,
                                     whole_number)
from clients.errors import CvhError
from clients.parquet import ParquetError
from clients.tabular import InputError
from services.common.config import DEFAULT_LISTEN, MAX_RETENTION_DAYS, SERVICE_NAMES, ConfigError


def _serve(args: argparse.Namespace) -> int:
    from services.common import logs
    from services.common.config import ServerConfig, env_number
    from services.common.server import exit_code, serve

    unknown = [s for s in args.services if s not in SERVICE_NAMES]
    if unknown:
        print(f"cvh serve: unknown service {unknown[0]!r}; choose from {', '.join(SERVICE_NAMES)}", file=sys.stderr)
        return 2
    services = tuple(dict.fromkeys(args.services)) or SERVICE_NAMES
    config = ServerConfig.from_env(services=services, listen=args.listen, database_url=args.database_url,
                                   metrics_port=args.metrics_port, grace_seconds=args.grace,
                                   log_level=args.log_level, tls_cert_file=args.tls_cert, tls_key_file=args.tls_key,
                                   tls_client_ca_file=args.tls_client_ca, tokens_file=args.tokens_file,
                                   insecure=args.insecure or None,
                                   max_concurrent_rpcs=args.max_concurrent_rpcs, health_listen=args.health_listen,
                                   database_pool_size=args.database_pool_size, max_bulk_streams=args.max_bulk_streams,
                                   stream_stall_seconds=args.stream_stall_seconds, max_watchers=args.max_watchers,
                                   feed_retention_seconds=args.feed_retention_seconds,
                                   telemetry_retention_days=args.telemetry_retention_days,
                                   migrate=False if args.no_migrate else None, snapshot_dir=args.snapshot_dir)
    logs.configure(config.log_level)
    workers = args.workers if args.workers is not None else env_number("CVH_WORKERS", int, 1)
    if workers != 1:
        from services.common.workers import serve_workers
        return exit_code(lambda: serve_workers(config, workers), "cvh serve")
    return exit_code(lambda: asyncio.run(serve(config)), "cvh serve")


def _db_upgrade(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from services.common import db
    from services.common.config import default_database_url

    database_url = args.database_url or os.environ.get("CVH_DATABASE_URL") or default_database_url()
    try:
        db.upgrade(db.create_engine(database_url), args.revision)
    except CommandError as error:  # e.g. a revision that does not exist
        print(f"cvh db upgrade: {error}; `cvh db upgrade` (no REVISION) goes to the latest", file=sys.stderr)
        return 2
    print(f"database at {db.redacted_url(database_url)} upgraded to {args.revision}")
    return 0


def _version() -> str:
    """The installed package's version (from its metadata), or where the code runs from when not installed."""
    from importlib import metadata

    try:
        return metadata.version("cvh")
    except metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvh", description="Customer Value Hierarchy: register, score and rank customers by the value they "
                                "bring. Start the suite with `cvh serve`, then try `cvh demo`.",
        epilog="Client commands reach the suite at --server HOST:PORT (env CVH_SERVER, default 127.0.0.1:50051). "
               "`cvh COMMAND --help` tells more.")
    parser.add_argument("--version", action="version", version=f"cvh {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the gRPC services",
        description="Run gRPC services in this process. With no SERVICE, all four share one port and an "
                    "embedded SQLite database. Stops gracefully on SIGTERM or Ctrl-C.")
    serve.add_argument("services", nargs="*", metavar="SERVICE",
                       help=f"which services to run: {', '.join(SERVICE_NAMES)} (default: all)")
    serve.add_argument("--listen", default=None, metavar="HOST:PORT",
                       help=f"address to listen on (env CVH_LISTEN, default {DEFAULT_LISTEN}); port 0 picks one")
    serve.add_argument("--database-url", type=database_url, default=None, metavar="URL",
                       help="SQLAlchemy URL (env CVH_DATABASE_URL, default sqlite:///.cvh/cvh.db), "
                            "e.g. postgresql://user@host:5432/cvh")
    serve.add_argument("--metrics-port", type=port_number, default=None, metavar="PORT",
                       help="serve Prometheus metrics on this port (env CVH_METRICS_PORT, default off)")
    serve.add_argument("--grace", type=non_negative_seconds, default=None, metavar="SECONDS",
                       help="time in-flight calls get after SIGTERM (env CVH_GRACE_SECONDS, default 10)")
    serve.add_argument("--max-concurrent-rpcs", type=non_negative_int, default=None, metavar="N",
                       help="calls served at once; more get RESOURCE_EXHAUSTED (env CVH_MAX_CONCURRENT_RPCS, "
                            "default 0: no limit); the services' calls to each other count, health checks do not")
    serve.add_argument("--database-pool-size", type=whole_number(2), default=None, metavar="N",
                       help="database connections this process keeps (env CVH_DATABASE_POOL_SIZE, default 16)")
    serve.add_argument("--max-bulk-streams", type=positive_int, default=None, metavar="N",
                       help="ExportSignalMatrix and StreamRunResults streams at once, each holding a connection; "
                            "more get RESOURCE_EXHAUSTED; below the pool size, the rest is the short calls' "
                            "reserve (env CVH_MAX_BULK_STREAMS, default 8)")
    serve.add_argument("--stream-stall-seconds", type=positive_seconds, default=None, metavar="SECONDS",
                       help="a bulk stream not read for this long is ended (DEADLINE_EXCEEDED) and gives its "
                            "connection back (env CVH_STREAM_STALL_SECONDS, default 30)")
    serve.add_argument("--max-watchers", type=positive_int, default=None, metavar="N",
                       help="watch streams open at once (WatchRuns, WatchScoringRun, WatchPriorityChanges, "
                            "WatchCustomerChanges); more get RESOURCE_EXHAUSTED (env CVH_MAX_WATCHERS, default 1000)")
    serve.add_argument("--feed-retention-seconds", type=positive_seconds, default=None, metavar="SECONDS",
                       help="how long the registry keeps its change feed; a follower further behind reloads "
                            "(env CVH_FEED_RETENTION_SECONDS, default 86400)")
    serve.add_argument("--telemetry-retention-days", type=whole_number(1, MAX_RETENTION_DAYS), default=None,
                       metavar="DAYS",
                       help="days of product telemetry the adoption service keeps; older events are refused and "
                            "older aggregates pruned (env CVH_TELEMETRY_RETENTION_DAYS, default 400)")
    serve.add_argument("--health-listen", default=None, metavar="HOST:PORT",
                       help="also serve plaintext gRPC health checks (only) here, for probes that cannot speak "
                            "TLS, e.g. Kubernetes' native grpc probes (env CVH_HEALTH_LISTEN, default off)")
    serve.add_argument("--no-migrate", action="store_true",
                       help="do not apply migrations at start-up: a `cvh db upgrade` job owns the schema "
                            "(env CVH_MIGRATE=0)")
    serve.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="serve from N processes sharing the port (SO_REUSEPORT, Linux): one core each "
                            "(env CVH_WORKERS, default 1); see services/common/workers.py")
    serve.add_argument("--snapshot-dir", default=None, metavar="DIR",
                       help="write each run's hierarchy snapshot here once and memory-map it from every process "
                            "given the same directory (env CVH_SNAPSHOT_DIR; default: --workers N > 1 use a "
                            "private temporary one, a single process holds its snapshot in memory)")
    serve.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log level (env CVH_LOG_LEVEL, default INFO)")
    serve.add_argument("--tls-cert", type=existing_file, default=None, metavar="PEM",
                       help="serve TLS with this certificate chain (env CVH_TLS_CERT); needs --tls-key")
    serve.add_argument("--tls-key", type=existing_file, default=None, metavar="PEM",
                       help="private key of --tls-cert (env CVH_TLS_KEY)")
    serve.add_argument("--tls-client-ca", type=existing_file, default=None, metavar="PEM",
                       help="require client certificates signed by this CA: mutual TLS (env CVH_TLS_CLIENT_CA)")
    serve.add_argument("--tokens-file", type=existing_file, default=None, metavar="JSON",
                       help='bearer tokens and roles (env CVH_TOKENS_FILE): {"tokens": [{"name": "support", '
                            '"sha256": "<hex digest of the token>", "roles": ["reader"]}]}; roles are reader, '
                            "scorer, writer, admin")
    serve.add_argument("--insecure", action="store_true",
                       help="allow listening beyond loopback without TLS or tokens (env CVH_INSECURE=1)")
    serve.set_defaults(run=_serve)

    database = commands.add_parser("db", help="manage the database schema")
    db_commands = database.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="apply migrations",
                                     description="Apply the schema migrations up to REVISION (default: latest).")
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    upgrade.add_argument("--database-url", type=database_url, default=None, metavar="URL",
                         help="SQLAlchemy URL (env CVH_DATABASE_URL, default sqlite:///.cvh/cvh.db)")
    upgrade.set_defaults(run=_db_upgrade)

    client = client_options()
    for module in (registry, scoring, outcomes, purchases, hierarchy, decisions, adoption, batch, demo):
        module.add_parsers(commands, client)
    from clients import loadtest
    loadtest.add_parser(commands)
    for command in leaf_commands(parser):
        command.set_defaults(prog=command.prog)
    return parser


def leaf_commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command that runs something (``cvh models create``, ``cvh tiers``, ...), found by walking the
    subcommands."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += leaf_commands(command)
    return found or [parser]


def main(argv: list[str] | None = None) -> int:
    from clients.commands.adoption import adoption_shorthand

    args = build_parser().parse_args(adoption_shorthand(sys.argv[1:] if argv is None else list(argv)))
    try:
        return args.run(args)
    except CvhError as error:
        print(f"{args.prog}: {error.describe()}", file=sys.stderr)
        print(f"  {next_step(error, args)}", file=sys.stderr)
        return 1
    except (InputError, ParquetError, BatchUnavailable, ConfigError, FileNotFoundError, FileExistsError,
            IsADirectoryError, NotADirectoryError, PermissionError) as error:
        print(f"{args.prog}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `cvh tiers | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # a bug: one line for the user, the traceback only when asked for
        if os.environ.get("CVH_DEBUG"):
            raise
        print(f"{args.prog}: unexpected {type(error).__name__}: {error} (a bug in cvh; "
              "CVH_DEBUG=1 shows where)", file=sys.stderr)
        return 1


# What to do next, per status code: the line printed under every error from the suite.
NEXT_STEPS = {
    grpc.StatusCode.UNAVAILABLE: "is the suite running at {server}? Start it with `cvh serve`, or point --server / "
                                 "CVH_SERVER at it.",
    grpc.StatusCode.UNAUTHENTICATED: "set CVH_TOKEN (or --token) to a token the server knows.",
    grpc.StatusCode.PERMISSION_DENIED: "your token's roles do not allow this: use a token with the role named above "
                                       "(roles: reader, scorer, writer, admin).",
    grpc.StatusCode.NOT_FOUND: "check the name; {listing} shows what exists.",
    grpc.StatusCode.INVALID_ARGUMENT: "fix the fields named above; `{command} --help` says what each takes.",
    grpc.StatusCode.FAILED_PRECONDITION: "the suite is not in the state this needs: do first what the message "
                                         "says, then run the command again.",
    grpc.StatusCode.ALREADY_EXISTS: "it exists already: choose another id, or change the existing one.",
    grpc.StatusCode.ABORTED: "it changed while you worked on it: read it again and retry.",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the server is at a limit (calls at once, or a request too big): retry "
                                        "in a moment, or send less per call.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "no answer within --timeout {timeout:g} s: raise --timeout, or check how "
                                       "busy the server is.",
    grpc.StatusCode.OUT_OF_RANGE: "ask within the range the message names.",
    grpc.StatusCode.UNIMPLEMENTED: "this server does not offer the call: is the service running there "
                                   "(`cvh serve SERVICE`), and is it as recent as this cvh (`cvh --version`)?",
    grpc.StatusCode.CANCELLED: "the call was cancelled before it finished; run the command again.",
}
# Sharper hints for some ErrorInfo reasons.
REASON_STEPS = {
    "HAS_CHILDREN": "move or delete its child accounts first: `cvh customers list --parent ID` lists them.",
}
# Where to look when a name is not found, by the resource's collection (ErrorInfo metadata "resource", or the
# reason's prefix: CUSTOMER_NOT_FOUND).
LISTINGS = {"customers": "`cvh customers list`", "models": "`cvh models list`", "runs": "`cvh run list`",
            "valueMapVersions": "`cvh valuemap list` (or `cvh valuemap show --tree` for the nodes)",
            "CUSTOMER": "`cvh customers list`", "MODEL": "`cvh models list`", "RUN": "`cvh run list`"}


def next_step(error: CvhError, args: argparse.Namespace) -> str:
    """The hint printed under an error from the suite."""
    hint = REASON_STEPS.get(error.reason) or NEXT_STEPS.get(
        error.code, "this is a fault in the suite, not in your request: the server's log says more; retry, and "
                    "report it if it persists.")
    collection = error.metadata.get("resource", "").split("/", 1)[0] or error.reason.split("_", 1)[0]
    listing = LISTINGS.get(collection, "`cvh customers list`, `cvh models list` or `cvh run list`")
    return hint.format(server=server(args), command=args.prog, listing=listing,
                       timeout=getattr(args, "timeout", 0) or 0)


if __name__ == "__main__":
    sys.exit(main())
