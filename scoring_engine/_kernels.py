"""Numba kernels of the scoring engine. Private: call them through ``scoring_engine.engine``.

Every public entry point in ``engine`` validates and shapes its input, then
calls one of these. Parallel kernels (``parallel_jit``) must be called under
``_config.PARALLEL_LOCK``; each has a serial twin that runs the same row or
block function, so both give identical bits.

The packed parameters (built by ``engine._Plan``) are:

* ``I`` int64 (n_signals, 6): transform, normalisation, lower-is-better,
  mode (0 normal, 1 halved span, 2 degenerate = 0.5), table offset, table length;
* ``F`` float64 (n_signals, 5): clip low, clip high, a, b, n
  (min-max: a=lo, b=hi; z-score: a=mean, b=std; percentile: n = fitted count);
* ``tables`` float64: percentile tables (distinct values, then the count of
  values below each, then each one's count) and band tables (lower bounds,
  then 0 and the scores), at ``I[:, 4]`` with length ``I[:, 5]``;
* ``D_int`` int64 (n_dims, 3): missing policy, weight offset, weight count;
* ``D_float`` float64 (n_dims, 4): missing value, min coverage, total weight,
  composite weight; ``w_sig`` int64 / ``w_val`` float64: the weighted signals.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._config import helper_jit, parallel_jit, serial_jit

T_IDENTITY, T_LOG1P, T_CLIP = 0, 1, 2
N_MINMAX, N_ZSCORE, N_PERCENTILE, N_BANDS = 0, 1, 2, 3
MODE_NORMAL, MODE_HALVED, MODE_DEGENERATE = 0, 1, 2
P_RENORMALIZE, P_FIXED_VALUE, P_MIN_COVERAGE = 0, 1, 2
I_TRANSFORM, I_NORM, I_LOWER, I_MODE, I_OFF, I_LEN = range(6)
F_CLIP_LO, F_CLIP_HI, F_A, F_B, F_N = range(5)
D_POLICY, D_OFF, D_LEN = range(3)
D_MISSING, D_COVERAGE, D_TOTAL, D_COMPOSITE = range(4)
STAT_COUNT, STAT_MIN, STAT_MAX, STAT_MEAN, STAT_M2, STAT_EXP = range(6)
N_STATS = 6

SQRT2 = math.sqrt(2.0)


def _normal_cdf_table(lo: float, step: float, pieces: int, degree: int) -> np.ndarray:
    """Monomial coefficients (in s = 2 (z - a) / step - 1, s in [-1, 1]) of Chebyshev interpolants of the
    standard normal CDF 0.5 erfc(-z / sqrt 2) on each piece [a, a + step] of [lo, lo + pieces x step]."""
    from numpy.polynomial import chebyshev

    table = np.zeros((pieces, degree + 1))
    for i in range(pieces):
        mid = lo + (i + 0.5) * step
        cdf = np.vectorize(lambda s: 0.5 * math.erfc(-(mid + 0.5 * step * s) / SQRT2))
        coef = chebyshev.cheb2poly(chebyshev.chebinterpolate(cdf, degree))
        table[i, :coef.size] = coef  # cheb2poly drops trailing zero coefficients
    return table


# The z-score normalisation evaluates the normal CDF through piecewise polynomials (no C-library call:
# erfc costs ~25 ns per value here, a degree-9 polynomial ~10 ns). Within +-9 the pieces agree with the C
# library's erfc to ~1e-16 absolute (tests check it); beyond, the CDF is 0 or 1 to within 1.2e-19.
CDF_LO, CDF_STEP, CDF_PIECES, CDF_DEGREE = -9.0, 0.125, 144, 9
CDF_TABLE = _normal_cdf_table(CDF_LO, CDF_STEP, CDF_PIECES, CDF_DEGREE)
SCORE_BLOCK = 256  # rows per work item of the score kernel (its scratch stays in L1/L2)
SMALL_TABLE = 64  # percentile tables up to this many distinct values are scanned, larger ones searched
FIT_BLOCK = 2048  # rows per parallel work item of the fit kernel (its transformed block stays in L2)


# --------------------------------------------------------------------------- per-value maths
@helper_jit
def transform(x, kind, clip_lo, clip_hi):
    """The signal transform of a finite value."""
    if kind == T_LOG1P:
        return log1p_nonneg(x if x > 0.0 else 0.0)
    if kind == T_CLIP:
        if x < clip_lo:
            return clip_lo
        if x > clip_hi:
            return clip_hi
        return x
    return x


@helper_jit
def normal_cdf(z):
    """Standard normal CDF, to ~1e-16 absolute (see CDF_TABLE)."""
    if z != z:
        return z
    if z <= CDF_LO:
        return 0.0
    if z >= -CDF_LO:
        return 1.0
    x = (z - CDF_LO) * (1.0 / CDF_STEP)  # exact: the step is a power of two
    i = min(int(x), CDF_PIECES - 1)
    s = 2.0 * (x - i) - 1.0
    y = CDF_TABLE[i, CDF_DEGREE]
    for k in range(CDF_DEGREE - 1, -1, -1):
        y = y * s + CDF_TABLE[i, k]
    return 0.0 if y < 0.0 else (1.0 if y > 1.0 else y)


@helper_jit
def log1p_nonneg(x):
    """log(1 + x) for finite x >= 0, within about 1 ulp: log of u = 1 + x (the fast C-library log) plus
    the first-order correction for the rounding of u (x - (u - 1)) / u, as in fdlibm's log1p."""
    u = 1.0 + x
    return math.log(u) + (x - (u - 1.0)) / u


