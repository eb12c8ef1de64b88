"""The registry's change feed over real gRPC, on SQLite and PostgreSQL: every kind of write reaches a watcher
in order; a follower resumes from any kept sequence; a compacted log answers FAILED_PRECONDITION; and an
export's sequence plus the feed from there give exactly the current base, with writers racing."""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest
import sqlalchemy as sa

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from services.common import db
from services.registry import feed, store
from services.registry.customers import CustomerRow
from services.registry.signals import SignalCatalog
from tests.grpc_helpers import details_of
from wire.columns import from_matrix

Code = grpc.StatusCode
WAIT = 10  # seconds a change may take to reach a watcher before the test fails (it takes milliseconds)


@pytest.fixture
def registry(registry_with_engine):
    return registry_with_engine[0]


def export(registry, names=("nps",)) -> dict:
    """The base as ExportSignalMatrix gives it: {id: (parent, role, owner, signals)}, and its sequence."""
    base, sequence = {}, None
    for message in registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=list(names))):
        sequence = message.sequence if sequence is None else sequence
        values = from_matrix(message.chunk.values)
        for i, customer_id in enumerate(message.chunk.customer_ids):
            base[customer_id] = (message.parent_ids[i], message.stakeholder_roles[i], message.owners[i],
                                 _signals(names, values[i]))
    return {"base": base, "sequence": sequence}


def _signals(names, row) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, row) if v == v}


def apply(base: dict, message: pb.WatchCustomerChangesResponse, names=("nps",)) -> None:
    """A follower's step: each row of the message is a customer's state (or its deletion)."""
    values = from_matrix(message.chunk.values)
    columns = list(message.chunk.column_names)
    for i, customer_id in enumerate(message.chunk.customer_ids):
        if message.deleted[i]:
            base.pop(customer_id, None)
            continue
        row = dict(zip(columns, values[i]))
        base[customer_id] = (message.parent_ids[i], message.stakeholder_roles[i], message.owners[i],
                             {n: float(row[n]) for n in names if n in row and row[n] == row[n]})


def watch(registry, after: int):
    return registry.WatchCustomerChanges(pb.WatchCustomerChangesRequest(after_sequence=after), timeout=60)


def rows(message) -> list[tuple[str, bool]]:
    return [(customer_id, bool(message.deleted[i])) for i, customer_id in enumerate(message.chunk.customer_ids)]


def test_every_write_reaches_a_watcher_in_order_with_the_customer_as_it_stands(registry):
    start = export(registry)["sequence"]
    stream = watch(registry, start)
    seen_last = start

    def next_change():
        nonlocal seen_last
        message = next(stream)
        assert message.sequences[0] > seen_last and list(message.sequences) == sorted(message.sequences)
        assert message.last_sequence >= message.sequences[-1]
        seen_last = message.last_sequence
        return message

    try:
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="w-a", display_name="A")))
        message = next_change()
        assert rows(message) == [("w-a", False)] and message.display_names == ["A"]

        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
            customer_id="w-b", parent="w-a", stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER)))
        message = next_change()
        assert rows(message) == [("w-b", False)] and message.parent_ids == ["w-a"]
        assert message.stakeholder_roles == bytes([common_pb2.STAKEHOLDER_ROLE_BUYER])

        registry.UpdateCustomer(pb.UpdateCustomerRequest(customer=pb.Customer(name="customers/w-b", owner="ana"),
                                                         update_mask={"paths": ["owner"]}))
        message = next_change()
        assert rows(message) == [("w-b", False)] and message.owners == ["ana"]

        registry.RecordSignals(pb.RecordSignalsRequest(observations=[pb.SignalObservations(
            customer="w-a", signals={"nps": pb.SignalValue(value=-100)})]))
        message = next_change()
        assert rows(message) == [("w-a", False)] and list(message.chunk.column_names) == ["nps"]
        assert from_matrix(message.chunk.values).tolist() == [[-100.0]]

        columns = pb.CustomerColumns(customer_ids=["w-c", "w-d"], parent_ids=["w-a", ""], owners=["bo", ""])
        registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=columns)]))
        message = next_change()  # one transaction: one batch
        assert rows(message) == [("w-c", False), ("w-d", False)] and message.parent_ids == ["w-a", ""]

        registry.DeleteCustomer(pb.DeleteCustomerRequest(name="customers/w-d"))
        message = next_change()
        assert rows(message) == [("w-d", True)] and message.owners == [""]
        assert message.head_sequence >= message.last_sequence
    finally:
        stream.cancel()


