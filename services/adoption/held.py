"""The telemetry aggregates held in memory, as sorted arrays, refreshed from the chunks written since.

Every reader (the evaluation of the base, GetCustomerAdoption) works from here, so the store is read once per
chunk: a refresh asks which chunk ids it has not loaded yet and decodes only those (np.frombuffer, no Python
per row). Rows are kept in two levels sorted by (customer, event, day) in one int64 key (customer << 32 |
event << 16 | day): a large ``base`` and a small ``recent`` that new chunks are merged into (both merges are
linear: np.searchsorted then np.insert), folded into the base when it grows past RECENT_ROWS or before an
evaluation. One customer's rows are then two binary searches away. Daily rows with the same key are summed
when merged; user rows (a customer, event, day and user hash each) are kept as they come, a user counted once
by the kernel.

Memory: 16 bytes per daily row (key, events) and 16 per user row (key, hash), plus what a merge copies.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from services.adoption import store
from services.adoption.tables import customers
from services.common.db import read_transaction

# Rows of the recent level beyond which it is folded into the base (or a quarter of the base's, if more).
RECENT_ROWS = 2_000_000
# Chunk ids below the highest loaded that are asked for again: on PostgreSQL a transaction that took its id
# first may commit after one that took a higher id.
LOOKBACK_IDS = 256
# Chunks read per batch when loading (a 100,000-event message makes about 30, of 3 MB together).
LOAD_CHUNKS = 512
EVENT_BITS, DAY_BITS = 16, 16  # event ids and days (since 1970: until 2149) each below 2^16


def pack_keys(customers: np.ndarray, events: np.ndarray, days: np.ndarray) -> np.ndarray:
    return (customers.astype(np.int64) << 32) | (events.astype(np.int64) << DAY_BITS) | days.astype(np.int64)


def unpack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """customers, events, days of packed keys (int64 each)."""
    return keys >> 32, (keys >> DAY_BITS) & ((1 << EVENT_BITS) - 1), keys & ((1 << DAY_BITS) - 1)


@dataclass(frozen=True)
class Level:
    """Rows sorted by key, with one value column (daily: events; users: user hash)."""

    keys: np.ndarray
    values: np.ndarray
    summed: bool  # rows with equal keys are summed into one (daily), or all kept (users)

    @classmethod
    def empty(cls, summed: bool) -> Level:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), summed)

    @classmethod
    def of(cls, keys: np.ndarray, values: np.ndarray, summed: bool) -> Level:
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], values[order], False)._summed() if summed else cls(keys[order], values[order], False)

    def merged(self, other: Level, first_day: int | None = None) -> Level:
        """Both levels' rows in one, without those of days before ``first_day``."""
        if not len(other.keys) and first_day is None:
            return self
        at = np.searchsorted(self.keys, other.keys, side="right")
        keys, values = np.insert(self.keys, at, other.keys), np.insert(self.values, at, other.values)
        if first_day is not None:
            keep = (keys & ((1 << DAY_BITS) - 1)) >= first_day
            keys, values = keys[keep], values[keep]
        found = Level(keys, values, False)
        return found._summed() if self.summed else Level(keys, values, False)

    def _summed(self) -> Level:
        keys = self.keys
        distinct = keys[1:] != keys[:-1]
        if distinct.all():
            return Level(keys, self.values, True)
        starts = np.flatnonzero(np.r_[True, distinct])
        return Level(keys[starts], np.add.reduceat(self.values, starts), True)

    def between(self, first_customer: int, last_customer: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of customers ``first_customer`` to ``last_customer`` (views)."""
        lo, hi = np.searchsorted(self.keys, [first_customer << 32, (last_customer + 1) << 32])
        return self.keys[lo:hi], self.values[lo:hi]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


@dataclass(frozen=True)
class Snapshot:
    """The held rows at one moment (immutable: readers keep it while a refresh builds the next)."""

    daily: Level
    users: Level
    recent_daily: Level
    recent_users: Level

    def customer_rows(self, customer_key: int, first_day: int) -> tuple[np.ndarray, ...]:
        """One customer's rows of days from ``first_day`` on: events, days, counts; user events, hashes, days."""
        parts = []
        for levels in ((self.daily, self.recent_daily), (self.users, self.recent_users)):
            keys, values = (np.concatenate(c) for c in zip(*(level.between(customer_key, customer_key)
                                                              for level in levels)))
            _, events, days = unpack_keys(keys)
            keep = days >= first_day
            parts.append((events[keep], days[keep], values[keep]))
        (events, days, counts), (user_events, user_days, hashes) = parts
        return events, days, counts, user_events, hashes, user_days

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in (self.daily, self.users, self.recent_daily, self.recent_users))