@helper_jit
def _percentile(t, off, m, n, tables):
    """Mid-rank of t in a percentile table: (count below + 0.5 x count equal) / n (branch-free search)."""
    base = off
    size = m
    while size > 1:  # the trip count depends on m only; no data-dependent branch
        half = size >> 1
        base += half * (tables[base + half] < t)
        size -= half
    k = base - off + (tables[base] < t)  # first distinct value >= t
    if k == m:
        return 1.0
    less = tables[off + m + k]
    equal = tables[off + 2 * m + k] if tables[off + k] == t else 0.0
    return (less + 0.5 * equal) / n


@helper_jit
def _normalize_column(v, m, j, I, F, tables, count):
    """In place: transformed values v[:m] of signal j -> 0..1 values, direction applied; NaN stays NaN.

    ``count`` is scratch of at least m values.
    """
    norm = I[j, I_NORM]
    mode = I[j, I_MODE]
    if mode == MODE_DEGENERATE:
        for r in range(m):
            v[r] = 0.5 if v[r] == v[r] else np.nan
    elif norm == N_MINMAX:
        lo = F[j, F_A]
        hi = F[j, F_B]
        if mode == MODE_NORMAL:
            span = hi - lo
            for r in range(m):
                y = (v[r] - lo) / span
                v[r] = 0.0 if y < 0.0 else (1.0 if y > 1.0 else y)
        else:  # the span overflows: halve everything first
            lo_half = lo * 0.5
            span = hi * 0.5 - lo_half
            for r in range(m):
                y = (v[r] * 0.5 - lo_half) / span
                v[r] = 0.0 if y < 0.0 else (1.0 if y > 1.0 else y)
    elif norm == N_ZSCORE:
        mean = F[j, F_A]
        std = F[j, F_B]
        for r in range(m):
            v[r] = normal_cdf((v[r] - mean) / std)
    elif norm == N_PERCENTILE:
        off = I[j, I_OFF]
        size = I[j, I_LEN]
        n = F[j, F_N]
        if size <= SMALL_TABLE:  # few distinct values (counts, ratings): count them per row, table-major
            for r in range(m):
                count[r] = 0.0
            for q in range(off, off + size):
                edge = tables[q]
                for r in range(m):
                    count[r] += 1.0 if edge < v[r] else 0.0
            for r in range(m):
                t = v[r]
                if t == t:
                    k = int(count[r])
                    if k == size:
                        v[r] = 1.0
                    else:
                        equal = tables[off + 2 * size + k] if tables[off + k] == t else 0.0
                        v[r] = (tables[off + size + k] + 0.5 * equal) / n
        else:
            for r in range(m):
                t = v[r]
                if t == t:
                    v[r] = _percentile(t, off, size, n, tables)
    else:  # bands: the score of the last band whose lower bound is <= t, 0 below the first
        off = I[j, I_OFF]
        size = I[j, I_LEN]
        for r in range(m):
            count[r] = 0.0
        for q in range(off, off + size):  # bands ascend: count the lower bounds each t reaches
            edge = tables[q]
            for r in range(m):
                count[r] += 1.0 if edge <= v[r] else 0.0
        for r in range(m):
            t = v[r]
            v[r] = tables[off + size + int(count[r])] if t == t else np.nan
    if I[j, I_LOWER] != 0:
        for r in range(m):
            v[r] = 1.0 - v[r]


