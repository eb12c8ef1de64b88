"""First achieved days derived again (services/adoption/history.py) from the held aggregates of stored chunks,
against the day-by-day replay of the NumPy reference over a plain decode of the same chunks; the days it
records replace those recorded before, and what it returns spares the next evaluation writing them again."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from cvh.adoption.v1 import adoption_service_pb2 as pb
from scoring_engine import reference as R
from services.adoption import achievement, history, store
from services.adoption.held import HeldTelemetry
from services.adoption.tables import achievements
from services.common import db

TODAY, FIRST_DAY = 20_400, 20_400 - 29
N, Rule, Children = pb.ValueNode, pb.ProcedureRule, pb.ChildrenRule
CUSTOMERS = [f"h{i:03d}" for i in range(120)]
EVENTS = ["a", "b", "c", "d", "noise"]


def value_map() -> pb.ValueMapVersion:
    """A strategy <- initiative (at least 1 of 2) <- use cases <- procedures: counts with active days, a
    distinct-users rule, a one-day window and an event two procedures count."""
    nodes = [N(key="grow", level=1), N(key="sell", level=2, parent_key="grow",
                                          children_rule=Children(kind=pb.CHILDREN_RULE_KIND_AT_LEAST, min_children=1)),
             N(key="uc-1", level=3, parent_key="sell"), N(key="uc-2", level=3, parent_key="sell"),
             N(key="p-1", level=4, parent_key="uc-1", procedure_rule=Rule(event_names=["a"], min_count=4,
                                                                          min_active_days=2, window_days=7)),
             N(key="p-2", level=4, parent_key="uc-1", procedure_rule=Rule(event_names=["b", "c"], min_count=1,
                                                                          window_days=30)),
             N(key="p-3", level=4, parent_key="uc-2", procedure_rule=Rule(event_names=["c"], min_distinct_users=2,
                                                                          window_days=10)),
             N(key="p-4", level=4, parent_key="uc-2", procedure_rule=Rule(event_names=["d"], min_count=2,
                                                                          window_days=1))]
    return pb.ValueMapVersion(version=1, nodes=nodes)


@pytest.fixture
def engine(database_url):
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def write_telemetry(engine, rng) -> None:
    """Customers and event names numbered, then messages of random rows (some before the kept history)."""
    with db.write_transaction(engine) as conn:
        keys = store.add_customers(conn, CUSTOMERS, 0)
        ids = store.event_ids(conn, EVENTS)
    key_list, id_list = np.array([keys[c] for c in CUSTOMERS]), np.array([ids[e] for e in EVENTS])
    for _ in range(4):
        n, m = 600, 300
        days = np.sort(TODAY - rng.integers(0, 35, n))
        user_days = np.sort(TODAY - rng.integers(0, 35, m))
        with db.write_transaction(engine) as conn:
            store.add_chunks(conn, key_list[rng.integers(0, len(CUSTOMERS), n)], id_list[rng.integers(0, 5, n)], days,
                             rng.integers(1, 3, n), key_list[rng.integers(0, len(CUSTOMERS), m)],
                             id_list[rng.integers(0, 5, m)], rng.integers(0, 4, m), user_days)


def decoded(engine) -> tuple[np.ndarray, ...]:
    """Every stored row, decoded chunk by chunk: the daily columns, then the user columns."""
    with db.read_transaction(engine) as conn:
        rows = store.read_chunks(conn, [i for i, _ in store.chunk_ids(conn, 0)])
    return tuple(np.concatenate(c).astype(np.int64) for c in zip(*(store.decode_chunk(*r[1:]) for r in rows)))


def test_rederived_days_are_the_references_and_replace_those_recorded(engine):
    write_telemetry(engine, np.random.default_rng(5))
    versions = value_map()
    with db.write_transaction(engine) as conn:  # a day recorded under other rules, and one of a gone node
        conn.execute(achievements.insert(), [{"customer_key": 1, "node_key": "p-1", "first_day": 1},
                                             {"customer_key": 2, "node_key": "gone", "first_day": 5}])
    recorded = history.rederive(engine, versions, HeldTelemetry(engine), FIRST_DAY, TODAY, block=50)
    with db.read_transaction(engine) as conn:
        ids = store.known_event_ids(conn, EVENTS)
        got = set(conn.execute(sa.select(achievements.c.customer_key, achievements.c.node_key,
                                         achievements.c.first_day)).all())
    plan = achievement.compile_plan(versions, ids)
    keys, events, days, counts, user_keys, user_events, hashes, user_days = decoded(engine)
    kept = days >= FIRST_DAY
    seen = user_days >= FIRST_DAY  # each user row a span of its one day
    first = R.first_achieved_reference(plan, FIRST_DAY, TODAY, len(CUSTOMERS) + 1, keys[kept], events[kept],
                                       days[kept], counts[kept], user_keys[seen], user_events[seen], hashes[seen],
                                       user_days[seen], user_days[seen])
    node_keys = [n.key for n in versions.nodes]
    want = {(k, node_keys[n], int(first[k, n])) for k, n in zip(*np.nonzero(first >= 0))}
    assert got == {(int(k), n, d) for k, n, d in want}
    for node in ("grow", "p-1", "p-3", "p-4"):  # each rule reached (users' too) and missed: the test can fail
        assert 0 < sum(n == node for _, n, _ in got) < len(CUSTOMERS), node
    achieved = np.zeros((len(CUSTOMERS) + 1, len(node_keys)), bool)
    achieved[first >= 0] = True
    everyone = np.arange(1, len(CUSTOMERS) + 1)
    assert recorded.nodes == node_keys and not len(recorded.new(everyone, achieved[everyone])[0])
