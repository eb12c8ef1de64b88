"""Plain NumPy reference implementation of the scoring maths: the tests' oracle, the benchmark's baseline.

It is written independently of the kernels, column by column with whole-array
NumPy operations, and follows the definitions stated in the package
docstring. It is slow on purpose only where NumPy has no primitive (the normal
CDF below is a vectorised series / continued fraction, since NumPy has no erf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engine import NonFiniteValueError, ScoreResult, ScoringError
from .model import MissingPolicy, Normalization, Transform, ValueModel, enum_json_name

SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- normal CDF
def _erfc_nonneg(x: np.ndarray) -> np.ndarray:
    """erfc for x >= 0: the all-positive series of erf below 2, a continued fraction from 2 on.

    Agrees with the C library's erfc to ~1e-13 relative (checked in the tests).
    """
    out = np.empty_like(x)
    small = x < 2.0
    xs = x[small]
    if xs.size:
        # erf(x) = 2x/sqrt(pi) exp(-x^2) sum_n (2x^2)^n / (1*3*...*(2n+1))
        x2 = 2.0 * xs * xs
        term = np.ones_like(xs)
        total = np.ones_like(xs)
        for n in range(1, 45):
            term = term * x2 / (2 * n + 1)
            total = total + term
        out[small] = 1.0 - 2.0 * xs / math.sqrt(math.pi) * np.exp(-xs * xs) * total
    xl = x[~small]
    if xl.size:
        # erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
        f = xl.copy()
        for k in range(60, 0, -1):
            f = xl + (k / 2.0) / f
        out[~small] = np.exp(-xl * xl) / math.sqrt(math.pi) / f
    return out


def erfc(x: np.ndarray) -> np.ndarray:
    """Complementary error function of a float64 array (NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    ok = ~np.isnan(x)
    xv = x[ok]
    neg = xv < 0
    val = _erfc_nonneg(np.abs(xv))
    val[neg] = 2.0 - val[neg]
    out[ok] = val
    return out


def normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * erfc(-z / SQRT2)


# --------------------------------------------------------------------------- fit
@dataclass
class ReferenceFit:
    """Per signal: fitted count, bounds (min-max), mean and std (z-score), sorted values (percentile)."""

    model: ValueModel
    count: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    sorted_values: list[np.ndarray]
    tier_thresholds: np.ndarray | None = None


def _column_map(model: ValueModel, n_cols: int, signal_names: Sequence[str] | None) -> list[int]:
    if signal_names is None:
        if n_cols != len(model.signals):
            raise ScoringError("column count does not match the model")
        return list(range(n_cols))
    names = list(signal_names)
    return [names.index(s) if s in names else -1 for s in model.signal_names]


def _columns(model: ValueModel, X: np.ndarray, signal_names) -> np.ndarray:
    """The matrix's columns in model order (all-NaN for absent ones); rejects +-inf."""
    X = np.asarray(X, dtype=np.float64)
    cols = _column_map(model, X.shape[1], signal_names)
    out = np.full((X.shape[0], len(cols)), np.nan)
    for j, c in enumerate(cols):
        if c >= 0:
            out[:, j] = X[:, c]
    bad = np.argwhere(np.isinf(out))
    if bad.size:
        row, j = bad[0]
        raise NonFiniteValueError(int(row), model.signal_names[j], float(out[row, j]))
    return out


def transform(spec, x: np.ndarray) -> np.ndarray:
    kind = spec.effective_transform
    if kind == Transform.LOG1P:
        return np.log1p(np.maximum(x, 0.0))
    if kind == Transform.CLIP:
        lo = -np.inf if spec.clip_min is None else spec.clip_min
        hi = np.inf if spec.clip_max is None else spec.clip_max
        return np.clip(x, lo, hi)
    return x.copy()


def fit_reference(model: ValueModel, matrix: np.ndarray, signal_names: Sequence[str] | None = None) -> ReferenceFit:
    X = _columns(model, matrix, signal_names)
    n_sig = len(model.signals)
    count, lo, hi = np.zeros(n_sig), np.full(n_sig, np.nan), np.full(n_sig, np.nan)
    mean, std = np.full(n_sig, np.nan), np.full(n_sig, np.nan)
    sorted_values = []
    for j, s in enumerate(model.signals):
        t = transform(s, X[:, j])
        t = t[~np.isnan(t)]
        count[j] = t.size
        if t.size:
            lo[j], hi[j] = t.min(), t.max()
            e = math.frexp(float(np.abs(t).max()))[1]
            y = np.ldexp(t, -e)
            my = y.sum() / t.size
            my += (y - my).sum() / t.size  # one refinement step: the mean to within an ulp or two
            mean[j] = math.ldexp(my, e)
            std[j] = math.ldexp(math.sqrt(((y - my) ** 2).sum() / t.size), e)
        if s.fixed_min is not None:
            lo[j] = s.fixed_min
        if s.fixed_max is not None:
            hi[j] = s.fixed_max
        sorted_values.append(np.sort(t) if s.effective_normalization == Normalization.PERCENTILE else np.zeros(0))
    return ReferenceFit(model, count, lo, hi, mean, std, sorted_values)


# --------------------------------------------------------------------------- score
def normalized_reference(fit: ReferenceFit, matrix: np.ndarray, signal_names=None) -> np.ndarray:
    """Normalised 0..1 value of each signal (direction applied), NaN where missing."""
    model = fit.model
    X = _columns(model, matrix, signal_names)
    out = np.empty_like(X)
    for j, s in enumerate(model.signals):
        t = transform(s, X[:, j])
        norm = s.effective_normalization
        if norm == Normalization.MIN_MAX:
            lo, hi = float(fit.lo[j]), float(fit.hi[j])
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                v = np.full_like(t, 0.5)
            elif math.isfinite(hi - lo):
                v = np.clip((t - lo) / (hi - lo), 0.0, 1.0)
            else:
                v = np.clip((t * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5), 0.0, 1.0)
        elif norm == Normalization.Z_SCORE:
            m, sd = fit.mean[j], fit.std[j]
            if not (fit.count[j] > 0 and fit.lo[j] != fit.hi[j] and np.isfinite(m) and np.isfinite(sd) and sd > 0):
                v = np.full_like(t, 0.5)
            else:
                v = normal_cdf((t - m) / sd)
        elif norm == Normalization.PERCENTILE:
            values = fit.sorted_values[j]
            if values.size == 0:
                v = np.full_like(t, 0.5)
            else:
                left = np.searchsorted(values, t, side="left")
                right = np.searchsorted(values, t, side="right")
                v = (left + 0.5 * (right - left)) / values.size
        else:
            v = np.zeros_like(t)
            for band in s.bands:
                v = np.where(t >= band.lower_bound, band.score, v)
        if s.lower_is_better:
            v = 1.0 - v
        v[np.isnan(t)] = np.nan
        out[:, j] = v
    return out


def score_reference(fit: ReferenceFit, matrix: np.ndarray, previous_tiers=None, with_rank: bool = False,
                    signal_names=None) -> ScoreResult:
    model = fit.model
    vals = normalized_reference(fit, matrix, signal_names)
    n = vals.shape[0]
    index = model.signal_index
    dims = np.empty((n, len(model.dimensions)))
    c_num, c_den = np.zeros(n), np.zeros(n)
    for d, dim in enumerate(model.dimensions):
        policy = dim.effective_missing_policy
        num, den, total = np.zeros(n), np.zeros(n), 0.0
        # A FIXED_VALUE dimension leaves out the signals no fitted customer carries (unless it carries none).
        absent = [w for w in dim.weights if fit.count[index[w.signal]] == 0]
        for w in dim.weights:
            if policy == MissingPolicy.FIXED_VALUE and w in absent and len(absent) < len(dim.weights):
                continue
            total += w.weight
            v = vals[:, index[w.signal]]
            present = ~np.isnan(v)
            missing_part = w.weight * dim.missing_value if policy == MissingPolicy.FIXED_VALUE else 0.0
            num = num + np.where(present, w.weight * np.where(present, v, 0.0), missing_part)
            den = den + np.where(present, w.weight, 0.0)
        if policy == MissingPolicy.FIXED_VALUE:
            s = 100.0 * (num / total)
        else:
            ok = den > 0
            if policy == MissingPolicy.MIN_COVERAGE:
                ok &= den >= dim.min_coverage * total
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.where(ok, 100.0 * (num / np.where(ok, den, 1.0)), np.nan)
        dims[:, d] = s
        present = ~np.isnan(s)
        c_num = c_num + np.where(present, dim.composite_weight * np.where(present, s, 0.0), 0.0)
        c_den = c_den + np.where(present, dim.composite_weight, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        comp = np.where(c_den > 0, np.clip(c_num / np.where(c_den > 0, c_den, 1.0), 0.0, 100.0), np.nan)
    thresholds = thresholds_reference(model, comp, fit.tier_thresholds)
    tier = tiers_reference(comp, thresholds, previous_tiers, model.hysteresis_points)
    rank = percentile = None
    if with_rank:
        rank, percentile = rank_reference(comp)
    names = tuple(enum_json_name(d.dimension) for d in model.dimensions)
    return ScoreResult(dims, comp, tier, thresholds, names, model.tier_ids, rank, percentile)


def thresholds_reference(model: ValueModel, comp: np.ndarray, frozen: np.ndarray | None = None) -> np.ndarray:
    if frozen is not None:
        return frozen
    if not model.tiers_by_share:
        return np.array([t.min_composite for t in model.tiers[:-1]], dtype=np.float64)
    desc = np.sort(comp[~np.isnan(comp)])[::-1]
    n_valid = desc.size
    out, total = [], 0.0
    for t in model.tiers[:-1]:
        total += t.population_percent
        m = min(n_valid, int(math.floor(total * n_valid / 100.0 + 1e-9)))
        if m >= n_valid:
            out.append(desc[-1] if n_valid else np.inf)
        else:
            better = desc[:m][desc[:m] > desc[m]]
            out.append(better.min() if better.size else np.inf)
    return np.array(out, dtype=np.float64)


def tiers_reference(comp: np.ndarray, thresholds: np.ndarray, previous=None, band: float = 0.0) -> np.ndarray:
    floor = thresholds.size
    raw = np.full(comp.shape, floor, dtype=np.int32)
    for k in range(floor - 1, -1, -1):
        raw = np.where(comp >= thresholds[k], k, raw)
    if previous is None:
        return raw.astype(np.int32)
    p = np.asarray(previous, dtype=np.int64)
    padded = np.concatenate(([np.inf], thresholds, [-np.inf]))  # padded[p] = upper bound, padded[p+1] = lower
    upper = padded[np.clip(p, 0, floor)] + band
    lower = padded[np.clip(p, 0, floor) + 1] - band
    keep = (p >= 0) & ~np.isnan(comp) & (comp >= lower) & (comp <= upper)
    return np.where(keep, p, raw).astype(np.int32)


def rank_reference(comp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = comp.size
    keys = np.where(np.isnan(comp), np.inf, -comp)
    order = np.argsort(keys, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    valid = np.sort(comp[~np.isnan(comp)])
    left = np.searchsorted(valid, comp, side="left")
    right = np.searchsorted(valid, comp, side="right")
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = 100.0 * (left + 0.5 * (right - left)) / valid.size
    pct[np.isnan(comp)] = np.nan
    return rank, pct


# --------------------------------------------------------------------------- lifetime value (BG/NBD, Gamma-Gamma)
# The textbook formulas of Fader, Hardie and Lee, array by array with scipy.special; independent of
# ``lifetime_value``'s kernels (no x-tables, no block sums, no Euler-transformed series, no interpolation).
def bgnbd_log_likelihood_reference(params, x, tx, T) -> tuple[float, np.ndarray]:
    """Summed BG/NBD log-likelihood and its gradient in (r, alpha, a, b)."""
    r, alpha, a, b = (float(v) for v in params)
    x, tx, T = (np.asarray(v, dtype=np.float64) for v in (x, tx, T))
    repeat = x > 0
    x1 = np.where(repeat, x, 1.0)  # keeps the unused branch finite
    with np.errstate(divide="ignore", invalid="ignore"):  # an optimiser may try alpha ~ 0
        return _bgnbd_terms(r, alpha, a, b, x, tx, T, repeat, x1)


def _bgnbd_terms(r, alpha, a, b, x, tx, T, repeat, x1):
    from scipy.special import betaln, digamma, gammaln

    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.where(repeat, np.log(a) - np.log(b + x1 - 1) - (r + x) * np.log(alpha + tx), -np.inf)
    lse = np.logaddexp(a3, a4)
    w3, w4 = np.exp(a3 - lse), np.exp(a4 - lse)
    ll = a1 + a2 + lse
    d_r = digamma(r + x) - digamma(r) + np.log(alpha) - w3 * np.log(alpha + T) - w4 * np.log(alpha + tx)
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + tx))
    d_a = digamma(a + b) - digamma(a + b + x) + w4 / a
    d_b = digamma(a + b) + digamma(b + x) - digamma(b) - digamma(a + b + x) - np.where(repeat, w4 / (b + x1 - 1), 0)
    return float(np.sum(ll)), np.array([np.sum(d_r), np.sum(d_alpha), np.sum(d_a), np.sum(d_b)])


def gamma_gamma_log_likelihood_reference(params, x, m) -> tuple[float, np.ndarray]:
    """Summed Gamma-Gamma log-likelihood over the customers with x > 0 and its gradient in (p, q, gamma)."""
    from scipy.special import digamma, gammaln

    p, q, gamma = (float(v) for v in params)
    x, m = np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64)
    x, m = x[x > 0], m[x > 0]
    px = p * x
    ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(gamma) + (px - 1) * np.log(m) + px * np.log(x)
          - (px + q) * np.log(gamma + m * x))
    d_p = x * (digamma(px + q) - digamma(px) + np.log(m) + np.log(x) - np.log(gamma + m * x))
    d_q = digamma(px + q) - digamma(q) + np.log(gamma) - np.log(gamma + m * x)
    d_gamma = q / gamma - (px + q) / (gamma + m * x)
    return float(np.sum(ll)), np.array([np.sum(d_p), np.sum(d_q), np.sum(d_gamma)])


