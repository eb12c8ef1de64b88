"""Customers like a customer: achieved use cases as bitsets, and the Jaccard similarity of many to one.

Achieved sets (customers x use cases, bool) are packed into uint64 words per customer (:func:`bitsets`);
:func:`jaccard` then compares every row to one target set: |A & B| / |A | B|, 0 when both are empty.
``scoring_engine.reference.jaccard_reference`` computes the same from the bool matrix with NumPy.
"""

from __future__ import annotations

import numpy as np

from . import _peer_kernels as kernels
from ._config import PARALLEL_LOCK, PARALLEL_MIN_ROWS


def bitsets(achieved: np.ndarray) -> np.ndarray:
    """``achieved`` (customers x items, bool) as uint64 words (customers x ceil(items / 64)); bit i of a row
    is item i."""
    achieved = np.asarray(achieved, np.bool_)
    if achieved.ndim != 2:
        raise ValueError("achieved must be a matrix: customers x items")
    n, items = achieved.shape
    words = max((items + 63) // 64, 1)
    packed = np.zeros((n, words * 8), np.uint8)
    packed[:, :(items + 7) // 8] = np.packbits(achieved, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64, copy=False).reshape(n, words)


def jaccard(bits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row of ``bits`` (from :func:`bitsets`), its Jaccard similarity to ``target`` (one row of words)."""
    bits = np.ascontiguousarray(bits, np.uint64)
    target = np.ascontiguousarray(target, np.uint64).reshape(-1)
    if bits.ndim != 2 or bits.shape[1] != len(target):
        raise ValueError("bits (customers x words) and target (words) must have as many words")
    out = np.empty(len(bits))
    if len(bits) < PARALLEL_MIN_ROWS:
        kernels.jaccard_serial(bits, target, out)
    else:
        with PARALLEL_LOCK:
            kernels.jaccard_parallel(bits, target, out)
    return out


def warm_up() -> None:
    """Compiles (or loads) both kernels, as servers do at start-up."""
    for n in (1, PARALLEL_MIN_ROWS):
        jaccard(np.zeros((n, 1), np.uint64), np.zeros(1, np.uint64))
