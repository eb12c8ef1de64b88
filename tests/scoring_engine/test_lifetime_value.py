"""BG/NBD and Gamma-Gamma: kernels against the SciPy reference, recovery of known parameters, the fit
reaching the maximum, edge cases and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import scoring_engine
from scoring_engine import lifetime_value as lv
from scoring_engine import reference as R
from scoring_engine._config import PARALLEL_MIN_ROWS

RTOL = 1e-9
# CDNOW-like parameters (weeks), as published by Fader, Hardie and Lee.
BG = {"r": 0.24, "alpha": 4.41, "a": 0.79, "b": 2.43}
GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}
MONTH = 4.345  # weeks


def random_population(rng, n):
    """Mixed purchase summaries in weeks: many without repeat purchases, ages from a day to two years."""
    T = rng.uniform(1 / 7, 104, n)
    x = rng.poisson(rng.gamma(0.5, 4.0, n)).astype(np.float64)
    x[rng.random(n) < 0.01] = 300.0  # frequent buyers: the reference takes the Euler-transformed 2F1 for them
    tx = np.where(x > 0, T * rng.uniform(0.01, 1.0, n), 0.0)
    m = np.where(x > 0, rng.lognormal(3.0, 0.8, n), np.nan)
    return x, tx, T, m


def random_params(rng):
    a = rng.choice([rng.uniform(0.2, 0.9), rng.uniform(1.1, 4.0)])  # the reference divides by a - 1
    return (np.array([rng.uniform(0.1, 3.0), rng.uniform(0.5, 30.0), a, rng.uniform(0.3, 6.0)]),
            np.array([rng.uniform(0.5, 8.0), rng.uniform(1.5, 6.0), rng.uniform(1.0, 40.0)]))


# --------------------------------------------------------------------------- kernels against the reference
@pytest.mark.parametrize("n", [500, 3 * PARALLEL_MIN_ROWS])  # serial and parallel kernels
def test_log_likelihoods_and_gradients_match_the_reference(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        x, tx, T, m = random_population(rng, n)
        data = lv.check_purchases(x, tx, T, m)
        bg, gg = random_params(rng)
        ll, grad = lv.bgnbd_log_likelihood(bg, data)
        ref_ll, ref_grad = R.bgnbd_log_likelihood_reference(bg, x, tx, T)
        # Sums of n terms of order 1: compare relative to the sum, and to n where a component nearly cancels.
        np.testing.assert_allclose(ll, ref_ll, rtol=RTOL)
        np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=RTOL * n)
        ll, grad = lv.gamma_gamma_log_likelihood(gg, data)
        ref_ll, ref_grad = R.gamma_gamma_log_likelihood_reference(gg, x, m)
        np.testing.assert_allclose(ll, ref_ll, rtol=RTOL)
        np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=RTOL * n)


@pytest.mark.parametrize("n", [500, 3 * PARALLEL_MIN_ROWS])  # per-customer series; interpolated tables
def test_predictions_match_the_reference(n):
    rng = np.random.default_rng(7 + n)
    for steps, step, rate in ((12, MONTH, 0.01), (6, 30.0 / 7, 0.0), (3, 1.0, 0.2)):
        x, tx, T, m = random_population(rng, n)
        bg, gg = random_params(rng)
        got = lv.predict((bg, gg), x, tx, T, m, steps=steps, step=step, discount_rate=rate)
        np.testing.assert_allclose(got.p_alive, R.p_alive_reference(bg, x, tx, T), rtol=RTOL)
        np.testing.assert_allclose(got.expected_purchases,
                                   R.expected_purchases_reference(bg, steps * step, x, tx, T), rtol=RTOL)
        np.testing.assert_allclose(got.expected_spend, R.expected_spend_reference(gg, x, m), rtol=RTOL)
        np.testing.assert_allclose(got.clv, R.clv_reference(bg, gg, x, tx, T, m, steps, step, rate), rtol=RTOL)


def test_sums_do_not_depend_on_the_thread_count():
    """Blocks of fixed size, added in order: the same bits with one thread as with all of them."""
    import numba

    rng = np.random.default_rng(11)
    x, tx, T, m = random_population(rng, 5 * PARALLEL_MIN_ROWS)
    data = lv.check_purchases(x, tx, T, m)
    bg, gg = random_params(rng)
    threads = numba.get_num_threads()
    results = []
    for n_threads in sorted({1, threads}):
        numba.set_num_threads(n_threads)
        try:
            results.append((lv.bgnbd_log_likelihood(bg, data), lv.gamma_gamma_log_likelihood(gg, data)))
        finally:
            numba.set_num_threads(threads)
    for (ll, grad), (ll2, grad2) in zip(results[0], results[-1]):
        assert ll == ll2 and np.array_equal(grad, grad2)


def test_the_transformed_series_is_continuous_through_a_equal_to_one():
    """At a = 1 the textbook formula is 0/0; the kernel's form is exact there and continuous around it."""
    rng = np.random.default_rng(3)
    x, tx, T, m = random_population(rng, 300)
    values = [lv.predict(({"r": 0.5, "alpha": 6.0, "a": a, "b": 2.0}, GG), x, tx, T, m, step=MONTH).clv
              for a in (1 - 1e-7, 1.0, 1 + 1e-7)]
    assert np.all(np.isfinite(values[1]))
    np.testing.assert_allclose(values[1], values[0], rtol=1e-6)
    np.testing.assert_allclose(values[1], values[2], rtol=1e-6)


