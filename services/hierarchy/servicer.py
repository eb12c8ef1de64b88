"""HierarchyService: answers from the in-memory snapshot; a background loader swaps in new runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from cvh.scoring.v1 import scoring_service_pb2, scoring_service_pb2_grpc
from services.common.db import read_transaction, write_transaction
from services.common.errors import (
    ServiceError,
    Violations,
    failed_precondition,
    invalid_argument,
    not_found,
    shutting_down,
    unavailable,
)
from services.common.peers import Peer
from services.common.validation import (
    check_text,
    customer_id_from_name,
    decode_offset_token,
    encode_page_token,
    page_size,
    timestamp_us,
)
from services.hierarchy import books, decisions, live, shared
from services.hierarchy import snapshot as snapshots
from services.hierarchy.policy import (
    MAX_POLICY_TEXT,
    MAX_POLICY_TIERS,
    check_policy,
    default_policy,
    involved_levels,
    policy_warnings,
)
from services.hierarchy.tables import policies, service_decisions
from services.registry.customers import now_us, set_timestamp
from services.registry.teams import person_problem, role_problem
from wire import columns

log = logging.getLogger("cvh.hierarchy")

MAX_BATCH = 1000
MAX_REASONS = 3
# Batches of changes (a run's, or a feed batch's applied live) a WatchPriorityChanges client may fall behind
# before it misses some.
WATCH_BACKLOG = 64
RETRY_SECONDS = (0.5, 1, 2, 5, 10)
# How often the organisation's team (which the change feed does not carry) is read again.
ORG_TEAM_SECONDS = 2
# How long a load waits for the snapshot held to apply the feed up to the run's export, before it reads every
# account from the registry instead.
CATCH_UP_SECONDS = 5.0
CAPACITY_SECONDS = 5
# GetAuthorityUsage's periods end before the year 10,000 (which datetime cannot hold): 9999-01-01.
LAST_PERIOD_US = 253_370_764_800 * 1_000_000
# Feed rows one patch takes at most (a bulk import's changes come as several patches).
MAX_PATCH_ROWS = 65_536
# Rows per ScoreBatch message of a live re-score (16 signals x 8 bytes: 1 MiB).
SCORE_BATCH_ROWS = 8192
BROKEN_TREE_NOTE = (f"customers in a broken account tree (a cycle, or more than {snapshots.MAX_DEPTH} levels: "
                    f"stored before the registry's checks held, or edited by hand) inherit no tier and get "
                    f"no account tree (TREE_CORRUPT) until it is repaired in the registry")
RUN_NAME = re.compile(r"(?:runs/)?([1-9][0-9]{0,17})")
MAX_COMPARE_DAYS = 3650
# Runs of a customer's history a chosen comparison point is looked for in; histories cached at once.
HISTORY_RUNS = 100
HISTORY_CACHE = 4096
CHURNED_REASON = ("churned: no longer a customer, so no tier standing (runs leave churned customers out); "
                  "default service, win it back rather than serve it as before")
BAD_PROFIT_REASON = ("bad profit at risk: highly profitable but a detractor (the run's bad-profit rule); "
                     "repair the relationship before you sell")
DIMENSION_WORDS = {
    common_pb2.VALUE_DIMENSION_PROFITABILITY: "profitability",
    common_pb2.VALUE_DIMENSION_STRATEGIC_GROWTH: "strategic growth",
    common_pb2.VALUE_DIMENSION_REPUTATION: "reputation and authority",
    common_pb2.VALUE_DIMENSION_FEEDBACK: "feedback and innovation",
}


@dataclass(frozen=True)
class People:
    """Who serves beyond a customer's own team, and how people are called: the organisation's team (role ->
    person ids, the top of every escalation path) and the display names the registry holds (person id ->
    name). Replaced whole when read again, so a reader sees one reading."""

    org_team: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)


class HierarchyServicer(pb_grpc.HierarchyServiceServicer):
    def __init__(self, engine: Engine, snapshot_dir: str = "") -> None:
        self.engine = engine
        # Where runs' snapshots are written once and mapped by every process given it (services/hierarchy/shared.py);
        # empty: built and held in this process.
        self.snapshot_dir = snapshot_dir
        self.policy = self._load_policy()
        self.budgets = self._load_budgets(self.policy)
        self._deciding = asyncio.Lock()  # a decision reads and uses a budget in one step
        self.snapshot = snapshots.empty_snapshot()
        # The organisation's team (GetOrganizationTeam, read every ORG_TEAM_SECONDS) and people's display names
        # (ListPeople, with their capacities, every CAPACITY_SECONDS).
        self.people = People()
        # The served run's model's outcome money signal: the revenue of books of business.
        self.money_signal = snapshots.DEFAULT_MONEY_SIGNAL
        # The registry's people's capacities, read at most every CAPACITY_SECONDS (ListPeople).
        self._capacities: dict[str, int] = {}
        self._capacities_time = -math.inf
        self.sources_reachable = False
        # Set by the server: where the scoring and registry services are.
        self.scoring: Peer | None = None
        self.registry: Peer | None = None
        # The registry servicer when this process serves it too: the account base is read from it directly.
        self.local_registry = None
        # The scoring servicer when this process serves it too: live re-scores are asked of it directly.
        self.local_scoring = None
        self.model_id = "default"
        self._loader: asyncio.Task | None = None
        # Between runs: the run's results (a reload after a gap in the feed joins them to the accounts again) and
        # the signals its model reads (a change to one re-scores the customer). A load starts a new generation:
        # the follower then watches from the new export's sequence, and work of the old one is dropped.
        self.results: snapshots.RunResults | None = None
        self._model_signals: frozenset[str] = frozenset()
        self._generation = 0
        self._feed_cursor = 0  # the last sequence received in this generation
        self._loaded = asyncio.Event()
        # Feed messages received and not yet applied, with their generation; the patcher takes them all at once.
        self._pending: list[tuple[int, registry_service_pb2.WatchCustomerChangesResponse]] = []
        self._feed_arrived = asyncio.Event()
        # Held by whoever writes the snapshot in place (the patcher, a policy change).
        self._writing = asyncio.Lock()
        self._scoring_channel = None
        # (served run, customer_id) -> its results in the model's last runs: trends against a chosen run.
        self._histories: dict[tuple[str, str], list] = {}
        self._followers: list[asyncio.Task] = []
        self._watchers: set[asyncio.Queue] = set()
        # Set once the first snapshot after start-up is loaded, or the scoring service said there is no completed
        # run to load: until then health says NOT_SERVING, so no one is told "not scored" for a scored customer.
        self.ready = asyncio.Event()

    def begin_shutdown(self) -> None:
        """Ends change streams, so they do not hold the server for its whole grace: a None tells each."""
        for queue in list(self._watchers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    # -- the snapshot ------------------------------------------------------------------------------------

    async def start_background(self) -> None:
        await asyncio.to_thread(snapshots.warm_up)  # the id index's kernels, before the first snapshot or patch needs them
        loop = asyncio.get_running_loop()
        self._loader = loop.create_task(self._follow_runs())
        self._followers = [loop.create_task(self._follow_feed()), loop.create_task(self._apply_feed()),
                           loop.create_task(self._follow_org_team()), loop.create_task(self._follow_people())]

    async def stop_background(self) -> None:
        for task in [self._loader, *self._followers]:
            if task:
                task.cancel()
        if self._scoring_channel is not None:
            await self._scoring_channel.close()

    async def _follow_runs(self) -> None:
        """Load the current run, then every run that completes; on errors keep serving and retry."""
        attempt = 0
        while True:
            try:
                async with self.scoring.channel() as channel:
                    scoring = scoring_service_pb2_grpc.ScoringServiceStub(channel)
                    if not self.ready.is_set() and not await self._has_completed_run(scoring):
                        await self._load(channel, None)  # the registry's customers, all unscored
                        self.ready.set()
                    runs = scoring.WatchRuns(
                        scoring_service_pb2.WatchRunsRequest(model_id=self.model_id, include_current=True))
                    async for run in runs:
                        self.sources_reachable = True  # only once the scoring service has answered
                        if run.name != self.snapshot.run:
                            await self._load(channel, run)
                        self.ready.set()
                        attempt = 0
            except grpc.aio.AioRpcError as error:
                self.sources_reachable = False
                log.warning("snapshot source unavailable, serving %s: %s", self.snapshot.run or "no run",
                            error.code().name)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.sources_reachable = False
                log.exception("loading a snapshot failed; serving %s", self.snapshot.run or "no run")
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1

    async def _has_completed_run(self, scoring) -> bool:
        page = await scoring.ListScoringRuns(scoring_service_pb2.ListScoringRunsRequest(
            model_id=self.model_id, state=scoring_service_pb2.RUN_STATE_COMPLETED, page_size=1), timeout=30)
        return len(page.runs) > 0

    async def _load(self, scoring_channel, run: scoring_service_pb2.ScoringRun | None) -> None:
        """Load ``run``'s results (None: no run yet) joined to the registry's customers as they stand. With a
        snapshot directory, the first process to take the run's lock builds and writes it, the others map it."""
        started = time.perf_counter()
        if run is None or not self.snapshot_dir:
            results, built, sequence, model_signals, money = await self._build(scoring_channel, run)
        else:
            lock = contextlib.ExitStack()
            path = await asyncio.to_thread(lambda: lock.enter_context(shared.run_lock(self.snapshot_dir, run.name)))
            try:
                if path.exists():
                    model_signals = await self._signals_read(scoring_channel, run)
                else:
                    results, built, sequence, model_signals, money = await self._build(scoring_channel, run)
                    await asyncio.to_thread(shared.store, path, built, results, self.policy.inheritance_rule)
                    await asyncio.to_thread(shared.remove_older, self.snapshot_dir, run.name)
                    del results, built  # served from the files, like every other process's
                results, built, sequence = await asyncio.to_thread(self._mapped, path)
                money = built.money_signal
            finally:
                await asyncio.to_thread(lock.close)
        self._model_signals, self.money_signal = model_signals, money
        # The feed from where the run's export stood: what changed since the run read it is applied again (the
        # accounts hold it already, idempotently) and its signals re-scored with the new run.
        self._install(results, min(sequence, run.export_sequence) if run and run.export_sequence else sequence)
        previous, self.snapshot = self.snapshot, built  # one reference swap: readers see old or new
        if self._watchers and previous.run:  # the changes are made once, off the loop, and shared by every watcher
            self._announce(built.run, await asyncio.to_thread(_priority_changes, previous, built))
        if built.broken:
            log.warning("%s: %d %s", built.run or "accounts", built.broken, BROKEN_TREE_NOTE)
        log.info("snapshot loaded", extra={"run": built.run, "customers": built.size,
                                           "shared": bool(run and self.snapshot_dir),
                                           "seconds": round(time.perf_counter() - started, 3)})

    def _mapped(self, path) -> tuple[snapshots.RunResults, snapshots.Snapshot, int]:
        """The run's results and snapshot written in ``path``, mapped; the effective levels again when the policy
        here has another inheritance rule than the one it was built under (blocking)."""
        built, results, rule = shared.load(path)
        if rule != self.policy.inheritance_rule:
            built.effective_level = snapshots.with_rule(built, self.policy.inheritance_rule)
        return results, built, built.sequence

    async def _build(self, scoring_channel, run: scoring_service_pb2.ScoringRun | None):
        """(results, snapshot, the feed sequence its accounts hold, the signals the model reads, money signal) of
        ``run`` built in this process."""
        clock = time.perf_counter()
        results = await self._read_results(scoring_channel, run) if run else snapshots.no_results()
        model_signals = await self._signals_read(scoring_channel, run) if run else frozenset()
        money = await self._money_signal(scoring_channel, run) if run else self.money_signal
        if run:
            await self._read_previous(scoring_channel, run, results, money)
        read_s, clock = time.perf_counter() - clock, time.perf_counter()
        held = self.snapshot
        if run and held.sequence >= 0 and held.money_signal == money \
                and await self._caught_up(held, run.export_sequence):
            # The accounts as the feed kept them since they were read (at start-up, or after a gap in the feed):
            # no second read of every account from the registry, most of a load's time. What was written to the
            # registry's database by hand, bypassing its feed (a repaired or planted tree), reaches the snapshot
            # at the next start.
            async with self._writing:
                accounts, sequence = await asyncio.to_thread(snapshots.held_accounts, held), held.sequence
            source = "feed"
        else:
            accounts, sequence = await self._read_accounts(money)
            source = "registry"
        accounts_s, clock = time.perf_counter() - clock, time.perf_counter()
        built = await asyncio.to_thread(snapshots.build, results, accounts, self.policy.inheritance_rule, sequence)
        log.info("snapshot built", extra={"run": built.run, "customers": built.size, "results_seconds": round(read_s, 3),
                                          "accounts_seconds": round(accounts_s, 3),
                                          "accounts_from": source,
                                          "build_seconds": round(time.perf_counter() - clock, 3)})
        return results, built, sequence, model_signals, money

    async def _caught_up(self, held: snapshots.Snapshot, sequence: int) -> bool:
        """Whether ``held`` (still served) has applied the feed up to ``sequence``, waiting for it at most
        CATCH_UP_SECONDS: a run's results joined onto accounts that lack what its export held would leave the
        customers created just before the run out of the snapshot until the feed replays them."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while held.sequence < sequence:
            if self.snapshot is not held or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _read_results(self, scoring_channel, run: scoring_service_pb2.ScoringRun) -> snapshots.RunResults:
        """``run``'s results: from the scoring servicer of this process directly (its messages neither
        serialized nor parsed), or over gRPC."""
        if self.local_scoring is not None:
            messages = self.local_scoring._result_messages(run.name)
            return await asyncio.to_thread(_run_results, run, messages)
        stub = scoring_service_pb2_grpc.ScoringServiceStub(scoring_channel)
        reader = columns.RunResultsReader()
        async for chunk in stub.StreamRunResults(scoring_service_pb2.StreamRunResultsRequest(run=run.name)):
            reader.add(chunk)
        return _results_of(run, reader)

    async def _read_accounts(self, money: str) -> tuple[snapshots.AccountBase, int]:
        if self.local_registry is not None:
            return await asyncio.to_thread(_read_local_accounts, self.local_registry, money)
        async with self.registry.channel() as channel:
            return await _read_accounts(channel, money)

    async def _money_signal(self, scoring_channel, run: scoring_service_pb2.ScoringRun) -> str:
        """The run's model's outcome money signal (books of business sum it as revenue); annual_revenue when the
        model names none or cannot be read."""
        request = scoring_service_pb2.GetModelRequest(name=run.model)
        try:
            if self.local_scoring is not None:
                model = await self.local_scoring.GetModel(request, None)
            else:
                model = await scoring_service_pb2_grpc.ScoringServiceStub(scoring_channel).GetModel(request, timeout=30)
        except (grpc.aio.AioRpcError, ServiceError) as error:
            log.warning("reading the model of %s failed; revenue is annual_revenue: %s", run.name, error)
            return snapshots.DEFAULT_MONEY_SIGNAL
        return model.outcomes.money_signal or snapshots.DEFAULT_MONEY_SIGNAL

    async def _follow_org_team(self) -> None:
        """Keep the organisation's team (the top of every escalation path) at most ORG_TEAM_SECONDS old."""
        while True:
            try:
                if self.local_registry is not None:
                    team = await asyncio.to_thread(self.local_registry._organization_team)
                else:
                    async with self.registry.channel() as channel:
                        team = await registry_service_pb2_grpc.RegistryServiceStub(channel).GetOrganizationTeam(
                            registry_service_pb2.GetOrganizationTeamRequest(), timeout=30)
                org: dict[str, list[str]] = {}
                for member in team.members:
                    org.setdefault(member.role, []).append(member.person)
                names = {**self.people.names, **{m.person: m.display_name for m in team.members if m.display_name}}
                self.people = People(org, names)
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry away: the team as last read
                log.debug("reading the organisation's team failed", exc_info=True)
            await asyncio.sleep(ORG_TEAM_SECONDS)

    async def _read_previous(self, scoring_channel, run: scoring_service_pb2.ScoringRun,
                             results: snapshots.RunResults, money: str) -> None:
        """The run's stored values of the money signal and the previous run's composites into ``results``: from
        the results held when the previous run is the one served until now, else read."""
        stub = scoring_service_pb2_grpc.ScoringServiceStub(scoring_channel)
        if money in results.outcome_signals:
            results.run_money = results.outcome_values[:, results.outcome_signals.index(money)]
        if not run.previous_run:
            return
        held = self.results
        if held is None or held.run != run.previous_run:
            previous = await stub.GetScoringRun(scoring_service_pb2.GetScoringRunRequest(name=run.previous_run),
                                                timeout=30)
            held = await self._read_results(scoring_channel, previous)
        results.previous_run, results.previous_time_us = held.run, held.score_time_us
        results.previous_ids, results.previous_composite = held.customer_ids, held.composite

    async def _signals_read(self, scoring_channel, run: scoring_service_pb2.ScoringRun) -> frozenset[str]:
        """The signals the run's model reads: a change to one re-scores the customer live."""
        if self.local_scoring is not None:
            return frozenset(await asyncio.to_thread(self.local_scoring.signals_read, run.name))
        model = await scoring_service_pb2_grpc.ScoringServiceStub(scoring_channel).GetModel(
            scoring_service_pb2.GetModelRequest(name=run.model), timeout=30)
        return frozenset(signal.name for signal in model.signals)

    def _install(self, results: snapshots.RunResults, sequence: int) -> None:
        """The results the feed's changes apply to from now on, and the sequence they follow from (on the event
        loop, with the swap of the snapshot they were built into)."""
        self.results, self._feed_cursor = results, sequence
        self._generation += 1
        self._pending = []
        self._loaded.set()

    # -- the change feed ---------------------------------------------------------------------------------

    async def _follow_feed(self) -> None:
        """Receive the registry's changes from the loaded export's sequence on, for the patcher; a new load
        starts again from its own. A follower the feed no longer serves (compacted, or ahead) reloads."""
        attempt = 0
        while True:
            try:
                await self._loaded.wait()
                generation = self._generation
                async with self._changes(self._feed_cursor) as changes:
                    async for message in changes:
                        if generation != self._generation:
                            break  # a new load: this message is read again from its sequence
                        self._pending.append((generation, message))
                        self._feed_cursor = max(self._feed_cursor, message.last_sequence)
                        self._feed_arrived.set()
                        attempt = 0
                continue
            except (grpc.aio.AioRpcError, ServiceError) as error:
                code = error.code() if isinstance(error, grpc.aio.AioRpcError) else error.code
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    log.warning("the change feed no longer holds sequence %d; reloading the accounts: %s",
                                self._feed_cursor, error)
                    try:
                        await self._reload_accounts()
                        continue
                    except grpc.aio.AioRpcError:
                        pass
                log.warning("change feed unavailable, serving the snapshot as it is: %s", code.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the change feed failed")
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1

    @contextlib.asynccontextmanager
    async def _changes(self, after: int):
        """The registry's changes after ``after``: from its feed in this process (the same messages, neither
        serialized nor parsed), or over gRPC."""
        if self.local_registry is not None:
            changes = self.local_registry.feed.changes(after)
            try:
                yield changes
            finally:
                await changes.aclose()
            return
        async with self.registry.channel() as channel:
            stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
            yield stub.WatchCustomerChanges(registry_service_pb2.WatchCustomerChangesRequest(after_sequence=after))

    async def _reload_accounts(self) -> None:
        """The whole snapshot again from the run's results and the registry's accounts as they stand: after a gap
        in the feed. Live values are lost until their customers change again or the next run."""
        accounts, sequence = await self._read_accounts(self.money_signal)
        results = self.results or snapshots.no_results()
        built = await asyncio.to_thread(snapshots.build, results, accounts, self.policy.inheritance_rule, sequence)
        self._install(results, sequence)
        self.snapshot = built

    async def _apply_feed(self) -> None:
        """Apply the received changes to the snapshot in place, all that wait at once: re-score the customers
        whose signals the run's model reads, work the patch out on a thread, write it on the loop."""
        while True:
            await self._feed_arrived.wait()
            self._feed_arrived.clear()
            generation = self._generation
            messages, rows = [], 0
            while self._pending and rows < MAX_PATCH_ROWS:  # the rest waits for the next patch
                g, message = self._pending.pop(0)
                if g == generation:
                    messages.append(message)
                    rows += len(message.chunk.customer_ids)
            if self._pending:
                self._feed_arrived.set()
            if not messages:
                continue
            try:
                await self._patch(generation, messages)
            except asyncio.CancelledError:
                raise
            except Exception:  # the snapshot would miss these changes: rebuild it whole from the registry
                log.exception("applying registry changes to the snapshot failed; reloading the accounts")
                try:
                    await self._reload_accounts()
                except Exception:
                    log.exception("reloading the accounts failed; the feed's next changes apply as they come")

    async def _patch(self, generation: int, messages: list) -> None:
        rows = await asyncio.to_thread(live.feed_rows, messages)
        scores = await self._rescore(self.snapshot, rows)
        async with self._writing:
            snap = self.snapshot
            if generation != self._generation:
                return  # a load swapped in a newer snapshot meanwhile; it holds these changes
            patch = await asyncio.to_thread(live.plan, snap, rows, scores, self.policy.inheritance_rule,
                                            bool(self._watchers))
            if generation != self._generation or snap is not self.snapshot:
                return
            before = {m[0]: float(snap.composite[row]) for m in patch.moves
                      if (row := snap.row(m[0])) is not None} if self._watchers else {}
            live.apply(snap, patch)  # no await from here: readers see it whole
        if patch.moves and self._watchers:
            changes = await asyncio.to_thread(live.changes, snap, patch.moves)
            _add_composites(changes, before, snap)
            self._announce("live changes", changes)

    async def _rescore(self, snap: snapshots.Snapshot, rows: live.FeedRows) -> live.Scores | None:
        """Scores for the changed customers carrying a signal the run's model reads, from its fitted model and
        frozen cut-offs, each starting from the tier it holds (hysteresis); None when there is none, or the
        scoring service cannot answer (the account changes apply all the same)."""
        names = [name for name in rows.signal_names if name in self._model_signals]
        if not snap.run or not names:
            return None
        values = rows.signal_columns(names)
        wanted = np.flatnonzero(~rows.deleted & ~np.isnan(values).all(axis=1))
        if not len(wanted):
            return None
        ids = [rows.ids[i] for i in wanted.tolist()]
        values = values[wanted]
        held = snap.rows(ids)
        previous = np.zeros(len(ids), np.int32)
        previous[held >= 0] = snap.own_level[held[held >= 0]]
        try:
            if self.local_scoring is not None:
                dimension_names, dims, composite, levels = await asyncio.to_thread(
                    self.local_scoring.score_with_run, snap.run, names, values, previous)
            else:
                dimension_names, dims, composite, levels = await self._score_batch(snap.run, ids, names, values,
                                                                                   previous)
        except (grpc.aio.AioRpcError, ServiceError) as error:
            log.warning("re-scoring %d changed customers failed; their account changes apply, their scores wait "
                        "for the next run: %s", len(ids), error)
            return None
        except Exception:
            log.exception("re-scoring %d changed customers failed; their account changes apply", len(ids))
            return None
        order = [dimension_names.index(common_pb2.ValueDimension.Name(d)) if common_pb2.ValueDimension.Name(d)
                 in dimension_names else -1 for d in snap.dimensions]
        dimensions = np.column_stack([dims[:, j] if j >= 0 else np.full(len(ids), np.nan) for j in order]) \
            if order else np.empty((len(ids), 0))
        return live.Scores(ids, composite, levels, dimensions, now_us())

    async def _score_batch(self, run: str, ids: list[str], names: list[str], values: np.ndarray,
                           previous: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """ScoreBatch over gRPC with the run and the tiers held, in chunks of its largest message."""
        stub = scoring_service_pb2_grpc.ScoringServiceStub(self._scoring())
        step = SCORE_BATCH_ROWS
        requests = [scoring_service_pb2.ScoreBatchRequest(
            run=run, signals=columns.to_chunk(ids[i:i + step], names, values[i:i + step]),
            previous_tier_levels=previous[i:i + step].astype("<i4").tobytes()) for i in range(0, len(ids), step)]
        parts = [answer async for answer in stub.ScoreBatch(iter(requests), timeout=60)]
        dimension_names = list(parts[0].dimension_scores.column_names)
        return (dimension_names, np.concatenate([columns.from_matrix(p.dimension_scores.values) for p in parts]),
                np.concatenate([np.frombuffer(p.composite, "<f8") for p in parts]),
                np.concatenate([np.frombuffer(p.tier_levels, "<i4") for p in parts]))

    # -- policies ----------------------------------------------------------------------------------------

    def _load_policy(self) -> pb.TierPolicy:
        with read_transaction(self.engine) as conn:
            blob = conn.execute(sa.select(policies.c.policy).order_by(policies.c.version.desc()).limit(1)).scalar()
        return pb.TierPolicy.FromString(blob) if blob else default_policy()

    def _load_budgets(self, policy: pb.TierPolicy) -> decisions.Budgets:
        budgets = decisions.Budgets(policy.goodwill_period)
        with read_transaction(self.engine) as conn:
            budgets.load(conn, now_us())
        return budgets

    async def GetTierPolicy(self, request, context):
        return self._with_warnings(self.policy)

    async def SetTierPolicy(self, request, context):
        policy = pb.TierPolicy()
        policy.CopyFrom(request.policy)
        policy.ClearField("warnings")  # output only: what the answer says, never stored
        check_policy(policy)

        def store() -> pb.TierPolicy:
            with write_transaction(self.engine) as conn:
                latest = conn.execute(sa.select(sa.func.max(policies.c.version))).scalar() or 0
                policy.version = latest + 1
                set_timestamp(policy.create_time, now_us())
                conn.execute(policies.insert().values(version=policy.version, policy=policy.SerializeToString(),
                                                      create_time_us=now_us()))
            return policy
        stored = await asyncio.to_thread(store)
        async with self._writing:  # no patch in between: it would write levels of the old rule
            snap = self.snapshot
            effective = await asyncio.to_thread(snapshots.with_rule, snap, stored.inheritance_rule)
            snap.effective_level = effective
            if stored.goodwill_period != self.policy.goodwill_period:
                async with self._deciding:
                    self.budgets = await asyncio.to_thread(self._load_budgets, stored)
            self.policy = stored
        return self._with_warnings(stored)

    def _with_warnings(self, policy: pb.TierPolicy) -> pb.TierPolicy:
        answer = pb.TierPolicy()
        answer.CopyFrom(policy)
        answer.warnings.extend(policy_warnings(policy, [t.tier_id for t in self.snapshot.tiers]))
        return answer

    # -- look-ups ----------------------------------------------------------------------------------------

    async def GetPriority(self, request, context):
        customer_id = customer_id_from_name(request.customer, "customer")
        violations = Violations()
        compare_run = ""
        if request.compare_run:
            match = RUN_NAME.fullmatch(request.compare_run)
            if not match:
                violations.add("compare_run", 'expected "runs/{run_id}" or the run_id')
            elif request.compare_days_ago:
                violations.add("compare_run", "set compare_run or compare_days_ago, not both")
            else:
                compare_run = f"runs/{match.group(1)}"
        if not 0 <= request.compare_days_ago <= MAX_COMPARE_DAYS:
            violations.add("compare_days_ago", f"0 (the previous run) to {MAX_COMPARE_DAYS:,} days, "
                                               f"got {request.compare_days_ago}")
        violations.raise_if_any()
        snap = self.snapshot
        answer = _priority(snap, self.policy, customer_id, self.people)
        if not answer.not_found:
            self._add_budget(answer, customer_id)
        if (compare_run or request.compare_days_ago) and answer.HasField("trend"):
            answer.trend.CopyFrom(await self._chosen_trend(snap, customer_id, answer, compare_run,
                                                           request.compare_days_ago))
        return answer

    async def _chosen_trend(self, snap: snapshots.Snapshot, customer_id: str, answer: pb.Priority, compare_run: str,
                            days_ago: int) -> pb.PriorityTrend:
        """The trend against a run the caller chose (by name, or the newest ``days_ago`` days before the served
        run), from the customer's history in the scoring service (cached per served run)."""
        stub = scoring_service_pb2_grpc.ScoringServiceStub(self._scoring())
        try:
            if compare_run:
                chosen = await stub.GetScoringRun(scoring_service_pb2.GetScoringRunRequest(name=compare_run),
                                                  timeout=10)
                if chosen.state != scoring_service_pb2.RUN_STATE_COMPLETED \
                        or not chosen.model.startswith(f"models/{self.model_id}/"):
                    raise not_found(f"{compare_run} (compare_run: not a completed run of models/{self.model_id})")
            entries = await self._history(stub, snap.run, customer_id)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found(f"{compare_run} (compare_run)") from None
            raise unavailable(f"the scoring service cannot give the history to compare with: "
                              f"{error.code().name}") from None
        if compare_run:
            entry = next((e for e in entries if e.run == compare_run), None)
            if entry is None:
                raise not_found(f"{compare_run} (compare_run: not among the last {HISTORY_RUNS} runs of "
                                f"models/{self.model_id})")
        else:
            cutoff = snap.score_time_us - days_ago * 86_400_000_000
            entry = next((e for e in entries if e.run != snap.run and _time_us(e.end_time) <= cutoff), None)
            if entry is None:
                return pb.PriorityTrend(note=f"no completed run ended {days_ago} days before {snap.run} (among the "
                                             f"last {HISTORY_RUNS} of models/{self.model_id})")
        result = entry.result
        before = result.composite if result.HasField("composite") else math.nan
        return _trend(entry.run, _time_us(entry.end_time), result.tier, before, answer.own_tier.level,
                      answer.composite if answer.HasField("composite") else math.nan)

    async def _history(self, stub, served: str, customer_id: str) -> list:
        """The customer's results in the model's last HISTORY_RUNS runs, newest first ([] when none scored it)."""
        key = (served, customer_id)
        if key not in self._histories:
            try:
                history = await stub.GetCustomerHistory(scoring_service_pb2.GetCustomerHistoryRequest(
                    customer=f"customers/{customer_id}", model=f"models/{self.model_id}", last_runs=HISTORY_RUNS),
                    timeout=10)
                entries = list(history.runs)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                entries = []  # no run of those scored it
            if len(self._histories) >= HISTORY_CACHE:
                self._histories.pop(next(iter(self._histories)))
            self._histories[key] = entries
        return self._histories[key]

    def _scoring(self):
        """A channel to the scoring service kept for the service's life."""
        if self._scoring_channel is None:
            self._scoring_channel = self.scoring.channel()
        return self._scoring_channel

    def _add_budget(self, answer: pb.Priority, customer_id: str) -> None:
        self.budgets.roll(now_us())
        answer.goodwill_remaining_minor = self.budgets.remaining(
            customer_id, answer.policy.authority.goodwill_credit_limit_minor)
        answer.goodwill_period_start.FromMicroseconds(self.budgets.start)

    # -- front-line decisions ------------------------------------------------------------------------

    async def RecordServiceDecision(self, request, context):
        customer_id = decisions.parse_request(request)
        now = now_us()
        async with self._deciding:
            priority = await self.GetPriority(pb.GetPriorityRequest(customer=customer_id), context)
            tier = priority.policy
            remaining = priority.goodwill_remaining_minor
            note = decisions.judge(request, tier, remaining)
            answer = pb.ServiceDecision(
                customer=f"customers/{customer_id}", kind=request.kind, amount_minor=request.amount_minor,
                currency=request.currency, offer=request.offer, person=request.person, reason=request.reason,
                tier_id=priority.effective_tier.tier_id, outcome=decisions.ESCALATE if note else decisions.WITHIN,
                escalation_note=note)
            set_timestamp(answer.record_time, now)
            if note:
                answer.escalation_contact.CopyFrom(decisions.escalation_contact(priority.escalation, request.person))
            granted = request.amount_minor if not note and request.kind == pb.DECISION_KIND_GOODWILL_CREDIT else 0
            answer.goodwill_remaining_minor = remaining - granted
            answer.goodwill_period_start.CopyFrom(priority.goodwill_period_start)

            def store() -> int:
                with write_transaction(self.engine) as conn:
                    contact = answer.escalation_contact
                    return conn.execute(service_decisions.insert().values(
                        customer_id=customer_id, kind=request.kind, amount_minor=request.amount_minor,
                        currency=request.currency, offer=request.offer, person_id=request.person,
                        reason=request.reason, record_time_us=now, tier_id=answer.tier_id, outcome=answer.outcome,
                        escalation_note=note, escalation_level=contact.level,
                        escalation_contact=contact.contact)).inserted_primary_key[0]
            decision_id = await asyncio.to_thread(store)
            if granted and self.budgets.start <= now < self.budgets.end:
                self.budgets.granted[customer_id] = self.budgets.granted.get(customer_id, 0) + granted
        answer.name = f"serviceDecisions/{decision_id}"
        return answer

    # -- books of business ---------------------------------------------------------------------------

    async def GetBookOfBusiness(self, request, context):
        violations = Violations()
        if problem := person_problem(request.person):
            violations.add("person", problem)
        if request.role and (problem := role_problem(request.role)):
            violations.add("role", problem)
        violations.raise_if_any()
        snap = self.snapshot
        teams = snap.teams
        person = teams.person_index.get(request.person)
        columns = ([teams.role_index[request.role]] if request.role in teams.role_index else []) if request.role \
            else list(range(len(teams.roles)))
        # Off the loop: a book of 10,000 customers in 1,000,000 takes about 10 ms of NumPy (which lets go of
        # the GIL), and GetPriority callers should not wait for it.
        rows = await asyncio.to_thread(books.person_rows, snap, person, columns) if person is not None \
            else np.empty(0, np.int64)
        if not len(rows):
            in_role = f" as {request.role}" if request.role else ""
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no customer's team holds {request.person}{in_role}",
                               "PERSON_NOT_FOUND", metadata={"resource": f"people/{request.person}"})
        capacities = await self._people_capacities()
        return await asyncio.to_thread(books.book, snap, request.person, request.role, rows,
                                       capacities.get(request.person, 0))

    async def ListPortfolios(self, request, context):
        if problem := role_problem(request.role):
            raise invalid_argument("role", problem)
        capacities = await self._people_capacities()
        return await asyncio.to_thread(books.portfolios, self.snapshot, request.role, capacities)

    async def _people_capacities(self) -> dict[str, int]:
        """person id -> capacity of the people who have one (ListPeople), read again when more than
        CAPACITY_SECONDS old (a book of business asked just after a capacity changed sees it)."""
        if time.monotonic() - self._capacities_time < CAPACITY_SECONDS:
            return self._capacities
        try:
            self._capacities, names = await self._read_people()
        except grpc.aio.AioRpcError as error:  # the registry away: the capacities as last read
            log.warning("reading people's capacities failed: %s", error.code().name)
            return self._capacities
        self._capacities_time = time.monotonic()
        self.people = People(self.people.org_team, names)
        return self._capacities

    async def _read_people(self) -> tuple[dict[str, int], dict[str, str]]:
        """(person id -> capacity, person id -> display name) of the people who have one, from ListPeople."""
        request, capacities, names = registry_service_pb2.ListPeopleRequest(page_size=1000), {}, {}
        async with contextlib.AsyncExitStack() as stack:
            if self.local_registry is not None:
                def list_people(r):
                    return self.local_registry.ListPeople(r, None)
            else:
                channel = await stack.enter_async_context(self.registry.channel())
                list_people = registry_service_pb2_grpc.RegistryServiceStub(channel).ListPeople
            while True:
                page = await list_people(request)
                capacities.update((p.person_id, p.capacity) for p in page.people if p.capacity)
                names.update((p.person_id, p.display_name) for p in page.people if p.display_name)
                if not page.next_page_token:
                    return capacities, names
                request.page_token = page.next_page_token

    async def _follow_people(self) -> None:
        """Keep people's display names (GetPriority's teams) at most about CAPACITY_SECONDS old."""
        while True:
            try:
                _, names = await self._read_people()
                self.people = People(self.people.org_team, names)
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry away: the names as last read
                log.debug("reading people failed", exc_info=True)
            await asyncio.sleep(CAPACITY_SECONDS)

    async def GetAuthorityUsage(self, request, context):
        violations = Violations()
        known = [t.tier_id for t in self.policy.tiers]
        if request.tier_id and request.tier_id not in known:  # a typo would answer an empty usage
            violations.add("tier_id", f"unknown tier {request.tier_id!r}; tiers: {', '.join(known)}")
        if request.person and (problem := person_problem(request.person)):
            violations.add("person", problem)
        at = now_us()
        if request.HasField("period"):
            at = timestamp_us(request.period, "period", violations)
            if at is not None and not 0 <= at < LAST_PERIOD_US:
                violations.add("period", "from 1970 to the end of 9998")
        time_range = _time_range(request, violations)
        violations.raise_if_any()
        start, end = time_range or decisions.period_bounds(self.policy.goodwill_period, at)

        def read() -> pb.AuthorityUsage:
            with read_transaction(self.engine) as conn:
                return decisions.usage(conn, start, end, request.tier_id, request.person)
        return await asyncio.to_thread(read)

    async def BatchGetPriority(self, request, context):
        if not 1 <= len(request.customers) <= MAX_BATCH:
            raise invalid_argument("customers", f"1 to {MAX_BATCH} names, got {len(request.customers)}")
        violations = Violations()
        ids = [customer_id_from_name(n, f"customers[{i}]", violations) for i, n in enumerate(request.customers)]
        violations.raise_if_any()
        snap, policy, people = self.snapshot, self.policy, self.people
        answer = pb.BatchGetPriorityResponse(priorities=[_priority_or_not_found(snap, policy, i, people)
                                                         for i in ids])
        for customer_id, priority in zip(ids, answer.priorities):
            if not priority.not_found:
                self._add_budget(priority, customer_id)
        return answer

    async def RankCustomers(self, request, context):
        if not 2 <= len(request.customers) <= MAX_BATCH:
            raise invalid_argument("customers", f"2 to {MAX_BATCH} names, got {len(request.customers)}")
        violations = Violations()
        ids = [customer_id_from_name(n, f"customers[{i}]", violations) for i, n in enumerate(request.customers)]
        if len(set(ids)) != len(ids):
            violations.add("customers", "names must not repeat")
        violations.raise_if_any()
        snap, policy = self.snapshot, self.policy
        precedence = {role: i for i, role in enumerate(policy.role_precedence)}
        keyed = sorted((_rank_key(snap, precedence, c), c) for c in ids)
        answer = pb.RankCustomersResponse()
        for k, (key, customer_id) in enumerate(keyed):
            row = snap.row(customer_id)
            ranked = answer.ranked.add(customer=f"customers/{customer_id}",
                                       effective_tier=_tier_ref(snap, key[0] if key[0] <= len(snap.tiers) else 0),
                                       stakeholder_role=int(snap.roles[row]) if row is not None else 0,
                                       not_found=row is None and _knows_every_customer(snap))
            if row is not None and not math.isnan(snap.composite[row]):
                ranked.composite = float(snap.composite[row])
            if k + 1 < len(keyed):
                ranked.decided_by = _decided_by(key, keyed[k + 1][0])
        return answer

    async def GetSnapshotInfo(self, request, context):
        snap = self.snapshot
        info = pb.SnapshotInfo(run=snap.run, customers=snap.customers, sources_reachable=self.sources_reachable,
                               feed_sequence=max(snap.sequence, 0),
                               live_customers=int(np.count_nonzero(snap.live_time_us)))
        info.load_time.FromSeconds(int(snap.load_time))
        if snap.run:
            age = max(0.0, time.time() - snap.score_time_us / 1e6)
            info.age.FromSeconds(int(age))
            info.status = (f"serving {snap.run} ({snap.customers:,} customers), scored {age / 60:.0f} min ago"
                           + (f"; {info.live_customers:,} re-scored live since" if info.live_customers else "")
                           + ("" if self.sources_reachable else "; sources unreachable, snapshot may be stale")
                           + (f"; {snap.broken:,} {BROKEN_TREE_NOTE}" if snap.broken else ""))
        elif snap.sequence >= 0:
            info.status = (f"no completed run loaded yet: {snap.customers:,} registered customers, unscored (they get "
                           f"the default policy)")
        else:
            info.status = ("no completed run loaded yet, nor the registry's customers: every customer gets the "
                           "default policy")
        return info

    async def GetHierarchySummary(self, request, context):
        snap = self.snapshot
        summary = pb.HierarchySummary(run=snap.run, total_customers=int((snap.own_level > 0).sum()))
        totals = np.nansum(snap.dimension_scores, axis=0) if snap.size else np.zeros(0)
        composite_total = float(np.nansum(snap.composite)) if snap.size else 0.0
        for tier in snap.tiers:
            members = snap.own_level == tier.level
            entry = summary.tiers.add(tier=tier, customers=int(members.sum()))
            if summary.total_customers:
                entry.customer_percent = 100.0 * entry.customers / summary.total_customers
            for j, dimension in enumerate(snap.dimensions):
                share = np.nansum(snap.dimension_scores[members, j]) / totals[j] * 100 if totals[j] else 0.0
                entry.value_percent.add(dimension=dimension, score=float(share))
            if composite_total:
                entry.composite_value_percent = float(np.nansum(snap.composite[members])) / composite_total * 100
            if entry.customers:
                entry.min_composite = float(np.nanmin(snap.composite[members]))
                entry.max_composite = float(np.nanmax(snap.composite[members]))
        return summary

    async def ListTierMembers(self, request, context):
        size = page_size(request.page_size)
        snap = self.snapshot
        tier = next((t for t in snap.tiers if t.tier_id == request.tier_id), None)
        if tier is None:
            known = ", ".join(t.tier_id for t in snap.tiers) or "none: no run loaded yet"
            raise invalid_argument("tier_id", f"unknown tier {request.tier_id!r}; tiers: {known}")
        filters = {"tier": request.tier_id, "run": snap.run}
        offset = decode_offset_token(request.page_token, filters)
        members = snap.tier_members(tier.level)
        answer = pb.ListTierMembersResponse()
        for row in members[offset:offset + size].tolist():
            member = answer.members.add(customer=f"customers/{snap.customer_id(row)}", rank=int(snap.rank[row]),
                                        owner=snap.owner(row))
            if not math.isnan(snap.composite[row]):
                member.composite = float(snap.composite[row])
        if offset + size < len(members):
            answer.next_page_token = encode_page_token(offset + size, filters)
        return answer

    async def ListBadProfits(self, request, context):
        size = page_size(request.page_size)
        violations = Violations()
        check_text(request.owner, "owner", MAX_POLICY_TEXT, violations)
        violations.raise_if_any()
        snap = self.snapshot
        level = 0
        if request.tier_id:
            level = next((t.level for t in snap.tiers if t.tier_id == request.tier_id), -1)
            if level < 0:
                known = ", ".join(t.tier_id for t in snap.tiers) or "none: no run loaded yet"
                raise invalid_argument("tier_id", f"unknown tier {request.tier_id!r}; tiers: {known}")
        filters = {"tier": request.tier_id, "owner": request.owner, "run": snap.run}
        offset = decode_offset_token(request.page_token, filters)
        rows = snap.bad_profit_order
        if level:
            rows = rows[snap.effective_level[rows] == level]
        if request.owner:
            code = snap.owner_names.index.get(request.owner, -1)
            rows = rows[snap.owner_codes[rows] == code]
        answer = pb.ListBadProfitsResponse(total=len(rows), run=snap.run)
        for row in rows[offset:offset + size].tolist():
            entry = answer.customers.add(customer=f"customers/{snap.customer_id(row)}", owner=snap.owner(row),
                                         effective_tier=_tier_ref(snap, int(snap.effective_level[row])))
            if not math.isnan(snap.run_money[row]):
                entry.revenue = float(snap.run_money[row])
            if not math.isnan(snap.composite[row]):
                entry.composite = float(snap.composite[row])
        if offset + size < len(rows):
            answer.next_page_token = encode_page_token(offset + size, filters)
        return answer

    async def GetAccountTree(self, request, context):
        customer_id = customer_id_from_name(request.customer, "customer")
        if not 0 <= request.max_children <= MAX_BATCH:
            raise invalid_argument("max_children", f"0 (default 100) to {MAX_BATCH}")
        snap = self.snapshot
        row = snap.row(customer_id)
        if row is None:
            raise not_found(f"customers/{customer_id} (not in the snapshot of {snap.run or 'no run'})")
        try:
            ancestors, subtree = snap.ancestors(row), snap.subtree(row)
        except snapshots.BrokenTree as broken:
            raise _tree_corrupt(customer_id, broken) from None
        tree = pb.AccountTree(customer=_node(snap, row))
        tree.ancestors.extend(_node(snap, r) for r in ancestors)
        children = snap.children(row)
        tree.children_total = len(children)
        ordered = sorted(children.tolist(), key=snap.customer_id)
        tree.children.extend(_node(snap, r) for r in ordered[:request.max_children or 100])
        rollup = tree.rollup
        rollup.customers = len(subtree)
        levels = snap.own_level[subtree]
        if (levels > 0).any():
            rollup.best_tier.CopyFrom(_tier_ref(snap, int(levels[levels > 0].min())))
            rollup.group_composite = float(np.nanmean(snap.composite[subtree]))
        for j, name in enumerate(snapshots.ROLLUP_SIGNALS):
            rollup.signal_sums[name] = float(np.nansum(snap.rollup_values[subtree, j]))
        return tree

    async def WatchPriorityChanges(self, request, context):
        violations = Violations()
        if len(request.tier_ids) > MAX_POLICY_TIERS:
            violations.add("tier_ids", f"at most {MAX_POLICY_TIERS} tier ids, got {len(request.tier_ids)}")
        if len(request.into_tier_ids) > MAX_POLICY_TIERS:
            violations.add("into_tier_ids", f"at most {MAX_POLICY_TIERS} tier ids, got {len(request.into_tier_ids)}")
        if not 0 <= request.min_composite_drop <= 100:  # NaN fails both
            violations.add("min_composite_drop", f"0 to 100, got {request.min_composite_drop}")
        check_text(request.owner, "owner", MAX_POLICY_TEXT, violations)
        violations.raise_if_any()
        tier_ids, into = set(request.tier_ids), set(request.into_tier_ids)
        known = {t.tier_id for t in self.snapshot.tiers}
        for name, wanted in (("tier_ids", tier_ids), ("into_tier_ids", into)):
            unknown = sorted(wanted - known) if known else []
            if unknown:
                raise invalid_argument(name, f"unknown tiers {unknown}; tiers: {', '.join(sorted(known))}")
        drop = request.min_composite_drop
        queue: asyncio.Queue = asyncio.Queue(maxsize=WATCH_BACKLOG)
        self._watchers.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    raise shutting_down()
                for change in item:
                    if tier_ids and change.previous_tier.tier_id not in tier_ids \
                            and change.new_tier.tier_id not in tier_ids:
                        continue
                    if request.owner and change.owner != request.owner:
                        continue
                    if into and change.new_tier.tier_id not in into:
                        continue
                    if drop and not (change.HasField("previous_composite") and change.HasField("composite")
                                     and change.previous_composite - change.composite > drop):
                        continue
                    yield change
        finally:
            self._watchers.discard(queue)

    def _announce(self, run: str, changes: list[pb.PriorityChange]) -> None:
        for queue in list(self._watchers):
            if queue.full():
                log.warning("a WatchPriorityChanges client is too slow; it misses the changes of %s", run)
                continue
            queue.put_nowait(changes)


def _priority_changes(old: snapshots.Snapshot, new: snapshots.Snapshot) -> list[pb.PriorityChange]:
    """The messages telling the moves between two snapshots, with the composites before and after
    (blocking)."""
    changes = [pb.PriorityChange(customer=f"customers/{customer_id}", previous_tier=_tier_ref(new, before),
                                 new_tier=_tier_ref(new, after), owner=owner, run=new.run)
               for customer_id, before, after, owner in snapshots.tier_changes(old, new)]
    _add_composites(changes, old, new)
    return changes


def _add_composites(changes: list[pb.PriorityChange], old: snapshots.Snapshot | dict[str, float],
                    new: snapshots.Snapshot) -> None:
    """Set each change's composite before (from ``old``: a snapshot, or composites by customer id) and now."""
    for change in changes:
        customer_id = change.customer.removeprefix("customers/")
        if isinstance(old, dict):
            before = old.get(customer_id, math.nan)
        else:
            row = old.row(customer_id)
            before = old.composite[row] if row is not None else math.nan
        row = new.row(customer_id)
        after = new.composite[row] if row is not None else math.nan
        if not math.isnan(before):
            change.previous_composite = float(before)
        if not math.isnan(after):
            change.composite = float(after)


# -- loading ----------------------------------------------------------------------------------------------

def _run_results(run: scoring_service_pb2.ScoringRun, messages) -> snapshots.RunResults:
    """RunResults of ``run`` from its StreamRunResults messages (blocking)."""
    reader = columns.RunResultsReader()
    for chunk in messages:
        reader.add(chunk)
    return _results_of(run, reader)


def _results_of(run: scoring_service_pb2.ScoringRun, reader: columns.RunResultsReader) -> snapshots.RunResults:
    results = reader.result()
    end = run.end_time.seconds * 1_000_000 + run.end_time.nanos // 1000
    dimensions = [common_pb2.ValueDimension.Value(name) for name in results.dimension_names]
    return snapshots.RunResults(run.name, end, results.tiers, dimensions, results.customer_ids,
                                results.dimension_scores, results.composite, results.tier_levels, results.ranks,
                                results.percentiles, previous_levels=results.previous_tier_levels,
                                bad_profit=results.bad_profit, outcome_signals=results.outcome_signals,
                                outcome_values=results.outcome_values)


async def _read_accounts(channel, money: str) -> tuple[snapshots.AccountBase, int]:
    names = snapshots.export_signals(money)
    reader = columns.SignalExportReader(names)
    stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
    async for message in stub.ExportSignalMatrix(registry_service_pb2.ExportSignalMatrixRequest(signal_names=names)):
        reader.add(message)
    return _account_base(reader, money)


def _read_local_accounts(registry, money: str) -> tuple[snapshots.AccountBase, int]:
    """The export's messages straight from the registry servicer of this process: no gRPC, no serializing."""
    names = snapshots.export_signals(money)
    reader = columns.SignalExportReader(names)
    for message in registry.export_messages(names):
        reader.add(message)
    return _account_base(reader, money)


def _account_base(reader: columns.SignalExportReader, money: str) -> tuple[snapshots.AccountBase, int]:
    """The accounts, and the feed sequence they hold."""
    export = reader.result()
    rollup = export.values[:, :len(snapshots.ROLLUP_SIGNALS)]
    revenue = export.values[:, export.signal_names.index(money)]
    return (snapshots.AccountBase(export.customer_ids, export.parent_ids, export.roles, export.owners, rollup,
                                  export.team, export.stages, revenue, money),
            export.sequence)


# -- answers ----------------------------------------------------------------------------------------------

def _time_range(request: pb.GetAuthorityUsageRequest, violations: Violations) -> tuple[int, int] | None:
    """GetAuthorityUsage's start_time and end_time in microseconds; None when neither is set."""
    given = [name for name in ("start_time", "end_time") if request.HasField(name)]
    if not given:
        return None
    if len(given) == 1:
        missing = "end_time" if given == ["start_time"] else "start_time"
        violations.add(missing, f"give start_time and end_time together (only {given[0]} was set)")
        return None
    if request.HasField("period"):
        violations.add("period", "give a goodwill period or start_time and end_time, not both")
    start = timestamp_us(request.start_time, "start_time", violations)
    end = timestamp_us(request.end_time, "end_time", violations)
    if start is not None and end is not None and not 0 <= start < end <= LAST_PERIOD_US:
        violations.add("end_time", "after start_time, both from 1970 to the end of 9998")
    return (start, end) if start is not None and end is not None else None


def _tier_ref(snap: snapshots.Snapshot, level: int) -> common_pb2.TierRef:
    return snap.tiers[level - 1] if 0 < level <= len(snap.tiers) else common_pb2.TierRef()


def _node(snap: snapshots.Snapshot, row: int) -> pb.AccountNode:
    node = pb.AccountNode(customer=f"customers/{snap.customer_id(row)}", tier=_tier_ref(snap, int(snap.own_level[row])),
                          stakeholder_role=int(snap.roles[row]))
    if not math.isnan(snap.composite[row]):
        node.composite = float(snap.composite[row])
    return node


def _tree_corrupt(customer_id: str, broken: snapshots.BrokenTree) -> ServiceError:
    repair = ("clear the parent of one of them" if broken.cycle else "move part of it higher up")
    error = failed_precondition(f"customers/{customer_id}: {broken}; {repair} in the registry, and the next "
                                f"run's snapshot serves its tree", "TREE_CORRUPT")
    error.metadata["customers"] = ",".join(broken.customer_ids[:12])
    return error


def _tier_policy(policy: pb.TierPolicy, tier_id: str) -> pb.TierServicePolicy:
    return next((t for t in policy.tiers if tier_id and t.tier_id == tier_id), policy.default_tier)


def _knows_every_customer(snap: snapshots.Snapshot) -> bool:
    """Whether the snapshot holds the registry's customers (loaded, and following its feed): a customer it lacks
    is then not registered."""
    return snap.sequence >= 0


def _priority_or_not_found(snap: snapshots.Snapshot, policy: pb.TierPolicy, customer_id: str,
                           people: People) -> pb.Priority:
    """A batch's entry: the priority, or a customer not registered marked so (one does not fail the batch)."""
    if snap.row(customer_id) is None and _knows_every_customer(snap):
        return pb.Priority(customer=f"customers/{customer_id}", not_found=True)
    return _priority(snap, policy, customer_id, people)


def _priority(snap: snapshots.Snapshot, policy: pb.TierPolicy, customer_id: str, people: People) -> pb.Priority:
    """CUSTOMER_NOT_FOUND for a customer the registry does not hold."""
    answer = pb.Priority(customer=f"customers/{customer_id}", policy_version=policy.version)
    row = snap.row(customer_id)
    if row is None and _knows_every_customer(snap):
        raise not_found(f"customers/{customer_id}")
    if row is not None:
        answer.lifecycle_stage = int(snap.stages[row])
    if answer.lifecycle_stage == common_pb2.LIFECYCLE_STAGE_CHURNED:
        # Gone: no standing of its own (runs leave it out) nor one inherited from its account; served as anyone
        # unknown would be, so the front line wins it back instead of serving it at a tier it no longer pays for.
        answer.policy.CopyFrom(policy.default_tier)
        answer.stakeholder_role, answer.owner = int(snap.roles[row]), snap.owner(row)
        answer.run = snap.run
        answer.reasons.append(pb.PriorityReason(text=CHURNED_REASON))
        return answer
    if row is None or snap.own_level[row] == 0 and snap.effective_level[row] == 0:
        answer.policy.CopyFrom(policy.default_tier)
        if row is not None:
            answer.stakeholder_role, answer.owner = int(snap.roles[row]), snap.owner(row)
        _add_people(answer, snap, row, policy, 0, people)
        return answer
    own, effective = int(snap.own_level[row]), int(snap.effective_level[row])
    answer.scored = own > 0
    answer.own_tier.CopyFrom(_tier_ref(snap, own))
    answer.effective_tier.CopyFrom(_tier_ref(snap, effective))
    answer.policy.CopyFrom(_tier_policy(policy, answer.effective_tier.tier_id))
    answer.stakeholder_role, answer.owner = int(snap.roles[row]), snap.owner(row)
    answer.run = snap.run
    set_timestamp(answer.score_time, snap.score_time_us)
    if snap.live_time_us[row]:
        answer.live = True
        set_timestamp(answer.live_time, int(snap.live_time_us[row]))
    if own:
        answer.composite = float(snap.composite[row])
        answer.percentile = float(snap.percentile[row])
        answer.rank = int(snap.rank[row])
        for j, dimension in enumerate(snap.dimensions):
            score = snap.dimension_scores[row, j]
            entry = answer.dimension_scores.add(dimension=dimension)
            if not math.isnan(score):
                entry.score = float(score)
    answer.bad_profit = bool(snap.bad_profit[row] == 1)
    if own:
        answer.trend.CopyFrom(_trend(snap.previous_run, snap.previous_time_us,
                                     _tier_ref(snap, int(snap.previous_level[row])),
                                     float(snap.previous_composite[row]), own, float(snap.composite[row])))
    answer.reasons.extend(_reasons(snap, row, own, effective))
    _add_people(answer, snap, row, policy, effective, people)
    return answer


def _trend(compare_run: str, compare_time_us: int, previous_tier: common_pb2.TierRef, previous_composite: float,
           own: int, composite: float) -> pb.PriorityTrend:
    """The move from a comparison run (previous_composite NaN: it did not score the customer) to now."""
    trend = pb.PriorityTrend(compare_run=compare_run, previous_tier=previous_tier)
    if not compare_run:
        trend.note = "no earlier run to compare with"
        return trend
    set_timestamp(trend.compare_time, compare_time_us)
    if not math.isnan(previous_composite):
        trend.previous_composite = previous_composite
        if not math.isnan(composite):
            trend.composite_change = composite - previous_composite
    if previous_tier.level and own:
        trend.tier_change = previous_tier.level - own
    moved = (f"up {trend.tier_change} tier{'s' * (abs(trend.tier_change) > 1)}" if trend.tier_change > 0 else
             f"down {-trend.tier_change} tier{'s' * (abs(trend.tier_change) > 1)}" if trend.tier_change < 0 else
             "same tier" if previous_tier.level else "not scored then")
    shown = round(trend.composite_change, 1) + 0.0  # + 0.0: a change rounding to -0.0 reads "+0.0"
    change = f", composite {shown:+.1f}" if trend.HasField("composite_change") else ""
    trend.note = f"{moved}{change} since {compare_run}"
    return trend


def _add_people(answer: pb.Priority, snap: snapshots.Snapshot, row: int | None, policy: pb.TierPolicy,
                tier_level: int, people: People) -> None:
    """The effective team and the escalation path derived from it (the organisation's team for a role the
    customer's lacks; the tier's static escalation team for a level nobody holds), with display names."""
    team: dict[str, list[pb.TeamContact]] = {}
    names = people.names
    if row is not None:
        for role, persons, source in snap.effective_team(row):
            inherited = "" if source == row else f"customers/{snap.customer_id(source)}"
            team[role] = [pb.TeamContact(role=role, person=p, inherited_from=inherited, display_name=names.get(p, ""))
                          for p in persons]
            answer.team.extend(team[role])
    fallback = answer.policy.escalation.team
    for level, role in involved_levels(policy, tier_level):
        persons = team.get(role) or [pb.TeamContact(role=role, person=p, inherited_from="organization",
                                                    display_name=names.get(p, ""))
                                     for p in people.org_team.get(role, ())]
        answer.escalation.add(level=level, persons=persons, contact=persons[0].person if persons else fallback,
                              fallback=not persons)


def _reasons(snap: snapshots.Snapshot, row: int, own: int, effective: int) -> list[pb.PriorityReason]:
    reasons = []
    if snap.bad_profit[row] == 1:
        reasons.append(pb.PriorityReason(dimension=common_pb2.VALUE_DIMENSION_PROFITABILITY, text=BAD_PROFIT_REASON))
    if effective and (own == 0 or effective < own):
        reasons.append(pb.PriorityReason(text=f"{snap.tiers[effective - 1].display_name} standing inherited "
                                              f"from its parent account"))
    ranked = []
    for j, dimension in enumerate(snap.dimensions):
        score, population = snap.dimension_scores[row, j], snap.sorted_dimension_scores[j]
        if math.isnan(score) or not len(population):
            continue
        above = len(population) - np.searchsorted(population, score, side="left")
        ranked.append((100.0 * above / len(population), dimension))
    for top, dimension in sorted(ranked)[:2]:
        if top <= 50:
            reasons.append(pb.PriorityReason(dimension=dimension,
                                             text=f"top {_percent(top)} by {DIMENSION_WORDS.get(dimension, 'value')}"))
    if own and len(reasons) < MAX_REASONS and not math.isnan(snap.percentile[row]):
        reasons.append(pb.PriorityReason(text=f"top {_percent(100 - snap.percentile[row])} overall "
                                              f"(rank {int(snap.rank[row]):,})"))
    return reasons[:MAX_REASONS]


def _time_us(stamp) -> int:
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def _percent(value: float) -> str:
    return f"{max(value, 0.01):.2g} %" if value < 1 else f"{math.ceil(value):.0f} %"


def _rank_key(snap: snapshots.Snapshot, precedence: dict[int, int], customer_id: str) -> tuple:
    """(effective level, role precedence, -composite, id): smaller is served first."""
    row = snap.row(customer_id)
    floor = len(snap.tiers) + 1
    if row is None:  # after every registered customer, unscored ones included
        return (floor + 1, len(precedence), math.inf, customer_id)
    level = int(snap.effective_level[row]) or floor
    composite = snap.composite[row]
    return (level, precedence.get(int(snap.roles[row]), len(precedence)),
            -composite if not math.isnan(composite) else math.inf, customer_id)


def _decided_by(first: tuple, second: tuple) -> int:
    for position, rule in enumerate((pb.RANK_RULE_TIER, pb.RANK_RULE_ROLE_PRECEDENCE, pb.RANK_RULE_SCORE)):
        if first[position] != second[position]:
            return rule
    return pb.RANK_RULE_TIE


def add_to_server(server: grpc.aio.Server, engine: Engine, snapshot_dir: str = "") -> HierarchyServicer:
    servicer = HierarchyServicer(engine, snapshot_dir)
    pb_grpc.add_HierarchyServiceServicer_to_server(servicer, server)
    return servicer
