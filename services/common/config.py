"""Server configuration: one typed place, filled from flags over environment variables."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_NAMES = ("registry", "scoring", "hierarchy", "adoption")
DEFAULT_LISTEN = "127.0.0.1:50051"
# Ten years: days since 1970 stay far within a 32-bit day column.
MAX_RETENTION_DAYS = 3660


def default_database_url() -> str:
    data_dir = Path(os.environ.get("CVH_DATA_DIR", ".cvh"))
    return f"sqlite:///{data_dir / 'cvh.db'}"


@dataclass
class ServerConfig:
    """Everything a server process needs to start."""

    # Which services this process serves.
    services: tuple[str, ...] = SERVICE_NAMES
    # host:port to listen on; port 0 picks a free one.
    listen: str = DEFAULT_LISTEN
    # Bind with SO_REUSEPORT: only the worker processes of one `cvh serve --workers N`, whose parent holds
    # the address for them (services/common/addresses.py); any other server refuses an address in use.
    share_port: bool = False
    # SQLAlchemy URL; postgresql:// URLs use psycopg 3.
    database_url: str = field(default_factory=default_database_url)
    # Port of the Prometheus metrics endpoint; 0 disables it.
    metrics_port: int = 0
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_seconds: float = 10.0
    # Largest message accepted or sent, bytes.
    max_message_bytes: int = 64 * 1024 * 1024
    # Calls served at once; more get RESOURCE_EXHAUSTED at once instead of queueing. 0 means no limit.
    # Health checks and reflection do not count; when services share a process, their calls to each
    # other do (the hierarchy service keeps one WatchRuns call open; a scoring run holds one export).
    max_concurrent_rpcs: int = 0
    # Database connections this process keeps (SQLAlchemy pool: half kept open, half opened on demand).
    database_pool_size: int = 16
    # Bulk streams (ExportSignalMatrix, StreamRunResults) served at once, each holding a database
    # connection for its whole snapshot; more get RESOURCE_EXHAUSTED. Below database_pool_size, so short
    # calls always keep the rest of the pool.
    max_bulk_streams: int = 8
    # A bulk stream whose reader takes no message for this many seconds is ended (DEADLINE_EXCEEDED) and
    # gives its database connection back.
    stream_stall_seconds: float = 30.0
    # Watch streams (WatchRuns, WatchScoringRun, WatchPriorityChanges) open at once; more get
    # RESOURCE_EXHAUSTED. Idle watchers cost little: one poll per process serves them all.
    max_watchers: int = 1000
    # Seconds the registry keeps its change feed (WatchCustomerChanges): a follower further behind reloads.
    feed_retention_seconds: float = 24 * 3600.0
    # Days of product telemetry the adoption service keeps (daily aggregates, batch ids); older events are
    # refused, older aggregates pruned, and no achievement rule may look further back.
    telemetry_retention_days: int = 400
    # Apply database migrations at start-up (off where a migration job owns the schema).
    migrate: bool = True
    # A second, plaintext port that serves only grpc.health.v1, for probes that cannot speak TLS
    # (Kubernetes' native gRPC probes); empty means none.
    health_listen: str = ""
    # Close each client connection after this many seconds, so clients re-resolve and spread over pods
    # added since; 0 keeps connections for ever. The server then sends GOAWAY: new calls go over a new
    # connection at once, while the calls and streams in flight on the old one get the grace below to
    # finish (watches and long exports are not cut every few minutes; a watch reconnects by itself).
    max_connection_age_seconds: float = 0.0
    max_connection_age_grace_seconds: float = 3600.0
    log_level: str = "INFO"
    # A directory the hierarchy snapshot of each run is written to once and memory-mapped from by every process
    # given the same one (services/hierarchy/shared.py); empty: held in this process's memory. `cvh serve
    # --workers N` makes one for its workers (and removes it when they stop) unless given one.
    snapshot_dir: str = ""
    # TLS: certificate chain and private key (PEM files); with a client CA, clients must present certificates.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # JSON file of bearer tokens (SHA-256 digests) and their roles; empty means no authentication.
    tokens_file: str = ""
    # Allow listening beyond loopback without TLS or without tokens.
    insecure: bool = False
    # Where the other services are, when this process does not serve them itself.
    registry_target: str = ""
    scoring_target: str = ""
    # The hierarchy service, for the adoption service's value tiers; empty: only when served in this process.
    hierarchy_target: str = ""
    # How this server presents itself to those services: a bearer token (role reader suffices), and the CA
    # that signed their certificates (TLS to peers; this server's own certificate is presented for mTLS).
    peer_token: str = ""
    peer_tls_ca_file: str = ""
    # Name the peers' certificates are issued to, when it differs from the target's host.
    peer_tls_server_name: str = ""

    def __post_init__(self) -> None:
        check_address(self.listen, "listen (--listen, CVH_LISTEN)")
        if self.health_listen:
            check_address(self.health_listen, "health_listen (--health-listen, CVH_HEALTH_LISTEN)")
        if self.max_concurrent_rpcs < 0:
            raise ConfigError(f"max_concurrent_rpcs must be 0 (no limit) or more, got {self.max_concurrent_rpcs}")
        if self.max_connection_age_seconds < 0 or self.max_connection_age_grace_seconds < 0:
            raise ConfigError("max_connection_age_seconds and max_connection_age_grace_seconds must be 0 or more")
        if not 1 <= self.max_bulk_streams < self.database_pool_size:
            raise ConfigError(f"max_bulk_streams must be 1 to database_pool_size - 1 ({self.database_pool_size - 1}), "
                              f"so short calls keep a reserve of connections; got {self.max_bulk_streams}")
        if self.max_watchers < 1 or self.stream_stall_seconds <= 0:
            raise ConfigError("max_watchers must be 1 or more and stream_stall_seconds more than 0")
        if not 0 < self.feed_retention_seconds < math.inf:
            raise ConfigError(f"feed_retention_seconds must be more than 0, got {self.feed_retention_seconds}")
        if not 1 <= self.telemetry_retention_days <= MAX_RETENTION_DAYS:
            raise ConfigError(f"telemetry_retention_days must be 1 to {MAX_RETENTION_DAYS}, "
                              f"got {self.telemetry_retention_days}")
        if self.max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be positive, got {self.max_message_bytes}")

    @classmethod
    def from_env(cls, **overrides) -> "ServerConfig":
        env = os.environ
        values = {
            "listen": env.get("CVH_LISTEN", DEFAULT_LISTEN),
            "database_url": env.get("CVH_DATABASE_URL") or default_database_url(),
            "metrics_port": env_number("CVH_METRICS_PORT", int, 0),
            "grace_seconds": env_number("CVH_GRACE_SECONDS", float, 10.0),
            "max_concurrent_rpcs": env_number("CVH_MAX_CONCURRENT_RPCS", int, 0),
            "database_pool_size": env_number("CVH_DATABASE_POOL_SIZE", int, 16),
            "max_bulk_streams": env_number("CVH_MAX_BULK_STREAMS", int, 8),
            "stream_stall_seconds": env_number("CVH_STREAM_STALL_SECONDS", float, 30.0),
            "max_watchers": env_number("CVH_MAX_WATCHERS", int, 1000),
            "feed_retention_seconds": env_number("CVH_FEED_RETENTION_SECONDS", float, 24 * 3600.0),
            "telemetry_retention_days": env_number("CVH_TELEMETRY_RETENTION_DAYS", int, 400),
            "migrate": env.get("CVH_MIGRATE", "1") not in ("0", "false", "no"),
            "health_listen": env.get("CVH_HEALTH_LISTEN", ""),
            "max_connection_age_seconds": env_number("CVH_MAX_CONNECTION_AGE_SECONDS", float, 0.0),
            "max_connection_age_grace_seconds": env_number("CVH_MAX_CONNECTION_AGE_GRACE_SECONDS", float, 3600.0),
            "log_level": env.get("CVH_LOG_LEVEL", "INFO"),
            "snapshot_dir": env.get("CVH_SNAPSHOT_DIR", ""),
            "registry_target": env.get("CVH_REGISTRY_TARGET", ""),
            "scoring_target": env.get("CVH_SCORING_TARGET", ""),
            "hierarchy_target": env.get("CVH_HIERARCHY_TARGET", ""),
            "peer_token": env.get("CVH_PEER_TOKEN", ""),
            "peer_tls_ca_file": env.get("CVH_PEER_TLS_CA", ""),
            "peer_tls_server_name": env.get("CVH_PEER_TLS_SERVER_NAME", ""),
            "tls_cert_file": env.get("CVH_TLS_CERT", ""),
            "tls_key_file": env.get("CVH_TLS_KEY", ""),
            "tls_client_ca_file": env.get("CVH_TLS_CLIENT_CA", ""),
            "tokens_file": env.get("CVH_TOKENS_FILE", ""),
            "insecure": env.get("CVH_INSECURE", "") in ("1", "true", "yes"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def env_number(name: str, kind: type, default: int | float) -> int | float:
    """The environment variable ``name`` as a finite ``kind`` (int or float), ``default`` when unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        noun = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name}={text!r} is not {noun}; set it to one or unset it (default {default:g})")
    return value


