"""Predicted lifetime value: BG/NBD and Gamma-Gamma fitted by maximum likelihood, per-customer predictions.

From four numbers per customer, in one time unit (days, weeks, months: the caller's choice):

* ``frequency`` x: repeat purchases (whole number >= 0; the first purchase is not counted);
* ``recency`` t_x: time of the last repeat purchase since the first purchase (0 when x = 0);
* ``age`` T: time since the first purchase (T >= t_x, T > 0);
* ``spend`` m: mean spend per repeat purchase (> 0 when x > 0; ignored, may be NaN, when x = 0).

Models (Fader, Hardie and Lee): BG/NBD ("Counting Your Customers the Easy Way", 2005), parameters r,
alpha (purchase rate ~ Gamma(r, alpha) while alive) and a, b (drop-out probability after each purchase ~
Beta(a, b)); Gamma-Gamma ("RFM and CLV", 2005), parameters p, q, gamma (spend per purchase ~ Gamma(p, nu),
nu ~ Gamma(q, gamma)), fitted on the customers with x > 0.

Fit: the log-likelihood and its analytic gradient are Numba kernels (``_clv_kernels``), parallel over
customers; SciPy's L-BFGS-B minimises the mean negative log-likelihood over the logarithms of the
parameters (so they stay positive). ``Convergence`` reports the optimiser's iterations, the final
log-likelihood (summed over customers) and the infinity norm of the optimised gradient (per customer,
with respect to the log-parameters). ``standard_errors=True`` adds standard errors: the square roots of
the diagonal of the inverse Hessian of the negative log-likelihood in the natural parameters, the
Hessian taken by central differences of the analytic gradient (step 1e-5 relative).

Predictions (:func:`predict`): probability alive, expected purchases over the horizon, expected spend
per purchase (Gamma-Gamma's conditional mean; the population mean p gamma / (q - 1) for x = 0) and CLV.
CLV is discretised as ``lifetimes`` does: the horizon is ``steps`` steps of ``step`` time units (e.g. 12
steps of 30 days), the purchases expected in step k are E[Y(k step)] - E[Y((k-1) step)], and step k's
spend is discounted by (1 + discount_rate)^k, i.e. as if paid at the end of its step. Cash flows are
booked and discounted per period (a month) in practice, a monthly rate is what finance states, and the
figures stay comparable with ``lifetimes``; a finer step changes a 12-month CLV by well under the
discount of one step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _clv_kernels as CK
from ._config import PARALLEL_LOCK, PARALLEL_MIN_ROWS
from .engine import ScoringError

__all__ = [
    "BGNBD_PARAMETERS", "GAMMA_GAMMA_PARAMETERS", "Convergence", "DegeneratePopulationError", "LifetimeValueFit",
    "LifetimeValuePrediction", "ModelFit", "PurchaseDataError", "PurchaseSummary", "bgnbd_log_likelihood",
    "check_purchases", "fit", "fit_bgnbd", "fit_gamma_gamma", "gamma_gamma_log_likelihood", "horizon", "predict",
    "simulate", "warm_up",
]

BGNBD_PARAMETERS = ("r", "alpha", "a", "b")
GAMMA_GAMMA_PARAMETERS = ("p", "q", "gamma")
FIELDS = ("frequency", "recency", "age", "spend")
# L-BFGS-B on the mean negative log-likelihood (order 1 per customer): stop when the projected gradient
# with respect to the log-parameters is below GTOL or the relative decrease below FTOL.
GTOL = 1e-8
FTOL = 1e-12
CONVERGED_GRADIENT = 1e-6  # an optimiser stop (e.g. a failed line search at rounding level) with a smaller gradient
MAX_ITERATIONS = 500
HESSIAN_STEP = 1e-5
LOG_BOUND = 30.0  # log-parameters stay within +-LOG_BOUND so that exp() stays finite
TABLE_MIN_CUSTOMERS = 128  # customers sharing a frequency above which predict interpolates (see _clv_kernels)


class PurchaseDataError(ScoringError):
    """Purchase summaries the models cannot use. ``row`` is the customer's index, ``field`` one of
    frequency, recency, age or spend; ``reason`` an UPPER_SNAKE code for services' error details."""

    def __init__(self, row: int, field_name: str, value: float, message: str, reason: str):
        self.row, self.field, self.value, self.reason = row, field_name, value, reason
        super().__init__(f"row {row}, {field_name} = {value!r}: {message}")