# --------------------------------------------------------------------------- the fit
@pytest.fixture(scope="module")
def simulated():
    """100,000 customers drawn from BG and GG (ages 1 to 78 weeks) and the fit with standard errors."""
    data = lv.simulate(100_000, BG, GG, seed=2024)
    return data, lv.fit(data.frequency, data.recency, data.age, data.spend, standard_errors=True)


def test_parameters_are_recovered_within_their_standard_errors(simulated):
    data, fitted = simulated
    for model, truth in ((fitted.bgnbd, BG), (fitted.gamma_gamma, GG)):
        assert model.convergence.converged, model.convergence
        assert model.convergence.gradient_norm < 1e-6
        for name, value in truth.items():
            se = model.standard_errors[name]
            assert 0 < se < 0.2 * value, (name, se)
            # Three standard errors: each of the seven parameters is then outside with probability 0.3 %.
            assert abs(model.params[name] - value) <= 3 * se, (name, model.params[name], value, se)


def test_the_fit_reaches_the_maximum(simulated):
    """SciPy's BFGS on the reference log-likelihood from several starts finds no higher value."""
    data = lv.simulate(20_000, BG, GG, seed=99)
    fitted = lv.fit(data.frequency, data.recency, data.age, data.spend)
    x, tx, T, m = data.frequency, data.recency, data.age, data.spend
    cases = (
        (fitted.bgnbd, R.bgnbd_log_likelihood_reference, [(1, 1, 1, 1), (0.1, 10, 0.5, 5), (3, 2, 2, 0.5)], (x, tx, T)),
        (fitted.gamma_gamma, R.gamma_gamma_log_likelihood_reference, [(1, 1, 1), (10, 5, 20), (2, 2, 50)], (x, m)),
    )
    for model, log_likelihood, starts, args in cases:
        params, best = R.lifetime_fit_reference(log_likelihood, starts, *args)
        ours, _ = log_likelihood(model.vector(), *args)
        assert best <= ours + 1e-9 * abs(ours), (model.params, params, ours, best)
        np.testing.assert_allclose(model.vector(), params, rtol=1e-4)


# --------------------------------------------------------------------------- edge cases
def test_customers_without_repeat_purchases_get_the_population_spend_and_full_p_alive(simulated):
    data, fitted = simulated
    got = lv.predict(fitted, [0.0, 0.0], [0.0, 0.0], [1.0, 50.0], [math.nan, 123.0], step=MONTH)
    p, q, gamma = fitted.gamma_gamma.vector()
    np.testing.assert_array_equal(got.p_alive, [1.0, 1.0])
    np.testing.assert_allclose(got.expected_spend, [p * gamma / (q - 1)] * 2, rtol=1e-15)
    assert got.expected_purchases[0] > got.expected_purchases[1] > 0  # a new customer buys more than a lapsed one


def test_no_repeat_purchase_at_all_is_a_degenerate_population():
    with pytest.raises(lv.DegeneratePopulationError, match="no customer has a repeat purchase"):
        lv.fit(np.zeros(50), np.zeros(50), np.full(50, 10.0), np.full(50, np.nan))


