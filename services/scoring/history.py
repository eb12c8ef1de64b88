"""A run's results bucketed by customer id, so that one customer's result in a run is one row read.

A run's results are stored in rank order (result chunks) for streaming and paging; GetCustomerHistory needs the
opposite: one customer in every run. So each run also writes its results into ``history_buckets`` buckets by a
stable hash of the customer id (64-bit FNV-1a of the UTF-8 id, the bucket its low bits): about 64 customers a
bucket, so that a bucket row is a few database pages, a power of two from 1 to 16,384. A bucket row holds its
customers' ids ("\\n"-joined), a float64 block (dimension scores, composite, percentile, rank, outcome values)
and an int32 block (tier level, previous tier level, lifecycle stage, bad-profit flag), one row per customer.
The hash is computed for a whole run by a Numba kernel over Arrow's string buffers, and for one id in plain
Python; both give the same buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.db import insert_many
from services.scoring.store import packed_ids
from services.scoring.tables import result_buckets

CUSTOMERS_PER_BUCKET = 64
MAX_BUCKETS = 16384
FNV_OFFSET, FNV_PRIME, MASK64 = 14695981039346656037, 1099511628211, (1 << 64) - 1
INTS = 4  # tier level, previous tier level, lifecycle stage, bad-profit flag


def bucket_count(customers: int) -> int:
    """Buckets for a run of ``customers``: a power of two giving about CUSTOMERS_PER_BUCKET each."""
    wanted = max(1, -(-customers // CUSTOMERS_PER_BUCKET))
    return min(MAX_BUCKETS, 1 << (wanted - 1).bit_length())


def bucket_of(customer_id: str, buckets: int) -> int:
    """The bucket of one id (plain Python; the same as ``buckets_of``)."""
    h = FNV_OFFSET
    for byte in customer_id.encode():
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h & (buckets - 1)


@numba.njit(cache=True, nogil=True)
def _fnv1a(offsets, data, out):  # pragma: no cover - compiled
    prime = np.uint64(FNV_PRIME)
    for i in range(out.shape[0]):
        h = np.uint64(FNV_OFFSET)
        for k in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[k])) * prime
        out[i] = h


def buckets_of(customer_ids: list[str] | pa.Array, buckets: int) -> np.ndarray:
    """The bucket of every id (int64), hashed over Arrow's UTF-8 buffers without a Python step per id."""
    ids = customer_ids if isinstance(customer_ids, pa.Array) else pa.array(customer_ids, pa.large_string())
    _, offsets, data = ids.buffers()
    offsets = np.frombuffer(offsets, np.int64)[ids.offset:ids.offset + len(ids) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    hashes = np.empty(len(ids), np.uint64)
    _fnv1a(offsets, data, hashes)
    return (hashes & np.uint64(buckets - 1)).astype(np.int64)


def warm_up() -> None:
    buckets_of(["warm"], 2)


# Buckets written by one INSERT (or COPY): a bounded part of the run copied into rows at a time.
WRITE_BUCKETS = 1024


def write(conn: Connection, run_id: int, customer_ids: pa.Array, floats: np.ndarray | list[np.ndarray],
          ints: np.ndarray | list[np.ndarray], buckets: int) -> None:
    """Stores a run's rows (ids as an Arrow large_string array; ``floats``: float64 rows x columns, ``ints``:
    int32 rows x INTS, each given whole or as its columns, 1-d or 2-d blocks side by side) in ``buckets``
    buckets; buckets without customers are not written. The rows are gathered WRITE_BUCKETS buckets at a
    time, so the writing holds a part of the run, not a second copy of it."""
    floats = floats if isinstance(floats, list) else [floats]
    ints = ints if isinstance(ints, list) else [ints]
    bucket = buckets_of(customer_ids, buckets)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1)).tolist()
    del bucket
    blobs = packed_ids(customer_ids, order, bounds)
    for first in range(0, buckets, WRITE_BUCKETS):
        last = min(first + WRITE_BUCKETS, buckets)
        base = bounds[first]
        rows = order[base:bounds[last]]
        part_floats = np.ascontiguousarray(np.column_stack([column[rows] for column in floats]), "<f8")
        part_ints = np.ascontiguousarray(np.column_stack([column[rows] for column in ints]), "<i4")
        insert_many(conn, result_buckets, ["run_id", "bucket", "rows", "customer_ids", "floats", "ints"], [
            (run_id, b, end - start, blobs[b], part_floats[start - base:end - base].tobytes(),
             part_ints[start - base:end - base].tobytes())
            for b, start, end in zip(range(first, last), bounds[first:last], bounds[first + 1:last + 1])
            if end > start], binary=True)


@dataclass
class Found:
    """One customer's row in a run's bucket."""

    floats: np.ndarray  # dimension scores, composite, percentile, rank, outcome values
    ints: np.ndarray  # tier level, previous tier level, lifecycle stage, bad-profit flag


def find(conn: Connection, runs: list[Row], customer_id: str) -> dict[int, Found | None]:
    """The customer's row in each run that has buckets (one read per run: one query per bucket count)."""
    found: dict[int, Found | None] = {}
    by_count: dict[int, list[int]] = {}
    for run in runs:
        if run.history_buckets:
            by_count.setdefault(run.history_buckets, []).append(run.run_id)
    wanted = customer_id.encode()
    for count, run_ids in by_count.items():
        query = sa.select(result_buckets.c.run_id, result_buckets.c.rows, result_buckets.c.customer_ids,
                          result_buckets.c.floats, result_buckets.c.ints).where(
            result_buckets.c.run_id.in_(run_ids), result_buckets.c.bucket == bucket_of(customer_id, count))
        found.update({run_id: None for run_id in run_ids})
        for row in conn.execute(query):
            ids = row.customer_ids.split(b"\n")
            if wanted not in ids:
                continue
            i = ids.index(wanted)
            width = len(row.floats) // (8 * row.rows)
            found[row.run_id] = Found(np.frombuffer(row.floats, "<f8", count=width, offset=8 * width * i),
                                      np.frombuffer(row.ints, "<i4", count=INTS, offset=4 * INTS * i))
    return found
