"""Fit, score, rank and explain: the public entry points over the Numba kernels.

Each function validates and shapes its input here and runs a private kernel of
``_kernels``. Calls with at least ``_config.PARALLEL_MIN_ROWS`` rows use the
parallel kernels under ``_config.PARALLEL_LOCK``; smaller calls use their
serial twins (same row function, same bits) without the lock.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import numba
import numpy as np

from . import _kernels as K
from ._config import PARALLEL_LOCK, PARALLEL_MIN_ROWS
from .model import (
    MissingPolicy, ModelValidationError, Normalization, Transform, ValueModel, enum_json_name,
)

__all__ = [
    "CustomerScore", "DimensionContribution", "Explanation", "FittedModel", "NonFiniteValueError",
    "ScoreResult", "ScoringError", "SignalContribution", "assign_tiers", "explain", "fit",
    "iter_score_chunks", "population_thresholds", "rank_composites", "score", "score_chunks", "score_one",
    "warm_up",
]

FORMAT_VERSION = 1


class ScoringError(ValueError):
    """Input the engine cannot score: wrong shape, unknown columns, bad previous tiers, missing cutoffs."""


class NonFiniteValueError(ScoringError):
    """A matrix holds +inf or -inf (NaN means "not observed" and is fine).

    ``row`` is the row index in the matrix (counted over all chunks for
    chunked calls), ``signal`` the model signal name of the column.
    """

    def __init__(self, row: int, signal: str, value: float):
        self.row, self.signal, self.value = row, signal, value
        super().__init__(f"row {row}, column {signal}: {value!r} is not a valid signal value "
                         "(values must be finite; NaN marks a missing value)")


# --------------------------------------------------------------------------- the packed model
_TRANSFORM_CODE = {Transform.UNSPECIFIED: K.T_IDENTITY, Transform.IDENTITY: K.T_IDENTITY,
                   Transform.LOG1P: K.T_LOG1P, Transform.CLIP: K.T_CLIP}
_NORM_CODE = {Normalization.MIN_MAX: K.N_MINMAX, Normalization.Z_SCORE: K.N_ZSCORE,
              Normalization.PERCENTILE: K.N_PERCENTILE, Normalization.BANDS: K.N_BANDS}
_POLICY_CODE = {MissingPolicy.RENORMALIZE: K.P_RENORMALIZE, MissingPolicy.FIXED_VALUE: K.P_FIXED_VALUE,
                MissingPolicy.MIN_COVERAGE: K.P_MIN_COVERAGE}


def _model_arrays(model: ValueModel):
    """The model-only parts of the packed parameters (see ``_kernels`` docstring)."""
    n_sig = len(model.signals)
    I = np.zeros((n_sig, 6), dtype=np.int64)
    F = np.zeros((n_sig, 5), dtype=np.float64)
    for j, s in enumerate(model.signals):
        I[j, K.I_TRANSFORM] = _TRANSFORM_CODE[s.transform]
        I[j, K.I_NORM] = _NORM_CODE[s.effective_normalization]
        I[j, K.I_LOWER] = int(s.lower_is_better)
        F[j, K.F_CLIP_LO] = -np.inf if s.clip_min is None else s.clip_min
        F[j, K.F_CLIP_HI] = np.inf if s.clip_max is None else s.clip_max
    index = model.signal_index
    D_int = np.zeros((len(model.dimensions), 3), dtype=np.int64)
    D_float = np.zeros((len(model.dimensions), 4), dtype=np.float64)
    w_sig, w_val = [], []
    for d, dim in enumerate(model.dimensions):
        D_int[d] = (_POLICY_CODE[dim.effective_missing_policy], len(w_sig), len(dim.weights))
        total = 0.0
        for w in dim.weights:  # summed in listed order, as the kernels and the reference do
            total += w.weight
            w_sig.append(index[w.signal])
            w_val.append(w.weight)
        D_float[d] = (dim.missing_value, dim.min_coverage, total, dim.composite_weight)
    return I, F, D_int, D_float, np.array(w_sig, dtype=np.int64), np.array(w_val, dtype=np.float64)


def left_out_signals(model: ValueModel, carried) -> tuple[frozenset[str], ...]:
    """Per dimension, the signals it leaves out: in a FIXED_VALUE dimension, those no customer of the fitted
    population carries (``carried(name)`` is False), unless it carries none of them. Their weight leaves the
    dimension's total, so a signal a base does not collect at all (use_case_adoption where no value hierarchy
    is active) does not pull every score down by imputing its missing value."""
    found = []
    for dim in model.dimensions:
        absent = frozenset(w.signal for w in dim.weights if not carried(w.signal))
        keep = dim.effective_missing_policy == MissingPolicy.FIXED_VALUE and len(absent) < len(dim.weights)
        found.append(absent if keep else frozenset())
    return tuple(found)


def model_thresholds(model: ValueModel) -> np.ndarray | None:
    """Tier thresholds set by the model (min_composite tiers, or a single tier); None for share tiers."""
    if model.tiers_by_share:
        return None
    return np.array([t.min_composite for t in model.tiers[:-1]], dtype=np.float64)


# --------------------------------------------------------------------------- fitted model
@dataclass(frozen=True, eq=False)
class FittedModel:
    """A model plus the population statistics its normalisations need.

    ``stats`` (n_signals, 6): per signal the count of observed values and the
    minimum, maximum, scaled mean, scaled squared deviations and scale exponent
    of its transformed values. ``pct_values``/``pct_counts`` hold, for each
    PERCENTILE signal, its distinct transformed values (ascending) and how
    often each occurred, at ``pct_offsets[j]:pct_offsets[j + 1]``.
    ``tier_thresholds`` (len(tiers) - 1, non-increasing) are frozen cutoffs:
    when set, every score uses them; otherwise min_composite tiers use the
    model's thresholds and share tiers the cutoffs of the scored population.
    """

    model: ValueModel
    n_rows: int
    stats: np.ndarray
    pct_values: np.ndarray
    pct_counts: np.ndarray
    pct_offsets: np.ndarray
    tier_thresholds: np.ndarray | None = None

    # -- derived statistics -------------------------------------------------
    def signal_statistics(self) -> dict[str, dict[str, float]]:
        """Per signal: observed count and the fitted bounds its normalisation uses."""
        out = {}
        for j, s in enumerate(self.model.signals):
            row = {"count": float(self.stats[j, K.STAT_COUNT])}
            norm = s.effective_normalization
            if norm == Normalization.MIN_MAX:
                row["min"], row["max"] = self._packed[1][j, K.F_A], self._packed[1][j, K.F_B]
            elif norm == Normalization.Z_SCORE:
                row["mean"], row["std"] = self._packed[1][j, K.F_A], self._packed[1][j, K.F_B]
            elif norm == Normalization.PERCENTILE:
                row["distinct"] = float(self.pct_offsets[j + 1] - self.pct_offsets[j])
            out[s.name] = {k: float(v) for k, v in row.items()}
        return out

    @cached_property
    def _packed(self):
        """(I, F, tables, D_int, D_float, w_sig, w_val) for the kernels."""
        I, F, D_int, D_float, w_sig, w_val = _model_arrays(self.model)
        tables: list[np.ndarray] = []
        offset = 0
        for j, s in enumerate(self.model.signals):
            st = self.stats[j]
            count = st[K.STAT_COUNT]
            norm = s.effective_normalization
            mode = K.MODE_NORMAL
            if norm == Normalization.MIN_MAX:
                lo = float(s.fixed_min if s.fixed_min is not None else (st[K.STAT_MIN] if count > 0 else math.nan))
                hi = float(s.fixed_max if s.fixed_max is not None else (st[K.STAT_MAX] if count > 0 else math.nan))
                F[j, K.F_A], F[j, K.F_B] = lo, hi
                if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                    mode = K.MODE_DEGENERATE
                elif not math.isfinite(hi - lo):
                    mode = K.MODE_HALVED
            elif norm == Normalization.Z_SCORE:
                mean, std = _mean_std(st)
                F[j, K.F_A], F[j, K.F_B] = mean, std
                constant = st[K.STAT_MIN] == st[K.STAT_MAX]  # rounding must not turn a constant into a spread
                if not (count > 0 and not constant and math.isfinite(mean) and math.isfinite(std) and std > 0):
                    mode = K.MODE_DEGENERATE
            elif norm == Normalization.PERCENTILE:
                a, b = self.pct_offsets[j], self.pct_offsets[j + 1]
                values, counts = self.pct_values[a:b], self.pct_counts[a:b]
                n = float(counts.sum())
                F[j, K.F_N] = n
                if n == 0:
                    mode = K.MODE_DEGENERATE
                less = np.cumsum(counts) - counts
                tables += [values, less.astype(np.float64), counts.astype(np.float64)]
                I[j, K.I_OFF], I[j, K.I_LEN] = offset, b - a
                offset += 3 * (b - a)
            else:
                lows = np.array([band.lower_bound for band in s.bands], dtype=np.float64)
                scores = np.array([0.0] + [band.score for band in s.bands], dtype=np.float64)  # 0 below the first
                tables += [lows, scores]
                I[j, K.I_OFF], I[j, K.I_LEN] = offset, len(lows)
                offset += 2 * len(lows) + 1
            I[j, K.I_MODE] = mode
        table = np.concatenate(tables) if tables else np.zeros(0)
        for d, left_out in enumerate(self.left_out):
            if left_out:
                k = int(D_int[d, 1])
                weights = self.model.dimensions[d].weights
                w_val[k:k + len(weights)] = [0.0 if w.signal in left_out else w.weight for w in weights]
                total = 0.0
                for w in weights:  # summed in listed order, as the reference does
                    total += 0.0 if w.signal in left_out else w.weight
                D_float[d, K.D_TOTAL] = total
        return I, F, np.ascontiguousarray(table, dtype=np.float64), D_int, D_float, w_sig, w_val

    @cached_property
    def left_out(self) -> tuple[frozenset[str], ...]:
        """Per dimension, the signals it leaves out: see :func:`left_out_signals`."""
        counts = self.stats[:, K.STAT_COUNT]
        return left_out_signals(self.model, lambda name: counts[self.model.signal_index[name]] > 0)

    @cached_property
    def _one_call(self):
        """Arguments of the one-customer kernel that do not change between calls."""
        I, F, tables, D_int, D_float, w_sig, w_val = self._packed
        thresholds = self.tier_thresholds if self.tier_thresholds is not None else model_thresholds(self.model)
        return I, F, tables, D_int, D_float, w_sig, w_val, thresholds

    # -- tier cutoffs -------------------------------------------------------
    def with_tier_thresholds(self, thresholds: Sequence[float] | np.ndarray) -> FittedModel:
        """This fitted model with frozen tier cutoffs, e.g. ``ScoreResult.tier_thresholds`` of a completed run.

        Online scoring (:func:`score_one`) of share-based tiers needs them.
        """
        thr = np.array(thresholds, dtype=np.float64).reshape(-1)
        if thr.shape[0] != len(self.model.tiers) - 1:
            raise ScoringError(f"tier thresholds: expected {len(self.model.tiers) - 1} values "
                               f"(one per tier but the floor), got {thr.shape[0]}")
        if np.isnan(thr).any() or np.any(thr[1:] > thr[:-1]) or (thr.size and thr[-1] == -np.inf):
            raise ScoringError("tier thresholds must be non-increasing numbers (+inf for an empty tier)")
        return FittedModel(self.model, self.n_rows, self.stats, self.pct_values, self.pct_counts,
                           self.pct_offsets, thr)

    # -- bytes ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """An ``.npz`` archive (no pickle): the model JSON and the fitted arrays."""
        buffer = io.BytesIO()
        thr = self.tier_thresholds
        np.savez(
            buffer,
            format_version=np.array([FORMAT_VERSION], dtype=np.int64),
            model_json=np.frombuffer(self.model.to_json().encode("utf-8"), dtype=np.uint8),
            n_rows=np.array([self.n_rows], dtype=np.int64),
            stats=self.stats,
            pct_values=self.pct_values,
            pct_counts=self.pct_counts,
            pct_offsets=self.pct_offsets,
            has_thresholds=np.array([thr is not None]),
            tier_thresholds=thr if thr is not None else np.zeros(0),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FittedModel:
        """Inverse of :meth:`to_bytes`; raises ScoringError on a malformed archive."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if int(z["format_version"][0]) != FORMAT_VERSION:
                    raise ScoringError(f"fitted model format {int(z['format_version'][0])} is not supported")
                model = ValueModel.from_json(z["model_json"].tobytes().decode("utf-8"))
                fitted = cls(model, int(z["n_rows"][0]), z["stats"].astype(np.float64),
                             z["pct_values"].astype(np.float64), z["pct_counts"].astype(np.int64),
                             z["pct_offsets"].astype(np.int64))
                has = bool(z["has_thresholds"][0])
                thresholds = z["tier_thresholds"] if has else None
        except (OSError, KeyError, ValueError, IndexError, ModelValidationError) as error:
            if isinstance(error, ScoringError):
                raise
            raise ScoringError(f"not a fitted model archive: {error}") from None
        n_sig = len(model.signals)
        if fitted.stats.shape != (n_sig, K.N_STATS) or fitted.pct_offsets.shape != (n_sig + 1,) \
                or fitted.pct_values.shape != fitted.pct_counts.shape \
                or fitted.pct_offsets[-1] != fitted.pct_values.shape[0]:
            raise ScoringError("fitted model archive: arrays do not match the model")
        return fitted.with_tier_thresholds(thresholds) if has else fitted


