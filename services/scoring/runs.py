"""A scoring run: export the base from the registry, fit, score, rank, apply hysteresis, store.

Runs execute as tasks of the serving process. Progress goes to the run's row
(so any replica can report it) and wakes local watchers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

import scoring_engine
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from scoring_engine import lifetime_value, outcomes
from services.common.db import read_transaction, write_transaction
from services.common.peers import Peer
from services.common.streams import in_threads
from services.registry.customers import now_us
from services.scoring import history, store
from services.scoring.store import ResultChunk
from wire import columns

log = logging.getLogger("cvh.scoring.runs")

RESULT_CHUNK = 8192
# Shares of percent_done given to each phase.
EXPORT_SHARE, SCORE_SHARE = 60.0, 20.0


class RunCancelled(Exception):
    pass


class RunAbandoned(Exception):
    """The run was failed as abandoned (its heartbeat went stale): nothing more may be written for it."""


@dataclass
class RunExecutor:
    engine: Engine
    # Set by the server once it knows its own port: where the registry is, and its servicer when this
    # process serves it too (the export is then read from it directly).
    registry: Peer | None = None
    local_registry: object | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[int, asyncio.Task] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)
    # Counts notifications: caches of "the current run" compare it to know they are stale.
    generation: int = 0

    def notify(self) -> None:
        """Wake every watcher; each re-reads what it watches."""
        self.generation += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def launch(self, run_id: int, model: scoring_engine.ValueModel) -> None:
        task = asyncio.get_running_loop().create_task(self._run(run_id, model))
        self.tasks[run_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(run_id, None))

    def cancel(self, run_id: int) -> None:
        self.cancelled.add(run_id)

    async def _update(self, run_id: int, notify: bool = True, **values) -> None:
        def write():
            with write_transaction(self.engine) as conn:
                if not store.update_run(conn, run_id, heartbeat_us=now_us(), **values):
                    raise RunAbandoned()
        await asyncio.to_thread(write)
        if notify:
            self.notify()

    async def _beat(self, run_id: int) -> None:
        """Keeps the run's heartbeat fresh through long phases without progress to report."""
        while True:
            await asyncio.sleep(store.HEARTBEAT_US / 2e6)
            try:
                await self._update(run_id, notify=False)
            except RunAbandoned:
                return
            except Exception:  # a lost database: the run's own next write reports it
                log.warning("run %s: heartbeat not written", run_id, exc_info=True)

    async def sweep_abandoned(self) -> None:
        """Fails runs whose process died, now and then for as long as this process serves."""
        while True:
            def sweep() -> int:
                with write_transaction(self.engine) as conn:
                    return store.fail_abandoned(conn, now_us())
            try:
                if await asyncio.to_thread(sweep):
                    self.notify()
            except Exception:  # a lost database: the next sweep tries again
                log.warning("sweeping abandoned runs failed", exc_info=True)
            await asyncio.sleep(store.HEARTBEAT_US / 1e6)

    async def _run(self, run_id: int, model: scoring_engine.ValueModel) -> None:
        heartbeat = asyncio.get_running_loop().create_task(self._beat(run_id))
        try:
            await self._update(run_id, state=pb.RUN_STATE_RUNNING, start_time_us=now_us())
            await self._execute(run_id, model)
        except RunAbandoned:
            log.warning("run %s was failed as abandoned while it ran here (its heartbeat went stale)", run_id)
            self.notify()
        except RunCancelled:
            await self._end(run_id, state=pb.RUN_STATE_CANCELLED, failure_reason="cancelled by CancelScoringRun")
        except grpc.aio.AioRpcError as error:
            await self._fail(run_id, f"the registry at {self.registry} answered {error.code().name}: "
                                     f"{error.details()}")
        except Exception as error:  # a failed run is reported on the run, not lost
            log.exception("run %s failed", run_id)
            await self._fail(run_id, f"{type(error).__name__}: {error}")
        finally:
            heartbeat.cancel()
            self.cancelled.discard(run_id)

    async def _fail(self, run_id: int, reason: str) -> None:
        await self._end(run_id, state=pb.RUN_STATE_FAILED, failure_reason=reason)

    async def _end(self, run_id: int, **values) -> None:
        """Records how the run ended, unless it was already failed as abandoned."""
        try:
            await self._update(run_id, end_time_us=now_us(), **values)
        except RunAbandoned:
            self.notify()

    def _check(self, run_id: int) -> None:
        if run_id in self.cancelled:
            raise RunCancelled()

    async def _execute(self, run_id: int, model: scoring_engine.ValueModel) -> None:
        started = time.perf_counter()
        ids, matrix, stages, export_sequence = await self._export(run_id, model)
        exported = time.perf_counter()
        self._check(run_id)
        previous_run, previous_tiers = await asyncio.to_thread(self._previous_tiers, run_id, model, ids)
        fitted, result, population, kept = await asyncio.to_thread(_fit_and_score, model, matrix, previous_tiers)
        del matrix
        scored = time.perf_counter()
        await self._update(run_id, percent_done=EXPORT_SHARE + SCORE_SHARE)
        self._check(run_id)
        chunks, counts, moves = ranked_chunks(ids, result, previous_tiers, kept, stages)

        def write():
            with write_transaction(self.engine) as conn:
                store.write_results(conn, run_id, chunks)
                self._check(run_id)
                completed = store.update_run(
                    conn, run_id, state=pb.RUN_STATE_COMPLETED, end_time_us=now_us(), percent_done=100.0,
                    customers_done=len(ids), customers_total=len(ids),
                    previous_run_id=previous_run, fitted=fitted.to_bytes(),
                    lifetime_value_json=None if population is None else json.dumps(population.to_dict()),
                    outcome_signals_json=json.dumps(kept.signals),
                    tier_counts_json=json.dumps(counts), tier_moves_json=json.dumps(moves),
                    export_seconds=exported - started, scoring_seconds=scored - exported,
                    export_sequence=export_sequence,
                    store_seconds=time.perf_counter() - scored, heartbeat_us=now_us())
                if not completed:
                    raise RunAbandoned()  # rolls the results back: another process failed the run
        await asyncio.to_thread(write)
        self.notify()
        await self._index_history(run_id, ids, lambda: _history_rows(result, previous_tiers, kept, stages))

    async def _index_history(self, run_id: int, ids: pa.Array, rows) -> None:
        """Writes a completed run's history layout (services/scoring/history.py) in a transaction of its own: the
        run is current without waiting for it, and until it is written (or if it never is) a history reads the
        run's result chunks instead."""
        def write():
            floats, ints = rows()
            buckets = history.bucket_count(len(ids))
            with write_transaction(self.engine) as conn:
                history.write(conn, run_id, ids, floats, ints, buckets)
                store.set_history_buckets(conn, run_id, buckets)
        try:
            await asyncio.to_thread(write)
        except Exception:  # the run stands; histories read its chunks
            log.warning("run %s: its history layout was not written", run_id, exc_info=True)

    async def _export(self, run_id: int, model: scoring_engine.ValueModel
                      ) -> tuple[pa.Array, np.ndarray, np.ndarray, int]:
        """Ids (Arrow strings), signals (columns: ``model.exported_signal_names``) and lifecycle stages of the
        customers the run scores (all but the churned), and the change feed sequence the export held."""
        reader = columns.SignalMatrixReader(model.exported_signal_names)
        async with self._registry_export(list(model.exported_signal_names)) as blocks:
            last_report = 0.0
            async for block in blocks:
                self._check(run_id)
                done = reader.add_columns(*block)
                if time.monotonic() - last_report > 0.25:
                    last_report = time.monotonic()
                    total = reader.total_customers
                    await self._update(run_id, customers_done=done, customers_total=total,
                                       percent_done=EXPORT_SHARE * done / max(total, 1))
        export = reader.result()
        ids, values, stages, churned = _without_churned(export)
        await self._update(run_id, customers_done=len(ids), customers_total=len(ids), churned_left_out=churned,
                           percent_done=EXPORT_SHARE)
        return ids, values, stages, export.sequence

    @contextlib.asynccontextmanager
    async def _registry_export(self, names: list[str]) -> AsyncIterator[AsyncIterator[ExportBlock]]:
        """The registry's signals-only export of ``names`` as blocks (customer ids, values, lifecycle stages as
        bytes, total customers, feed sequence; the last two on the first block only): over gRPC, or from its
        servicer in this process without a message made and read back. Either way the export's transaction
        ends with the ``async with`` block."""
        if self.local_registry is not None:
            blocks = in_threads(_local_blocks(self.local_registry, names))
            try:
                yield blocks
            finally:
                await blocks.aclose()
            return
        async with self.registry.channel() as channel:
            stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
            messages = stub.ExportSignalMatrix(registry_service_pb2.ExportSignalMatrixRequest(signal_names=names,
                                                                                             signals_only=True))
            yield (_message_block(message) async for message in messages)

    def _previous_tiers(self, run_id: int, model, ids: pa.Array) -> tuple[int | None, np.ndarray]:
        with read_transaction(self.engine) as conn:
            return previous_tiers(conn, model, ids, before_run=run_id)


