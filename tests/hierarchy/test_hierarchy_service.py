"""HierarchyService over real gRPC with the registry and scoring services, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import threading
import time

import grpc
import numpy as np
import pytest

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common.config import ServerConfig
from tests.conftest import ServerThread
from tests.grpc_helpers import raises_status
from tests.scoring.test_scoring_service import SIGNALS, run_to_end, seed, stream_results

Code = grpc.StatusCode


def summary_tiers(hierarchy):
    return hierarchy.GetHierarchySummary(pb.GetHierarchySummaryRequest()).tiers


def wait_for_snapshot(hierarchy, run: str, timeout: float = 60) -> pb.SnapshotInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest())
        if info.run == run:
            return info
        time.sleep(0.05)
    raise AssertionError(f"snapshot of {run} not loaded; serving {info.run!r}: {info.status}")


@pytest.fixture
def stubs(channel):
    return (rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel),
            pb_grpc.HierarchyServiceStub(channel))


def test_before_any_run_registered_customers_get_the_default_policy_and_others_are_not_found(stubs):
    registry, _, hierarchy = stubs
    deadline = time.monotonic() + 10
    while "registered customers" not in (info := hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest())).status:
        assert time.monotonic() < deadline, info.status  # the registry's customers are read at start-up
        time.sleep(0.02)
    assert info.run == "" and "default policy" in info.status
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="early", owner="ana", stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER)))
    deadline = time.monotonic() + 5
    while True:  # the change feed brings it
        try:
            priority = hierarchy.GetPriority(pb.GetPriorityRequest(customer="customers/early"))
            break
        except grpc.RpcError as error:
            assert error.code() == Code.NOT_FOUND and time.monotonic() < deadline
            time.sleep(0.02)
    assert not priority.scored and priority.policy == hierarchy.GetTierPolicy(pb.GetTierPolicyRequest()).default_tier
    assert (priority.owner, priority.stakeholder_role) == ("ana", common_pb2.STAKEHOLDER_ROLE_BUYER)
    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        hierarchy.GetPriority(pb.GetPriorityRequest(customer="customers/anyone"))
    with raises_status(Code.INVALID_ARGUMENT, field="customer"):
        hierarchy.GetPriority(pb.GetPriorityRequest(customer="customers/not valid"))


def test_priorities_match_the_stored_run(stubs):
    registry, scoring, hierarchy = stubs
    ids, _ = seed(registry, 2000)
    run = run_to_end(scoring)
    wait_for_snapshot(hierarchy, run.name)
    stored = stream_results(scoring, run.name)
    batch = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(customers=[f"customers/{i}" for i in ids[:300]]))
    assert len(batch.priorities) == 300
    for customer_id, priority in zip(ids[:300], batch.priorities):
        composite, level, rank = stored[customer_id]
        assert priority.scored and priority.run == run.name
        assert priority.composite == pytest.approx(composite) and priority.rank == rank
        assert priority.own_tier.level == level == priority.effective_tier.level  # no parents here
        assert priority.policy.tier_id == priority.effective_tier.tier_id
        assert priority.reasons
    top = next(p for p in batch.priorities if p.rank <= 5) if any(p.rank <= 5 for p in batch.priorities) else None
    if top is not None:
        assert any("overall" in r.text or "top" in r.text for r in top.reasons)
    for tier in summary_tiers(hierarchy):
        members, token = [], ""
        while True:
            page = hierarchy.ListTierMembers(pb.ListTierMembersRequest(tier_id=tier.tier.tier_id, page_size=97,
                                                                       page_token=token))
            members += page.members
            token = page.next_page_token
            if not token:
                break
        assert len(members) == tier.customers
        assert [m.rank for m in members] == sorted(m.rank for m in members)
        assert all(stored[m.customer.split("/")[1]][1] == tier.tier.level for m in members)
    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        hierarchy.GetPriority(pb.GetPriorityRequest(customer="customers/never-imported"))
    # A batch reports it in its place rather than failing; a ranking puts it last.
    batch = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(customers=[ids[0], "never-imported", ids[1]]))
    assert [p.not_found for p in batch.priorities] == [False, True, False]
    assert batch.priorities[1] == pb.Priority(customer="customers/never-imported", not_found=True)
    ranked = hierarchy.RankCustomers(pb.RankCustomersRequest(customers=["never-imported", ids[0]])).ranked
    assert [r.customer for r in ranked] == [f"customers/{ids[0]}", "customers/never-imported"]
    assert ranked[1].not_found and not ranked[0].not_found
    summary = hierarchy.GetHierarchySummary(pb.GetHierarchySummaryRequest())
    assert sum(t.customers for t in summary.tiers) == summary.total_customers == 2000
    assert sum(t.customer_percent for t in summary.tiers) == pytest.approx(100)
    for dimension in range(len(summary.tiers[0].value_percent)):
        assert sum(t.value_percent[dimension].score for t in summary.tiers) == pytest.approx(100)
    total = np.nansum([composite for composite, _, _ in stored.values()])
    for t in summary.tiers:
        held = np.nansum([composite for composite, level, _ in stored.values() if level == t.tier.level])
        assert t.composite_value_percent == pytest.approx(100 * held / total)


def test_inheritance_rules_and_role_precedence_on_a_three_level_tree(stubs):
    registry, scoring, hierarchy = stubs
    ids, matrix = seed(registry, 1000)
    first = stream_results(scoring, run_to_end(scoring).name)
    stored_top = next(customer for customer, (_, _, rank) in first.items() if rank == 1)
    # group (a top customer) -> division -> team, the last two with no signals (lowest tier).
    registry.ImportCustomers(iter([rpb.ImportCustomersRequest(customers=[
        rpb.Customer(customer_id="division", parent=f"customers/{stored_top}",
                     stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER),
        rpb.Customer(customer_id="team", parent="customers/division",
                     stakeholder_role=common_pb2.STAKEHOLDER_ROLE_INTERNAL),
        rpb.Customer(customer_id="peer", parent="customers/division",
                     stakeholder_role=common_pb2.STAKEHOLDER_ROLE_END_USER)])]))
    run = run_to_end(scoring)
    wait_for_snapshot(hierarchy, run.name)

    def levels():
        got = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(
            customers=[f"customers/{stored_top}", "customers/division", "customers/team"])).priorities
        assert not any(p.not_found for p in got), "customers imported before the run are in its snapshot"
        return [(p.own_tier.level, p.effective_tier.level) for p in got]

    policy = hierarchy.GetTierPolicy(pb.GetTierPolicyRequest())
    (top_own, top_eff), (div_own, div_eff), (team_own, team_eff) = levels()
    assert policy.inheritance_rule == pb.INHERITANCE_RULE_PARENT_MINUS_ONE
    assert div_eff == min(div_own, top_eff + 1) and team_eff == min(team_own, div_eff + 1)

    for rule, expect in [(pb.INHERITANCE_RULE_TOP_PARENT, lambda: (min(div_own, top_own), min(team_own, top_own))),
                         (pb.INHERITANCE_RULE_OWN, lambda: (div_own, team_own))]:
        policy.inheritance_rule = rule
        set_policy = hierarchy.SetTierPolicy(pb.SetTierPolicyRequest(policy=policy))
        assert set_policy.version >= 1
        (_, _), (_, div_eff), (_, team_eff) = levels()
        assert (div_eff, team_eff) == expect()

    tree = hierarchy.GetAccountTree(pb.GetAccountTreeRequest(customer="customers/team"))
    assert [a.customer for a in tree.ancestors] == ["customers/division", f"customers/{stored_top}"]
    assert tree.children_total == 0 and tree.rollup.customers == 1
    group = hierarchy.GetAccountTree(pb.GetAccountTreeRequest(customer=f"customers/{stored_top}"))
    assert [c.customer for c in group.children] == ["customers/division"]
    assert group.rollup.customers == 4 and group.rollup.best_tier.level == top_own
    revenue = matrix[ids.index(stored_top), SIGNALS.index("annual_revenue")]  # the only one with signals
    assert group.rollup.signal_sums["annual_revenue"] == pytest.approx(0.0 if math.isnan(revenue) else revenue)
    with raises_status(Code.NOT_FOUND):
        hierarchy.GetAccountTree(pb.GetAccountTreeRequest(customer="customers/ghost"))

    # team (internal) and peer (end user) share a tier and a (missing) score: the role decides.
    ranked = hierarchy.RankCustomers(pb.RankCustomersRequest(customers=["customers/team", "customers/peer"])).ranked
    assert [r.customer for r in ranked] == ["customers/peer", "customers/team"]
    assert ranked[0].decided_by == pb.RANK_RULE_ROLE_PRECEDENCE
    ranked = hierarchy.RankCustomers(pb.RankCustomersRequest(customers=["customers/team", f"customers/{stored_top}"]))
    assert ranked.ranked[0].customer == f"customers/{stored_top}" and ranked.ranked[0].decided_by == pb.RANK_RULE_TIER


def test_a_new_run_swaps_the_snapshot_under_readers(stubs):
    registry, scoring, hierarchy = stubs
    ids, _ = seed(registry, 5000)
    first = run_to_end(scoring)
    wait_for_snapshot(hierarchy, first.name)
    seen, failures, stop = set(), [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                p = hierarchy.GetPriority(pb.GetPriorityRequest(customer=f"customers/{ids[7]}"))
                seen.add(p.run)
                if not p.scored:
                    failures.append("unscored answer")
            except grpc.RpcError as error:
                failures.append(error.code())

    reader = threading.Thread(target=read)
    reader.start()
    second = run_to_end(scoring)
    wait_for_snapshot(hierarchy, second.name)
    time.sleep(0.2)
    stop.set()
    reader.join()
    assert not failures and seen == {first.name, second.name}


def test_watch_priority_changes_live_and_after_a_new_run(stubs, channel):
    registry, scoring, hierarchy = stubs
    ids, _ = seed(registry, 2000)
    first = run_to_end(scoring)
    wait_for_snapshot(hierarchy, first.name)
    climber = next(p for p in hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(
        customers=[f"customers/{i}" for i in ids[:200]])).priorities if p.effective_tier.tier_id == "standard")
    everything = hierarchy.WatchPriorityChanges(pb.WatchPriorityChangesRequest(), timeout=120)
    anns = hierarchy.WatchPriorityChanges(pb.WatchPriorityChangesRequest(owner="ann@example.com"), timeout=120)
    time.sleep(0.3)  # the calls start at once; give the server a moment to register both watchers
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(
        customer=rpb.Customer(name=climber.customer, owner="ann@example.com"),
        update_mask={"paths": ["owner"]}))
    # New signals re-score it at once with the run's model: a live change, not waiting for a run.
    registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
        customer=climber.customer, signals={name: rpb.SignalValue(value=1e9) for name in SIGNALS
                                            if name != "payment_delay_days"})]))
    change = next(c for c in anns)
    assert change.customer == climber.customer and change.run == first.name and change.live
    assert change.previous_tier.tier_id == "standard" and change.new_tier.level < change.previous_tier.level
    seen = next(c for c in everything if c.customer == climber.customer)
    assert seen.new_tier == change.new_tier
    # A customer registered after the run, without signals, is unscored until the next run scores it.
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(customer_id="newcomer",
                                                                            owner="ann@example.com")))
    second = run_to_end(scoring)
    scored = next(c for c in anns if c.customer == "customers/newcomer")
    assert scored.run == second.name and not scored.live and scored.previous_tier.level == 0
    assert scored.new_tier.level > 0
    anns.cancel()
    everything.cancel()
    with raises_status(Code.INVALID_ARGUMENT, field="tier_ids"):
        next(iter(hierarchy.WatchPriorityChanges(pb.WatchPriorityChangesRequest(tier_ids=["gold"]))))


def test_lookups_go_on_when_scoring_stops(database_url):
    core = ServerThread(ServerConfig(services=("registry", "scoring"), listen="127.0.0.1:0",
                                     database_url=database_url))
    front = ServerThread(ServerConfig(services=("hierarchy",), listen="127.0.0.1:0", database_url=database_url,
                                      registry_target=core.target, scoring_target=core.target))
    try:
        with grpc.insecure_channel(core.target) as core_channel, grpc.insecure_channel(front.target) as front_channel:
            ids, _ = seed(rpb_grpc.RegistryServiceStub(core_channel), 300)
            run = run_to_end(spb_grpc.ScoringServiceStub(core_channel))
            hierarchy = pb_grpc.HierarchyServiceStub(front_channel)
            wait_for_snapshot(hierarchy, run.name)
            core.stop()
            time.sleep(0.5)
            for customer_id in ids[:20]:
                assert hierarchy.GetPriority(pb.GetPriorityRequest(customer=f"customers/{customer_id}")).scored
            info = hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest())
            assert info.run == run.name and not info.sources_reachable
    finally:
        front.stop()


BAD_REQUESTS = [
    ("GetPriority", pb.GetPriorityRequest(customer=""), "customer"),
    ("BatchGetPriority", pb.BatchGetPriorityRequest(), "customers"),
    ("BatchGetPriority", pb.BatchGetPriorityRequest(customers=["customers/a", "groups/b"]), "customers[1]"),
    ("RankCustomers", pb.RankCustomersRequest(customers=["customers/a"]), "customers"),
    ("RankCustomers", pb.RankCustomersRequest(customers=["customers/a", "customers/a"]), "customers"),
    ("SetTierPolicy", pb.SetTierPolicyRequest(policy=pb.TierPolicy()), "policy.role_precedence"),
    ("ListTierMembers", pb.ListTierMembersRequest(tier_id="gold"), "tier_id"),
    ("ListTierMembers", pb.ListTierMembersRequest(page_size=-1), "page_size"),
    ("GetAccountTree", pb.GetAccountTreeRequest(customer="customers/x y"), "customer"),
    ("GetAccountTree", pb.GetAccountTreeRequest(customer="customers/a", max_children=-1), "max_children"),
]


@pytest.mark.parametrize("method,request_message,field", BAD_REQUESTS, ids=[f"{m}-{f}" for m, _, f in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_naming_the_field(stubs, method, request_message, field):
    with raises_status(Code.INVALID_ARGUMENT, field=field):
        getattr(stubs[2], method)(request_message)


def _sla(tier_of, name: str, seconds: int, nanos: int = 0):
    def change(policy):
        target = getattr(tier_of(policy).sla, name)
        target.seconds, target.nanos = seconds, nanos
    return change


def _first(policy):
    return policy.tiers[0]


# (field the BadRequest must name, a change that makes the shipped policy contradict itself)
CONTRADICTIONS = [
    ("policy.tiers[0].sla.first_response", _sla(_first, "first_response", -60)),
    ("policy.default_tier.sla.first_response", _sla(lambda p: p.default_tier, "first_response", -1)),
    ("policy.tiers[0].sla.resolution", _sla(_first, "first_response", 10 * 3600)),  # resolution is 8 h
    ("policy.tiers[0].sla.first_response.nanos", _sla(_first, "first_response", 60, 1_500_000_000)),
    ("policy.tiers[0].sla.resolution", _sla(_first, "resolution", 10**15)),
    ("policy.tiers[0].sla.first_response", lambda p: p.tiers[0].sla.ClearField("first_response")),
    ("policy.default_tier.authority.goodwill_credit_limit_minor",
     lambda p: setattr(p.default_tier.authority, "goodwill_credit_limit_minor", -100)),
    ("policy.default_tier.routing_priority", lambda p: setattr(p.default_tier, "routing_priority", -3)),
    ("policy.tiers[1].routing_priority", lambda p: setattr(p.tiers[1], "routing_priority", 0)),
    ("policy.tiers[0].authority.currency", lambda p: setattr(p.tiers[0].authority, "currency", "euro")),
    ("policy.tiers", lambda p: p.ClearField("tiers")),
    ("policy.default_tier", lambda p: p.ClearField("default_tier")),
    ("policy.inheritance_rule", lambda p: setattr(p, "inheritance_rule", pb.INHERITANCE_RULE_UNSPECIFIED)),
    ("policy.escalation_involvement[0].level", lambda p: p.escalation_involvement.add(level="boss")),
    ("policy.escalation_involvement[1].level", lambda p: p.escalation_involvement.extend(
        [pb.EscalationInvolvement(level="front_line"), pb.EscalationInvolvement(level="front_line")])),
    ("policy.escalation_involvement[0].lowest_tier_level", lambda p: p.escalation_involvement.add(
        level="chief_customer_officer", lowest_tier_level=17)),
    ("policy.goodwill_period", lambda p: setattr(p, "goodwill_period", 9)),
]


def test_tier_policies_that_contradict_themselves_are_refused_and_tiers_that_do_not_fit_are_warned(stubs):
    """Each contradiction is INVALID_ARGUMENT naming its field and changes nothing; a policy whose tiers do not
    match the served run's is set with warnings, its missing tiers get default_tier, and the answer stays JSON."""
    from google.protobuf import json_format
    registry, scoring, hierarchy = stubs
    shipped = hierarchy.GetTierPolicy(pb.GetTierPolicyRequest())
    for field, change in CONTRADICTIONS:
        policy = pb.TierPolicy()
        policy.CopyFrom(shipped)
        change(policy)
        with raises_status(Code.INVALID_ARGUMENT, field=field):
            hierarchy.SetTierPolicy(pb.SetTierPolicyRequest(policy=policy))
    assert hierarchy.GetTierPolicy(pb.GetTierPolicyRequest()) == shipped

    ids, _ = seed(registry, 400)
    run = run_to_end(scoring)
    wait_for_snapshot(hierarchy, run.name)
    assert not hierarchy.GetTierPolicy(pb.GetTierPolicyRequest()).warnings  # the shipped policy fits
    renamed = pb.TierPolicy()
    renamed.CopyFrom(shipped)
    renamed.tiers[0].tier_id = "platinum"  # "strategic" loses its entry; "platinum" matches no tier
    stored = hierarchy.SetTierPolicy(pb.SetTierPolicyRequest(policy=renamed))
    assert any("'strategic'" in w and "default_tier" in w for w in stored.warnings), stored.warnings
    assert any("'platinum'" in w and "unused" in w for w in stored.warnings), stored.warnings
    assert hierarchy.GetTierPolicy(pb.GetTierPolicyRequest()).warnings == stored.warnings
    json_format.MessageToJson(hierarchy.GetTierPolicy(pb.GetTierPolicyRequest()))  # what `cvh priority --json` does
    top = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(customers=[f"customers/{i}" for i in ids]))
    strategic = next(p for p in top.priorities if p.effective_tier.tier_id == "strategic")
    assert strategic.policy == shipped.default_tier and strategic.policy.sla.first_response.seconds > 0
    # A policy stored before these checks (read back from the table) is served, and told to fail them.
    from services.hierarchy.policy import policy_warnings
    stale = pb.TierPolicy()
    stale.CopyFrom(shipped)
    stale.tiers[0].sla.resolution.seconds = 10**15
    assert "fails them" in policy_warnings(stale, ["strategic"])[0]