def _mean_std(st: np.ndarray) -> tuple[float, float]:
    count = st[K.STAT_COUNT]
    if count <= 0:
        return math.nan, math.nan
    e = int(st[K.STAT_EXP])
    mean = math.ldexp(st[K.STAT_MEAN], e)
    std = math.ldexp(math.sqrt(st[K.STAT_M2] / count), e)
    return mean, std


# --------------------------------------------------------------------------- input shaping
def _columns(model: ValueModel, n_cols: int, signal_names: Sequence[str] | None) -> np.ndarray:
    """For each model signal, its column in the matrix (-1: absent, read as all NaN)."""
    if signal_names is None:
        if n_cols != len(model.signals):
            raise ScoringError(f"matrix has {n_cols} columns but the model reads {len(model.signals)} signals; "
                               "pass signal_names to name the columns")
        return np.arange(n_cols, dtype=np.int64)
    names = list(signal_names)
    if len(names) != n_cols:
        raise ScoringError(f"signal_names has {len(names)} names for {n_cols} columns")
    where: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in where:
            raise ScoringError(f"signal_names: \"{name}\" names two columns ({where[name]} and {i})")
        where[name] = i
    return np.array([where.get(name, -1) for name in model.signal_names], dtype=np.int64)


def _as_matrix(matrix: Any) -> np.ndarray:
    X = np.asarray(matrix)
    if X.ndim != 2:
        raise ScoringError(f"expected a 2-D matrix (customers x signals), got {X.ndim} dimension(s)")
    if X.dtype != np.float64:
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)
                or X.dtype == np.bool_):
            raise ScoringError(f"expected a float64 matrix, got dtype {X.dtype}")
        X = X.astype(np.float64)
    if not (X.flags.c_contiguous or X.flags.f_contiguous):
        X = np.ascontiguousarray(X)
    return X


