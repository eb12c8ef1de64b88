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
  then scores), at ``I[:, 4]`` with length ``I[:, 5]``;
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
STAT_COUNT, STAT_MIN, STAT_MAX, STAT_SUM, STAT_M2, STAT_EXP = range(6)
N_STATS = 6

SQRT2 = math.sqrt(2.0)
SCORE_BLOCK = 1024  # rows per parallel work item of the score kernel
FIT_BLOCK = 2048  # rows per parallel work item of the fit kernel (its transformed block stays in L2)


# --------------------------------------------------------------------------- per-value maths
@helper_jit
def transform(x, kind, clip_lo, clip_hi):
    """The signal transform of a finite value."""
    if kind == T_LOG1P:
        return math.log1p(x if x > 0.0 else 0.0)
    if kind == T_CLIP:
        if x < clip_lo:
            return clip_lo
        if x > clip_hi:
            return clip_hi
        return x
    return x


@helper_jit
def normalize(t, j, I, F, tables):
    """A transformed value of signal j mapped onto 0..1, direction applied."""
    norm = I[j, I_NORM]
    mode = I[j, I_MODE]
    if mode == MODE_DEGENERATE:
        v = 0.5
    elif norm == N_MINMAX:
        lo = F[j, F_A]
        hi = F[j, F_B]
        if mode == MODE_NORMAL:
            v = (t - lo) / (hi - lo)
        else:  # the span overflows: halve everything first
            v = (t * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)
        if v < 0.0:
            v = 0.0
        elif v > 1.0:
            v = 1.0
    elif norm == N_ZSCORE:
        z = (t - F[j, F_A]) / F[j, F_B]
        v = 0.5 * math.erfc(-z / SQRT2)
    elif norm == N_PERCENTILE:
        off = I[j, I_OFF]
        m = I[j, I_LEN]
        lo_i = 0
        hi_i = m
        while lo_i < hi_i:  # first distinct value >= t
            mid = (lo_i + hi_i) >> 1
            if tables[off + mid] < t:
                lo_i = mid + 1
            else:
                hi_i = mid
        n = F[j, F_N]
        if lo_i == m:
            less = n
            equal = 0.0
        else:
            less = tables[off + m + lo_i]
            equal = tables[off + 2 * m + lo_i] if tables[off + lo_i] == t else 0.0
        v = (less + 0.5 * equal) / n
    else:  # bands: the score of the last band whose lower bound is <= t, 0 below the first
        off = I[j, I_OFF]
        m = I[j, I_LEN]
        v = 0.0
        for k in range(m):
            if t >= tables[off + k]:
                v = tables[off + m + k]
            else:
                break
    if I[j, I_LOWER] != 0:
        v = 1.0 - v
    return v


@helper_jit
def score_row(X, i, cols, I, F, tables, D_int, D_float, w_sig, w_val, vals, dims):
    """Scores row i of X into dims[i, :]; returns (composite, index of a signal holding +-inf or -1)."""
    n_sig = I.shape[0]
    for j in range(n_sig):
        c = cols[j]
        x = X[i, c] if c >= 0 else np.nan
        if x != x:
            vals[j] = np.nan
        elif x == np.inf or x == -np.inf:
            return np.nan, j
        else:
            vals[j] = normalize(transform(x, I[j, I_TRANSFORM], F[j, F_CLIP_LO], F[j, F_CLIP_HI]), j, I, F, tables)
    c_num = 0.0
    c_den = 0.0
    for d in range(D_int.shape[0]):
        policy = D_int[d, D_POLICY]
        off = D_int[d, D_OFF]
        num = 0.0
        den = 0.0
        for k in range(off, off + D_int[d, D_LEN]):
            w = w_val[k]
            v = vals[w_sig[k]]
            if v == v:
                num += w * v
                den += w
            elif policy == P_FIXED_VALUE:
                num += w * D_float[d, D_MISSING]
        if policy == P_FIXED_VALUE:
            s = 100.0 * (num / D_float[d, D_TOTAL])
        elif den > 0.0 and (policy != P_MIN_COVERAGE or den >= D_float[d, D_COVERAGE] * D_float[d, D_TOTAL]):
            s = 100.0 * (num / den)
        else:
            s = np.nan
        dims[i, d] = s
        if s == s:
            cw = D_float[d, D_COMPOSITE]
            c_num += cw * s
            c_den += cw
    if c_den > 0.0:
        comp = c_num / c_den
        if comp > 100.0:
            comp = 100.0
        elif comp < 0.0:
            comp = 0.0
    else:
        comp = np.nan
    return comp, -1


@helper_jit
def _score_block(start, stop, X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad, b):
    vals = np.empty(I.shape[0])
    for i in range(start, stop):
        value, j = score_row(X, i, cols, I, F, tables, D_int, D_float, w_sig, w_val, vals, dims)
        comp[i] = value
        if j >= 0 and bad[b, 0] < 0:
            bad[b, 0] = i
            bad[b, 1] = j


@parallel_jit
def score_parallel(X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad):
    """dims (n, n_dims) and comp (n,) of every row; bad[b] = (row, signal) of block b's first +-inf."""
    n = X.shape[0]
    n_blocks = (n + SCORE_BLOCK - 1) // SCORE_BLOCK
    for b in prange(n_blocks):
        start = b * SCORE_BLOCK
        _score_block(start, min(n, start + SCORE_BLOCK), X, cols, I, F, tables, D_int, D_float, w_sig, w_val,
                     dims, comp, bad, b)


@serial_jit
def score_serial(X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad):
    """Serial twin of score_parallel (bad has one row)."""
    _score_block(0, X.shape[0], X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad, 0)


@serial_jit
def score_one(x, I, F, tables, D_int, D_float, w_sig, w_val, thresholds, previous, band, vals, dims):
    """One customer: x holds its values in model order. Fills vals (normalised signal values) and
    dims (1, n_dims); returns (composite, tier, index of a signal holding +-inf or -1)."""
    X = x.reshape((1, x.shape[0]))
    cols = np.arange(x.shape[0])
    comp, j = score_row(X, 0, cols, I, F, tables, D_int, D_float, w_sig, w_val, vals, dims)
    return comp, final_tier(comp, thresholds, previous, band), j


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
        s = 0.0
        m2 = 0.0
        if count > 0.0 and I[j, I_NORM] == N_ZSCORE:
            e = math.frexp(amax[j])[1]
            scale = math.ldexp(1.0, -e)
            for r in range(m):
                t = buf[j, r]
                if t == t:
                    s += t * scale
            mean = s / count
            for r in range(m):
                t = buf[j, r]
                if t == t:
                    dlt = t * scale - mean
                    m2 += dlt * dlt
        stats[b, j, STAT_SUM] = s
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
        sa = math.ldexp(acc[j, STAT_SUM], ea - e)
        sb = math.ldexp(part[j, STAT_SUM], eb - e)
        n = na + nb
        delta = sb / nb - sa / na
        acc[j, STAT_M2] = (math.ldexp(acc[j, STAT_M2], 2 * (ea - e)) + math.ldexp(part[j, STAT_M2], 2 * (eb - e))
                           + delta * delta * (na * nb / n))
        acc[j, STAT_SUM] = sa + sb
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