def check_address(address: str, what: str) -> None:
    """Refuse an address that is not HOST:PORT with a port from 0 to 65535 (``[::1]:PORT`` for IPv6)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what} is {address!r}; give HOST:PORT with a port from 0 to 65535 "
                          "(0 picks a free one), e.g. 127.0.0.1:50051")


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_before_start(config: ServerConfig) -> None:
    """What a server checks before it binds or touches its database: its files exist, its exposure is safe."""
    check_files(config)
    check_exposure(config)


def check_files(config: ServerConfig) -> None:
    """Refuse TLS, client CA, tokens and peer CA files that do not exist, naming the setting."""
    for what, path in (("--tls-cert, CVH_TLS_CERT", config.tls_cert_file),
                       ("--tls-key, CVH_TLS_KEY", config.tls_key_file),
                       ("--tls-client-ca, CVH_TLS_CLIENT_CA", config.tls_client_ca_file),
                       ("--tokens-file, CVH_TOKENS_FILE", config.tokens_file),
                       ("CVH_PEER_TLS_CA", config.peer_tls_ca_file)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{path} ({what}) is not a file; give the path of an existing file")


def check_exposure(config: ServerConfig) -> None:
    """Refuse to serve beyond loopback without TLS and tokens, unless told --insecure."""
    if config.insecure or is_loopback(config.listen):
        return
    missing = [what for what, given in (("TLS (--tls-cert and --tls-key)", config.tls_cert_file),
                                        ("authentication (--tokens-file)", config.tokens_file)) if not given]
    if missing:
        raise ConfigError(f"refusing to listen on {config.listen} without {' and '.join(missing)}; "
                          "configure them, listen on 127.0.0.1, or pass --insecure to accept the risk")


class ConfigError(ValueError):
    """A configuration the server will not start with."""
