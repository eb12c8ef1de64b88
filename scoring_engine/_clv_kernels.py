"""Numba kernels of the lifetime-value models. Private: call them through ``scoring_engine.lifetime_value``.

Per-customer arrays: ``x`` repeat purchases (whole numbers >= 0), ``tx`` recency (time of the last
repeat purchase since the first purchase; 0 when x = 0), ``age`` (T, time since the first purchase) and,
for Gamma-Gamma, ``spend`` (mean spend per repeat purchase, customers with x > 0 only).

The log-likelihoods are split into a part that depends on x alone (gamma functions, computed once per
distinct x by the ``*_tables`` kernels; a population has few distinct frequencies) and a part per
customer (a few logarithms), summed over fixed blocks of ``BLOCK`` customers. Each block writes its
own row of partial sums and the caller adds the rows in block order, so the result does not depend on
the thread count or the scheduling (per-thread sums would). Parallel kernels must be called under
``_config.PARALLEL_LOCK``; each has a serial twin over the same block function.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._config import helper_jit, parallel_jit, serial_jit

BLOCK = 8192  # customers per work item: big enough to amortise the launch, small enough to balance 2..64 threads
SERIES_TOL = 2.0 ** -53  # the hypergeometric series stops when its bounded tail is below this relative size
SERIES_MAX_TERMS = 1_000_000  # reached only for z within ~1e-5 of 1 (age + alpha ~1e-5 of the horizon)
N_BG = 5  # BG/NBD partial sums: log-likelihood, d/dr, d/dalpha, sum of w4 (d/da = sum / a), d/db
N_GG = 4  # Gamma-Gamma partial sums: sum L, sum x L, sum 1/(gamma + x m), sum x/(gamma + x m)


# --------------------------------------------------------------------------- special functions
@helper_jit
def digamma(x):
    """psi(x) for x > 0: recurrence up to x >= 10, then the asymptotic series to x^-14 (error < 1e-16)."""
    shift = 0.0
    while x < 10.0:
        shift -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    tail = f * (-1.0 / 12 + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (
        -1.0 / 132 + f * (691.0 / 32760 + f * (-1.0 / 12)))))))
    return shift + math.log(x) - 0.5 / x + tail


# --------------------------------------------------------------------------- input
CHECK_NON_FINITE_X, CHECK_NON_FINITE_TX, CHECK_NON_FINITE_T, CHECK_NEGATIVE_X, CHECK_FRACTIONAL_X, \
    CHECK_NEGATIVE_TX, CHECK_AGE, CHECK_RECENCY_BEYOND_AGE, CHECK_NO_RECENCY, CHECK_RECENCY_WITHOUT_PURCHASE, \
    CHECK_NON_FINITE_SPEND, CHECK_NO_SPEND = range(1, 13)


@serial_jit
def first_bad_row(x, tx, age, spend, has_spend):
    """(row, check) of the first customer failing a check (CHECK_*, in the order listed), or (-1, 0)."""
    for i in range(x.shape[0]):
        xi, ti, Ti = x[i], tx[i], age[i]
        if not math.isfinite(xi):
            return i, CHECK_NON_FINITE_X
        if not math.isfinite(ti):
            return i, CHECK_NON_FINITE_TX
        if not math.isfinite(Ti):
            return i, CHECK_NON_FINITE_T
        if xi < 0.0:
            return i, CHECK_NEGATIVE_X
        if xi != math.floor(xi):
            return i, CHECK_FRACTIONAL_X
        if ti < 0.0:
            return i, CHECK_NEGATIVE_TX
        if not Ti > 0.0:
            return i, CHECK_AGE
        if ti > Ti:
            return i, CHECK_RECENCY_BEYOND_AGE
        if xi > 0.0 and not ti > 0.0:
            return i, CHECK_NO_RECENCY
        if xi == 0.0 and ti != 0.0:
            return i, CHECK_RECENCY_WITHOUT_PURCHASE
        if has_spend and xi > 0.0:
            if math.isinf(spend[i]):
                return i, CHECK_NON_FINITE_SPEND
            if not spend[i] > 0.0:
                return i, CHECK_NO_SPEND
    return -1, 0


@serial_jit
def count_values(x, counts):
    """counts[v] += 1 for each whole number v in x (all < counts.shape[0])."""
    for i in range(x.shape[0]):
        counts[int(x[i])] += 1


@serial_jit
def value_codes(x, lookup, code):
    for i in range(x.shape[0]):
        code[i] = lookup[int(x[i])]


# --------------------------------------------------------------------------- BG/NBD
@serial_jit
def bgnbd_tables(xs, counts, r, alpha, a, b, log_ratio, inv_b):
    """The x-only part of the BG/NBD log-likelihood and its gradient, summed over the distinct x values
    ``xs`` (each ``counts`` times); fills per distinct x: log_ratio = ln a - ln(b + x - 1) and
    inv_b = 1 / (b + x - 1) (x > 0). Returns (ll, d/dr, d/dalpha, d/da, d/db)."""
    ll = g_r = g_a = g_b = 0.0
    n = 0.0
    lg_r, lg_b, lg_ab = math.lgamma(r), math.lgamma(b), math.lgamma(a + b)
    ps_r, ps_b, ps_ab = digamma(r), digamma(b), digamma(a + b)
    for k in range(xs.shape[0]):
        x, c = xs[k], counts[k]
        n += c
        if x > 0.0:
            log_ratio[k] = math.log(a) - math.log(b + x - 1.0)
            inv_b[k] = 1.0 / (b + x - 1.0)
            ps_abx = digamma(a + b + x)
            ll += c * (math.lgamma(r + x) - lg_r + lg_ab + math.lgamma(b + x) - lg_b - math.lgamma(a + b + x))
            g_r += c * (digamma(r + x) - ps_r)
            g_a += c * (ps_ab - ps_abx)
            g_b += c * (ps_ab + digamma(b + x) - ps_b - ps_abx)
        else:
            log_ratio[k] = 0.0
            inv_b[k] = 0.0
    log_alpha = math.log(alpha)
    return ll + n * r * log_alpha, g_r + n * log_alpha, n * r / alpha, g_a, g_b


@helper_jit
def _bgnbd_block(blk, x, code, tx, age, r, alpha, log_ratio, inv_b, out):
    """Per-customer part of the BG/NBD log-likelihood of customers with x > 0 (A3/A4 of Fader, Hardie and
    Lee 2005, combined as a log-sum-exp) and of its gradient, over one block; writes out[blk, :N_BG]."""
    ll = g_r = g_alpha = s_w4 = g_b = 0.0
    for i in range(blk * BLOCK, min((blk + 1) * BLOCK, x.shape[0])):
        k = code[i]
        rx = r + x[i]
        inv_T = 1.0 / (alpha + age[i])
        log_T = math.log(alpha + age[i])
        inv_t = 1.0 / (alpha + tx[i])
        log_t = math.log(alpha + tx[i])
        a3 = -rx * log_T
        a4 = log_ratio[k] - rx * log_t
        d = a4 - a3
        if d > 0.0:  # weights w3 + w4 = 1 of the two terms, and log(e^a3 + e^a4), without overflow
            e = math.exp(-d)
            w4 = 1.0 / (1.0 + e)
            w3 = e * w4
            ll += a4 + math.log1p(e)
        else:
            e = math.exp(d)
            w3 = 1.0 / (1.0 + e)
            w4 = e * w3
            ll += a3 + math.log1p(e)
        g_r -= w3 * log_T + w4 * log_t
        g_alpha -= rx * (w3 * inv_T + w4 * inv_t)
        s_w4 += w4
        g_b -= w4 * inv_b[k]
    out[blk, 0] = ll
    out[blk, 1] = g_r
    out[blk, 2] = g_alpha
    out[blk, 3] = s_w4
    out[blk, 4] = g_b


@helper_jit
def _bgnbd_zero_block(blk, age, alpha, out):
    """Customers with x = 0 contribute -r ln(alpha + T) (plus x-only terms): sums of ln(alpha + T) and
    1/(alpha + T). Kept apart from the others: a loop without branches, about 5x cheaper per customer."""
    s_log = s_inv = 0.0
    for i in range(blk * BLOCK, min((blk + 1) * BLOCK, age.shape[0])):
        s_log += math.log(alpha + age[i])
        s_inv += 1.0 / (alpha + age[i])
    out[blk, 0] = s_log
    out[blk, 1] = s_inv


@parallel_jit
def bgnbd_parallel(x, code, tx, age, age0, r, alpha, log_ratio, inv_b, out, out0):
    for blk in prange(out.shape[0] + out0.shape[0]):
        if blk < out.shape[0]:
            _bgnbd_block(blk, x, code, tx, age, r, alpha, log_ratio, inv_b, out)
        else:
            _bgnbd_zero_block(blk - out.shape[0], age0, alpha, out0)


@serial_jit
def bgnbd_serial(x, code, tx, age, age0, r, alpha, log_ratio, inv_b, out, out0):
    for blk in range(out.shape[0]):
        _bgnbd_block(blk, x, code, tx, age, r, alpha, log_ratio, inv_b, out)
    for blk in range(out0.shape[0]):
        _bgnbd_zero_block(blk, age0, alpha, out0)


# --------------------------------------------------------------------------- Gamma-Gamma
@serial_jit
def gamma_gamma_tables(xs, counts, p, q, gamma):
    """The x-only part of the Gamma-Gamma log-likelihood and gradient over the distinct x values (> 0):
    returns (sum lgamma(px + q) - lgamma(px) - lgamma(q) + q ln gamma, d/dp, d/dq, d/dgamma)."""
    ll = g_p = g_q = 0.0
    n = 0.0
    lg_q, ps_q = math.lgamma(q), digamma(q)
    for k in range(xs.shape[0]):
        x, c = xs[k], counts[k]
        n += c
        ps_pxq = digamma(p * x + q)
        ll += c * (math.lgamma(p * x + q) - math.lgamma(p * x) - lg_q)
        g_p += c * x * (ps_pxq - digamma(p * x))
        g_q += c * (ps_pxq - ps_q)
    log_gamma = math.log(gamma)
    return ll + n * q * log_gamma, g_p, g_q + n * log_gamma, n * q / gamma


@helper_jit
def _gamma_gamma_block(blk, x, total, gamma, out):
    """Per-customer sums of L = ln(gamma + x m) (total = x m), x L, 1/(gamma + x m), x/(gamma + x m)."""
    s_l = s_xl = s_inv = s_xinv = 0.0
    for i in range(blk * BLOCK, min((blk + 1) * BLOCK, x.shape[0])):
        g = gamma + total[i]
        lg = math.log(g)
        inv = 1.0 / g
        s_l += lg
        s_xl += x[i] * lg
        s_inv += inv
        s_xinv += x[i] * inv
    out[blk, 0] = s_l
    out[blk, 1] = s_xl
    out[blk, 2] = s_inv
    out[blk, 3] = s_xinv


@parallel_jit
def gamma_gamma_parallel(x, total, gamma, out):
    for blk in prange(out.shape[0]):
        _gamma_gamma_block(blk, x, total, gamma, out)


@serial_jit
def gamma_gamma_serial(x, total, gamma, out):
    for blk in range(out.shape[0]):
        _gamma_gamma_block(blk, x, total, gamma, out)


# --------------------------------------------------------------------------- predictions
# E[Y(t)] = P(alive) g(t), and the discounted horizon sum V = sum_h weights[h] g(times[h]). For a given x,
# g and V are analytic functions of v = ln(alpha + T) in the strip |Im v| < pi (their singularities sit
# at alpha + T = -t, i.e. Im v = pi, and alpha + T = 0, v = -inf), so on the range of v that the
# customers with that x span, a Chebyshev interpolant of modest degree reproduces them to rounding. The
# prediction kernel evaluates the series once per Chebyshev node per distinct x, then each customer with
# a short Clenshaw sum (about 15x faster than a series per customer). Frequencies held by few customers,
# or whose customers share one age, are evaluated directly.
CHEB_DEGREES = (16, 32, 64, 128)  # tried in turn until the last coefficients are negligible
CHEB_MAX = 128
CHEB_TOL = 1e-15  # the last three coefficients, relative to the largest, must be below this
CHEB_CHOP = 2.0 ** -54  # then coefficients below this relative size are dropped from the end
DIRECT = 0  # degree 0 in the table: evaluate the series per customer


@helper_jit
def horizon_sums(x, u, bg, times, weights, terms):
    """(V, g(times[-1])) for a customer with x repeat purchases and u = alpha + T, alive.

    g(t) = (a+b+x-1)/(a-1) [1 - (1-z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z)], z = t/(alpha+T+t), the expected
    purchases in (T, T+t] of a live customer. The direct series of this 2F1 overflows for large x (its
    terms grow like (1-z)^-(r+x)) and the bracket cancels near a = 1. By Euler's transformation,
    (1-z)^(r+x) 2F1(r+x, b+x; c; z) = (1-z)^(a-1) 2F1(c-r-x, a-1; c; z), c = a+b+x-1: a bounded series
    whose second parameter is a-1. Writing it 1 + (a-1) S(z) gives
    [1 - (1-z)^(a-1) F] / (a-1) = -expm1((a-1) ln(1-z)) / (a-1) - (1-z)^(a-1) S(z), exact at a = 1.
    The terms of S share their ratio across the horizons, so all of them are summed in one loop.
    """
    r, a, b = bg[0], bg[2], bg[3]
    c = a + b + x - 1.0
    e = a - 1.0
    a1 = c - r - x  # first parameter of the transformed series: a + b - 1 - r
    n_h = times.shape[0]
    z_last = times[n_h - 1] / (u + times[n_h - 1])
    for h in range(n_h):
        terms[h, 0] = times[h] / (u + times[h])  # z
        terms[h, 1] = a1 / c * terms[h, 0]  # current term s_k z^k, k = 1
        terms[h, 2] = terms[h, 1]  # S(z)
    k = 1.0
    while k < SERIES_MAX_TERMS:
        ratio = (a1 + k) * (a + k - 1.0) / ((c + k) * (k + 1.0))
        last = terms[n_h - 1, 1]
        # Later term ratios tend to z from below (a <= 2 + r + x) or from above, decreasing: z max(1, ratio)
        # bounds them, so the tail after this term is at most |last| bound / (1 - bound).
        bound = z_last * (ratio if ratio > 1.0 else 1.0)
        if last == 0.0 or (bound < 1.0 and abs(last) * bound <= SERIES_TOL * (1.0 - bound) * abs(terms[n_h - 1, 2])):
            break
        for h in range(n_h):
            terms[h, 1] *= ratio * terms[h, 0]
            terms[h, 2] += terms[h, 1]
        k += 1.0
    value = 0.0
    g = 0.0
    for h in range(n_h):
        log1mz = -math.log1p(times[h] / u)
        first = -math.expm1(e * log1mz) / e if e != 0.0 else -log1mz
        g = c * (first - math.exp(e * log1mz) * terms[h, 2])
        value += weights[h] * g
    return value, g


@helper_jit
def _clenshaw2(coef, n, s):
    """(sum_k coef[0, k] T_k(s), sum_k coef[1, k] T_k(s)), k = 0..n: two independent recurrences in one loop."""
    b1 = b2 = c1 = c2 = 0.0
    s2 = 2.0 * s
    for k in range(n, 0, -1):
        b0 = coef[0, k] + s2 * b1 - b2
        c0 = coef[1, k] + s2 * c1 - c2
        b2 = b1
        b1 = b0
        c2 = c1
        c1 = c0
    return coef[0, 0] + s * b1 - b2, coef[1, 0] + s * c1 - c2


@helper_jit
def _interpolate(x, lo, hi, bg, times, weights, terms, f, coef):
    """Chebyshev coefficients of V and g(times[-1]) over v = ln u in [lo, hi] into coef[0], coef[1]; returns
    the degree, or DIRECT when even CHEB_MAX leaves coefficients above CHEB_TOL."""
    for n in CHEB_DEGREES:
        for j in range(n + 1):  # Chebyshev-Lobatto points s_j = cos(pi j / n)
            v = 0.5 * (hi + lo) + 0.5 * (hi - lo) * math.cos(math.pi * j / n)
            f[0, j], f[1, j] = horizon_sums(x, math.exp(v), bg, times, weights, terms)
        ok = True
        for w in range(2):
            top = 0.0
            for k in range(n + 1):
                s = 0.0
                for j in range(n + 1):
                    s += (0.5 if j == 0 or j == n else 1.0) * f[w, j] * math.cos(math.pi * ((j * k) % (2 * n)) / n)
                coef[w, k] = s * (1.0 if k == 0 or k == n else 2.0) / n
                top = max(top, abs(coef[w, k]))
            tail = max(abs(coef[w, n]), abs(coef[w, n - 1]), abs(coef[w, n - 2]))
            if tail > CHEB_TOL * top:
                ok = False
        if ok:  # drop the trailing coefficients below rounding: fewer Clenshaw steps per customer
            top = 0.0
            for w in range(2):
                for k in range(n + 1):
                    top = max(top, abs(coef[w, k]))
            while n > 2 and max(abs(coef[0, n]), abs(coef[1, n])) <= CHEB_CHOP * top:
                n -= 1
            return n
    return DIRECT


@helper_jit
def _table(k, xs, lo, hi, use_table, bg, times, weights, degree, coef):
    degree[k] = DIRECT
    if use_table[k]:
        terms = np.empty((times.shape[0], 3))
        f = np.empty((2, CHEB_MAX + 1))
        degree[k] = _interpolate(xs[k], lo[k], hi[k], bg, times, weights, terms, f, coef[k])


@parallel_jit
def prediction_tables_parallel(xs, lo, hi, use_table, bg, times, weights, degree, coef):
    """Per distinct x with use_table set: the Chebyshev coefficients of V and g over [lo, hi] of ln u."""
    for k in prange(xs.shape[0]):
        _table(k, xs, lo, hi, use_table, bg, times, weights, degree, coef)


@serial_jit
def prediction_tables_serial(xs, lo, hi, use_table, bg, times, weights, degree, coef):
    for k in range(xs.shape[0]):
        _table(k, xs, lo, hi, use_table, bg, times, weights, degree, coef)


@serial_jit
def age_ranges(code, age, lo, hi):
    """Per distinct x: the smallest and largest age of its customers."""
    for i in range(code.shape[0]):
        k = code[i]
        if age[i] < lo[k]:
            lo[k] = age[i]
        if age[i] > hi[k]:
            hi[k] = age[i]


@helper_jit
def _predict_one(i, x, code, tx, age, spend, bg, gg, times, weights, lo, hi, degree, coef, out, terms):
    """One customer: probability alive, expected purchases over times[-1], expected spend per purchase and
    CLV = P(alive) x expected spend x V."""
    r, alpha, a, b = bg[0], bg[1], bg[2], bg[3]
    p, q, gamma = gg[0], gg[1], gg[2]
    xi = x[i]
    u = alpha + age[i]
    if xi > 0.0:
        d = math.log(a) - math.log(b + xi - 1.0) + (r + xi) * (math.log(u) - math.log(alpha + tx[i]))
        alive = 1.0 / (1.0 + math.exp(d)) if d < 700.0 else 0.0
        m = p * (gamma + xi * spend[i]) / (p * xi + q - 1.0)
    else:
        alive = 1.0
        m = p * gamma / (q - 1.0)
    if not m > 0.0:  # q <= 1 (or px + q <= 1): the expected spend is infinite
        m = math.nan
    k = code[i]
    n = degree[k]
    if n == DIRECT:
        value, g = horizon_sums(xi, u, bg, times, weights, terms)
    else:
        s = (2.0 * math.log(u) - (hi[k] + lo[k])) / (hi[k] - lo[k])  # lo, hi: ln(alpha + age) bounds
        value, g = _clenshaw2(coef[k], n, s)
    out[i, 0] = alive
    out[i, 1] = alive * g
    out[i, 2] = m
    out[i, 3] = alive * value * m


@parallel_jit
def predict_parallel(x, code, tx, age, spend, bg, gg, times, weights, lo, hi, degree, coef, out):
    n = x.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        terms = np.empty((times.shape[0], 3))
        for i in range(blk * BLOCK, min((blk + 1) * BLOCK, n)):
            _predict_one(i, x, code, tx, age, spend, bg, gg, times, weights, lo, hi, degree, coef, out, terms)


@serial_jit
def predict_serial(x, code, tx, age, spend, bg, gg, times, weights, lo, hi, degree, coef, out):
    terms = np.empty((times.shape[0], 3))
    for i in range(x.shape[0]):
        _predict_one(i, x, code, tx, age, spend, bg, gg, times, weights, lo, hi, degree, coef, out, terms)