class DegeneratePopulationError(ScoringError):
    """A population the model cannot be fitted on (no customer, or no repeat purchase at all)."""


# --------------------------------------------------------------------------- input
@dataclass(frozen=True)
class PurchaseSummary:
    """Checked float64 arrays, one value per customer (see the module docstring)."""

    frequency: np.ndarray
    recency: np.ndarray
    age: np.ndarray
    spend: np.ndarray | None = None

    def __len__(self) -> int:
        return self.frequency.shape[0]


def _array(name: str, values: Any, n: int | None) -> np.ndarray:
    a = np.ascontiguousarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ScoringError(f"{name}: expected a one-dimensional array, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ScoringError(f"{name}: expected {n} values (one per customer), got {a.shape[0]}")
    return a


def _first(mask: np.ndarray) -> int:
    rows = np.flatnonzero(mask)
    return int(rows[0]) if rows.size else -1


_CHECKS = {  # CK.CHECK_*: (field, message, reason)
    CK.CHECK_NON_FINITE_X: ("frequency", "must be a finite number", "NON_FINITE_VALUE"),
    CK.CHECK_NON_FINITE_TX: ("recency", "must be a finite number", "NON_FINITE_VALUE"),
    CK.CHECK_NON_FINITE_T: ("age", "must be a finite number", "NON_FINITE_VALUE"),
    CK.CHECK_NEGATIVE_X: ("frequency", "a count of repeat purchases cannot be negative", "NEGATIVE_COUNT"),
    CK.CHECK_FRACTIONAL_X: ("frequency", "a count of repeat purchases must be a whole number", "NOT_A_COUNT"),
    CK.CHECK_NEGATIVE_TX: ("recency", "the time of the last purchase cannot be negative", "NEGATIVE_TIME"),
    CK.CHECK_AGE: ("age", "the time since the first purchase must be positive", "NEGATIVE_TIME"),
    CK.CHECK_RECENCY_BEYOND_AGE: ("recency", "the last purchase cannot be later than the time since the first "
                                  "(recency beyond age)", "RECENCY_BEYOND_AGE"),
    CK.CHECK_NO_RECENCY: ("recency", "a customer with repeat purchases made the last one after time 0",
                          "RECENCY_WITHOUT_PURCHASE"),
    CK.CHECK_RECENCY_WITHOUT_PURCHASE: ("recency", "a customer without repeat purchases has recency 0",
                                        "RECENCY_WITHOUT_PURCHASE"),
    CK.CHECK_NON_FINITE_SPEND: ("spend", "must be a finite number", "NON_FINITE_VALUE"),
    CK.CHECK_NO_SPEND: ("spend", "a customer with repeat purchases needs a positive mean spend", "MISSING_SPEND"),
}


def check_purchases(frequency: Any, recency: Any, age: Any, spend: Any = None) -> PurchaseSummary:
    """Validates the four arrays; raises PurchaseDataError naming the first bad row and field."""
    x = _array("frequency", frequency, None)
    n = x.shape[0]
    tx, T = _array("recency", recency, n), _array("age", age, n)
    m = None if spend is None else _array("spend", spend, n)

    row, check = CK.first_bad_row(x, tx, T, x if m is None else m, m is not None)
    if row >= 0:
        name, message, reason = _CHECKS[check]
        value = {"frequency": x, "recency": tx, "age": T, "spend": m}[name][row]
        raise PurchaseDataError(row, name, float(value), message, reason)
    return PurchaseSummary(x, tx, T, m)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Convergence:
    """How the optimiser ended: ``log_likelihood`` summed over the fitted customers; ``gradient_norm`` the
    infinity norm of the gradient of the mean log-likelihood with respect to the log-parameters."""

    converged: bool
    iterations: int
    evaluations: int
    log_likelihood: float
    gradient_norm: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"converged": self.converged, "iterations": self.iterations, "evaluations": self.evaluations,
                "log_likelihood": self.log_likelihood, "gradient_norm": self.gradient_norm, "message": self.message}


