"""Queries over the scoring service's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from cvh.scoring.v1 import scoring_service_pb2 as pb
from services.common import processes
from services.common.db import insert_many
from services.scoring.tables import models, result_chunks, runs

ACTIVE_STATES = (pb.RUN_STATE_PENDING, pb.RUN_STATE_RUNNING)


# -- models ---------------------------------------------------------------------------------------------

def create_model(conn: Connection, model_id: str, spec_json: str, change_note: str, creator: str, now: int) -> Row:
    """A new version of ``model_id``; the first version of a model becomes its active one."""
    latest = conn.execute(sa.select(sa.func.max(models.c.version)).where(models.c.model_id == model_id)).scalar()
    version = (latest or 0) + 1
    conn.execute(models.insert().values(model_id=model_id, version=version, spec_json=spec_json,
                                        change_note=change_note, creator=creator, create_time_us=now,
                                        active=latest is None))
    return get_model(conn, model_id, version)


def get_model(conn: Connection, model_id: str, version: int | None) -> Row | None:
    """One version, or the active version when ``version`` is None."""
    query = sa.select(models).where(models.c.model_id == model_id)
    query = query.where(models.c.version == version) if version is not None else query.where(models.c.active)
    return conn.execute(query).first()


def list_models(conn: Connection, model_id: str, offset: int, limit: int) -> list[Row]:
    query = sa.select(models).order_by(models.c.create_time_us.desc(), models.c.pk.desc()).offset(offset).limit(limit)
    if model_id:
        query = query.where(models.c.model_id == model_id)
    return list(conn.execute(query))


def activate(conn: Connection, model_id: str, version: int) -> None:
    conn.execute(models.update().where(models.c.model_id == model_id).values(active=models.c.version == version))


# -- runs -----------------------------------------------------------------------------------------------

def active_run(conn: Connection, model_id: str) -> Row | None:
    return conn.execute(sa.select(runs).where(runs.c.model_id == model_id, runs.c.state.in_(ACTIVE_STATES))).first()


def latest_completed(conn: Connection, model_id: str, before_run: int | None = None, fitted: bool = False
                     ) -> Row | None:
    """The model's latest completed run (before ``before_run``; with ``fitted``, the latest that holds fitted
    statistics: an imported run may not)."""
    query = sa.select(runs).where(runs.c.model_id == model_id, runs.c.state == pb.RUN_STATE_COMPLETED)
    if before_run is not None:
        query = query.where(runs.c.run_id < before_run)
    if fitted:
        query = query.where(runs.c.fitted.is_not(None))
    return conn.execute(query.order_by(runs.c.run_id.desc()).limit(1)).first()


def create_run(conn: Connection, model_id: str, version: int, now: int) -> int:
    """A pending run, executed by this process (runs execute where they were started)."""
    result = conn.execute(runs.insert().values(model_id=model_id, model_version=version,
                                               state=pb.RUN_STATE_PENDING, create_time_us=now,
                                               executor=processes.this_process()))
    return result.inserted_primary_key[0]


def create_completed_run(conn: Connection, model_id: str, version: int, now: int, **values) -> int:
    """A run whose results were scored elsewhere (ImportRunResults): completed as it is inserted."""
    result = conn.execute(runs.insert().values(model_id=model_id, model_version=version,
                                               state=pb.RUN_STATE_COMPLETED, create_time_us=now, start_time_us=now,
                                               end_time_us=now, percent_done=100.0, **values))
    return result.inserted_primary_key[0]


def set_seconds(conn: Connection, run_id: int, **seconds: float) -> None:
    """A run's timings (export_seconds, scoring_seconds, store_seconds), whatever its state."""
    conn.execute(runs.update().where(runs.c.run_id == run_id).values(**seconds))


def get_run(conn: Connection, run_id: int) -> Row | None:
    return conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()


def get_runs(conn: Connection, run_ids: list[int]) -> list[Row]:
    return list(conn.execute(sa.select(runs).where(runs.c.run_id.in_(run_ids)))) if run_ids else []


def list_runs(conn: Connection, model_id: str, state: int, offset: int, limit: int) -> list[Row]:
    query = sa.select(runs).order_by(runs.c.run_id.desc()).offset(offset).limit(limit)
    if model_id:
        query = query.where(runs.c.model_id == model_id)
    if state:
        query = query.where(runs.c.state == state)
    return list(conn.execute(query))


def completed_since(conn: Connection, after_run: int, model_id: str) -> list[Row]:
    query = sa.select(runs).where(runs.c.run_id > after_run, runs.c.state == pb.RUN_STATE_COMPLETED)
    if model_id:
        query = query.where(runs.c.model_id == model_id)
    return list(conn.execute(query.order_by(runs.c.run_id)))


# The process executing a run writes its heartbeat at least this often ...
HEARTBEAT_US = 2_000_000
# ... so a pending or running run whose heartbeat is older than this was abandoned by a process that died.
ABANDONED_AFTER_US = 15_000_000


