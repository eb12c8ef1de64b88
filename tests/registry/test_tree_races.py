"""Concurrent writers (real gRPC calls from threads, each on its own database connection), on PostgreSQL where
READ COMMITTED let them interleave, and on SQLite: the account tree stays free of cycles and within its depth,
and each racing call gets the code it would get alone."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2, timestamp_pb2

from cvh.registry.v1 import registry_service_pb2 as pb
from cvh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from services.common import db
from services.common.interceptors import _as_service_error
from services.registry import store
from services.registry.store import MAX_DEPTH
from tests.conftest import _empty_tables, start_server
from tests.grpc_helpers import details_of

Code = grpc.StatusCode
ROUNDS = 30
CALL_TIMEOUT = 20  # seconds: a call stuck on a lock fails the test instead of hanging it


@pytest.fixture
def registry(registry_with_engine):
    return registry_with_engine[0]


@pytest.fixture
def stored_parents(registry_with_engine) -> Callable[[], dict[str, str | None]]:
    engine = registry_with_engine[1]

    def read() -> dict[str, str | None]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT customer_id, parent_id FROM registry_customers")).all())
    return read


def race(*calls: Callable[[], object]) -> list[tuple[Code | str, str, object]]:
    """Run ``calls`` at the same instant on threads; each outcome is ("OK", "", answer) or (code, reason, None)."""
    start = threading.Barrier(len(calls))

    def run(call):
        start.wait()
        try:
            return "OK", "", call()
        except grpc.RpcError as error:
            seen = details_of(error)
            return seen.code, seen.reason, None
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def create(registry, customer_id: str, parent: str = ""):
    customer = pb.Customer(customer_id=customer_id, parent=f"customers/{parent}" if parent else "")
    return lambda: registry.CreateCustomer(pb.CreateCustomerRequest(customer=customer), timeout=CALL_TIMEOUT)


def set_parent(registry, customer_id: str, parent: str):
    change = pb.Customer(name=f"customers/{customer_id}", parent=f"customers/{parent}")
    request = pb.UpdateCustomerRequest(customer=change, update_mask=field_mask_pb2.FieldMask(paths=["parent"]))
    return lambda: registry.UpdateCustomer(request, timeout=CALL_TIMEOUT)


def import_rows(registry, *messages: list[tuple[str, str]]):
    requests = [pb.ImportCustomersRequest(customers=[
        pb.Customer(customer_id=c, parent=f"customers/{p}" if p else "") for c, p in rows]) for rows in messages]
    return lambda: registry.ImportCustomers(iter(requests), timeout=CALL_TIMEOUT)


def problems_of(parents: dict[str, str | None], prefix: str) -> list[str]:
    """Customers named ``prefix...`` in a cycle or more than MAX_DEPTH levels down."""
    found = []
    for customer_id in (c for c in parents if c.startswith(prefix)):
        path, current = [customer_id], parents[customer_id]
        while current is not None and current not in path and len(path) <= MAX_DEPTH:
            path.append(current)
            current = parents.get(current)
        if current is not None or len(path) > MAX_DEPTH:
            found.append(" -> ".join(path + [current or ""]))
    return found


def test_racing_parent_changes_never_store_a_cycle(registry, stored_parents):
    """Round by round, A.parent = B races B.parent = A (by UpdateCustomer, or an import for the second)."""
    for i in range(ROUNDS):
        a, b = f"cyc-a{i}", f"cyc-b{i}"
        import_rows(registry, [(a, ""), (b, "")])()
        second = set_parent(registry, b, a) if i % 2 else import_rows(registry, [(b, a)])
        first_outcome, second_outcome = race(set_parent(registry, a, b), second)
        refused = (Code.FAILED_PRECONDITION, "PARENT_CYCLE")
        assert first_outcome[0] == "OK" or first_outcome[:2] == refused, first_outcome
        if i % 2:
            assert second_outcome[0] == "OK" or second_outcome[:2] == refused, second_outcome
        else:  # the import reports the row it refused
            summary = second_outcome[2]
            assert summary is not None and summary.created + summary.updated + summary.rejected == 1, second_outcome
        parents = stored_parents()
        assert not (parents[a] == b and parents[b] == a), f"round {i}: a cycle was stored"
    assert problems_of(stored_parents(), "cyc-") == []


def test_racing_moves_and_additions_never_make_a_tree_too_deep(registry, stored_parents):
    """Moving a two-level subtree under level 8 (its leaf lands on level 10) races adding a child to that leaf."""
    chain = [(f"deep-{level}", f"deep-{level - 1}" if level > 1 else "") for level in range(1, MAX_DEPTH - 1)]
    import_rows(registry, chain)()
    bottom = chain[-1][0]  # level 8
    for i in range(ROUNDS):
        top, leaf, child = f"move-top{i}", f"move-leaf{i}", f"move-child{i}"
        import_rows(registry, [(top, ""), (leaf, top)])()
        moved, added = race(set_parent(registry, top, bottom), create(registry, child, leaf))
        for outcome in (moved, added):
            assert outcome[0] == "OK" or outcome[:2] == (Code.FAILED_PRECONDITION, "TREE_TOO_DEEP"), outcome
        assert "OK" in (moved[0], added[0])
    assert problems_of(stored_parents(), "move-") == []


def test_racing_creates_of_one_new_id_one_wins_the_other_already_exists(registry):
    for i in range(ROUNDS):
        outcomes = race(create(registry, f"twin-{i}"), create(registry, f"twin-{i}"))
        assert sorted(str(code) for code, _, _ in outcomes) == sorted(["OK", str(Code.ALREADY_EXISTS)]), outcomes


def test_deleting_a_parent_while_a_child_is_created_refuses_one_of_them(registry, stored_parents):
    for i in range(ROUNDS):
        parent, child = f"gone-parent-{i}", f"gone-child-{i}"
        create(registry, parent)()
        deleted, created = race(
            lambda: registry.DeleteCustomer(pb.DeleteCustomerRequest(name=f"customers/{parent}"), timeout=CALL_TIMEOUT),
            create(registry, child, parent))
        outcome = (deleted[:2], created[:2])
        assert outcome in (((("OK", ""), (Code.FAILED_PRECONDITION, "PARENT_NOT_FOUND"))),
                           ((Code.FAILED_PRECONDITION, "HAS_CHILDREN"), ("OK", ""))), outcome
        parents = stored_parents()
        assert parents.get(child) is None or parent in parents, f"round {i}: an orphan was stored"


def test_identical_imports_of_new_ids_both_succeed(registry, stored_parents):
    rounds = 8
    for i in range(rounds):
        ids = [f"imp{i}-{k}" for k in range(300)]
        # Two messages, children first: each row's parent is the one before it (every tenth row starts a tree).
        rows = [(c, ids[k - 1] if k % 10 else "") for k, c in enumerate(ids)]
        messages = (rows[155:], rows[:155])
        outcomes = race(import_rows(registry, *messages), import_rows(registry, *messages))
        for code, reason, summary in outcomes:
            assert code == "OK", (code, reason)
            assert summary.rejected == 0 and summary.created + summary.updated == len(ids), summary
        assert sum(summary.created for _, _, summary in outcomes) == len(ids)
    parents = stored_parents()
    assert all(f"imp{i}-{k}" in parents for i in range(rounds) for k in range(300))


def test_deleting_a_customer_while_it_is_written_deletes_all_of_it_or_nothing(registry, registry_with_engine):
    """DeleteCustomer races RecordSignals (an older observation, so history is written) or UpdateCustomer."""
    engine = registry_with_engine[1]
    for i in range(ROUNDS):
        customer_id = f"busy-{i}"
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
            customer_id=customer_id, labels={"region": "emea"},
            signals={"nps": pb.SignalValue(value=5, observe_time=timestamp_pb2.Timestamp(seconds=1_700_000_000))})))
        if i % 2:
            change = pb.Customer(name=f"customers/{customer_id}", owner="ann")
            write = lambda: registry.UpdateCustomer(pb.UpdateCustomerRequest(  # noqa: E731
                customer=change, update_mask=field_mask_pb2.FieldMask(paths=["owner"])), timeout=CALL_TIMEOUT)
        else:
            older = pb.SignalObservations(customer=f"customers/{customer_id}", signals={
                "nps": pb.SignalValue(value=3, observe_time=timestamp_pb2.Timestamp(seconds=1_600_000_000))})
            write = lambda: registry.RecordSignals(  # noqa: E731
                pb.RecordSignalsRequest(observations=[older]), timeout=CALL_TIMEOUT)
        deleted, written = race(
            lambda: registry.DeleteCustomer(pb.DeleteCustomerRequest(name=f"customers/{customer_id}"),
                                            timeout=CALL_TIMEOUT), write)
        assert deleted[0] == "OK" and written[:2] in (("OK", ""), (Code.NOT_FOUND, "CUSTOMER_NOT_FOUND")), (deleted, written)
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM registry_customers WHERE customer_id = :c"),
                                {"c": customer_id}).scalar_one()
        assert left == 0, f"round {i}: the delete answered OK but left the customer"


def test_a_deadlock_postgresql_resolves_is_aborted_not_database_unavailable(postgres_database):
    """Two transactions lock two rows in opposite orders; the one PostgreSQL rolls back maps to ABORTED."""
    engine = db.create_engine(postgres_database)
    rows = [f"lock-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO registry_customers (customer_id, stakeholder_role, revision, create_time_us, "
                             "update_time_us) VALUES (:c, 2, 1, 0, 0)"), [{"c": c} for c in rows])
    both_hold_one = threading.Barrier(2)

    def lock(first: str, second: str):
        try:
            with engine.begin() as conn:
                for customer_id in (first, second):
                    conn.execute(sa.text("SELECT 1 FROM registry_customers WHERE customer_id = :c FOR UPDATE"),
                                 {"c": customer_id})
                    if customer_id == first:
                        both_hold_one.wait()
        except sa.exc.DBAPIError as error:
            return _as_service_error(error)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lock, rows, rows[::-1]))
    engine.dispose()
    errors = [o for o in outcomes if o is not None]
    assert len(errors) == 1 and errors[0].code == Code.ABORTED and errors[0].reason == "CONCURRENT_WRITE", outcomes


def test_an_import_racing_record_signals_for_one_customer_keeps_both(registry):
    """Each writes the customer's signals from the row it read: without the row lock one of them was lost."""
    stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    for i in range(ROUNDS):
        customer_id = f"shared-{i}"
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
            customer_id=customer_id, signals={"nps": pb.SignalValue(value=1, observe_time=stamp)})))
        recorded = pb.SignalObservations(customer=f"customers/{customer_id}", signals={
            "nps": pb.SignalValue(value=2, observe_time=timestamp_pb2.Timestamp(seconds=1_700_000_100))})
        imported = pb.Customer(customer_id=customer_id, signals={
            "annual_revenue": pb.SignalValue(value=5, observe_time=stamp)})
        outcomes = race(
            lambda: registry.RecordSignals(pb.RecordSignalsRequest(observations=[recorded]), timeout=CALL_TIMEOUT),
            lambda: registry.ImportCustomers(iter([pb.ImportCustomersRequest(customers=[imported])]),
                                             timeout=CALL_TIMEOUT))
        assert [code for code, _, _ in outcomes] == ["OK", "OK"], outcomes
        signals = registry.GetCustomer(pb.GetCustomerRequest(name=f"customers/{customer_id}")).signals
        assert (signals["nps"].value, signals["annual_revenue"].value) == (2, 5), f"round {i}: {signals}"


