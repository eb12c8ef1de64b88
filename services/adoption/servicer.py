"""AdoptionService: versions of the value hierarchy, product telemetry in as daily aggregates, and what each
customer has achieved of it (one customer at the call; the whole base in the background, after which the
registry gets the adoption signals)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import re
import threading

import grpc
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

import scoring_engine.adoption
import scoring_engine.adoption_history
import scoring_engine.adoption_peers
from cvh.adoption.v1 import adoption_service_pb2 as pb
from cvh.adoption.v1 import adoption_service_pb2_grpc as pb_grpc
from cvh.hierarchy.v1 import hierarchy_service_pb2, hierarchy_service_pb2_grpc
from cvh.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from services.adoption import achievement, catalog, evaluation, history, questions, signals, store, telemetry
from services.adoption.held import HeldTelemetry
from services.adoption.tables import achievements
from services.common.auth import current_caller
from services.common.db import read_transaction, write_transaction
from services.common.errors import ServiceError, failed_precondition, invalid_argument, not_found, unavailable
from services.common.peers import Peer
from services.common.validation import customer_id_from_name, decode_offset_token, encode_page_token, page_size
from services.registry.customers import now_us, set_timestamp
from services.registry.store import MAX_DEPTH

log = logging.getLogger("cvh.adoption")

VERSION_NAME = re.compile(r"(?:valueMapVersions/)?([1-9][0-9]{0,8})")
DEFAULT_RETENTION_DAYS = 400
MAX_REJECTIONS_LISTED = 1000
# Names per BatchGetCustomers call to a registry in another process (its cap).
REGISTRY_BATCH = 1000
# Customers per RecordSignals call (its cap).
REGISTRY_SIGNAL_BATCH = 10_000
# While telemetry arrives, the base is evaluated again at most this often (and at once after an activation).
EVALUATE_SECONDS = 30.0
# Customers known to be registered, kept in memory between messages; beyond this many the memory starts over.
MAX_KNOWN_CUSTOMERS = 2_000_000
# Members per ListTierMembers page, and children per GetAccountTree call, from a hierarchy in another process.
HIERARCHY_PAGE = 1000
MAX_OWNER = 256


def parse_version_name(name: str, field_path: str) -> int:
    match = VERSION_NAME.fullmatch(name)
    if not match:
        raise invalid_argument(field_path, 'expected "valueMapVersions/{version}" or the version number',
                               "INVALID_VALUE_MAP_VERSION_NAME")
    return int(match.group(1))


def version_not_found(version: int) -> ServiceError:
    name = f"valueMapVersions/{version}"
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"{name} does not exist", "VALUE_MAP_VERSION_NOT_FOUND",
                        metadata={"resource": name})


class AdoptionServicer(pb_grpc.AdoptionServiceServicer):
    def __init__(self, engine: Engine, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        self.engine = engine
        self.retention_days = retention_days
        # Set by the server: where the registry is, or its servicer when this process serves it too.
        self.registry: Peer | None = None
        self.local_registry = None
        self._registry_stub = None
        # customer_id -> key in adoption_customers, for customers already checked against the registry.
        self._known: dict[str, int] = {}
        # event name -> id, for names already numbered (ids never change).
        self._event_ids: dict[str, int] = {}
        self._pruner: asyncio.Task | None = None
        self._evaluator: asyncio.Task | None = None
        self.evaluate_seconds = EVALUATE_SECONDS
        self._evaluate_now = asyncio.Event()  # an activation: evaluate at once
        self._telemetry_since_evaluation = False
        # The latest evaluation of the base (None before the first), and the one before of the same version.
        self.last_evaluation: evaluation.Evaluation | None = None
        self.previous_evaluation: evaluation.Evaluation | None = None
        # customer id -> the adoption signals last written to the registry (names, values)
        self._signals_written: dict[str, tuple] = {}
        self._pending_signals: tuple[list[str], dict[str, list[float]]] = ([], {})  # found, not written yet
        self._signals_lock = threading.Lock()
        self._achievements_lock = threading.Lock()  # recording achievements, or deriving first days again
        self._pending_achievements: list[evaluation.Evaluation] = []  # with achievements not recorded yet
        self._signal_writer: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # (version, its rules' event ids) -> compiled plan
        self._plans: dict[tuple, object] = {}
        self._versions: dict[int, pb.ValueMapVersion] = {}  # version -> parsed, for GetCustomerAdoption
        self._rule_names: dict[int, list[str]] = {}  # version -> its rules' event names
        # The telemetry aggregates in memory, refreshed from the chunks written since (by any process).
        self.held = HeldTelemetry(engine)
        self._recorded: evaluation.Recorded | None = None  # the achievements this process has written
        # Set by the server: the hierarchy servicer when this process serves it, else where one is (or None).
        self.local_hierarchy = None
        self.hierarchy: Peer | None = None
        self._hierarchy_stub = None
        # The latest evaluation's achieved nodes per customer (what the questions are answered from).
        self.last_base: questions.AchievedBase | None = None
        self._collected: questions.AchievedBase | None = None
        self._local_tiers: tuple | None = None  # (the hierarchy's snapshot, its Tiers)
        # customer id -> its creation time in the registry (microseconds; it never changes)
        self._create_times: dict[str, int] = {}
        scoring_engine.adoption.warm_up()  # compile or load the kernels now, not in the first request
        scoring_engine.adoption_peers.warm_up()
        scoring_engine.adoption_history.warm_up()
        # The version whose first achieved days this process derived over the kept history (at its first
        # evaluation, and again after each activation of another version).
        self._rederived_version: int | None = None

    # -- background: forget what is older than the retention -------------------------------------------------

    async def start_background(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._pruner = loop.create_task(self._prune_now_and_then())
        self._evaluator = loop.create_task(self._evaluate_now_and_then())

    async def stop_background(self) -> None:
        for task in (self._pruner, self._evaluator, self._signal_writer):
            if task:
                task.cancel()

    async def _evaluate_now_and_then(self) -> None:
        """The whole base against the active version: at start, at once after an activation, and at most every
        evaluate_seconds while telemetry arrives. Every process serving adoption does it; first achieved days
        only move back, so two at once agree."""
        first = True
        while True:
            if not first:
                # Background work takes at most about a quarter of the time while telemetry arrives: the next
                # round waits 3 times the last one's length if that is longer, and for the signals to be written.
                last = self.last_evaluation
                pause = max(self.evaluate_seconds, 3 * last.seconds if last else 0)
                try:
                    await asyncio.wait_for(self._evaluate_now.wait(), pause)
                except TimeoutError:
                    if not self._telemetry_since_evaluation or not (self._signal_writer is None
                                                                     or self._signal_writer.done()):
                        continue
            first = False
            self._evaluate_now.clear()
            self._telemetry_since_evaluation = False
            try:
                found = await asyncio.to_thread(self.evaluate_base)
                last = self.last_evaluation
                self.previous_evaluation = last if found and last and last.version == found.version else None
                self.last_evaluation, self.last_base = found, self._collected if found else None
                # The registry hears of the changes after the evaluation is answered from, while the next runs.
                if self._signal_writer is None or self._signal_writer.done():
                    self._signal_writer = asyncio.ensure_future(asyncio.to_thread(self.write_pending_signals))
            except Exception:  # a lost database: the next round tries again
                log.warning("evaluating adoption failed", exc_info=True)

    def evaluate_base(self) -> evaluation.Evaluation | None:
        """The base evaluated against the active version now; None when no version is active."""
        with read_transaction(self.engine) as conn:
            row = store.get_value_map(conn, None)
        if row is None:
            return None
        value_map = _version_proto(row)
        names = signals.signal_names(value_map)
        now = now_us()
        today, first_day = now // telemetry.DAY_US, telemetry.first_kept_day(now, self.retention_days)
        if self._rederived_version != value_map.version:
            with self._signals_lock:  # found under another version's rules: the re-derivation replaces them
                self._pending_achievements = [f for f in self._pending_achievements if f.version == value_map.version]
            with self._achievements_lock:
                self._recorded = history.rederive(self.engine, value_map, self.held, first_day, today)
                self._rederived_version = value_map.version
        collected = questions.Collector()
        changed: dict[str, list[float]] = {}

        def on_block(customer_ids: list[str], achieved: np.ndarray) -> None:
            collected.add(customer_ids, achieved)  # what the questions are answered from
            values = signals.signal_values(value_map, achieved)
            for customer_id, row_values in zip(customer_ids, values.tolist()):
                if self._signals_written.get(customer_id) != (names, row_values):
                    changed[customer_id] = row_values
        found = evaluation.evaluate_base(self.engine, value_map, today, self.held, first_day, on_block=on_block,
                                         recorded=self._recorded, write=False)
        self._recorded = found.recorded
        self._collected = collected.finish(found, value_map.nodes)
        with self._signals_lock:  # a writer still busy with earlier changes takes these too
            before, pending = self._pending_signals
            self._pending_signals = (names, {**pending, **changed} if before == names else changed)
            self._pending_achievements.append(found)
        return found

    def write_pending_signals(self) -> None:
        """Writes the achievements found for the first time and the signals the evaluations changed (see
        evaluate_base) until none are left."""
        while True:
            with self._signals_lock:
                (names, changed), self._pending_signals = self._pending_signals, ([], {})
                found, self._pending_achievements = self._pending_achievements, []
            if not changed and not found:
                return
            with self._achievements_lock:  # not while first days are derived again
                for one in found:
                    if one.version != self._rederived_version:
                        continue  # another version's rules: the re-derivation replaced them
                    try:
                        evaluation.write_achievements(self.engine, one)
                    except Exception:  # a lost database: the next evaluation starts again from what is stored
                        log.warning("recording achievements failed", exc_info=True)
                        self._recorded = None
            if changed:
                self._write_signals(names, changed)

    def _write_signals(self, names: list[str], changed: dict[str, list[float]]) -> None:
        """Records the changed adoption signals in the registry (its servicer here, else RecordSignals), in
        batches of 10,000 customers; a batch refused (a customer deleted since, one with too many signals) is
        logged and sent again at the next evaluation."""
        now = now_us()
        items = list(changed.items())
        for start in range(0, len(items), REGISTRY_SIGNAL_BATCH):
            batch = dict(items[start:start + REGISTRY_SIGNAL_BATCH])
            try:
                if self.local_registry is not None:
                    present = self.local_registry.known_customer_ids(list(batch))
                    self.local_registry.record_observations(
                        {c: [(n, v, now) for n, v in zip(names, values)] for c, values in batch.items()
                         if c in present})
                else:
                    asyncio.run_coroutine_threadsafe(self._record_remote(names, batch, now), self._loop).result(60)
            except Exception as error:  # noqa: BLE001 (the next evaluation sends them again)
                log.warning("writing adoption signals to the registry failed: %s", error)
                continue
            for customer_id, values in batch.items():
                self._signals_written[customer_id] = (names, values)

    async def _record_remote(self, names: list[str], batch: dict[str, list[float]], now: int) -> None:
        request = registry_service_pb2.RecordSignalsRequest()
        for customer_id, values in batch.items():
            entry = request.observations.add(customer=f"customers/{customer_id}")
            for name, value in zip(names, values):
                entry.signals[name].value = value
                set_timestamp(entry.signals[name].observe_time, now)
        # wait_for_ready: a registry restarting (its channel backing off after refused connections) is waited
        # for, not failed at once; the signals would otherwise wait for the next evaluation.
        await self._registry().RecordSignals(request, timeout=50, wait_for_ready=True)

    def _registry(self) -> registry_service_pb2_grpc.RegistryServiceStub:
        if self._registry_stub is None:
            self._registry_stub = registry_service_pb2_grpc.RegistryServiceStub(self.registry.channel())
        return self._registry_stub

    async def _prune_now_and_then(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.prune)
            except Exception:  # a lost database: the next round tries again
                log.warning("pruning telemetry beyond the retention failed", exc_info=True)
            await asyncio.sleep(3600)

    def prune(self, now: int | None = None) -> int:
        """Deletes aggregates and batch ids older than the retention; the rows deleted."""
        now = now_us() if now is None else now
        first_day = telemetry.first_kept_day(now, self.retention_days)
        with write_transaction(self.engine) as conn:
            return store.prune(conn, first_day, first_day * telemetry.DAY_US)

    # -- the value hierarchy ----------------------------------------------------------------------------------

    async def CreateValueMapVersion(self, request, context):
        catalog.check_value_map(request.value_map, self.retention_days)
        stored = catalog.normalized(request.value_map)
        counts = catalog.level_counts(stored.nodes)
        if request.validate_only:
            stored.level_counts.extend(counts)
            return stored
        author = current_caller.get()

        def create():
            with write_transaction(self.engine) as conn:
                version = store.create_value_map(conn, stored.SerializeToString(), stored.change_note, author,
                                                 counts, now_us(), activate=not request.skip_activation)
                return store.get_value_map(conn, version)
        created = _version_proto(await asyncio.to_thread(create))
        if created.active:
            self._evaluate_now.set()
        return created

    async def GetValueMapVersion(self, request, context):
        version = parse_version_name(request.name, "name") if request.name else None
        return _version_proto(await asyncio.to_thread(self._version_row, version))

    def _version_row(self, version: int | None) -> Row:
        with read_transaction(self.engine) as conn:
            return self._version_row_in(conn, version)

    async def ListValueMapVersions(self, request, context):
        size = page_size(request.page_size)
        offset = decode_offset_token(request.page_token, {})

        def page():
            with read_transaction(self.engine) as conn:
                return store.list_value_maps(conn, offset, size + 1)
        rows = await asyncio.to_thread(page)
        response = pb.ListValueMapVersionsResponse(value_maps=[_version_proto(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = encode_page_token(offset + size, {})
        return response

    async def ActivateValueMapVersion(self, request, context):
        version = parse_version_name(request.name, "name")

        def activate():
            with write_transaction(self.engine) as conn:
                if not store.activate_value_map(conn, version):
                    raise version_not_found(version)
                return store.get_value_map(conn, version)
        activated = _version_proto(await asyncio.to_thread(activate))
        self._evaluate_now.set()  # re-derived over the kept history
        return activated

    async def DiffValueMapVersions(self, request, context):
        base = parse_version_name(request.base, "base")
        target = parse_version_name(request.target, "target")
        before, after = await asyncio.gather(asyncio.to_thread(self._version_row, base),
                                             asyncio.to_thread(self._version_row, target))
        found = catalog.diff(_version_proto(before), _version_proto(after))
        return pb.ValueMapDiff(base=f"valueMapVersions/{base}", target=f"valueMapVersions/{target}",
                               added=found.added, removed=found.removed, changed=found.changed)

    # -- achievement ------------------------------------------------------------------------------------------

    async def GetCustomerAdoption(self, request, context):
        customer_id = customer_id_from_name(request.customer, "customer")
        version = parse_version_name(request.value_map_version, "value_map_version") \
            if request.value_map_version else None
        found = await asyncio.to_thread(self._customer_adoption, customer_id, version)
        if found is None:  # no telemetry kept for it: registered, or not at all?
            if not (await self._registered([customer_id]))[0]:
                raise not_found(f"customers/{customer_id}")
            found = await asyncio.to_thread(self._customer_adoption, customer_id, version, True)
        achieved_days = [n for n in found.nodes if n.first_achieved_day]
        created = (await self._creation_times([customer_id])).get(customer_id) if achieved_days else None
        if created is not None:
            for node in achieved_days:
                day = (dt.date.fromisoformat(node.first_achieved_day) - achievement.EPOCH).days
                node.days_to_value = int(questions.days_to_value(day, created))
        return found

    def _customer_adoption(self, customer_id: str, version: int | None,
                           registered: bool = False) -> pb.CustomerAdoption | None:
        """The customer's tree; None when no telemetry was kept for it (unless known to be ``registered``)."""
        now = now_us()
        today = now // telemetry.DAY_US
        with read_transaction(self.engine) as conn:
            value_map = self._version_nodes(conn, version)
            key = self._known.get(customer_id) or store.customer_keys(conn, [customer_id]).get(customer_id)
            if key is None and not registered:
                return None
            names = self._rule_names.get(value_map.version) or achievement.rule_event_names(value_map)
            self._rule_names[value_map.version] = names
            event_ids = self._rule_event_ids(conn, names)
            plan, beneath = self._plan(value_map, event_ids)
            first_days = {} if key is None else evaluation.first_achieved(conn, key)
        rows = [np.empty(0, np.int64)] * 6 if key is None else self.held.refresh(
            telemetry.first_kept_day(now, self.retention_days), lookback=False).customer_rows(
            key, telemetry.first_kept_day(now, self.retention_days))
        result = achievement.evaluate_one(plan, today, *rows)
        answer = achievement.customer_adoption(value_map, plan, beneath, today, result)
        for node in answer.nodes:
            node.first_achieved_day = achievement.day_text(first_days.get(node.key, -1))
        answer.customer = f"customers/{customer_id}"
        return answer

    async def GetNodeAdoption(self, request, context):
        key = request.node_key
        if key and not catalog.SLUG.fullmatch(key):
            raise invalid_argument("node_key", "a node key: [a-z][a-z0-9-]{0,62}", "INVALID_NODE_KEY")
        last, previous, base = self.last_evaluation, self.previous_evaluation, self.last_base
        if last is None:
            raise _not_evaluated()
        nodes = [n for n in last.nodes if not key or n.key == key]
        if not nodes:
            raise _node_not_found(last.version, key)
        tiers = await self._tiers(base) if base is not None and base.evaluation is last else None
        if request.tier_id:
            self._tier_level(tiers, request.tier_id)
        report = pb.NodeAdoptionReport(value_map_version=f"valueMapVersions/{last.version}",
                                       customers_evaluated=last.customers)
        set_timestamp(report.evaluate_time, last.end_time_us)
        for node in nodes:
            achieved = last.achieved.get(node.key, 0)
            share = report.nodes.add(key=node.key, level=node.level, display_name=node.display_name,
                                     parent_key=node.parent_key, customers_achieved=achieved,
                                     share=achieved / last.customers if last.customers else 0.0)
            if previous is not None and node.key in previous.achieved:
                share.previous_share = previous.achieved[node.key] / previous.customers if previous.customers else 0.0
        if base is not None and base.evaluation is last:
            await self._node_figures(base, tiers, request.tier_id, report)
        return report

    async def _node_figures(self, base: questions.AchievedBase, tiers: questions.Tiers | None, tier_id: str,
                            report: pb.NodeAdoptionReport) -> None:
        """Per node of ``report``: the figures per tier and the median time to value (kept with the base)."""
        people = questions.population(base, tiers)
        keys = [n.key for n in report.nodes]
        missing = [k for k in keys if ("median", k) not in base.cache]
        if missing:
            def read():
                with read_transaction(self.engine) as conn:
                    return questions.first_days(conn, missing)
            first = await asyncio.to_thread(read)
            created = await self._creation_times(sorted({c for k in missing
                                                         for c in questions.achievers(base, base.node_index[k])}))
            for k, (ids, days) in first.items():
                base.cache[("median", k)] = questions.median_days_to_value(base, base.node_index[k], ids, days,
                                                                           created)
        for share in report.nodes:
            node = base.node_index[share.key]
            if tiers is not None:
                share.tiers.extend(questions.tier_adoption(people, questions.achieved_in(base, people, node), tiers,
                                                           tier_id))
            median = base.cache[("median", share.key)]
            if median is not None:
                share.median_days_to_value = median

    async def ListNodeCustomers(self, request, context):
        if not catalog.SLUG.fullmatch(request.node_key):
            raise invalid_argument("node_key", "required: a node key, [a-z][a-z0-9-]{0,62}", "INVALID_NODE_KEY")
        if request.achievement not in (pb.ACHIEVEMENT_UNSPECIFIED, pb.ACHIEVEMENT_ACHIEVED,
                                       pb.ACHIEVEMENT_NOT_ACHIEVED):
            raise invalid_argument("achievement", "ACHIEVEMENT_ACHIEVED or ACHIEVEMENT_NOT_ACHIEVED",
                                   "INVALID_ACHIEVEMENT")
        if len(request.owner) > MAX_OWNER:
            raise invalid_argument("owner", f"at most {MAX_OWNER} characters", "INVALID_OWNER")
        account = customer_id_from_name(request.account, "account") if request.account else None
        size = page_size(request.page_size)
        base = self.last_base
        if base is None:
            raise _not_evaluated()
        node = base.node_index.get(request.node_key)
        if node is None:
            raise _node_not_found(base.evaluation.version, request.node_key)
        want = request.achievement != pb.ACHIEVEMENT_NOT_ACHIEVED
        filters = {"node": request.node_key, "achieved": want, "tier": request.tier_id, "owner": request.owner,
                   "account": account or "", "evaluated": base.evaluation.end_time_us}
        offset = decode_offset_token(request.page_token, filters)
        tiers = await self._tiers(base)
        if tiers is None and (request.tier_id or request.owner or account):
            raise _tiers_unavailable()
        level = self._tier_level(tiers, request.tier_id) if request.tier_id else None
        accounts = await self._subtree(tiers, account) if account else None
        people = questions.population(base, tiers)
        rows = questions.node_customers(people, questions.achieved_in(base, people, node), want, level,
                                        request.owner, accounts)
        page = rows[offset:offset + size]

        def read_first_days():
            with read_transaction(self.engine) as conn:
                keys = store.customer_keys(conn, [people.customer_ids[r] for r in page.tolist()])
                by_key = dict(conn.execute(sa.select(achievements.c.customer_key, achievements.c.first_day).where(
                    achievements.c.node_key == request.node_key,
                    achievements.c.customer_key.in_(list(keys.values()) or [-1]))).all())
            return {c: by_key[k] for c, k in keys.items() if k in by_key}
        first = await asyncio.to_thread(read_first_days) if want and len(page) else {}
        answer = pb.ListNodeCustomersResponse(
            customers=questions.node_customer_page(base, people, tiers, node, page, first), total_size=len(rows),
            value_map_version=f"valueMapVersions/{base.evaluation.version}")
        if offset + size < len(rows):
            answer.next_page_token = encode_page_token(offset + size, filters)
        return answer

    async def RecommendUseCases(self, request, context):
        customer_id = customer_id_from_name(request.customer, "customer")
        if not 0 <= request.limit <= questions.MAX_RECOMMENDATIONS:
            raise invalid_argument("limit", f"0 (default {questions.DEFAULT_RECOMMENDATIONS}) to "
                                            f"{questions.MAX_RECOMMENDATIONS}", "INVALID_LIMIT")
        if not 0 <= request.peers <= questions.MAX_PEERS:
            raise invalid_argument("peers", f"0 (default {questions.DEFAULT_PEERS}) to {questions.MAX_PEERS}",
                                   "INVALID_PEERS")
        base = self.last_base
        if base is None:
            raise _not_evaluated()
        tiers = await self._tiers(base)
        people = questions.population(base, tiers)
        if customer_id not in people.index and not (await self._registered([customer_id]))[0]:
            raise not_found(f"customers/{customer_id}")
        found = await asyncio.to_thread(questions.recommend, base, people, customer_id,
                                        request.limit or questions.DEFAULT_RECOMMENDATIONS,
                                        request.peers or questions.DEFAULT_PEERS)
        answer = pb.RecommendUseCasesResponse(
            customer=f"customers/{customer_id}", value_map_version=f"valueMapVersions/{base.evaluation.version}",
            peers=len(found.peers), mean_similarity=found.mean_similarity,
            tier_id=next((t for t, _, level in tiers.tiers if level == found.tier_level), "") if tiers else "")
        for node, peer_share, base_share, lift in found.use_cases:
            use_case = base.nodes[node]
            answer.use_cases.add(key=use_case.key, display_name=use_case.display_name,
                                 parent_key=use_case.parent_key, peer_share=peer_share, base_share=base_share,
                                 lift=lift)
        return answer

    # -- what the other services know: value tiers and creation times ------------------------------------------

    def _tier_level(self, tiers: questions.Tiers | None, tier_id: str) -> int:
        if tiers is None:
            raise _tiers_unavailable()
        level = tiers.level_of(tier_id)
        if level is None:
            raise invalid_argument("tier_id", f"unknown tier {tier_id!r}; tiers: {tiers.tier_list()}",
                                   "INVALID_TIER_ID")
        return level

    async def _tiers(self, base: questions.AchievedBase) -> questions.Tiers | None:
        """The hierarchy's current tiers: its snapshot here (read again when it is swapped), else one bulk
        read of its RPCs per evaluation (None, logged, when it does not answer)."""
        if self.local_hierarchy is not None:
            snapshot = self.local_hierarchy.snapshot
            if self._local_tiers is None or self._local_tiers[0] is not snapshot:
                self._local_tiers = (snapshot, questions.local_tiers(snapshot))
            return self._local_tiers[1]
        if self.hierarchy is None:
            return None
        if "tiers" not in base.cache:
            try:
                base.cache["tiers"] = await self._read_remote_tiers()
            except grpc.aio.AioRpcError as error:
                log.warning("reading the value tiers from the hierarchy at %s failed: %s %s", self.hierarchy,
                            error.code().name, error.details())
                return None
        return base.cache["tiers"]

    def _hierarchy(self) -> hierarchy_service_pb2_grpc.HierarchyServiceStub:
        if self._hierarchy_stub is None:
            self._hierarchy_stub = hierarchy_service_pb2_grpc.HierarchyServiceStub(self.hierarchy.channel())
        return self._hierarchy_stub

    async def _read_remote_tiers(self) -> questions.Tiers:
        """Every ranked customer's tier, rank and owner: ListTierMembers, tier by tier, page by page."""
        stub = self._hierarchy()
        summary = await stub.GetHierarchySummary(hierarchy_service_pb2.GetHierarchySummaryRequest(), timeout=30)
        tiers = [(t.tier.tier_id, t.tier.display_name, t.tier.level) for t in summary.tiers]
        members = []
        for tier_id, _, level in tiers:
            token = ""
            while True:
                page = await stub.ListTierMembers(hierarchy_service_pb2.ListTierMembersRequest(
                    tier_id=tier_id, page_size=HIERARCHY_PAGE, page_token=token), timeout=30)
                members += [(m.customer.removeprefix("customers/"), level, m.rank, m.owner) for m in page.members]
                if not (token := page.next_page_token):
                    break
        return questions.remote_tiers(tiers, members)

    async def _subtree(self, tiers: questions.Tiers, account: str) -> list[str]:
        """``account`` and every account beneath it, from the hierarchy's snapshot (here), else walked level by
        level through GetAccountTree."""
        if tiers.subtree is not None:
            found = tiers.subtree(account)
            if found is None:
                raise _account_not_in_hierarchy(account)
            return found
        found, frontier, stub = [account], [account], self._hierarchy()
        try:
            for _ in range(MAX_DEPTH):
                below = []
                for customer in frontier:
                    tree = await stub.GetAccountTree(hierarchy_service_pb2.GetAccountTreeRequest(
                        customer=customer, max_children=HIERARCHY_PAGE), timeout=30)
                    below += [c.customer.removeprefix("customers/") for c in tree.children]
                if not below:
                    break
                found, frontier = found + below, below
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise _account_not_in_hierarchy(account) from None
            raise _tiers_unavailable() from None
        return found

    async def _creation_times(self, ids: list[str]) -> dict[str, int]:
        """The registry's creation time of each of ``ids`` it knows (kept: it never changes); the registry's
        servicer here, else BatchGetCustomers (a failure leaves them unknown, logged)."""
        unseen = [c for c in ids if c not in self._create_times]
        if unseen:
            if len(self._create_times) + len(unseen) > MAX_KNOWN_CUSTOMERS:
                self._create_times = {}
            try:
                if self.local_registry is not None:
                    self._create_times.update(await asyncio.to_thread(self.local_registry.create_times, unseen))
                else:
                    for start in range(0, len(unseen), REGISTRY_BATCH):
                        answer = await self._registry().BatchGetCustomers(
                            registry_service_pb2.BatchGetCustomersRequest(
                                names=unseen[start:start + REGISTRY_BATCH], allow_missing=True), timeout=30)
                        self._create_times.update((c.customer_id, c.create_time.ToMicroseconds())
                                                  for c in answer.customers)
            except Exception as error:  # noqa: BLE001 (time to value is left out, not the answer)
                log.warning("reading creation times from the registry failed: %s", error)
        return {c: self._create_times[c] for c in ids if c in self._create_times}

    def _version_row_in(self, conn, version: int | None) -> Row:
        row = store.get_value_map(conn, version)
        if row is None and version is None:
            raise failed_precondition("no value hierarchy version is active yet: create one "
                                      "(`cvh valuemap apply FILE`)", "NO_ACTIVE_VALUE_MAP")
        if row is None:
            raise version_not_found(version)
        return row

    def _rule_event_ids(self, conn, names: list[str]) -> dict[str, int]:
        """Ids of those of ``names`` telemetry has used; asks the store only for names not known numbered yet
        (ids never change; another process may have numbered one since)."""
        known = self._event_ids
        missing = [n for n in names if n not in known]
        found = store.known_event_ids(conn, missing) if missing else {}
        if found:
            self._event_ids = known = {**known, **found}
        return {n: known[n] for n in names if n in known}

    def _version_nodes(self, conn, version: int | None) -> pb.ValueMapVersion:
        """The version (or the active one) with its nodes, parsed once per process: versions never change, only
        which one is active (this copy's ``active`` says nothing)."""
        number = store.value_map_number(conn, version)
        if number is None:
            self._version_row_in(conn, version)  # raises the error that fits
        found = self._versions.get(number)
        if found is None:
            found = _version_proto(self._version_row_in(conn, number))
            if len(self._versions) > 64:
                self._versions.clear()
                self._rule_names.clear()
            self._versions[number] = found
        return found

    def _plan(self, value_map: pb.ValueMapVersion, event_ids: dict[str, int]) -> tuple:
        """The version compiled, and the procedures beneath each node, kept while telemetry's names for its
        rules stay the same."""
        key = (value_map.version, tuple(sorted(event_ids.items())))
        found = self._plans.get(key)
        if found is None:
            plan = achievement.compile_plan(value_map, event_ids)
            found = plan, achievement.procedures_beneath(plan)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = found
        return found

    # -- telemetry --------------------------------------------------------------------------------------------

    async def RecordTelemetry(self, request_iterator, context):
        summary = Summary()
        index = 0
        writing: asyncio.Future | None = None  # the previous message's transaction
        try:
            async for request in request_iterator:
                # Check this message while the previous one is written: SQLite and psycopg release the GIL.
                message = await asyncio.to_thread(telemetry.parse, request, index)
                known = await self._registered(message.customer_ids)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(self._record, message, known, summary))
                index += 1
            if writing is not None:
                await writing
        except BaseException:
            if writing is not None:  # a started transaction ends (commits or rolls back) before the answer
                await asyncio.wait([writing])
            raise
        return summary.response()

    def _record(self, message: telemetry.Message, known: np.ndarray, summary: Summary) -> None:
        """Decides each event's fate, sums the kept ones and writes them in one transaction."""
        now = now_us()
        reasons = telemetry.reasons(message, known, now, self.retention_days)
        keep = reasons == 0
        kept = int(keep.sum())
        sums = telemetry.aggregate(message, keep)
        used_customers = _used(len(message.customer_ids), sums.customers, sums.user_customers)
        used_events = _used(len(message.event_names), sums.events, sums.user_events)
        with write_transaction(self.engine) as conn:
            if message.batch_id and not store.claim_batch(conn, message.batch_id, kept, now):
                summary.duplicate(message)
                return
            # Numbered once: only customers and names not seen before are written.
            known, named = self._known, self._event_ids
            ids = [message.customer_ids[c] for c in used_customers]
            keys = np.fromiter(map(known.get, ids, itertools.repeat(0)), np.int64, len(ids))
            added = store.add_customers(conn, [ids[i] for i in np.flatnonzero(keys == 0).tolist()], now)
            names = [message.event_names[e] for e in used_events]
            numbered = store.event_ids(conn, [n for n in names if n not in named])
            key_of = np.zeros(len(message.customer_ids), np.int64)
            keys[keys == 0] = [added[ids[i]] for i in np.flatnonzero(keys == 0).tolist()]
            key_of[used_customers] = keys
            id_of = np.zeros(len(message.event_names), np.int64)
            id_of[used_events] = [named[n] if n in named else numbered[n] for n in names]
            store.add_chunks(conn, key_of[sums.customers], id_of[sums.events], sums.days, sums.counts,
                             key_of[sums.user_customers], id_of[sums.user_events], sums.user_hashes, sums.user_days)
        self._remember(added)
        self._telemetry_since_evaluation = True
        if numbered:
            self._event_ids = {**named, **numbered}
        summary.add(message, reasons, kept, len(sums.counts))

    def _remember(self, keys: dict[str, int]) -> None:
        if len(self._known) + len(keys) > MAX_KNOWN_CUSTOMERS:
            self._known = {}  # a new dict: a message being written keeps the one it read
        self._known.update(keys)

    async def _registered(self, customer_ids: list[str]) -> np.ndarray:
        """Per entry of ``customer_ids``, whether the registry knows it (well-formed and registered). Customers
        telemetry was kept for before are not asked again (a customer deleted from the registry since keeps
        its telemetry until the retention ends)."""
        # Customers known already were well-formed: only the others are matched (a message names up to 100,000).
        seen = np.fromiter(map(self._known.__contains__, customer_ids), bool, len(customer_ids))
        if seen.all():
            return seen
        unseen_ids = [customer_ids[i] for i in np.flatnonzero(~seen).tolist()]
        unseen = sorted({c for c, ok in zip(unseen_ids, telemetry.well_formed_customers(unseen_ids)) if ok})
        if unseen:
            def stored():
                with read_transaction(self.engine) as conn:
                    return store.customer_keys(conn, unseen)
            self._remember(await asyncio.to_thread(stored))
            unseen = [c for c in unseen if c not in self._known]
        registered = await self._ask_registry(unseen) if unseen else set()
        good = set(unseen) & registered
        seen[~seen] = [c in self._known or c in good for c in unseen_ids]
        return seen

    async def _ask_registry(self, ids: list[str]) -> set[str]:
        if self.local_registry is not None:
            return await asyncio.to_thread(self.local_registry.known_customer_ids, ids)
        found: set[str] = set()
        try:
            for start in range(0, len(ids), REGISTRY_BATCH):
                answer = await self._registry().BatchGetCustomers(registry_service_pb2.BatchGetCustomersRequest(
                    names=ids[start:start + REGISTRY_BATCH], allow_missing=True), timeout=30)
                found.update(c.customer_id for c in answer.customers)
        except grpc.aio.AioRpcError as error:
            raise unavailable(f"the registry at {self.registry} answered {error.code().name}: "
                              f"{error.details()}; messages before this one are committed, resend from this one",
                              "REGISTRY_UNAVAILABLE") from None
        return found