def update_run(conn: Connection, run_id: int, **values) -> bool:
    """Updates a pending or running run; False when it is not (any more): it ended, or was failed as
    abandoned while its process could not write."""
    result = conn.execute(runs.update().where(runs.c.run_id == run_id, runs.c.state.in_(ACTIVE_STATES))
                          .values(**values))
    return result.rowcount == 1


def fail_abandoned(conn: Connection, now: int) -> int:
    """Runs whose process went quiet (killed, or lost with its machine), or is known to have ended (a process of
    this machine: services/common/processes.py): failed, so the previous run stays current. Runs other live
    processes execute keep their heartbeat fresh and are left alone."""
    last_sign = sa.func.coalesce(runs.c.heartbeat_us, runs.c.start_time_us, runs.c.create_time_us)
    active = conn.execute(sa.select(runs.c.run_id, runs.c.executor).where(runs.c.state.in_(ACTIVE_STATES))).all()
    ended = [run_id for run_id, executor in active if processes.has_ended(executor)]
    abandoned = sa.or_(last_sign < now - ABANDONED_AFTER_US, runs.c.run_id.in_(ended))
    result = conn.execute(runs.update().where(runs.c.state.in_(ACTIVE_STATES), abandoned)
                          .values(state=pb.RUN_STATE_FAILED, end_time_us=now,
                                  failure_reason="the server stopped during the run; start a new one"))
    return result.rowcount


# -- results --------------------------------------------------------------------------------------------

@dataclass
class ResultChunk:
    """Results of consecutive ranks, as arrays."""

    first_rank: int
    customer_ids: list[str]
    dimension_scores: np.ndarray  # float64 (rows, dims)
    composite: np.ndarray  # float64
    percentiles: np.ndarray  # float64
    tier_levels: np.ndarray  # int32, 1 = top
    previous_tier_levels: np.ndarray  # int32, 0 = not in the previous run
    # float64 (rows, outcome signals), NaN = missing; LifecycleStage (uint8); bad-profit flag (uint8). Runs made
    # before runs stored outcomes: no columns, stages UNSPECIFIED, nothing flagged.
    outcome_values: np.ndarray | None = None
    lifecycle_stages: np.ndarray | None = None
    bad_profit: np.ndarray | None = None
    # The ids already "\n"-joined (a run being written: see packed_ids); customer_ids is then empty.
    ids_blob: bytes | None = None

    def __post_init__(self):
        rows = len(self.composite)
        if self.outcome_values is None:
            self.outcome_values = np.empty((rows, 0))
        if self.lifecycle_stages is None:
            self.lifecycle_stages = np.zeros(rows, np.uint8)
        if self.bad_profit is None:
            self.bad_profit = np.zeros(rows, np.uint8)


# Result chunks written by one INSERT (or COPY): a bounded part of a run in memory as rows at a time.
WRITE_CHUNKS = 32


def write_results(conn: Connection, run_id: int, chunks: Iterable[ResultChunk]) -> None:
    """Stores a run's chunks (a list, or an iterator making them as they are taken), WRITE_CHUNKS at a time."""
    rows = ((run_id, i, c.first_rank, len(c.composite),
             c.ids_blob if c.ids_blob is not None else "\n".join(c.customer_ids).encode(),
             c.dimension_scores.astype("<f8").tobytes(), c.composite.astype("<f8").tobytes(),
             c.percentiles.astype("<f8").tobytes(), c.tier_levels.astype("<i4").tobytes(),
             c.previous_tier_levels.astype("<i4").tobytes(), c.outcome_values.astype("<f8").tobytes(),
             c.lifecycle_stages.astype(np.uint8).tobytes(), c.bad_profit.astype(np.uint8).tobytes())
            for i, c in enumerate(chunks))
    while part := list(itertools.islice(rows, WRITE_CHUNKS)):
        insert_many(conn, result_chunks, ["run_id", "chunk_index", "first_rank", "rows", "customer_ids",
                                          "dimension_scores", "composite", "percentiles", "tier_levels",
                                          "previous_tier_levels", "outcome_values", "lifecycle_stages",
                                          "bad_profit"], part, binary=True)


def packed_ids(ids: pa.Array, order: np.ndarray, bounds: list[int]) -> list[bytes]:
    """The ids taken in ``order`` and cut at ``bounds`` (ascending positions, first 0, last len(order)), each
    part "\n"-joined and UTF-8: done in Arrow, since gathering a million Python strings in a random order
    costs seconds of cache misses."""
    if len(order) == 0:
        return [b"" for _ in bounds[1:]]
    newline, nothing = pa.scalar("\n", ids.type), pa.scalar("", ids.type)
    lines = pc.take(pc.binary_join_element_wise(ids, newline, nothing), pa.array(order))
    offsets = np.frombuffer(lines.buffers()[1], np.int64)[lines.offset:lines.offset + len(lines) + 1]
    data = lines.buffers()[2].to_pybytes()
    ends = offsets[bounds].tolist()
    return [data[start:max(start, end - 1)] for start, end in zip(ends[:-1], ends[1:])]


