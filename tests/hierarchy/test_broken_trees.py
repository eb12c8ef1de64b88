"""Account trees that break the registry's rules (planted in the tables, as an old database or a hand edit would
hold them): every walk stops, lookups answer, the broken part is named, and health stays SERVING."""

from __future__ import annotations

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common import db
from tests.conftest import start_server
from tests.grpc_helpers import raises_status
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.scoring.test_scoring_service import run_to_end, seed

Code = grpc.StatusCode
TIMEOUT = 10  # seconds: a walk that goes round a cycle fails the test instead of hanging it


def plant_parents(database_url: str, parents: dict[str, str]) -> None:
    engine = db.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE registry_customers SET parent_id = :parent WHERE customer_id = :customer"),
                     [{"customer": c, "parent": p} for c, p in parents.items()])
    engine.dispose()


def test_a_stored_cycle_and_a_tree_too_deep_are_named_and_the_server_stays_healthy(database_url):
    server = start_server(database_url)
    with grpc.insecure_channel(server.target) as channel:
        ids, _ = seed(rpb_grpc.RegistryServiceStub(channel), 60)
    server.stop()
    cycle, under_cycle, healthy = ids[0:2], ids[2], ids[30:32]
    chain = ids[10:22]  # 12 levels, each the parent of the next
    # Written by hand, past the registry's feed: what a hierarchy reads when it starts.
    plant_parents(database_url, {cycle[0]: cycle[1], cycle[1]: cycle[0], under_cycle: cycle[0],
                                 healthy[0]: healthy[1], **{c: p for p, c in zip(chain, chain[1:])}})
    server = start_server(database_url)
    try:
        with grpc.insecure_channel(server.target) as channel:
            _check_broken_trees(channel, cycle, under_cycle, healthy, chain)
    finally:
        server.stop()


def _check_broken_trees(channel, cycle, under_cycle, healthy, chain) -> None:
    registry, scoring = rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel)
    hierarchy = pb_grpc.HierarchyServiceStub(channel)
    wait_for_snapshot(hierarchy, run_to_end(scoring).name)

    def tree(customer_id: str) -> pb.AccountTree:
        return hierarchy.GetAccountTree(pb.GetAccountTreeRequest(customer=f"customers/{customer_id}"), timeout=TIMEOUT)

    named_cycle = f"customers/{cycle[0]} -> customers/{cycle[1]} -> customers/{cycle[0]}"
    for member in (cycle[0], under_cycle):
        with raises_status(Code.FAILED_PRECONDITION, reason="TREE_CORRUPT") as seen:
            tree(member)
        assert named_cycle in seen.message, seen.message
    for link in (chain[0], chain[-1]):  # from the top the walk down stops; from the bottom the walk up
        with raises_status(Code.FAILED_PRECONDITION, reason="TREE_CORRUPT") as seen:
            tree(link)
        assert "more than 10 levels deep" in seen.message and f"customers/{chain[5]}" in seen.message
    assert [a.customer for a in tree(healthy[0]).ancestors] == [f"customers/{healthy[1]}"]
    assert tree(healthy[1]).rollup.customers == 2

    # Priority answers: a broken tree's customers keep their own tier (nothing to inherit from).
    broken = [cycle[0], cycle[1], under_cycle, chain[-1]]
    for rule in (pb.INHERITANCE_RULE_PARENT_MINUS_ONE, pb.INHERITANCE_RULE_TOP_PARENT):
        policy = hierarchy.GetTierPolicy(pb.GetTierPolicyRequest(), timeout=TIMEOUT)
        policy.inheritance_rule = rule
        hierarchy.SetTierPolicy(pb.SetTierPolicyRequest(policy=policy), timeout=TIMEOUT)
        answers = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(
            customers=[f"customers/{c}" for c in broken]), timeout=TIMEOUT).priorities
        assert all(p.scored and p.effective_tier == p.own_tier for p in answers), answers
    assert hierarchy.GetPriority(pb.GetPriorityRequest(customer=f"customers/{cycle[0]}"), timeout=TIMEOUT).scored
    hierarchy.RankCustomers(pb.RankCustomersRequest(customers=[f"customers/{c}" for c in broken]), timeout=TIMEOUT)
    info = hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=TIMEOUT)
    assert "5 customers in a broken account tree" in info.status, info.status  # the cycle, under it, 2 too deep
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    # The registry names the stored cycle, and clearing one parent repairs it.
    with raises_status(Code.FAILED_PRECONDITION, reason="TREE_CORRUPT") as seen:
        registry.CreateCustomer(rpb.CreateCustomerRequest(
            customer=rpb.Customer(customer_id="newcomer", parent=f"customers/{cycle[0]}")), timeout=TIMEOUT)
    assert f"customers/{cycle[0]}" in seen.message and f"customers/{cycle[1]}" in seen.message
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(customer=rpb.Customer(name=f"customers/{cycle[1]}"),
                                                      update_mask=field_mask_pb2.FieldMask(paths=["parent"])),
                            timeout=TIMEOUT)
    wait_for_snapshot(hierarchy, run_to_end(scoring).name)
    assert [a.customer for a in tree(under_cycle).ancestors] == [f"customers/{cycle[0]}", f"customers/{cycle[1]}"]
