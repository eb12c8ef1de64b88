"""Queries over the adoption service's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from services.adoption.tables import batches, chunks, customers, event_names, value_maps

IN_CHUNK = 900  # SQLite's variables per statement stay below its limit


def _insert(conn: Connection, table: sa.Table):
    """An INSERT that can say ON CONFLICT DO NOTHING, in the connection's dialect."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


# -- value hierarchy versions ---------------------------------------------------------------------------------

def create_value_map(conn: Connection, nodes: bytes, change_note: str, author: str, counts: list[int], now: int,
                     activate: bool) -> int:
    """A new version (the latest + 1); active when ``activate``."""
    latest = conn.execute(sa.select(sa.func.max(value_maps.c.version))).scalar() or 0
    version = latest + 1
    conn.execute(value_maps.insert().values(version=version, nodes=nodes, change_note=change_note, author=author,
                                            create_time_us=now, active=False,
                                            level_counts=",".join(map(str, counts))))
    if activate:
        activate_value_map(conn, version)
    return version


def get_value_map(conn: Connection, version: int | None) -> Row | None:
    """One version, or the active one when ``version`` is None."""
    query = sa.select(value_maps)
    query = query.where(value_maps.c.version == version) if version is not None else query.where(value_maps.c.active)
    return conn.execute(query).first()


def value_map_number(conn: Connection, version: int | None) -> int | None:
    """``version`` if stored, or the active one's number when None; None when there is none."""
    query = sa.select(value_maps.c.version)
    query = query.where(value_maps.c.version == version) if version is not None else query.where(value_maps.c.active)
    return conn.execute(query).scalar()


def list_value_maps(conn: Connection, offset: int, limit: int) -> list[Row]:
    columns = [c for c in value_maps.c if c.name != "nodes"]
    return list(conn.execute(sa.select(*columns).order_by(value_maps.c.version.desc()).offset(offset).limit(limit)))


def activate_value_map(conn: Connection, version: int) -> bool:
    """Makes ``version`` the one active version; False when there is no such version."""
    if conn.execute(sa.select(value_maps.c.version).where(value_maps.c.version == version)).first() is None:
        return False
    conn.execute(value_maps.update().where(value_maps.c.active, value_maps.c.version != version).values(active=False))
    conn.execute(value_maps.update().where(value_maps.c.version == version).values(active=True))
    return True


# -- telemetry ------------------------------------------------------------------------------------------------

def customer_keys(conn: Connection, ids: list[str]) -> dict[str, int]:
    """The keys of those of ``ids`` that telemetry was kept for."""
    found = {}
    for start in range(0, len(ids), IN_CHUNK):
        part = ids[start:start + IN_CHUNK]
        found.update(conn.execute(sa.select(customers.c.customer_id, customers.c.customer_key)
                                  .where(customers.c.customer_id.in_(part))).all())
    return found


def add_customers(conn: Connection, ids: list[str], now: int) -> dict[str, int]:
    """Keys of ``ids``, numbering those not seen before (a concurrent writer's numbers win)."""
    if not ids:
        return {}
    conn.execute(_insert(conn, customers).on_conflict_do_nothing(index_elements=["customer_id"]),
                 [{"customer_id": i, "first_seen_us": now} for i in ids])
    return customer_keys(conn, ids)


def event_ids(conn: Connection, names: list[str]) -> dict[str, int]:
    """Ids of ``names``, numbering those not seen before."""
    if not names:
        return {}
    conn.execute(_insert(conn, event_names).on_conflict_do_nothing(index_elements=["name"]),
                 [{"name": n} for n in names])
    found = {}
    for start in range(0, len(names), IN_CHUNK):
        part = names[start:start + IN_CHUNK]
        found.update(conn.execute(sa.select(event_names.c.name, event_names.c.event_id)
                                  .where(event_names.c.name.in_(part))).all())
    return found


def claim_batch(conn: Connection, batch_id: str, events_kept: int, now: int) -> bool:
    """Records ``batch_id``; False when it was recorded before (by this transaction's predecessors)."""
    claim = _insert(conn, batches).values(batch_id=batch_id, receive_time_us=now, events_kept=events_kept)
    # RETURNING, not rowcount: psycopg reports -1 for a statement that inserted one row or none.
    return conn.execute(claim.on_conflict_do_nothing(index_elements=["batch_id"])
                        .returning(batches.c.batch_id)).first() is not None