@dataclass(frozen=True)
class ModelFit:
    """Fitted parameters (by name), their standard errors when asked for, the convergence, and the number
    of customers the fit used."""

    params: dict[str, float]
    convergence: Convergence
    n_customers: int
    standard_errors: dict[str, float] | None = None

    def vector(self) -> np.ndarray:
        return np.array(list(self.params.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"params": dict(self.params), "standard_errors": self.standard_errors,
                "n_customers": self.n_customers, "convergence": self.convergence.to_dict()}


@dataclass(frozen=True)
class LifetimeValueFit:
    """Both models, fitted on one population."""

    bgnbd: ModelFit
    gamma_gamma: ModelFit

    def to_dict(self) -> dict[str, Any]:
        return {"bgnbd": self.bgnbd.to_dict(), "gamma_gamma": self.gamma_gamma.to_dict()}


@dataclass(frozen=True)
class LifetimeValuePrediction:
    """Per customer: probability alive now, expected purchases over the horizon, expected spend per
    purchase and discounted lifetime value over the horizon."""

    p_alive: np.ndarray
    expected_purchases: np.ndarray
    expected_spend: np.ndarray
    clv: np.ndarray


# --------------------------------------------------------------------------- likelihoods
def _distinct(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct values, their counts, each customer's index into them) of whole numbers >= 0."""
    n = x.shape[0]
    top = float(x.max()) if n else 0.0
    if top <= 4 * n + 65536:  # counting is ~20x faster than sorting; frequencies are small numbers
        counts = np.zeros(int(top) + 1, dtype=np.int64)
        CK.count_values(x, counts)
        values = np.flatnonzero(counts)
        lookup = np.zeros(counts.shape[0], dtype=np.int64)
        lookup[values] = np.arange(values.shape[0])
        code = np.empty(n, dtype=np.int64)
        CK.value_codes(x, lookup, code)
        return values.astype(np.float64), counts[values].astype(np.float64), code
    values, code, counts = np.unique(x, return_inverse=True, return_counts=True)
    return values, counts.astype(np.float64), code.astype(np.int64)


def _blocks(n: int, width: int) -> np.ndarray:
    return np.empty(((n + CK.BLOCK - 1) // CK.BLOCK, width))


class _BGNBDProblem:
    """The BG/NBD log-likelihood of one population, for repeated evaluation by the optimiser."""

    def __init__(self, data: PurchaseSummary):
        self.n = len(data)
        self.mean_x, self.mean_age = float(np.mean(data.frequency)), float(np.mean(data.age))
        self.xs, self.counts, _ = _distinct(data.frequency)
        # Customers with and without repeat purchases in separate arrays: two loops without a branch.
        repeat = data.frequency > 0
        self.x, self.tx, self.age = (np.ascontiguousarray(a[repeat]) for a in (data.frequency, data.recency, data.age))
        self.age0 = np.ascontiguousarray(data.age[~repeat])
        self.code = np.searchsorted(self.xs, self.x)  # index of each repeat customer's x among the distinct xs
        self.log_ratio, self.inv_b = np.empty(self.xs.shape[0]), np.empty(self.xs.shape[0])
        self.out, self.out0 = _blocks(self.x.shape[0], CK.N_BG), _blocks(self.age0.shape[0], 2)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Log-likelihood and its gradient in the natural parameters (r, alpha, a, b)."""
        r, alpha, a, b = (float(v) for v in theta)
        ll, g_r, g_alpha, g_a, g_b = CK.bgnbd_tables(self.xs, self.counts, r, alpha, a, b, self.log_ratio,
                                                     self.inv_b)
        args = (self.x, self.code, self.tx, self.age, self.age0, r, alpha, self.log_ratio, self.inv_b, self.out,
                self.out0)
        if self.n >= PARALLEL_MIN_ROWS:
            with PARALLEL_LOCK:
                CK.bgnbd_parallel(*args)
        else:
            CK.bgnbd_serial(*args)
        s = self.out.sum(axis=0)  # blocks added in order: independent of the thread count
        s_log, s_inv = self.out0.sum(axis=0)
        return (ll + s[0] - r * s_log,
                np.array([g_r + s[1] - s_log, g_alpha + s[2] - r * s_inv, g_a + s[3] / a, g_b + s[4]]))

    def start(self) -> np.ndarray:
        """A start the optimiser leaves quickly: mean rate matched for r = 1, a = 1, b = 3."""
        rate = max(self.mean_x, 1e-3) / max(self.mean_age, 1e-12)
        return np.array([1.0, 1.0 / rate, 1.0, 3.0])


class _GammaGammaProblem:
    """The Gamma-Gamma log-likelihood of the customers with repeat purchases."""

    def __init__(self, data: PurchaseSummary):
        repeat = data.frequency > 0
        self.x = np.ascontiguousarray(data.frequency[repeat])
        m = data.spend[repeat]
        self.total = self.x * m
        self.xs, self.counts, _ = _distinct(self.x)
        self.n = self.x.shape[0]
        log_m, log_x = np.log(m), np.log(self.x)
        # constant sums of the log-likelihood: sum (px - 1) ln m + px ln x = p (A + B) - C
        self.sum_x_log_mx = float(np.sum(self.x * (log_m + log_x)))
        self.sum_log_m = float(np.sum(log_m))
        self.mean_spend = float(np.mean(m)) if self.n else math.nan
        self.out = _blocks(self.n, CK.N_GG)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        p, q, gamma = (float(v) for v in theta)
        ll, g_p, g_q, g_gamma = CK.gamma_gamma_tables(self.xs, self.counts, p, q, gamma)
        if self.n >= PARALLEL_MIN_ROWS:
            with PARALLEL_LOCK:
                CK.gamma_gamma_parallel(self.x, self.total, gamma, self.out)
        else:
            CK.gamma_gamma_serial(self.x, self.total, gamma, self.out)
        s_l, s_xl, s_inv, s_xinv = self.out.sum(axis=0)
        ll += p * self.sum_x_log_mx - self.sum_log_m - p * s_xl - q * s_l
        return ll, np.array([g_p + self.sum_x_log_mx - s_xl, g_q - s_l, g_gamma - p * s_xinv - q * s_inv])

    def start(self) -> np.ndarray:
        """p = 1, q = 2, gamma matching the mean spend (p gamma / (q - 1) = mean)."""
        return np.array([1.0, 2.0, max(self.mean_spend, 1e-12)])


def bgnbd_log_likelihood(params: Mapping[str, float] | Any, data: PurchaseSummary) -> tuple[float, np.ndarray]:
    """BG/NBD log-likelihood summed over customers and its gradient in (r, alpha, a, b)."""
    return _BGNBDProblem(data)(_params(params, BGNBD_PARAMETERS))


def gamma_gamma_log_likelihood(params: Mapping[str, float] | Any, data: PurchaseSummary) -> tuple[float, np.ndarray]:
    """Gamma-Gamma log-likelihood summed over the customers with x > 0 and its gradient in (p, q, gamma)."""
    return _GammaGammaProblem(data)(_params(params, GAMMA_GAMMA_PARAMETERS))


def _params(params: Mapping[str, float] | Any, names: tuple[str, ...]) -> np.ndarray:
    if isinstance(params, ModelFit):
        params = params.params
    if isinstance(params, Mapping):
        return np.array([float(params[k]) for k in names])
    return np.asarray(params, dtype=np.float64)


# --------------------------------------------------------------------------- fit
def _maximise(problem, names: tuple[str, ...], start: np.ndarray | None, standard_errors: bool) -> ModelFit:
    from scipy.optimize import minimize

    n = problem.n

    def objective(log_theta):
        theta = np.exp(log_theta)
        ll, grad = problem(theta)
        if not math.isfinite(ll):
            return math.inf, np.zeros_like(theta)
        return -ll / n, -(grad * theta) / n  # chain rule: d/d(ln t) = t d/dt

    x0 = np.log(problem.start() if start is None else np.asarray(start, dtype=np.float64))
    # Bounds on the log-parameters keep exp() finite; an optimum at a bound means a degenerate population.
    result = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=[(-LOG_BOUND, LOG_BOUND)] * len(names),
                      options={"maxiter": MAX_ITERATIONS, "gtol": GTOL, "ftol": FTOL, "maxcor": 20})
    theta = np.exp(result.x)
    ll, grad = problem(theta)
    gradient_norm = float(np.max(np.abs(grad * theta)) / n)
    converged = math.isfinite(ll) and (bool(result.success) or gradient_norm <= CONVERGED_GRADIENT)
    message = str(result.message)
    at_bound = [name for name, v in zip(names, result.x) if abs(v) >= LOG_BOUND * 0.999]
    if at_bound:  # the likelihood keeps rising toward 0 or infinity: the data do not identify the parameter
        converged = False
        message = f"{', '.join(at_bound)} reached the bound exp(+-{LOG_BOUND:g}): the population does not identify it"
    convergence = Convergence(converged, int(result.nit), int(result.nfev), float(ll), gradient_norm, message)
    errors = _standard_errors(problem, theta, names) if standard_errors else None
    return ModelFit(dict(zip(names, map(float, theta))), convergence, n, errors)


def _standard_errors(problem, theta: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """sqrt(diag(H^-1)), H the Hessian of the negative log-likelihood by central differences of the
    analytic gradient; NaN where H is not positive definite (a flat or boundary optimum)."""
    k = theta.shape[0]
    H = np.empty((k, k))
    for j in range(k):
        h = HESSIAN_STEP * theta[j]
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        H[:, j] = -(problem(up)[1] - problem(down)[1]) / (2 * h)
    H = 0.5 * (H + H.T)
    try:
        np.linalg.cholesky(H)
        se = np.sqrt(np.diag(np.linalg.inv(H)))
    except np.linalg.LinAlgError:
        se = np.full(k, math.nan)
    return dict(zip(names, map(float, se)))


def fit_bgnbd(data: PurchaseSummary, *, standard_errors: bool = False, start: Any = None) -> ModelFit:
    """Maximum-likelihood BG/NBD parameters (r, alpha, a, b) of checked purchase summaries."""
    if not np.any(data.frequency > 0):
        raise DegeneratePopulationError("no customer has a repeat purchase: the BG/NBD model cannot be fitted "
                                        f"({len(data)} customers)")
    return _maximise(_BGNBDProblem(data), BGNBD_PARAMETERS, None if start is None else _params(start, BGNBD_PARAMETERS),
                     standard_errors)


def fit_gamma_gamma(data: PurchaseSummary, *, standard_errors: bool = False, start: Any = None) -> ModelFit:
    """Maximum-likelihood Gamma-Gamma parameters (p, q, gamma) over the customers with x > 0."""
    if data.spend is None:
        raise ScoringError("spend: the Gamma-Gamma model needs the mean spend per repeat purchase")
    problem = _GammaGammaProblem(data)
    if problem.n == 0:
        raise DegeneratePopulationError("no customer has a repeat purchase: the Gamma-Gamma model cannot be fitted")
    return _maximise(problem, GAMMA_GAMMA_PARAMETERS,
                     None if start is None else _params(start, GAMMA_GAMMA_PARAMETERS), standard_errors)


def fit(frequency: Any, recency: Any, age: Any, spend: Any, *, standard_errors: bool = False) -> LifetimeValueFit:
    """Checks the four arrays and fits BG/NBD and Gamma-Gamma on them."""
    data = check_purchases(frequency, recency, age, spend)
    return LifetimeValueFit(fit_bgnbd(data, standard_errors=standard_errors),
                            fit_gamma_gamma(data, standard_errors=standard_errors))


# --------------------------------------------------------------------------- predictions
def horizon(steps: int, step: float, discount_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, weights): step ends k step, k = 1..steps, and the weights (1+d)^-k - (1+d)^-(k+1) (the last
    one (1+d)^-steps) that turn cumulative expected purchases into the discounted sum of the differences."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ScoringError(f"steps: expected a whole number >= 1, got {steps!r}")
    if not (math.isfinite(step) and step > 0):
        raise ScoringError(f"step: expected a positive time, got {step!r}")
    if not (math.isfinite(discount_rate) and discount_rate > -1):
        raise ScoringError(f"discount_rate: expected a rate above -1 per step, got {discount_rate!r}")
    k = np.arange(1, steps + 1, dtype=np.float64)
    discount = (1.0 + discount_rate) ** -k
    weights = discount - np.append(discount[1:], 0.0)
    return k * step, weights


def predict(fitted: LifetimeValueFit | tuple[Any, Any], frequency: Any, recency: Any, age: Any, spend: Any = None, *,
            steps: int = 12, step: float = 1.0, discount_rate: float = 0.01) -> LifetimeValuePrediction:
    """Per-customer predictions over ``steps`` x ``step`` time units (see the module docstring)."""
    if isinstance(fitted, LifetimeValueFit):
        bg, gg = fitted.bgnbd, fitted.gamma_gamma
    else:
        bg, gg = fitted
    data = check_purchases(frequency, recency, age, spend)
    n = len(data)
    spend_arr = data.spend if data.spend is not None else np.full(n, math.nan)
    bg_vec = _params(bg, BGNBD_PARAMETERS)
    gg_vec = _params(gg, GAMMA_GAMMA_PARAMETERS) if gg is not None else np.full(3, math.nan)
    times, weights = horizon(steps, float(step), float(discount_rate))
    xs, counts, code = _distinct(data.frequency)
    lo, hi = np.full(xs.shape[0], np.inf), np.full(xs.shape[0], -np.inf)
    CK.age_ranges(code, data.age, lo, hi)
    lo, hi = np.log(bg_vec[1] + lo), np.log(bg_vec[1] + hi)  # the range of ln(alpha + T) per frequency
    # A table costs 17 to ~250 series evaluations: worth it for frequencies shared by many customers.
    use_table = (counts >= TABLE_MIN_CUSTOMERS) & (hi > lo)
    degree = np.zeros(xs.shape[0], dtype=np.int64)
    coef = np.zeros((xs.shape[0], 2, CK.CHEB_MAX + 1))
    out = np.empty((n, 4))
    tables = (xs, lo, hi, use_table, bg_vec, times, weights, degree, coef)
    args = (data.frequency, code, data.recency, data.age, spend_arr, bg_vec, gg_vec, times, weights, lo, hi, degree,
            coef, out)
    if n >= PARALLEL_MIN_ROWS:
        with PARALLEL_LOCK:
            CK.prediction_tables_parallel(*tables)
            CK.predict_parallel(*args)
    elif n:
        CK.prediction_tables_serial(*tables)
        CK.predict_serial(*args)
    return LifetimeValuePrediction(out[:, 0], out[:, 1], out[:, 2], out[:, 3])


# --------------------------------------------------------------------------- simulation
def simulate(n: int, bgnbd: Mapping[str, float], gamma_gamma: Mapping[str, float] | None = None, *,
             age_min: float = 1.0, age_max: float = 78.0, seed: int = 0) -> PurchaseSummary:
    """Purchase summaries drawn from the models: ages uniform on [age_min, age_max]; per customer a rate
    lambda ~ Gamma(r, alpha), a drop-out probability p ~ Beta(a, b); purchases form a Poisson(lambda)
    process until the customer drops out after a repeat purchase (a shifted geometric count); spend per
    purchase ~ Gamma(p, nu) with nu ~ Gamma(q, gamma)."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = _params(bgnbd, BGNBD_PARAMETERS)
    T = rng.uniform(age_min, age_max, n)
    rate = rng.gamma(r, 1.0 / alpha, n)
    drop = rng.beta(a, b, n)
    arrivals = rng.poisson(rate * T)  # purchases in (0, T] had the customer stayed alive
    lifetime = rng.geometric(drop)  # repeat purchases before dropping out (>= 1)
    x = np.minimum(arrivals, lifetime)
    # The x-th of `arrivals` uniform arrival times on (0, T]: T x Beta(x, arrivals - x + 1).
    tx = np.zeros(n)
    repeat = x > 0
    tx[repeat] = T[repeat] * rng.beta(x[repeat], arrivals[repeat] - x[repeat] + 1)
    spend = None
    if gamma_gamma is not None:
        p, q, gamma = _params(gamma_gamma, GAMMA_GAMMA_PARAMETERS)
        nu = rng.gamma(q, 1.0 / gamma, n)
        spend = np.full(n, np.nan)
        spend[repeat] = rng.gamma(p * x[repeat], 1.0 / nu[repeat]) / x[repeat]
    return check_purchases(x.astype(np.float64), tx, T, spend)


def warm_up() -> float:
    """Compiles (or loads from Numba's cache) the serial and parallel kernels; returns the seconds it took."""
    import time

    start = time.perf_counter()
    bg, gg = {"r": 0.5, "alpha": 5.0, "a": 0.8, "b": 2.5}, {"p": 5.0, "q": 3.0, "gamma": 10.0}
    for n in (64, 4 * PARALLEL_MIN_ROWS):
        # Each kernel at fixed parameters: what a fit and a prediction run, without the optimiser's iterations
        # (servers call this at start-up; the first fit also imports SciPy's optimiser).
        data = simulate(n, bg, gg)
        bgnbd_log_likelihood(bg, data)
        gamma_gamma_log_likelihood(gg, data)
        predict((bg, gg), data.frequency, data.recency, data.age, data.spend)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- inside a value model
MIN_POPULATION = 10  # customers with usable purchase signals below which a run does not fit


def usable_rows(frequency: np.ndarray, recency: np.ndarray, age: np.ndarray, spend: np.ndarray) -> np.ndarray:
    """Customers whose four values pass :func:`check_purchases` (spend only matters with repeat purchases);
    NaN anywhere else (a signal not recorded) makes the row unusable."""
    x, tx, T, m = frequency, recency, age, spend
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(x) & np.isfinite(tx) & np.isfinite(T) & (x >= 0) & (x == np.floor(x)) & (tx >= 0) \
            & (T > 0) & (tx <= T)
        repeat_ok = (x > 0) & (tx > 0) & np.isfinite(m) & (m > 0)
        return ok & (((x == 0) & (tx == 0)) | repeat_ok)


@dataclass(frozen=True)
class PopulationFit:
    """A scoring run's lifetime-value fit: the models (None when nothing could be fitted), why derived signals
    are missing for the run ("" when all are derived), the customers with all their purchase signals and those
    of them whose values the models cannot use (excluded, their derived signals missing).

    A converged BG/NBD fit derives p_alive and expected_purchases; predicted_ltv also needs a converged
    Gamma-Gamma fit."""

    fit: LifetimeValueFit | None
    missing_reason: str
    customers: int
    excluded: int

    @property
    def usable(self) -> bool:
        """Whether the BG/NBD fit derives p_alive and expected_purchases."""
        return self.fit is not None and self.fit.bgnbd.convergence.converged

    @property
    def values_usable(self) -> bool:
        """Whether predicted_ltv is derived too (the Gamma-Gamma fit converged)."""
        return self.usable and self.fit.gamma_gamma.convergence.converged

    def to_dict(self) -> dict[str, Any]:
        return {"fit": None if self.fit is None else self.fit.to_dict(), "missing_reason": self.missing_reason,
                "customers": self.customers, "excluded": self.excluded}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PopulationFit:
        def model(d):
            return ModelFit(dict(d["params"]), Convergence(**d["convergence"]), int(d["n_customers"]),
                            d.get("standard_errors"))
        raw = data.get("fit")
        fitted = None if raw is None else LifetimeValueFit(model(raw["bgnbd"]), model(raw["gamma_gamma"]))
        return cls(fitted, str(data.get("missing_reason", "")), int(data.get("customers", 0)),
                   int(data.get("excluded", 0)))


def fit_population(frequency: Any, recency: Any, age: Any, spend: Any) -> PopulationFit:
    """Fits both models on the usable customers of a population whose signals may be missing (NaN) or unusable.

    Never raises for the data: a population too small, without repeat purchases or on which an optimiser
    does not converge gives a PopulationFit with its ``missing_reason``.
    """
    x, tx, T, m = (np.asarray(a, dtype=np.float64) for a in (frequency, recency, age, spend))
    present = ~(np.isnan(x) | np.isnan(tx) | np.isnan(T))
    usable = usable_rows(x, tx, T, m)
    customers, n = int(present.sum()), int(usable.sum())
    excluded = customers - n
    if n < MIN_POPULATION:
        return PopulationFit(None, f"too few customers with usable purchase signals: {n} (at least "
                                   f"{MIN_POPULATION} are needed)", customers, excluded)
    data = check_purchases(x[usable], tx[usable], T[usable], np.where(x[usable] > 0, m[usable], np.nan))
    try:
        fitted = LifetimeValueFit(fit_bgnbd(data, standard_errors=True), fit_gamma_gamma(data, standard_errors=True))
    except DegeneratePopulationError as error:
        return PopulationFit(None, str(error), customers, excluded)
    reason = ""
    if not fitted.bgnbd.convergence.converged:
        reason = f"the BG/NBD fit did not converge ({fitted.bgnbd.convergence.message}): no signal is derived"
    elif not fitted.gamma_gamma.convergence.converged:
        reason = (f"the Gamma-Gamma fit did not converge ({fitted.gamma_gamma.convergence.message}): predicted_ltv "
                  "is not derived (p_alive and expected_purchases are)")
    return PopulationFit(fitted, reason, customers, excluded)


def derive(population: PopulationFit, spec, frequency: Any, recency: Any, age: Any, spend: Any) -> np.ndarray:
    """(n, 3) predicted_ltv, p_alive and expected_purchases (``model.DERIVED_SIGNALS``) of each customer under a
    run's fit and a model's ``LifetimeValueSpec``; NaN where the signals are unusable or the fit is (predicted_ltv
    alone when only the Gamma-Gamma fit is)."""
    x, tx, T, m = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (frequency, recency, age, spend))
    out = np.full((x.shape[0], 3), np.nan)
    if not population.usable:
        return out
    rows = np.flatnonzero(usable_rows(x, tx, T, m))
    if rows.size:
        xs = x[rows]
        models = (population.fit.bgnbd, population.fit.gamma_gamma if population.values_usable else None)
        prediction = predict(models, xs, tx[rows], T[rows], np.where(xs > 0, m[rows], np.nan),
                             steps=spec.effective_horizon_months, step=spec.units_per_month,
                             discount_rate=spec.effective_discount_rate)
        out[rows, 0], out[rows, 1], out[rows, 2] = prediction.clv, prediction.p_alive, prediction.expected_purchases
    return out


def _input_columns(model, matrix: np.ndarray, names: list[str]) -> list[np.ndarray]:
    where = {name: i for i, name in enumerate(names)}
    blank = np.full(matrix.shape[0], np.nan)
    return [matrix[:, where[s]] if s in where else blank for s in model.lifetime_value.input_signals]


def fit_matrix(model, matrix: np.ndarray, names: list[str]) -> PopulationFit:
    """:func:`fit_population` over the block's input columns of a (customers x names) matrix."""
    return fit_population(*_input_columns(model, matrix, names))


def with_derived(model, population: PopulationFit, matrix: np.ndarray, names: list[str], *, in_place: bool = False
                 ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The matrix with the derived signals the model reads filled in where derived (a column is added for each
    one absent; a customer whose value is not derived keeps the column's own, e.g. a predicted_ltv recorded in
    the registry), its column names, and the (n, 3) derived values. ``in_place`` writes into ``matrix`` itself
    when it has every column needed (a run's own export), sparing a copy of the whole matrix."""
    from .model import DERIVED_SIGNALS

    derived = derive(population, model.lifetime_value, *_input_columns(model, matrix, names))
    names = list(names)
    extra = [s for s in DERIVED_SIGNALS if s not in names and s in model.signal_index]
    if extra:
        out = np.concatenate([matrix, np.full((matrix.shape[0], len(extra)), np.nan)], axis=1)
    else:
        out = matrix if in_place and matrix.flags.writeable else np.array(matrix, dtype=np.float64, copy=True)
    names += extra
    for k, signal in enumerate(DERIVED_SIGNALS):
        if signal in names:
            column = derived[:, k]
            has = ~np.isnan(column)
            out[has, names.index(signal)] = column[has]
    return out, names, derived


def with_derived_values(model, population: PopulationFit, values: Mapping[str, float]
                        ) -> tuple[dict[str, float], dict[str, float]]:
    """One customer's signals with the derived ones filled in (as :func:`with_derived`), and the derived ones."""
    from .model import DERIVED_SIGNALS

    inputs = model.lifetime_value.input_signals
    row = np.array([[values.get(s, math.nan) for s in inputs]], dtype=np.float64)
    derived = derive(population, model.lifetime_value, *row.T)[0]
    found = {s: float(v) for s, v in zip(DERIVED_SIGNALS, derived) if not math.isnan(v)}
    return {**values, **found}, found