@helper_jit
def _score_block(start, stop, X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, V, acc):
    """Scores rows start..stop-1 (at most V.shape[1]) column by column through the scratch V (n_signals, block).

    Returns the index of the first row holding +-inf in a column the model reads, or -1.
    """
    m = stop - start
    n_sig = I.shape[0]
    infinite = False
    for j in range(n_sig):
        c = cols[j]
        v = V[j]
        if c < 0:
            for r in range(m):
                v[r] = np.nan
            continue
        for r in range(m):
            x = X[start + r, c]
            infinite |= abs(x) == np.inf
            v[r] = x
        kind = I[j, I_TRANSFORM]
        if kind == T_LOG1P:
            for r in range(m):
                x = v[r]
                if x == x:
                    v[r] = log1p_nonneg(x if x > 0.0 else 0.0)
        elif kind == T_CLIP:
            lo = F[j, F_CLIP_LO]
            hi = F[j, F_CLIP_HI]
            for r in range(m):
                x = v[r]
                v[r] = lo if x < lo else (hi if x > hi else x)
        _normalize_column(v, m, j, I, F, tables, acc[0])
    if infinite:
        for r in range(m):
            for j in range(n_sig):
                c = cols[j]
                if c >= 0 and abs(X[start + r, c]) == np.inf:
                    return start + r
    num = acc[0]
    den = acc[1]
    c_num = acc[2]
    c_den = acc[3]
    for r in range(m):
        c_num[r] = 0.0
        c_den[r] = 0.0
    for d in range(D_int.shape[0]):
        policy = D_int[d, D_POLICY]
        for r in range(m):
            num[r] = 0.0
            den[r] = 0.0
        for k in range(D_int[d, D_OFF], D_int[d, D_OFF] + D_int[d, D_LEN]):
            w = w_val[k]
            v = V[w_sig[k]]
            if policy == P_FIXED_VALUE:
                fill = w * D_float[d, D_MISSING]
                for r in range(m):
                    x = v[r]
                    num[r] += w * x if x == x else fill
            else:
                for r in range(m):  # branch-free so that it vectorises
                    x = v[r]
                    present = x == x
                    num[r] += w * x if present else 0.0
                    den[r] += w if present else 0.0
        total = D_float[d, D_TOTAL]
        cw = D_float[d, D_COMPOSITE]
        if policy == P_FIXED_VALUE:
            for r in range(m):
                s = 100.0 * (num[r] / total)
                dims[start + r, d] = s
                c_num[r] += cw * s
                c_den[r] += cw
        else:
            need = D_float[d, D_COVERAGE] * total if policy == P_MIN_COVERAGE else 0.0
            for r in range(m):
                if den[r] > 0.0 and den[r] >= need:
                    s = 100.0 * (num[r] / den[r])
                    c_num[r] += cw * s
                    c_den[r] += cw
                else:
                    s = np.nan
                dims[start + r, d] = s
    for r in range(m):
        if c_den[r] > 0.0:
            y = c_num[r] / c_den[r]
            comp[start + r] = 0.0 if y < 0.0 else (100.0 if y > 100.0 else y)
        else:
            comp[start + r] = np.nan
    return -1


@parallel_jit
def score_parallel(X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad):
    """dims (n, n_dims) and comp (n,) of every row; bad[b] = first row of block b holding +-inf (else -1)."""
    n = X.shape[0]
    n_sig = I.shape[0]
    n_blocks = (n + SCORE_BLOCK - 1) // SCORE_BLOCK
    for b in prange(n_blocks):
        start = b * SCORE_BLOCK
        V = np.empty((n_sig, SCORE_BLOCK))
        acc = np.empty((4, SCORE_BLOCK))
        bad[b] = _score_block(start, min(n, start + SCORE_BLOCK), X, cols, I, F, tables, D_int, D_float, w_sig,
                              w_val, dims, comp, V, acc)


