"""The engine's API: chunks, hysteresis at the band edges, +-inf rejection, bytes, one customer, explanations."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import scoring_engine as se
from scoring_engine import reference as R
from scoring_engine._config import PARALLEL_MIN_ROWS


def data(n: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.lognormal(2.0, 1.2, size=(n, 17))
    X[:, 7] = rng.integers(1, 21, n)
    X[:, 11] = rng.integers(-100, 101, n)
    X[:, 12] = rng.poisson(4.0, n)
    X[rng.random((n, 17)) < 0.1] = np.nan
    return X


@pytest.fixture(scope="module")
def model():
    return se.default_model()


@pytest.fixture(scope="module")
def X():
    return data(12_000)


@pytest.fixture(scope="module")
def fitted(model, X):
    return se.fit(model, X)


# --------------------------------------------------------------------------- chunks
def test_chunked_fit_equals_whole_fit(model, X, fitted):
    chunked = se.fit(model, (X[i:i + 2500] for i in range(0, len(X), 2500)))
    assert chunked.n_rows == fitted.n_rows == len(X)
    np.testing.assert_array_equal(chunked.pct_values, fitted.pct_values)
    np.testing.assert_array_equal(chunked.pct_counts, fitted.pct_counts)
    a, b = chunked.signal_statistics(), fitted.signal_statistics()
    for name in a:
        for key in a[name]:
            assert a[name][key] == pytest.approx(b[name][key], rel=1e-13), (name, key)


def test_chunked_score_equals_whole_score(fitted, X, model):
    prev = np.random.default_rng(2).integers(-1, 5, len(X)).astype(np.int32)
    whole = se.score(fitted, X, previous_tiers=prev, with_rank=True)
    sizes = [1, 999, 5000, 0, 4096, 1904]  # serial and parallel chunks, and an empty one
    bounds = np.cumsum([0] + sizes)
    chunks = (X[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    chunked = se.score_chunks(fitted, chunks, previous_tiers=prev, with_rank=True)
    for field in ("dimensions", "composite", "tier", "tier_thresholds", "rank", "percentile"):
        np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field), err_msg=field)
    frozen = fitted.with_tier_thresholds(whole.tier_thresholds)
    streamed = list(se.iter_score_chunks(frozen, (X[a:b] for a, b in zip(bounds[:-1], bounds[1:])),
                                         previous_tiers=(prev[a:b] for a, b in zip(bounds[:-1], bounds[1:]))))
    assert len(streamed) == len(sizes)
    np.testing.assert_array_equal(np.concatenate([s.composite for s in streamed]), whole.composite)
    np.testing.assert_array_equal(np.concatenate([s.tier for s in streamed]), whole.tier)
    np.testing.assert_array_equal(np.concatenate([s.dimensions for s in streamed]), whole.dimensions)


def test_streaming_share_tiers_needs_frozen_cutoffs(fitted, X):
    with pytest.raises(se.ScoringError, match="with_tier_thresholds"):
        next(se.iter_score_chunks(fitted, [X[:10]]))


def test_signal_names_select_and_reorder_columns(model, X, fitted):
    order = np.random.default_rng(5).permutation(17)
    names = [model.signal_names[i] for i in order] + ["unrelated"]
    shuffled = np.column_stack([X[:, order], np.full(len(X), np.inf)])  # +inf in a column the model does not read
    a = se.score(fitted, X[:500])
    b = se.score(fitted, shuffled[:500], signal_names=names)
    np.testing.assert_array_equal(a.composite, b.composite)
    assert se.fit(model, shuffled, signal_names=names).signal_statistics() == fitted.signal_statistics()
    # a model signal without a column is all missing
    dropped = [n for n in names if n != "nps"]
    c = se.score(fitted, shuffled[:500, [i for i, n in enumerate(names) if n != "nps"]], signal_names=dropped)
    d = X[:500].copy()
    d[:, model.signal_index["nps"]] = np.nan
    np.testing.assert_array_equal(c.composite, se.score(fitted, d).composite)


def test_fortran_order_and_other_dtypes(fitted, X):
    want = se.score(fitted, X[:5000]).composite
    np.testing.assert_array_equal(se.score(fitted, np.asfortranarray(X[:5000])).composite, want)
    np.testing.assert_array_equal(se.score(fitted, X[:5000:1][:, :]).composite, want)
    ints = np.arange(34, dtype=np.int32).reshape(2, 17)
    np.testing.assert_array_equal(se.score(fitted, ints).composite, se.score(fitted, ints.astype(float)).composite)


def test_bad_shapes(fitted, model):
    with pytest.raises(se.ScoringError, match="17 signals"):
        se.score(fitted, np.zeros((3, 15)))
    with pytest.raises(se.ScoringError, match="2-D"):
        se.score(fitted, np.zeros(17))
    with pytest.raises(se.ScoringError, match="names two columns"):
        se.score(fitted, np.zeros((3, 2)), signal_names=["nps", "nps"])
    with pytest.raises(se.ScoringError, match="previous_tiers"):
        se.score(fitted, np.zeros((3, 17)), previous_tiers=[0, 1])
    with pytest.raises(se.ScoringError, match=r"previous_tiers\[1\] = 5"):
        se.score(fitted, np.zeros((3, 17)), previous_tiers=[0, 5, -1])


# --------------------------------------------------------------------------- +-inf
@pytest.mark.parametrize("n", [50, PARALLEL_MIN_ROWS + 700])
def test_infinite_values_are_rejected_naming_row_and_column(model, fitted, n):
    X = data(n)
    X[n - 3, 5] = -np.inf
    X[n - 2, 2] = np.inf
    for call in (lambda: se.score(fitted, X), lambda: se.fit(model, X)):
        with pytest.raises(se.NonFiniteValueError) as info:
            call()
        assert (info.value.row, info.value.signal) == (n - 3, model.signal_names[5])
        assert f"row {n - 3}, column {model.signal_names[5]}" in str(info.value)
    with pytest.raises(se.NonFiniteValueError) as info:
        se.score_chunks(fitted, [X[:10], X[10:]])
    assert info.value.row == n - 3  # counted over all chunks
    with pytest.raises(se.NonFiniteValueError):
        R.score_reference(R.fit_reference(model, np.nan_to_num(X, posinf=0, neginf=0)), X)


def test_score_one_rejects_infinity(fitted, X):
    frozen = fitted.with_tier_thresholds(se.score(fitted, X).tier_thresholds)
    with pytest.raises(se.NonFiniteValueError, match="column nps"):
        se.score_one(frozen, {"nps": math.inf})


# --------------------------------------------------------------------------- hysteresis
def test_hysteresis_at_the_band_edges():
    thr = np.array([80.0, 60.0])  # tiers: 0 (>= 80), 1 (60..80), 2 (floor)
    band = 2.0
    comp = np.array([78.0, 77.99999999999999, 82.0, 82.00000000000001, 58.0, 57.99999999999999, 62.0,
                     62.00000000000001, 60.0, 80.0, np.nan, 90.0, 10.0])
    prev = np.array([0, 0, 1, 1, 1, 1, 2, 2, -1, -1, 0, 2, 0])
    want = [0, 1, 1, 0, 1, 2, 2, 1, 1, 0, 2, 0, 2]
    assert se.assign_tiers(comp, thr, prev, band).tolist() == want
    assert R.tiers_reference(comp, thr, prev, band).tolist() == want
    assert se.assign_tiers(comp, thr, None, band).tolist() == [1, 1, 0, 0, 2, 2, 1, 1, 1, 0, 2, 0, 2]
    big = np.tile(comp, 1000)  # the parallel kernel
    assert se.assign_tiers(big, thr, np.tile(prev, 1000), band).tolist() == want * 1000
    assert se.assign_tiers(comp, thr, prev, 0.0).tolist() == se.assign_tiers(comp, thr, None, 0.0).tolist()


def test_hysteresis_through_score():
    model = se.ValueModel.from_dict({
        "model_id": "h", "signals": [{"name": "x", "fixed_min": 0.0, "fixed_max": 1.0}],
        "dimensions": [{"dimension": "VALUE_DIMENSION_PROFITABILITY", "weights": [{"signal": "x", "weight": 1.0}],
                        "composite_weight": 1.0}],
        "tiers": [{"tier_id": "top", "min_composite": 50.0}, {"tier_id": "rest"}], "hysteresis_points": 6.25})
    X = np.array([[0.4375], [0.4296875], [0.5625], [0.5703125]])  # dyadic: composites are exact
    fitted = se.fit(model, X)
    result = se.score(fitted, X, previous_tiers=[0, 0, 1, 1])
    assert result.composite.tolist() == [43.75, 42.96875, 56.25, 57.03125]  # 50 -+ 6.25 and just beyond
    assert result.tier.tolist() == [0, 1, 1, 0]
    assert se.score(fitted, X).tier.tolist() == [1, 1, 0, 0]
    assert se.score_one(fitted, [0.4375], previous_tier=0).tier == 0
    assert se.score_one(fitted, [0.4296875], previous_tier=0).tier == 1


# --------------------------------------------------------------------------- bytes and cut-offs
def test_to_bytes_round_trip(fitted, X):
    result = se.score(fitted, X)
    for f in (fitted, fitted.with_tier_thresholds(result.tier_thresholds)):
        back = se.FittedModel.from_bytes(f.to_bytes())
        assert back.model == f.model and back.n_rows == f.n_rows
        np.testing.assert_array_equal(back.stats, f.stats)
        assert (back.tier_thresholds is None) == (f.tier_thresholds is None)
        again = se.score(back, X[:3000])
        np.testing.assert_array_equal(again.composite, se.score(f, X[:3000]).composite)
    frozen = se.FittedModel.from_bytes(fitted.with_tier_thresholds(result.tier_thresholds).to_bytes())
    np.testing.assert_array_equal(frozen.tier_thresholds, result.tier_thresholds)
    np.testing.assert_array_equal(se.score(frozen, X).tier, result.tier)  # frozen cut-offs = the run's


def test_from_bytes_rejects_garbage(fitted):
    with pytest.raises(se.ScoringError):
        se.FittedModel.from_bytes(b"not an archive")
    import io
    import zipfile
    buffer = io.BytesIO(fitted.to_bytes())
    with zipfile.ZipFile(buffer) as z:
        names = [n for n in z.namelist() if n != "stats.npy"]
        parts = {n: z.read(n) for n in names}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, b in parts.items():
            z.writestr(n, b)
    with pytest.raises(se.ScoringError):
        se.FittedModel.from_bytes(out.getvalue())


def test_with_tier_thresholds_checks(fitted):
    with pytest.raises(se.ScoringError, match="expected 4"):
        fitted.with_tier_thresholds([1.0])
    with pytest.raises(se.ScoringError, match="non-increasing"):
        fitted.with_tier_thresholds([1.0, 2.0, 3.0, 4.0])
    assert fitted.with_tier_thresholds([np.inf, 90.0, 90.0, 1.0]).tier_thresholds[0] == np.inf


# --------------------------------------------------------------------------- one customer
def test_score_one_equals_score(fitted, X, model):
    result = se.score(fitted, X[:300])
    frozen = fitted.with_tier_thresholds(result.tier_thresholds)
    prev = np.random.default_rng(9).integers(-1, 5, 300)
    batch = se.score(frozen, X[:300], previous_tiers=prev.astype(np.int32))
    for i in range(300):
        row = X[i]
        one = se.score_one(frozen, row, previous_tier=int(prev[i]))
        mapping = {name: row[j] for j, name in enumerate(model.signal_names) if not math.isnan(row[j])}
        mapping["unrelated"] = 3.0
        by_name = se.score_one(frozen, mapping, previous_tier=int(prev[i]))
        for got in (one, by_name):
            np.testing.assert_array_equal(got.dimensions, batch.dimensions[i])
            assert got.composite == batch.composite[i] or (math.isnan(got.composite) and math.isnan(batch.composite[i]))
            assert got.tier == batch.tier[i]


def test_score_one_inputs(fitted, X):
    frozen = fitted.with_tier_thresholds(se.score(fitted, X).tier_thresholds)
    assert se.score_one(frozen, {"nps": None, "annual_revenue": 5}).composite == se.score_one(
        frozen, {"annual_revenue": 5.0}).composite
    assert math.isnan(se.score_one(frozen, {}).dimensions[0])
    with pytest.raises(se.ScoringError, match="not a number"):
        se.score_one(frozen, {"nps": "high"})
    with pytest.raises(se.ScoringError, match="17 values"):
        se.score_one(frozen, [1.0, 2.0])
    with pytest.raises(se.ScoringError, match="population shares"):
        se.score_one(fitted, X[0])
    with pytest.raises(se.ScoringError, match="previous_tier 7"):
        se.score_one(frozen, X[0], previous_tier=7)


def test_explain_adds_up(fitted, X, model):
    frozen = fitted.with_tier_thresholds(se.score(fitted, X).tier_thresholds)
    for i in range(40):
        row = X[i].copy()
        if i % 7 == 0:
            row[:5] = np.nan  # profitability below its minimum coverage
        one = se.score_one(frozen, row)
        ex = se.explain(frozen, row)
        assert ex.tier == one.tier and ex.tier_id == model.tier_ids[one.tier]
        if math.isnan(one.composite):
            continue
        assert ex.composite == one.composite
        assert sum(d.composite_points for d in ex.dimensions) == pytest.approx(one.composite, abs=1e-9)
        assert sum(s.composite_points for s in ex.signals) == pytest.approx(one.composite, abs=1e-9)
        for d, dim in enumerate(ex.dimensions):
            points = sum(s.dimension_points for s in ex.signals if s.dimension == dim.dimension)
            if math.isnan(dim.score):
                assert points == 0 and dim.composite_points == 0
            else:
                assert points == pytest.approx(dim.score, abs=1e-9)
        as_dict = ex.to_dict()
        assert len(as_dict["signals"]) == sum(len(d.weights) for d in model.dimensions)
    imputed = se.explain(frozen, {"annual_revenue": 1e6})
    feedback = [s for s in imputed.signals if s.dimension == "VALUE_DIMENSION_FEEDBACK"]
    assert all(s.imputed and s.normalized == 0.0 for s in feedback)


# --------------------------------------------------------------------------- threads
def test_concurrent_calls_from_threads(fitted, X):
    want = se.score(fitted, X, with_rank=True)
    frozen = fitted.with_tier_thresholds(want.tier_thresholds)
    errors: list[BaseException] = []

    def work(k):
        try:
            for _ in range(3):
                got = se.score(fitted, X, with_rank=True)
                np.testing.assert_array_equal(got.rank, want.rank)
                assert se.score_one(frozen, X[k]).composite == want.composite[k] or math.isnan(want.composite[k])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_warm_up_reports_seconds():
    assert 0 <= se.warm_up() < 120


def _compiled_signatures() -> int:
    from numba.core.registry import CPUDispatcher

    from scoring_engine import _kernels
    return sum(len(kernel.signatures) for kernel in vars(_kernels).values() if isinstance(kernel, CPUDispatcher))


def test_after_warm_up_a_batch_from_the_wire_compiles_nothing():
    """A columnar chunk arrives as a read-only np.frombuffer array: Numba types it apart from a writable one,
    so a kernel warm_up left out would compile (seconds) inside the first such request."""
    se.warm_up()
    before = _compiled_signatures()
    model = se.default_model()
    rng = np.random.default_rng(3)
    for n in (5, PARALLEL_MIN_ROWS + 10):
        population = rng.random((n, len(model.signals)))
        fitted = se.fit(model, population)
        frozen = fitted.with_tier_thresholds(se.score(fitted, population).tier_thresholds)
        names = [s.name for s in model.signals[:3]]
        chunk = np.frombuffer(rng.random((n, 3)).tobytes(), "<f8").reshape(n, 3)
        assert not chunk.flags.writeable
        se.score(frozen, chunk, None, False, names)
        se.score(frozen, np.frombuffer(population.tobytes(), "<f8").reshape(population.shape))
    assert _compiled_signatures() == before