# One block of a signals-only export: customer ids, values (rows x signals), lifecycle stages (a byte per row),
# total customers and feed sequence (on the first block only, else 0).
ExportBlock = tuple[Sequence[str], np.ndarray, bytes, int, int]


def _local_blocks(registry, names: list[str]) -> Iterator[ExportBlock]:
    with contextlib.closing(registry.export_blocks(names, signals_only=True)) as chunks:
        for chunk, total, sequence in chunks:
            yield chunk.customer_ids, chunk.matrix, chunk.lifecycle_stages, total, sequence


def _message_block(message: registry_service_pb2.ExportSignalMatrixResponse) -> ExportBlock:
    return (message.chunk.customer_ids, columns.from_matrix(message.chunk.values), message.lifecycle_stages,
            message.total_customers, message.sequence)


def previous_tiers(conn, model, ids: pa.Array | list[str], before_run: int | None = None
                   ) -> tuple[int | None, np.ndarray]:
    """The model's latest completed run (before ``before_run``) and each customer's tier in it (-1: not in it)."""
    previous = store.latest_completed(conn, model.model_id, before_run=before_run)
    if previous is None:
        return None, np.full(len(ids), -1, dtype=np.int32)
    previous_ids, previous_levels = store.read_tier_levels(conn, previous.run_id)
    levels = _levels_by_id(ids, previous_ids, previous_levels)
    # A model's tiers may have changed between versions: levels beyond today's tiers count as none.
    levels[levels > len(model.tiers)] = 0
    return previous.run_id, levels - 1