def p_alive_reference(params, x, tx, T) -> np.ndarray:
    r, alpha, a, b = (float(v) for v in params)
    x, tx, T = (np.asarray(v, dtype=np.float64) for v in (x, tx, T))
    x1 = np.where(x > 0, x, 1.0)
    with np.errstate(over="ignore"):
        odds = (a / (b + x1 - 1)) * ((alpha + T) / (alpha + tx)) ** (r + x)
    return np.where(x > 0, 1.0 / (1.0 + odds), 1.0)


def expected_purchases_reference(params, t: float, x, tx, T) -> np.ndarray:
    """E[purchases in (T, T + t]] (Fader, Hardie and Lee 2005, eq. 10). The hypergeometric term is
    scipy's hyp2f1(r+x, b+x; a+b+x-1; z) (1-z)^(r+x); where that direct form overflows or is not finite
    (large x), the Euler-transformed (1-z)^(a-1) hyp2f1(a+b-1-r, a-1; a+b+x-1; z), which is equal."""
    from scipy.special import hyp2f1

    r, alpha, a, b = (float(v) for v in params)
    x, tx, T = (np.asarray(v, dtype=np.float64) for v in (x, tx, T))
    c = a + b + x - 1
    z = t / (alpha + T + t)
    with np.errstate(over="ignore", invalid="ignore"):
        direct = hyp2f1(r + x, b + x, c, z) * ((alpha + T) / (alpha + T + t)) ** (r + x)
    euler = hyp2f1(a + b - 1 - r, a - 1, c, z) * (1 - z) ** (a - 1)
    term = np.where(np.isfinite(direct) & (x <= DIRECT_MAX_FREQUENCY), direct, euler)
    return c / (a - 1) * (1 - term) * p_alive_reference(params, x, tx, T)