class HeldTelemetry:
    """The aggregates of one database, held and refreshed; thread-safe (one refresh at a time, readers never
    wait on one)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self.snapshot = Snapshot(Level.empty(True), Level.empty(False), Level.empty(True), Level.empty(False))
        self._loaded: set[int] = set()  # ids of chunks loaded, from _low on
        self._low = 0  # every chunk id up to this one is loaded or was never committed
        self._first_day = None  # the first day the base was last cut at
        self._customer_keys, self._customer_ids = np.empty(0, np.int64), []

    def customers(self, conn) -> tuple[np.ndarray, list[str]]:
        """Keys (sorted) and ids of the customers telemetry was kept for, read once and then from the highest
        key held on (less LOOKBACK_IDS, as for chunks)."""
        with self._lock:
            keys, ids = self._customer_keys, self._customer_ids
            rows = conn.execute(sa.select(customers.c.customer_key, customers.c.customer_id).where(
                customers.c.customer_key > (int(keys[-1]) - LOOKBACK_IDS if len(keys) else 0))).all()
            have = set(keys[-LOOKBACK_IDS:].tolist())
            rows = sorted((key, customer_id) for key, customer_id in rows if key not in have)
            if rows:
                keys = np.r_[keys, np.array([key for key, _ in rows], np.int64)]
                ids = ids + [customer_id for _, customer_id in rows]
                if np.any(keys[1:] < keys[:-1]):  # a key committed late, below others held
                    order = np.argsort(keys, kind="stable")
                    keys, ids = keys[order], [ids[i] for i in order.tolist()]
                self._customer_keys, self._customer_ids = keys, ids
            return keys, ids

    def refresh(self, first_day: int, fold: bool = False, lookback: bool = True) -> Snapshot:
        """Loads the chunks not loaded yet (of days from ``first_day`` on); with ``fold``, the recent rows go
        into the base (before an evaluation). Without ``lookback`` (a lookup), only chunks above the highest
        loaded are asked for. The snapshot after."""
        with self._lock:
            above = self._low if lookback or not self._loaded else max(self._loaded)
            with read_transaction(self.engine) as conn:
                ids = [i for i, day in store.chunk_ids(conn, above) if i not in self._loaded and day >= first_day]
            for start in range(0, len(ids), LOAD_CHUNKS):  # a batch at a time: bytes and arrays stay bounded
                with read_transaction(self.engine) as conn:
                    rows = store.read_chunks(conn, ids[start:start + LOAD_CHUNKS])
                self._add(rows, first_day)
            if fold and len(self.snapshot.recent_daily.keys) + len(self.snapshot.recent_users.keys):
                self._fold(first_day)
            return self.snapshot

    def _add(self, rows: list[tuple], first_day: int) -> None:
        held = self.snapshot
        if rows:
            columns = [np.concatenate(c) for c in zip(*(store.decode_chunk(*row[1:]) for row in rows))]
            keys, events, days, counts, user_keys, user_events, hashes, user_days = columns
            held = Snapshot(held.daily, held.users,
                            held.recent_daily.merged(Level.of(pack_keys(keys, events, days), counts, True)),
                            held.recent_users.merged(Level.of(pack_keys(user_keys, user_events, user_days), hashes,
                                                              False)))
            self._loaded.update(row[0] for row in rows)
            self._low = max(self._low, max(self._loaded) - LOOKBACK_IDS)
            self._loaded = {i for i in self._loaded if i > self._low}
        self.snapshot = held
        # Folded when the recent rows reach a quarter of the base: each row is copied a bounded number of times.
        if len(held.recent_daily.keys) + len(held.recent_users.keys) > max(
                RECENT_ROWS, (len(held.daily.keys) + len(held.users.keys)) // 4):
            self._fold(first_day)

    def _fold(self, first_day: int) -> None:
        held = self.snapshot
        cut = first_day if first_day != self._first_day else None  # days beyond the retention go
        self.snapshot = Snapshot(held.daily.merged(held.recent_daily, cut), held.users.merged(held.recent_users, cut),
                                 Level.empty(True), Level.empty(False))
        self._first_day = first_day