def test_all_customers_alike_do_not_crash_the_fit():
    n = 5000
    fitted = lv.fit(np.full(n, 3.0), np.full(n, 20.0), np.full(n, 40.0), np.full(n, 25.0))
    for model in (fitted.bgnbd, fitted.gamma_gamma):
        c = model.convergence
        assert math.isfinite(c.log_likelihood) and math.isfinite(c.gradient_norm)
    # One spend for all: the spend variance tends to 0 (q, gamma to infinity); no maximum, and the fit says so.
    assert not fitted.gamma_gamma.convergence.converged
    got = lv.predict(fitted, np.full(n, 3.0), np.full(n, 20.0), np.full(n, 40.0), np.full(n, 25.0))
    assert np.all(np.isfinite(got.p_alive)) and np.all(got.clv == got.clv[0])


def test_huge_frequencies_and_ages_of_a_day():
    """x up to 100,000 (the direct 2F1 series overflows) and customers one day old, in weeks."""
    bg, gg = np.array([0.8, 3.0, 0.6, 2.5]), np.array([4.0, 3.0, 20.0])
    x = np.array([0.0, 1.0, 2.0, 500.0, 20_000.0, 100_000.0, 1.0, 0.0])
    T = np.array([1 / 7, 1 / 7, 1 / 7, 80.0, 100.0, 104.0, 1 / 7 + 1e-9, 1 / 7])
    tx = np.array([0.0, 1 / 14, 1 / 7, 79.0, 99.0, 50.0, 1 / 7, 0.0])
    m = np.array([np.nan, 10.0, 12.0, 30.0, 5.0, 1.0, 3.0, np.nan])
    got = lv.predict((bg, gg), x, tx, T, m, step=MONTH)
    for v in (got.p_alive, got.expected_purchases, got.expected_spend, got.clv):
        assert np.all(np.isfinite(v))
    np.testing.assert_allclose(got.expected_purchases, R.expected_purchases_reference(bg, 12 * MONTH, x, tx, T),
                               rtol=RTOL)
    np.testing.assert_allclose(got.clv, R.clv_reference(bg, gg, x, tx, T, m, 12, MONTH), rtol=RTOL)
    assert got.p_alive[5] < 1e-300  # 100,000 purchases, none in the last 54 weeks
    ll, grad = lv.bgnbd_log_likelihood(bg, lv.check_purchases(x, tx, T, m))
    ref_ll, ref_grad = R.bgnbd_log_likelihood_reference(bg, x, tx, T)
    np.testing.assert_allclose(ll, ref_ll, rtol=RTOL)
    np.testing.assert_allclose(grad, ref_grad, rtol=RTOL)


def test_warm_up_compiles_and_predicts():
    assert lv.warm_up() >= 0


def test_simulated_summaries_are_consistent():
    data = lv.simulate(10_000, BG, GG, seed=5)
    assert np.all(data.recency <= data.age) and np.all((data.frequency > 0) == (data.recency > 0))
    assert np.all(data.spend[data.frequency > 0] > 0)
    assert 0.5 < np.mean(data.frequency == 0) < 0.7  # the CDNOW-like share of one-time buyers


# --------------------------------------------------------------------------- bad input
GOOD = {"frequency": [0.0, 2.0, 1.0], "recency": [0.0, 5.0, 3.0], "age": [10.0, 10.0, 10.0],
        "spend": [np.nan, 20.0, 15.0]}


@pytest.mark.parametrize("field,row,value,reason", [
    ("frequency", 1, -1.0, "NEGATIVE_COUNT"),
    ("frequency", 2, 1.5, "NOT_A_COUNT"),
    ("frequency", 0, np.nan, "NON_FINITE_VALUE"),
    ("recency", 1, 10.5, "RECENCY_BEYOND_AGE"),
    ("recency", 2, -1.0, "NEGATIVE_TIME"),
    ("recency", 0, 1.0, "RECENCY_WITHOUT_PURCHASE"),
    ("recency", 1, 0.0, "RECENCY_WITHOUT_PURCHASE"),
    ("age", 2, np.inf, "NON_FINITE_VALUE"),
    ("age", 0, 0.0, "NEGATIVE_TIME"),
    ("spend", 1, np.nan, "MISSING_SPEND"),
    ("spend", 2, 0.0, "MISSING_SPEND"),
    ("spend", 1, np.inf, "NON_FINITE_VALUE"),
])
def test_bad_input_names_the_row_and_the_field(field, row, value, reason):
    columns = {k: np.array(v) for k, v in GOOD.items()}
    columns[field][row] = value
    for call in (lambda: lv.fit(*columns.values()), lambda: lv.predict((BG, GG), *columns.values())):
        with pytest.raises(lv.PurchaseDataError) as caught:
            call()
        assert (caught.value.row, caught.value.field, caught.value.reason) == (row, field, reason)
        assert f"row {row}, {field}" in str(caught.value)


