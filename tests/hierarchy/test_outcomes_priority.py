"""The hierarchy's side of outcomes over real gRPC on SQLite and PostgreSQL: churned customers, the bad-profit
reason and ListBadProfits, the trend against the previous run or a chosen one, and WatchPriorityChanges' drop and
into-tier filters. Two runs of the default model; between them customers churn, turn detractors and lose revenue.
The expected values come from the runs' stored results (StreamRunResults)."""

from __future__ import annotations

import contextlib
import io
import threading
import time

import grpc
import numpy as np
import pytest

from clients import cli
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common.config import ServerConfig
from services.hierarchy.servicer import BAD_PROFIT_REASON, CHURNED_REASON
from tests.conftest import ServerThread, _empty_tables, start_server
from tests.grpc_helpers import raises_status
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.scoring.test_outcomes import CHURNED, import_rows, results, run_to_end

Code = grpc.StatusCode
N = 80
TARGETS: dict[int, str] = {}  # id of a suite's hierarchy stub -> its server's target
URLS: dict[str, str] = {}  # server target -> its database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stubs(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('hier-outcomes') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = start_server(url)
    channel = grpc.insecure_channel(server.target)
    grpc.channel_ready_future(channel).result(timeout=10)
    hierarchy = pb_grpc.HierarchyServiceStub(channel)
    TARGETS[id(hierarchy)] = server.target
    URLS[server.target] = url
    yield rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel), hierarchy
    channel.close()
    server.stop()


def collect(call, into: list) -> threading.Thread:
    def read():
        try:
            into.extend(call)
        except grpc.RpcError as error:
            assert error.code() == Code.CANCELLED
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def two_runs(stubs):
    """Run 1; then three customers churn, the most profitable promoters turn detractors (NPS -40) and a third
    of the customers lose 90 % of their revenue and margin; run 2, watched with filters."""
    registry, scoring, hierarchy = stubs
    rng = np.random.default_rng(5)
    rows = {f"hp-{i:03d}": {"annual_revenue": float(rng.lognormal(11, 1)),
                            "gross_margin": float(rng.uniform(0.05, 0.6)), "nps": 60.0,
                            "referenceability": float(rng.uniform(0, 1)), "referrals": 1.0,
                            "use_case_adoption": 0.5} for i in range(N)}
    import_rows(registry, rows)
    first = run_to_end(scoring)
    wait_for_snapshot(hierarchy, first.name)
    before = results(scoring, first.name)
    by_profit = sorted(before, key=lambda c: -before[c]["profitability"])
    detractors, churned = by_profit[:4], by_profit[-3:]
    losers = by_profit[30:57]
    for customer_id in detractors:
        rows[customer_id]["nps"] = -40.0
    for customer_id in losers:
        rows[customer_id]["annual_revenue"] *= 0.1
        rows[customer_id]["gross_margin"] *= 0.1
    lowest = hierarchy.GetHierarchySummary(pb.GetHierarchySummaryRequest()).tiers[-1].tier.tier_id
    watches = {"drop": pb.WatchPriorityChangesRequest(min_composite_drop=5),
               "into": pb.WatchPriorityChangesRequest(into_tier_ids=[lowest]),
               "all": pb.WatchPriorityChangesRequest()}
    calls = {name: hierarchy.WatchPriorityChanges(request, timeout=120) for name, request in watches.items()}
    seen = {name: [] for name in calls}
    threads = [collect(calls[name], seen[name]) for name in calls]
    time.sleep(0.3)  # the watchers register
    import_rows(registry, rows, {c: CHURNED for c in churned})
    second = run_to_end(scoring)
    wait_for_snapshot(hierarchy, second.name)
    time.sleep(0.5)  # the run's changes reach the watchers
    for call in calls.values():
        call.cancel()
    for thread in threads:
        thread.join(10)
    return {"first": first, "second": second, "before": before, "after": results(scoring, second.name),
            "detractors": detractors, "churned": churned, "lowest": lowest, "seen": seen}


def priority(hierarchy, customer_id: str, **options) -> pb.Priority:
    return hierarchy.GetPriority(pb.GetPriorityRequest(customer=f"customers/{customer_id}", **options))


