"""Outcomes: runs store outcome values, lifecycle stages and bad-profit flags; GetOutcomeReport compares two runs
per start tier; GetCustomerHistory reads one customer across runs. Over real gRPC on SQLite and PostgreSQL (one
suite per database for the whole module); the expected figures are computed here in plain Python from the same
fixture data."""

from __future__ import annotations

import copy
import json

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from tests.conftest import _empty_tables, start_server
from tests.grpc_helpers import raises_status
from wire import columns

N = 60
SIGNALS = ["annual_revenue", "gross_margin", "nps", "referenceability", "referrals", "use_case_adoption"]
STORED = ["annual_revenue", "nps", "referenceability", "referrals", "use_case_adoption"]  # the default block's
CHURNED = common_pb2.LIFECYCLE_STAGE_CHURNED
AT_RISK = common_pb2.LIFECYCLE_STAGE_AT_RISK


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suite(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('outcomes') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = start_server(url, services=("registry", "scoring"))
    channel = grpc.insecure_channel(server.target)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield server.target, pb_grpc.ScoringServiceStub(channel), rpb_grpc.RegistryServiceStub(channel)
    channel.close()
    server.stop()


def import_rows(registry, rows: dict[str, dict[str, float]], stages: dict[str, int] | None = None) -> None:
    ids = list(rows)
    matrix = np.array([[rows[i].get(s, np.nan) for s in SIGNALS] for i in ids])
    message = columns.customer_columns(ids, SIGNALS, matrix, stages=[(stages or {}).get(i, 0) for i in ids])
    assert registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=message)])).rejected == 0


def run_to_end(scoring, model: str = "") -> pb.ScoringRun:
    run = scoring.StartScoringRun(pb.StartScoringRunRequest(model=model))
    run = list(scoring.WatchScoringRun(pb.WatchScoringRunRequest(name=run.name), timeout=120))[-1]
    assert run.state == pb.RUN_STATE_COMPLETED, run.failure_reason
    return run


def results(scoring, run: str) -> dict[str, dict]:
    """Each customer's tier level, profitability score, outcome values, stage and flag, from StreamRunResults."""
    found = {}
    for chunk in scoring.StreamRunResults(pb.StreamRunResultsRequest(run=run)):
        ids = list(chunk.dimension_scores.customer_ids)
        dims = np.frombuffer(chunk.dimension_scores.values.data, "<f8").reshape(len(ids), -1)
        matrix = chunk.outcome_values
        values = np.frombuffer(matrix.data, "<f8").reshape(matrix.rows, matrix.columns)
        levels = np.frombuffer(chunk.tier_levels, "<i4")
        stages = np.frombuffer(chunk.lifecycle_stages, np.uint8)
        flags = np.frombuffer(chunk.bad_profit, np.uint8)
        for i, customer_id in enumerate(ids):
            found[customer_id] = {"level": int(levels[i]), "profitability": dims[i, 0], "stage": int(stages[i]),
                                  "values": dict(zip(chunk.outcome_signals, values[i].tolist())),
                                  "bad_profit": bool(flags[i])}
    return found


@pytest.fixture(scope="module")
def history(suite):
    """Three runs of the default model. Between the first two: five customers churn, one is deleted, ten lose
    half their revenue, ten expand by half, ten turn detractors (NPS -30), referrals and adoption change, five
    customers arrive; between the second and third, one customer moves to AT_RISK."""
    _, scoring, registry = suite
    rng = np.random.default_rng(17)
    before = {f"oc-{i:03d}": {"annual_revenue": float(rng.lognormal(11, 1)),
                              "gross_margin": float(rng.uniform(0.05, 0.6)),
                              "nps": float(rng.choice([-40, -10, 0, 20, 50, 70, 90])),
                              "referenceability": float(rng.uniform(0, 1)),
                              "referrals": float(rng.integers(0, 5)),
                              "use_case_adoption": float(rng.uniform(0, 0.8))} for i in range(N)}
    before["oc-007"]["nps"] = np.nan  # a missing NPS counts nowhere
    import_rows(registry, before)
    first = run_to_end(scoring)

    after = copy.deepcopy(before)
    churned = [f"oc-{i:03d}" for i in range(5)]
    deleted = "oc-005"
    for i in range(10, 20):
        after[f"oc-{i:03d}"]["annual_revenue"] *= 0.5
    for i in range(20, 30):
        after[f"oc-{i:03d}"]["annual_revenue"] *= 1.5
    for i in range(30, 40):
        after[f"oc-{i:03d}"]["nps"] = -30.0
    for i in range(40, 60):
        after[f"oc-{i:03d}"]["referrals"] += 2
        after[f"oc-{i:03d}"]["use_case_adoption"] = min(1.0, after[f"oc-{i:03d}"]["use_case_adoption"] + 0.2)
    for i in range(N, N + 5):
        after[f"oc-{i:03d}"] = {"annual_revenue": 1000.0 * (i + 1), "gross_margin": 0.3, "nps": 10.0,
                                "referenceability": 0.5, "referrals": 1.0, "use_case_adoption": 0.1}
    import_rows(registry, after, {c: CHURNED for c in churned})
    registry.DeleteCustomer(rpb.DeleteCustomerRequest(name=f"customers/{deleted}"))
    del after[deleted]
    second = run_to_end(scoring)
    import_rows(registry, {"oc-050": after["oc-050"]}, {"oc-050": AT_RISK})
    third = run_to_end(scoring)
    return {"before": before, "after": after, "churned": churned, "deleted": deleted,
            "runs": [first, second, third]}


def test_runs_store_outcome_values_stages_and_flags(suite, history):
    _, scoring, _ = suite
    first, second, third = history["runs"]
    assert list(first.outcome_signals) == STORED
    assert second.churned_left_out == 5
    stored = results(scoring, second.name)
    assert set(stored) == set(history["after"]) - set(history["churned"])
    for customer_id, row in stored.items():
        expected = history["after"][customer_id]
        for name in STORED:
            assert row["values"][name] == pytest.approx(expected[name], rel=1e-12, nan_ok=True)
        assert row["stage"] == common_pb2.LIFECYCLE_STAGE_ACTIVE
    assert results(scoring, third.name)["oc-050"]["stage"] == AT_RISK
    # The flag: profitability in the run's top quartile (ties included) and NPS at or below 0.
    scores = sorted((r["profitability"] for r in stored.values()), reverse=True)
    cut = scores[int(np.ceil(0.25 * len(scores))) - 1]
    flagged = {c for c, r in stored.items() if r["profitability"] >= cut and r["values"]["nps"] <= 0}
    assert flagged and {c for c, r in stored.items() if r["bad_profit"]} == flagged
    # ListRunResults carries the same, by name; a missing value is absent.
    page = scoring.ListRunResults(pb.ListRunResultsRequest(run=first.name, page_size=1000)).results
    by_id = {r.customer.removeprefix("customers/"): r for r in page}
    assert dict(by_id["oc-010"].outcome_values) == pytest.approx({n: history["before"]["oc-010"][n] for n in STORED})
    assert "nps" not in by_id["oc-007"].outcome_values and "annual_revenue" in by_id["oc-007"].outcome_values
    assert by_id["oc-010"].lifecycle_stage == common_pb2.LIFECYCLE_STAGE_ACTIVE
    assert {c for c, r in by_id.items() if r.bad_profit} == {c for c, r in results(scoring, first.name).items()
                                                             if r["bad_profit"]}