class Summary:
    """What a RecordTelemetry stream did, message by message."""

    def __init__(self) -> None:
        self.answer = pb.RecordTelemetryResponse()
        self.by_reason: dict[int, int] = {}

    def duplicate(self, message: telemetry.Message) -> None:
        self.answer.messages += 1
        self.answer.duplicate_messages += 1

    def add(self, message: telemetry.Message, reasons: np.ndarray, kept: int, daily_rows: int) -> None:
        answer = self.answer
        answer.messages += 1
        answer.events_received += message.size
        answer.events_kept += kept
        answer.events_rejected += message.size - kept
        answer.daily_rows_written += daily_rows
        rejected = np.flatnonzero(reasons)
        for reason, count in zip(*np.unique(reasons[rejected], return_counts=True)):
            self.by_reason[int(reason)] = self.by_reason.get(int(reason), 0) + int(count)
        room = MAX_REJECTIONS_LISTED - len(answer.rejections)
        for position in rejected[:max(room, 0)].tolist():
            answer.rejections.add(message_index=message.index, position=position, reason=int(reasons[position]))

    def response(self) -> pb.RecordTelemetryResponse:
        for reason in sorted(self.by_reason):
            self.answer.rejection_counts.add(reason=reason, events=self.by_reason[reason])
        return self.answer