DIRECT_MAX_FREQUENCY = 50  # above, the direct hyp2f1 series sums terms near (1-z)^-(r+x) and loses digits


def expected_spend_reference(params, x, m) -> np.ndarray:
    """Gamma-Gamma's E[spend per purchase | x, m]: p (gamma + x m) / (p x + q - 1); p gamma / (q - 1) at x = 0."""
    p, q, gamma = (float(v) for v in params)
    x = np.asarray(x, dtype=np.float64)
    m = np.where(x > 0, np.asarray(m, dtype=np.float64), 0.0)
    return p * (gamma + x * m) / (p * x + q - 1)


def clv_reference(bgnbd, gamma_gamma, x, tx, T, m, steps: int = 12, step: float = 1.0,
                  discount_rate: float = 0.01) -> np.ndarray:
    """sum over k = 1..steps of (E[Y(k step)] - E[Y((k-1) step)]) x expected spend / (1 + d)^k, as lifetimes."""
    spend = expected_spend_reference(gamma_gamma, x, m)
    total = np.zeros(np.shape(x))
    previous = np.zeros(np.shape(x))
    for k in range(1, steps + 1):
        current = expected_purchases_reference(bgnbd, k * step, x, tx, T)
        total += (current - previous) * spend / (1 + discount_rate) ** k
        previous = current
    return total