def _raise_bad(bad: np.ndarray, X: np.ndarray, cols: np.ndarray, model: ValueModel, row_offset: int) -> None:
    hits = np.flatnonzero(bad[:, 0] >= 0)
    if hits.size:
        row, j = int(bad[hits[0], 0]), int(bad[hits[0], 1])
        raise NonFiniteValueError(row + row_offset, model.signal_names[j], float(X[row, cols[j]]))


def _previous(previous_tiers: Any, n: int, n_tiers: int) -> np.ndarray | None:
    if previous_tiers is None:
        return None
    prev = np.asarray(previous_tiers)
    if prev.shape != (n,):
        raise ScoringError(f"previous_tiers: expected shape ({n},), got {prev.shape}")
    if prev.size and not np.issubdtype(prev.dtype, np.integer):
        raise ScoringError(f"previous_tiers: expected integer tier indices, got dtype {prev.dtype}")
    prev = prev.astype(np.int32, copy=False)
    if prev.size:
        bad = np.flatnonzero((prev < -1) | (prev >= n_tiers))
        if bad.size:
            raise ScoringError(f"previous_tiers[{int(bad[0])}] = {int(prev[bad[0]])}: "
                               f"a tier index is -1 (none) or 0..{n_tiers - 1}")
    return prev


def _threads() -> int:
    return max(1, numba.get_num_threads())


