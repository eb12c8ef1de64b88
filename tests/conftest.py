"""Fixtures: real databases (a SQLite file and a PostgreSQL database) and real servers on ephemeral ports."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

from services.common import db
from services.common.config import ServerConfig
from services.common.embedded import EmbeddedSuite

POSTGRES_URL = os.environ.get("CVH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated once, dropped at the end."""
    admin = sa.create_engine(db.normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"cvh_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL is needed at {POSTGRES_URL} (set CVH_TEST_POSTGRES_URL): {error}")
    url = sa.engine.make_url(db.normalize_url(POSTGRES_URL)).set(database=name).render_as_string(hide_password=False)
    engine = db.create_engine(url)
    db.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def _empty_tables(url: str) -> None:
    engine = db.create_engine(url)
    with engine.begin() as conn:
        names = [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]
        if names:
            # A transaction left open by an earlier test's server (seen once in a full run, 2026-12-07, after a
            # SELECT of scoring_models; not reproduced per module) would block TRUNCATE and fail every later
            # test: end such sessions, and say so on stderr so that the leak stays visible.
            leaked = conn.exec_driver_sql(
                "SELECT pid, left(query, 200) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'idle in transaction' "
                "AND now() - state_change > interval '5 seconds'").all()
            for pid, query in leaked:
                print(f"conftest: ending a session left idle in transaction (pid {pid}): {query}", file=sys.stderr)
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
            # Any other session that holds a lock: fail fast and say so instead of waiting for ever.
            conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
            conn.exec_driver_sql(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test that uses this runs twice: on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cvh.db'}"
    url = request.getfixturevalue("postgres_database")
    _empty_tables(url)
    return url


class ServerThread(EmbeddedSuite):
    """A suite served by its own event loop on a background thread (the name the tests know it by).

    Its start-up compiles the Numba kernels when their cache is empty (a clean checkout): the first suite with
    scoring and adoption took 61 s on a loaded 2-core machine and failed the 60 s default, so tests wait up to
    pytest's own timeout instead."""

    def __init__(self, config: ServerConfig, start_timeout: float = 300) -> None:
        super().__init__(config, start_timeout)


def start_server(database_url: str, services=("registry", "scoring", "hierarchy")) -> ServerThread:
    return ServerThread(ServerConfig(services=tuple(services), listen="127.0.0.1:0", database_url=database_url))


@pytest.fixture
def suite_server(database_url) -> Iterator[ServerThread]:
    """All three services in one process, as `cvh serve` runs them."""
    server = start_server(database_url)
    yield server
    server.stop()


@pytest.fixture
def channel(suite_server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(suite_server.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch
