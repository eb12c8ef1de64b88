"""Outcomes: runs store outcome values, lifecycle stages and bad-profit flags; GetOutcomeReport compares two runs
per start tier; GetCustomerHistory reads one customer across runs. Over real gRPC on SQLite and PostgreSQL (one
suite per database for the whole module); the expected figures are computed here in plain Python from the same
fixture data."""

from __future__ import annotations

import contextlib
import copy
import io

import time

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from google.protobuf import json_format

from clients import cli
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from services.common import db
from tests.conftest import _empty_tables, start_server
from tests.grpc_helpers import raises_status
from wire import columns

N = 60
SIGNALS = ["annual_revenue", "gross_margin", "nps", "referenceability", "referrals", "use_case_adoption"]
STORED = ["annual_revenue", "nps", "referenceability", "referrals", "use_case_adoption"]  # the default block's
CHURNED = common_pb2.LIFECYCLE_STAGE_CHURNED
AT_RISK = common_pb2.LIFECYCLE_STAGE_AT_RISK


URLS: dict[str, str] = {}  # server target -> its database


def history_layouts(target: str) -> dict[int, int | None]:
    """run id -> its history layout's bucket count (None: not written yet), read from the database."""
    engine = sa.create_engine(db.normalize_url(URLS[target]))
    with engine.connect() as conn:
        found = dict(conn.execute(sa.text("SELECT run_id, history_buckets FROM scoring_runs")).all())
    engine.dispose()
    return found