@serial_jit
def score_serial(X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad):
    """Serial twin of score_parallel (same block function, so the same bits)."""
    n = X.shape[0]
    n_sig = I.shape[0]
    block = min(n, SCORE_BLOCK)
    V = np.empty((n_sig, block))
    acc = np.empty((4, block))
    for b in range((n + SCORE_BLOCK - 1) // SCORE_BLOCK):
        start = b * SCORE_BLOCK
        bad[b] = _score_block(start, min(n, start + SCORE_BLOCK), X, cols, I, F, tables, D_int, D_float, w_sig,
                              w_val, dims, comp, V, acc)


@serial_jit
def score_one(x, I, F, tables, D_int, D_float, w_sig, w_val, thresholds, previous, band, vals, dims):
    """One customer: x holds its values in model order. Fills vals (normalised signal values) and
    dims (1, n_dims); returns (composite, tier, 1 if a value is +-inf else 0)."""
    n_sig = x.shape[0]
    X = x.reshape((1, n_sig))
    cols = np.arange(n_sig)
    V = vals.reshape((n_sig, 1))
    acc = np.empty((4, 1))
    comp = np.empty(1)
    bad = _score_block(0, 1, X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, V, acc)
    return comp[0], final_tier(comp[0], thresholds, previous, band), 1 if bad >= 0 else 0


# --------------------------------------------------------------------------- tiers
@helper_jit
def raw_tier(c, thresholds):
    """First tier whose threshold c reaches; the floor (len(thresholds)) otherwise and for NaN."""
    n_thr = thresholds.shape[0]
    if c != c:
        return n_thr
    for k in range(n_thr):
        if c >= thresholds[k]:
            return k
    return n_thr


@helper_jit
def final_tier(c, thresholds, previous, band):
    """The tier of composite c given the previous tier (-1: none) and the hysteresis band.

    A customer keeps its previous tier p while thresholds[p] - band <= c <= thresholds[p - 1] + band
    (boundaries beyond the best and the floor tier are infinite); otherwise it takes the tier its
    composite reaches. NaN composites land in the floor tier.
    """
    t = raw_tier(c, thresholds)
    if previous >= 0 and c == c:
        floor = thresholds.shape[0]
        upper = thresholds[previous - 1] + band if previous > 0 else np.inf
        lower = thresholds[previous] - band if previous < floor else -np.inf
        if c >= lower and c <= upper:
            t = previous
    return t


@helper_jit
def _tier_block(start, stop, comp, thresholds, previous, use_previous, band, out):
    for i in range(start, stop):
        out[i] = final_tier(comp[i], thresholds, previous[i] if use_previous else -1, band)


@parallel_jit
def tiers_parallel(comp, thresholds, previous, use_previous, band, out):
    n = comp.shape[0]
    n_blocks = (n + 65535) // 65536
    for b in prange(n_blocks):
        _tier_block(b * 65536, min(n, (b + 1) * 65536), comp, thresholds, previous, use_previous, band, out)


@serial_jit
def tiers_serial(comp, thresholds, previous, use_previous, band, out):
    _tier_block(0, comp.shape[0], comp, thresholds, previous, use_previous, band, out)


# --------------------------------------------------------------------------- fit
@helper_jit
def _fit_block(start, stop, X, cols, I, F, pct_slot, stats, b, pct_out, bad):
    n_sig = I.shape[0]
    m = stop - start
    buf = np.empty((n_sig, m))
    for j in range(n_sig):
        stats[b, j, STAT_COUNT] = 0.0
        stats[b, j, STAT_MIN] = np.inf
        stats[b, j, STAT_MAX] = -np.inf
    amax = np.zeros(n_sig)
    for r in range(m):
        i = start + r
        for j in range(n_sig):
            c = cols[j]
            x = X[i, c] if c >= 0 else np.nan
            if x != x:
                t = np.nan
            elif x == np.inf or x == -np.inf:
                if bad[b, 0] < 0:
                    bad[b, 0] = i
                    bad[b, 1] = j
                t = np.nan
            else:
                t = transform(x, I[j, I_TRANSFORM], F[j, F_CLIP_LO], F[j, F_CLIP_HI])
                stats[b, j, STAT_COUNT] += 1.0
                if t < stats[b, j, STAT_MIN]:
                    stats[b, j, STAT_MIN] = t
                if t > stats[b, j, STAT_MAX]:
                    stats[b, j, STAT_MAX] = t
                a = abs(t)
                if a > amax[j]:
                    amax[j] = a
            buf[j, r] = t
            if pct_slot[j] >= 0:
                pct_out[i, pct_slot[j]] = t
    for j in range(n_sig):
        count = stats[b, j, STAT_COUNT]
        e = 0
        mean = 0.0
        m2 = 0.0
        if count > 0.0 and I[j, I_NORM] == N_ZSCORE:
            # values scaled by a power of two (exact) so that squares cannot overflow; corrected two-pass
            e = math.frexp(amax[j])[1]
            scale = math.ldexp(1.0, -e)
            s = 0.0
            for r in range(m):
                t = buf[j, r]
                if t == t:
                    s += t * scale
            mean0 = s / count
            corr = 0.0
            for r in range(m):
                t = buf[j, r]
                if t == t:
                    dlt = t * scale - mean0
                    corr += dlt
                    m2 += dlt * dlt
            mean = mean0 + corr / count
            m2 -= corr * corr / count
            if m2 < 0.0:
                m2 = 0.0
        stats[b, j, STAT_MEAN] = mean
        stats[b, j, STAT_M2] = m2
        stats[b, j, STAT_EXP] = e


@helper_jit
def merge_stats(acc, part):
    """Merges the statistics rows part (n_signals, 6) into acc (Chan et al.'s pairwise update)."""
    for j in range(acc.shape[0]):
        nb = part[j, STAT_COUNT]
        if nb == 0.0:
            continue
        na = acc[j, STAT_COUNT]
        if na == 0.0:
            for k in range(N_STATS):
                acc[j, k] = part[j, k]
            continue
        ea = int(acc[j, STAT_EXP])
        eb = int(part[j, STAT_EXP])
        e = max(ea, eb)
        ma = math.ldexp(acc[j, STAT_MEAN], ea - e)
        mb = math.ldexp(part[j, STAT_MEAN], eb - e)
        n = na + nb
        delta = mb - ma
        acc[j, STAT_M2] = (math.ldexp(acc[j, STAT_M2], 2 * (ea - e)) + math.ldexp(part[j, STAT_M2], 2 * (eb - e))
                           + delta * delta * (na * nb / n))
        acc[j, STAT_MEAN] = ma + delta * (nb / n)
        acc[j, STAT_EXP] = e
        acc[j, STAT_COUNT] = n
        acc[j, STAT_MIN] = min(acc[j, STAT_MIN], part[j, STAT_MIN])
        acc[j, STAT_MAX] = max(acc[j, STAT_MAX], part[j, STAT_MAX])


@serial_jit
def merge_blocks(stats, out):
    """Merges per-block statistics (n_blocks, n_signals, 6) into out (n_signals, 6), in block order."""
    for b in range(stats.shape[0]):
        merge_stats(out, stats[b])


@parallel_jit
def fit_parallel(X, cols, I, F, pct_slot, stats, pct_out, bad):
    n = X.shape[0]
    n_blocks = stats.shape[0]
    for b in prange(n_blocks):
        start = b * FIT_BLOCK
        _fit_block(start, min(n, start + FIT_BLOCK), X, cols, I, F, pct_slot, stats, b, pct_out, bad)


@serial_jit
def fit_serial(X, cols, I, F, pct_slot, stats, pct_out, bad):
    n = X.shape[0]
    for b in range(stats.shape[0]):
        start = b * FIT_BLOCK
        _fit_block(start, min(n, start + FIT_BLOCK), X, cols, I, F, pct_slot, stats, b, pct_out, bad)


# --------------------------------------------------------------------------- ranks and cutoffs
@helper_jit
def _bin_of(c, lo, scale, n_bins):
    b = int((c - lo) * scale)
    return n_bins - 1 if b >= n_bins else b


@parallel_jit
def part_ranges(comp, n_parts, out):
    """out[p] = (valid count, min, max) of the composites of part p (parts are equal row ranges)."""
    n = comp.shape[0]
    for p in prange(n_parts):
        start = n * p // n_parts
        stop = n * (p + 1) // n_parts
        count = 0.0
        lo = np.inf
        hi = -np.inf
        for i in range(start, stop):
            c = comp[i]
            if c == c:
                count += 1.0
                if c < lo:
                    lo = c
                if c > hi:
                    hi = c
        out[p, 0] = count
        out[p, 1] = lo
        out[p, 2] = hi


@parallel_jit
def part_histograms(comp, lo, scale, hist):
    """hist[p, b]: composites of part p in descending bin b (bin n_bins-1 holds the lowest)."""
    n = comp.shape[0]
    n_parts, n_bins = hist.shape
    for p in prange(n_parts):
        start = n * p // n_parts
        stop = n * (p + 1) // n_parts
        for b in range(n_bins):
            hist[p, b] = 0
        for i in range(start, stop):
            c = comp[i]
            if c == c:
                hist[p, n_bins - 1 - _bin_of(c, lo, scale, n_bins)] += 1


@parallel_jit
def scatter_by_bin(comp, lo, scale, offsets, nan_offsets, keys, order):
    """Counting-sort scatter: row indices (and their composites) into descending bins, stable;
    NaN rows after all others in row order."""
    n = comp.shape[0]
    n_parts, n_bins = offsets.shape
    for p in prange(n_parts):
        start = n * p // n_parts
        stop = n * (p + 1) // n_parts
        nan_pos = nan_offsets[p]
        for i in range(start, stop):
            c = comp[i]
            if c == c:
                b = n_bins - 1 - _bin_of(c, lo, scale, n_bins)
                pos = offsets[p, b]
                offsets[p, b] = pos + 1
                keys[pos] = c
                order[pos] = i
            else:
                order[nan_pos] = i
                nan_pos += 1


@helper_jit
def _sort_segment(keys, order, s, e):
    """Sorts keys[s:e] descending, ties by ascending row (order), in place."""
    m = e - s
    if m <= 48:
        for a in range(s + 1, e):
            k = keys[a]
            o = order[a]
            q = a - 1
            while q >= s and (keys[q] < k or (keys[q] == k and order[q] > o)):
                keys[q + 1] = keys[q]
                order[q + 1] = order[q]
                q -= 1
            keys[q + 1] = k
            order[q + 1] = o
    else:
        # rows of a bin arrive in ascending order (stable scatter), so a stable sort keeps ties by row
        seg_k = -keys[s:e]
        idx = np.argsort(seg_k, kind="mergesort")
        seg_o = order[s:e].copy()
        for a in range(m):
            keys[s + a] = -seg_k[idx[a]]
            order[s + a] = seg_o[idx[a]]


@parallel_jit
def rank_bins(keys, order, bin_start, part_bins, n_valid, rank, percentile):
    """Sorts each bin and writes the exact rank (1 = highest) and mid-rank percentile of each row."""
    n_parts = part_bins.shape[0] - 1
    for p in prange(n_parts):
        for b in range(part_bins[p], part_bins[p + 1]):
            s = bin_start[b]
            e = bin_start[b + 1]
            if e - s > 1:
                _sort_segment(keys, order, s, e)
            a = s
            while a < e:  # runs of equal composites share a percentile
                z = a + 1
                while z < e and keys[z] == keys[a]:
                    z += 1
                pct = 100.0 * ((n_valid - z) + 0.5 * (z - a)) / n_valid
                for q in range(a, z):
                    r = order[q]
                    rank[r] = q + 1
                    percentile[r] = pct
                a = z


@serial_jit
def rank_serial(comp, rank, percentile):
    """Serial exact ranks for small inputs: stable sort by composite descending, NaN last."""
    n = comp.shape[0]
    keys = np.empty(n)
    for i in range(n):
        c = comp[i]
        keys[i] = np.inf if c != c else -c
    order = np.argsort(keys, kind="mergesort")
    n_valid = 0
    for i in range(n):
        if comp[i] == comp[i]:
            n_valid += 1
    a = 0
    while a < n:
        z = a + 1
        if a < n_valid:
            while z < n_valid and keys[order[z]] == keys[order[a]]:
                z += 1
            pct = 100.0 * ((n_valid - z) + 0.5 * (z - a)) / n_valid
        else:
            pct = np.nan
        for q in range(a, z):
            rank[order[q]] = q + 1
            percentile[order[q]] = pct
        a = z


@parallel_jit
def gather_bins(comp, lo, scale, n_bins, wanted, offsets, out):
    """Copies the composites whose (descending) bin has wanted[b] >= 0 into out at offsets[p, wanted[b]]."""
    n = comp.shape[0]
    n_parts = offsets.shape[0]
    for p in prange(n_parts):
        start = n * p // n_parts
        stop = n * (p + 1) // n_parts
        for i in range(start, stop):
            c = comp[i]
            if c == c:
                w = wanted[n_bins - 1 - _bin_of(c, lo, scale, n_bins)]
                if w >= 0:
                    pos = offsets[p, w]
                    offsets[p, w] = pos + 1
                    out[pos] = c
