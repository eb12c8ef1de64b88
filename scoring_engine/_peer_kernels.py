"""Numba kernels of adoption peers. Private: call them through ``scoring_engine.adoption_peers``.

Achieved sets are bitsets (uint64 words per customer); the Jaccard similarity of each row to one target
counts the bits of the intersection and of the union word by word.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import helper_jit, serial_jit


@helper_jit
def _popcount(word):
    count = 0
    while word:
        word &= word - np.uint64(1)
        count += 1
    return count


@helper_jit
def _jaccard_row(bits, r, target):
    both, either = 0, 0
    for w in range(bits.shape[1]):
        both += _popcount(bits[r, w] & target[w])
        either += _popcount(bits[r, w] | target[w])
    return both / either if either else 0.0


# nogil: a server runs it on a thread while other threads take telemetry in and answer lookups.
@serial_jit(nogil=True)
def jaccard_serial(bits, target, out):
    for r in range(bits.shape[0]):
        out[r] = _jaccard_row(bits, r, target)


@serial_jit(parallel=True, nogil=True)
def jaccard_parallel(bits, target, out):
    for r in prange(bits.shape[0]):
        out[r] = _jaccard_row(bits, r, target)