def wait_for_layouts(scoring, runs: list[pb.ScoringRun]) -> None:
    """Runs write their history layout just after they complete: wait until these have."""
    deadline = time.monotonic() + 30
    while not all(scoring.GetScoringRun(pb.GetScoringRunRequest(name=r.name)).history_indexed for r in runs):
        assert time.monotonic() < deadline, "history layouts not written within 30 s"
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suite(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('outcomes') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = start_server(url, services=("registry", "scoring"))
    URLS[server.target] = url
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


def hand_report(start: dict[str, dict], end: dict[str, dict], before: dict, after: dict) -> dict:
    """The report's figures per start tier level (and "total"), in plain Python over the fixture's values."""
    out = {}
    levels = sorted({r["level"] for r in start.values()})
    for key in [*levels, "total"]:
        cohort = [c for c, r in start.items() if key == "total" or r["level"] == key]
        kept = [c for c in cohort if c in end]
        m0 = {c: before[c]["annual_revenue"] for c in cohort}
        m1 = {c: after[c]["annual_revenue"] for c in kept}
        nps0 = [before[c]["nps"] for c in cohort if before[c]["nps"] == before[c]["nps"]]
        nps1 = [after[c]["nps"] for c in kept if after[c]["nps"] == after[c]["nps"]]
        flagged = [c for c in kept if end[c]["bad_profit"]]
        out[key] = {
            "customers": len(cohort), "retained": len(kept), "logo": len(kept) / len(cohort),
            "grr": sum(min(m1.get(c, 0.0), m0[c]) for c in cohort) / sum(m0.values()),
            "nrr": sum(m1.values()) / sum(m0.values()),
            "money_lost": sum(m0[c] for c in cohort if c not in end),
            "nps_start": sum(nps0) / len(nps0), "nps_end": sum(nps1) / len(nps1) if nps1 else None,
            "promoters_start": sum(v >= 50 for v in nps0) / len(nps0),
            "detractors_end": sum(v <= 0 for v in nps1) / len(nps1) if nps1 else None,
            "referrals_end": sum(after[c]["referrals"] for c in kept),
            "adoption_change": (sum(after[c]["use_case_adoption"] for c in kept) / len(kept)
                                - sum(before[c]["use_case_adoption"] for c in cohort) / len(cohort)) if kept else None,
            "up": sum(end[c]["level"] < start[c]["level"] for c in kept),
            "down": sum(end[c]["level"] > start[c]["level"] for c in kept),
            "bad_profit": len(flagged),
            "bad_profit_share": sum(m1[c] for c in flagged) / sum(m1.values()) if kept else None,
        }
    return out


def check_line(line: pb.TierOutcome, want: dict) -> None:
    assert (line.customers, line.customers_retained) == (want["customers"], want["retained"])
    assert line.customers_lost == want["customers"] - want["retained"]
    assert line.logo_retention == pytest.approx(want["logo"])
    assert line.gross_revenue_retention == pytest.approx(want["grr"])
    assert line.net_revenue_retention == pytest.approx(want["nrr"])
    assert line.money_lost == pytest.approx(want["money_lost"])
    assert line.nps.mean_start == pytest.approx(want["nps_start"])
    assert line.promoter_share_start == pytest.approx(want["promoters_start"])
    assert (line.moved_up, line.moved_down) == (want["up"], want["down"])
    assert line.moved_up + line.moved_down + line.stayed == want["retained"]
    assert line.bad_profit_customers == want["bad_profit"]
    if want["retained"]:
        assert line.nps.mean_end == pytest.approx(want["nps_end"])
        assert line.detractor_share_end == pytest.approx(want["detractors_end"])
        assert line.referrals.sum_end == pytest.approx(want["referrals_end"])
        assert line.adoption.change == pytest.approx(want["adoption_change"])
        assert line.bad_profit_money_share == pytest.approx(want["bad_profit_share"])
    else:
        assert not line.nps.HasField("mean_end") and not line.HasField("bad_profit_money_share")


def test_outcome_report_matches_a_hand_computation(suite, history):
    _, scoring, _ = suite
    first, second, _ = history["runs"]
    start, end = results(scoring, first.name), results(scoring, second.name)
    want = hand_report(start, end, history["before"], history["after"])
    report = scoring.GetOutcomeReport(pb.GetOutcomeReportRequest(from_run=first.name, to_run=second.name))
    (period,) = report.periods
    assert (period.from_run, period.to_run) == (first.name, second.name)
    assert [t.tier.tier_id for t in period.tiers] == ["strategic", "key", "growth", "core", "standard"]
    for line in period.tiers:
        if line.customers:
            check_line(line, want[line.tier.level])
    check_line(period.total, want["total"])
    assert period.total.customers_lost == 6  # five churned, one deleted
    assert period.total.bad_profit_customers > 0 and period.total.detractor_share_end > 0
    assert period.customers_gained == 5
    assert period.money_gained == pytest.approx(sum(1000.0 * (i + 1) for i in range(N, N + 5)))
    assert period.total.money_end == pytest.approx(sum(history["after"][c]["annual_revenue"] for c in end
                                                       if c in start))
    # The default model names no CSAT signal: its lines are empty, with a note.
    assert not period.total.HasField("csat") and any("no csat signal" in n for n in period.notes)

    # The last three runs: two periods, oldest first, the second the same as asked by name.
    last = scoring.GetOutcomeReport(pb.GetOutcomeReportRequest(model="default", last_runs=3))
    assert [(p.from_run, p.to_run) for p in last.periods] == [(first.name, second.name),
                                                              (second.name, history["runs"][2].name)]
    assert last.periods[0] == period


def test_signals_a_model_names_but_nobody_has_leave_empty_lines_with_notes(suite, history):
    _, scoring, _ = suite
    model = json_format.MessageToDict(scoring.GetModel(pb.GetModelRequest(name="default")),
                                      preserving_proto_field_name=True)
    model = {k: v for k, v in model.items() if k not in ("name", "version", "creator", "create_time", "active")}
    model["model_id"] = "sparse"
    model["outcomes"] = {"nps_signal": "nps", "csat_signal": "csat", "adoption_signal": "no_such_signal",
                         "bad_profit": {"at_most": 0}}
    scoring.CreateModel(pb.CreateModelRequest(model=json_format.ParseDict(model, pb.ValueModel())))
    runs = [run_to_end(scoring, "sparse"), run_to_end(scoring, "sparse")]
    (period,) = scoring.GetOutcomeReport(pb.GetOutcomeReportRequest(from_run=runs[0].name,
                                                                    to_run=runs[1].name)).periods
    total = period.total
    assert not total.HasField("money_start") and not total.HasField("net_revenue_retention")
    assert not total.HasField("csat") and not total.HasField("adoption") and not total.HasField("referrals")
    assert not total.HasField("bad_profit_money_share") and not period.HasField("money_gained")
    assert total.HasField("nps") and total.customers_retained == total.customers
    notes = " | ".join(period.notes)
    for words in ("no money signal", "has a value of csat", "has a value of no_such_signal", "no referrals signal"):
        assert words in notes, notes


def test_outcome_report_bad_input_is_named_by_field(suite, history):
    _, scoring, _ = suite
    first, second, _ = history["runs"]
    sparse = scoring.ListScoringRuns(pb.ListScoringRunsRequest(model_id="sparse")).runs
    cases = [
        (dict(from_run=first.name), grpc.StatusCode.INVALID_ARGUMENT, "to_run", "INVALID_TO_RUN"),
        (dict(from_run="runs/x", to_run=second.name), grpc.StatusCode.INVALID_ARGUMENT, "from_run",
         "INVALID_RUN_NAME"),
        (dict(from_run=second.name, to_run=first.name), grpc.StatusCode.INVALID_ARGUMENT, "to_run",
         "INVALID_TO_RUN"),
        (dict(from_run=first.name, to_run="runs/999999"), grpc.StatusCode.NOT_FOUND, None, "RUN_NOT_FOUND"),
        (dict(from_run=first.name, to_run=sparse[0].name), grpc.StatusCode.INVALID_ARGUMENT, "to_run",
         "RUNS_OF_DIFFERENT_MODELS"),
        (dict(last_runs=1), grpc.StatusCode.INVALID_ARGUMENT, "last_runs", "INVALID_LAST_RUNS"),
        (dict(last_runs=21), grpc.StatusCode.INVALID_ARGUMENT, "last_runs", "INVALID_LAST_RUNS"),
        (dict(last_runs=2, from_run=first.name), grpc.StatusCode.INVALID_ARGUMENT, "from_run",
         "INVALID_FROM_RUN"),
        (dict(last_runs=2, model="default/versions/1"), grpc.StatusCode.INVALID_ARGUMENT, "model",
         "INVALID_MODEL_NAME"),
        (dict(last_runs=2, model="nothing-here"), grpc.StatusCode.FAILED_PRECONDITION, None, "NOT_ENOUGH_RUNS"),
    ]
    for fields, code, field, reason in cases:
        with raises_status(code, field=field, reason=reason):
            scoring.GetOutcomeReport(pb.GetOutcomeReportRequest(**fields))


def test_cvh_outcomes_prints_the_table_and_draws_a_panel_per_outcome(suite, history, tmp_path):
    target, _, _ = suite
    first, second, third = history["runs"]
    out, picture = io.StringIO(), tmp_path / "outcomes.png"
    with contextlib.redirect_stdout(out):
        assert cli.main(["outcomes", "--last", "3", "--out", str(picture), "--server", target]) == 0
    text = out.getvalue()
    assert f"{first.name} (models/default/versions/1) -> {second.name}" in text and third.name in text
    assert "strategic" in text.lower() and "NRR" in text and "note: no csat signal" in text
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["outcomes", "--from", first.name, "--to", "2", "--json", "--server", target]) == 0
    assert '"customersGained": "5"' in out.getvalue() or '"customers_gained"' in out.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["outcomes", "--from", first.name, "--server", target]) == 2
    assert "--from and --to together" in err.getvalue()


