"""Queries over the adoption service's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from services.adoption.tables import batches, customers, daily, event_names, users, value_maps
from services.common.db import upsert_many

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


def add_daily(conn: Connection, customer_keys_: np.ndarray, event_ids_: np.ndarray, days: np.ndarray,
              events: np.ndarray) -> None:
    """Adds event counts to the customer x event x day aggregates (one row per key, keys unique)."""
    rows = list(zip(customer_keys_.tolist(), event_ids_.tolist(), days.tolist(), events.tolist()))
    upsert_many(conn, daily, ["customer_key", "event_id", "day"], {"events": "add"}, rows)


def add_users(conn: Connection, customer_keys_: np.ndarray, event_ids_: np.ndarray, user_hashes: np.ndarray,
              first_days: np.ndarray, last_days: np.ndarray) -> None:
    """Widens each customer x event x user's first..last day seen (one row per key, keys unique)."""
    rows = list(zip(customer_keys_.tolist(), event_ids_.tolist(), user_hashes.tolist(), first_days.tolist(),
                    last_days.tolist()))
    upsert_many(conn, users, ["customer_key", "event_id", "user_hash"], {"first_day": "min", "last_day": "max"},
                rows)


def prune(conn: Connection, first_kept_day: int, first_kept_us: int) -> int:
    """Forgets what is older than the retention: aggregates of earlier days, users not seen since, batch ids
    received before. The rows deleted."""
    deleted = conn.execute(daily.delete().where(daily.c.day < first_kept_day)).rowcount
    deleted += conn.execute(users.delete().where(users.c.last_day < first_kept_day)).rowcount
    deleted += conn.execute(batches.delete().where(batches.c.receive_time_us < first_kept_us)).rowcount
    return deleted


# -- achievement ----------------------------------------------------------------------------------------------

def known_event_ids(conn: Connection, names: list[str]) -> dict[str, int]:
    """Ids of those of ``names`` telemetry has used (nothing is numbered)."""
    if not names:
        return {}
    return dict(conn.execute(sa.select(event_names.c.name, event_names.c.event_id)
                             .where(event_names.c.name.in_(names))).all())


def customer_rows(conn: Connection, customer_key: int, event_ids: list[int], user_event_ids: list[int],
                  first_user_day: int) -> tuple[list[tuple], list[tuple]]:
    """One customer's daily rows (event_id, day, events) of ``event_ids``, and its user rows (event_id,
    user_hash, last_day) of ``user_event_ids`` seen since ``first_user_day``."""
    daily_rows = conn.execute(sa.select(daily.c.event_id, daily.c.day, daily.c.events).where(
        daily.c.customer_key == customer_key, daily.c.event_id.in_(event_ids))).all() if event_ids else []
    user_rows = conn.execute(sa.select(users.c.event_id, users.c.user_hash, users.c.last_day).where(
        users.c.customer_key == customer_key, users.c.event_id.in_(user_event_ids),
        users.c.last_day >= first_user_day)).all() if user_event_ids else []
    return [tuple(r) for r in daily_rows], [tuple(r) for r in user_rows]
