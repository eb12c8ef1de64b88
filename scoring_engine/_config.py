"""Numba settings of the scoring engine, in one place.

* ``FASTMATH``: the LLVM fast-math flags every kernel is compiled with. Only
  ``nsz`` (the sign of a zero may be ignored). ``nnan``/``ninf`` would break the
  NaN-means-missing logic; ``reassoc``/``contract``/``arcp``/``afn`` would let
  LLVM reorder sums, fuse multiply-adds or approximate divisions, so results
  would depend on vectorisation and chunk boundaries and would no longer agree
  bit for bit with the NumPy reference (tier boundaries compare exact values).
  The kernels are bound by memory and by ``log1p``/``erfc`` calls, not by
  arithmetic that these flags would speed up.
* ``PARALLEL_MIN_ROWS``: below this many rows the serial variant of a kernel is
  used (same row function, so identical results), which avoids the thread-pool
  launch and the parallel lock for small online and streaming calls.
* ``PARALLEL_LOCK``: every call of a ``parallel=True`` kernel holds this lock.
  gRPC servers call the engine from several threads at once; Numba's
  ``workqueue`` threading layer aborts the process on concurrent launches and
  the ``omp`` layer oversubscribes the cores. A parallel kernel already uses
  every core, so serialising launches costs nothing in throughput.
* Caching: every kernel is compiled with ``cache=True`` when Numba finds a
  writable cache directory (next to the source, or ``NUMBA_CACHE_DIR``, e.g. an
  ``emptyDir`` volume under a read-only root filesystem); otherwise it is
  compiled once per process. ``cache=True`` with ``parallel=True`` used to
  crash when the thread count changed between the process that wrote the
  cache and the one that loads it (numba#7522, the reason for pynndescent#175).
  Numba >= 0.56 keys parallel code on that correctly; we checked with Numba
  0.68 (caches written with 2 threads, loaded with 1, 3 and 4, under the
  ``omp`` and ``workqueue`` layers), and
  ``tests/scoring_engine/test_scoring_kernels.py`` re-checks it in a
  subprocess with another ``NUMBA_NUM_THREADS``. Set ``CVH_NUMBA_CACHE=0`` to
  disable caching. Call :func:`scoring_engine.warm_up` at server start to pay
  the compile (or cache load) cost before the first request.
"""

from __future__ import annotations

import os
import threading

import numba

FASTMATH = {"nsz"}
PARALLEL_MIN_ROWS = 4096
PARALLEL_LOCK = threading.Lock()
CACHE = os.environ.get("CVH_NUMBA_CACHE", "1") != "0"


def serial_jit(func=None, **options):
    """``numba.njit`` for serial kernels: fast-math flags of this module, cached when possible."""

    def wrap(f):
        if CACHE:
            try:
                return numba.njit(cache=True, fastmath=FASTMATH, **options)(f)
            except RuntimeError:  # no writable cache locator (read-only install): compile per process
                pass
        return numba.njit(cache=False, fastmath=FASTMATH, **options)(f)

    return wrap(func) if func is not None else wrap


def parallel_jit(func):
    """``numba.njit(parallel=True)``, cached when possible (see module docstring). Call it under PARALLEL_LOCK."""
    return serial_jit(parallel=True)(func)


def helper_jit(func):
    """A scalar helper called from the kernels (LLVM inlines it into each caller)."""
    return numba.njit(fastmath=FASTMATH)(func)


def use_cache_dir(path: str) -> str:
    """Points the kernels' on-disk cache at ``path`` (e.g. one folder per Dask worker), seeded with the kernels
    already cached where they were, so a new worker loads rather than compiles. Call it before the first
    kernel call of the process: kernels already compiled keep their code. Returns the folder the kernels'
    cache files now go to (unchanged when caching is off)."""
    import shutil

    from numba.core import config
    from numba.core.dispatcher import Dispatcher

    from . import _kernels

    kernels = [k for k in vars(_kernels).values() if isinstance(k, Dispatcher) and k._cache.cache_path]
    if not CACHE or not kernels:
        return ""
    old = kernels[0]._cache.cache_path
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    config.reload_config()
    for kernel in kernels:
        kernel.enable_caching()  # a new cache locator, under the new NUMBA_CACHE_DIR
    new = kernels[0]._cache.cache_path
    os.makedirs(new, exist_ok=True)
    if new != old and os.path.isdir(old) and not any(name.endswith(".nbi") for name in os.listdir(new)):
        for name in os.listdir(old):
            if name.startswith("_kernels.") and name.endswith((".nbi", ".nbc")):
                shutil.copy2(os.path.join(old, name), os.path.join(new, name))
    return new