def lifetime_fit_reference(log_likelihood, starts, *args) -> tuple[np.ndarray, float]:
    """The best of scipy's BFGS maximisations of log_likelihood(params, *args) over the log-parameters, one
    from each start: (params, log-likelihood)."""
    from scipy.optimize import minimize

    best, best_ll = None, -math.inf
    for start in starts:
        def objective(log_theta):
            theta = np.exp(log_theta)
            ll, grad = log_likelihood(theta, *args)
            return (-ll, -grad * theta) if math.isfinite(ll) else (math.inf, np.zeros_like(theta))

        result = minimize(objective, np.log(np.asarray(start, dtype=np.float64)), jac=True, method="BFGS",
                          options={"gtol": 1e-6, "maxiter": 2000})
        ll = -float(result.fun)
        if ll > best_ll:
            best, best_ll = np.exp(result.x), ll
    return best, best_ll


# --------------------------------------------------------------------------- adoption
def adoption_reference(plan, today: int, n_customers: int, customers, events, days, counts, user_customers=(),
                       user_events=(), user_hashes=(), user_last_days=()):
    """``scoring_engine.adoption.evaluate`` procedure by procedure and node by node with whole-array NumPy
    operations, from the definitions in ``scoring_engine/adoption.py``. Returns the same AdoptionResult."""
    from .adoption import RULE_AT_LEAST, RULE_WEIGHTED_SHARE, AdoptionResult

    customers, events, days, counts = (np.asarray(a, np.int64) for a in (customers, events, days, counts))
    user_customers, user_events, user_hashes, user_last_days = (
        np.asarray(a, np.int64) for a in (user_customers, user_events, user_hashes, user_last_days))
    n_nodes, n_procedures = plan.n_nodes, plan.n_procedures
    result = AdoptionResult(np.zeros((n_customers, n_nodes), bool), np.zeros((n_customers, n_nodes)),
                            np.full((n_customers, n_nodes), -1, np.int64), np.zeros((n_customers, n_procedures),
                                                                                  np.int64),
                            np.zeros((n_customers, n_procedures), np.int64),
                            np.zeros((n_customers, n_procedures), np.int64))
    for p, node in enumerate(plan.procedure_nodes):
        counted = np.array([p in plan.event_procedures[plan.event_ptr[e]:plan.event_ptr[e + 1]]
                            for e in range(len(plan.event_ptr) - 1)], dtype=bool)
        start, end = today - plan.windows[p] + 1, today
        valid = (events >= 0) & (events < len(counted))
        mine = valid & counted[np.clip(events, 0, max(len(counted) - 1, 0))] if len(counted) else valid & False
        np.maximum.at(result.last_day[:, node], customers[mine], days[mine])
        inside = mine & (days >= start) & (days <= end)
        np.add.at(result.counts[:, p], customers[inside], counts[inside])
        pairs = np.unique(np.stack([customers[inside], days[inside]]), axis=1)
        result.days[:, p] = np.bincount(pairs[0], minlength=n_customers)
        valid_users = (user_events >= 0) & (user_events < len(counted))
        users_mine = valid_users & (counted[np.clip(user_events, 0, max(len(counted) - 1, 0))]
                                    if len(counted) else False)
        users_mine &= (user_last_days >= start) & (user_last_days <= end)
        user_pairs = np.unique(np.stack([user_customers[users_mine], user_hashes[users_mine]]), axis=1)
        result.users[:, p] = np.bincount(user_pairs[0], minlength=n_customers)
        figures = [(result.counts[:, p], plan.min_counts[p]), (result.days[:, p], plan.min_days[p]),
                   (result.users[:, p], plan.min_users[p])]
        ratios = [np.where(value >= minimum, 1.0, value / max(minimum, 1)) for value, minimum in figures
                  if minimum > 0]
        result.achieved[:, node] = np.all([value >= minimum for value, minimum in figures], axis=0)
        result.progress[:, node] = np.sum(ratios, axis=0) / len(ratios) if ratios else 1.0
    for node in range(n_nodes - 1, -1, -1):
        kids = plan.children[plan.child_ptr[node]:plan.child_ptr[node + 1]]
        if not len(kids):
            continue
        result.last_day[:, node] = result.last_day[:, kids].max(axis=1)
        done, progress = result.achieved[:, kids], result.progress[:, kids]
        kind = plan.rule_kinds[node]
        if kind == RULE_AT_LEAST:
            k = plan.min_children[node]
            result.achieved[:, node] = done.sum(axis=1) >= k
            top = np.sort(progress, axis=1)[:, len(kids) - k:]
            result.progress[:, node] = _in_order(top) / k
        elif kind == RULE_WEIGHTED_SHARE:
            w = plan.weights[kids]
            share = _in_order(done * w) / _in_order(w[None, :])
            result.achieved[:, node] = share >= plan.min_shares[node]
            result.progress[:, node] = np.minimum(1.0, share / plan.min_shares[node])
        else:
            result.achieved[:, node] = done.all(axis=1)
            result.progress[:, node] = _in_order(progress) / len(kids)
    return result


