"""First achieved days derived again over the kept history, when a value hierarchy version is activated.

The recorded first days (``adoption_achievements``) belong to the rules they were found under; a new version
changes the rules. So for every customer with telemetry, block by block, the held aggregates (services/adoption/
held.py: the same sorted arrays the evaluation reads, refreshed from the new chunks only) give the daily rows
and the user rows of the kept history as views, and ``scoring_engine.adoption_history`` finds the first day
each node of the new version held; those replace the customer's recorded days in one transaction per block.
A user row is one day a user was seen, so each is a span of that day alone: the kernel counts a user in the
windows that hold one of its days, as the evaluation does. Later evaluations only move a day back (see
evaluation.py), so what this derives stays unless history says earlier.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from sqlalchemy.engine import Engine

from cvh.adoption.v1 import adoption_service_pb2 as pb
from scoring_engine import adoption_history
from services.adoption import achievement, store
from services.adoption.evaluation import Recorded
from services.adoption.held import EVENT_BITS, HeldTelemetry, unpack_keys
from services.adoption.tables import achievements
from services.common.db import read_transaction, upsert_many, write_transaction

log = logging.getLogger("cvh.adoption")

BLOCK_CUSTOMERS = 65_536


def rederive(engine: Engine, value_map: pb.ValueMapVersion, held: HeldTelemetry, first_day: int, today: int,
             block: int = BLOCK_CUSTOMERS) -> Recorded:
    """Replaces every customer's first achieved days with those of ``value_map`` over ``first_day .. today``,
    from the ``held`` aggregates (refreshed first); what it recorded (the next evaluation writes only what is
    new to it)."""
    started = time.perf_counter()
    snapshot = held.refresh(first_day, fold=True)
    with read_transaction(engine) as conn:
        event_ids = store.known_event_ids(conn, achievement.rule_event_names(value_map))
        all_keys, _ = held.customers(conn)
    plan = achievement.compile_plan(value_map, event_ids)
    # Per event id, whether some rule counts it (daily rows), and whether a distinct-users rule does (user rows).
    rule_events, user_events = np.zeros(1 << EVENT_BITS, bool), np.zeros(1 << EVENT_BITS, bool)
    rule_events[list(event_ids.values())] = True
    user_events[[event_ids[n] for node in value_map.nodes if node.procedure_rule.min_distinct_users
                 for n in node.procedure_rule.event_names if n in event_ids]] = True
    node_keys = np.array([node.key for node in value_map.nodes], dtype=object)
    recorded = Recorded(node_keys.tolist())
    for start in range(0, len(all_keys), block):
        keys = all_keys[start:start + block]
        low, high = int(keys[0]), int(keys[-1])
        d = _rows(snapshot.daily, low, high, rule_events, first_day)
        u = _rows(snapshot.users, low, high, user_events, first_day)
        first = adoption_history.first_achieved_days(plan, first_day, today, len(keys), np.searchsorted(keys, d[0]),
                                                     d[1], d[2], d[3], np.searchsorted(keys, u[0]), u[1], u[3],
                                                     u[2], u[2])
        achieved = first >= 0
        rows, nodes = np.nonzero(achieved)
        with write_transaction(engine) as conn:
            conn.execute(achievements.delete().where(achievements.c.customer_key.between(low, high)))
            # Plain tuples through the driver (COPY on PostgreSQL): a million rows in seconds, not tens.
            upsert_many(conn, achievements, ["customer_key", "node_key"], {"first_day": "min"},
                        list(zip(keys[rows].tolist(), node_keys[nodes].tolist(), first[rows, nodes].tolist())))
        recorded.add(keys, achieved)
    log.info("first achieved days derived again", extra={"version": value_map.version, "customers": len(all_keys),
                                                          "seconds": round(time.perf_counter() - started, 3)})
    return recorded


def _rows(level, low: int, high: int, wanted: np.ndarray, first_day: int) -> tuple[np.ndarray, ...]:
    """Customers ``low .. high``'s rows of ``level`` for the ``wanted`` events, of days from ``first_day`` on:
    customer keys, events, days, values."""
    keys, values = level.between(low, high)
    customers, events, days = unpack_keys(keys)
    keep = wanted[events] & (days >= first_day)
    return customers[keep], events[keep], days[keep], values[keep]
