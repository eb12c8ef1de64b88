"""Server configuration: one typed place, filled from flags over environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_NAMES = ("registry", "scoring", "hierarchy")
DEFAULT_LISTEN = "127.0.0.1:50051"


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
    # SQLAlchemy URL; postgresql:// URLs use psycopg 3.
    database_url: str = field(default_factory=default_database_url)
    # Port of the Prometheus metrics endpoint; 0 disables it.
    metrics_port: int = 0
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_seconds: float = 10.0
    # Largest message accepted or sent, bytes.
    max_message_bytes: int = 64 * 1024 * 1024
    # Apply database migrations at start-up.
    migrate: bool = True
    log_level: str = "INFO"
    # Where the other services are, when this process does not serve them itself.
    registry_target: str = ""
    scoring_target: str = ""

    @classmethod
    def from_env(cls, **overrides) -> "ServerConfig":
        env = os.environ
        values = {
            "listen": env.get("CVH_LISTEN", DEFAULT_LISTEN),
            "database_url": env.get("CVH_DATABASE_URL") or default_database_url(),
            "metrics_port": int(env.get("CVH_METRICS_PORT", "0")),
            "grace_seconds": float(env.get("CVH_GRACE_SECONDS", "10")),
            "log_level": env.get("CVH_LOG_LEVEL", "INFO"),
            "registry_target": env.get("CVH_REGISTRY_TARGET", ""),
            "scoring_target": env.get("CVH_SCORING_TARGET", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
