"""The questions asked of adoption across the base (GetNodeAdoption per tier and time to value,
ListNodeCustomers, RecommendUseCases) and adoption in the value score, over real gRPC with all four services
in one process, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import time

import grpc
import numpy as np
import pytest

from cvh.adoption.v1 import adoption_service_pb2 as pb
from cvh.adoption.v1 import adoption_service_pb2_grpc as pb_grpc
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as spb
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common.config import ServerConfig
from tests.conftest import ServerThread, _empty_tables
from tests.grpc_helpers import raises_status
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.scoring.test_scoring_service import run_to_end
from wire.columns import telemetry_chunk

Code = grpc.StatusCode
N, Rule = pb.ValueNode, pb.ProcedureRule
USE_CASES = ["uc-a", "uc-b", "uc-c", "uc-d"]
# Use cases each customer achieves (one event per use case, today; c03's ten days ago); c06 sends only an event
# no rule counts; c07 to c11 send nothing. c01 and c02 are accounts beneath c00.
ACHIEVED = {"c00": "abcd", "c01": "abc", "c02": "ab", "c03": "a", "c04": "abc", "c05": "abd", "c06": ""}
CUSTOMERS = [f"c{i:02d}" for i in range(12)]


def value_map() -> pb.ValueMapVersion:
    nodes = [N(key="grow", level=1, display_name="Grow", owning_function=1),
             N(key="sell", level=2, display_name="Sell", parent_key="grow", owning_function=2),
             N(key="serve", level=2, display_name="Serve", parent_key="grow", owning_function=3)]
    for i, key in enumerate(USE_CASES):
        letter = key[-1]
        nodes.append(N(key=key, level=3, display_name=key.upper(), parent_key="sell" if i < 2 else "serve",
                       owning_function=4))
        nodes.append(N(key=f"do-{letter}", level=4, display_name=f"Do {letter}", parent_key=key, owning_function=5,
                       procedure_rule=Rule(event_names=[f"{letter}.done"], min_count=1, window_days=30)))
    return pb.ValueMapVersion(change_note="questions", nodes=nodes)


DAY_US = 86_400 * 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suite(request, tmp_path_factory):
    """All four services in one process; customers with telemetry, a value hierarchy evaluated, its signals in
    the registry, then a scoring run of the default model loaded by the hierarchy."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('questions') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = ServerThread(ServerConfig(services=("registry", "scoring", "hierarchy", "adoption"),
                                       listen="127.0.0.1:0", database_url=url))
    channel = grpc.insecure_channel(server.target)
    registry, scoring = rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel)
    adoption, hierarchy = pb_grpc.AdoptionServiceStub(channel), hpb_grpc.HierarchyServiceStub(channel)
    revenue = np.linspace(1e5, 1e6, len(CUSTOMERS))
    registry.ImportCustomers(iter([rpb.ImportCustomersRequest(customers=[
        rpb.Customer(customer_id=c, owner="ann" if i % 2 == 0 else "bob",
                     parent="customers/c00" if c in ("c01", "c02") else "",
                     stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER,
                     signals={"annual_revenue": rpb.SignalValue(value=float(revenue[i])),
                              "beta_programs": rpb.SignalValue(value=2.0),
                              "feature_adoption": rpb.SignalValue(value=0.5)})
        for i, c in enumerate(CUSTOMERS)])]))
    events = [(c, f"{letter}.done") for c, letters in ACHIEVED.items() for letter in letters] + [("c06", "x.seen")]
    ids, names = sorted(ACHIEVED), sorted({e for _, e in events})
    adoption.RecordTelemetry(iter([telemetry_chunk(ids, names, [ids.index(c) for c, _ in events],
                                                   [names.index(e) for _, e in events],
                                                   [now_us() - (10 * DAY_US if c == "c03" else 0) for c, _ in events])]))
    adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map()))
    deadline = time.monotonic() + 30
    while True:  # evaluated, and its signals in the registry
        with contextlib.suppress(grpc.RpcError):
            report = adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="grow"))
            signals = registry.GetCustomer(rpb.GetCustomerRequest(name="customers/c06")).signals
            if report.customers_evaluated == len(ACHIEVED) and "use_case_adoption" in signals:
                break
        assert time.monotonic() < deadline, "the value hierarchy was not evaluated"
        time.sleep(0.05)
    run = run_to_end(scoring)
    assert run.state == spb.RUN_STATE_COMPLETED, run.failure_reason
    wait_for_snapshot(hierarchy, run.name)
    yield adoption, hierarchy, scoring, run, server.target, url
    channel.close()
    server.stop()


def tiers_of(hierarchy) -> dict[str, str]:
    got = hierarchy.BatchGetPriority(hpb.BatchGetPriorityRequest(customers=[f"customers/{c}" for c in CUSTOMERS]))
    return {c: p.own_tier.tier_id for c, p in zip(CUSTOMERS, got.priorities)}


def achieved(customer: str) -> set[str]:
    return {f"uc-{letter}" for letter in ACHIEVED.get(customer, "")}


