"""Long streams against short calls: bulk streams and watchers are capped, a stalled reader gives its database
connection back, pool exhaustion is UNAVAILABLE, and one poll serves every watcher (issue 14, items 3 and 10)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as spb
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common import db
from services.common.config import ConfigError, ServerConfig
from tests.conftest import ServerThread
from tests.grpc_helpers import details_of, raises_status
from tests.scoring.test_scoring_service import seed

Code = grpc.StatusCode
# 256 columns (absent signals export as NaN) in 64-row chunks: 128 KiB messages, so a reader that stops leaves
# the server's writes waiting on flow control long before the end of the base.
WIDE = rpb.ExportSignalMatrixRequest(signal_names=[f"s{i}" for i in range(256)], chunk_size=64)
CUSTOMERS = 4000


def serve(database_url: str, services=("registry",), **limits) -> ServerThread:
    return ServerThread(ServerConfig(services=services, listen="127.0.0.1:0", database_url=database_url, **limits))


@pytest.fixture
def small_pool(database_url) -> Iterator[ServerThread]:
    """A registry with 4 connections, at most 2 bulk streams, and readers that stall for 2 s cut off."""
    server = serve(database_url, database_pool_size=4, max_bulk_streams=2, stream_stall_seconds=2.0)
    with grpc.insecure_channel(server.target) as channel:
        seed(rpb_grpc.RegistryServiceStub(channel), CUSTOMERS)
    yield server
    server.stop()


def test_bulk_streams_are_capped_and_a_stalled_reader_gives_its_connection_back(small_pool):
    """Two exports read one message each, then stall. A third is refused at once, with the cap in the message;
    short calls still answer from the rest of the pool; once the stall time has passed, the stalled exports
    have given back their connections and places (a new export runs to its end), and their readers, when
    they come back, learn the stream was ended (DEADLINE_EXCEEDED, READER_STALLED)."""
    pool = small_pool.suite.engine.pool
    with grpc.insecure_channel(small_pool.target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        stalled = [registry.ExportSignalMatrix(WIDE, timeout=60) for _ in range(2)]
        for stream in stalled:
            assert next(stream).total_customers == CUSTOMERS
        with raises_status(Code.RESOURCE_EXHAUSTED, reason="TOO_MANY_BULK_STREAMS") as refused:
            next(registry.ExportSignalMatrix(WIDE, timeout=10))
        assert "limit of 2 concurrent bulk streams" in refused.message
        started = time.monotonic()
        for _ in range(10):
            assert registry.GetCustomer(rpb.GetCustomerRequest(name="customers/cust-00001"), timeout=5)
        assert time.monotonic() - started < 2, "short calls waited for a connection"
        assert pool.checkedout() == 2  # the stalled exports still hold theirs

        deadline = time.monotonic() + 10  # the stall time (2 s) passes: the connections come back
        while pool.checkedout() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.checkedout() == 0
        rows = sum(m.chunk.values.rows for m in registry.ExportSignalMatrix(WIDE, timeout=30))
        assert rows == CUSTOMERS
        for stream in stalled:
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:
                    pass
            seen = details_of(ended.value)
            assert (seen.code, seen.reason) == (Code.DEADLINE_EXCEEDED, "READER_STALLED"), seen
            assert "not read for 2 s" in seen.message


def test_pool_exhaustion_is_unavailable_not_internal(database_url, monkeypatch):
    """Every connection taken (here by the test itself) and a call waiting past the pool's timeout: the caller
    gets UNAVAILABLE (DATABASE_BUSY), which it may retry; never INTERNAL."""
    monkeypatch.setattr(db, "POOL_TIMEOUT_SECONDS", 0.5)
    server = serve(database_url, database_pool_size=2, max_bulk_streams=1)
    try:
        engine = server.suite.engine
        held = [engine.connect() for _ in range(2)]
        try:
            with grpc.insecure_channel(server.target) as channel:
                with raises_status(Code.UNAVAILABLE, reason="DATABASE_BUSY"):
                    rpb_grpc.RegistryServiceStub(channel).GetCustomer(
                        rpb.GetCustomerRequest(name="customers/anyone"), timeout=10)
        finally:
            for conn in held:
                conn.close()
    finally:
        server.stop()


def test_a_long_export_gives_back_the_log_when_it_ends(tmp_path):
    """SQLite: writes made while an export holds its snapshot pile up in the log (no checkpoint can pass the
    reader); once the export ends, the log is checkpointed and truncated rather than kept at its peak."""
    url = f"sqlite:///{tmp_path / 'cvh.db'}"
    server = serve(url)
    try:
        with grpc.insecure_channel(server.target) as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            seed(registry, CUSTOMERS)
            export = registry.ExportSignalMatrix(WIDE, timeout=60)
            next(export)
            seed(registry, CUSTOMERS, seed_value=8)  # rewrites every customer's signals
            log = tmp_path / "cvh.db-wal"
            assert log.stat().st_size > 1_000_000
            assert sum(1 for _ in export) > 0
            deadline = time.monotonic() + 5
            while log.stat().st_size and time.monotonic() < deadline:
                time.sleep(0.05)
            assert log.stat().st_size == 0
    finally:
        server.stop()


def _count_runs_reads(engine: sa.engine.Engine) -> list[int]:
    """A counter of the statements the server's engine sends that read scoring runs."""
    count = [0]

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany):
        if "FROM scoring_runs" in statement:
            count[0] += 1
    return count


