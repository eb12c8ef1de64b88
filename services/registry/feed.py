"""The registry's change feed: every write appends the customers it changed, in the write's own transaction.

Sequence numbers are handed out by one counter row ("last_sequence" in registry_feed), incremented as the
last statement of each writing transaction (store.append_changes). The increment locks that row until the transaction ends, so
writers that append take turns from there to their commit: a sequence is assigned only once every smaller
one has committed (or rolled back, giving its numbers back). A follower that has read up to sequence S
therefore never meets a smaller sequence committed later, on PostgreSQL as on SQLite (whose writers take turns
anyway); an identity column would not promise that. The lock is taken last, so writers queue on it only for
the inserts of their change rows and their commit.

The log holds one row per write naming the customers it changed (tables.changes): a bulk import adds a row
per message, not per customer. A batch read joins the customers as they stand then (a row per customer, the
columns of ExportSignalMatrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from services.common.db import read_transaction, write_transaction
from services.common.errors import failed_precondition
from services.registry import store, teams
from services.registry.customers import now_us
from services.registry.signals import SignalCatalog
from services.registry.store import COMPACTED, LAST
from services.registry.tables import changes, feed_state

# Changes one message carries at most, and about the most bytes (a client with gRPC's default 4 MiB limit
# reads it).
MAX_BATCH = 4096
MAX_MESSAGE_BYTES = 3 * 1024 * 1024
# Change rows one compaction transaction deletes (a SQLite writer waits meanwhile).
COMPACT_CHUNK = 50_000
# Default retention of changes; `cvh serve --feed-retention-seconds`, CVH_FEED_RETENTION_SECONDS.
DEFAULT_RETENTION_SECONDS = 24 * 3600.0


@dataclass
class FeedState:
    last: int = 0
    compacted: int = 0


def state(conn: Connection) -> FeedState:
    values = dict(conn.execute(sa.select(feed_state.c.name, feed_state.c.value)).all())
    return FeedState(values.get(LAST, 0), values.get(COMPACTED, 0))


def check_resumable(after: int, feed: FeedState) -> None:
    """FAILED_PRECONDITION unless the changes after ``after`` are all kept."""
    if after < feed.compacted:
        raise failed_precondition(
            f"changes after sequence {after} are no longer kept (the feed keeps them from sequence "
            f"{feed.compacted + 1}): reload with ExportSignalMatrix and watch from its sequence", "FEED_COMPACTED")
    if after > feed.last:
        raise failed_precondition(
            f"sequence {after} is beyond the feed, whose last change is {feed.last} (was the database replaced "
            f"or restored?): reload with ExportSignalMatrix and watch from its sequence", "FEED_AHEAD")


@dataclass
class Batch:
    """Messages holding the changes in (after, last]."""

    after: int
    last: int
    messages: list[pb.WatchCustomerChangesResponse]


def read(engine: Engine, catalog: SignalCatalog, after: int, upto: int | None, limit: int) -> Batch:
    """The changes after ``after`` (up to ``upto``, at most ``limit``) with their customers as they stand,
    in one read; FAILED_PRECONDITION when some of them are no longer kept."""
    with read_transaction(engine) as conn:
        feed = state(conn)
        check_resumable(after, feed)
        upto = feed.last if upto is None else min(upto, feed.last)
        found = _changes(conn, after, upto, limit)
        last = found[-1][0] if len(found) == limit else upto
        # A customer changed twice in the batch: one row, at its last change.
        latest = {customer_id: seq for seq, customer_id in found}
        rows = sorted(latest.items(), key=lambda item: item[1])
        stored = store.fetch(conn, latest)
        own = teams.teams_of(conn, stored)
        messages = [_message(conn, catalog, part, stored, own, feed.last) for part in _parts(rows, stored, own)]
    if messages:
        messages[-1].last_sequence = last
    return Batch(after, last, messages)


def _changes(conn: Connection, after: int, upto: int, limit: int) -> list[tuple[int, str]]:
    """(sequence, customer_id) of the changes after ``after`` up to ``upto``, at most ``limit``."""
    found: list[tuple[int, str]] = []
    while len(found) < limit:
        query = sa.select(changes.c.seq, changes.c.first_seq, changes.c.customer_ids).where(
            changes.c.seq > after, changes.c.first_seq <= upto).order_by(changes.c.seq).limit(16)
        writes = conn.execute(query).all()
        for last, first, ids in writes:
            found += [(first + i, customer_id) for i, customer_id in enumerate(ids.split("\n"))
                      if after < first + i <= upto]
        if len(writes) < 16:
            break
        after = writes[-1][0]
    return found[:limit]


def _parts(rows: list[tuple[str, int]], stored: dict, own: dict) -> list[list[tuple[str, int]]]:
    """Rows split so that each message stays within MAX_BATCH rows and about MAX_MESSAGE_BYTES."""
    parts, part, size = [], [], 0
    for customer_id, seq in rows:
        row = stored.get(customer_id)
        cost = 64 + len(customer_id) + (0 if row is None else len(row.display_name) + len(row.parent_id or "")
                                         + len(row.owner) + 2 * len(row.signal_values or b""))
        cost += sum(len(seat.role) + len(seat.person) + 8 for seat in own.get(customer_id, ()))
        if part and (len(part) == MAX_BATCH or size + cost > MAX_MESSAGE_BYTES):
            parts.append(part)
            part, size = [], 0
        part.append((customer_id, seq))
        size += cost
    if part:
        parts.append(part)
    return parts


def _message(conn: Connection, catalog: SignalCatalog, rows: list[tuple[str, int]], stored: dict, own: dict,
             head: int) -> pb.WatchCustomerChangesResponse:
    found = [stored.get(customer_id) for customer_id, _ in rows]
    blobs = tuple(row.signal_values if row is not None else None for row in found)
    width = max((len(blob) // 8 for blob in blobs if blob), default=0)
    matrix = store.signal_matrix(blobs, list(range(width)))
    present = np.flatnonzero(~np.isnan(matrix).all(axis=0)) if len(rows) else np.empty(0, int)
    matrix = matrix[:, present]
    names = [catalog.name_of(int(signal_id), conn) for signal_id in present]
    ids = [customer_id for customer_id, _ in rows]
    team = teams.team_columns(ids, ((i, seat.role, seat.person) for i in ids for seat in own.get(i, ())))
    return pb.WatchCustomerChangesResponse(
        sequences=[seq for _, seq in rows], last_sequence=rows[-1][1] if rows else 0, head_sequence=head,
        deleted=bytes(row is None for row in found),
        chunk=common_pb2.ColumnarChunk(customer_ids=ids, column_names=names, values=common_pb2.Float64Matrix(
            rows=len(ids), columns=len(names), data=np.ascontiguousarray(matrix, "<f8").tobytes())),
        display_names=[row.display_name if row is not None else "" for row in found],
        parent_ids=[(row.parent_id or "") if row is not None else "" for row in found],
        stakeholder_roles=bytes(row.stakeholder_role if row is not None else 0 for row in found),
        owners=[row.owner if row is not None else "" for row in found],
        lifecycle_stages=bytes(row.lifecycle_stage if row is not None else 0 for row in found),
        team=[pb.TeamColumn(role=role, persons=persons) for role, persons in team])


def compact(engine: Engine, retention_seconds: float, now: int | None = None) -> int:
    """Forget the changes older than ``retention_seconds``; the sequence now compacted through."""
    cutoff = (now_us() if now is None else now) - int(retention_seconds * 1e6)
    with read_transaction(engine) as conn:
        feed = state(conn)
        cut = _last_before(conn, feed, cutoff)
    if cut > feed.compacted:
        # Followers learn first (FEED_COMPACTED), then the rows go, a chunk per transaction.
        with write_transaction(engine) as conn:
            _raise_compacted(conn, cut)
    done = feed.compacted if cut <= feed.compacted else cut
    while True:
        with write_transaction(engine) as conn:
            oldest = conn.execute(sa.select(sa.func.min(changes.c.seq))).scalar()
            if oldest is None or oldest > done:
                return done
            conn.execute(changes.delete().where(changes.c.seq <= min(done, oldest + COMPACT_CHUNK - 1)))


def _raise_compacted(conn: Connection, cut: int) -> None:
    """Set compacted_through to ``cut`` unless it is already further."""
    current = conn.execute(sa.select(feed_state.c.value).where(feed_state.c.name == COMPACTED)).scalar()
    if current is None:
        conn.execute(feed_state.insert().values(name=COMPACTED, value=cut))
    elif current < cut:
        conn.execute(feed_state.update().where(feed_state.c.name == COMPACTED).values(value=cut))


def _last_before(conn: Connection, feed: FeedState, cutoff: int) -> int:
    """The last sequence whose change is older than ``cutoff`` (change times grow with the sequence): a
    binary search over the kept sequences, one primary-key look-up a step."""
    def write_at(seq: int) -> tuple[int, int] | None:
        """(last sequence, time) of the write holding change ``seq`` (or the next one kept)."""
        return conn.execute(sa.select(changes.c.seq, changes.c.change_time_us).where(changes.c.seq >= seq)
                            .order_by(changes.c.seq).limit(1)).first()

    low, high = feed.compacted, feed.last  # low: known old enough (or compacted); high + 1: not
    first = write_at(low + 1)
    if first is None or first[1] >= cutoff:
        return feed.compacted
    low = first[0]
    while low < high:
        middle = (low + high + 1) // 2
        found = write_at(middle)
        if found is not None and found[1] < cutoff:
            low = found[0]  # the end of that write: all of it is old enough
        else:
            high = middle - 1
    return low
