"""ScoringService: model versions, scoring runs, run results and online scoring."""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
import math
import re
import time
from typing import Any

import grpc
import numpy as np
from sqlalchemy.engine import Engine, Row

import scoring_engine
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from scoring_engine import lifetime_value
from scoring_engine.model import DERIVED_SIGNALS
from services.common.auth import current_caller
from services.common.db import long_read_transaction, read_transaction, write_transaction
from services.common.deadlines import Deadline
from services.common.streams import in_threads
from services.common.errors import (
    ServiceError, Violations, failed_precondition, invalid_argument, not_found,
)
from services.common.validation import (
    SIGNAL_NAME, SLUG, check_text, customer_id_from_name, decode_offset_token, encode_page_token, page_size,
)
from services.registry.customers import now_us, set_timestamp
from services.scoring import history, outcomes, store
from services.scoring.models import check_sizes, check_spec, spec_of, to_proto
from services.scoring.run_import import RunImport
from services.scoring.runs import RunExecutor, previous_tiers, ranked_chunks
from services.scoring.watch import RunWatch

# "models/" and "runs/" may be left out: a model id holds no '/', a run id is a number.
MODEL_NAME = re.compile(r"(?:models/)?([a-z][a-z0-9-]{0,62})(?:/versions/([1-9][0-9]{0,8}))?")
RUN_NAME = re.compile(r"(?:runs/)?([1-9][0-9]{0,17})")
DEFAULT_MODEL = "models/default"
MAX_BATCH_ROWS = 65_536
# Signals per ScoreSignals request and columns per ScoreBatch chunk (a model reads at most 256 signals).
MAX_INLINE_SIGNALS = 256
TERMINAL = (pb.RUN_STATE_COMPLETED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)
CURRENT_RUN_TTL = 1.0
# Completed runs ScoreBatch keeps at hand when named (the hierarchy re-scores with the run it serves).
COMPLETED_RUNS_KEPT = 4


def parse_model_name(name: str, field_path: str) -> tuple[str, int | None]:
    """"models/{id}[/versions/{n}]" or the same without "models/" -> (model_id, version or None)."""
    match = MODEL_NAME.fullmatch(name or DEFAULT_MODEL)
    if not match:
        raise invalid_argument(field_path, 'expected "models/{model_id}" or "models/{model_id}/versions/{n}" '
                                           '("models/" may be left out)', "INVALID_MODEL_NAME")
    return match.group(1), int(match.group(2)) if match.group(2) else None


def parse_model_id(value: str, field_path: str) -> str:
    """A model_id filter: "default" or "models/default"; empty stays empty (any model)."""
    model_id = value.removeprefix("models/")
    if value and not SLUG.fullmatch(model_id):
        raise invalid_argument(field_path, 'a model_id like "default" ([a-z][a-z0-9-]{0,62}) or "models/default"',
                               "INVALID_MODEL_NAME")
    return model_id


def parse_run_name(name: str, field_path: str) -> int:
    match = RUN_NAME.fullmatch(name)
    if not match:
        raise invalid_argument(field_path, 'expected "runs/{run_id}" or the run_id', "INVALID_RUN_NAME")
    return int(match.group(1))