def test_customer_history_gives_each_runs_own_result(suite, history):
    _, scoring, _ = suite
    runs = history["runs"]
    wait_for_layouts(scoring, runs)
    listed = {run.name: {r.customer: r for r in scoring.ListRunResults(
        pb.ListRunResultsRequest(run=run.name, page_size=1000)).results} for run in runs}
    for customer_id, scored_in in (("oc-000", [runs[0]]), ("oc-050", runs), ("oc-062", runs[1:])):
        answer = scoring.GetCustomerHistory(pb.GetCustomerHistoryRequest(customer=customer_id, last_runs=3))
        assert answer.customer == f"customers/{customer_id}" and answer.model == "models/default"
        assert [e.run for e in answer.runs] == [r.name for r in reversed(runs)]  # newest first
        for entry, run in zip(answer.runs, reversed(runs)):
            assert entry.model == run.model and entry.end_time == run.end_time
            if run in scored_in:
                assert entry.result == listed[run.name][f"customers/{customer_id}"]
            else:
                assert not entry.HasField("result")
    at_risk = scoring.GetCustomerHistory(pb.GetCustomerHistoryRequest(customer="customers/oc-050"))
    assert len(at_risk.runs) == 3  # the default of 20, of which the model has three
    assert [e.result.lifecycle_stage for e in at_risk.runs] == [AT_RISK, common_pb2.LIFECYCLE_STAGE_ACTIVE,
                                                                 common_pb2.LIFECYCLE_STAGE_ACTIVE]
    assert at_risk.runs[0].result.outcome_values["annual_revenue"] == pytest.approx(
        history["after"]["oc-050"]["annual_revenue"])
    assert at_risk.runs[2].result.outcome_values["referrals"] == history["before"]["oc-050"]["referrals"]
    detractor = scoring.GetCustomerHistory(pb.GetCustomerHistoryRequest(customer="oc-031", last_runs=2))
    assert [e.run for e in detractor.runs] == [runs[2].name, runs[1].name]
    assert all(e.result.outcome_values["nps"] == -30 for e in detractor.runs)