def test_many_watchers_share_one_poll_and_are_capped(database_url):
    """40 idle WatchRuns streams: the runs table is read about once a second in all, not once a second per
    watcher (counted, not timed); beyond 50 watchers the next is refused with the cap in the message; and a
    run still reaches every watcher, and 10 WatchScoringRun streams see it to its end."""
    server = serve(database_url, services=("registry", "scoring"), max_watchers=50)
    try:
        with grpc.insecure_channel(server.target) as channel:
            registry, scoring = rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel)
            seed(registry, 200)
            first = list(scoring.WatchScoringRun(spb.WatchScoringRunRequest(
                name=scoring.StartScoringRun(spb.StartScoringRunRequest()).name), timeout=60))[-1]

            def watch_runs() -> grpc.Call:  # open once its first answer (the current run) has come
                watch = scoring.WatchRuns(spb.WatchRunsRequest(model_id="default", include_current=True), timeout=60)
                assert next(watch).name == first.name
                return watch
            runs = [watch_runs() for _ in range(40)]
            reads = _count_runs_reads(server.suite.engine)
            started = time.monotonic()
            time.sleep(3.0)
            polls, elapsed = reads[0], time.monotonic() - started
            assert polls <= 2 * elapsed + 2, f"{polls} reads of the runs table in {elapsed:.1f} s for 40 watchers"

            more = [watch_runs() for _ in range(10)]
            with raises_status(Code.RESOURCE_EXHAUSTED, reason="TOO_MANY_WATCHERS") as refused:
                next(scoring.WatchRuns(spb.WatchRunsRequest(), timeout=10))
            assert "limit of 50 open watches" in refused.message
            for watch in more:
                watch.cancel()

            time.sleep(0.5)  # the cancelled watches have left
            run = scoring.StartScoringRun(spb.StartScoringRunRequest())
            by_run = [scoring.WatchScoringRun(spb.WatchScoringRunRequest(name=run.name), timeout=60)
                      for _ in range(10)]
            for watch in by_run:
                assert [u.state for u in watch][-1] == spb.RUN_STATE_COMPLETED
            for watch in runs:
                assert next(watch).name == run.name
                watch.cancel()
    finally:
        server.stop()


def test_stream_limits_leave_short_calls_a_reserve(monkeypatch):
    with pytest.raises(ConfigError, match="reserve"):
        ServerConfig(database_pool_size=8, max_bulk_streams=8)
    for key, value in {"CVH_DATABASE_POOL_SIZE": "6", "CVH_MAX_BULK_STREAMS": "3", "CVH_STREAM_STALL_SECONDS": "5",
                       "CVH_MAX_WATCHERS": "7"}.items():
        monkeypatch.setenv(key, value)
    config = ServerConfig.from_env()
    assert (config.database_pool_size, config.max_bulk_streams, config.stream_stall_seconds,
            config.max_watchers) == (6, 3, 5.0, 7)
