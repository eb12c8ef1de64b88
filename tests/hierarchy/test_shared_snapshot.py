"""A run's snapshot written once and memory-mapped (services/hierarchy/shared.py) answers as the one built in memory:
its arrays, its id index and, patched live copy-on-write (appends into the spare rows and beyond, deletions, field
writes), every array the in-memory snapshot given the same patches holds; the file is never written."""

from __future__ import annotations

import hashlib

import numpy as np

from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from services.hierarchy import live, shared
from services.hierarchy import snapshot as snapshots
from tests.hierarchy.test_live_patch import base, batch

RULE = pb.INHERITANCE_RULE_PARENT_MINUS_ONE


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def digest(path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()))).hexdigest()


def stored(tmp_path, snap, run="runs/1"):
    results = snapshots.RunResults(run, 1, list(snap.tiers), list(snap.dimensions), snap.ids.column(),
                                   np.asarray(snap.dimension_scores), np.asarray(snap.composite),
                                   np.asarray(snap.own_level), np.asarray(snap.rank), np.asarray(snap.percentile))
    with shared.run_lock(tmp_path, run) as path:
        assert not path.exists()
        shared.store(path, snap, results, RULE)
    return path


def test_a_mapped_snapshot_holds_what_was_built(tmp_path):
    snap, _ = base(np.random.default_rng(1), 2000)
    path = stored(tmp_path, snap)
    mapped, results, rule = shared.load(path)
    assert rule == RULE and results.run == "runs/1" and len(results.customer_ids) == snap.size
    for name in shared.ROW_FIELDS + shared.PLAIN_FIELDS + shared.DERIVED_FIELDS:
        assert isinstance(getattr(mapped, name), np.memmap) or not getattr(mapped, name).size, name
        assert same(getattr(snap, name), getattr(mapped, name)), name
    assert all(same(a, b) for a, b in zip(snap.sorted_dimension_scores, mapped.sorted_dimension_scores))
    ids = snap.ids.column()
    assert np.array_equal(mapped.rows(ids), np.arange(snap.size)) and mapped.row("nobody") is None
    assert mapped.teams.roles == snap.teams.roles and mapped.owner_names.names == snap.owner_names.names
    assert shared.mapped_bytes(mapped) > 0


def test_live_patches_of_a_mapped_snapshot_equal_those_in_memory_and_leave_the_files_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(shared, "spare_rows", lambda n: 100)
    rng = np.random.default_rng(7)
    snap, accounts = base(rng, 3000)
    path = stored(tmp_path, snap)
    before = digest(path)
    mapped, _, _ = shared.load(path)
    spare = len(mapped.parent.base) - mapped.size
    for step in range(1, 25):  # 24 batches: past the spare rows, so the arrays are copied once
        message, upserted = batch(rng, snap, accounts, step * 100)
        rows = live.feed_rows([message])
        scores = live.Scores(upserted[::3], rng.random(len(upserted[::3])) * 100,
                             rng.integers(1, 6, len(upserted[::3])).astype(np.int32),
                             rng.random((len(upserted[::3]), 2)), step)
        for target in (snap, mapped):
            live.apply(target, live.plan(target, rows, scores, RULE))
        for name in live.ROW_ARRAYS:
            assert same(getattr(snap, name), getattr(mapped, name)), (name, step)
        assert snap.ids.items() == mapped.ids.items() and snap.removed == mapped.removed
        assert same(snap.rank_order, mapped.rank_order) and same(snap.effective_cells, mapped.effective_cells)
    assert mapped.size - 3000 > spare, "the batches outgrew the spare rows"
    assert digest(path) == before, "copy-on-write: the shared files unchanged"


def test_a_patch_within_the_spare_rows_keeps_the_arrays_mapped(tmp_path):
    rng = np.random.default_rng(3)
    snap, accounts = base(rng, 1000)
    mapped, _, _ = shared.load(stored(tmp_path, snap))
    message, _ = batch(rng, mapped, accounts, 100)
    live.apply(mapped, live.plan(mapped, live.feed_rows([message]), None, RULE))
    assert mapped.size > 1000 and isinstance(mapped.parent.base, np.memmap)


def test_older_runs_are_removed_once_two_newer_are_written(tmp_path):
    snap, _ = base(np.random.default_rng(2), 100)
    for run in ("runs/1", "runs/2", "runs/3"):
        stored(tmp_path, snap, run)
        shared.remove_older(tmp_path, run)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run-00000000000000000002", "run-00000000000000000002.lock",
        "run-00000000000000000003", "run-00000000000000000003.lock"]