def test_customer_history_bad_input_is_named_by_field(suite, history):
    _, scoring, _ = suite
    cases = [
        (dict(customer="nobody"), grpc.StatusCode.NOT_FOUND, None, "CUSTOMER_NOT_FOUND"),
        (dict(customer=""), grpc.StatusCode.INVALID_ARGUMENT, "customer", "INVALID_CUSTOMER_NAME"),
        (dict(customer="oc-010", last_runs=101), grpc.StatusCode.INVALID_ARGUMENT, "last_runs", "INVALID_LAST_RUNS"),
        (dict(customer="oc-010", last_runs=-1), grpc.StatusCode.INVALID_ARGUMENT, "last_runs", "INVALID_LAST_RUNS"),
        (dict(customer="oc-010", model="default/versions/1"), grpc.StatusCode.INVALID_ARGUMENT, "model",
         "INVALID_MODEL_NAME"),
        (dict(customer="oc-010", model="Bad Name"), grpc.StatusCode.INVALID_ARGUMENT, "model", "INVALID_MODEL_NAME"),
        (dict(customer="oc-010", model="nothing-here"), grpc.StatusCode.FAILED_PRECONDITION, None,
         "NO_COMPLETED_RUN"),
    ]
    for fields, code, field, reason in cases:
        with raises_status(code, field=field, reason=reason):
            scoring.GetCustomerHistory(pb.GetCustomerHistoryRequest(**fields))


def test_cvh_history_prints_a_row_per_run(suite, history, tmp_path):
    target, _, _ = suite
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["history", "oc-000", "--last", "3", "--server", target]) == 0
    text = out.getvalue()
    first, second, third = history["runs"]
    assert "customers/oc-000 in the last 3 completed runs of models/default" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("runs/")}
    assert "not scored" in lines[third.name] and "not scored" in lines[second.name]
    assert "active" in lines[first.name] and "annual_revenue" in lines[first.name]


def test_the_history_layout_buckets_ids_the_same_in_bulk_and_one_by_one():
    from services.scoring import history as layout

    ids = ["", "a", "CUST-00000001", "kundé-ß-東京", "x" * 128] + [f"c-{i}" for i in range(500)]
    for buckets in (1, 2, 64, 4096):
        assert layout.buckets_of(ids, buckets).tolist() == [layout.bucket_of(c, buckets) for c in ids]
    spread = np.bincount(layout.buckets_of([f"CUST-{i:08d}" for i in range(64_000)], 256), minlength=256)
    assert spread.min() > 150 and spread.max() < 350  # about 250 a bucket
    assert [layout.bucket_count(n) for n in (0, 1, 64, 65, 60_000, 1_000_000, 10**8)] == [1, 1, 1, 2, 1024, 16384,
                                                                                            16384]


def test_a_run_without_its_history_layout_is_read_from_its_chunks(suite, history):
    target, scoring, _ = suite
    runs = history["runs"]
    wait_for_layouts(scoring, runs)
    before = scoring.GetCustomerHistory(pb.GetCustomerHistoryRequest(customer="oc-050", last_runs=3))
    engine = sa.create_engine(db.normalize_url(URLS[target]))
    second = int(runs[1].name.removeprefix("runs/"))
    buckets = history_layouts(target)[second]
    with engine.begin() as conn:  # as a run made before runs kept the layout, or whose layout is not written yet
        conn.execute(sa.text("UPDATE scoring_runs SET history_buckets = NULL WHERE run_id = :run"), {"run": second})
    try:
        assert not scoring.GetScoringRun(pb.GetScoringRunRequest(name=runs[1].name)).history_indexed
        after = scoring.GetCustomerHistory(pb.GetCustomerHistoryRequest(customer="oc-050", last_runs=3))
        assert after == before
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE scoring_runs SET history_buckets = :b WHERE run_id = :run"),
                         {"run": second, "b": buckets})
        engine.dispose()
