"""Fit and score on Dask with the engine's kernels: a real LocalCluster of two worker processes, against the
single-process engine on the same data (exactly, or within the bounds scoring_engine.distributed states)."""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import scoring_engine as se
from scoring_engine import _kernels as K

dd = pytest.importorskip("dask.dataframe")
da = pytest.importorskip("dask.array")
D = pytest.importorskip("scoring_engine.distributed")

PART_ROWS = (9_000, 2_500, 0, 6_100, 1, 4_096)  # partitions below and above the parallel kernels' 4,096 rows


def base(n: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.lognormal(2.0, 1.5, size=(n, 17))
    X[:, 7] = rng.integers(1, 21, n)
    X[:, 11] = rng.integers(-100, 101, n)  # percentile signal with many ties
    X[:, 12] = rng.poisson(4.0, n)
    X[rng.random((n, 17)) < 0.08] = np.nan
    X[::53] = np.nan               # customers with no signal at all
    X[1000:1300] = X[2000:2300]    # equal composites across partitions: ties go by row order
    return X


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    se.warm_up()  # the kernels cached here seed each worker's own cache folder: workers load, not compile
    client = D.scoring_client(n_workers=2, threads_per_worker=1,
                              cache_root=str(tmp_path_factory.mktemp("numba-workers")))
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def parquet_base(tmp_path_factory):
    """The base as Parquet part files of uneven sizes (one empty), with ids and a previous tier column."""
    X = base(sum(PART_ROWS))
    rng = np.random.default_rng(5)
    previous = rng.integers(-1, 5, X.shape[0])
    folder = tmp_path_factory.mktemp("base")
    start = 0
    for i, n in enumerate(PART_ROWS):
        rows = slice(start, start + n)
        columns = {"customer_id": [f"c{k}" for k in range(start, start + n)]}
        columns.update({name: pa.array(X[rows, j], mask=np.isnan(X[rows, j]))
                        for j, name in enumerate(se.default_model().signal_names)})
        columns["previous_tier"] = pa.array(previous[rows], mask=previous[rows] < 0)  # null: none
        pq.write_table(pa.table(columns), folder / f"part-{i:05d}.parquet")
        start += n
    return folder, X, previous


def test_fit_on_dask_equals_the_single_process_fit(client, parquet_base):
    folder, X, _ = parquet_base
    model = se.default_model()
    frame = dd.read_parquet(folder)
    assert frame.npartitions == len(PART_ROWS)
    got, want = D.fit(model, frame), se.fit(model, X)
    assert got.n_rows == want.n_rows == X.shape[0]
    for stat in (K.STAT_COUNT, K.STAT_MIN, K.STAT_MAX):
        np.testing.assert_array_equal(got.stats[:, stat], want.stats[:, stat])  # exact
    np.testing.assert_array_equal(got.pct_values, want.pct_values)  # percentile tables: exact
    np.testing.assert_array_equal(got.pct_counts, want.pct_counts)
    np.testing.assert_array_equal(got.pct_offsets, want.pct_offsets)
    for name, stats in got.signal_statistics().items():
        for key, value in stats.items():
            assert math.isclose(value, want.signal_statistics()[name][key], rel_tol=D.MEAN_STD_RTOL), (name, key)


def test_score_on_dask_equals_the_single_process_engine(client, parquet_base):
    folder, X, previous = parquet_base
    model = se.default_model()
    frame = dd.read_parquet(folder)
    fitted = D.fit(model, frame)
    got = D.score(fitted, frame, previous_tiers="previous_tier", with_rank=True).compute()

    # With the same fitted model, everything is bit for bit: scores, share cut-offs, tiers with hysteresis, ranks.
    same = se.score(fitted, X, previous_tiers=previous, with_rank=True)
    for name in ("dimensions", "composite", "tier", "tier_thresholds", "rank", "percentile"):
        np.testing.assert_array_equal(getattr(got, name), getattr(same, name), err_msg=name)
    assert (got.tier != se.score(fitted, X).tier).any(), "hysteresis keeps some customers in their previous tier"
    assert len(np.unique(got.composite)) < len(got.composite), "equal composites: ties go by row order"

    # Fitted in one process as well: within the stated bound, and here tiers and ranks are equal.
    alone = se.score(se.fit(model, X), X, previous_tiers=previous, with_rank=True)
    np.testing.assert_allclose(got.composite, alone.composite, rtol=0, atol=D.COMPOSITE_ATOL)
    np.testing.assert_allclose(got.dimensions, alone.dimensions, rtol=0, atol=D.COMPOSITE_ATOL)
    np.testing.assert_allclose(got.tier_thresholds, alone.tier_thresholds, rtol=0, atol=D.COMPOSITE_ATOL)
    np.testing.assert_array_equal(got.tier, alone.tier)
    np.testing.assert_array_equal(got.rank, alone.rank)


def test_workers_hold_composites_ranks_and_percentiles_of_the_base_and_nothing_more(client, parquet_base):
    """What stays on the workers for the whole base is 24 bytes a customer (composite, rank, percentile):
    dimension scores are scored again where they are used, the signals are never held."""
    from distributed import futures_of

    folder, X, _ = parquet_base
    frame = dd.read_parquet(folder)
    scores = D.score(D.fit(se.default_model(), frame), frame, with_rank=True)
    assert futures_of(scores.dimensions) == []  # nothing held: computed from the base partition by partition
    held = {f.key for f in futures_of([scores.composite, scores.tier, scores.rank, scores.percentile])}
    held_bytes = sum(client.nbytes(keys=list(held), summary=False).values())
    assert held_bytes >= 24 * X.shape[0], held_bytes  # composites, ranks and percentiles are held
    assert held_bytes <= 24 * X.shape[0] + 2_048 * len(held), (held_bytes, X.shape[0])
    got = scores.compute()
    np.testing.assert_array_equal(got.rank, se.rank_composites(got.composite)[0])


def test_held_dimensions_come_from_the_one_scoring_pass(client, parquet_base):
    """With hold_dimensions the dimension scores are those of the scoring pass, held beside the composites (8 bytes
    a customer per dimension more), and equal to the engine's."""
    from distributed import futures_of

    folder, X, previous = parquet_base
    frame = dd.read_parquet(folder)
    fitted = D.fit(se.default_model(), frame)
    scores = D.score(fitted, frame, previous_tiers="previous_tier", with_rank=True, hold_dimensions=True)
    n_dims = len(fitted.model.dimensions)
    held_dims = {f.key for f in futures_of(scores.dimensions)}
    assert held_dims and held_dims <= {f.key for f in futures_of(scores.composite)}  # the same held scores
    held = held_dims | {f.key for f in futures_of([scores.rank, scores.percentile])}
    held_bytes = sum(client.nbytes(keys=list(held), summary=False).values())
    assert 8 * (3 + n_dims) * X.shape[0] <= held_bytes <= 8 * (3 + n_dims) * X.shape[0] + 2_048 * len(held)
    got = scores.compute()
    want = se.score(fitted, X, previous_tiers=previous, with_rank=True)
    for name in ("dimensions", "composite", "tier", "tier_thresholds", "rank", "percentile"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def renormalizing_model() -> se.ValueModel:
    """The default model with no fixed value for missing signals: customers without signals have no composite."""
    return se.ValueModel.from_json(se.default_model().to_json().replace("MISSING_POLICY_FIXED_VALUE",
                                                                        "MISSING_POLICY_RENORMALIZE"))


def test_a_dask_array_with_frozen_cutoffs_and_a_previous_tier_array(client):
    model = renormalizing_model()
    X = base(12_000, seed=3)
    fitted = se.fit(model, X)
    frozen = fitted.with_tier_thresholds(se.score(fitted, X).tier_thresholds)
    previous = np.random.default_rng(2).integers(-1, 5, X.shape[0]).astype(np.int32)
    data = da.from_array(X[:, ::-1], chunks=(5_000, 4))  # columns named, in another order and chunked
    got = D.score(frozen, data, previous_tiers=da.from_array(previous, chunks=5_000), with_rank=True,
                  signal_names=model.signal_names[::-1]).compute()
    want = se.score(frozen, X, previous_tiers=previous, with_rank=True)
    for name in ("composite", "tier", "rank", "percentile"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert np.isnan(got.composite).sum() > 200, "customers without a composite rank last, in row order"
    assert D.score(frozen, data, signal_names=model.signal_names[::-1]).rank is None


def test_a_non_finite_value_is_named_by_its_row_across_partitions(client):
    model = se.default_model()
    X = base(9_000, seed=4)
    X[7_321, 5] = np.inf
    data = da.from_array(X, chunks=(2_000, 17))
    with pytest.raises(se.NonFiniteValueError) as fitting:
        D.fit(model, data)
    assert fitting.value.row == 7_321 and fitting.value.signal == model.signal_names[5]
    with pytest.raises(se.NonFiniteValueError) as scoring:
        D.score(se.fit(model, base(100)), data)
    assert scoring.value.row == 7_321


def test_workers_keep_the_thread_budget_and_a_numba_cache_of_their_own(client):
    cores = len(os.sched_getaffinity(0))
    budgets = client.gather([client.submit(D._apply_thread_budget, pure=False, workers=[w])
                             for w in client.scheduler_info()["workers"]])
    assert budgets == [max(1, cores // 2)] * 2, "2 workers x 1 Dask thread x Numba threads <= the cores"

    def cache() -> tuple[str, int]:
        folder = os.environ["NUMBA_CACHE_DIR"]
        return folder, sum(name.endswith(".nbi") for _, _, names in os.walk(folder) for name in names)

    malloc = client.run(lambda: {k: os.environ.get(k) for k in D.WORKER_MALLOC_ENV})
    assert list(malloc.values()) == [D.WORKER_MALLOC_ENV] * 2, "set before the worker processes started"

    caches = list(client.run(cache).values())
    assert len({folder for folder, _ in caches}) == 2 and all(count > 0 for _, count in caches)

    def compiled() -> int:  # specialisations per kernel: more than one means a task compiled again
        from numba.core.dispatcher import Dispatcher
        return max(len(k.signatures) for k in vars(K).values() if isinstance(k, Dispatcher) and k.signatures)

    # warm_up compiles two forms of each kernel that takes a matrix: writable and read-only (np.frombuffer).
    assert list(client.run(compiled).values()) == [2, 2], \
        "after the tests above (run first), each worker still has only the kernels compiled at its start"