# --------------------------------------------------------------------------- fit
def fit(model: ValueModel, data: Any, signal_names: Sequence[str] | None = None) -> FittedModel:
    """Population statistics of ``model``'s normalisations over ``data``, in one pass.

    ``data`` is a float64 matrix (customers x signals) or an iterable of such
    chunks (each read once). Columns are in ``model.signal_names`` order
    unless ``signal_names`` names them; model signals without a column are
    all missing. NaN marks a missing value; +-inf raises NonFiniteValueError.
    """
    if isinstance(data, np.ndarray) or not isinstance(data, Iterable):
        chunks: Iterable[Any] = (data,)
    else:
        chunks = data
    I, F, _, _, _, _ = _model_arrays(model)
    n_sig = len(model.signals)
    pct_signals = [j for j, s in enumerate(model.signals) if s.effective_normalization == Normalization.PERCENTILE]
    pct_slot = np.full(n_sig, -1, dtype=np.int64)
    pct_slot[pct_signals] = np.arange(len(pct_signals))
    acc = np.zeros((n_sig, K.N_STATS))
    acc[:, K.STAT_MIN], acc[:, K.STAT_MAX] = np.inf, -np.inf
    pct_parts: list[list[np.ndarray]] = [[] for _ in pct_signals]
    n_rows = 0
    for chunk in chunks:
        X = _as_matrix(chunk)
        cols = _columns(model, X.shape[1], signal_names)
        n = X.shape[0]
        n_blocks = (n + K.FIT_BLOCK - 1) // K.FIT_BLOCK
        stats = np.empty((n_blocks, n_sig, K.N_STATS))
        pct_out = np.empty((n, len(pct_signals)))
        bad = np.full((max(n_blocks, 1), 2), -1, dtype=np.int64)
        if n >= PARALLEL_MIN_ROWS:
            with PARALLEL_LOCK:
                K.fit_parallel(X, cols, I, F, pct_slot, stats, pct_out, bad)
        elif n:
            K.fit_serial(X, cols, I, F, pct_slot, stats, pct_out, bad)
        _raise_bad(bad, X, cols, model, n_rows)
        part = np.zeros((n_sig, K.N_STATS))
        part[:, K.STAT_MIN], part[:, K.STAT_MAX] = np.inf, -np.inf
        K.merge_blocks(stats, part)
        K.merge_blocks(part[None], acc)
        for slot in range(len(pct_signals)):
            column = pct_out[:, slot]
            pct_parts[slot].append(column[~np.isnan(column)])
        n_rows += n
    values, counts, offsets = [], [], [0]
    for j in range(n_sig):
        if pct_slot[j] >= 0:
            parts = pct_parts[pct_slot[j]]
            v, c = np.unique(np.concatenate(parts) if parts else np.zeros(0), return_counts=True)
            values.append(v)
            counts.append(c)
            offsets.append(offsets[-1] + len(v))
        else:
            offsets.append(offsets[-1])
    return FittedModel(
        model, n_rows, acc,
        np.concatenate(values).astype(np.float64) if values else np.zeros(0),
        np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
    )


# --------------------------------------------------------------------------- score
@dataclass(frozen=True, eq=False)
class ScoreResult:
    """Scores of a population.

    ``dimensions`` (n, n_dims) float64 on 0..100, NaN where a dimension is
    missing, columns in model order (``dimension_names``); ``composite`` (n,)
    0..100, NaN only when no weighted dimension is present; ``tier`` (n,)
    int32, 0 = best tier (``tier_ids``); ``tier_thresholds``: the composite
    cutoffs used (tier k takes composites >= tier_thresholds[k] not taken by a
    better tier; +inf for an empty tier); ``rank`` (n,) int64, 1 = highest
    composite, ties by row order, NaN composites last; ``percentile`` (n,)
    float64 in 0..100: 100 x (customers scored strictly below + half of those
    with an equal composite, itself included) / customers with a composite,
    NaN for a NaN composite. ``rank``/``percentile`` are None unless asked for.
    """

    dimensions: np.ndarray
    composite: np.ndarray
    tier: np.ndarray
    tier_thresholds: np.ndarray
    dimension_names: tuple[str, ...]
    tier_ids: tuple[str, ...]
    rank: np.ndarray | None = None
    percentile: np.ndarray | None = None

    def tier_counts(self) -> dict[str, int]:
        counts = np.bincount(self.tier, minlength=len(self.tier_ids)) if self.tier.size else np.zeros(len(self.tier_ids), int)
        return {tid: int(c) for tid, c in zip(self.tier_ids, counts)}


def _dimension_names(model: ValueModel) -> tuple[str, ...]:
    return tuple(enum_json_name(d.dimension) for d in model.dimensions)


