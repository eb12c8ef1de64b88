"""Fit and score a Dask collection with the engine's own kernels, one task per partition.

Needs the ``dask`` extra (``pip install 'cvh[dask]'``): dask, distributed and pandas. Only ``cvh batch score``
(``clients/batch.py``) imports this module.

Input: a ``dask.dataframe`` (say ``dd.read_parquet`` of a ``cvh export`` folder: signal columns by name,
other columns ignored, a model signal without a column is all missing, nulls are missing values) or a 2-D
``dask.array`` (columns in ``model.signal_names`` order unless ``signal_names`` names them; row chunks are
the partitions). Partitions of ~100 MB (about a million customers x 16 signals) keep each task well above
Dask's overhead.

What equals the single-process engine, and how closely
------------------------------------------------------
* ``fit``: per partition ``engine.fit``; partitions merged up a tree (``split_every`` at a time). Counts,
  minima, maxima and the percentile tables (distinct values with their counts, merged exactly) equal the
  single-process fit bit for bit. Means and squared deviations (M2) merge by Chan's pairwise formula, as the
  engine merges its row blocks; a different merge order rounds differently, so they agree to a relative
  ``MEAN_STD_RTOL`` (1e-12).
* ``score`` given one fitted model: dimension scores and composites are bit-identical to ``engine.score``
  (the kernels are row-wise). Share-tier cut-offs are exact: a 65,536-bin histogram of the composites is
  summed up the tree, then only the composites of the few bins holding a cut are gathered, and the cut-offs
  come from the same function the in-process engine uses. Tiers (with hysteresis) are then exact. Ranks and
  percentiles are exact too: a sort partitioned on value ranges (a merged histogram cuts the composites
  into one range per partition, each range is ranked by the engine's own bucket sort with ties by row, and
  the ranks go back to their partitions: each composite moves out once and its rank and percentile back
  once, a task holds about one partition).
* End to end (fit and score on Dask against fit and score in one process): the 1e-12 of a z-score signal's
  mean and std moves a composite by at most ``COMPOSITE_ATOL`` (1e-9 points); tiers and ranks are the same
  except for customers whose composites lie within that of a cut-off or of each other.

Worker memory
-------------
What stays on the workers for the whole base is small and stated: each customer's composite (8 bytes) while
cut-offs and ranks are worked out, and, with ranks, its rank and percentile (16 bytes), both held for as long
as the :class:`DistributedScores` is; transiently the rank sort's pieces (another 8 + 16 bytes a customer,
released as the ranges are sorted). Everything else is one partition per task: the signals are read per
task, fit statistics merge up a tree, and the dimension scores are not kept but scored again, partition by
partition, where they are used (``cvh batch score`` writes them out with the rest, from the one read of the
partition that gives the customer ids). A caller that keeps every result anyway passes ``hold_dimensions``:
the dimension scores of the one scoring pass are then held beside the composites (8 bytes a customer per
dimension more) and nothing is read or scored again. 50,000,000 customers on two workers thus hold about
0.6 GB each for the whole base, next to one partition's work
(``python -m benchmarks.distributed --customers 50m --write-results --skip-in-process``).

Workers: register :class:`ScoringWorker` (``scoring_client`` does) so that each worker process keeps its
Numba cache in a folder of its own (seeded from the installed cache, so it loads rather than compiles),
compiles or loads every kernel once at start, and runs Numba with ``cores // dask threads`` threads, so
Dask threads x Numba threads never exceed the worker's cores. The LocalCluster of ``scoring_client`` starts
its workers with :data:`WORKER_MALLOC_ENV`, so that tasks reuse freed memory rather than fault it in again.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numba
import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from . import _kernels as K
from . import engine
from ._config import PARALLEL_LOCK, use_cache_dir
from .engine import FittedModel, NonFiniteValueError, ScoreResult, ScoringError, model_thresholds
from .model import Normalization, ValueModel

__all__ = ["COMPOSITE_ATOL", "MEAN_STD_RTOL", "DistributedScores", "ScoringWorker", "fit", "scoring_client",
           "score", "showing_progress"]

MEAN_STD_RTOL = 1e-12   # fitted mean and std against the single-process fit (relative)
COMPOSITE_ATOL = 1e-9   # composites and dimension scores against the single-process engine (points)
SPLIT_EVERY = 8         # partial results merged per task up the reduction tree

_THREAD_BUDGET = 0      # Numba threads per task on this worker (0: Numba's default); set by ScoringWorker


# --------------------------------------------------------------------------- workers
class ScoringWorker(WorkerPlugin):
    """Per worker process: a Numba cache folder of its own, every kernel compiled (or loaded) once at start,
    and a thread budget of ``cores // threads`` Numba threads per Dask thread.

    ``cores``: the worker's cores (default: those the process may run on); ``cache_root``: where the
    per-worker cache folders go (default ``$NUMBA_CACHE_DIR``, else the temporary folder).
    """

    name = "cvh-scoring-worker"

    def __init__(self, cores: int | None = None, cache_root: str | None = None) -> None:
        self.cores, self.cache_root = cores, cache_root

    def setup(self, worker) -> None:
        global _THREAD_BUDGET
        cores = self.cores or len(os.sched_getaffinity(0))
        _THREAD_BUDGET = max(1, cores // max(1, worker.state.nthreads))
        root = self.cache_root or os.environ.get("NUMBA_CACHE_DIR") or os.path.join(tempfile.gettempdir(),
                                                                                     "cvh-numba")
        use_cache_dir(os.path.join(root, "worker-" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(worker.name))))
        _apply_thread_budget()
        engine.warm_up()
        with contextlib.suppress(ImportError):  # what reads a frame's partitions, imported at start, not by a task
            import dask.dataframe  # noqa: F401
            import pyarrow.parquet  # noqa: F401


def _apply_thread_budget() -> int:
    """Numba's thread count is per calling thread: each task sets it before running a kernel."""
    if _THREAD_BUDGET:
        numba.set_num_threads(min(_THREAD_BUDGET, numba.config.NUMBA_NUM_THREADS))
    return numba.get_num_threads()


