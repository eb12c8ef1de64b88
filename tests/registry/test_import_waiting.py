"""ImportCustomers when children come before their parents: waiting rows resolve, cost work in proportion to
their number, and are capped. Each test on SQLite and on PostgreSQL, over real gRPC."""

from __future__ import annotations

import grpc
import numpy as np
from sqlalchemy import event

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from services.registry import importer
from tests.grpc_helpers import raises_status


def columns(rows: list[tuple[str, str]]) -> pb.ImportCustomersRequest:
    """One message of (customer_id, parent_id) rows with one signal each."""
    values = np.arange(len(rows), dtype="<f8")
    return pb.ImportCustomersRequest(columns=pb.CustomerColumns(
        customer_ids=[c for c, _ in rows], parent_ids=[p for _, p in rows], signal_names=["nps"],
        signal_values=common_pb2.Float64Matrix(rows=len(rows), columns=1, data=values.tobytes())))


def family(prefix: str, pairs: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``pairs`` parents and one child of each."""
    parents = [(f"{prefix}p{i:05d}", "") for i in range(pairs)]
    children = [(f"{prefix}c{i:05d}", f"{prefix}p{i:05d}") for i in range(pairs)]
    return parents, children


def messages(rows: list[tuple[str, str]], size: int) -> list[pb.ImportCustomersRequest]:
    return [columns(rows[i:i + size]) for i in range(0, len(rows), size)]


def parents_of(registry, ids: list[str]) -> dict[str, str]:
    found = {}
    for start in range(0, len(ids), 1000):
        names = [f"customers/{i}" for i in ids[start:start + 1000]]
        for c in registry.BatchGetCustomers(pb.BatchGetCustomersRequest(names=names)).customers:
            found[c.customer_id] = c.parent.removeprefix("customers/")
    return found


def test_children_sent_first_cost_about_the_database_work_of_parents_first(registry, registry_server):
    """Waiting rows are looked at when they come and when their parent does, not in every later write: the
    values sent to the database grow with the rows, not with rows x messages. 3,000 rows in 30 messages:
    36,000 values children first against 36,002 parents first; 79,500 before, when every waiting row was read
    again in each later message."""
    sent = [0]

    def count(conn, cursor, statement, parameters, context, executemany):
        sent[0] += sum(len(p) for p in parameters) if executemany else len(parameters or ())

    def work(rows: list[tuple[str, str]]) -> int:
        sent[0] = 0
        summary = registry.ImportCustomers(iter(messages(rows, 100)))
        assert (summary.created, summary.rejected) == (len(rows), 0)
        return sent[0]

    event.listen(registry_server.suite.engine, "before_cursor_execute", count)
    parents, children = family("a", 1500)
    parents_first = work(parents + children)
    parents, children = family("b", 1500)
    children_first = work(children + parents)
    assert children_first < 1.2 * parents_first, (children_first, parents_first)
    got = parents_of(registry, [c for c, _ in children])
    assert got == dict(children)


def test_waiting_rows_resolve_through_chains_replacements_and_parents_made_meanwhile(registry):
    def requests():
        yield columns([("grandchild", "child"), ("orphan", "nobody"), ("moved", "child")])
        yield columns([("child", "top"), ("moved", "top")])  # "moved" waits again, for another parent
        yield columns([("late", "made-elsewhere")])
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="made-elsewhere")))
        yield columns([("top", "")])

    summary = registry.ImportCustomers(requests())
    assert (summary.created, summary.updated, summary.rejected) == (5, 1, 1)  # "moved" twice: one update
    assert [(e.customer_id, e.field) for e in summary.errors] == [("orphan", "parent")]
    assert "customers/nobody" in summary.errors[0].reason
    assert parents_of(registry, ["grandchild", "child", "moved", "late", "top"]) == {
        "grandchild": "child", "child": "top", "moved": "top", "late": "made-elsewhere", "top": ""}


def test_rows_waiting_for_parents_are_capped(registry, monkeypatch):
    monkeypatch.setattr(importer, "MAX_HELD_ROWS", 5)
    parents, children = family("x", 8)
    summary = registry.ImportCustomers(iter([columns(children), columns(parents)]))
    assert (summary.created, summary.rejected) == (13, 3)
    assert all(e.field == "parent" and "5 rows already wait" in e.reason for e in summary.errors)
    assert [e.position for e in summary.errors] == [5, 6, 7]

    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, field="all_or_nothing", reason="IMPORT_TOO_LARGE") as seen:
        registry.ImportCustomers(iter([pb.ImportCustomersRequest(all_or_nothing=True, columns=columns(
            [(f"y{i}", "") for i in range(4)]).columns), columns([(f"y{i}", "") for i in range(4, 8)])]))
    assert "at most 5 customers" in seen.message
    with raises_status(grpc.StatusCode.NOT_FOUND):
        registry.GetCustomer(pb.GetCustomerRequest(name="customers/y0"))
