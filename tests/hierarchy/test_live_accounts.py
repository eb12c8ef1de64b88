"""The hierarchy follows the registry's change feed between runs, over real gRPC on SQLite and PostgreSQL: a
customer created after the run answers at once with its role, owner, parent and the standing it inherits; a
parent change re-applies the inheritance rule to the whole subtree; a deletion disappears."""

from __future__ import annotations

import time

import grpc

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.scoring.test_scoring_service import run_to_end, seed

FRESH_SECONDS = 5  # what the test allows; the feed takes milliseconds in one process


def priority(hierarchy, customer_id: str) -> pb.Priority:
    return hierarchy.GetPriority(pb.GetPriorityRequest(customer=f"customers/{customer_id}"))


def found(hierarchy, customer_id: str) -> bool:
    """Whether GetPriority knows the customer (NOT_FOUND: not registered)."""
    try:
        priority(hierarchy, customer_id)
        return True
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return False


def eventually(read, check, what: str):
    """``read()`` until ``check`` holds of it; the seconds it took."""
    started = time.monotonic()
    while True:
        value = read()
        if check(value):
            return time.monotonic() - started
        assert time.monotonic() - started < FRESH_SECONDS, f"{what}: still {value}"
        time.sleep(0.02)


def test_customers_created_moved_and_deleted_after_the_run_answer_at_once(channel):
    registry, scoring = rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel)
    hierarchy = pb_grpc.HierarchyServiceStub(channel)
    ids, _ = seed(registry, 200)
    run = run_to_end(scoring)
    wait_for_snapshot(hierarchy, run.name)
    levels = {i: p.effective_tier.level for i, p in zip(ids, hierarchy.BatchGetPriority(
        pb.BatchGetPriorityRequest(customers=[f"customers/{i}" for i in ids])).priorities)}
    # The default rule: a child stands at least one level below its parent's standing.
    top = min(ids, key=levels.get)
    lower = next(i for i in ids if levels[i] == levels[top] + 1)

    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="late-child", parent=f"customers/{top}", owner="ana",
        stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER)))
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="late-grandchild", parent="customers/late-child")))
    eventually(lambda: found(hierarchy, "late-grandchild"), bool, "new grandchild")
    assert priority(hierarchy, "late-grandchild").effective_tier.level
    child = priority(hierarchy, "late-child")
    assert (child.stakeholder_role, child.owner, child.scored) == (common_pb2.STAKEHOLDER_ROLE_BUYER, "ana", False)
    assert child.effective_tier.level == levels[top] + 1 and child.run == run.name
    assert priority(hierarchy, "late-grandchild").effective_tier.level == levels[top] + 2
    tree = hierarchy.GetAccountTree(pb.GetAccountTreeRequest(customer="customers/late-child"))
    assert "late-grandchild" in str(tree)

    # Moved under a lower parent: the whole subtree takes the rule again.
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(
        customer=rpb.Customer(name="customers/late-child", parent=f"customers/{lower}"),
        update_mask={"paths": ["parent"]}))
    eventually(lambda: priority(hierarchy, "late-grandchild").effective_tier.level,
               lambda level: level == levels[top] + 3, "grandchild after the move")
    assert priority(hierarchy, "late-child").effective_tier.level == levels[top] + 2

    # Deleted: gone from the snapshot (not found).
    registry.DeleteCustomer(rpb.DeleteCustomerRequest(name="customers/late-grandchild"))
    eventually(lambda: found(hierarchy, "late-grandchild"), lambda known: not known, "deleted grandchild")
    tree = hierarchy.GetAccountTree(pb.GetAccountTreeRequest(customer="customers/late-child"))
    assert "late-grandchild" not in str(tree)