def _used(size: int, *positions: np.ndarray) -> list[int]:
    """The entries of a message's table (of ``size``) that ``positions`` refer to, in order."""
    used = np.zeros(size, bool)
    for p in positions:
        used[p] = True
    return np.flatnonzero(used).tolist()


def _not_evaluated() -> ServiceError:
    return failed_precondition("the base has not been evaluated yet: no value hierarchy version is active, or the "
                               "first evaluation has not ended; retry in a moment", "NOT_EVALUATED_YET")


def _node_not_found(version: int, key: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"valueMapVersions/{version} has no node {key!r}",
                        "NODE_NOT_FOUND", metadata={"resource": f"valueMapVersions/{version}"})


def _tiers_unavailable() -> ServiceError:
    return failed_precondition("no hierarchy service to read value tiers, owners and accounts from: serve it in "
                               "this process, or set CVH_HIERARCHY_TARGET", "TIERS_UNAVAILABLE")


def _account_not_in_hierarchy(account: str) -> ServiceError:
    return invalid_argument("account", f"customers/{account} is not in the hierarchy's current snapshot",
                            "INVALID_ACCOUNT")


def _version_proto(row: Row) -> pb.ValueMapVersion:
    message = pb.ValueMapVersion.FromString(row.nodes) if "nodes" in row._fields else pb.ValueMapVersion()
    message.name, message.version = f"valueMapVersions/{row.version}", row.version
    message.change_note, message.author, message.active = row.change_note, row.author, row.active
    set_timestamp(message.create_time, row.create_time_us)
    message.ClearField("level_counts")
    message.level_counts.extend(int(c) for c in row.level_counts.split(",") if c)
    return message


def add_to_server(server: grpc.aio.Server, engine: Engine,
                  retention_days: int = DEFAULT_RETENTION_DAYS) -> AdoptionServicer:
    servicer = AdoptionServicer(engine, retention_days)
    pb_grpc.add_AdoptionServiceServicer_to_server(servicer, server)
    return servicer