class ScoringServicer(pb_grpc.ScoringServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        scoring_engine.warm_up()  # compile or load the kernels now, not in the first request
        lifetime_value.warm_up()
        history.warm_up()
        self.runs = RunExecutor(engine)
        self.watch = RunWatch(engine, self.runs, self._to_run_proto)
        self._fitted: dict[int, tuple[scoring_engine.FittedModel, lifetime_value.PopulationFit | None]] = {}
        self._registry_stub: registry_service_pb2_grpc.RegistryServiceStub | None = None
        # The registry servicer when this process serves it too (set by the server): ScoreCustomer then
        # reads the signals from it directly rather than calling GetCustomer on its own port.
        self.local_registry = None
        # model_id -> (run, fitted, lifetime-value fit, executor generation, monotonic time read)
        self._current_runs: dict[str, tuple] = {}
        # run_id -> (run, fitted): the completed runs ScoreBatch was asked to score with by name.
        self._completed_runs: dict[int, tuple] = {}
        # (model_id, version) -> (engine model, tiers): versions are immutable.
        self._versions: dict[tuple[str, int], tuple[scoring_engine.ValueModel, list[common_pb2.TierRef]]] = {}
        self.stopping = False
        self._sweeper: asyncio.Task | None = None
        with write_transaction(engine) as conn:
            store.fail_abandoned(conn, now_us())
            if store.get_model(conn, "default", None) is None:
                default = scoring_engine.default_model()
                store.create_model(conn, "default", default.to_json(), "shipped default model", "cvh", now_us())

    # -- models ----------------------------------------------------------------------------------------

    async def CreateModel(self, request, context):
        check_sizes(request.model)
        model = check_spec(spec_of(request.model))
        violations = Violations()
        check_text(request.model.change_note, "model.change_note", 1024, violations)
        violations.raise_if_any("model")
        creator = current_caller.get()

        def create():
            with write_transaction(self.engine) as conn:
                return store.create_model(conn, model.model_id, model.to_json(), request.model.change_note,
                                          creator, now_us())
        return _model_proto(await asyncio.to_thread(create))

    async def GetModel(self, request, context):
        model_id, version = parse_model_name(request.name, "name")
        return _model_proto(await asyncio.to_thread(self._model_row, model_id, version))

    def _model_row(self, model_id: str, version: int | None) -> Row:
        with read_transaction(self.engine) as conn:
            row = store.get_model(conn, model_id, version)
        if row is None:
            raise not_found(f"models/{model_id}" + (f"/versions/{version}" if version else ""))
        return row

    async def ListModels(self, request, context):
        size = page_size(request.page_size)
        model_id = parse_model_id(request.model_id, "model_id")
        offset = decode_offset_token(request.page_token, {"model_id": model_id})

        def page():
            with read_transaction(self.engine) as conn:
                return store.list_models(conn, model_id, offset, size + 1)
        rows = await asyncio.to_thread(page)
        response = pb.ListModelsResponse(models=[_model_proto(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = encode_page_token(offset + size, {"model_id": model_id})
        return response

    async def ActivateModel(self, request, context):
        model_id, version = parse_model_name(request.name, "name")

        def activate():
            with write_transaction(self.engine) as conn:
                if version is None:
                    raise _version_required(conn, model_id)
                if store.get_model(conn, model_id, version) is None:
                    raise not_found(f"models/{model_id}/versions/{version}")
                store.activate(conn, model_id, version)
                return store.get_model(conn, model_id, version)
        return _model_proto(await asyncio.to_thread(activate))

    # -- runs ------------------------------------------------------------------------------------------

    async def StartScoringRun(self, request, context):
        model_id, version = parse_model_name(request.model, "model")

        def start():
            with write_transaction(self.engine) as conn:
                row = store.get_model(conn, model_id, version)
                if row is None:
                    raise not_found(f"models/{model_id}" + (f"/versions/{version}" if version else ""))
                running = store.active_run(conn, model_id)
                if running is not None:
                    raise failed_precondition(
                        f"runs/{running.run_id} of models/{model_id} is still running; wait for it or cancel it",
                        "RUN_IN_PROGRESS")
                return store.create_run(conn, model_id, row.version, now_us()), row
        run_id, row = await asyncio.to_thread(start)
        self.runs.launch(run_id, _engine_model(row.spec_json))
        return await self._run_proto(run_id)

    async def GetScoringRun(self, request, context):
        return await self._run_proto(parse_run_name(request.name, "name"))

    async def _run_proto(self, run_id: int) -> pb.ScoringRun:
        return await asyncio.to_thread(self._read_run, run_id)

    def _read_run(self, run_id: int) -> pb.ScoringRun:
        with read_transaction(self.engine) as conn:
            run = store.get_run(conn, run_id)
            if run is None:
                raise not_found(f"runs/{run_id}")
            return self._to_run_proto(conn, run)

    def _to_run_proto(self, conn, run: Row) -> pb.ScoringRun:
        message = pb.ScoringRun(
            name=f"runs/{run.run_id}", model=f"models/{run.model_id}/versions/{run.model_version}",
            state=run.state, customers_done=run.customers_done, customers_total=run.customers_total,
            percent_done=run.percent_done, failure_reason=run.failure_reason,
            export_seconds=run.export_seconds, scoring_seconds=run.scoring_seconds, store_seconds=run.store_seconds,
            churned_left_out=run.churned_left_out, outcome_signals=store.outcome_signals(run),
            history_indexed=bool(run.history_buckets),
            previous_run=f"runs/{run.previous_run_id}" if run.previous_run_id else "",
            export_sequence=run.export_sequence or 0)
        for field_name in ("create_time", "start_time", "end_time"):
            if getattr(run, field_name + "_us"):
                set_timestamp(getattr(message, field_name), getattr(run, field_name + "_us"))
        tiers = self._tiers(conn, run)
        for level, count in enumerate(store.tier_counts(run), start=1):
            message.tier_counts.add(tier=tiers[level - 1], customers=count)
        if run.lifetime_value_json:
            message.lifetime_value.CopyFrom(_lifetime_value_proto(_population_of(run)))
        return message

    def _tiers(self, conn, run: Row) -> list[common_pb2.TierRef]:
        model = _engine_model(store.get_model(conn, run.model_id, run.model_version).spec_json)
        return [common_pb2.TierRef(tier_id=t.tier_id, level=i + 1, display_name=t.display_name or t.tier_id)
                for i, t in enumerate(model.tiers)]

    async def ListScoringRuns(self, request, context):
        size = page_size(request.page_size, default=50)
        model_id = parse_model_id(request.model_id, "model_id")
        if request.state not in pb.RunState.values():
            raise invalid_argument("state", f"unknown run state {request.state}")
        filters = {"model_id": model_id, "state": request.state}
        offset = decode_offset_token(request.page_token, filters)

        def page():
            with read_transaction(self.engine) as conn:
                rows = store.list_runs(conn, model_id, request.state, offset, size + 1)
                return [self._to_run_proto(conn, r) for r in rows[:size]], len(rows) > size
        found, more = await asyncio.to_thread(page)
        response = pb.ListScoringRunsResponse(runs=found)
        if more:
            response.next_page_token = encode_page_token(offset + size, filters)
        return response

    async def WatchScoringRun(self, request, context):
        run_id = parse_run_name(request.name, "name")
        last = await self._run_proto(run_id)
        yield last
        if last.state in TERMINAL:
            return
        async for run in self.watch.run_states(run_id):  # one poll per process serves every watcher
            if run != last:
                yield run
                last = run
            if run.state in TERMINAL:
                return

    async def WatchRuns(self, request, context):
        model_id = parse_model_id(request.model_id, "model_id")

        def completed() -> list[pb.ScoringRun]:
            with read_transaction(self.engine) as conn:
                rows = store.completed_since(conn, 0, model_id)
                return [self._to_run_proto(conn, r) for r in rows]

        found = await asyncio.to_thread(completed)
        if request.include_current:
            latest = {}
            for run in found:
                latest[run.model] = run
            for run in latest.values():
                yield run
        after = max((int(r.name.split("/")[1]) for r in found), default=0)
        async for runs in self.watch.completed_runs(after, model_id):  # one poll per process
            for run in runs:
                yield run

    async def start_background(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self.runs.sweep_abandoned())

    async def stop_background(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()

    def begin_shutdown(self) -> None:
        self.stopping = True
        self.watch.stop()
        self.runs.notify()

    async def CancelScoringRun(self, request, context):
        run_id = parse_run_name(request.name, "name")
        run = await self._run_proto(run_id)
        if run.state in TERMINAL:
            raise failed_precondition(f"runs/{run_id} already ended ({pb.RunState.Name(run.state)})", "RUN_ENDED")
        self.runs.cancel(run_id)
        # Wait up to 30 s for the run to end, and answer before the caller's deadline with the state then.
        remaining = context.time_remaining()
        deadline = Deadline(30.0 if remaining is None else min(30.0, max(0.0, remaining - 0.5)))
        while True:
            run = await self._run_proto(run_id)
            if run.state in TERMINAL or run_id not in self.runs.tasks or deadline.expired():
                return run
            await asyncio.sleep(0.05)

    # -- results ---------------------------------------------------------------------------------------

    def _completed_run(self, conn, name: str, field_path: str) -> Row:
        """A completed run named by "runs/{id}" (or the id), or by "models/{model_id}" (or the model_id): that
        model's current run."""
        if name and not RUN_NAME.fullmatch(name) and MODEL_NAME.fullmatch(name):
            model_id, _ = parse_model_name(name, field_path)
            run = store.latest_completed(conn, model_id)
            if run is None:
                raise failed_precondition(f"models/{model_id} has no completed run yet; start one with "
                                          "StartScoringRun", "NO_COMPLETED_RUN")
            return run
        if not RUN_NAME.fullmatch(name):
            raise invalid_argument(field_path, 'expected "runs/{run_id}", or "models/{model_id}" for its current run',
                                   "INVALID_RUN_NAME")
        name = f"runs/{parse_run_name(name, field_path)}"
        run = store.get_run(conn, int(name[len("runs/"):]))
        if run is None:
            raise not_found(name)
        if run.state != pb.RUN_STATE_COMPLETED:
            raise failed_precondition(f"{name} is {pb.RunState.Name(run.state)}, not completed", "RUN_NOT_COMPLETED")
        return run

    async def StreamRunResults(self, request, context):
        if not 0 <= request.chunk_size <= 65_536:
            raise invalid_argument("chunk_size", "0 (default 8,192) to 65,536")
        async for message in in_threads(self._result_messages(request.run)):
            yield message

    def _result_messages(self, name: str):
        with long_read_transaction(self.engine) as conn:
            run = self._completed_run(conn, name, "run")
            model = _engine_model(store.get_model(conn, run.model_id, run.model_version).spec_json)
            columns = _dimension_names(model)
            signals = store.outcome_signals(run)
            first = True
            for chunk in store.read_results(conn, run.run_id, len(columns)):
                message = pb.RunResultsChunk(
                    run=f"runs/{run.run_id}", dimension_scores=_columnar(chunk.customer_ids, columns,
                                                                         chunk.dimension_scores),
                    composite=chunk.composite.tobytes(), tier_levels=chunk.tier_levels.tobytes(),
                    ranks=np.arange(chunk.first_rank, chunk.first_rank + len(chunk.customer_ids),
                                    dtype="<i8").tobytes(),
                    percentiles=chunk.percentiles.tobytes(), previous_tier_levels=chunk.previous_tier_levels.tobytes(),
                    outcome_signals=signals, outcome_values=_matrix(chunk.outcome_values, len(signals)),
                    lifecycle_stages=chunk.lifecycle_stages.tobytes(), bad_profit=chunk.bad_profit.tobytes())
                if first:
                    message.tiers.extend(self._tiers(conn, run))
                    message.total_customers = run.customers_total
                    first = False
                yield message
            if first:  # an empty base: one chunk that still names the run, tiers and columns
                yield pb.RunResultsChunk(run=f"runs/{run.run_id}", tiers=self._tiers(conn, run),
                                         dimension_scores=_columnar([], columns, np.empty((0, len(columns)))),
                                         outcome_signals=signals, outcome_values=_matrix(np.empty((0, 0)),
                                                                                          len(signals)))

    async def ImportRunResults(self, request_iterator, context):
        job = registered = None
        try:
            async for request in request_iterator:
                if job is None:
                    job = await asyncio.to_thread(self._import_job, request.model)
                    # The registry's ids are read while the results arrive.
                    registered = asyncio.ensure_future(self._registered_ids(job.model))
                await asyncio.to_thread(job.add, request)
            if job is None:  # no message at all: an empty import of the default model
                job = await asyncio.to_thread(self._import_job, "")
                registered = asyncio.ensure_future(self._registered_ids(job.model))
            ids = await registered
        finally:  # the stream failed first: the registry's read is not wanted (nor its failure reported)
            if registered is not None and not registered.done():
                registered.cancel()
            elif registered is not None and not registered.cancelled():
                registered.exception()
        run_id = await asyncio.to_thread(self._store_import, job, ids)
        self.runs.notify()
        return await self._run_proto(run_id)

    def _import_job(self, model_name: str) -> RunImport:
        model_id, version = parse_model_name(model_name, "model")
        row = self._model_row(model_id, version)
        return RunImport(model_id, row.version, _engine_model(row.spec_json))

    async def _registered_ids(self, model) -> tuple[list[str], list[str]]:
        """The ids of the registered customers a run scores, and of the churned ones it leaves out (the registry's
        export of one signal column)."""
        ids: list[str] = []
        churned: list[str] = []
        try:
            async with self.runs._registry_export(list(model.signal_names[:1])) as blocks:
                async for block_ids, _, block_stages, _, _ in blocks:
                    stages = np.frombuffer(block_stages, np.uint8)
                    for customer_id, stage in zip(block_ids, stages.tolist()):
                        (churned if stage == common_pb2.LIFECYCLE_STAGE_CHURNED else ids).append(customer_id)
        except grpc.aio.AioRpcError as error:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"the registry answered {error.code().name}: "
                               f"{error.details()}; nothing was written", "REGISTRY_UNAVAILABLE") from None
        return ids, churned

    def _store_import(self, job: RunImport, registered: tuple[list[str], list[str]]) -> int:
        started = time.perf_counter()
        result, fitted = job.finish(*registered)
        checked = time.perf_counter()
        with write_transaction(self.engine) as conn:
            running = store.active_run(conn, job.model_id)
            if running is not None:
                raise failed_precondition(
                    f"runs/{running.run_id} of models/{job.model_id} is still running; an import now would complete "
                    "before it: wait for it or cancel it, then import again (nothing was written)", "RUN_IN_PROGRESS")
            previous_run, previous = previous_tiers(conn, job.model, job.ids)
            chunks, counts, moves = ranked_chunks(job.ids, result, previous)
            run_id = store.create_completed_run(
                conn, job.model_id, job.version, now_us(), customers_done=len(job.ids),
                customers_total=len(job.ids), previous_run_id=previous_run, fitted=fitted,
                tier_counts_json=json.dumps(counts), tier_moves_json=json.dumps(moves))
            store.write_results(conn, run_id, chunks)
            store.set_seconds(conn, run_id, scoring_seconds=checked - started,
                              store_seconds=time.perf_counter() - checked)
        return run_id

    async def ListRunResults(self, request, context):
        size = page_size(request.page_size)
        filters = {"run": request.run, "tier": request.tier_id}
        rank = decode_offset_token(request.page_token, filters) + 1
        deadline = Deadline.of(context)

        def page():
            with read_transaction(self.engine) as conn:
                run = self._completed_run(conn, request.run, "run")
                model = _engine_model(store.get_model(conn, run.model_id, run.model_version).spec_json)
                tiers = self._tiers(conn, run)
                signals = store.outcome_signals(run)
                level = None
                if request.tier_id:
                    level = next((t.level for t in tiers if t.tier_id == request.tier_id), None)
                    if level is None:
                        raise invalid_argument("tier_id", f"the run's model has no tier {request.tier_id!r}")
                results, next_rank = [], None
                for chunk in store.read_results(conn, run.run_id, len(model.dimensions), from_rank=rank):
                    # A tier's members may be spread over a whole run: stop scanning for a caller gone.
                    deadline.check("reading the run's results")
                    for i, customer_id in enumerate(chunk.customer_ids):
                        row_rank = chunk.first_rank + i
                        if row_rank < rank or (level is not None and chunk.tier_levels[i] != level):
                            continue
                        if len(results) == size:
                            next_rank = row_rank
                            break
                        results.append(_customer_result(customer_id, model, chunk, i, row_rank, tiers, signals))
                    if next_rank is not None:
                        break
                return results, next_rank
        results, next_rank = await asyncio.to_thread(page)
        response = pb.ListRunResultsResponse(results=results)
        if next_rank is not None:
            response.next_page_token = encode_page_token(next_rank - 1, filters)
        return response

    async def GetTierMovement(self, request, context):
        def movement():
            with read_transaction(self.engine) as conn:
                run = self._completed_run(conn, request.run, "run")
                tiers = self._tiers(conn, run)
                answer = pb.TierMovement(run=f"runs/{run.run_id}",
                                         previous_run=f"runs/{run.previous_run_id}" if run.previous_run_id else "")
                for before, after, count in store.tier_moves(run):
                    answer.moves.add(from_tier=tiers[before - 1] if before else common_pb2.TierRef(),
                                     to_tier=tiers[after - 1], customers=count)
                return answer
        return await asyncio.to_thread(movement)

    # -- outcomes --------------------------------------------------------------------------------------

    async def GetOutcomeReport(self, request, context):
        pairs = _outcome_request(request)

        def report():
            with long_read_transaction(self.engine) as conn:
                runs = self._outcome_runs(conn, request, pairs)
                loaded: dict[int, outcomes.RunColumns] = {}

                def columns_of(run: Row) -> outcomes.RunColumns:
                    if run.run_id not in loaded:
                        spec = store.get_model(conn, run.model_id, run.model_version).spec_json
                        loaded[run.run_id] = outcomes.load_run(conn, run, _engine_model(spec), self._tiers(conn, run))
                    return loaded[run.run_id]
                answer = pb.OutcomeReport()
                for start, end in zip(runs, runs[1:]):
                    answer.periods.append(outcomes.period(columns_of(start), columns_of(end)))
                    loaded.pop(start.run_id)  # each run is read once: the start of a pair was the end of the last
                return answer
        return await asyncio.to_thread(report)

    def _outcome_runs(self, conn, request, pairs: tuple) -> list[Row]:
        """The runs of the report, oldest first."""
        if pairs[0] == "last":
            _, model_id, count = pairs
            runs = store.last_completed(conn, model_id, count)
            if len(runs) < 2:
                raise failed_precondition(f"models/{model_id} has {len(runs)} completed run(s); an outcome report "
                                          "compares two", "NOT_ENOUGH_RUNS")
            return runs[::-1]
        _, from_id, to_id = pairs
        found = {}
        for field_path, run_id in (("from_run", from_id), ("to_run", to_id)):
            run = store.get_run(conn, run_id)
            if run is None:
                raise not_found(f"runs/{run_id}")
            if run.state != pb.RUN_STATE_COMPLETED:
                raise failed_precondition(f"{field_path}: runs/{run_id} is {pb.RunState.Name(run.state)}, not "
                                          "completed", "RUN_NOT_COMPLETED")
            found[field_path] = run
        start, end = found["from_run"], found["to_run"]
        if start.model_id != end.model_id:
            raise invalid_argument("to_run", f"runs/{to_id} is a run of models/{end.model_id}, runs/{from_id} of "
                                             f"models/{start.model_id}: compare runs of one model",
                                   "RUNS_OF_DIFFERENT_MODELS")
        return [start, end]

    async def GetCustomerHistory(self, request, context):
        customer_id = customer_id_from_name(request.customer, "customer")
        model_id, version = parse_model_name(request.model, "model")
        if version is not None:
            raise invalid_argument("model", "a model (\"models/{model_id}\"), not a version: its runs may use "
                                            "several versions", "INVALID_MODEL_NAME")
        if not 0 <= request.last_runs <= MAX_HISTORY_RUNS:
            raise invalid_argument("last_runs", f"1 to {MAX_HISTORY_RUNS} runs (0: {DEFAULT_HISTORY_RUNS}), got "
                                                f"{request.last_runs}")
        count = request.last_runs or DEFAULT_HISTORY_RUNS

        def read() -> pb.CustomerHistory:
            with read_transaction(self.engine) as conn:
                runs = store.last_completed(conn, model_id, count)
                if not runs:
                    raise failed_precondition(f"models/{model_id} has no completed run yet; start one with "
                                              "StartScoringRun", "NO_COMPLETED_RUN")
                found = history.find(conn, runs, customer_id)
                for run in runs:
                    if run.run_id not in found:  # a run made before runs kept the history layout
                        found[run.run_id] = self._scan_for(conn, run, customer_id)
                answer = pb.CustomerHistory(customer=f"customers/{customer_id}", model=f"models/{model_id}")
                for run in runs:
                    entry = answer.runs.add(run=f"runs/{run.run_id}",
                                            model=f"models/{run.model_id}/versions/{run.model_version}")
                    set_timestamp(entry.end_time, run.end_time_us)
                    if found[run.run_id] is not None:
                        model, tiers = self._version(conn, run)
                        entry.result.CopyFrom(_history_result(customer_id, model, tiers, store.outcome_signals(run),
                                                              found[run.run_id]))
                if not any(entry.HasField("result") for entry in answer.runs):
                    raise ServiceError(grpc.StatusCode.NOT_FOUND,
                                       f"customers/{customer_id} has no result in the last {len(runs)} completed "
                                       f"run(s) of models/{model_id}", "CUSTOMER_NOT_FOUND",
                                       metadata={"resource": f"customers/{customer_id}"})
                return answer
        return await asyncio.to_thread(read)

    def _version(self, conn, run: Row) -> tuple[scoring_engine.ValueModel, list[common_pb2.TierRef]]:
        key = (run.model_id, run.model_version)
        if key not in self._versions:
            self._versions[key] = (_engine_model(store.get_model(conn, *key).spec_json), self._tiers(conn, run))
        return self._versions[key]

    def _scan_for(self, conn, run: Row, customer_id: str) -> history.Found | None:
        """The customer's row in a run without the history layout, from its result chunks (every chunk read)."""
        model, _ = self._version(conn, run)
        for chunk in store.read_results(conn, run.run_id, len(model.dimensions)):
            if customer_id in chunk.customer_ids:
                i = chunk.customer_ids.index(customer_id)
                floats = np.concatenate([chunk.dimension_scores[i], [chunk.composite[i], chunk.percentiles[i],
                                                                     chunk.first_rank + i], chunk.outcome_values[i]])
                ints = np.array([chunk.tier_levels[i], chunk.previous_tier_levels[i], chunk.lifecycle_stages[i],
                                 chunk.bad_profit[i]], np.int32)
                return history.Found(floats, ints)
        return None

    # -- online scoring --------------------------------------------------------------------------------

    async def _current_async(self, model_name: str, field_path: str) -> tuple[Row, scoring_engine.FittedModel, Any]:
        """_current, answered on the event loop when cached (the usual case), else on a worker thread."""
        cached = self._cached_current(parse_model_name(model_name, field_path)[0])
        return cached if cached else await asyncio.to_thread(self._current, model_name, field_path)

    def _cached_current(self, model_id: str):
        cached = self._current_runs.get(model_id)
        if cached and cached[3] == self.runs.generation and time.monotonic() - cached[4] < CURRENT_RUN_TTL:
            return cached[:3]
        return None

    def _current(self, model_name: str, field_path: str) -> tuple[Row, scoring_engine.FittedModel, Any]:
        """The model's current run, its fitted statistics and its lifetime-value fit (None without a
        lifetime_value block), re-read at most once a second.

        Runs completed here replace it at once (see RunExecutor.notify); another
        replica's new run is seen within CURRENT_RUN_TTL seconds.
        """
        model_id = parse_model_name(model_name, field_path)[0]
        cached = self._cached_current(model_id)
        if cached:
            return cached
        with read_transaction(self.engine) as conn:
            run = self._completed_run(conn, f"models/{model_id}", field_path)
            if run.fitted is None:  # imported without fitted statistics: the latest run that has them
                run = store.latest_completed(conn, model_id, fitted=True)
                if run is None:
                    raise failed_precondition(
                        f"models/{model_id} has no completed run with fitted statistics (its runs were imported "
                        "without them); start one with StartScoringRun", "NO_COMPLETED_RUN")
        fitted, population = self._fitted_of(run)
        self._current_runs[model_id] = (run, fitted, population, self.runs.generation, time.monotonic())
        return run, fitted, population

    async def ScoreSignals(self, request, context):
        if len(request.signals) > MAX_INLINE_SIGNALS:
            raise invalid_argument("signals", f"at most {MAX_INLINE_SIGNALS} signals, got {len(request.signals)}")
        violations = Violations()
        for name, value in request.signals.items():
            if not SIGNAL_NAME.fullmatch(name):
                violations.add(f"signals[{name}]", "not a signal name ([a-z][a-z0-9_]{0,62})")
            elif not math.isfinite(value):
                violations.add(f"signals[{name}]", f"must be a finite number, got {value}")
        violations.raise_if_any()
        run, fitted, population = await self._current_async(request.model, "model")
        _check_model_reads(fitted.model, run, [(f"signals[{name}]", name) for name in request.signals], "signals")
        return _customer_score("", run, fitted, dict(request.signals), population)

    async def ScoreCustomer(self, request, context):
        customer_id = customer_id_from_name(request.customer, "customer")
        run, fitted, population = await self._current_async(request.model, "model")
        if self.local_registry is not None:
            # SQLite answers a primary-key read from its cache in tens of microseconds: less than a trip
            # to a worker thread and back. A database across the network is waited for off the loop.
            if self.engine.dialect.name == "sqlite":
                signals = self.local_registry.current_signals(customer_id)
            else:
                signals = await asyncio.to_thread(self.local_registry.current_signals, customer_id)
            if signals is None:
                raise not_found(f"customers/{customer_id}")
            return _customer_score(f"customers/{customer_id}", run, fitted, signals, population)
        try:
            customer = await self._registry().GetCustomer(
                registry_service_pb2.GetCustomerRequest(name=f"customers/{customer_id}"), timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found(f"customers/{customer_id}") from None
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"the registry answered {error.code().name}",
                               "REGISTRY_UNAVAILABLE") from None
        signals = {name: s.value for name, s in customer.signals.items()}
        return _customer_score(f"customers/{customer_id}", run, fitted, signals, population)

    def _registry(self) -> registry_service_pb2_grpc.RegistryServiceStub:
        """One channel to the registry for every online call (made on first use, inside the event loop)."""
        if self._registry_stub is None:
            channel = self.runs.registry.channel()
            self._registry_stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        return self._registry_stub

    async def ScoreBatch(self, request_iterator, context):
        fitted = run = population = None
        async for request in request_iterator:
            chunk = request.signals
            matrix = _matrix_of(chunk)  # bad input is INVALID_ARGUMENT whatever state the model is in
            if fitted is None:
                run, fitted, population = await asyncio.to_thread(self._scoring_run, request)
            _check_model_reads(fitted.model, run, [(f"signals.column_names[{i}]", name)
                                                   for i, name in enumerate(chunk.column_names)],
                               "signals.column_names")
            previous = _previous_tiers(request.previous_tier_levels, len(chunk.customer_ids), len(fitted.model.tiers))
            result, derived = await asyncio.to_thread(_score_chunk, fitted, population, matrix,
                                                      list(chunk.column_names), previous)
            model = fitted.model
            response = pb.ScoreBatchResponse(
                dimension_scores=_columnar(list(chunk.customer_ids), _dimension_names(model), result.dimensions),
                composite=result.composite.astype("<f8").tobytes(),
                tier_levels=(result.tier.astype("<i4") + 1).tobytes(), run=f"runs/{run.run_id}")
            if derived is not None:
                response.derived_signals.CopyFrom(_columnar(list(chunk.customer_ids), list(DERIVED_SIGNALS), derived))
            yield response

    def score_with_run(self, run: str, signal_names: list[str], matrix: np.ndarray, previous_levels: np.ndarray
                       ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """ScoreBatch with ``run`` for a caller in this process (the hierarchy re-scoring customers whose
        signals changed), without gRPC: (dimension names, dimension scores, composite, tier levels, 1 = top).
        Signals the run's model does not read are left out; a lifetime-value block's signals are derived from
        the run's fit, as ScoreBatch derives them. Blocking."""
        _, fitted, population = self._scoring_run(pb.ScoreBatchRequest(run=run))
        model = fitted.model
        reads = [j for j, name in enumerate(signal_names) if name in set(model.input_signal_names)]
        result, _ = _score_chunk(fitted, population, matrix[:, reads], [signal_names[j] for j in reads],
                                 previous_levels.astype(np.int32) - 1)
        return _dimension_names(model), result.dimensions, result.composite, result.tier.astype(np.int32) + 1

    def signals_read(self, run: str) -> list[str]:
        """The signals the model of completed ``run`` reads (a lifetime-value block's inputs too). Blocking."""
        run_id = parse_run_name(run, "run")
        with read_transaction(self.engine) as conn:
            row = self._completed_run(conn, f"runs/{run_id}", "run")
            return list(self._version(conn, row)[0].input_signal_names)

    def _scoring_run(self, request: pb.ScoreBatchRequest) -> tuple[Row, scoring_engine.FittedModel, object]:
        """The run a ScoreBatch scores with (the one it names, else the model's current one), its fitted model
        and its lifetime-value fit (blocking)."""
        if not request.run:
            return self._current(request.model, "model")
        run_id = parse_run_name(request.run, "run")
        run = self._completed_runs.get(run_id)
        if run is None:  # a completed run never changes: read once
            with read_transaction(self.engine) as conn:
                run = self._completed_run(conn, f"runs/{run_id}", "run")
                if not run.fitted:  # imported without fitted statistics: the model's latest run that has them
                    run = store.latest_completed(conn, run.model_id, fitted=True)
                    if run is None:
                        raise failed_precondition(
                            f"{request.run} was imported without fitted statistics and its model has no completed "
                            "run with them; start one with StartScoringRun", "NO_COMPLETED_RUN")
            while len(self._completed_runs) >= COMPLETED_RUNS_KEPT:
                self._completed_runs.pop(next(iter(self._completed_runs)))
            self._completed_runs[run_id] = run
        return (run, *self._fitted_of(run))

    def _fitted_of(self, run: Row) -> tuple[scoring_engine.FittedModel, object]:
        """A completed run's fitted model and lifetime-value fit, read once (the fitted model may be megabytes)."""
        if run.run_id not in self._fitted:
            population = _population_of(run) if run.lifetime_value_json else None
            self._fitted[run.run_id] = (scoring_engine.FittedModel.from_bytes(run.fitted), population)
        return self._fitted[run.run_id]


MAX_OUTCOME_RUNS = 20
MAX_HISTORY_RUNS, DEFAULT_HISTORY_RUNS = 100, 20


def _history_result(customer_id: str, model, tiers: list[common_pb2.TierRef], signals: list[str],
                    row: history.Found) -> pb.CustomerResult:
    """A CustomerResult from a row of the history layout."""
    dims = len(model.dimensions)
    composite, percentile, rank = row.floats[dims:dims + 3].tolist()
    level, previous, stage, flag = row.ints.tolist()
    result = pb.CustomerResult(customer=f"customers/{customer_id}",
                               dimension_scores=_dimension_scores(model, row.floats[:dims]),
                               tier=tiers[level - 1], rank=int(rank), percentile=float(np.nan_to_num(percentile)))
    if composite == composite:
        result.composite = composite
    result.previous_tier.CopyFrom(tiers[previous - 1] if 0 < previous <= len(tiers) else common_pb2.TierRef())
    _add_outcomes(result, signals, row.floats[dims + 3:], stage, bool(flag))
    return result


def _outcome_request(request: pb.GetOutcomeReportRequest) -> tuple:
    """("last", model_id, N) or ("pair", from run id, to run id), or INVALID_ARGUMENT naming the field."""
    if request.last_runs:
        if not 2 <= request.last_runs <= MAX_OUTCOME_RUNS:
            raise invalid_argument("last_runs", f"2 to {MAX_OUTCOME_RUNS} runs (consecutive pairs of them), "
                                                f"got {request.last_runs}; 0 with from_run and to_run")
        for field_path in ("from_run", "to_run"):
            if getattr(request, field_path):
                raise invalid_argument(field_path, "set from_run and to_run, or model and last_runs, not both")
        model_id, version = parse_model_name(request.model, "model")
        if version is not None:
            raise invalid_argument("model", "a model (\"models/{model_id}\"), not a version: its runs may use "
                                            "several versions", "INVALID_MODEL_NAME")
        return "last", model_id, request.last_runs
    violations = Violations()
    for field_path in ("from_run", "to_run"):
        if not getattr(request, field_path):
            violations.add(field_path, 'required: "runs/{run_id}" (or set model and last_runs instead)')
    if request.model:
        violations.add("model", "only with last_runs (from_run and to_run name their model)", "INVALID_MODEL_NAME")
    violations.raise_if_any()
    from_id, to_id = parse_run_name(request.from_run, "from_run"), parse_run_name(request.to_run, "to_run")
    if to_id <= from_id:
        raise invalid_argument("to_run", f"must be a run after from_run (runs/{from_id}), got runs/{to_id}")
    return "pair", from_id, to_id


def _version_required(conn, model_id: str) -> ServiceError:
    """ActivateModel named a model, not a version: which versions there are, and why one must be named."""
    rows = store.list_models(conn, model_id, 0, 1000)
    if not rows:
        return not_found(f"models/{model_id}")
    versions = sorted(r.version for r in rows)
    active = next((r.version for r in rows if r.active), None)
    return invalid_argument(
        "name", f'name the version to activate, e.g. "models/{model_id}/versions/{versions[-1]}": '
                f'"models/{model_id}" means its active version (now {active}); versions: '
                + ", ".join(map(str, versions[-20:])), "MODEL_VERSION_REQUIRED")


def _check_model_reads(model, run: Row, named: list[tuple[str, str]], whole: str) -> None:
    """INVALID_ARGUMENT naming each signal the model does not read (with the nearest names it does), or,
    when none is one it reads, saying so: a misspelt name would otherwise score as a missing signal."""
    reads = list(model.input_signal_names)
    violations = Violations()
    for field_path, name in named:
        if name not in reads:
            nearest = difflib.get_close_matches(name, reads, n=3)
            hint = f"; did you mean {', '.join(nearest)}?" if nearest else ""
            violations.add(field_path, f"models/{run.model_id}/versions/{run.model_version} does not read "
                                       f"signal {name!r}{hint}", "UNKNOWN_SIGNAL")
    if len(violations.items) == len(named):
        shown = ", ".join(reads[:12]) + (f" (and {len(reads) - 12} more)" if len(reads) > 12 else "")
        violations.add(whole, f"none of the signals the model reads is given; it reads {shown}",
                       "NO_MODEL_SIGNALS" if not named else "UNKNOWN_SIGNAL")
    violations.raise_if_any()


# -- conversions ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _engine_model(spec_json: str) -> scoring_engine.ValueModel:
    return scoring_engine.ValueModel.from_json(spec_json)


def _model_proto(row: Row) -> pb.ValueModel:
    return to_proto(row.spec_json, row.version, row.change_note, row.creator, row.create_time_us, row.active)


def _dimension_names(model) -> list[str]:
    return [scoring_engine.model.enum_json_name(d.dimension) for d in model.dimensions]


def _columnar(ids: list[str], columns: list[str], values: np.ndarray) -> common_pb2.ColumnarChunk:
    return common_pb2.ColumnarChunk(customer_ids=ids, column_names=columns, values=common_pb2.Float64Matrix(
        rows=len(ids), columns=len(columns), data=np.ascontiguousarray(values, dtype="<f8").tobytes()))


def _matrix_of(chunk: common_pb2.ColumnarChunk) -> np.ndarray:
    values = chunk.values
    violations = Violations()
    rows = len(chunk.customer_ids)
    if rows > MAX_BATCH_ROWS:
        violations.add("signals.customer_ids", f"at most {MAX_BATCH_ROWS:,} rows per message")
    names = list(chunk.column_names)
    if len(names) > MAX_INLINE_SIGNALS:
        violations.add("signals.column_names", f"at most {MAX_INLINE_SIGNALS} columns, got {len(names)}")
        names = names[:MAX_INLINE_SIGNALS]
    for i, name in enumerate(names):
        if not SIGNAL_NAME.fullmatch(name):
            violations.add(f"signals.column_names[{i}]", "not a signal name ([a-z][a-z0-9_]{0,62})")
    if len(set(names)) != len(names):
        violations.add("signals.column_names", "names must not repeat")
    if (values.rows, values.columns, len(values.data)) != (rows, len(names), 8 * rows * len(names)):
        violations.add("signals.values", f"must be {rows} x {len(names)} float64 values (rows x column_names)")
    violations.raise_if_any()
    matrix = np.frombuffer(values.data, "<f8").reshape(rows, len(names))
    bad = np.argwhere(np.isinf(matrix))
    if bad.size:
        row, column = bad[0]
        raise invalid_argument(f"signals.values[{row}][{names[column]}]", "must be finite or NaN (missing)")
    return matrix


def _previous_tiers(data: bytes, rows: int, tiers: int) -> np.ndarray | None:
    """ScoreBatch's previous_tier_levels as the engine's previous tiers (0-based, -1 for none), or None."""
    if not data:
        return None
    if len(data) != 4 * rows:
        raise invalid_argument("previous_tier_levels", f"one int32 per row: {4 * rows} bytes for {rows} rows, "
                                                       f"got {len(data)}")
    levels = np.frombuffer(data, "<i4")
    bad = np.flatnonzero((levels < 0) | (levels > tiers))
    if bad.size:
        raise invalid_argument("previous_tier_levels", f"row {int(bad[0])}: level {int(levels[bad[0]])} is not "
                                                       f"0 (none) to {tiers} (the model's tiers)")
    return levels.astype(np.int32) - 1


def _dimension_scores(model, values) -> list[common_pb2.DimensionScore]:
    scores = []
    for spec, value in zip(model.dimensions, values):
        score = common_pb2.DimensionScore(dimension=int(spec.dimension))
        if value == value:
            score.score = float(value)
        scores.append(score)
    return scores


def _matrix(values: np.ndarray, columns: int) -> common_pb2.Float64Matrix:
    return common_pb2.Float64Matrix(rows=len(values), columns=columns,
                                    data=np.ascontiguousarray(values, dtype="<f8").tobytes() if columns else b"")


def _customer_result(customer_id, model, chunk, i, rank, tiers, signals: list[str]) -> pb.CustomerResult:
    result = pb.CustomerResult(
        customer=f"customers/{customer_id}", dimension_scores=_dimension_scores(model, chunk.dimension_scores[i]),
        tier=tiers[chunk.tier_levels[i] - 1], rank=rank, percentile=float(np.nan_to_num(chunk.percentiles[i])))
    if chunk.composite[i] == chunk.composite[i]:
        result.composite = float(chunk.composite[i])
    previous = int(chunk.previous_tier_levels[i])
    result.previous_tier.CopyFrom(tiers[previous - 1] if 0 < previous <= len(tiers) else common_pb2.TierRef())
    _add_outcomes(result, signals, chunk.outcome_values[i], int(chunk.lifecycle_stages[i]), bool(chunk.bad_profit[i]))
    return result


def _add_outcomes(result: pb.CustomerResult, signals: list[str], values: np.ndarray, stage: int,
                  bad_profit: bool) -> None:
    """A result's outcome values (missing ones left out), lifecycle stage and bad-profit flag."""
    result.outcome_values.update({name: float(v) for name, v in zip(signals, values.tolist()) if v == v})
    result.lifecycle_stage = stage
    result.bad_profit = bad_profit


def _score_chunk(fitted, population, matrix: np.ndarray, names: list[str], previous: np.ndarray | None = None):
    """A ScoreBatch chunk's scores (with hysteresis against ``previous`` tiers, 0-based, when given), and (a model
    with a lifetime-value block) its derived signals."""
    derived = None
    if fitted.model.lifetime_value is not None:
        matrix, names, derived = lifetime_value.with_derived(fitted.model, population, matrix, names)
    return scoring_engine.score(fitted, matrix, previous, False, names), derived


def _population_of(run: Row) -> lifetime_value.PopulationFit:
    return lifetime_value.PopulationFit.from_dict(json.loads(run.lifetime_value_json))


def _lifetime_value_proto(population: lifetime_value.PopulationFit) -> pb.LifetimeValueFit:
    message = pb.LifetimeValueFit(missing_reason=population.missing_reason, customers=population.customers,
                                  customers_excluded=population.excluded)
    if population.fit is not None:
        fits = population.fit
        for target, fitted in ((message.bgnbd, fits.bgnbd), (message.gamma_gamma, fits.gamma_gamma)):
            errors = fitted.standard_errors or {}
            for name, value in fitted.params.items():
                parameter = target.parameters.add(name=name, value=value)
                if errors.get(name) is not None and math.isfinite(errors[name]):
                    parameter.standard_error = errors[name]
            c = fitted.convergence
            target.convergence.CopyFrom(pb.FitConvergence(
                converged=c.converged, iterations=c.iterations, evaluations=c.evaluations,
                log_likelihood=_finite(c.log_likelihood), gradient_norm=_finite(c.gradient_norm), message=c.message))
            target.customers = fitted.n_customers
    return message


def _customer_score(customer: str, run: Row, fitted, signals: dict[str, float], population=None) -> pb.CustomerScore:
    model = fitted.model
    reads = model.signal_index
    inputs = model.lifetime_value.input_signals if model.lifetime_value is not None else ()
    known = {k: v for k, v in signals.items() if k in reads or k in inputs}
    explanation = scoring_engine.explain(fitted, known, lifetime_value=population)
    tier = model.tiers[explanation.tier]
    answer = pb.CustomerScore(
        customer=customer, model=f"models/{run.model_id}/versions/{run.model_version}", run=f"runs/{run.run_id}",
        dimension_scores=[common_pb2.DimensionScore(dimension=_dimension_value(d.dimension),
                                                    **({"score": d.score} if d.score == d.score else {}))
                          for d in explanation.dimensions],
        tier=common_pb2.TierRef(tier_id=tier.tier_id, level=explanation.tier + 1,
                                display_name=tier.display_name or tier.tier_id))
    if explanation.composite == explanation.composite:
        answer.composite = explanation.composite
    for s in explanation.signals:
        contribution = answer.contributions.add(
            signal=s.signal, dimension=_dimension_value(s.dimension),
            dimension_points=_finite(s.dimension_points), composite_points=_finite(s.composite_points))
        if s.value == s.value:
            contribution.raw_value = s.value
        if s.normalized == s.normalized:
            contribution.normalized = s.normalized
    answer.derived_signals.update(explanation.derived_signals)
    return answer


@functools.cache  # a handful of names, asked for twenty times per online score
def _dimension_value(name: str) -> int:
    return common_pb2.ValueDimension.Value(name)


def _finite(value: float) -> float:
    return float(value) if value == value else 0.0


def add_to_server(server: grpc.aio.Server, engine: Engine) -> ScoringServicer:
    servicer = ScoringServicer(engine)
    pb_grpc.add_ScoringServiceServicer_to_server(servicer, server)
    return servicer
