"""Lifetime value inside the value model: runs fit BG/NBD and Gamma-Gamma, derive predicted_ltv, p_alive and
expected_purchases, store the fit and online scoring re-derives the same values; over real gRPC on SQLite and
PostgreSQL (one suite per database for the whole module)."""

from __future__ import annotations

import contextlib
import io
import math

import grpc
import numpy as np
import pytest

import scoring_engine
from clients import cli
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from scoring_engine import lifetime_value as lv
from tests.conftest import _empty_tables, start_server
from tests.grpc_helpers import raises_status

N = 400
PURCHASES = ["purchase_frequency", "purchase_recency", "purchase_age", "purchase_spend"]
PROFITABILITY = common_pb2.VALUE_DIMENSION_PROFITABILITY


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suite(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ltv') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = start_server(url, services=("registry", "scoring"))
    channel = grpc.insecure_channel(server.target)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield server.target, pb_grpc.ScoringServiceStub(channel), rpb_grpc.RegistryServiceStub(channel)
    channel.close()
    server.stop()


def import_columns(registry, ids: list[str], names: list[str], matrix: np.ndarray) -> None:
    block = rpb.CustomerColumns(customer_ids=ids, signal_names=names)
    block.signal_values.CopyFrom(common_pb2.Float64Matrix(rows=len(ids), columns=len(names),
                                                          data=np.ascontiguousarray(matrix, "<f8").tobytes()))
    assert registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=block)])).rejected == 0


def run_to_end(scoring, model: str = "") -> pb.ScoringRun:
    run = scoring.StartScoringRun(pb.StartScoringRunRequest(model=model))
    return list(scoring.WatchScoringRun(pb.WatchScoringRunRequest(name=run.name), timeout=120))[-1]


@pytest.fixture(scope="module")
def population(suite):
    """N customers with purchase signals (days) drawn from known BG/NBD and Gamma-Gamma parameters, a revenue, and
    a completed run of the default model over them."""
    _, scoring, registry = suite
    data = lv.simulate(N, {"r": 0.6, "alpha": 20.0, "a": 0.7, "b": 3.0}, {"p": 4.0, "q": 3.0, "gamma": 40.0},
                       age_min=30, age_max=720, seed=3)
    spend = np.where(data.frequency > 0, data.spend, np.nan)
    revenue = np.random.default_rng(4).lognormal(10, 1, N)
    purchases = np.column_stack([data.frequency, data.recency, data.age, spend])
    ids = [f"buyer-{i:04d}" for i in range(N)]
    import_columns(registry, ids, PURCHASES + ["annual_revenue"], np.column_stack([purchases, revenue]))
    run = run_to_end(scoring)
    return ids, purchases, revenue, run


def test_a_run_stores_both_fits_and_every_customer_gets_predicted_ltv(suite, population):
    target, scoring, _ = suite
    ids, purchases, revenue, run = population
    assert run.state == pb.RUN_STATE_COMPLETED, run.failure_reason
    fit = scoring.GetScoringRun(pb.GetScoringRunRequest(name=run.name)).lifetime_value
    assert fit.missing_reason == "" and fit.customers == N and fit.customers_excluded == 0
    assert [p.name for p in fit.bgnbd.parameters] == ["r", "alpha", "a", "b"]
    assert [p.name for p in fit.gamma_gamma.parameters] == ["p", "q", "gamma"]
    assert fit.bgnbd.convergence.converged and fit.gamma_gamma.convergence.converged
    assert fit.bgnbd.customers == N and fit.gamma_gamma.customers == int((purchases[:, 0] > 0).sum())
    assert all(p.value > 0 and p.HasField("standard_error") for p in fit.bgnbd.parameters)
    # The parameters are the engine's maximum-likelihood fit of the same numbers.
    expected = lv.fit(*purchases.T)
    for p in fit.bgnbd.parameters:
        assert p.value == pytest.approx(expected.bgnbd.params[p.name], rel=1e-6)

    # Every customer's derived signals are the engine's predictions under the stored parameters, and the
    # profitability dimension reads predicted_ltv: online scoring with them gives the run's own scores.
    params = ({p.name: p.value for p in fit.bgnbd.parameters}, {p.name: p.value for p in fit.gamma_gamma.parameters})
    predicted = lv.predict(params, *purchases.T, steps=12, step=30.0, discount_rate=0.01)
    results = {}
    for chunk in scoring.StreamRunResults(pb.StreamRunResultsRequest(run=run.name)):
        values = chunk.dimension_scores.values
        dims = np.frombuffer(values.data, "<f8").reshape(-1, values.columns)
        composite = np.frombuffer(chunk.composite, "<f8")
        for i, customer_id in enumerate(chunk.dimension_scores.customer_ids):
            results[customer_id] = (dims[i], composite[i])
    assert len(results) == N
    for i in range(0, N, 7):
        score = scoring.ScoreCustomer(pb.ScoreCustomerRequest(customer=ids[i]))
        derived = dict(score.derived_signals)
        assert derived["predicted_ltv"] == pytest.approx(predicted.clv[i], rel=1e-9)
        assert derived["p_alive"] == pytest.approx(predicted.p_alive[i], rel=1e-9)
        assert derived["expected_purchases"] == pytest.approx(predicted.expected_purchases[i], rel=1e-9)
        ltv = next(c for c in score.contributions if c.signal == "predicted_ltv")
        assert ltv.dimension == PROFITABILITY and ltv.raw_value == pytest.approx(predicted.clv[i], rel=1e-9)
        assert ltv.dimension_points > 0
        dims, composite = results[ids[i]]
        assert score.composite == pytest.approx(composite, rel=1e-9)
        assert score.dimension_scores[0].score == pytest.approx(dims[0], rel=1e-9)

    # What-if scoring and batch scoring derive the same values from the same four numbers.
    signals = dict(zip(PURCHASES, purchases[1]))
    signals = {k: float(v) for k, v in signals.items() if not math.isnan(v)}
    inline = scoring.ScoreSignals(pb.ScoreSignalsRequest(signals=signals | {"annual_revenue": float(revenue[1])}))
    assert inline.derived_signals["predicted_ltv"] == pytest.approx(predicted.clv[1], rel=1e-9)
    assert inline.composite == pytest.approx(results[ids[1]][1], rel=1e-9)
    chunk = common_pb2.ColumnarChunk(customer_ids=ids[:50], column_names=PURCHASES + ["annual_revenue"],
                                     values=common_pb2.Float64Matrix(rows=50, columns=5, data=np.ascontiguousarray(
                                         np.column_stack([purchases[:50], revenue[:50]]), "<f8").tobytes()))
    answer = next(iter(scoring.ScoreBatch(iter([pb.ScoreBatchRequest(signals=chunk)]))))
    derived = np.frombuffer(answer.derived_signals.values.data, "<f8").reshape(50, 3)
    assert list(answer.derived_signals.column_names) == ["predicted_ltv", "p_alive", "expected_purchases"]
    np.testing.assert_allclose(derived[:, 0], predicted.clv[:50], rtol=1e-9)
    np.testing.assert_allclose(np.frombuffer(answer.composite, "<f8"), [results[c][1] for c in ids[:50]], rtol=1e-9)

    # cvh run show prints the parameters and how the fits ended.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["run", "show", run.name, "--server", target]) == 0
    text = out.getvalue()
    assert "BG/NBD" in text and "Gamma-Gamma" in text and "alpha" in text and "converged" in text


