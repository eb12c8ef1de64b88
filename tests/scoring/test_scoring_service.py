"""ScoringService over real gRPC with the registry, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

import scoring_engine
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from services.common.config import ServerConfig
from tests.conftest import ServerThread, _empty_tables, start_server
from tests.grpc_helpers import raises_status

Code = grpc.StatusCode
SIGNALS = list(scoring_engine.default_model().signal_names)


@pytest.fixture
def channel(database_url) -> Iterator[grpc.Channel]:
    """The registry and scoring services in one process (nothing here asks the hierarchy)."""
    server = start_server(database_url, services=("registry", "scoring"))
    with grpc.insecure_channel(server.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def scoring_alone(request, tmp_path_factory) -> Iterator[pb_grpc.ScoringServiceStub]:
    """One scoring service per database for a whole module, for calls that write nothing."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('scoring') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = start_server(url, services=("scoring",))
    with grpc.insecure_channel(server.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield pb_grpc.ScoringServiceStub(ch)
    server.stop()


@pytest.fixture
def scoring(channel) -> pb_grpc.ScoringServiceStub:
    return pb_grpc.ScoringServiceStub(channel)


@pytest.fixture
def registry(channel) -> rpb_grpc.RegistryServiceStub:
    return rpb_grpc.RegistryServiceStub(channel)


def seed(registry, n: int, seed_value: int = 7) -> tuple[list[str], np.ndarray]:
    """n customers with every default-model signal, some missing; returns ids and the matrix as stored."""
    rng = np.random.default_rng(seed_value)
    matrix = rng.lognormal(2.0, 1.0, size=(n, len(SIGNALS)))
    matrix[rng.random(matrix.shape) < 0.1] = np.nan
    ids = [f"cust-{i:05d}" for i in range(n)]
    for start in range(0, n, 5000):
        block = rpb.CustomerColumns(customer_ids=ids[start:start + 5000], signal_names=SIGNALS)
        part = matrix[start:start + 5000]
        block.signal_values.CopyFrom(common_pb2.Float64Matrix(rows=len(part), columns=len(SIGNALS),
                                                              data=part.astype("<f8").tobytes()))
        summary = registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=block)]))
        assert summary.rejected == 0
    return ids, matrix


def run_to_end(scoring, model: str = "") -> pb.ScoringRun:
    run = scoring.StartScoringRun(pb.StartScoringRunRequest(model=model))
    states = [update for update in scoring.WatchScoringRun(pb.WatchScoringRunRequest(name=run.name), timeout=120)]
    return states[-1]


def stream_results(scoring, run: str) -> dict[str, tuple]:
    found = {}
    for chunk in scoring.StreamRunResults(pb.StreamRunResultsRequest(run=run)):
        ids = list(chunk.dimension_scores.customer_ids)
        composite = np.frombuffer(chunk.composite, "<f8")
        tiers = np.frombuffer(chunk.tier_levels, "<i4")
        ranks = np.frombuffer(chunk.ranks, "<i8")
        for i, customer_id in enumerate(ids):
            found[customer_id] = (composite[i], int(tiers[i]), int(ranks[i]))
    return found


def test_default_model_is_present_and_versions_count_up(scoring):
    default = scoring.GetModel(pb.GetModelRequest(name="models/default"))
    assert default.name == "models/default/versions/1" and default.active
    changed = pb.ValueModel()
    changed.CopyFrom(default)
    changed.hysteresis_points = 5
    changed.change_note = "wider band"
    created = scoring.CreateModel(pb.CreateModelRequest(model=changed))
    assert created.name == "models/default/versions/2" and not created.active
    assert scoring.GetModel(pb.GetModelRequest(name="models/default")).version == 1
    scoring.ActivateModel(pb.ActivateModelRequest(name="models/default/versions/2"))
    assert scoring.GetModel(pb.GetModelRequest(name="models/default")).hysteresis_points == 5
    listed = scoring.ListModels(pb.ListModelsRequest(model_id="default", page_size=1))
    assert len(listed.models) == 1 and listed.next_page_token


def test_invalid_model_names_the_bad_fields(scoring):
    model = json_format.ParseDict(json.loads(scoring_engine.default_model().to_json()), pb.ValueModel())
    model.dimensions[0].weights[0].signal = "no_such_signal"
    model.dimensions[1].composite_weight = -1
    with raises_status(Code.INVALID_ARGUMENT) as seen:
        scoring.CreateModel(pb.CreateModelRequest(model=model))
    assert any(f.startswith("model.dimensions[0].weights[0].signal") for f in seen.fields), seen.fields
    assert any(f.startswith("model.dimensions[1].composite_weight") for f in seen.fields), seen.fields


