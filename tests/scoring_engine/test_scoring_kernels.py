"""Numba kernels against the NumPy reference: random models and matrices (hypothesis) and edge cases."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scoring_engine as se
from scoring_engine import _kernels as K
from scoring_engine import reference as R
from scoring_engine._config import PARALLEL_MIN_ROWS

RTOL = ATOL = 1e-9  # scores are on 0..100; ATOL keeps NaN-free near-zero values comparable
NAMES = [f"s{i}" for i in range(6)]
DIMS = ["VALUE_DIMENSION_PROFITABILITY", "VALUE_DIMENSION_STRATEGIC_GROWTH", "VALUE_DIMENSION_REPUTATION",
        "VALUE_DIMENSION_FEEDBACK"]


# --------------------------------------------------------------------------- strategies
grid = st.integers(-64, 64).map(float)


@st.composite
def signal_specs(draw, name):
    spec = {"name": name}
    transform = draw(st.sampled_from(["TRANSFORM_UNSPECIFIED", "TRANSFORM_IDENTITY", "TRANSFORM_LOG1P", "TRANSFORM_CLIP"]))
    if transform != "TRANSFORM_UNSPECIFIED":
        spec["transform"] = transform
    if transform == "TRANSFORM_CLIP":
        lo, hi = sorted(draw(st.lists(grid, min_size=2, max_size=2, unique=True)))
        which = draw(st.sampled_from(["both", "min", "max"]))
        if which in ("both", "min"):
            spec["clip_min"] = lo
        if which in ("both", "max"):
            spec["clip_max"] = hi
    norm = draw(st.sampled_from(["NORMALIZATION_MIN_MAX", "NORMALIZATION_Z_SCORE", "NORMALIZATION_PERCENTILE",
                                 "NORMALIZATION_BANDS", "NORMALIZATION_UNSPECIFIED"]))
    if norm != "NORMALIZATION_UNSPECIFIED":
        spec["normalization"] = norm
    if norm == "NORMALIZATION_MIN_MAX" and draw(st.booleans()):
        lo, hi = sorted(draw(st.lists(grid, min_size=2, max_size=2, unique=True)))
        if draw(st.booleans()):
            spec["fixed_min"] = lo
        spec["fixed_max"] = hi
    if norm == "NORMALIZATION_BANDS":
        bounds = sorted(draw(st.lists(grid, min_size=1, max_size=5, unique=True)))
        spec["bands"] = [{"lower_bound": b, "score": draw(st.integers(0, 8)) / 8} for b in bounds]
    if draw(st.booleans()):
        spec["direction"] = "DIRECTION_LOWER_IS_BETTER"
    return spec


@st.composite
def models(draw):
    n_sig = draw(st.integers(1, 5))
    names = NAMES[:n_sig]
    signals = [draw(signal_specs(name)) for name in names]
    dims = []
    for dim in draw(st.lists(st.sampled_from(DIMS), min_size=1, max_size=4, unique=True)):
        used = draw(st.lists(st.sampled_from(names), min_size=1, max_size=n_sig, unique=True))
        weights = [draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])) for _ in used]
        if not any(weights):
            weights[0] = 1.0
        spec = {"dimension": dim, "weights": [{"signal": s, "weight": w} for s, w in zip(used, weights)],
                "composite_weight": draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))}
        policy = draw(st.sampled_from(["RENORMALIZE", "FIXED_VALUE", "MIN_COVERAGE", None]))
        if policy:
            spec["missing_policy"] = "MISSING_POLICY_" + policy
        if policy == "FIXED_VALUE":
            spec["missing_value"] = draw(st.sampled_from([0.0, 0.25, 1.0]))
        if policy == "MIN_COVERAGE":
            spec["min_coverage"] = draw(st.sampled_from([0.25, 0.5, 1.0]))
        dims.append(spec)
    if not any(d["composite_weight"] for d in dims):
        dims[0]["composite_weight"] = 1.0
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, 100).map(float), min_size=0, max_size=3, unique=True)), reverse=True)
        tiers = [{"tier_id": f"t{i}", "min_composite": c} for i, c in enumerate(cuts)]
    else:
        shares = draw(st.lists(st.sampled_from([1.0, 5.0, 10.0, 25.0, 50.0]), min_size=1, max_size=3))
        while sum(shares) > 100:
            shares.pop()
        tiers = [{"tier_id": f"t{i}", "population_percent": p} for i, p in enumerate(shares)]
    tiers.append({"tier_id": "floor"})
    return se.ValueModel.from_dict({"model_id": "hyp", "signals": signals, "dimensions": dims, "tiers": tiers,
                                    "hysteresis_points": draw(st.sampled_from([0.0, 1.0, 2.5]))})


@st.composite
def matrices(draw, n_cols):
    """Values on a grid (integers times a power of two), so that sums are exact in any order, with NaN."""
    n = draw(st.integers(0, 40))
    scale = 2.0 ** draw(st.integers(-6, 6))
    values = draw(st.lists(st.integers(-2000, 2000), min_size=n * n_cols, max_size=n * n_cols))
    X = np.array(values, dtype=np.float64).reshape(n, n_cols) * scale
    mask = draw(st.lists(st.booleans(), min_size=n * n_cols, max_size=n * n_cols))
    if mask:
        X[np.array(mask).reshape(n, n_cols) & (np.arange(n * n_cols).reshape(n, n_cols) % 3 == 0)] = np.nan
    if n and draw(st.booleans()):
        X[:, draw(st.integers(0, n_cols - 1))] = X[0, 0] if not math.isnan(X[0, 0]) else 1.0  # a constant column
    if n > 2 and draw(st.booleans()):
        X[draw(st.integers(0, n - 1))] = np.nan  # a row of all NaN
    if n > 3 and draw(st.booleans()):
        X[1] = X[0]  # duplicate rows: tied composites
    return X


@st.composite
def cases(draw):
    model = draw(models())
    X = draw(matrices(len(model.signals)))
    prev = None
    if draw(st.booleans()):
        prev = np.array(draw(st.lists(st.integers(-1, len(model.tiers) - 1), min_size=X.shape[0],
                                      max_size=X.shape[0])), dtype=np.int32)
    return model, X, prev


# --------------------------------------------------------------------------- comparisons
def assert_agrees(model, X, prev=None, fitted=None):
    fitted = fitted or se.fit(model, X)
    got = se.score(fitted, X, previous_tiers=prev, with_rank=True)
    ref_fit = R.fit_reference(model, X)
    want = R.score_reference(ref_fit, X, previous_tiers=prev, with_rank=True)
    np.testing.assert_allclose(got.dimensions, want.dimensions, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.composite, want.composite, rtol=RTOL, atol=ATOL)
    # Cut-offs, tiers and ranks are exact functions of the composites: check them on the kernel's own composites.
    np.testing.assert_array_equal(got.tier_thresholds, R.thresholds_reference(model, got.composite))
    np.testing.assert_array_equal(got.tier, R.tiers_reference(got.composite, got.tier_thresholds, prev,
                                                              model.hysteresis_points))
    rank, pct = R.rank_reference(got.composite)
    np.testing.assert_array_equal(got.rank, rank)
    np.testing.assert_array_equal(got.percentile, pct)
    # and end to end, wherever no composite sits within rounding of a cut-off
    near = np.zeros(X.shape[0], dtype=bool)
    for cut in got.tier_thresholds:
        for edge in (cut, cut - model.hysteresis_points, cut + model.hysteresis_points):
            near |= np.abs(got.composite - edge) <= 1e-9 * max(1.0, abs(edge))
    if not model.tiers_by_share:
        np.testing.assert_array_equal(got.tier[~near], want.tier[~near])
    return got, want


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_kernels_agree_with_reference(case):
    model, X, prev = case
    assert_agrees(model, X, prev)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_fitted_statistics_agree_with_reference(case):
    model, X, _ = case
    fitted = se.fit(model, X)
    ref = R.fit_reference(model, X)
    stats = fitted.signal_statistics()
    for j, s in enumerate(model.signals):
        row = stats[s.name]
        assert row["count"] == ref.count[j]
        if "mean" in row and ref.count[j]:
            np.testing.assert_allclose([row["mean"], row["std"]], [ref.mean[j], ref.std[j]], rtol=1e-12, atol=1e-300)
        if "min" in row and ref.count[j]:
            np.testing.assert_allclose([row["min"], row["max"]], [ref.lo[j], ref.hi[j]], rtol=1e-15)
        if "distinct" in row:
            assert row["distinct"] == np.unique(ref.sorted_values[j]).size


# --------------------------------------------------------------------------- edge cases
def default_data(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.lognormal(2.0, 1.5, size=(n, 17))
    X[:, 7] = rng.integers(1, 21, n)
    X[:, 11] = rng.integers(-100, 101, n)
    X[:, 12] = rng.poisson(4.0, n)
    X[rng.random((n, 17)) < 0.08] = np.nan
    return X


def test_no_rows():
    model = se.default_model()
    fitted = se.fit(model, np.empty((0, 17)))
    result = se.score(fitted, np.empty((0, 17)), previous_tiers=np.empty(0, dtype=np.int32), with_rank=True)
    assert result.dimensions.shape == (0, 4) and result.composite.shape == (0,) and result.tier.shape == (0,)
    assert result.rank.shape == (0,) and np.all(np.isinf(result.tier_thresholds))
    # statistics of an empty population: every normalisation is degenerate (0.5)
    one = se.score(fitted, np.ones((1, 17)))
    assert np.all(np.isfinite(one.composite))


def test_one_row_and_a_row_of_all_nan():
    model = se.default_model()
    X = default_data(3)
    X[1] = np.nan
    got, _ = assert_agrees(model, X)
    assert np.all(np.isnan(got.dimensions[1, :3]))
    # the feedback dimension counts missing signals as 0 (FIXED_VALUE), so the composite is 0, not missing
    assert got.dimensions[1, 3] == 0.0 and got.composite[1] == 0.0
    assert got.tier[1] == len(model.tiers) - 1 and got.rank[1] == 3
    single, _ = assert_agrees(model, X[:1])
    assert single.rank[0] == 1 and single.percentile[0] == 50.0


def test_constant_column_scores_one_half():
    model = se.ValueModel.from_dict({
        "model_id": "c", "signals": [{"name": "a"}, {"name": "b", "normalization": "NORMALIZATION_Z_SCORE"},
                                     {"name": "c", "normalization": "NORMALIZATION_PERCENTILE"}],
        "dimensions": [{"dimension": "VALUE_DIMENSION_FEEDBACK", "composite_weight": 1.0,
                        "weights": [{"signal": s, "weight": 1.0} for s in "abc"]}],
        "tiers": [{"tier_id": "only"}]})
    X = np.full((6, 3), 4.25)
    X[2] = np.nan  # a row of all NaN: no dimension, no composite
    got, _ = assert_agrees(model, X)
    valid = np.arange(6) != 2
    assert np.all(got.composite[valid] == 50.0) and np.isnan(got.composite[2]) and np.all(got.tier == 0)
    assert got.rank.tolist() == [1, 2, 6, 3, 4, 5]
    assert np.all(got.percentile[valid] == 50.0) and np.isnan(got.percentile[2])


def test_huge_and_tiny_values():
    model = se.ValueModel.from_dict({
        "model_id": "h", "signals": [{"name": "a"}, {"name": "b", "normalization": "NORMALIZATION_Z_SCORE"},
                                     {"name": "c", "transform": "TRANSFORM_LOG1P"},
                                     {"name": "d", "normalization": "NORMALIZATION_PERCENTILE"}],
        "dimensions": [{"dimension": "VALUE_DIMENSION_FEEDBACK", "composite_weight": 1.0,
                        "weights": [{"signal": s, "weight": 1.0} for s in "abcd"]}],
        "tiers": [{"tier_id": "top", "population_percent": 10.0}, {"tier_id": "rest"}]})
    big = np.finfo(np.float64).max
    columns = [
        [-big, big, 0.0, big / 2, -big / 3, 1e-310],  # the min-max span overflows
        [1e300, -1e300, 3e299, 1e-300, 0.0, 5e-324],  # z-score: the variance would overflow unscaled
        [big, 1e-300, 0.0, 1e300, 5e-324, 1.0],
        [1e-320, 2e-320, 1e-320, -1e-320, 0.0, 3e-320],  # subnormal ties
    ]
    X = np.array(columns).T.copy()
    got, _ = assert_agrees(model, X)
    assert np.all(np.isfinite(got.composite)) and np.all((got.composite >= 0) & (got.composite <= 100))
    mean, std = se.fit(model, X).signal_statistics()["b"]["mean"], se.fit(model, X).signal_statistics()["b"]["std"]
    assert math.isfinite(std) and std > 1e299 and math.isfinite(mean)


def test_ties_in_ranks_and_shares():
    comp = np.array([50.0, 70.0, 50.0, np.nan, 70.0, 10.0, 50.0, np.nan])
    rank, pct = se.rank_composites(comp)
    assert rank.tolist() == [3, 1, 4, 7, 2, 6, 5, 8]
    assert pct[[1, 4]].tolist() == [100 * (4 + 1) / 6] * 2  # 4 below, 2 tied: (4 + 0.5 * 2) / 6
    assert pct[[0, 2, 6]].tolist() == [100 * (1 + 1.5) / 6] * 3
    assert pct[5] == 100 * 0.5 / 6 and np.isnan(pct[3]) and np.isnan(pct[7])
    # share cut-offs never split ties: top 1 of 6 would split the two 70s, so that tier stays empty
    assert se.population_thresholds(comp, [100 / 6]).tolist() == [np.inf]
    assert se.population_thresholds(comp, [2 * 100 / 6, 50.0, 16.7]).tolist() == [70.0, 50.0, 10.0]


@pytest.mark.parametrize("n", [PARALLEL_MIN_ROWS + 1, 20_011])
def test_parallel_kernels_agree_with_reference(n):
    model = se.default_model()
    X = default_data(n)
    X[::97] = np.nan
    prev = np.random.default_rng(1).integers(-1, len(model.tiers), n).astype(np.int32)
    got, want = assert_agrees(model, X, prev)
    serial = [se.score(se.fit(model, X), X[i:i + 1000], with_rank=False) for i in range(0, n, 1000)]
    np.testing.assert_array_equal(np.concatenate([s.composite for s in serial]), got.composite)  # bit for bit


def test_parallel_rank_with_many_ties_and_nan():
    rng = np.random.default_rng(3)
    comp = np.round(rng.normal(50, 15, 50_000).clip(0, 100), 1)
    comp[rng.random(comp.size) < 0.05] = np.nan
    comp[:2000] = 42.0
    rank, pct = se.rank_composites(comp)
    want_rank, want_pct = R.rank_reference(comp)
    np.testing.assert_array_equal(rank, want_rank)
    np.testing.assert_array_equal(pct, want_pct)
    shares = [1.0, 4.0, 15.0, 30.0]
    np.testing.assert_array_equal(se.population_thresholds(comp, shares),
                                  R.thresholds_reference(se.default_model(), comp))


def test_parallel_shares_of_a_constant_population():
    comp = np.full(10_000, 37.5)
    assert se.population_thresholds(comp, [1.0, 99.0]).tolist() == [np.inf, 37.5]
    comp[:10] = np.nan
    assert se.population_thresholds(comp, [50.0, 50.0]).tolist() == [np.inf, 37.5]


def test_reference_erfc_matches_the_c_library():
    x = np.concatenate([np.linspace(-6, 27, 20_001), [0.0, -0.0, 1e-300, 2.0, np.nextafter(2.0, 0)]])
    got = R.erfc(x)
    want = np.array([math.erfc(v) for v in x])
    np.testing.assert_allclose(got, want, rtol=3e-13, atol=1e-300)  # 1 - erf loses a few bits just below 2


def test_normal_cdf_kernel_matches_the_c_library():
    z = np.concatenate([np.linspace(-12, 12, 100_001), [0.0, -9.0, 9.0, np.nextafter(9.0, 0), -np.inf, np.inf]])
    got = np.array([K.normal_cdf(v) for v in z])
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in z])
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-15)
    assert math.isnan(K.normal_cdf(math.nan))


def test_log1p_kernel_within_an_ulp():
    x = np.concatenate([np.geomspace(1e-300, 1e300, 20_001), [0.0, 1.0, 2.0 ** 53, np.finfo(float).max]])
    got = np.array([K.log1p_nonneg(v) for v in x])
    np.testing.assert_allclose(got, np.log1p(x), rtol=4.5e-16, atol=0)


def test_cached_parallel_kernels_with_another_thread_count(tmp_path: Path):
    """cache=True with parallel=True: a process with a different NUMBA_NUM_THREADS loads the cache and agrees."""
    model = se.default_model()
    X = default_data(PARALLEL_MIN_ROWS * 2)
    want = se.score(se.fit(model, X), X, with_rank=True)
    np.save(tmp_path / "x.npy", X)
    code = (
        "import numpy as np, numba, scoring_engine as se\n"
        f"X = np.load({str(tmp_path / 'x.npy')!r})\n"
        "r = se.score(se.fit(se.default_model(), X), X, with_rank=True)\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, composite=r.composite, rank=r.rank, tier=r.tier, "
        "threads=numba.get_num_threads())\n"
    )
    threads = 1 if (os.cpu_count() or 1) > 1 else 2
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(Path(se.__file__).parent.parent))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=240)
    out = np.load(tmp_path / "out.npz")
    assert int(out["threads"]) == threads
    np.testing.assert_array_equal(out["composite"], want.composite)
    np.testing.assert_array_equal(out["rank"], want.rank)
    np.testing.assert_array_equal(out["tier"], want.tier)