def set_history_buckets(conn: Connection, run_id: int, buckets: int) -> None:
    """Marks a completed run's history layout as written."""
    conn.execute(runs.update().where(runs.c.run_id == run_id).values(history_buckets=buckets))


def outcome_signals(run: Row) -> list[str]:
    """The outcome signals whose values the run stored, in column order (none for runs made before)."""
    return json.loads(run.outcome_signals_json) if run.outcome_signals_json else []


def _outcome_parts(row) -> tuple:
    if row.outcome_values is None:
        return None, None, None
    columns = len(row.outcome_values) // (8 * row.rows) if row.rows else 0
    return (np.frombuffer(row.outcome_values, "<f8").reshape(row.rows, columns),
            np.frombuffer(row.lifecycle_stages, np.uint8), np.frombuffer(row.bad_profit, np.uint8))


def read_results(conn: Connection, run_id: int, n_dims: int, from_rank: int = 1) -> Iterator[ResultChunk]:
    """Chunks in rank order, starting with the one holding ``from_rank``."""
    start = conn.execute(sa.select(sa.func.max(result_chunks.c.chunk_index)).where(
        result_chunks.c.run_id == run_id, result_chunks.c.first_rank <= from_rank)).scalar() or 0
    query = sa.select(result_chunks).where(result_chunks.c.run_id == run_id,
                                           result_chunks.c.chunk_index >= start).order_by(result_chunks.c.chunk_index)
    for row in conn.execute(query):
        ids = row.customer_ids.decode().split("\n") if row.rows else []
        yield ResultChunk(row.first_rank, ids,
                          np.frombuffer(row.dimension_scores, "<f8").reshape(row.rows, n_dims),
                          np.frombuffer(row.composite, "<f8"), np.frombuffer(row.percentiles, "<f8"),
                          np.frombuffer(row.tier_levels, "<i4"), np.frombuffer(row.previous_tier_levels, "<i4"),
                          *_outcome_parts(row))


def read_tier_levels(conn: Connection, run_id: int) -> tuple[pa.Array, np.ndarray]:
    """Every customer id of a run (an Arrow large_string array) and its tier level (int32), in rank order: only
    the two columns."""
    blobs, levels = [], []
    query = sa.select(result_chunks.c.rows, result_chunks.c.customer_ids, result_chunks.c.tier_levels).where(
        result_chunks.c.run_id == run_id).order_by(result_chunks.c.chunk_index)
    for row in conn.execute(query):
        if row.rows:
            blobs.append(row.customer_ids)
            levels.append(np.frombuffer(row.tier_levels, "<i4"))
    return ids_of_blobs(blobs), np.concatenate(levels) if levels else np.empty(0, np.int32)


def ids_of_blobs(blobs: list[bytes]) -> pa.Array:
    """The ids of "\n"-joined blobs (packed_ids' parts, none empty) as one Arrow large_string array, cut at the
    newlines by NumPy: no Python string per id."""
    data = np.frombuffer(b"\n".join(blobs), np.uint8)
    newline = data == ord("\n")
    characters = data[~newline]
    # Where each id ends among the characters: its newline's position less the newlines before it.
    ends = np.flatnonzero(newline) - np.arange(np.count_nonzero(newline))
    offsets = np.concatenate([[0], ends, [len(characters)]]).astype(np.int64) if blobs else np.zeros(1, np.int64)
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(characters))


def read_outcome_columns(conn: Connection, run_id: int) -> tuple[list[bytes], np.ndarray, list, list]:
    """What an outcome report reads of a run, in rank order: the chunks' id blobs ("\n"-joined), tier levels
    (int32) and the parts of outcome values and bad-profit flags (None for chunks of runs made before)."""
    blobs, levels, values, flags = [], [], [], []
    query = sa.select(result_chunks.c.rows, result_chunks.c.customer_ids, result_chunks.c.tier_levels,
                      result_chunks.c.outcome_values, result_chunks.c.bad_profit).where(
        result_chunks.c.run_id == run_id).order_by(result_chunks.c.chunk_index)
    for row in conn.execute(query):
        if not row.rows:
            continue
        blobs.append(row.customer_ids)
        levels.append(np.frombuffer(row.tier_levels, "<i4"))
        values.append(None if row.outcome_values is None else np.frombuffer(row.outcome_values, "<f8"))
        flags.append(None if row.bad_profit is None else np.frombuffer(row.bad_profit, np.uint8))
    return blobs, np.concatenate(levels) if levels else np.empty(0, np.int32), values, flags


def last_completed(conn: Connection, model_id: str, count: int) -> list[Row]:
    """The model's last ``count`` completed runs, newest first."""
    query = sa.select(runs).where(runs.c.model_id == model_id, runs.c.state == pb.RUN_STATE_COMPLETED)
    return list(conn.execute(query.order_by(runs.c.run_id.desc()).limit(count)))


def tier_counts(run: Row) -> list[int]:
    return json.loads(run.tier_counts_json)


def tier_moves(run: Row) -> list[tuple[int, int, int]]:
    return [tuple(m) for m in json.loads(run.tier_moves_json)]