def test_bad_profit_customers_get_the_reason_first_and_are_listed_by_revenue(stubs, two_runs):
    _, _, hierarchy = stubs
    after = two_runs["after"]
    flagged = [c for c, r in after.items() if r["bad_profit"]]
    assert set(two_runs["detractors"]) & set(flagged), "a top-profitability detractor is flagged"
    for customer_id, result in after.items():
        answer = priority(hierarchy, customer_id)
        assert answer.bad_profit == result["bad_profit"]
        assert (answer.reasons[0].text == BAD_PROFIT_REASON) == result["bad_profit"]
        assert answer.lifecycle_stage == common_pb2.LIFECYCLE_STAGE_ACTIVE
    want = sorted(flagged, key=lambda c: (-after[c]["values"]["annual_revenue"], c))
    listed, token = [], ""
    while True:
        page = hierarchy.ListBadProfits(pb.ListBadProfitsRequest(page_size=2, page_token=token))
        assert page.total == len(flagged) and page.run == two_runs["second"].name
        listed += page.customers
        token = page.next_page_token
        if not token:
            break
    assert [c.customer for c in listed] == [f"customers/{c}" for c in want]
    assert [c.revenue for c in listed] == pytest.approx([after[c]["values"]["annual_revenue"] for c in want])
    tier = listed[0].effective_tier.tier_id
    only = hierarchy.ListBadProfits(pb.ListBadProfitsRequest(tier_id=tier)).customers
    assert only and all(c.effective_tier.tier_id == tier for c in only)
    assert not hierarchy.ListBadProfits(pb.ListBadProfitsRequest(owner="nobody")).customers
    with raises_status(Code.INVALID_ARGUMENT, field="tier_id"):
        hierarchy.ListBadProfits(pb.ListBadProfitsRequest(tier_id="gold"))
    with raises_status(Code.INVALID_ARGUMENT, field="page_token"):
        hierarchy.ListBadProfits(pb.ListBadProfitsRequest(tier_id=tier, page_token=token or "bm90IGEgdG9rZW4"))


def test_churned_customers_are_reported_churned_without_standing(stubs, two_runs):
    registry, _, hierarchy = stubs
    default = hierarchy.GetTierPolicy(pb.GetTierPolicyRequest()).default_tier
    # One more churns after the run: the change feed brings its stage.
    late = next(c for c in reversed(list(two_runs["after"])) if not two_runs["after"][c]["bad_profit"])
    assert priority(hierarchy, late).scored
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(customer=rpb.Customer(
        name=f"customers/{late}", lifecycle_stage=CHURNED), update_mask={"paths": ["lifecycle_stage"]}))
    deadline = time.monotonic() + 10
    while priority(hierarchy, late).lifecycle_stage != CHURNED:
        assert time.monotonic() < deadline, "the feed did not bring the stage within 10 s"
        time.sleep(0.02)
    for customer_id in [*two_runs["churned"], late]:
        answer = priority(hierarchy, customer_id)
        assert answer.lifecycle_stage == CHURNED and not answer.scored
        assert not answer.HasField("own_tier") and not answer.HasField("effective_tier")
        assert answer.policy == default and not answer.HasField("trend")
        assert [r.text for r in answer.reasons] == [CHURNED_REASON]
        assert f"customers/{customer_id}" not in [
            c.customer for c in hierarchy.ListBadProfits(pb.ListBadProfitsRequest()).customers]


def test_trend_against_the_previous_run_and_a_chosen_one(stubs, two_runs):
    _, _, hierarchy = stubs
    before, after, first = two_runs["before"], two_runs["after"], two_runs["first"]
    for customer_id in list(after)[:25]:
        default = priority(hierarchy, customer_id)
        chosen = priority(hierarchy, customer_id, compare_run=first.name)
        for trend in (default.trend, chosen.trend):
            assert trend.compare_run == first.name
            assert trend.previous_tier.level == before[customer_id]["level"]
            assert trend.tier_change == before[customer_id]["level"] - after[customer_id]["level"]
            assert trend.composite_change == pytest.approx(default.composite - trend.previous_composite)
        assert chosen.trend.previous_composite == pytest.approx(default.trend.previous_composite)
        assert chosen.trend.compare_time == default.trend.compare_time
    dropped = next(c for c in after if priority(hierarchy, c).trend.tier_change < 0)
    assert "down" in priority(hierarchy, dropped).trend.note
    # No run ended a day before the served one: the trend says so.
    assert "no completed run" in priority(hierarchy, dropped, compare_days_ago=1).trend.note
    with raises_status(Code.NOT_FOUND, reason="RUN_NOT_FOUND"):
        priority(hierarchy, dropped, compare_run="runs/999999")
    with raises_status(Code.INVALID_ARGUMENT, field="compare_run"):
        priority(hierarchy, dropped, compare_run="not a run")
    with raises_status(Code.INVALID_ARGUMENT, field="compare_run"):
        priority(hierarchy, dropped, compare_run=first.name, compare_days_ago=2)
    with raises_status(Code.INVALID_ARGUMENT, field="compare_days_ago"):
        priority(hierarchy, dropped, compare_days_ago=-1)


