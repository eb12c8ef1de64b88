"""Customer ids held columnar, with an id index that is not a Python dictionary.

A snapshot of ten million customers cannot afford a Python string and a dictionary entry per id (about 150
bytes each, in every worker process), nor the seconds it takes to build them. ``IdIndex`` keeps the ids as
Arrow keeps strings (an int64 offsets array and one UTF-8 byte array) and indexes them with an open-addressing
hash table (linear probing, int32 or int64 rows, ``EMPTY`` free), built and probed by Numba kernels over the
64-bit FNV-1a hash of each id's bytes (the hash ``services.scoring.history`` buckets results by). All three
arrays are plain NumPy: they can be written to files and memory-mapped by several processes
(services/hierarchy/shared.py).

Live changes: ids added since the build are held beside it (``_added``, a small dictionary and list per
process); a deleted id's slot becomes a ``DELETED`` tombstone (a write to one page of the table: copy-on-write
when the table is mapped), or leaves ``_added``. Like the snapshot, an index is changed only on the event loop,
in one step, so readers need no lock.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import os
from collections.abc import Iterable, Sequence

import numba
import numpy as np
import pyarrow as pa

FNV_OFFSET, FNV_PRIME = 14695981039346656037, 1099511628211
EMPTY, DELETED = -1, -2


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(offsets, data, i):  # pragma: no cover - compiled
    h = np.uint64(FNV_OFFSET)
    prime = np.uint64(FNV_PRIME)
    for k in range(offsets[i], offsets[i + 1]):
        h = (h ^ np.uint64(data[k])) * prime
    # FNV's low bits mix poorly for ids that differ only in their last characters: fold the high bits in.
    return h ^ (h >> np.uint64(29))


@numba.njit(cache=True, nogil=True)
def _build(offsets, data, table):  # pragma: no cover - compiled
    mask = np.uint64(table.shape[0] - 1)
    for i in range(offsets.shape[0] - 1):
        slot = np.int64(_hash(offsets, data, i) & mask)
        while table[slot] != EMPTY:
            slot = np.int64((np.uint64(slot) + np.uint64(1)) & mask)
        table[slot] = i


@numba.njit(cache=True, nogil=True)
def _slots(table, offsets, data, query_offsets, query_data, out):  # pragma: no cover - compiled
    """out[j]: the slot of query j in ``table``, -1 when absent."""
    mask = np.uint64(table.shape[0] - 1)
    for j in range(query_offsets.shape[0] - 1):
        start, length = query_offsets[j], query_offsets[j + 1] - query_offsets[j]
        slot = np.int64(_hash(query_offsets, query_data, j) & mask)
        out[j] = -1
        while True:
            row = table[slot]
            if row == EMPTY:
                break
            if row >= 0 and offsets[row + 1] - offsets[row] == length:
                at = offsets[row]
                same = True
                for k in range(length):
                    if data[at + k] != query_data[start + k]:
                        same = False
                        break
                if same:
                    out[j] = slot
                    break
            slot = np.int64((np.uint64(slot) + np.uint64(1)) & mask)


# Look-ups a batch takes before it is split over the cores (threads: the probe kernel holds no GIL).
PARALLEL_FROM = 200_000


@functools.cache
def thread_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8)), "cvh-ids")


def in_parts(count: int) -> list[tuple[int, int]]:
    """[start, stop) parts of ``count`` items, one per core of the look-up pool (one part below PARALLEL_FROM)."""
    parts = 1 if count < PARALLEL_FROM else thread_pool()._max_workers
    bounds = np.linspace(0, count, parts + 1).astype(np.int64).tolist()
    return list(itertools.pairwise(bounds))


def columnar(ids: Sequence[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 from 0, UTF-8 bytes uint8) of ``ids`` (a list of str, or an Arrow string array): Arrow
    copies the strings into one buffer in C. A slice of a larger array is given its own bytes only."""
    array = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.large_string())
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, np.int64)[array.offset:array.offset + len(array) + 1] if len(array) \
        else np.zeros(1, np.int64)
    data = np.frombuffer(data, np.uint8) if data is not None and len(array) else np.empty(0, np.uint8)
    if offsets[0]:
        data, offsets = data[offsets[0]:offsets[-1]], offsets - offsets[0]
    return offsets, data


def arrow(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    """Ids held as ``columnar`` gives them, as an Arrow large_string array over the same buffers (zero copy)."""
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))


