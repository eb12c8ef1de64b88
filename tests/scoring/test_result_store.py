"""A run's results and history layout are written a bounded part at a time (on PostgreSQL by binary COPY): what is
read back is what was written, whatever the part size; and ids stored as blobs come back as one Arrow array."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from services.common import db
from services.scoring import history, store
from services.scoring.runs import ranked_chunks


class Result:  # what ranked_chunks reads of a scoring result
    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.dimensions = rng.random((n, 4))
        self.composite = rng.random(n) * 100
        self.rank = np.argsort(np.argsort(-self.composite)) + 1
        self.percentile = 1 - (self.rank - 1) / n
        self.tier = rng.integers(0, 3, n)
        self.tier_ids = ["a", "b", "c"]


@pytest.fixture
def engine(database_url):
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def test_results_and_history_written_in_small_parts_read_back_whole(engine, monkeypatch):
    monkeypatch.setattr(store, "WRITE_CHUNKS", 2)
    monkeypatch.setattr(history, "WRITE_BUCKETS", 3)
    monkeypatch.setattr("services.scoring.runs.RESULT_CHUNK", 7)
    rng = np.random.default_rng(5)
    n = 100
    ids = pa.array([f"c-{i:03d}" for i in range(n)], pa.large_string())
    result = Result(n, rng)
    previous = rng.integers(-1, 3, n)
    with db.write_transaction(engine) as conn:
        run_id = store.create_run(conn, "default", 1, 0)
        chunks, counts, _ = ranked_chunks(ids, result, previous)
        store.write_results(conn, run_id, chunks)
        floats = [result.dimensions, result.composite]
        ints = [result.tier.astype(np.int32) + 1, previous.astype(np.int32) + 1, np.zeros(n, np.uint8),
                np.zeros(n, bool)]
        history.write(conn, run_id, ids, floats, ints, 16)
    assert sum(counts) == n
    with db.read_transaction(engine) as conn:
        read = list(store.read_results(conn, run_id, 4))
        stored_ids, levels = store.read_tier_levels(conn, run_id)
        runs = [SimpleNamespace(run_id=run_id, history_buckets=16)]
        found = {i: history.find(conn, runs, f"c-{i:03d}")[run_id] for i in (0, 41, 99)}
    order = np.argsort(result.rank)
    assert len(read) == 15 and [c.first_rank for c in read] == list(range(1, n + 1, 7))
    assert stored_ids.to_pylist() == [f"c-{i:03d}" for i in order] == [i for c in read for i in c.customer_ids]
    assert np.array_equal(np.concatenate([c.composite for c in read]), result.composite[order])
    assert np.array_equal(levels, result.tier[order] + 1)
    for i, row in found.items():
        assert row.floats.tolist() == [*result.dimensions[i], result.composite[i]]
        assert row.ints.tolist() == [result.tier[i] + 1, previous[i] + 1, 0, 0]


def test_ids_of_blobs_cut_at_the_newlines():
    assert store.ids_of_blobs([b"ab\ncd", "\u00e9t\u00e9".encode(), b"x"]).to_pylist() == ["ab", "cd", "\u00e9t\u00e9", "x"]
    assert store.ids_of_blobs([]).to_pylist() == []