def test_watch_filters_on_composite_drops_and_crossings_into_a_tier(stubs, two_runs):
    _, _, hierarchy = stubs
    seen, lowest = two_runs["seen"], two_runs["lowest"]
    everything = seen["all"]
    assert everything, "run 2 moved customers"
    drops = [c for c in everything if c.HasField("previous_composite") and c.HasField("composite")
             and c.previous_composite - c.composite > 5]
    assert drops and [c.customer for c in seen["drop"]] == [c.customer for c in drops]
    into = [c.customer for c in everything if c.new_tier.tier_id == lowest]
    assert into and [c.customer for c in seen["into"]] == into
    # The import re-scored customers live before run 2: both kinds of change went through the filters.
    assert {c.live for c in everything} == {True, False}
    live = {c.customer for c in everything if c.live}
    for change in [c for c in everything if not c.live][:20]:
        now = hierarchy.GetPriority(pb.GetPriorityRequest(customer=change.customer))
        if change.HasField("composite"):
            assert change.composite == pytest.approx(now.composite)
        if change.customer not in live and now.trend.HasField("previous_composite"):
            assert change.previous_composite == pytest.approx(now.trend.previous_composite)
    with raises_status(Code.INVALID_ARGUMENT, field="min_composite_drop"):
        next(iter(hierarchy.WatchPriorityChanges(pb.WatchPriorityChangesRequest(min_composite_drop=-1))))
    with raises_status(Code.INVALID_ARGUMENT, field="into_tier_ids"):
        next(iter(hierarchy.WatchPriorityChanges(pb.WatchPriorityChangesRequest(into_tier_ids=["gold"]))))


def test_cvh_bad_profits_and_priority_show_flags_stages_and_trends(stubs, two_runs):
    _, _, hierarchy = stubs
    target = TARGETS[id(hierarchy)]
    flagged = list(hierarchy.ListBadProfits(pb.ListBadProfitsRequest()).customers)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["bad-profits", "--limit", "2", "--server", target]) == 0
    text = out.getvalue()
    assert "repair the relationship before you sell" in text
    assert [line.split()[1] for line in text.splitlines()[3:3 + min(2, len(flagged))]] == \
        [c.customer.removeprefix("customers/") for c in flagged[:2]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["priority", flagged[0].customer, two_runs["churned"][0], "--server", target]) == 0
    text = out.getvalue()
    assert "bad profit at risk" in text and "trend" in text and f"since {two_runs['first'].name}" in text
    assert f"{two_runs['churned'][0]}: churned" in text and "stage      churned" in text
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["bad-profits", "--tier", "gold", "--server", target]) != 0
    assert "tier_id" in err.getvalue() and "Traceback" not in err.getvalue()


def test_a_hierarchy_started_after_two_runs_reads_the_previous_run_for_its_trends(stubs, two_runs):
    _, _, hierarchy = stubs
    target = TARGETS[id(hierarchy)]
    front = ServerThread(ServerConfig(services=("hierarchy",), listen="127.0.0.1:0", database_url=URLS[target],
                                      registry_target=target, scoring_target=target))
    try:
        with grpc.insecure_channel(front.target) as channel:
            fresh = pb_grpc.HierarchyServiceStub(channel)
            wait_for_snapshot(fresh, two_runs["second"].name)
            compared = 0
            for customer_id in list(two_runs["after"])[:10]:
                want, got = priority(hierarchy, customer_id), priority(fresh, customer_id)
                if not want.live:
                    assert got.trend == want.trend and got.bad_profit == want.bad_profit
                    compared += got.trend.HasField("previous_composite")
            assert compared, "the fresh service read the previous run's composites"
    finally:
        front.stop()
