"""One ImportCustomers stream: batches checked, parents resolved across batches, each batch committed.

A row whose parent is neither stored nor in the rows written with it waits
until its parent arrives in a later batch; rows still waiting when the stream
ends are rejected. So every commit leaves a tree whose parents all exist.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import grpc
from sqlalchemy.engine import Connection, Engine

from cvh.registry.v1 import registry_service_pb2 as pb
from services.common.db import write_transaction
from services.common.errors import (
    MAX_DESCRIPTION_CHARS, MAX_FIELD_CHARS, FieldViolation, ServiceError, Violations, clip,
)
from services.registry import store
from services.registry.customers import CustomerRow, now_us, parse_columns, parse_customer
from services.registry.signals import SignalCatalog

MAX_BATCH = 10_000
MAX_REPORTED_ERRORS = 1_000


@dataclass
class Positioned:
    position: int
    row: CustomerRow


@dataclass
class ImportSession:
    engine: Engine
    catalog: SignalCatalog
    all_or_nothing: bool = False
    next_position: int = 0
    summary: pb.ImportCustomersResponse = field(default_factory=pb.ImportCustomersResponse)
    # Rows waiting for their parent, by customer_id (a later row for the same id replaces it).
    waiting: dict[str, Positioned] = field(default_factory=dict)
    # all_or_nothing: every valid row, written together at the end.
    staged: dict[str, Positioned] = field(default_factory=dict)

    # Checking message k+1 runs while message k is written, so both touch the summary.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_batch(self, request: pb.ImportCustomersRequest) -> None:
        """Check one message's rows, then write them (or stage them for all_or_nothing)."""
        self.commit(self.check(request))

    def check(self, request: pb.ImportCustomersRequest) -> list[Positioned]:
        """One message's valid rows; bad ones are counted and reported."""
        size = len(request.customers) + len(request.columns.customer_ids)
        if not 1 <= size <= MAX_BATCH:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"customers: each message holds 1 to {MAX_BATCH} customers, got {size}; "
                               f"batches before this one are committed", "BATCH_SIZE",
                               [FieldViolation("customers", f"1 to {MAX_BATCH} customers per message")])
        return self._parse(request)

    def commit(self, rows: list[Positioned]) -> None:
        """Write checked rows in one transaction (or stage them for all_or_nothing). Calls come in order."""
        if self.all_or_nothing:
            for item in rows:
                if self.staged.pop(item.row.customer_id, None):
                    self.summary.updated += 1
                self.staged[item.row.customer_id] = item
            return
        with write_transaction(self.engine) as conn:
            self._write(conn, rows, final=False)
        self.summary.batches_committed += 1

    def finish(self) -> pb.ImportCustomersResponse:
        """Write what waits or is staged; reject rows whose parents never came."""
        if self.all_or_nothing:
            self._finish_all_or_nothing()
        elif self.waiting:
            with write_transaction(self.engine) as conn:
                self._write(conn, [], final=True)
            self.summary.batches_committed += 1
        self.summary.errors.sort(key=lambda e: e.position)
        del self.summary.errors[MAX_REPORTED_ERRORS:]
        return self.summary

    def _finish_all_or_nothing(self) -> None:
        if not self.summary.rejected:
            try:
                with write_transaction(self.engine) as conn:
                    self._write(conn, list(self.staged.values()), final=True)
                    if self.summary.rejected:
                        raise _RollBack()
                self.summary.batches_committed += 1
                return
            except _RollBack:
                pass
        errors = sorted(self.summary.errors, key=lambda e: e.position)
        violations = [FieldViolation(f"rows[{e.position}].{e.field}", e.reason) for e in errors]
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"all_or_nothing import rejected: {self.summary.rejected} bad rows, nothing written; "
            f"first: row {errors[0].position} {errors[0].field}: {errors[0].reason}",
            "IMPORT_REJECTED", violations[: Violations.MAX_REPORTED])

    def _parse(self, request: pb.ImportCustomersRequest) -> list[Positioned]:
        now = now_us()
        parsed = []
        for msg in request.customers:
            violations = Violations()
            row = parse_customer(msg, violations, "", now)
            if row is None:
                self._reject(self.next_position, msg.customer_id, [(v.field, v.description) for v in violations.items])
            else:
                parsed.append((self.next_position, row))
            self.next_position += 1
        if request.columns.customer_ids:
            parsed += parse_columns(request.columns, self.next_position, now, self._reject)
            self.next_position += len(request.columns.customer_ids)
        rows, seen = [], {}
        for position, row in parsed:
            if row.customer_id in seen:
                self._reject(position, row.customer_id, [(
                    "customer_id", f"repeats row {seen[row.customer_id]} of the same message; send one row per customer")])
            else:
                seen[row.customer_id] = position
                rows.append(Positioned(position, row))
        return rows

    def _reject(self, position: int, customer_id: str, problems: list[tuple[str, str]]) -> None:
        """Count one rejected row and keep why (the first errors by position are reported)."""
        with self.lock:
            self.summary.rejected += 1
            for field_path, reason in problems:
                if len(self.summary.errors) < 10 * MAX_REPORTED_ERRORS:
                    # Field names and reasons may quote the row's own (oversized) text: bounded, so that
                    # 1,000 errors stay far below a client's 4 MiB default for an answer.
                    self.summary.errors.add(position=position, customer_id=customer_id[:128],
                                            field=clip(field_path, MAX_FIELD_CHARS),
                                            reason=clip(reason, MAX_DESCRIPTION_CHARS))

    def _write(self, conn: Connection, rows: list[Positioned], final: bool) -> None:
        store.lock_tree(conn)  # before anything is read: ids taken and the tree are checked as they are now
        candidates = {item.row.customer_id: item for item in rows}
        for customer_id, item in list(self.waiting.items()):
            if customer_id in candidates:
                with self.lock:
                    self.summary.updated += 1  # an older row for the same customer, superseded
            else:
                candidates[customer_id] = item
        self.waiting = {}
        stored = store.existing(conn, candidates)
        stored_parents = set(store.parents_of(conn, {i.row.parent_id for i in candidates.values() if i.row.parent_id}))
        while True:
            self._hold_orphans(candidates, stored_parents)
            problems = store.check_tree(conn, {cid: i.row.parent_id for cid, i in candidates.items()}, stored)
            if not problems:
                break
            for problem in problems:
                item = candidates.pop(problem.customer_id)
                self._reject(item.position, problem.customer_id, [("parent", problem.message)])
        if final:
            for customer_id, item in sorted(self.waiting.items(), key=lambda kv: kv[1].position):
                self._reject(item.position, customer_id, [(
                    "parent", f"parent customers/{item.row.parent_id} is neither in the registry nor in this import")])
            self.waiting = {}
        ordered = sorted(candidates.values(), key=lambda i: i.position)
        counts = store.write_customers(conn, self.catalog, [i.row for i in ordered], stored, now_us())
        with self.lock:
            self.summary.created += counts.created
            self.summary.updated += counts.updated

    def _hold_orphans(self, candidates: dict[str, Positioned], stored_parents: set[str]) -> None:
        """Move rows whose parent is not available to the waiting room, until none is left."""
        while True:
            orphans = [cid for cid, i in candidates.items()
                       if i.row.parent_id and i.row.parent_id not in candidates
                       and i.row.parent_id not in stored_parents]
            if not orphans:
                return
            for customer_id in orphans:
                self.waiting[customer_id] = candidates.pop(customer_id)


class _RollBack(Exception):
    """Raised inside the final all_or_nothing transaction to undo it."""