def test_a_degenerate_population_leaves_the_derived_signals_missing_and_the_run_completes(suite, population):
    _, scoring, registry = suite
    default = scoring.GetModel(pb.GetModelRequest(name="models/default"))
    model = pb.ValueModel()
    model.CopyFrom(default)
    model.model_id = "flat-buyers"
    model.lifetime_value.frequency_signal = "flat_frequency"
    model.lifetime_value.recency_signal = "flat_recency"
    model.lifetime_value.age_signal = "flat_age"
    model.lifetime_value.spend_signal = "flat_spend"
    scoring.CreateModel(pb.CreateModelRequest(model=model))
    # Nobody bought twice: BG/NBD cannot be fitted.
    ids = population[0][:30]
    import_columns(registry, ids, ["flat_frequency", "flat_recency", "flat_age"],
                   np.column_stack([np.zeros(30), np.zeros(30), np.full(30, 90.0)]))
    run = run_to_end(scoring, "flat-buyers")
    assert run.state == pb.RUN_STATE_COMPLETED, run.failure_reason
    assert "repeat purchase" in run.lifetime_value.missing_reason
    assert run.lifetime_value.customers == 30 and not run.lifetime_value.bgnbd.parameters
    score = scoring.ScoreCustomer(pb.ScoreCustomerRequest(customer=ids[0], model="flat-buyers"))
    assert dict(score.derived_signals) == {}
    ltv = next(c for c in score.contributions if c.signal == "predicted_ltv")
    assert not ltv.HasField("raw_value")


def test_bad_lifetime_value_blocks_are_named_by_field(suite):
    _, scoring, _ = suite
    model = pb.ValueModel()
    model.CopyFrom(scoring.GetModel(pb.GetModelRequest(name="models/default")))
    model.model_id = "bad-ltv"
    model.lifetime_value.recency_signal = "predicted_ltv"
    model.lifetime_value.age_signal = "purchase_frequency"
    model.lifetime_value.horizon_months = -3
    model.lifetime_value.monthly_discount_rate = math.inf
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, reason="INVALID_MODEL") as seen:
        scoring.CreateModel(pb.CreateModelRequest(model=model))
    assert {"model.lifetime_value.recency_signal", "model.lifetime_value.age_signal",
            "model.lifetime_value.horizon_months", "model.lifetime_value.monthly_discount_rate"} <= set(seen.fields)


def test_the_block_round_trips_through_json_and_needs_a_derived_signal_read():
    model = scoring_engine.default_model()
    assert scoring_engine.ValueModel.from_json(model.to_json()) == model
    document = model.to_dict()
    document["signals"] = [s for s in document["signals"] if s["name"] != "predicted_ltv"]
    document["dimensions"][0]["weights"] = [w for w in document["dimensions"][0]["weights"]
                                            if w["signal"] != "predicted_ltv"]
    with pytest.raises(scoring_engine.ModelValidationError) as caught:
        scoring_engine.ValueModel.from_dict(document)
    assert [v.field for v in caught.value.violations] == ["lifetime_value"]