def test_run_results_equal_the_engine_on_the_same_matrix(scoring, registry):
    ids, matrix = seed(registry, 3000)
    with raises_status(Code.FAILED_PRECONDITION, reason="NO_COMPLETED_RUN"):
        scoring.ScoreCustomer(pb.ScoreCustomerRequest(customer="customers/cust-00001"))
    run = run_to_end(scoring)
    assert run.state == pb.RUN_STATE_COMPLETED and run.customers_done == 3000 and run.percent_done == 100
    assert sum(t.customers for t in run.tier_counts) == 3000

    model = scoring_engine.default_model()
    expected = scoring_engine.score(scoring_engine.fit(model, matrix), matrix, with_rank=True)
    stored = stream_results(scoring, run.name)
    assert len(stored) == 3000
    for i in [0, 1, 17, 999, 2999]:
        composite, level, rank = stored[ids[i]]
        assert composite == pytest.approx(expected.composite[i], rel=1e-12)
        assert level == expected.tier[i] + 1 and rank == expected.rank[i]

    page = scoring.ListRunResults(pb.ListRunResultsRequest(run=run.name, page_size=5))
    assert [r.rank for r in page.results] == [1, 2, 3, 4, 5]
    following = scoring.ListRunResults(pb.ListRunResultsRequest(run=run.name, page_size=5,
                                                                page_token=page.next_page_token))
    assert following.results[0].rank == 6
    top = scoring.ListRunResults(pb.ListRunResultsRequest(run="models/default", tier_id="strategic", page_size=1000))
    assert len(top.results) == run.tier_counts[0].customers
    assert all(r.tier.tier_id == "strategic" for r in top.results)

    # What-if, online and batch scoring agree with the run (first run: no hysteresis involved).
    customer = ids[17]
    online = scoring.ScoreCustomer(pb.ScoreCustomerRequest(customer=f"customers/{customer}"))
    assert online.composite == pytest.approx(stored[customer][0], rel=1e-12)
    assert online.tier.level == stored[customer][1] and online.contributions
    signals = {name: float(v) for name, v in zip(SIGNALS, matrix[17]) if not math.isnan(v)}
    what_if = scoring.ScoreSignals(pb.ScoreSignalsRequest(signals=signals))
    assert what_if.composite == pytest.approx(online.composite, rel=1e-12)
    block = common_pb2.ColumnarChunk(customer_ids=ids[:100], column_names=SIGNALS, values=common_pb2.Float64Matrix(
        rows=100, columns=len(SIGNALS), data=matrix[:100].astype("<f8").tobytes()))
    answers = list(scoring.ScoreBatch(iter([pb.ScoreBatchRequest(signals=block)])))
    batch_composite = np.frombuffer(answers[0].composite, "<f8")
    assert batch_composite == pytest.approx(np.array([stored[i][0] for i in ids[:100]]), rel=1e-12)


def test_second_run_sees_movement_and_concurrent_runs_are_refused(scoring, registry):
    seed(registry, 20_000)
    first = run_to_end(scoring)
    running = scoring.StartScoringRun(pb.StartScoringRunRequest())
    with raises_status(Code.FAILED_PRECONDITION, reason="RUN_IN_PROGRESS") as seen:
        scoring.StartScoringRun(pb.StartScoringRunRequest(model="models/default"))
    assert running.name in seen.message
    updates = list(scoring.WatchScoringRun(pb.WatchScoringRunRequest(name=running.name), timeout=120))
    assert updates[-1].state == pb.RUN_STATE_COMPLETED
    assert len(updates) >= 3 and [u.percent_done for u in updates] == sorted(u.percent_done for u in updates)
    assert updates[-1].previous_run == first.name
    movement = scoring.GetTierMovement(pb.GetTierMovementRequest(run=running.name))
    assert movement.previous_run == first.name
    assert sum(m.customers for m in movement.moves) == 20_000
    # Same data twice: nobody moves.
    assert all(m.from_tier.level == m.to_tier.level for m in movement.moves)