def _in_order(values: np.ndarray) -> np.ndarray:
    """Row sums added left to right (NumPy's sum pairs them up from 8 columns on, another rounding)."""
    return np.cumsum(values, axis=1)[:, -1] if values.shape[1] else np.zeros(len(values))


# --------------------------------------------------------------------------- adoption peers
def jaccard_reference(achieved: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``scoring_engine.adoption_peers.jaccard`` from the bool matrix: |A & B| / |A | B| per row, 0 when both
    are empty."""
    achieved, target = np.asarray(achieved, bool), np.asarray(target, bool)
    both = (achieved & target[None, :]).sum(axis=1)
    either = (achieved | target[None, :]).sum(axis=1)
    return np.where(either > 0, both / np.maximum(either, 1), 0.0)


def first_achieved_reference(plan, first_day: int, today: int, n_customers: int, customers, events, days, counts,
                             user_customers=(), user_events=(), user_hashes=(), user_first_days=(),
                             user_last_days=()) -> np.ndarray:
    """``scoring_engine.adoption_history.first_achieved_days`` by replaying the days one by one through
    :func:`adoption_reference`: on day d, the rows of first_day..d, and each user as seen last on
    min(last day, d) when first seen by d."""
    customers, events, days, counts = (np.asarray(a, np.int64) for a in (customers, events, days, counts))
    user_customers, user_events, user_hashes, user_first_days, user_last_days = (
        np.asarray(a, np.int64) for a in (user_customers, user_events, user_hashes, user_first_days, user_last_days))
    first = np.full((n_customers, plan.n_nodes), -1, np.int64)
    for day in range(first_day, today + 1):
        keep = (days >= first_day) & (days <= day)
        seen = user_first_days <= day
        found = adoption_reference(plan, day, n_customers, customers[keep], events[keep], days[keep], counts[keep],
                                   user_customers[seen], user_events[seen], user_hashes[seen],
                                   np.minimum(user_last_days[seen], day))
        first[found.achieved & (first < 0)] = day
    return first