# glibc settings for worker processes, set before they start (``distributed.nanny.pre-spawn-environ``). Dask's own
# MALLOC_TRIM_THRESHOLD_ of 64 KiB hands every freed array back to the system and also turns off glibc's rising
# mmap threshold, so each task's arrays of 128 KiB and more are new mappings, faulted in page by page again
# (a fifth to a third of the workers' CPU here). Arrays below 4 MiB are taken from the heap instead, and up to
# 128 MiB freed at its top are kept for the next task; larger arrays stay mappings of their own (NumPy asks huge
# pages for them, so they fault in cheaply) and go back to the system when freed, so what is held between
# passes does not pin a fragmented heap: a 32 MiB threshold cost 30 % more peak memory at 50,000,000 customers.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def scoring_client(address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
                   cache_root: str | None = None):
    """A ``distributed.Client`` with :class:`ScoringWorker` registered: on the scheduler at ``address``, or
    on a new LocalCluster of ``n_workers`` processes on 127.0.0.1 that share this machine's cores, started
    with :data:`WORKER_MALLOC_ENV` (a cluster of one's own takes the same in its nannies' pre-spawn-environ)."""
    from distributed import Client, LocalCluster

    if address:
        client = Client(address)
        cores = None
    else:
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}), **WORKER_MALLOC_ENV}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                                   host="127.0.0.1", dashboard_address=None, scheduler_port=0)
        client = Client(cluster)
        cores = max(1, len(os.sched_getaffinity(0)) // n_workers)
    client.register_plugin(ScoringWorker(cores, cache_root))
    return client


# --------------------------------------------------------------------------- partitions
def _partitions(model: ValueModel, data: Any, signal_names: Sequence[str] | None):
    """(delayed partitions, columns to take from a frame or None, the names of the matrix columns)."""
    if hasattr(data, "to_delayed") and hasattr(data, "columns"):  # a dask dataframe
        wanted = set(model.signal_names)
        columns = [c for c in data.columns if c in wanted]
        return list(data.to_delayed()), columns, columns
    if isinstance(data, da.Array):
        if data.ndim != 2:
            raise ScoringError(f"expected a 2-D dask array (customers x signals), got {data.ndim} dimension(s)")
        blocks = data.rechunk({1: -1}).to_delayed()
        return list(blocks[:, 0]), None, signal_names
    raise ScoringError(f"expected a dask dataframe or a 2-D dask array, got {type(data).__name__}")


def _writable(array: Any, dtype=np.float64) -> np.ndarray:
    """C-ordered and writable, as the kernels were compiled for: pandas hands out column-major blocks and
    arrays that arrive from another worker are read-only, and Numba would compile every kernel again for
    either (seconds per worker process); a copy of one partition costs far less."""
    return np.require(array, dtype=dtype, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def _matrix(part: Any, columns: list[str] | None) -> np.ndarray:
    if columns is not None:
        part = part[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    return _writable(part)


_PROGRESS: contextvars.ContextVar[Callable[[list, str], None] | None] = contextvars.ContextVar("progress",
                                                                                               default=None)


@contextlib.contextmanager
def showing_progress(show: Callable[[list, str], None]):
    """Within the block, each computation this module starts on the distributed client is handed to
    ``show(futures, label)`` (label: "fit", "score", "summaries", "histogram", "tier cut-offs", "ranks") before
    its results are gathered, e.g. to draw ``distributed.progress(futures)``."""
    token = _PROGRESS.set(show)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _compute(*collections, label: str) -> tuple:
    """``dask.compute(*collections)``, shown by the progress callback of :func:`showing_progress` if any."""
    show = _PROGRESS.get()
    if show is None:
        return dask.compute(*collections)
    from distributed import get_client

    client = get_client()
    futures = client.compute(list(collections))
    show(futures, label)
    return tuple(client.gather(futures))


def _persist(objects: list, label: str) -> list:
    """``dask.persist(*objects)``, waited for (on a distributed client, persist only starts the work): what
    the result's arrays refer to is then held on the workers, and nothing started later runs in between."""
    persisted = list(dask.persist(*objects))
    try:
        from distributed import futures_of, wait
    except ImportError:  # pragma: no cover - the dask extra brings distributed
        return persisted
    futures = futures_of(persisted)
    if futures:
        show = _PROGRESS.get()
        if show is not None:
            show(futures, label)
        wait(futures)
    return persisted


def _tree(items: list, merge: Callable[[list], Any], split_every: int):
    """One delayed result: ``merge`` over ``split_every`` items at a time, partitions kept in order."""
    merge = dask.delayed(merge, pure=True)
    while len(items) > 1:
        items = [merge(items[i:i + split_every]) for i in range(0, len(items), split_every)]
    return items[0]


# --------------------------------------------------------------------------- fit
@dataclass
class _FitPart:
    """A partition's (or merged run of partitions') fit statistics, or its first non-finite value."""

    n_rows: int
    stats: np.ndarray | None
    pct: list[tuple[np.ndarray, np.ndarray]] | None  # per PERCENTILE signal: distinct values, counts
    bad: tuple[int, str, float] | None = None        # (row within these partitions, signal, value)


def _fit_part(part: Any, columns, model: ValueModel, names) -> _FitPart:
    _apply_thread_budget()
    X = _matrix(part, columns)
    try:
        fitted = engine.fit(model, X, names)
    except NonFiniteValueError as error:
        return _FitPart(X.shape[0], None, None, (error.row, error.signal, error.value))
    o = fitted.pct_offsets
    pct = [(fitted.pct_values[o[j]:o[j + 1]], fitted.pct_counts[o[j]:o[j + 1]])
           for j, s in enumerate(model.signals) if s.effective_normalization == Normalization.PERCENTILE]
    return _FitPart(fitted.n_rows, fitted.stats, pct)


def _merge_fits(parts: list[_FitPart]) -> _FitPart:
    acc = parts[0]
    for part in parts[1:]:
        n = acc.n_rows + part.n_rows
        if acc.bad is not None:
            acc = _FitPart(n, None, None, acc.bad)
        elif part.bad is not None:
            row, signal, value = part.bad
            acc = _FitPart(n, None, None, (acc.n_rows + row, signal, value))
        else:
            stats = acc.stats.copy()
            K.merge_blocks(part.stats[None], stats)  # Chan's pairwise update, as the engine merges blocks
            acc = _FitPart(n, stats, [_merge_table(a, b) for a, b in zip(acc.pct, part.pct)])
    return acc


def _merge_table(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]):
    """Two percentile tables (distinct values, counts) as one: exact."""
    values, where = np.unique(np.concatenate((a[0], b[0])), return_inverse=True)
    counts = np.zeros(values.shape[0], dtype=np.int64)
    np.add.at(counts, where, np.concatenate((a[1], b[1])))
    return values, counts


def fit(model: ValueModel, data: Any, signal_names: Sequence[str] | None = None,
        split_every: int = SPLIT_EVERY) -> FittedModel:
    """:func:`scoring_engine.fit` over a Dask collection (see the module's notes for what is exact)."""
    parts, columns, names = _partitions(model, data, signal_names)
    if not parts:
        return engine.fit(model, np.empty((0, len(model.signals))))
    model_d = dask.delayed(model, pure=True)
    fitted = _compute(_tree([dask.delayed(_fit_part, pure=True)(p, columns, model_d, names) for p in parts],
                   _merge_fits, split_every), label="fit")[0]
    if fitted.bad is not None:
        raise NonFiniteValueError(*fitted.bad)
    offsets, values, counts = [0], [], []
    tables = iter(fitted.pct)
    for s in model.signals:
        if s.effective_normalization == Normalization.PERCENTILE:
            v, c = next(tables)
            values.append(v)
            counts.append(c)
        offsets.append(offsets[-1] + (len(values[-1]) if s.effective_normalization == Normalization.PERCENTILE
                                      else 0))
    return FittedModel(model, fitted.n_rows, fitted.stats,
                       np.concatenate(values).astype(np.float64) if values else np.zeros(0),
                       np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64),
                       np.array(offsets, dtype=np.int64))


# --------------------------------------------------------------------------- score
@dataclass(frozen=True, eq=False)
class DistributedScores:
    """Scores of a Dask collection, partitioned as the input: the fields of :class:`ScoreResult` as dask
    arrays (``tier_thresholds`` as a NumPy array); ``compute()`` gathers them into a ScoreResult."""

    dimensions: da.Array
    composite: da.Array
    tier: da.Array
    tier_thresholds: np.ndarray
    dimension_names: tuple[str, ...]
    tier_ids: tuple[str, ...]
    rank: da.Array | None = None
    percentile: da.Array | None = None
    persisted: tuple = ()  # the per-partition scores held on the workers: they live as long as this result

    def compute(self) -> ScoreResult:
        arrays = dask.compute(self.dimensions, self.composite, self.tier, self.rank, self.percentile)
        dims, comp, tier, rank, pct = arrays
        return ScoreResult(dims, comp, tier, self.tier_thresholds, self.dimension_names, self.tier_ids, rank, pct)


def _score_part(part: Any, columns, fitted: FittedModel, names, dimensions: bool = True):
    """(dimensions or None, composites, first non-finite value or None) of a partition. The per-partition
    scores that stay on the workers while cut-offs and ranks are worked out are the composites alone
    (``dimensions=False``); the dimensions are scored again where they are used (e.g. written out)."""
    _apply_thread_budget()
    X = engine._as_matrix(_matrix(part, columns))
    cols = engine._columns(fitted.model, X.shape[1], names)
    try:
        dims, comp = engine._score_arrays(fitted, X, cols)
    except NonFiniteValueError as error:
        n = X.shape[0]
        return (np.full((n, len(fitted.model.dimensions)), np.nan) if dimensions else None), np.full(n, np.nan), \
            (error.row, error.signal, error.value)
    return (dims if dimensions else None), comp, None


def _dimensions(part: Any, columns, fitted: FittedModel, names) -> np.ndarray:
    return _score_part(part, columns, fitted, names)[0]


def _summary(scored) -> tuple[int, int, float, float, tuple | None]:
    """(rows, composites present, lowest, highest, first non-finite value) of a scored partition."""
    comp = scored[1]
    present = comp[~np.isnan(comp)]
    lo, hi = (float(present.min()), float(present.max())) if present.size else (np.inf, -np.inf)
    return comp.shape[0], present.shape[0], lo, hi, scored[2]


def _histogram(comp: np.ndarray, lo: float, scale: float) -> np.ndarray:
    hist = np.empty((1, engine.SHARE_BINS), dtype=np.int64)
    with PARALLEL_LOCK:
        K.part_histograms(_writable(comp), lo, scale, hist)
    return hist[0]


def _sum(arrays: list) -> Any:
    total = arrays[0]
    for a in arrays[1:]:
        total = tuple(x + y for x, y in zip(total, a)) if isinstance(total, tuple) else total + a
    return total


def _gather(comp: np.ndarray, lo: float, scale: float, bins: list[int]) -> dict[int, np.ndarray]:
    """The composites of this partition in each of the (descending) histogram ``bins``."""
    _apply_thread_budget()
    comp = _writable(comp)
    hist = _histogram(comp, lo, scale)[None]
    sizes = hist[0, bins]
    starts = np.concatenate(([0], np.cumsum(sizes)))
    wanted = np.full(engine.SHARE_BINS, -1, dtype=np.int64)
    wanted[bins] = np.arange(len(bins))
    out = np.empty(int(starts[-1]))
    with PARALLEL_LOCK:
        K.gather_bins(comp, lo, scale, engine.SHARE_BINS, wanted, starts[:-1][None].astype(np.int64), out)
    return {b: out[starts[w]:starts[w + 1]] for w, b in enumerate(bins)}


@dataclass(frozen=True)
class _Histogram:
    """The composites of the whole base in SHARE_BINS descending bins over [lo, hi]: what the share cut-offs
    and the rank sort's value ranges both start from (worked out once, one pass over the held composites)."""

    n_valid: int
    lo: float
    scale: float
    per_bin: np.ndarray


def _composite_histogram(composites: list, summaries: list, split_every: int) -> _Histogram:
    n_valid = sum(s[1] for s in summaries)
    lo = min((s[2] for s in summaries), default=0.0) if n_valid else 0.0
    hi = max((s[3] for s in summaries), default=0.0) if n_valid else 0.0
    scale = engine.bin_scale(lo, hi, engine.SHARE_BINS)
    if not composites:
        return _Histogram(n_valid, lo, scale, np.zeros(engine.SHARE_BINS, dtype=np.int64))
    per_bin = _compute(_tree([dask.delayed(_histogram, pure=True)(c, lo, scale) for c in composites], _sum,
                             split_every), label="histogram")[0]
    return _Histogram(n_valid, lo, scale, per_bin)


def _share_thresholds(composites: list, histogram: _Histogram, percents: list[float]) -> np.ndarray:
    n_valid, lo, scale, per_bin = histogram.n_valid, histogram.lo, histogram.scale, histogram.per_bin
    counts = engine.share_counts(percents, n_valid)
    if n_valid == 0:
        return np.full(len(counts), np.inf)
    bins = engine.cut_bins(per_bin, counts, n_valid)
    gathered = _compute(*[dask.delayed(_gather, pure=True)(c, lo, scale, bins) for c in composites],
                        label="tier cut-offs")
    in_bin = {b: np.concatenate([g[b] for g in gathered]) for b in bins}
    return engine.cutoffs_in_bins(per_bin, counts, n_valid, lo, in_bin)


def _previous_part(prev: Any, n: int, n_tiers: int) -> np.ndarray | None:
    if prev is None:
        return None
    if hasattr(prev, "to_numpy"):  # a column of a frame; nulls (NA) as NaN
        prev = prev.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.asarray(prev)
    if values.dtype.kind == "f":  # a nullable column read as float: null is "no previous tier"
        values = np.where(np.isnan(values), -1, values).astype(np.int64)
    return engine._previous(values, n, n_tiers)


def _tiers(comp: np.ndarray, thresholds: np.ndarray, prev: Any, n_tiers: int, band: float) -> np.ndarray:
    _apply_thread_budget()
    comp = _writable(comp)
    prev = _previous_part(prev, comp.shape[0], n_tiers)
    return engine.assign_tiers(comp, thresholds, None if prev is None else _writable(prev, np.int32), band)


RANK_BINS = engine.SHARE_BINS  # the histogram's bins cut the composites into value ranges of about equal size


def _rank_bins(comp: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """Descending bin of each present composite (0 holds the highest): monotone, so equal composites
    share a bin and every bin's composites exceed those of the bins after it."""
    return RANK_BINS - 1 - np.minimum(((comp - lo) * scale).astype(np.int64), RANK_BINS - 1)


def _range_rows(comp: np.ndarray, lo: float, scale: float, range_of_bin: np.ndarray,
                n_ranges: int) -> tuple[np.ndarray, np.ndarray]:
    """This partition's present rows grouped by value range (rows ascending within a range), and where each
    range's rows start and end: (rows, bounds of n_ranges + 1)."""
    rows = np.flatnonzero(~np.isnan(comp))
    ranges = range_of_bin[_rank_bins(comp[rows], lo, scale)]
    if n_ranges <= np.iinfo(np.uint16).max:  # a stable sort of 16-bit keys is a radix sort: linear
        ranges = ranges.astype(np.uint16)
    order = np.argsort(ranges, kind="stable")
    return rows[order], np.searchsorted(ranges[order], np.arange(n_ranges + 1))


def _split_ranges(comp: np.ndarray, lo: float, scale: float, range_of_bin: np.ndarray, n_ranges: int) -> list:
    """This partition's present composites, one piece per value range, in row order within a piece (rows
    are not sent: the partition works them out again when the ranks come back)."""
    rows, bounds = _range_rows(comp, lo, scale, range_of_bin, n_ranges)
    values = comp[rows]
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _rank_range(pieces: list, ahead: int, n_valid: int) -> list:
    """Exact ranks and percentiles of one value range, as one (ranks, percentiles) piece per partition in the
    order of the partition's piece. ``pieces`` come in partition order, each in row order, and the engine's
    rank (its bucket sort) breaks ties by position, hence by row. ``ahead``: composites in the ranges above."""
    values = _writable(np.concatenate(pieces)) if pieces else np.zeros(0)
    _apply_thread_budget()
    local, _ = engine.rank_composites(values)  # 1 = the range's highest
    ordered = np.empty_like(values)
    ordered[local - 1] = values                # descending: a linear scatter, not a second sort
    new_run = np.concatenate(([True], ordered[1:] != ordered[:-1])) if values.size else np.zeros(0, bool)
    run_start = np.flatnonzero(new_run)
    run = np.cumsum(new_run) - 1
    a = ahead + run_start[run]                                             # rank - 1 of the run's first
    z = ahead + np.concatenate((run_start[1:], [values.size]))[run]        # past the run's last
    rank = ahead + local
    percentile = (100.0 * ((n_valid - z) + 0.5 * (z - a)) / n_valid)[local - 1]  # as the in-process kernels
    bounds = np.cumsum([0] + [p.shape[0] for p in pieces])
    return [(rank[x:y], percentile[x:y]) for x, y in zip(bounds[:-1], bounds[1:])]


def _ranks(comp: np.ndarray, pieces: list, lo: float, scale: float, range_of_bin: np.ndarray, nan_before: int,
           n_valid: int):
    """A partition's exact ranks (1 = best, ties by row order, missing composites last) and percentiles."""
    rank = np.empty(comp.shape[0], dtype=np.int64)
    percentile = np.full(comp.shape[0], np.nan)
    rows, bounds = _range_rows(comp, lo, scale, range_of_bin, len(pieces))
    for (ranks, percentiles), a, b in zip(pieces, bounds[:-1], bounds[1:]):
        rank[rows[a:b]], percentile[rows[a:b]] = ranks, percentiles
    missing = np.flatnonzero(np.isnan(comp))
    rank[missing] = n_valid + nan_before + np.arange(1, missing.shape[0] + 1)
    return rank, percentile


def _exact_ranks(composites: list, summaries: list, histogram: _Histogram) -> tuple[list, list]:
    """Ranks by a sort partitioned on value ranges: a histogram cuts the composites into one range per
    partition; each range is sorted on its own (ties by row) and its ranks go back to their partitions.
    What moves: each composite once out (8 bytes) and its rank and percentile once back (16 bytes); a task
    holds about one partition."""
    n_valid, lo, scale, per_bin = histogram.n_valid, histogram.lo, histogram.scale, histogram.per_bin
    n_ranges = max(1, len(composites))
    cum = np.cumsum(per_bin)
    range_of_bin = np.minimum((cum - per_bin) * n_ranges // max(n_valid, 1), n_ranges - 1).astype(np.int64)
    range_sizes = np.bincount(range_of_bin, weights=per_bin, minlength=n_ranges).astype(np.int64)
    ahead = np.concatenate(([0], np.cumsum(range_sizes)))
    range_of_bin_d = dask.delayed(range_of_bin, pure=True)
    split = [dask.delayed(_split_ranges, pure=True, nout=n_ranges)(c, lo, scale, range_of_bin_d, n_ranges)
             for c in composites]
    ranked_ranges = [dask.delayed(_rank_range, pure=True, nout=len(composites))(
        [split[p][r] for p in range(len(composites))], int(ahead[r]), n_valid) for r in range(n_ranges)]
    ranks, nan_before = [], 0
    for p, c in enumerate(composites):
        ranks.append(dask.delayed(_ranks, pure=True)(
            c, [ranked_ranges[r][p] for r in range(n_ranges)], lo, scale, range_of_bin_d, nan_before, n_valid))
        nan_before += summaries[p][0] - summaries[p][1]
    # Held (16 bytes a customer) rather than left to whatever uses them: a partition's ranks need every
    # partition scored, so work that reads the base (writing the results out) would otherwise read all of it
    # and hold it while the ranks are worked out.
    ranks = _persist(ranks, label="ranks")
    return [r[0] for r in ranks], [r[1] for r in ranks]


def _column(parts: list, lengths: list[int], dtype, width: int | None = None) -> da.Array:
    blocks = [da.from_delayed(p, shape=(n,) if width is None else (n, width), dtype=dtype)
              for p, n in zip(parts, lengths)]
    return da.concatenate(blocks) if blocks else da.zeros((0,) if width is None else (0, width), dtype=dtype)


def score(fitted: FittedModel, data: Any, previous_tiers: Any = None, with_rank: bool = False,
          signal_names: Sequence[str] | None = None, split_every: int = SPLIT_EVERY,
          hold_dimensions: bool = False) -> DistributedScores:
    """:func:`scoring_engine.score` over a Dask collection, one task per partition.

    ``previous_tiers``: each customer's previous tier index (0 = best, -1 or null: none) as a collection
    partitioned like ``data`` (a dask array with the same row chunks, or a column of the same frame, e.g.
    ``frame["previous_tier"]`` after joining a previous run's results on customer_id), or the name of a
    column of ``data``. Each partition's composites (and, ``with_rank``, its ranks and percentiles) are held on
    the workers while this result lives. The dimension scores are scored again, partition by partition, where
    they are computed; with ``hold_dimensions`` they are held too from the one scoring pass (another 8 bytes a
    customer per dimension), for a caller that keeps them all anyway: each partition is then read and scored
    once.
    """
    model = fitted.model
    parts, columns, names = _partitions(model, data, signal_names)
    fitted_d = dask.delayed(fitted, pure=True)
    scored = _persist([dask.delayed(_score_part, pure=True)(p, columns, fitted_d, names, hold_dimensions)
                       for p in parts], label="score")
    summaries = _compute(*[dask.delayed(_summary, pure=True)(s) for s in scored], label="summaries")
    composites = [s[1] for s in scored]  # what the work below takes: never the held dimension scores
    offset = 0
    for n, _, _, _, bad in summaries:
        if bad is not None:
            raise NonFiniteValueError(offset + bad[0], bad[1], bad[2])
        offset += n
    lengths = [s[0] for s in summaries]

    thresholds = fitted.tier_thresholds if fitted.tier_thresholds is not None else model_thresholds(model)
    histogram = _composite_histogram(composites, summaries, split_every) if thresholds is None or with_rank \
        else None
    if thresholds is None:
        thresholds = _share_thresholds(composites, histogram, [t.population_percent for t in model.tiers[:-1]])
    prev_parts = _previous_parts(previous_tiers, data, parts)
    tiers = [dask.delayed(_tiers, pure=True)(c, thresholds, prev, len(model.tiers), model.hysteresis_points)
             for c, prev in zip(composites, prev_parts)]

    rank = percentile = None
    if with_rank:
        ranks, percentiles = _exact_ranks(composites, summaries, histogram)
        rank = _column(ranks, lengths, np.int64)
        percentile = _column(percentiles, lengths, np.float64)
    dimensions = [s[0] for s in scored] if hold_dimensions else \
        [dask.delayed(_dimensions, pure=True)(p, columns, fitted_d, names) for p in parts]
    return DistributedScores(
        _column(dimensions, lengths, np.float64, len(model.dimensions)),
        _column(composites, lengths, np.float64),
        _column(tiers, lengths, np.int32), np.asarray(thresholds, dtype=np.float64),
        engine._dimension_names(model), model.tier_ids, rank, percentile, tuple(scored))


def _frame_column(part: Any, name: str) -> Any:
    return part[name]


def _previous_parts(previous_tiers: Any, data: Any, data_parts: list) -> list:
    n_parts = len(data_parts)
    if previous_tiers is None:
        return [None] * n_parts
    if isinstance(previous_tiers, str):  # taken from the very partitions scored (a frame's column alone
        # may be read in other partitions: dask merges small Parquet files when fewer columns are read)
        if not hasattr(data, "columns") or previous_tiers not in data.columns:
            raise ScoringError(f"previous_tiers: the data has no column {previous_tiers!r}")
        return [dask.delayed(_frame_column, pure=True)(p, previous_tiers) for p in data_parts]
    parts = list(previous_tiers.to_delayed())
    if isinstance(previous_tiers, da.Array):
        parts = list(previous_tiers.to_delayed().ravel())
    if len(parts) != n_parts:
        raise ScoringError(f"previous_tiers: {len(parts)} partitions for {n_parts} partitions of data "
                           "(partition it like the data)")
    return parts
