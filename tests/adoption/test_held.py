"""The held aggregates (services/adoption/held.py) against a plain decode of every stored chunk: loaded in
several refreshes with folds between, daily rows of equal keys summed, user rows all kept, old days cut."""

from __future__ import annotations

import numpy as np
import pytest

from services.adoption import held, store
from services.common import db

TODAY = 20_400


def write_messages(engine, rng, messages: int) -> None:
    for _ in range(messages):
        n = 500
        customers, events, days = rng.integers(1, 40, n), rng.integers(1, 6, n), TODAY - rng.integers(0, 10, n)
        order = np.argsort(days, kind="stable")
        with db.write_transaction(engine) as conn:
            store.add_chunks(conn, customers[order], events[order], days[order], rng.integers(1, 4, n)[order],
                             customers[order], events[order], rng.integers(-50, 50, n)[order], days[order])


def stored_rows(engine, first_day: int) -> tuple[dict, list]:
    """daily (customer, event, day) -> events summed; user rows sorted; both of days from ``first_day`` on."""
    daily, users = {}, []
    with db.read_transaction(engine) as conn:
        ids = [i for i, _ in store.chunk_ids(conn, 0)]
        for _, day, rows, daily_blob, users_blob in store.read_chunks(conn, ids):
            k, e, d, c, uk, ue, h, ud = (a.tolist() for a in store.decode_chunk(day, rows, daily_blob, users_blob))
            for key in zip(k, e, d, c):
                if key[2] >= first_day:
                    daily[key[:3]] = daily.get(key[:3], 0) + key[3]
            users += [row for row in zip(uk, ue, ud, h) if row[2] >= first_day]
    return daily, sorted(users)


def held_rows(snapshot: held.Snapshot) -> tuple[dict, list]:
    daily, users = {}, []
    for level in (snapshot.daily, snapshot.recent_daily):
        for c, e, d, v in zip(*(a.tolist() for a in held.unpack_keys(level.keys)), level.values.tolist()):
            daily[c, e, d] = daily.get((c, e, d), 0) + v
    for level in (snapshot.users, snapshot.recent_users):
        users += list(zip(*(a.tolist() for a in held.unpack_keys(level.keys)), level.values.tolist()))
    return daily, sorted(users)


@pytest.fixture
def engine(database_url):
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def test_refreshes_and_folds_hold_what_the_chunks_hold(engine, monkeypatch):
    monkeypatch.setattr(held, "RECENT_ROWS", 1_500)  # folds while loading, not only at the end
    monkeypatch.setattr(held, "LOAD_CHUNKS", 7)
    rng = np.random.default_rng(7)
    holder = held.HeldTelemetry(engine)
    write_messages(engine, rng, 4)
    holder.refresh(TODAY - 20)
    write_messages(engine, rng, 3)
    snapshot = holder.refresh(TODAY - 20)
    assert len(snapshot.daily.keys) and np.all(np.diff(snapshot.daily.keys) > 0)  # summed: keys distinct
    assert held_rows(snapshot) == stored_rows(engine, TODAY - 20)
    snapshot = holder.refresh(TODAY - 5, fold=True)  # the retention moved: older days go
    assert not len(snapshot.recent_daily.keys) and held_rows(snapshot) == stored_rows(engine, TODAY - 5)
    customer = int(held.unpack_keys(snapshot.daily.keys[:1])[0][0])
    events, days, counts, user_events, hashes, user_days = snapshot.customer_rows(customer, TODAY - 5)
    daily, users = stored_rows(engine, TODAY - 5)
    assert sorted(zip(events.tolist(), days.tolist(), counts.tolist())) == sorted(
        (e, d, c) for (k, e, d), c in daily.items() if k == customer)
    assert sorted(zip(user_events.tolist(), user_days.tolist(), hashes.tolist())) == sorted(
        (e, d, h) for k, e, d, h in users if k == customer)