def test_a_follower_resumes_from_any_kept_sequence(registry):
    start = export(registry)["sequence"]
    for i in range(3):
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id=f"r-{i}")))
    stream = watch(registry, start + 1)  # it applied the first create already
    try:
        message = next(stream)
        assert rows(message) == [("r-1", False), ("r-2", False)] and message.last_sequence == start + 3
        # From the last sequence applied: nothing until the next write, then only that.
        registry.RecordSignals(pb.RecordSignalsRequest(observations=[pb.SignalObservations(
            customer="r-0", signals={"nps": pb.SignalValue(value=40)})]))
        message = next(stream)
        assert rows(message) == [("r-0", False)] and list(message.sequences) == [start + 4]
    finally:
        stream.cancel()
    again = watch(registry, start + 3)
    try:
        assert rows(next(again)) == [("r-0", False)]
    finally:
        again.cancel()


def test_a_sequence_no_longer_kept_asks_the_follower_to_reload(registry_with_engine):
    registry, engine = registry_with_engine
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="c-old")))
    before = export(registry)["sequence"]
    compacted = feed.compact(engine, retention_seconds=1, now=feed.now_us() + 10**7)  # all older than 1 s
    assert compacted == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM registry_changes")).scalar() == 0
    for after, reason in ((before - 1, "FEED_COMPACTED"), (before + 1, "FEED_AHEAD")):
        with pytest.raises(grpc.RpcError) as caught:
            next(watch(registry, after))
        seen = details_of(caught.value)
        assert (seen.code, seen.reason) == (Code.FAILED_PRECONDITION, reason), seen
        assert "reload" in seen.message
    with pytest.raises(grpc.RpcError) as caught:
        next(watch(registry, -1))
    assert details_of(caught.value).reason == "INVALID_AFTER_SEQUENCE"
    stream = watch(registry, before)  # the compacted-through sequence itself: everything after it is kept
    try:
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="c-new")))
        assert rows(next(stream)) == [("c-new", False)]
    finally:
        stream.cancel()