def listed(adoption, **fields) -> list[pb.NodeCustomer]:
    """Every page of two, each page telling the same total."""
    found, token, totals = [], "", set()
    while True:
        page = adoption.ListNodeCustomers(pb.ListNodeCustomersRequest(page_size=2, page_token=token, **fields))
        found += page.customers
        totals.add(page.total_size)
        if not (token := page.next_page_token):
            assert totals == {len(found)}
            return found


def test_more_use_cases_achieved_score_higher_in_feedback_and_innovation(suite):
    """The issue's "Done when": a scoring run after telemetry arrives reads use_case_adoption."""
    _, _, scoring, run, _, _ = suite
    scores = {}
    for chunk in scoring.StreamRunResults(spb.StreamRunResultsRequest(run=run.name)):
        matrix = chunk.dimension_scores
        columns = list(matrix.column_names)
        values = np.frombuffer(matrix.values.data, "<f8").reshape(len(matrix.customer_ids), len(columns))
        feedback = columns.index(next(c for c in columns if "feedback" in c.lower()))
        scores.update(zip(matrix.customer_ids, values[:, feedback].tolist()))
    by_count = sorted(ACHIEVED, key=lambda c: len(ACHIEVED[c]))
    for fewer, more in itertools.pairwise(by_count):
        if len(ACHIEVED[fewer]) < len(ACHIEVED[more]):
            assert scores[fewer] < scores[more], (fewer, more, scores)
        else:
            assert scores[fewer] == pytest.approx(scores[more])


def test_node_adoption_per_tier_and_time_to_value(suite):
    adoption, hierarchy, *_ = suite
    tiers = tiers_of(hierarchy)
    report = adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="uc-a"))
    (share,) = report.nodes
    assert share.customers_achieved == 6 and share.median_days_to_value == 0  # all created and achieved today
    figures = {t.tier_id: t for t in share.tiers}
    assert figures and set(figures) >= {t for t in tiers.values() if t}
    for tier_id, t in figures.items():
        members = [c for c in CUSTOMERS if tiers[c] == tier_id]
        assert t.customers == len(members)
        assert t.customers_achieved == sum("uc-a" in achieved(c) for c in members)
        assert t.share == pytest.approx(t.customers_achieved / t.customers if t.customers else 0.0)
    some = next(iter(figures))
    only = adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="uc-a", tier_id=some)).nodes[0]
    assert [t.tier_id for t in only.tiers] == [some]
    nobody = adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="do-d")).nodes[0]
    assert nobody.customers_achieved == 2 and nobody.HasField("median_days_to_value")
    with raises_status(Code.INVALID_ARGUMENT, field="tier_id", reason="INVALID_TIER_ID"):
        adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(tier_id="no-such-tier"))
    tree = adoption.GetCustomerAdoption(pb.GetCustomerAdoptionRequest(customer="c03"))
    days = {n.key: n.days_to_value if n.HasField("days_to_value") else None for n in tree.nodes}
    assert days["uc-a"] == 0 and days["uc-b"] is None  # achieved (by history) before it was created: 0
    # The activation derived the first days over the kept history: the event of ten days ago.
    first = {n.key: n.first_achieved_day for n in tree.nodes}
    assert first["uc-a"] == first["do-a"] == str(dt.date.fromisoformat(tree.evaluated_day) - dt.timedelta(days=10))
    assert first["uc-b"] == "" and first["grow"] == ""


