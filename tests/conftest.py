"""Fixtures: real databases (a SQLite file and a PostgreSQL database) and real servers on ephemeral ports."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

from services.common import db
from services.common.config import ServerConfig
from services.common.server import Suite, create_server

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
            # A session a test leaked would block TRUNCATE for ever: fail fast and say so instead.
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


class ServerThread:
    """A Suite served by its own event loop on a background thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.suite: Suite | None = None
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.suite = self.loop.run_until_complete(self._start(config))
            except BaseException as error:  # reported to the test below
                failure.append(error)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="cvh-test-server", daemon=True)
        self.thread.start()
        ready.wait(60)
        if failure:
            raise failure[0]
        self.target = f"127.0.0.1:{self.suite.port}"

    async def _stop(self, grace: float) -> None:
        """As asyncio.run ends `cvh serve`: stop the server, then let every leftover task unwind."""
        await self.suite.stop(grace)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _start(config: ServerConfig) -> Suite:
        suite = create_server(config)
        await suite.start()
        return suite

    def stop(self, grace: float = 0) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


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
