"""The whole base evaluated against the active value hierarchy, block by block of customers.

The aggregates come from memory (services/adoption/held.py: sorted arrays, refreshed from the chunks written
since the last evaluation, so a re-derivation after a catalog change reads nothing but the new chunks). Each
block's rows are views of them, unpacked and evaluated by the engine's parallel kernel, and every node a
customer has achieved for the first time is recorded with the day (``adoption_achievements``: a later
evaluation never moves that day forward). Memory: the held arrays, plus one block of customers' unpacked
rows and results (``Evaluation.peak_block_bytes``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cvh.adoption.v1 import adoption_service_pb2 as pb
from scoring_engine import adoption as engine_adoption
from services.adoption import achievement, store
from services.adoption.held import HeldTelemetry, unpack_keys
from services.adoption.tables import achievements
from services.common.db import read_transaction, upsert_many, write_transaction

log = logging.getLogger("cvh.adoption")

# Customers per kernel call: their results (about 3.5 KB each for 200 procedures) stay a few tens of MB.
BLOCK_CUSTOMERS = 16_384


class Recorded:
    """Per customer key, the nodes whose achievement this process has written (bit-packed), so an evaluation
    writes only what it finds achieved for the first time."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.bits = np.zeros((0, (len(nodes) + 7) // 8), np.uint8)

    def new(self, keys: np.ndarray, achieved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(block rows, node columns) achieved and not written before."""
        self._grow(keys)
        before = np.unpackbits(self.bits[keys], axis=1, count=len(self.nodes)).astype(bool)
        return np.nonzero(achieved & ~before)

    def add(self, keys: np.ndarray, achieved: np.ndarray) -> None:
        self._grow(keys)
        self.bits[keys] |= np.packbits(achieved, axis=1)

    def _grow(self, keys: np.ndarray) -> None:
        """Room for customer keys up to the highest of ``keys`` (sorted)."""
        if len(keys) and int(keys[-1]) >= len(self.bits):
            grown = np.zeros((max(int(keys[-1]) + 1, 2 * len(self.bits)), self.bits.shape[1]), np.uint8)
            grown[:len(self.bits)] = self.bits
            self.bits = grown

    def for_nodes(self, nodes: list[str]) -> Recorded:
        """The same knowledge for another version's nodes (those of the same key keep theirs)."""
        if nodes == self.nodes:
            return self
        found = Recorded(nodes)
        old = {key: i for i, key in enumerate(self.nodes)}
        shared = [(i, old[key]) for i, key in enumerate(nodes) if key in old]
        if shared and len(self.bits):
            before = np.unpackbits(self.bits, axis=1, count=len(self.nodes)).astype(bool)
            after = np.zeros((len(self.bits), len(nodes)), bool)
            after[:, [i for i, _ in shared]] = before[:, [j for _, j in shared]]
            found.bits = np.packbits(after, axis=1)
        return found

    @classmethod
    def stored(cls, conn, nodes: list[str]) -> Recorded:
        """What the store has recorded already (a process's first evaluation then writes only what is new)."""
        found = cls(nodes)
        column = {key: i for i, key in enumerate(nodes)}
        rows = [(key, column[node]) for key, node in conn.execute(
            sa.select(achievements.c.customer_key, achievements.c.node_key)) if node in column]
        if rows:
            pairs = np.array(rows, np.int64)
            achieved = np.zeros((int(pairs[:, 0].max()) + 1, len(nodes)), bool)
            achieved[pairs[:, 0], pairs[:, 1]] = True
            found.bits = np.packbits(achieved, axis=1)
        return found


@dataclass
class Evaluation:
    """What one evaluation of the base found."""

    version: int
    today: int
    customers: int = 0
    seconds: float = 0.0
    end_time_us: int = 0
    # the version's nodes (ValueNode), in its order
    nodes: list = field(default_factory=list)
    # node key -> customers that have achieved it today
    achieved: dict[str, int] = field(default_factory=dict)
    # the achievements written, for the next evaluation
    recorded: Recorded | None = None
    # bytes of the held aggregates, and the most one block of customers added to them
    held_bytes: int = 0
    peak_block_bytes: int = 0
    # (customer keys, node columns) achieved for the first time, not written yet
    new_achievements: list = field(default_factory=list)


def evaluate_base(engine: Engine, value_map: pb.ValueMapVersion, today: int, held: HeldTelemetry, first_day: int,
                  block: int = BLOCK_CUSTOMERS, on_block: Callable[[list[str], np.ndarray], None] | None = None,
                  recorded: Recorded | None = None, write: bool = True) -> Evaluation:
    """Evaluates every customer with telemetry from the ``held`` aggregates (refreshed first, days from
    ``first_day`` on); ``on_block(customer_ids, achieved)`` sees each block's customers and their achieved nodes
    (customers x nodes) once recorded. ``recorded``, kept by the caller from the last evaluation, spares
    writing again the achievements written then. Without ``write``, the achievements found for the first time
    are left in ``new_achievements`` for :func:`write_achievements` (the caller answers from the evaluation
    first)."""
    started = time.perf_counter()
    found = Evaluation(value_map.version, today)
    keys_of_nodes = [node.key for node in value_map.nodes]
    totals = np.zeros(len(keys_of_nodes), np.int64)
    snapshot = held.refresh(first_day, fold=True)
    with read_transaction(engine) as conn:
        event_ids = store.known_event_ids(conn, achievement.rule_event_names(value_map))
        all_keys, all_ids = held.customers(conn)
    plan = achievement.compile_plan(value_map, event_ids)
    # Per event id, whether a distinct-users rule counts it.
    user_events = np.zeros(1 << 16, bool)
    user_events[[event_ids[n] for node in value_map.nodes if node.procedure_rule.min_distinct_users
                 for n in node.procedure_rule.event_names if n in event_ids]] = True
    longest = max((node.procedure_rule.window_days for node in value_map.nodes), default=1)
    if recorded is None:
        with read_transaction(engine) as conn:
            recorded = Recorded.stored(conn, keys_of_nodes)
    found.recorded = recorded = recorded.for_nodes(keys_of_nodes)
    found.nodes = list(value_map.nodes)
    result = None
    for start in range(0, len(all_keys), block):
        keys = all_keys[start:start + block]
        daily_keys, counts = snapshot.daily.between(int(keys[0]), int(keys[-1]))
        user_keys, hashes = snapshot.users.between(int(keys[0]), int(keys[-1]))
        row_customers, events, days = unpack_keys(daily_keys)
        user_customers, user_event_ids, user_days = unpack_keys(user_keys)
        # Only users of events some distinct-users rule counts, seen within the longest window.
        wanted = user_events[user_event_ids] & (user_days > today - longest)
        result = engine_adoption.evaluate(
            plan, today, len(keys), _positions(keys, row_customers), events, days, counts,
            _positions(keys, user_customers[wanted]), user_event_ids[wanted], hashes[wanted], user_days[wanted],
            out=result)
        totals += result.achieved.sum(axis=0)
        customer_rows, node_columns = recorded.new(keys, result.achieved)
        if len(customer_rows):
            found.new_achievements.append((keys[customer_rows], node_columns))
            if write:
                write_achievements(engine, found)
        recorded.add(keys, result.achieved)
        found.customers += len(keys)
        found.peak_block_bytes = max(found.peak_block_bytes, _block_bytes(result, daily_keys, int(wanted.sum())))
        if on_block is not None:
            on_block(all_ids[start:start + block], result.achieved)
    found.achieved = dict(zip(keys_of_nodes, totals.tolist()))
    found.held_bytes = snapshot.nbytes
    found.seconds = time.perf_counter() - started
    found.end_time_us = time.time_ns() // 1000
    log.info("adoption evaluated", extra={"version": found.version, "customers": found.customers,
                                          "seconds": round(found.seconds, 3)})
    return found


def write_achievements(engine: Engine, found: Evaluation, rows_per_transaction: int = 200_000) -> int:
    """Records ``found``'s new achievements with its day (a day recorded before stays: the earliest wins),
    in transactions of up to ``rows_per_transaction`` rows. The rows written."""
    nodes = [node.key for node in found.nodes]
    written = 0
    while found.new_achievements:
        customer_keys, columns = found.new_achievements.pop(0)
        for start in range(0, len(customer_keys), rows_per_transaction):
            part = slice(start, start + rows_per_transaction)
            with write_transaction(engine) as conn:
                upsert_many(conn, achievements, ["customer_key", "node_key"], {"first_day": "min"},
                            list(zip(customer_keys[part].tolist(), [nodes[n] for n in columns[part].tolist()],
                                     itertools.repeat(found.today))))
            written += len(customer_keys[part])
    return written


def _positions(keys: np.ndarray, customer_keys: np.ndarray) -> np.ndarray:
    """Each row's customer as a position in ``keys`` (sorted): a subtraction when the keys run without gaps
    (SQLite numbers customers so), else a binary search per row."""
    if int(keys[-1]) - int(keys[0]) + 1 == len(keys):
        return customer_keys - keys[0]
    return np.searchsorted(keys, customer_keys)


def _block_bytes(result: engine_adoption.AdoptionResult, daily_keys: np.ndarray, user_rows: int) -> int:
    """What one block adds to the held arrays: its rows unpacked into int64 columns and its results."""
    return 4 * daily_keys.nbytes + 5 * 8 * user_rows + sum(
        getattr(result, f).nbytes for f in ("achieved", "progress", "last_day", "counts", "days", "users"))


def first_achieved(conn, customer_key: int) -> dict[str, int]:
    """node key -> the day the customer was first seen to have achieved it."""
    return dict(conn.execute(sa.select(achievements.c.node_key, achievements.c.first_day)
                             .where(achievements.c.customer_key == customer_key)).all())
