"""One ImportCustomers stream: batches checked, parents resolved across batches, each batch committed.

A row whose parent is neither stored nor in the rows written with it waits
until its parent arrives in a later batch; rows still waiting when the stream
ends are rejected. So every commit leaves a tree whose parents all exist.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from sqlalchemy.engine import Connection, Engine, Row

from cvh.registry.v1 import registry_service_pb2 as pb
from services.common.db import write_transaction
from services.common.errors import (
    MAX_DESCRIPTION_CHARS, MAX_FIELD_CHARS, FieldViolation, ServiceError, Violations, clip,
)
from services.registry import store
from services.registry.customers import (
    MAX_SIGNALS, CustomerRow, now_us, parse_columns, parse_customer, restack, too_many_signals,
)
from services.registry.signals import SignalCatalog

MAX_BATCH = 10_000
MAX_REPORTED_ERRORS = 1_000
# Rows one import keeps in memory: rows waiting for their parent (about 1 KiB each with 12 signals), or every
# row of an all_or_nothing import (about 0.6 KiB each: 400,000 staged rows took 232 MiB).
MAX_HELD_ROWS = 100_000


@dataclass(slots=True)
class Positioned:
    position: int
    row: CustomerRow


class WaitingRoom:
    """Rows whose parent has not arrived, indexed by the parent each waits for.

    A row is looked at when it comes and once more when its parent does, never in between: children sent
    long before their parents cost time in proportion to their number, not to the number of later writes.
    """

    def __init__(self) -> None:
        self._by_parent: dict[str, dict[str, Positioned]] = {}
        self._parent_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._parent_of)

    def parents(self) -> set[str]:
        return set(self._by_parent)

    def add(self, item: Positioned) -> None:
        row = item.row
        row.detach()
        self._parent_of[row.customer_id] = row.parent_id
        self._by_parent.setdefault(row.parent_id, {})[row.customer_id] = item

    def discard(self, customer_id: str) -> bool:
        """Drop the waiting row of ``customer_id`` (a later row replaces it); whether there was one."""
        parent_id = self._parent_of.pop(customer_id, None)
        if parent_id is None:
            return False
        siblings = self._by_parent[parent_id]
        del siblings[customer_id]
        if not siblings:
            del self._by_parent[parent_id]
        return True

    def release(self, arrived: Iterable[str]) -> list[Positioned]:
        """The rows waiting for the ``arrived`` customers, the rows waiting for those, and so on."""
        released, queue = [], list(arrived)
        while queue:
            for item in self._by_parent.pop(queue.pop(), {}).values():
                del self._parent_of[item.row.customer_id]
                released.append(item)
                queue.append(item.row.customer_id)
        restack([item.row for item in released])
        return released

    def drain(self) -> list[Positioned]:
        """Every waiting row, in position order; the room is left empty."""
        rows = sorted((item for items in self._by_parent.values() for item in items.values()),
                      key=lambda item: item.position)
        self._by_parent, self._parent_of = {}, {}
        return rows


@dataclass
class ImportSession:
    engine: Engine
    catalog: SignalCatalog
    all_or_nothing: bool = False
    next_position: int = 0
    summary: pb.ImportCustomersResponse = field(default_factory=pb.ImportCustomersResponse)
    # Rows waiting for their parent (a later row for the same id replaces one).
    waiting: WaitingRoom = field(default_factory=WaitingRoom)
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
            if len(self.staged) > MAX_HELD_ROWS:
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"an all_or_nothing import holds at most {MAX_HELD_ROWS:,} customers and this message brings "
                    f"it to {len(self.staged):,}; nothing was written: import in parts, or without all_or_nothing",
                    "IMPORT_TOO_LARGE",
                    [FieldViolation("all_or_nothing", f"at most {MAX_HELD_ROWS:,} customers in such an import")])
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
        superseded = sum(self.waiting.discard(customer_id) for customer_id in candidates)
        stored_parents = _stored_parents(conn, rows)
        # Rows whose parent has not come wait first, so that a parent that waits keeps its children waiting.
        self._hold_orphans(candidates, stored_parents)
        released = self.waiting.release(list(candidates))
        if final and self.waiting:  # parents another writer stored meanwhile
            released += self.waiting.release(store.parents_of(conn, self.waiting.parents()))
        candidates.update((item.row.customer_id, item) for item in released)
        stored_parents |= _stored_parents(conn, released)
        stored = store.existing(conn, candidates)
        self._refuse_too_many_signals(conn, candidates, stored)
        for customer_id, old in stored.items():
            if customer_id in candidates and (problem := store.stage_out_of_order(candidates[customer_id].row, old)):
                item = candidates.pop(customer_id)
                self._reject(item.position, customer_id, [("lifecycle_stage_time", problem)])
        while True:
            self._hold_orphans(candidates, stored_parents)
            problems = store.check_tree(conn, {cid: i.row.parent_id for cid, i in candidates.items()}, stored)
            if not problems:
                break
            for problem in problems:
                item = candidates.pop(problem.customer_id)
                self._reject(item.position, problem.customer_id, [("parent", problem.message)])
        if final:
            for item in self.waiting.drain():
                self._reject(item.position, item.row.customer_id, [(
                    "parent", f"parent customers/{item.row.parent_id} is neither in the registry nor in this import")])
        ordered = sorted(candidates.values(), key=lambda i: i.position)
        counts = store.write_customers(conn, self.catalog, [i.row for i in ordered], stored, now_us())
        with self.lock:
            self.summary.created += counts.created
            self.summary.updated += counts.updated + superseded  # superseded: an older row for the same customer
            self.summary.signals_current += counts.current
            self.summary.signals_historical += counts.historical
            self.summary.signals_unchanged += counts.unchanged

    def _refuse_too_many_signals(self, conn: Connection, candidates: dict[str, Positioned],
                                 stored: dict[str, Row]) -> None:
        """Reject rows that would give a stored customer more than MAX_SIGNALS signals (a new customer's row
        cannot: its signals were capped when it was read)."""
        suspects = [cid for cid, old in stored.items()
                    if len(old.signal_values or b"") // 8 + candidates[cid].row.most_signals() > MAX_SIGNALS]
        if not suspects:
            return
        names = {cid: candidates[cid].row.observed_names() for cid in suspects}
        signal_ids = self.catalog.current_ids(conn, set().union(*names.values()))
        for customer_id in suspects:
            total = store.signals_after(stored[customer_id], names[customer_id], signal_ids)
            if total > MAX_SIGNALS:
                item = candidates.pop(customer_id)
                self._reject(item.position, customer_id, [("signals", too_many_signals(customer_id, total))])

    def _hold_orphans(self, candidates: dict[str, Positioned], stored_parents: set[str]) -> None:
        """Move rows whose parent is neither stored nor a candidate to the waiting room, then their children."""
        orphans = deque(cid for cid, i in candidates.items() if i.row.parent_id and i.row.parent_id not in candidates
                        and i.row.parent_id not in stored_parents)
        if not orphans:
            return
        children: dict[str, list[str]] = {}
        for customer_id, item in candidates.items():
            if item.row.parent_id:
                children.setdefault(item.row.parent_id, []).append(customer_id)
        while orphans:
            item = candidates.pop(orphans.popleft(), None)
            if item is None:
                continue
            self._hold(item)
            if item.row.customer_id not in stored_parents:
                orphans.extend(children.get(item.row.customer_id, ()))

    def _hold(self, item: Positioned) -> None:
        """Let a row wait for its parent, or reject it when too many rows wait already."""
        if len(self.waiting) < MAX_HELD_ROWS:
            self.waiting.add(item)
        else:
            self._reject(item.position, item.row.customer_id, [(
                "parent", f"parent customers/{item.row.parent_id} has not arrived and {MAX_HELD_ROWS:,} rows "
                          f"already wait for theirs (the most an import holds): send parents before children")])


def _stored_parents(conn: Connection, items: list[Positioned]) -> set[str]:
    """The parents of ``items`` that are stored."""
    return set(store.parents_of(conn, {item.row.parent_id for item in items if item.row.parent_id}))


class _RollBack(Exception):
    """Raised inside the final all_or_nothing transaction to undo it."""