def test_node_customers_achieved_or_not_by_tier_owner_and_account(suite):
    adoption, hierarchy, *_ = suite
    tiers = tiers_of(hierarchy)
    have = listed(adoption, node_key="uc-c")
    assert {c.customer for c in have} == {"customers/c00", "customers/c01", "customers/c04"}
    assert all(c.achieved and c.first_achieved_day and c.procedures_achieved_share == 1.0 for c in have)
    assert all(c.tier_id == tiers[c.customer.split("/")[1]] for c in have)
    missing = listed(adoption, node_key="uc-c", achievement=pb.ACHIEVEMENT_NOT_ACHIEVED)
    # Customers without telemetry are targets too.
    assert {c.customer.split("/")[1] for c in missing} == set(CUSTOMERS) - {"c00", "c01", "c04"}
    assert not any(c.achieved or c.first_achieved_day for c in missing)
    sell = listed(adoption, node_key="sell", achievement=pb.ACHIEVEMENT_NOT_ACHIEVED, owner="bob")
    # sell needs uc-a and uc-b: c03 (bob) has one of its two procedures.
    assert {c.customer: c.procedures_achieved_share for c in sell} == {
        "customers/c03": 0.5, "customers/c07": 0.0, "customers/c09": 0.0, "customers/c11": 0.0}
    assert {c.customer for c in listed(adoption, node_key="uc-b", account="customers/c00")} == {
        "customers/c00", "customers/c01", "customers/c02"}
    some = next(t for t in tiers.values() if t)
    assert {c.customer.split("/")[1] for c in listed(adoption, node_key="uc-a", tier_id=some)} == {
        c for c in CUSTOMERS if tiers[c] == some and "uc-a" in achieved(c)}
    with raises_status(Code.INVALID_ARGUMENT, field="account", reason="INVALID_ACCOUNT"):
        adoption.ListNodeCustomers(pb.ListNodeCustomersRequest(node_key="uc-a", account="ghost"))
    with raises_status(Code.INVALID_ARGUMENT, field="achievement", reason="INVALID_ACHIEVEMENT"):
        adoption.ListNodeCustomers(pb.ListNodeCustomersRequest(node_key="uc-a", achievement=7))
    with raises_status(Code.INVALID_ARGUMENT, field="node_key", reason="INVALID_NODE_KEY"):
        adoption.ListNodeCustomers(pb.ListNodeCustomersRequest())
    with raises_status(Code.NOT_FOUND, reason="NODE_NOT_FOUND"):
        adoption.ListNodeCustomers(pb.ListNodeCustomersRequest(node_key="nowhere"))
    with raises_status(Code.INVALID_ARGUMENT, field="page_token", reason="INVALID_PAGE_TOKEN"):
        first = adoption.ListNodeCustomers(pb.ListNodeCustomersRequest(node_key="uc-a", page_size=1))
        adoption.ListNodeCustomers(pb.ListNodeCustomersRequest(node_key="uc-b", page_token=first.next_page_token))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def test_recommendations_come_from_the_nearest_peers_of_the_same_tier(suite):
    adoption, hierarchy, *_ = suite
    tiers = tiers_of(hierarchy)
    for customer in ("c02", "c03", "c09"):
        answer = adoption.RecommendUseCases(pb.RecommendUseCasesRequest(customer=customer, peers=3))
        tier = tiers[customer]
        assert answer.customer == f"customers/{customer}" and answer.tier_id == tier
        candidates = [c for c in ACHIEVED if c != customer and (not tier or tiers[c] == tier)]
        near = [c for c in candidates if jaccard(achieved(c), achieved(customer)) > 0]
        peers = sorted(near, key=lambda c: -jaccard(achieved(c), achieved(customer)))[:3] if near else candidates
        # The peers' set is fixed up to ties in similarity: compare what does not depend on them.
        assert answer.peers == len(peers)
        if peers:
            assert answer.mean_similarity == pytest.approx(np.mean([jaccard(achieved(c), achieved(customer))
                                                                    for c in peers]))
        base_share = {u: sum(u in achieved(c) for c in ACHIEVED) / len(ACHIEVED) for u in USE_CASES}
        for use_case in answer.use_cases:
            assert use_case.key not in achieved(customer) and use_case.peer_share > 0
            assert use_case.base_share == pytest.approx(base_share[use_case.key])
            assert use_case.lift == pytest.approx(use_case.peer_share / use_case.base_share)
        assert [u.peer_share for u in answer.use_cases] == sorted((u.peer_share for u in answer.use_cases),
                                                                  reverse=True)
    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        adoption.RecommendUseCases(pb.RecommendUseCasesRequest(customer="ghost"))
    with raises_status(Code.INVALID_ARGUMENT, field="limit", reason="INVALID_LIMIT"):
        adoption.RecommendUseCases(pb.RecommendUseCasesRequest(customer="c02", limit=101))
    with raises_status(Code.INVALID_ARGUMENT, field="peers", reason="INVALID_PEERS"):
        adoption.RecommendUseCases(pb.RecommendUseCasesRequest(customer="c02", peers=-1))


def test_an_adoption_service_alone_reads_tiers_owners_and_accounts_through_the_hierarchys_rpcs(suite):
    """CVH_HIERARCHY_TARGET: ListTierMembers for tiers and owners, GetAccountTree for an account's subtree; the
    answers are those of the service that shares the hierarchy's process."""
    adoption, *_, target, url = suite
    alone = ServerThread(ServerConfig(services=("adoption",), listen="127.0.0.1:0", database_url=url,
                                      registry_target=target, hierarchy_target=target))
    try:
        with grpc.insecure_channel(alone.target) as channel:
            remote = pb_grpc.AdoptionServiceStub(channel)
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(grpc.RpcError):
                    if remote.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="grow")).customers_evaluated:
                        break
                assert time.monotonic() < deadline, "the service alone did not evaluate"
                time.sleep(0.05)
            for key in ("uc-a", "uc-c"):
                here = adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key=key)).nodes[0]
                there = remote.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key=key)).nodes[0]
                assert list(there.tiers) == list(here.tiers) and there.tiers
                assert there.median_days_to_value == here.median_days_to_value
            for fields in ({"owner": "bob", "achievement": pb.ACHIEVEMENT_NOT_ACHIEVED}, {"account": "c00"}):
                assert listed(remote, node_key="uc-b", **fields) == listed(adoption, node_key="uc-b", **fields)
            assert remote.RecommendUseCases(pb.RecommendUseCasesRequest(customer="c03")) == \
                adoption.RecommendUseCases(pb.RecommendUseCasesRequest(customer="c03"))
            with raises_status(Code.INVALID_ARGUMENT, field="account", reason="INVALID_ACCOUNT"):
                remote.ListNodeCustomers(pb.ListNodeCustomersRequest(node_key="uc-a", account="ghost"))
    finally:
        alone.stop()