def _insert_behind_the_lock(engine, customer_id: str, call: Callable[[], object]) -> tuple:
    """Runs ``call`` while a writer that skips the tree lock (as SQL by hand, or a replica of an older release
    would) holds an uncommitted row ``customer_id``; commits that row once ``call`` waits on it."""
    with ThreadPoolExecutor(1) as pool, engine.connect() as conn:
        with conn.begin():
            conn.execute(sa.text("INSERT INTO registry_customers (customer_id, stakeholder_role, revision, "
                                 "create_time_us, update_time_us) VALUES (:c, 2, 1, 0, 0)"), {"c": customer_id})
            outcome = pool.submit(race, call)
            deadline = time.monotonic() + CALL_TIMEOUT
            while engine.dialect.name == "postgresql" and time.monotonic() < deadline and not outcome.done():
                with engine.connect() as probe:  # the call waits on the row's lock
                    if probe.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                             "current_database() AND wait_event_type = 'Lock'")).scalar_one():
                        break
                time.sleep(0.02)
            else:
                time.sleep(0.3)  # SQLite: the call waits for the write lock, then sees the row
        return outcome.result()[0]


def test_a_create_racing_a_writer_that_skips_the_lock_is_already_exists(registry, registry_with_engine):
    outcome = _insert_behind_the_lock(registry_with_engine[1], "sneaked-in", create(registry, "sneaked-in"))
    assert outcome[:2] == (Code.ALREADY_EXISTS, "CUSTOMER_ALREADY_EXISTS"), outcome