def table_size(rows: int) -> int:
    """Slots for ``rows`` ids: a power of two at least 1.5 times as many (load at most two thirds)."""
    return 1 << max(3, (rows + rows // 2).bit_length())


class IdIndex:
    """Ids by row (``customer_id(row)``) and rows by id (``row(id)``, ``rows(ids)``)."""

    def __init__(self, offsets: np.ndarray, data: np.ndarray, table: np.ndarray | None = None) -> None:
        self.offsets, self.data = offsets, data
        self.base = len(offsets) - 1  # rows held columnar and in the table
        if table is None:
            table = np.full(table_size(self.base), EMPTY, np.int32 if self.base < 2**31 - 1 else np.int64)
            _build(offsets, data, table)
        self.table = table
        # Ids added since the build: row -> id beyond ``base``, id -> row.
        self._added: list[str] = []
        self._added_rows: dict[str, int] = {}
        self.deleted = 0  # ids deleted (their rows stay, unreachable by id)

    @classmethod
    def of(cls, ids: Sequence[str] | pa.Array) -> IdIndex:
        return cls(*columnar(ids))

    def __len__(self) -> int:
        """Rows, deleted ones' included (ids reachable: ``len(self) - self.deleted``)."""
        return self.base + len(self._added)

    def __contains__(self, customer_id: str) -> bool:
        return self.row(customer_id) is not None

    # -- look-ups --------------------------------------------------------------------------------------

    def row(self, customer_id: str) -> int | None:
        """The row of ``customer_id``, None when it holds none."""
        if self._added_rows:
            row = self._added_rows.get(customer_id)
            if row is not None:
                return row
        slot = self._slot(customer_id)
        return None if slot < 0 else int(self.table[slot])

    def _slot(self, customer_id: str) -> int:
        key = np.frombuffer(customer_id.encode(), np.uint8)
        out = np.empty(1, np.int64)
        _slots(self.table, self.offsets, self.data, np.array([0, len(key)], np.int64), key, out)
        return int(out[0])

    def rows(self, ids: Sequence[str] | pa.Array) -> np.ndarray:
        """The row of each id (int64), -1 where it holds none: one kernel call over the whole batch."""
        offsets, data = columnar(ids)
        slots = np.empty(len(offsets) - 1, np.int64)
        parts = in_parts(len(slots))
        if len(parts) == 1:
            _slots(self.table, self.offsets, self.data, offsets, data, slots)
        else:  # the kernel releases the GIL: a part per core, each a slice of the queries (offsets stay absolute)
            list(thread_pool().map(lambda part: _slots(self.table, self.offsets, self.data,
                                                       offsets[part[0]:part[1] + 1], data, slots[part[0]:part[1]]),
                                   parts))
        rows = np.where(slots >= 0, self.table[np.maximum(slots, 0)], -1).astype(np.int64)
        if self._added_rows:
            missing = np.flatnonzero(rows < 0)
            if len(missing):
                texts = ids.take(pa.array(missing)).to_pylist() if isinstance(ids, pa.Array) \
                    else [ids[i] for i in missing.tolist()]
                get = self._added_rows.get
                rows[missing] = [get(text, -1) for text in texts]
        return rows

    def customer_id(self, row: int) -> str:
        if row >= self.base:
            return self._added[row - self.base]
        return self.data[self.offsets[row]:self.offsets[row + 1]].tobytes().decode()

    def customer_ids(self, rows: Iterable[int] | np.ndarray | None = None) -> list[str]:
        """The ids of ``rows`` (every row when None), as Python strings."""
        if rows is None:
            return self.arrow().to_pylist() + self._added
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return []
        if rows.max(initial=-1) < self.base:
            return self.arrow().take(pa.array(rows)).to_pylist()
        return [self.customer_id(r) for r in rows.tolist()]

    def column(self) -> pa.Array:
        """Every row's id as an Arrow large_string array (those added since the build after the rest)."""
        if not self._added:
            return self.arrow()
        return pa.concat_arrays([self.arrow(), pa.array(self._added, pa.large_string())])

    def arrow(self) -> pa.Array:
        """The rows held columnar as an Arrow large_string array (zero copy; ids added since not included)."""
        return arrow(self.offsets, self.data)

    def alive(self) -> np.ndarray:
        """Per row, whether its id is still held (False for deleted customers' rows)."""
        mask = np.zeros(len(self), bool)
        mask[self.table[self.table >= 0]] = True
        if self._added_rows:
            mask[np.fromiter(self._added_rows.values(), np.int64, count=len(self._added_rows))] = True
        return mask

    def items(self) -> list[tuple[str, int]]:
        """(id, row) of every id held (deleted ones not): for tests and small snapshots."""
        ids = self.customer_ids()
        return [(c, r) for r, c in enumerate(ids) if self.row(c) == r]

    # -- changes (on the event loop, in one step) ------------------------------------------------------

    def append(self, ids: Sequence[str]) -> None:
        """Rows for ``ids`` (new: none held) after the last."""
        start = len(self)
        self._added.extend(ids)
        self._added_rows.update(zip(ids, range(start, start + len(ids))))

    def delete(self, ids: Iterable[str]) -> None:
        """Forget ``ids`` (their rows stay, unreachable by id)."""
        for customer_id in ids:
            if self._added_rows.pop(customer_id, None) is not None:
                self.deleted += 1
                continue
            slot = self._slot(customer_id)
            if slot >= 0:
                self.table[slot] = DELETED
                self.deleted += 1


def warm_up() -> None:
    """Compile (or load from the cache) the kernels before the first look-up needs them."""
    index = IdIndex.of(["a", "b"])
    index.rows(["a", "c"])
    index.row("b")