def test_health_is_not_serving_until_the_first_snapshot_after_a_restart_is_loaded(tmp_path):
    """No completed run: SERVING at once. A restart on a base with a completed run: NOT_SERVING (the service and
    "") until the snapshot is in (here held back by stopping its sources), then SERVING, and from then on no
    scored customer is answered "not scored"."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from clients.server_process import free_port

    url, core_address = f"sqlite:///{tmp_path / 'cvh.db'}", f"127.0.0.1:{free_port()}"

    def core() -> ServerThread:
        return ServerThread(ServerConfig(services=("registry", "scoring"), listen=core_address, database_url=url))

    def front() -> ServerThread:
        return ServerThread(ServerConfig(services=("hierarchy",), listen="127.0.0.1:0", database_url=url,
                                         registry_target=core_address, scoring_target=core_address))

    def statuses(channel) -> set[int]:
        check = health_pb2_grpc.HealthStub(channel).Check
        return {check(health_pb2.HealthCheckRequest(service=s), timeout=5).status
                for s in ("", "cvh.hierarchy.v1.HierarchyService")}
    serving = {health_pb2.HealthCheckResponse.SERVING}
    sources, hierarchy_server = core(), front()
    try:
        with grpc.insecure_channel(hierarchy_server.target) as channel:
            assert any(s.status in serving for s in health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=10))  # no completed run: nothing to wait for
        with grpc.insecure_channel(core_address) as channel:
            ids, _ = seed(rpb_grpc.RegistryServiceStub(channel), 300)
            run = run_to_end(spb_grpc.ScoringServiceStub(channel))
        hierarchy_server.stop()
        sources.stop()

        hierarchy_server = front()  # restarted while its sources are down: nothing loaded, nothing promised
        with grpc.insecure_channel(hierarchy_server.target) as channel:
            hierarchy = pb_grpc.HierarchyServiceStub(channel)
            time.sleep(1)
            assert statuses(channel) == {health_pb2.HealthCheckResponse.NOT_SERVING}
            sources = core()
            deadline = time.monotonic() + 30
            while statuses(channel) != serving:
                assert time.monotonic() < deadline, "the hierarchy did not turn SERVING"
                time.sleep(0.02)
            answers = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(customers=[f"customers/{i}" for i in ids]))
            assert all(p.scored and p.run == run.name for p in answers.priorities)
    finally:
        hierarchy_server.stop()
        sources.stop()