def test_an_import_racing_a_writer_that_skips_the_lock_can_be_sent_again(registry, registry_with_engine):
    send = import_rows(registry, [("sneaked-row", ""), ("bystander", "")])
    code, reason, summary = _insert_behind_the_lock(registry_with_engine[1], "sneaked-row", send)
    if registry_with_engine[1].dialect.name == "postgresql":
        assert (code, reason) == (Code.ABORTED, "CONCURRENT_WRITE")  # this message was rolled back
        summary = send()
    assert (summary.created, summary.updated, summary.rejected) == (1, 1, 0), summary



def test_a_write_that_waits_too_long_for_the_tree_lock_is_unavailable_database_busy(postgres_database, monkeypatch):
    """On PostgreSQL (SQLite writers wait on the database's own lock instead)."""
    _empty_tables(postgres_database)
    monkeypatch.setattr(store, "TREE_LOCK_TIMEOUT", "300ms")
    server, engine = start_server(postgres_database, services=("registry",)), db.create_engine(postgres_database)
    try:
        with grpc.insecure_channel(server.target) as channel, engine.connect() as holder:
            # Another writer holds the tree lock in its open transaction.
            holder.exec_driver_sql(f"SELECT pg_advisory_xact_lock({store.TREE_LOCK})")
            with pytest.raises(grpc.RpcError) as refused:
                create(pb_grpc.RegistryServiceStub(channel), uuid.uuid4().hex)()
            holder.rollback()
    finally:
        engine.dispose()
        server.stop()
    assert refused.value.code() == Code.UNAVAILABLE
    assert details_of(refused.value).reason == "DATABASE_BUSY", details_of(refused.value)