def test_bad_shapes_and_horizons_are_refused():
    with pytest.raises(lv.ScoringError, match="recency: expected 3 values"):
        lv.check_purchases([0, 1, 2], [0, 1], [3, 3, 3])
    for kwargs in ({"steps": 0}, {"step": -1.0}, {"discount_rate": math.nan}):
        with pytest.raises(lv.ScoringError):
            lv.predict((BG, GG), *GOOD.values(), **kwargs)


# --------------------------------------------------------------------------- inside a value model
def test_a_population_fit_skips_unusable_rows_and_says_why_signals_are_missing():
    spec = scoring_engine.default_model().lifetime_value
    data = lv.simulate(2000, BG, GG, seed=2)
    x, tx, T, m = data.frequency.copy(), data.recency.copy(), data.age.copy(), data.spend.copy()
    x[0], tx[1], T[2] = np.nan, T[1] + 1, 0.0  # a signal not recorded, recency beyond age, age 0
    population = lv.fit_population(x, tx, T, m)
    assert population.missing_reason == "" and population.customers == 1999 and population.excluded == 2
    derived = lv.derive(population, spec, x, tx, T, m)
    assert np.isnan(derived[:3]).all() and not np.isnan(derived[3:]).any()
    expected = lv.predict(population.fit, x[3:], tx[3:], T[3:], m[3:], steps=12, step=30.0, discount_rate=0.01)
    np.testing.assert_allclose(derived[3:, 0], expected.clv, rtol=1e-12)

    # Every repeat buyer spending the same: Gamma-Gamma is not identified; BG/NBD still derives its two signals.
    same = np.where(x > 0, 10.0, np.nan)
    partial = lv.fit_population(x, tx, T, same)
    assert partial.usable and not partial.values_usable and "Gamma-Gamma" in partial.missing_reason
    derived = lv.derive(partial, spec, x, tx, T, same)
    assert np.isnan(derived[:, 0]).all() and not np.isnan(derived[3:, 1:]).any()

    few = lv.fit_population(x[:12], tx[:12], T[:12], m[:12])
    assert few.fit is None and "too few" in few.missing_reason and np.isnan(lv.derive(few, spec, x, tx, T, m)).all()
    assert lv.PopulationFit.from_dict(population.to_dict()) == population


def test_explain_scores_the_derived_signals_and_lists_them():
    model = scoring_engine.default_model()
    matrix = np.random.default_rng(0).lognormal(size=(64, len(model.signals)))
    fitted = scoring_engine.fit(model, matrix)
    frozen = fitted.with_tier_thresholds(scoring_engine.score(fitted, matrix).tier_thresholds)
    data = lv.simulate(500, BG, GG, seed=4)
    population = lv.fit_population(data.frequency, data.recency, data.age, data.spend)
    buyer = {"purchase_frequency": float(data.frequency[1]), "purchase_recency": float(data.recency[1]),
             "purchase_age": float(data.age[1]), "purchase_spend": float(data.spend[1]), "annual_revenue": 1e6}
    explanation = scoring_engine.explain(frozen, buyer, lifetime_value=population)
    expected = lv.predict(population.fit, data.frequency[1:2], data.recency[1:2], data.age[1:2], data.spend[1:2],
                          steps=12, step=30.0, discount_rate=0.01)
    assert explanation.derived_signals["predicted_ltv"] == pytest.approx(expected.clv[0], rel=1e-12)
    ltv = next(s for s in explanation.signals if s.signal == "predicted_ltv")
    assert ltv.value == explanation.derived_signals["predicted_ltv"] and ltv.dimension_points > 0
    plain = scoring_engine.explain(frozen, buyer)  # without the fit nothing is derived: the signal is missing
    assert math.isnan(next(s for s in plain.signals if s.signal == "predicted_ltv").value)
    assert plain.derived_signals == {}