def _score_arrays(fitted: FittedModel, X: np.ndarray, cols: np.ndarray, row_offset: int = 0):
    I, F, tables, D_int, D_float, w_sig, w_val = fitted._packed
    n = X.shape[0]
    dims = np.empty((n, D_int.shape[0]))
    comp = np.empty(n)
    bad = np.full((n + K.SCORE_BLOCK - 1) // K.SCORE_BLOCK, -1, dtype=np.int64)
    if n >= PARALLEL_MIN_ROWS:
        with PARALLEL_LOCK:
            K.score_parallel(X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad)
    elif n:
        K.score_serial(X, cols, I, F, tables, D_int, D_float, w_sig, w_val, dims, comp, bad)
    rows = bad[bad >= 0]
    if rows.size:
        row = int(rows[0])
        j = next(j for j in range(len(cols)) if cols[j] >= 0 and np.isinf(X[row, cols[j]]))
        raise NonFiniteValueError(row + row_offset, fitted.model.signal_names[j], float(X[row, cols[j]]))
    return dims, comp


def _thresholds(fitted: FittedModel, comp: np.ndarray) -> np.ndarray:
    if fitted.tier_thresholds is not None:
        return fitted.tier_thresholds
    fixed = model_thresholds(fitted.model)
    if fixed is not None:
        return fixed
    return population_thresholds(comp, [t.population_percent for t in fitted.model.tiers[:-1]])


def _finish(fitted: FittedModel, dims, comp, prev, with_rank: bool) -> ScoreResult:
    model = fitted.model
    thresholds = _thresholds(fitted, comp)
    tier = assign_tiers(comp, thresholds, prev, model.hysteresis_points)
    rank = percentile = None
    if with_rank:
        rank, percentile = rank_composites(comp)
    return ScoreResult(dims, comp, tier, thresholds, _dimension_names(model), model.tier_ids, rank, percentile)


def score(fitted: FittedModel, matrix: Any, previous_tiers: Any = None, with_rank: bool = False,
          signal_names: Sequence[str] | None = None) -> ScoreResult:
    """Dimension scores, composite and tier of every row (and rank and percentile if ``with_rank``).

    ``previous_tiers`` (n,) int: each customer's tier of the previous run (-1
    for none) for the hysteresis band. Tier cutoffs: the fitted model's frozen
    ones if set, else the model's min_composite thresholds, else (share tiers)
    the cutoffs of this population (returned in ``tier_thresholds``).
    """
    X = _as_matrix(matrix)
    cols = _columns(fitted.model, X.shape[1], signal_names)
    prev = _previous(previous_tiers, X.shape[0], len(fitted.model.tiers))
    dims, comp = _score_arrays(fitted, X, cols)
    return _finish(fitted, dims, comp, prev, with_rank)


def score_chunks(fitted: FittedModel, chunks: Iterable[Any], previous_tiers: Any = None, with_rank: bool = False,
                 signal_names: Sequence[str] | None = None) -> ScoreResult:
    """:func:`score` over an iterable of row chunks (each read once); equal to scoring their concatenation.

    Working memory beyond the outputs is bounded by one chunk.
    """
    dim_parts, comp_parts = [], []
    n = 0
    for chunk in chunks:
        X = _as_matrix(chunk)
        cols = _columns(fitted.model, X.shape[1], signal_names)
        dims, comp = _score_arrays(fitted, X, cols, n)
        dim_parts.append(dims)
        comp_parts.append(comp)
        n += X.shape[0]
    n_dims = len(fitted.model.dimensions)
    dims = np.concatenate(dim_parts) if dim_parts else np.empty((0, n_dims))
    comp = np.concatenate(comp_parts) if comp_parts else np.empty(0)
    del dim_parts, comp_parts
    prev = _previous(previous_tiers, n, len(fitted.model.tiers))
    return _finish(fitted, dims, comp, prev, with_rank)


def iter_score_chunks(fitted: FittedModel, chunks: Iterable[Any], previous_tiers: Iterable[Any] | None = None,
                      signal_names: Sequence[str] | None = None) -> Iterator[ScoreResult]:
    """One ScoreResult per chunk, in memory bounded by the chunk: for streaming.

    Needs cutoffs that do not depend on the population: min_composite tiers
    or a fitted model frozen with :meth:`FittedModel.with_tier_thresholds`.
    ``previous_tiers``, if given, yields one array per chunk.
    """
    fixed = fitted.tier_thresholds if fitted.tier_thresholds is not None else model_thresholds(fitted.model)
    if fixed is None:
        raise ScoringError("the model's tiers are population shares: freeze the fitted model with the cutoffs "
                           "of a scored population (FittedModel.with_tier_thresholds) to score chunk by chunk")
    prev_iter = iter(previous_tiers) if previous_tiers is not None else None
    n = 0
    for chunk in chunks:
        X = _as_matrix(chunk)
        cols = _columns(fitted.model, X.shape[1], signal_names)
        prev = None
        if prev_iter is not None:
            prev = _previous(next(prev_iter, None), X.shape[0], len(fitted.model.tiers))
        dims, comp = _score_arrays(fitted, X, cols, n)
        n += X.shape[0]
        tier = assign_tiers(comp, fixed, prev, fitted.model.hysteresis_points)
        yield ScoreResult(dims, comp, tier, fixed, _dimension_names(fitted.model), fitted.model.tier_ids)


# --------------------------------------------------------------------------- tiers, cutoffs, ranks
def assign_tiers(composite: np.ndarray, thresholds: np.ndarray, previous_tiers: np.ndarray | None = None,
                 hysteresis_points: float = 0.0) -> np.ndarray:
    """Tier index (0 = best) of each composite under ``thresholds`` (non-increasing, one per tier but the floor).

    Without a previous tier (None or -1) a customer takes the first tier whose
    threshold it reaches. With previous tier p it keeps p while
    ``thresholds[p] - band <= composite <= thresholds[p-1] + band`` (bounds
    beyond the best tier and below the floor are infinite), i.e. it moves only
    when it crosses a boundary of its tier by more than the band. NaN -> floor.
    """
    comp = np.ascontiguousarray(composite, dtype=np.float64)
    thr = np.ascontiguousarray(thresholds, dtype=np.float64)
    n = comp.shape[0]
    if previous_tiers is not None:
        prev = _previous(previous_tiers, n, thr.shape[0] + 1)
        use = True
    else:
        prev, use = np.zeros(1, dtype=np.int32), False
    out = np.empty(n, dtype=np.int32)
    band = float(hysteresis_points)
    if n >= PARALLEL_MIN_ROWS:
        with PARALLEL_LOCK:
            K.tiers_parallel(comp, thr, prev, use, band, out)
    elif n:
        K.tiers_serial(comp, thr, prev, use, band, out)
    return out


def share_counts(percents: Sequence[float], n_valid: int) -> list[int]:
    """For share tiers: how many of ``n_valid`` customers the tiers down to each one may hold
    (floor of the cumulative share; 1e-9 absorbs the float error of summing percentages)."""
    out, total = [], 0.0
    for p in percents:
        total += p
        out.append(min(n_valid, int(math.floor(total * n_valid / 100.0 + 1e-9))))
    return out


def population_thresholds(composite: np.ndarray, percents: Sequence[float]) -> np.ndarray:
    """Composite cutoffs of share tiers over a population (NaN composites do not count).

    With N customers with a composite and m_k = share_counts(...)[k], tier k
    and better hold every customer whose composite is strictly greater than
    that of the (m_k + 1)-th best; its cutoff is the smallest such composite
    (+inf if none). Ties are never split, so a tier holds at most its share.
    """
    comp = np.ascontiguousarray(composite, dtype=np.float64)
    n = comp.shape[0]
    if n < PARALLEL_MIN_ROWS:
        valid = np.sort(comp[~np.isnan(comp)])[::-1]
        return _cutoffs_from_sorted(valid, share_counts(percents, valid.shape[0]))
    parts = _threads()
    ranges = np.empty((parts, 3))
    with PARALLEL_LOCK:
        K.part_ranges(comp, parts, ranges)
    n_valid = int(ranges[:, 0].sum())
    counts = share_counts(percents, n_valid)
    if n_valid == 0:
        return np.full(len(counts), np.inf)
    lo, hi = float(ranges[:, 1].min()), float(ranges[:, 2].max())
    n_bins = SHARE_BINS
    scale = bin_scale(lo, hi, n_bins)
    hist = np.empty((parts, n_bins), dtype=np.int64)
    with PARALLEL_LOCK:
        K.part_histograms(comp, lo, scale, hist)
    per_bin = hist.sum(axis=0)
    wanted_bins = cut_bins(per_bin, counts, n_valid)
    wanted = np.full(n_bins, -1, dtype=np.int64)
    wanted[wanted_bins] = np.arange(len(wanted_bins))
    sizes = per_bin[wanted_bins]
    starts = np.concatenate(([0], np.cumsum(sizes)))
    offsets = (np.cumsum(hist[:, wanted_bins], axis=0) - hist[:, wanted_bins] + starts[:-1]).astype(np.int64)
    gathered = np.empty(int(starts[-1]))
    with PARALLEL_LOCK:
        K.gather_bins(comp, lo, scale, n_bins, wanted, np.ascontiguousarray(offsets), gathered)
    in_bin = {b: gathered[starts[w]:starts[w + 1]] for w, b in enumerate(wanted_bins)}
    return cutoffs_in_bins(per_bin, counts, n_valid, lo, in_bin)


def bin_scale(lo: float, hi: float, n_bins: int) -> float:
    """Bins per composite point of a histogram over [lo, hi] (0: everything in one bin)."""
    scale = n_bins / (hi - lo) if hi > lo else 0.0
    return scale if math.isfinite(scale) else 0.0


SHARE_BINS = 65536  # histogram bins of the share cut-offs: only the composites of a few bins are then sorted


def cut_bins(per_bin: np.ndarray, counts: Sequence[int], n_valid: int) -> list[int]:
    """The (descending) histogram bins whose composites the share cut-offs need: for each cut, the bin of the
    (m + 1)-th best and the nearest non-empty better bin."""
    cum = np.cumsum(per_bin)  # customers in descending bins 0..b
    wanted_bins: set[int] = set()
    for m in counts:
        if m < n_valid:
            b = int(np.searchsorted(cum, m + 1))
            wanted_bins.add(b)
            better = np.flatnonzero(per_bin[:b])
            if better.size:
                wanted_bins.add(int(better[-1]))
    return sorted(wanted_bins)


def cutoffs_in_bins(per_bin: np.ndarray, counts: Sequence[int], n_valid: int, lo: float,
                    in_bin: Mapping[int, np.ndarray]) -> np.ndarray:
    """Exact share cut-offs from the histogram ``per_bin`` and the composites ``in_bin[b]`` (any order) of the
    bins :func:`cut_bins` named; ``lo`` is the lowest composite. Shared by the in-process and Dask engines."""
    cum = np.cumsum(per_bin)
    out = np.empty(len(counts))
    for k, m in enumerate(counts):
        if m >= n_valid:
            out[k] = lo
            continue
        b = int(np.searchsorted(cum, m + 1))
        before = int(cum[b - 1]) if b > 0 else 0
        values = np.sort(in_bin[b])[::-1]
        v = values[m - before]  # the (m+1)-th best
        above = values[values > v]
        if above.size:
            out[k] = above.min()
        else:
            better = np.flatnonzero(per_bin[:b])
            out[k] = in_bin[int(better[-1])].min() if better.size else np.inf
    return out


def _cutoffs_from_sorted(desc: np.ndarray, counts: list[int]) -> np.ndarray:
    out = np.empty(len(counts))
    n_valid = desc.shape[0]
    for k, m in enumerate(counts):
        if m >= n_valid:
            out[k] = desc[-1] if n_valid else np.inf
        else:
            above = desc[:m][desc[:m] > desc[m]]
            out[k] = above.min() if above.size else np.inf
    return out


def rank_composites(composite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact rank (int64, 1 = highest, ties by row order, NaN last) and percentile (see ScoreResult)."""
    comp = np.ascontiguousarray(composite, dtype=np.float64)
    n = comp.shape[0]
    rank = np.empty(n, dtype=np.int64)
    percentile = np.empty(n)
    if n < PARALLEL_MIN_ROWS:
        if n:
            K.rank_serial(comp, rank, percentile)
        return rank, percentile
    parts = _threads()
    ranges = np.empty((parts, 3))
    with PARALLEL_LOCK:
        K.part_ranges(comp, parts, ranges)
    valid_per_part = ranges[:, 0].astype(np.int64)
    n_valid = int(valid_per_part.sum())
    bounds = np.array([n * p // parts for p in range(parts + 1)], dtype=np.int64)
    nan_per_part = np.diff(bounds) - valid_per_part
    nan_offsets = (n_valid + np.cumsum(nan_per_part) - nan_per_part).astype(np.int64)
    lo = float(ranges[:, 1].min()) if n_valid else 0.0
    hi = float(ranges[:, 2].max()) if n_valid else 0.0
    n_bins = max(1, n_valid // 16)
    scale = n_bins / (hi - lo) if hi > lo else 0.0
    if not math.isfinite(scale):
        scale = 0.0
    hist = np.empty((parts, n_bins), dtype=np.int64)
    keys = np.empty(n_valid)
    order = np.empty(n, dtype=np.int64)
    with PARALLEL_LOCK:
        K.part_histograms(comp, lo, scale, hist)
        per_bin = hist.sum(axis=0)
        bin_start = np.zeros(n_bins + 1, dtype=np.int64)
        np.cumsum(per_bin, out=bin_start[1:])
        offsets = np.cumsum(hist, axis=0)
        offsets -= hist
        offsets += bin_start[:-1]
        del hist
        K.scatter_by_bin(comp, lo, scale, offsets, nan_offsets, keys, order)
        del offsets
        n_work = 8 * parts
        targets = np.array([n_valid * q // n_work for q in range(n_work + 1)], dtype=np.int64)
        part_bins = np.searchsorted(bin_start, targets, side="left").astype(np.int64)
        part_bins[0], part_bins[-1] = 0, n_bins
        part_bins = np.maximum.accumulate(np.minimum(part_bins, n_bins))
        K.rank_bins(keys, order, bin_start, part_bins, n_valid, rank, percentile)
    if n_valid < n:
        tail = order[n_valid:]
        rank[tail] = np.arange(n_valid + 1, n + 1)
        percentile[tail] = np.nan
    return rank, percentile


# --------------------------------------------------------------------------- one customer
class CustomerScore(NamedTuple):
    """One customer's scores: ``dimensions`` (n_dims,) 0..100 / NaN, ``composite``, ``tier`` (0 = best)."""

    dimensions: np.ndarray
    composite: float
    tier: int


def _values_of(fitted: FittedModel, values: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
    names = fitted.model.signal_names
    if isinstance(values, Mapping):
        get = values.get
        try:
            return np.array([get(name, math.nan) for name in names], dtype=np.float64)
        except (TypeError, ValueError):
            x = np.empty(len(names))
            for j, name in enumerate(names):
                v = get(name)
                try:
                    x[j] = math.nan if v is None else float(v)
                except (TypeError, ValueError):
                    raise ScoringError(f"signal {name}: {v!r} is not a number") from None
            return x
    x = np.asarray(values, dtype=np.float64)
    if x.shape != (len(names),):
        raise ScoringError(f"expected {len(names)} values in model signal order, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _one(fitted: FittedModel, values, previous_tier: int):
    I, F, tables, D_int, D_float, w_sig, w_val, thresholds = fitted._one_call
    if thresholds is None:
        raise ScoringError("the model's tiers are population shares: freeze the fitted model with the cutoffs of a "
                           "completed run (FittedModel.with_tier_thresholds) to score single customers")
    if not -1 <= previous_tier < len(fitted.model.tiers):
        raise ScoringError(f"previous_tier {previous_tier}: a tier index is -1 (none) or 0..{len(fitted.model.tiers) - 1}")
    x = _values_of(fitted, values)
    vals = np.empty(I.shape[0])
    dims = np.empty((1, D_int.shape[0]))
    comp, tier, bad = K.score_one(x, I, F, tables, D_int, D_float, w_sig, w_val, thresholds, previous_tier,
                                  fitted.model.hysteresis_points, vals, dims)
    if bad:
        j = int(np.flatnonzero(np.isinf(x))[0])
        raise NonFiniteValueError(0, fitted.model.signal_names[j], float(x[j]))
    return x, vals, dims[0], comp, tier


def score_one(fitted: FittedModel, values: Mapping[str, float] | Sequence[float] | np.ndarray,
              previous_tier: int = -1) -> CustomerScore:
    """Scores one customer without the parallel machinery (identical to its row of :func:`score`).

    ``values``: a mapping signal name -> value (absent or None: missing;
    other keys ignored) or a 1-D array in ``model.signal_names`` order.
    Share tiers need frozen cutoffs (:meth:`FittedModel.with_tier_thresholds`).
    """
    _, _, dims, comp, tier = _one(fitted, values, previous_tier)
    return CustomerScore(dims, comp, tier)


@dataclass(frozen=True)
class SignalContribution:
    """How one weighted signal feeds one dimension and the composite.

    ``normalized`` is the signal's 0..1 value after its direction (the fixed
    ``missing_value`` when ``imputed``, NaN when missing and ignored);
    ``weight_share`` its share of the weights the dimension used;
    ``dimension_points`` = 100 x normalized x weight_share (they sum to the
    dimension score); ``composite_points`` = dimension_points x the
    dimension's composite weight share (they sum to the composite).
    """

    signal: str
    dimension: str
    value: float
    transformed: float
    normalized: float
    imputed: bool
    weight_share: float
    dimension_points: float
    composite_points: float


@dataclass(frozen=True)
class DimensionContribution:
    """A dimension's score (0..100, NaN if missing), the share of its signal weight observed,
    its share of the composite weight and its points in the composite (they sum to the composite)."""

    dimension: str
    score: float
    coverage: float
    composite_weight_share: float
    composite_points: float


@dataclass(frozen=True)
class Explanation:
    """Why a customer stands where it does (see :func:`explain`)."""

    composite: float
    tier: int
    tier_id: str
    dimensions: tuple[DimensionContribution, ...]
    signals: tuple[SignalContribution, ...]
    # predicted_ltv, p_alive, expected_purchases as derived by a lifetime-value fit (those that could be).
    derived_signals: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v
        return {
            "composite": clean(self.composite), "tier": self.tier, "tier_id": self.tier_id,
            "derived_signals": dict(self.derived_signals),
            "dimensions": [{k: clean(v) for k, v in d.__dict__.items()} for d in self.dimensions],
            "signals": [{k: clean(v) for k, v in s.__dict__.items()} for s in self.signals],
        }


def explain(fitted: FittedModel, values: Mapping[str, float] | Sequence[float] | np.ndarray,
            previous_tier: int = -1, lifetime_value: Any = None) -> Explanation:
    """Each signal's normalised value and contribution to its dimensions and to the composite,
    and each dimension's contribution to the composite, for one customer (as :func:`score_one`).

    ``lifetime_value``: for a model with a lifetime-value block, the run's
    ``lifetime_value.PopulationFit``; the signals it derives from the purchase
    signals in ``values`` (a mapping) are then scored and listed in ``derived_signals``."""
    derived: dict[str, float] = {}
    if lifetime_value is not None and fitted.model.lifetime_value is not None and isinstance(values, Mapping):
        from .lifetime_value import with_derived_values

        values, derived = with_derived_values(fitted.model, lifetime_value, values)
    x, vals, dims, comp, tier = _one(fitted, values, previous_tier)
    model = fitted.model
    names = _dimension_names(model)
    index = model.signal_index
    present_cw = sum(d.composite_weight for d, s in zip(model.dimensions, dims) if not math.isnan(s))
    dim_rows, sig_rows = [], []
    for d, (dim, s) in enumerate(zip(model.dimensions, dims)):
        cw_share = dim.composite_weight / present_cw if present_cw > 0 and not math.isnan(s) else 0.0
        left_out = fitted.left_out[d]
        total = sum(w.weight for w in dim.weights if w.signal not in left_out)
        present = sum(w.weight for w in dim.weights if not math.isnan(vals[index[w.signal]]))
        fixed = dim.effective_missing_policy == MissingPolicy.FIXED_VALUE
        used = total if fixed else present
        dim_rows.append(DimensionContribution(names[d], float(s), present / total if total else 0.0, cw_share,
                                              0.0 if math.isnan(s) else float(s) * cw_share))
        for w in dim.weights:
            j = index[w.signal]
            v = float(vals[j])
            imputed = math.isnan(v) and fixed and w.signal not in left_out
            if imputed:
                v = dim.missing_value
            share = w.weight / used if used > 0 and not math.isnan(v) and not math.isnan(s) else 0.0
            points = 100.0 * v * share if share else 0.0
            sig_rows.append(SignalContribution(w.signal, names[d], float(x[j]), _transformed(model.signals[j], x[j]),
                                               v, imputed, share, points, points * cw_share))
    return Explanation(float(comp), int(tier), model.tier_ids[tier], tuple(dim_rows), tuple(sig_rows), derived)


def _transformed(spec, x: float) -> float:
    if math.isnan(x):
        return math.nan
    kind = spec.effective_transform
    if kind == Transform.LOG1P:
        return math.log1p(max(x, 0.0))
    if kind == Transform.CLIP:
        lo = -math.inf if spec.clip_min is None else spec.clip_min
        hi = math.inf if spec.clip_max is None else spec.clip_max
        return min(max(x, lo), hi)
    return float(x)


# --------------------------------------------------------------------------- warm-up
def warm_up() -> float:
    """Compiles (or loads from cache) every kernel on tiny inputs; returns the seconds it took.

    Servers call it at start-up so that no request pays the compile cost.
    """
    import time

    from .model import default_model

    start = time.perf_counter()
    model = default_model()
    rng = np.random.default_rng(0)
    for n in (8, PARALLEL_MIN_ROWS):
        X = rng.random((n, len(model.signals)))
        X[::5, 3] = np.nan
        # Numba compiles a kernel apart for read-only arrays, which is what np.frombuffer gives (a columnar
        # chunk from the wire): without this, the first such batch paid seconds of compiling.
        read_only = X.copy()
        read_only.flags.writeable = False
        for matrix in (X, read_only):
            fitted = fit(model, matrix)
            result = score(fitted, matrix, previous_tiers=np.zeros(n, dtype=np.int32), with_rank=True)
            frozen = fitted.with_tier_thresholds(result.tier_thresholds)
            score(frozen, matrix)
            score_one(frozen, matrix[0])
    return time.perf_counter() - start
