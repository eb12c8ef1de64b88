"""The hierarchy follows the registry's change feed between runs, over real gRPC on SQLite and PostgreSQL: a
customer created after the run answers at once with its role, owner, parent and the standing it inherits; a
parent change re-applies the inheritance rule to the whole subtree; a deletion disappears."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

import scoring_engine
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as spb
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common import db
from services.common.config import ServerConfig
from services.scoring import store as scoring_store
from tests.conftest import ServerThread
from tests.grpc_helpers import raises_status
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.scoring.test_scoring_service import SIGNALS, run_to_end, seed
from wire.columns import to_chunk

FRESH_SECONDS = 5  # what the test allows; the feed and a re-score take milliseconds in one process


def priority(hierarchy, customer_id: str) -> pb.Priority:
    return hierarchy.GetPriority(pb.GetPriorityRequest(customer=f"customers/{customer_id}"))


def found(hierarchy, customer_id: str) -> bool:
    """Whether GetPriority knows the customer (NOT_FOUND: not registered). Until the hierarchy has read the
    registry's customers (feed_sequence 0) it answers anyone with the default: that is not knowing them."""
    if not hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest()).feed_sequence:
        return False
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


def test_an_nps_drop_moves_a_tier_live_and_the_next_run_replaces_it(channel, database_url):
    registry, scoring = rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel)
    hierarchy = pb_grpc.HierarchyServiceStub(channel)
    ids, matrix = seed(registry, 1000)
    first = run_to_end(scoring)
    wait_for_snapshot(hierarchy, first.name)
    # The oracle: the run's fitted model and frozen cut-offs, scored from the tier each holds (hysteresis).
    engine = db.create_engine(database_url)
    with engine.connect() as conn:
        fitted = scoring_engine.FittedModel.from_bytes(scoring_store.latest_completed(conn, "default").fitted)
    engine.dispose()
    held = {p.customer: p.own_tier.level for p in hierarchy.BatchGetPriority(
        pb.BatchGetPriorityRequest(customers=[f"customers/{i}" for i in ids[:500]])).priorities}
    dropped = matrix[:500].copy()
    dropped[:, SIGNALS.index("nps")] = -100
    after = scoring_engine.score(fitted, dropped, previous_tiers=np.array(list(held.values())) - 1)
    row = int(np.flatnonzero(after.tier + 1 != np.array(list(held.values())))[0])
    customer, expected = f"customers/{ids[row]}", int(after.tier[row]) + 1

    watch = hierarchy.WatchPriorityChanges(pb.WatchPriorityChangesRequest(), timeout=60)
    time.sleep(0.3)  # the watcher registers
    registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
        customer=customer, signals={"nps": rpb.SignalValue(value=-100)})]))
    seconds = eventually(lambda: priority(hierarchy, ids[row]), lambda p: p.live, "the live re-score")
    now = priority(hierarchy, ids[row])
    assert seconds < FRESH_SECONDS and now.run == first.name and now.HasField("live_time")
    assert (now.own_tier.level, now.scored) == (expected, True)
    assert now.composite == pytest.approx(after.composite[row]) and now.rank > 0
    change = next(c for c in watch if c.customer == customer)
    assert change.live and change.run == first.name  # no parents here: effective tiers are own tiers
    assert (change.previous_tier.level, change.new_tier.level) == (held[customer], expected)
    watch.cancel()
    info = hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest())
    assert info.live_customers == 1 and info.feed_sequence > 0

    # The next run refits and replaces the live values with its own.
    second = run_to_end(scoring)
    wait_for_snapshot(hierarchy, second.name)
    replaced = priority(hierarchy, ids[row])
    assert replaced.run == second.name and not replaced.live and not replaced.HasField("live_time")
    assert hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest()).live_customers == 0


def test_a_hierarchy_of_its_own_re_scores_through_score_batch_from_the_runs_export(tmp_path):
    """The hierarchy served apart from scoring asks it by ScoreBatch (run and previous_tier_levels) for the live
    scores: what the scoring service's own ScoreBatch gives. The run records the feed sequence its export held,
    and a hierarchy loading it (here: started after a signal changed) applies the feed from there, so that
    change is re-scored live rather than lost."""
    url = f"sqlite:///{tmp_path / 'cvh.db'}"
    core = ServerThread(ServerConfig(services=("registry", "scoring"), listen="127.0.0.1:0", database_url=url))
    front = None
    try:
        with grpc.insecure_channel(core.target) as core_channel:
            registry, scoring = rpb_grpc.RegistryServiceStub(core_channel), spb_grpc.ScoringServiceStub(core_channel)
            ids, matrix = seed(registry, 300)
            run = run_to_end(scoring)
            assert run.export_sequence > 0
            drop = {"nps": rpb.SignalValue(value=-100)}
            registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
                customer=f"customers/{ids[7]}", signals=drop)]))
            front = ServerThread(ServerConfig(services=("hierarchy",), listen="127.0.0.1:0", database_url=url,
                                              registry_target=core.target, scoring_target=core.target))
            with grpc.insecure_channel(front.target) as front_channel:
                hierarchy = pb_grpc.HierarchyServiceStub(front_channel)
                wait_for_snapshot(hierarchy, run.name)
                eventually(lambda: priority(hierarchy, ids[7]), lambda p: p.live, "the change since the export")
                assert not priority(hierarchy, ids[8]).live
                held = priority(hierarchy, ids[5]).own_tier.level
                registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
                    customer=f"customers/{ids[5]}", signals=drop)]))
                eventually(lambda: priority(hierarchy, ids[5]), lambda p: p.live, "the live re-score")
                now = priority(hierarchy, ids[5])
                assert hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest()).live_customers == 2
            signals = matrix[5].copy()
            signals[SIGNALS.index("nps")] = -100

            def score(levels: bytes, run_name: str = run.name):
                return next(scoring.ScoreBatch(iter([spb.ScoreBatchRequest(
                    run=run_name, signals=to_chunk([ids[5]], SIGNALS, signals[None, :]),
                    previous_tier_levels=levels)])))

            asked = score(np.array([held], "<i4").tobytes())
            assert asked.run == run.name
            assert now.composite == np.frombuffer(asked.composite, "<f8")[0]
            assert now.own_tier.level == np.frombuffer(asked.tier_levels, "<i4")[0]
            for levels in (b"\x01", np.array([99], "<i4").tobytes()):  # not one int32 a row; beyond the tiers
                with raises_status(grpc.StatusCode.INVALID_ARGUMENT, field="previous_tier_levels",
                                   reason="INVALID_PREVIOUS_TIER_LEVELS"):
                    score(levels)
            with raises_status(grpc.StatusCode.NOT_FOUND, reason="RUN_NOT_FOUND"):
                score(b"", "runs/999")
    finally:
        if front is not None:
            front.stop()
        core.stop()