def test_an_export_and_the_feed_from_its_sequence_give_exactly_the_current_base_under_racing_writers(registry_with_engine):
    """Writers on several threads create, re-parent, re-own, record signals and delete while a follower loads
    an export and then applies the feed from its sequence: it ends with exactly the base as stored, and for
    each customer it got the latest change the log holds (no gap)."""
    registry, engine = registry_with_engine
    ids = [f"x-{i:03d}" for i in range(60)]
    registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=pb.CustomerColumns(customer_ids=ids))]))
    stop = threading.Event()
    writes, failures = [], []

    def write(seed: int) -> None:
        try:
            write_until_stopped(seed)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)

    def write_until_stopped(seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not stop.is_set():
            writes.append(seed)
            customer_id = rng.choice(ids)
            n += 1
            try:
                kind = rng.randrange(4)
                if kind == 0:
                    registry.RecordSignals(pb.RecordSignalsRequest(observations=[pb.SignalObservations(
                        customer=customer_id, signals={"nps": pb.SignalValue(value=rng.uniform(-100, 100))})]))
                elif kind == 1:
                    registry.UpdateCustomer(pb.UpdateCustomerRequest(
                        customer=pb.Customer(name=customer_id, owner=f"o{rng.randrange(5)}"),
                        update_mask={"paths": ["owner"]}))
                elif kind == 2:
                    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
                        customer_id=f"y-{seed}-{n}", parent=customer_id)))
                else:
                    registry.DeleteCustomer(pb.DeleteCustomerRequest(name=f"y-{seed}-{rng.randrange(1, n + 1)}"))
            except grpc.RpcError as error:  # deleting one never made or one with children; never a deadlock
                assert error.code() in (Code.NOT_FOUND, Code.FAILED_PRECONDITION), error

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(0.5)
        loaded = export(registry)  # mid-race
        base, start = loaded["base"], loaded["sequence"]
        stream = watch(registry, start)
        time.sleep(1.0)
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    assert not failures and len(writes) > 20, (failures, len(writes))
    final = export(registry)
    latest_seen: dict[str, int] = {}
    covered = start
    try:
        for message in stream:
            assert message.sequences[0] > covered and message.last_sequence >= message.sequences[-1]
            covered = message.last_sequence
            latest_seen.update(zip(message.chunk.customer_ids, message.sequences))
            apply(base, message)
            if covered >= final["sequence"]:
                break
    finally:
        stream.cancel()
    assert covered == final["sequence"] > start
    assert base == final["base"]
    logged = {}
    with engine.connect() as conn:
        for first, ids in conn.execute(sa.text("SELECT first_seq, customer_ids FROM registry_changes "
                                               "WHERE seq > :a ORDER BY seq"), {"a": start}):
            logged.update((customer_id, first + i) for i, customer_id in enumerate(ids.split("\n"))
                          if start < first + i <= covered)
    assert logged == latest_seen


def test_a_write_holding_the_feed_never_deadlocks_with_one_holding_its_parent(registry_with_engine):
    """RecordSignals on a parent holds its row and then waits for the feed's counter; a create of a child holds
    the counter and, at its commit, checks the (deferred) parent key, which waits for the parent's row. On
    PostgreSQL that was a deadlock (one of them ABORTED): the key checks now run before the counter."""
    registry, engine = registry_with_engine
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="d-parent")))
    catalog, outcome = SignalCatalog(), {}
    holder = engine.connect()
    holder.execution_options(cvh_write=True)  # begins as a write (IMMEDIATE on SQLite), like RecordSignals
    transaction = holder.begin()
    store.fetch(holder, ["d-parent"], for_update=True)

    def create_child() -> None:
        try:
            with db.write_transaction(engine) as conn:
                store.write_customers(conn, catalog, [CustomerRow("d-child", parent_id="d-parent")], {}, 1)
            outcome["child"] = "ok"
        except Exception as error:  # noqa: BLE001 - the outcome is the assertion
            outcome["child"] = repr(error)

    creating = threading.Thread(target=create_child)
    creating.start()
    time.sleep(0.3)  # the create now waits (PostgreSQL: for the parent's row; SQLite: for the write lock)
    store.append_changes(holder, ["d-parent"])
    transaction.commit()
    holder.close()
    creating.join(30)
    assert outcome == {"child": "ok"}


def test_a_follower_far_behind_catches_up_in_bounded_messages(registry):
    """An import of 9,000 customers in two messages: read back from before it, in messages of at most 4,096
    rows whose sequences follow each other without a gap."""
    start = export(registry)["sequence"]
    ids = [f"bulk-{i:05d}" for i in range(9000)]
    registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=pb.CustomerColumns(customer_ids=part))
                                   for part in (ids[:5000], ids[5000:])]))
    stream = watch(registry, start)
    got, covered = [], start
    try:
        while covered < start + 9000:
            message = next(stream)
            assert len(message.chunk.customer_ids) <= feed.MAX_BATCH and message.ByteSize() < 4 * 1024 * 1024
            assert list(message.sequences) == list(range(covered + 1, message.last_sequence + 1))
            covered = message.last_sequence
            got += message.chunk.customer_ids
    finally:
        stream.cancel()
    assert got == ids and covered == start + 9000
