"""First achieved days derived again over the kept history, when a value hierarchy version is activated.

The recorded first days (``adoption_achievements``) belong to the rules they were found under; a new version
changes the rules. So for every customer with telemetry, block by block, the daily aggregates and user spans
of the kept history are read as columns and ``scoring_engine.adoption_history`` finds the first day each node
of the new version held; those replace the customer's recorded days in one transaction per block. Later
evaluations only move a day back (see evaluation.py), so what this derives stays unless history says earlier.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cvh.adoption.v1 import adoption_service_pb2 as pb
from scoring_engine import adoption_history
from services.adoption import achievement, store
from services.adoption.tables import achievements, customers, daily, users
from services.common.db import read_transaction, write_transaction

log = logging.getLogger("cvh.adoption")

BLOCK_CUSTOMERS = 65_536


def rederive(engine: Engine, value_map: pb.ValueMapVersion, first_day: int, today: int,
             block: int = BLOCK_CUSTOMERS) -> int:
    """Replaces every customer's first achieved days with those of ``value_map`` over ``first_day .. today``;
    the customers done."""
    started = time.perf_counter()
    with read_transaction(engine) as conn:
        event_ids = store.known_event_ids(conn, achievement.rule_event_names(value_map))
        all_keys = np.array(conn.execute(sa.select(customers.c.customer_key).order_by(customers.c.customer_key))
                            .scalars().all(), np.int64)
    plan = achievement.compile_plan(value_map, event_ids)
    user_names = {n for node in value_map.nodes if node.procedure_rule.min_distinct_users
                  for n in node.procedure_rule.event_names}
    user_events = sorted(event_ids[n] for n in user_names if n in event_ids) or [-1]
    node_keys = np.array([node.key for node in value_map.nodes], dtype=object)
    for start in range(0, len(all_keys), block):
        keys = all_keys[start:start + block]
        low, high = int(keys[0]), int(keys[-1])
        with read_transaction(engine) as conn:
            d = _columns(conn, sa.select(daily.c.customer_key, daily.c.event_id, daily.c.day, daily.c.events).where(
                daily.c.customer_key.between(low, high), daily.c.day >= first_day,
                daily.c.event_id.in_(sorted(event_ids.values()) or [-1])), 4)
            u = _columns(conn, sa.select(users.c.customer_key, users.c.event_id, users.c.user_hash, users.c.first_day,
                                         users.c.last_day).where(users.c.customer_key.between(low, high),
                                                                 users.c.event_id.in_(user_events)), 5)
        first = adoption_history.first_achieved_days(plan, first_day, today, len(keys), np.searchsorted(keys, d[0]),
                                                     d[1], d[2], d[3], np.searchsorted(keys, u[0]), *u[1:])
        rows, nodes = np.nonzero(first >= 0)
        with write_transaction(engine) as conn:
            conn.execute(achievements.delete().where(achievements.c.customer_key.between(low, high)))
            if len(rows):
                conn.execute(achievements.insert(), [
                    {"customer_key": k, "node_key": n, "first_day": f} for k, n, f in
                    zip(keys[rows].tolist(), node_keys[nodes].tolist(), first[rows, nodes].tolist())])
    log.info("first achieved days derived again", extra={"version": value_map.version, "customers": len(all_keys),
                                                          "seconds": round(time.perf_counter() - started, 3)})
    return len(all_keys)


def _columns(conn, query, width: int) -> list[np.ndarray]:
    values = np.array(conn.execute(query).all(), np.int64).reshape(-1, width)
    return [values[:, i] for i in range(width)]
