"""Limits: message size, batch and page caps, concurrent calls, deadlines, keepalive pairing."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import cli
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as spb
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common.config import ConfigError, ServerConfig
from services.common.deadlines import Deadline
from services.common.embedded import EmbeddedSuite
from services.common.errors import ServiceError
from services.common.server import server_options
from services.registry import store as registry_store
from tests.conftest import _empty_tables
from tests.grpc_helpers import raises_status
from tests.scoring.test_scoring_service import SIGNALS, seed
from wire import channel_options as paired
from wire.channels import channel_options

Code = grpc.StatusCode


def serving(channel: grpc.Channel) -> bool:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


# -- configuration --------------------------------------------------------------------------------------------

def test_max_concurrent_rpcs_comes_from_the_environment_and_the_serve_flag(monkeypatch):
    monkeypatch.setenv("CVH_MAX_CONCURRENT_RPCS", "7")
    assert ServerConfig.from_env().max_concurrent_rpcs == 7
    monkeypatch.delenv("CVH_MAX_CONCURRENT_RPCS")
    assert ServerConfig.from_env().max_concurrent_rpcs == 0  # no limit
    with pytest.raises(ConfigError, match="max_concurrent_rpcs"):
        ServerConfig(max_concurrent_rpcs=-1)

    started = []

    async def serve(config, *args, **kwargs):
        started.append(config)
    monkeypatch.setattr("services.common.server.serve", serve)
    monkeypatch.setenv("CVH_MAX_CONCURRENT_RPCS", "7")
    assert cli.main(["serve", "--max-concurrent-rpcs", "5", "--listen", "127.0.0.1:0"]) == 0
    assert started[-1].max_concurrent_rpcs == 5  # the flag wins over the environment
    assert cli.main(["serve", "--listen", "127.0.0.1:0"]) == 0
    assert started[-1].max_concurrent_rpcs == 7


def test_keepalive_and_message_size_pair_the_servers_with_their_clients():
    server = dict(server_options(ServerConfig()))
    for client in (dict(channel_options()), dict(paired.CLIENT_CHANNEL_OPTIONS)):
        # A client pinging more often than the server allows is sent GOAWAY too_many_pings.
        assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
        assert client["grpc.keepalive_permit_without_calls"] == server["grpc.keepalive_permit_without_calls"] == 1
        assert client["grpc.max_send_message_length"] <= server["grpc.max_receive_message_length"]
        assert client["grpc.max_receive_message_length"] >= server["grpc.max_send_message_length"]
    assert dict(paired.CLIENT_CHANNEL_OPTIONS)["grpc.http2.max_pings_without_data"] == 0


def test_a_deadline_says_when_the_caller_stops_waiting():
    assert not Deadline(None).expired() and Deadline(None).remaining() is None
    Deadline(60).check("waiting")
    passed = Deadline(0)
    assert passed.expired() and passed.remaining() == 0
    with pytest.raises(ServiceError) as caught:
        passed.check("reading results")
    assert caught.value.code == Code.DEADLINE_EXCEEDED and "reading results" in caught.value.message


# -- servers with small limits --------------------------------------------------------------------------------

@pytest.fixture
def small_registry(tmp_path) -> Iterator[EmbeddedSuite]:
    """The registry alone (no service calling another), two calls at a time, messages up to 1 MiB."""
    config = ServerConfig(services=("registry",), listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                          max_concurrent_rpcs=2, max_message_bytes=1024 * 1024)
    suite = EmbeddedSuite(config)
    yield suite
    suite.stop()


def test_surplus_calls_get_resource_exhausted_while_the_calls_in_flight_complete(small_registry):
    released = threading.Event()

    def held_import(customer_id: str):
        """An ImportCustomers stream that stays open, in flight on the server, until released."""
        yield rpb.ImportCustomersRequest(customers=[rpb.Customer(customer_id=customer_id)])
        released.wait(30)

    with grpc.insecure_channel(small_registry.target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        in_flight = [registry.ImportCustomers.future(held_import(f"held-{i}"), timeout=60) for i in range(2)]
        try:
            # Each stream's first message is committed while the stream stays open: once both rows are in
            # the database (read from the file, not through the server), both calls are in flight.
            wait_until(lambda: _stored_ids(small_registry) == {"held-0", "held-1"}, "both streams in flight")
            with raises_status(Code.RESOURCE_EXHAUSTED):
                registry.ListCustomers(rpb.ListCustomersRequest(), timeout=5)
            for _ in range(5):
                with raises_status(Code.RESOURCE_EXHAUSTED):
                    registry.GetCustomer(rpb.GetCustomerRequest(name="customers/held-0"), timeout=5)
            assert serving(channel)  # health checks are not counted: probes answer a saturated server
        finally:
            released.set()
        summaries = [call.result(timeout=30) for call in in_flight]
        assert [s.created for s in summaries] == [1, 1]
        # Once they are done, calls are served again.
        assert len(registry.ListCustomers(rpb.ListCustomersRequest(), timeout=10).customers) == 2
        assert serving(channel)


def test_a_message_above_the_size_limit_is_resource_exhausted_and_the_server_carries_on(small_registry):
    with grpc.insecure_channel(small_registry.target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        with raises_status(Code.RESOURCE_EXHAUSTED):
            registry.BatchGetCustomers(rpb.BatchGetCustomersRequest(names=["customers/" + "x" * 2_000_000]), timeout=10)
        with raises_status(Code.NOT_FOUND):
            registry.GetCustomer(rpb.GetCustomerRequest(name="customers/nobody"), timeout=10)
        assert serving(channel)


# -- deadlines and cancellation -------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_stream_whose_caller_gives_up_stops_and_leaves_no_transaction_open(suite_server, database_url, how,
                                                                             monkeypatch):
    produced = []
    original = registry_store.export_chunks

    def counted(*args, **kwargs):
        for chunk in original(*args, **kwargs):
            produced.append(len(chunk.customer_ids))
            yield chunk
    monkeypatch.setattr(registry_store, "export_chunks", counted)

    customers = 10_000
    with grpc.insecure_channel(suite_server.target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        seed(registry, customers)
        # One customer per message and a caller that reads slowly: the export would take far longer than 0.5 s.
        request = rpb.ExportSignalMatrixRequest(signal_names=SIGNALS, chunk_size=1)
        stream = registry.ExportSignalMatrix(request, timeout=0.5 if how == "deadline" else 60)
        next(stream)
        if how == "deadline":
            with raises_status(Code.DEADLINE_EXCEEDED):
                for _ in stream:
                    time.sleep(0.05)
        else:
            stream.cancel()
            with raises_status(Code.CANCELLED):
                next(stream)

        engine = suite_server.suite.engine
        wait_until(lambda: engine.pool.checkedout() == 0, "the export's connection went back to the pool")
        stopped_at = len(produced)
        time.sleep(0.3)
        assert len(produced) == stopped_at < customers, "the export went on after its caller left"
        # No transaction is left open: PostgreSQL can truncate (lock_timeout fails a leaked one), SQLite can
        # checkpoint its whole log (a reader's open snapshot would keep it busy).
        if database_url.startswith("postgresql"):
            _empty_tables(database_url)
        else:
            wait_until(lambda: _checkpointed(database_url), "SQLite checkpointed its log: no reader holds it")
        assert serving(channel)
        assert registry.ListCustomers(rpb.ListCustomersRequest(page_size=1), timeout=10) is not None


@pytest.mark.parametrize("grace", [60.0, 0.5])
def test_an_aged_connection_moves_new_calls_and_lets_streams_in_flight_finish_within_the_grace(tmp_path, grace):
    """max_connection_age 1 s: new calls go over a new connection while a watch on the old one stays open,
    to its own deadline with a long grace, cut (UNAVAILABLE) once a short grace has passed."""
    config = ServerConfig(services=("scoring",), listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'a.db'}",
                          max_connection_age_seconds=1.0, max_connection_age_grace_seconds=grace)
    suite = EmbeddedSuite(config)
    try:
        with grpc.insecure_channel(suite.target) as channel:
            scoring = spb_grpc.ScoringServiceStub(channel)
            assert scoring.ListModels(spb.ListModelsRequest(), timeout=10).models  # connected
            started = time.monotonic()
            watch = scoring.WatchRuns(spb.WatchRunsRequest(model_id="default"), timeout=4)
            time.sleep(2)  # past the connection's age (1 s, +-10 %) and past the short grace
            assert scoring.ListModels(spb.ListModelsRequest(), timeout=10).models  # over a new connection
            with pytest.raises(grpc.RpcError) as ended:
                for _ in watch:
                    pass
            lasted = time.monotonic() - started
            if grace >= 4:
                assert ended.value.code() == Code.DEADLINE_EXCEEDED and lasted >= 3.9
            else:
                assert ended.value.code() == Code.UNAVAILABLE and lasted < 3.5, (ended.value.code(), lasted)
            assert serving(channel)
    finally:
        suite.stop()


def _stored_ids(suite: EmbeddedSuite) -> set[str]:
    with sqlite3.connect(suite.suite.engine.url.database) as conn:
        return {row[0] for row in conn.execute("SELECT customer_id FROM registry_customers")}


def _checkpointed(database_url: str) -> bool:
    with sqlite3.connect(sa.engine.make_url(database_url).database) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0


def wait_until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


# -- caps -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def suite_target(tmp_path_factory) -> Iterator[str]:
    suite = EmbeddedSuite(ServerConfig(listen="127.0.0.1:0",
                                       database_url=f"sqlite:///{tmp_path_factory.mktemp('caps') / 'c.db'}"))
    yield suite.target
    suite.stop()


@pytest.fixture(scope="module")
def stubs(suite_target):
    with grpc.insecure_channel(suite_target) as channel:
        yield (rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel),
               hpb_grpc.HierarchyServiceStub(channel))


def _names(n: int) -> list[str]:
    return [f"customers/c-{i}" for i in range(n)]


def _chunk(rows: int, columns: int) -> common_pb2.ColumnarChunk:
    names = [f"s{j}" for j in range(columns)]
    return common_pb2.ColumnarChunk(customer_ids=[f"c{i}" for i in range(rows)], column_names=names,
                                    values=common_pb2.Float64Matrix(rows=rows, columns=columns,
                                                                    data=bytes(8 * rows * columns)))


OVER_CAP = [
    # (service, method, request or list of stream messages, the field the violation names)
    ("registry", "BatchGetCustomers", rpb.BatchGetCustomersRequest(names=_names(1001)), "names"),
    ("registry", "ImportCustomers", [rpb.ImportCustomersRequest(
        columns=rpb.CustomerColumns(customer_ids=[f"c{i}" for i in range(10_001)]))], "customers"),
    ("registry", "RecordSignals", rpb.RecordSignalsRequest(observations=[
        rpb.SignalObservations(customer="customers/a", signals={"nps": rpb.SignalValue(value=1)})] * 10_001),
     "observations"),
    ("registry", "CreateCustomer", rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="a", labels={f"k{i}": "v" for i in range(33)})), "customer.labels"),
    ("registry", "CreateCustomer", rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="a", signals={f"s{i}": rpb.SignalValue(value=1) for i in range(65)})), "customer.signals"),
    ("registry", "ExportSignalMatrix", rpb.ExportSignalMatrixRequest(signal_names=[f"s{i}" for i in range(257)]),
     "signal_names"),
    ("registry", "ExportSignalMatrix", rpb.ExportSignalMatrixRequest(signal_names=["nps"], chunk_size=65_537),
     "chunk_size"),
    ("scoring", "CreateModel", spb.CreateModelRequest(model=spb.ValueModel(
        model_id="big", signals=[spb.SignalSpec(name="nps")] * 257)), "model.signals"),
    ("scoring", "CreateModel", spb.CreateModelRequest(model=spb.ValueModel(
        model_id="big", signals=[spb.SignalSpec(name="nps", bands=[spb.Band()] * 65)])), "model.signals[0].bands"),
    ("scoring", "StreamRunResults", spb.StreamRunResultsRequest(run="runs/1", chunk_size=65_537), "chunk_size"),
    ("scoring", "ScoreSignals", spb.ScoreSignalsRequest(signals={f"s{i}": 1.0 for i in range(257)}), "signals"),
    ("scoring", "ScoreBatch", [spb.ScoreBatchRequest(signals=_chunk(65_537, 1))], "signals.customer_ids"),
    ("scoring", "ScoreBatch", [spb.ScoreBatchRequest(signals=_chunk(1, 257))], "signals.column_names"),
    ("hierarchy", "BatchGetPriority", hpb.BatchGetPriorityRequest(customers=_names(1001)), "customers"),
    ("hierarchy", "RankCustomers", hpb.RankCustomersRequest(customers=_names(1001)), "customers"),
    ("hierarchy", "GetAccountTree", hpb.GetAccountTreeRequest(customer="customers/a", max_children=1001),
     "max_children"),
    ("hierarchy", "SetTierPolicy", hpb.SetTierPolicyRequest(policy=hpb.TierPolicy(
        tiers=[hpb.TierServicePolicy(tier_id=f"t{i}") for i in range(17)])), "policy.tiers"),
    ("hierarchy", "SetTierPolicy", hpb.SetTierPolicyRequest(policy=hpb.TierPolicy(tiers=[hpb.TierServicePolicy(
        tier_id="t", authority=hpb.FrontLineAuthority(offers=["free"] * 17))])), "policy.tiers[0].authority.offers"),
    ("hierarchy", "WatchPriorityChanges", hpb.WatchPriorityChangesRequest(tier_ids=[f"t{i}" for i in range(17)]),
     "tier_ids"),
]


def _invoke(stub, method: str, request):
    rpc = getattr(stub, method)
    if isinstance(request, list):
        answer = rpc(iter(request), timeout=30)
    else:
        answer = rpc(request, timeout=30)
    if hasattr(answer, "__iter__") and not hasattr(answer, "ListFields"):
        return list(answer)
    return answer


@pytest.mark.parametrize("service,method,request_,field", OVER_CAP,
                         ids=[f"{m}.{f}" for _, m, _, f in OVER_CAP])
def test_over_cap_batches_are_invalid_argument_naming_the_field(stubs, service, method, request_, field):
    stub = dict(zip(("registry", "scoring", "hierarchy"), stubs))[service]
    with raises_status(Code.INVALID_ARGUMENT, field=field):
        _invoke(stub, method, request_)


PAGED = [
    ("registry", "ListCustomers", rpb.ListCustomersRequest),
    ("registry", "ListSignalHistory", lambda **kw: rpb.ListSignalHistoryRequest(customer="customers/c-0", **kw)),
    ("scoring", "ListModels", spb.ListModelsRequest),
    ("scoring", "ListScoringRuns", spb.ListScoringRunsRequest),
    ("scoring", "ListRunResults", lambda **kw: spb.ListRunResultsRequest(run="models/default", **kw)),
    ("hierarchy", "ListTierMembers", lambda **kw: hpb.ListTierMembersRequest(tier_id="strategic", **kw)),
]


@pytest.mark.parametrize("service,method,build", PAGED, ids=[m for _, m, _ in PAGED])
def test_a_negative_page_size_is_invalid_argument(stubs, service, method, build):
    stub = dict(zip(("registry", "scoring", "hierarchy"), stubs))[service]
    with raises_status(Code.INVALID_ARGUMENT, field="page_size"):
        getattr(stub, method)(build(page_size=-1), timeout=30)


def test_a_page_size_above_the_maximum_is_coerced_to_it(stubs):
    registry = stubs[0]
    seed(registry, 1200)
    page = registry.ListCustomers(rpb.ListCustomersRequest(page_size=2**31 - 1), timeout=30)
    assert len(page.customers) == 1000 and page.next_page_token
    rest = registry.ListCustomers(rpb.ListCustomersRequest(page_size=5000, page_token=page.next_page_token),
                                  timeout=30)
    assert len(rest.customers) == 200 and not rest.next_page_token