def _levels_by_id(ids: pa.Array | list[str], known_ids: pa.Array, known_levels: np.ndarray) -> np.ndarray:
    """Level of each of ``ids`` among ``known_ids`` (0 when absent), matched by Arrow's hash join on the UTF-8
    buffers (no Python string per id; sorting NumPy unicode arrays took seconds and gigabytes at 10 million)."""
    if not len(known_ids) or not len(ids):
        return np.zeros(len(ids), np.int32)
    ids = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.large_string())
    at = pc.index_in(ids.cast(pa.large_string()), value_set=known_ids.cast(pa.large_string()))
    found = at.is_valid().to_numpy(zero_copy_only=False)
    levels = np.zeros(len(ids), np.int32)
    levels[found] = known_levels[at.drop_null().to_numpy()]
    return levels


@dataclass
class KeptOutcomes:
    """What a run keeps for outcome reports: the outcome signals, their values (rows x signals) and the
    bad-profit flags, rows in export order."""

    signals: list[str]
    values: np.ndarray
    bad_profit: np.ndarray


def _fit_and_score(model, matrix: np.ndarray, previous_tiers: np.ndarray):
    """Fits and scores the exported matrix (columns: ``model.exported_signal_names``); a model with a
    lifetime-value block first fits it on the population and fills in the derived signals. Then the outcome
    values and bad-profit flags of a model with an outcomes block."""
    names, population = list(model.exported_signal_names), None
    if model.lifetime_value is not None:
        population = lifetime_value.fit_matrix(model, matrix, names)
        matrix, names, _ = lifetime_value.with_derived(model, population, matrix, names, in_place=True)
    fitted = scoring_engine.fit(model, matrix, signal_names=names)
    result = scoring_engine.score(fitted, matrix, previous_tiers=previous_tiers, with_rank=True, signal_names=names)
    signals, values = outcomes.outcome_columns(model, matrix, names)
    kept = KeptOutcomes(signals, values, outcomes.bad_profit_flags(model, result.dimensions, signals, values))
    return fitted.with_tier_thresholds(result.tier_thresholds), result, population, kept