def test_cancel_keeps_the_previous_run_current(scoring, registry):
    seed(registry, 20_000)  # a run of this base lasts far longer than the cancel takes to arrive
    first = run_to_end(scoring)
    second = scoring.StartScoringRun(pb.StartScoringRunRequest())
    cancelled = scoring.CancelScoringRun(pb.CancelScoringRunRequest(name=second.name))
    assert cancelled.state == pb.RUN_STATE_CANCELLED
    with raises_status(Code.FAILED_PRECONDITION, reason="RUN_ENDED"):
        scoring.CancelScoringRun(pb.CancelScoringRunRequest(name=second.name))
    chunk = next(iter(scoring.StreamRunResults(pb.StreamRunResultsRequest(run="models/default"))))
    assert chunk.run == first.name


def test_a_run_without_its_registry_fails_and_the_previous_run_stays_current(database_url):
    registry_server = ServerThread(ServerConfig(services=("registry",), listen="127.0.0.1:0",
                                                database_url=database_url))
    scoring_server = ServerThread(ServerConfig(services=("scoring",), listen="127.0.0.1:0", database_url=database_url,
                                               registry_target=registry_server.target))
    try:
        with grpc.insecure_channel(registry_server.target) as reg_channel, \
                grpc.insecure_channel(scoring_server.target) as score_channel:
            seed(rpb_grpc.RegistryServiceStub(reg_channel), 500)
            scoring = pb_grpc.ScoringServiceStub(score_channel)
            first = run_to_end(scoring)
            assert first.state == pb.RUN_STATE_COMPLETED
            registry_server.stop()
            failed = run_to_end(scoring)
            assert failed.state == pb.RUN_STATE_FAILED and "registry" in failed.failure_reason
            chunk = next(iter(scoring.StreamRunResults(pb.StreamRunResultsRequest(run="models/default"))))
            assert chunk.run == first.name
            # Online scoring goes on from the completed run's statistics.
            assert scoring.ScoreSignals(pb.ScoreSignalsRequest(signals={"nps": 40})).run == first.name
    finally:
        scoring_server.stop()


BAD_REQUESTS = [
    ("GetModel", pb.GetModelRequest(name="model/x"), "name"),
    ("ActivateModel", pb.ActivateModelRequest(name="models/default"), "name"),
    ("ListModels", pb.ListModelsRequest(page_size=-1), "page_size"),
    ("CreateModel", pb.CreateModelRequest(model=pb.ValueModel(model_id="Bad Id")), "model.model_id"),
    ("StartScoringRun", pb.StartScoringRunRequest(model="models/NOPE"), "model"),
    ("GetScoringRun", pb.GetScoringRunRequest(name="runs/abc"), "name"),
    ("CancelScoringRun", pb.CancelScoringRunRequest(name=""), "name"),
    ("ListScoringRuns", pb.ListScoringRunsRequest(state=99), "state"),
    ("ListRunResults", pb.ListRunResultsRequest(run="runs/0"), "run"),
    ("GetTierMovement", pb.GetTierMovementRequest(run="runs/x"), "run"),
    ("ScoreSignals", pb.ScoreSignalsRequest(signals={"nps": float("inf")}), "signals[nps]"),
    ("ScoreSignals", pb.ScoreSignalsRequest(signals={"NPS": 1}), "signals[NPS]"),
    ("ScoreCustomer", pb.ScoreCustomerRequest(customer="accounts/nobody"), "customer"),
]


@pytest.mark.parametrize("method,request_message,field", BAD_REQUESTS, ids=[f"{m}-{f}" for m, _, f in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_naming_the_field(scoring_alone, method, request_message, field):
    scoring = scoring_alone
    with raises_status(Code.INVALID_ARGUMENT, field=field):
        getattr(scoring, method)(request_message)


def test_bad_stream_input(scoring, registry):
    seed(registry, 50)
    run_to_end(scoring)
    with raises_status(Code.INVALID_ARGUMENT, field="chunk_size"):
        list(scoring.StreamRunResults(pb.StreamRunResultsRequest(run="models/default", chunk_size=-1)))
    wrong = common_pb2.ColumnarChunk(customer_ids=["a"], column_names=["nps"],
                                     values=common_pb2.Float64Matrix(rows=1, columns=1, data=b"\0" * 4))
    with raises_status(Code.INVALID_ARGUMENT, field="signals.values"):
        list(scoring.ScoreBatch(iter([pb.ScoreBatchRequest(signals=wrong)])))
    infinite = common_pb2.ColumnarChunk(customer_ids=["a"], column_names=["nps"], values=common_pb2.Float64Matrix(
        rows=1, columns=1, data=np.array([np.inf]).tobytes()))
    with raises_status(Code.INVALID_ARGUMENT, field="signals.values[0][nps]"):
        list(scoring.ScoreBatch(iter([pb.ScoreBatchRequest(signals=infinite)])))