DAILY_WIDTH = 16  # bytes per daily row of a chunk: customer_key <i4, event_id <i4, events <i8
USER_WIDTH = 16  # bytes per user row: customer_key <i4, event_id <i4, user_hash <i8


def _pack(*columns: tuple[np.ndarray, str]) -> bytes:
    return b"".join(np.ascontiguousarray(values, dtype).tobytes() for values, dtype in columns)


def add_chunks(conn: Connection, customer_keys_: np.ndarray, event_ids_: np.ndarray, days: np.ndarray,
               events: np.ndarray, user_keys: np.ndarray, user_event_ids: np.ndarray, user_hashes: np.ndarray,
               user_days: np.ndarray) -> int:
    """Writes a message's aggregates as one chunk per day, in one statement; rows of each day adjacent (the
    aggregates come sorted by day). The chunks written."""
    all_days = np.union1d(*(d[np.r_[True, d[1:] != d[:-1]]] if len(d) else d for d in (days, user_days)))
    d = np.searchsorted(days, np.r_[all_days, np.iinfo(np.int64).max])
    u = np.searchsorted(user_days, np.r_[all_days, np.iinfo(np.int64).max])
    rows = [{"day": int(day), "daily_rows": int(d[i + 1] - d[i]),
             "daily": _pack((customer_keys_[d[i]:d[i + 1]], "<i4"), (event_ids_[d[i]:d[i + 1]], "<i4"),
                            (events[d[i]:d[i + 1]], "<i8")),
             "users": _pack((user_keys[u[i]:u[i + 1]], "<i4"), (user_event_ids[u[i]:u[i + 1]], "<i4"),
                            (user_hashes[u[i]:u[i + 1]], "<i8"))}
            for i, day in enumerate(all_days.tolist())]
    if rows:
        conn.execute(chunks.insert(), rows)
    return len(rows)


def chunk_ids(conn: Connection, above: int) -> list[tuple[int, int]]:
    """(id, day) of the chunks above ``above`` (a range of the primary key)."""
    return [tuple(r) for r in conn.execute(sa.select(chunks.c.chunk_id, chunks.c.day)
                                           .where(chunks.c.chunk_id > above))]


def read_chunks(conn: Connection, ids: list[int]) -> list[tuple]:
    """(chunk_id, day, daily_rows, daily, users) of ``ids``."""
    found = []
    for start in range(0, len(ids), IN_CHUNK):
        found += [tuple(r) for r in conn.execute(
            sa.select(chunks.c.chunk_id, chunks.c.day, chunks.c.daily_rows, chunks.c.daily, chunks.c.users)
            .where(chunks.c.chunk_id.in_(ids[start:start + IN_CHUNK])))]
    return found


def decode_chunk(day: int, daily_rows: int, daily_blob: bytes, users_blob: bytes) -> tuple[np.ndarray, ...]:
    """A chunk's columns: customer keys, event ids, days, events; user customer keys, event ids, hashes, days."""
    n, m = daily_rows, len(users_blob) // USER_WIDTH
    keys = np.frombuffer(daily_blob, "<i4", n, 0)
    events = np.frombuffer(daily_blob, "<i4", n, 4 * n)
    counts = np.frombuffer(daily_blob, "<i8", n, 8 * n)
    user_keys = np.frombuffer(users_blob, "<i4", m, 0)
    user_events = np.frombuffer(users_blob, "<i4", m, 4 * m)
    hashes = np.frombuffer(users_blob, "<i8", m, 8 * m)
    return keys, events, np.full(n, day, np.int32), counts, user_keys, user_events, hashes, np.full(m, day, np.int32)


def prune(conn: Connection, first_kept_day: int, first_kept_us: int) -> int:
    """Forgets what is older than the retention: chunks of earlier days, batch ids received before. The rows
    deleted."""
    deleted = conn.execute(chunks.delete().where(chunks.c.day < first_kept_day)).rowcount
    deleted += conn.execute(batches.delete().where(batches.c.receive_time_us < first_kept_us)).rowcount
    return deleted


# -- achievement ----------------------------------------------------------------------------------------------

def known_event_ids(conn: Connection, names: list[str]) -> dict[str, int]:
    """Ids of those of ``names`` telemetry has used (nothing is numbered)."""
    if not names:
        return {}
    return dict(conn.execute(sa.select(event_names.c.name, event_names.c.event_id)
                             .where(event_names.c.name.in_(names))).all())