def ranked_chunks(ids: pa.Array | list[str], result, previous_tiers: np.ndarray, kept: KeptOutcomes | None = None,
                  stages: np.ndarray | None = None):
    """Results in rank order, cut into chunks (an iterator); counts per tier; (from level, to level, customers)
    moves. Without
    ``kept`` and ``stages`` (results imported, not run) no outcome values, no flags, stage unspecified."""
    n = len(result.rank)
    ids = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.large_string())
    kept = kept or KeptOutcomes([], np.empty((n, 0)), np.zeros(n, bool))
    stages = np.zeros(n, np.uint8) if stages is None else stages
    order = np.argsort(result.rank, kind="stable")
    blobs = store.packed_ids(ids, order, [*range(0, len(order), RESULT_CHUNK), len(order)])
    levels = result.tier.astype(np.int32) + 1
    previous_levels = previous_tiers.astype(np.int32) + 1

    def chunks():  # made as they are written: one chunk's copy of the results at a time, not the whole run's
        for start in range(0, len(order), RESULT_CHUNK):
            part = order[start:start + RESULT_CHUNK]
            yield ResultChunk(start + 1, [], result.dimensions[part], result.composite[part], result.percentile[part],
                              levels[part], previous_levels[part], kept.values[part], stages[part],
                              kept.bad_profit[part], ids_blob=blobs[start // RESULT_CHUNK])
    counts = np.bincount(result.tier, minlength=len(result.tier_ids)).tolist() if len(ids) else \
        [0] * len(result.tier_ids)
    width = len(result.tier_ids) + 1  # levels 0 (not in the previous run) .. tiers
    pair_counts = np.bincount(previous_levels.astype(np.int64) * width + levels, minlength=width * width)
    moves = [(int(pair // width), int(pair % width), int(pair_counts[pair])) for pair in np.flatnonzero(pair_counts)]
    return chunks(), counts, moves


def _history_rows(result, previous_tiers: np.ndarray, kept: KeptOutcomes, stages: np.ndarray):
    """Each customer's row of the history layout (services/scoring/history.py), in export order, as the columns
    history.write stacks a part at a time."""
    floats = [result.dimensions, result.composite, result.percentile, result.rank.astype(np.float64), kept.values]
    ints = [result.tier.astype(np.int32) + 1, previous_tiers.astype(np.int32) + 1, stages, kept.bad_profit]
    return floats, ints


def _without_churned(export: columns.SignalMatrix) -> tuple[pa.Array, np.ndarray, np.ndarray, int]:
    """The exported customers a run scores (all but the churned), their signals and lifecycle stages, and how
    many were left out."""
    stages = export.stages
    churned = stages == common_pb2.LIFECYCLE_STAGE_CHURNED
    left_out = int(churned.sum())
    if not left_out:
        return export.customer_ids, export.values, stages, 0
    keep = np.flatnonzero(~churned)
    return export.customer_ids.take(pa.array(keep)), export.values[keep], stages[keep], left_out
