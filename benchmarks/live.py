"""Benchmark of the live hierarchy: how soon a registry change reaches GetPriority without a run.

Starts `cvh serve` (all three services, one process) on a fresh SQLite file, imports N customers (not timed),
runs the default model and waits for its snapshot. Then, each timed from the write's call until GetPriority
shows it (polled every 2 ms):

- signal_to_priority: RecordSignals that moves a customer's tier (every signal of a lowest-tier customer set
  high), until GetPriority answers with the new tier, live;
- new_customer_to_priority: CreateCustomer under a scored parent, until GetPriority knows it;
- feed_changes_per_s: RecordSignals change the NPS of --burst customers (--batch-size a call); a hierarchy
  servicer in this process, loaded before them like any replica, then takes them all in from the feed as it
  does (parse, re-score each through ScoreBatch, patch): changes divided by its seconds (the registry writes
  them more slowly: its figure is printed beside);
- reload: that servicer reloads as a follower the feed no longer serves does (export over gRPC, rebuild);
- GetPriority throughput and p99 at the client, quiet and while a writer records 1,000 changed customers a
  second.

    python -m benchmarks.live [--customers N] [--samples N] [--burst N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

import scoring_engine
from benchmarks.hierarchy import (
    HIERARCHY_SERVICE,
    SCORING_SERVICE,
    latency_buckets,
    server_p99_bound_ms,
    wait_for_snapshot,
)
from benchmarks.registry import (
    CHANNEL_OPTIONS,
    Progress,
    add_common_flags,
    check_import,
    customer_id,
    generate_base,
    serialized_column_batches,
    timed_import,
)
from benchmarks.registry import SERVICE as REGISTRY_SERVICE
from benchmarks.runs import percentiles_ms, timed_run
from clients.server_process import ServerProcess, free_port
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as scoring_pb
from cvh.scoring.v1 import scoring_service_pb2_grpc
from services.common import db
from services.common.peers import Peer
from services.hierarchy.servicer import MAX_PATCH_ROWS, HierarchyServicer

TARGET_P95_S = 1.0
TARGET_SIGNAL_MEDIAN_S = 0.25
TARGET_FEED_PER_S = 20_000
TARGET_RELOAD_1M_S = 10.0
POLL_S = 0.002


def until(check, timeout: float = 30.0) -> float:
    """Seconds until ``check()`` is true, polled every POLL_S."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"not seen within {timeout:g} s")
        time.sleep(POLL_S)
    return time.perf_counter() - started


def known(hierarchy, customer: str) -> pb.Priority | None:
    try:
        return hierarchy.GetPriority(pb.GetPriorityRequest(customer=customer), timeout=10)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


def signal_latencies(registry, hierarchy, climbers: list[str], signal_names) -> list[float]:
    """Each climber's signals set high; seconds until its tier shows the move, live."""
    seconds = []
    for customer in climbers:
        before = hierarchy.GetPriority(pb.GetPriorityRequest(customer=customer), timeout=10).own_tier.level
        started = time.perf_counter()
        registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
            customer=customer, signals={name: rpb.SignalValue(value=1e9) for name in signal_names
                                        if name != "payment_delay_days"})]), timeout=30)
        until(lambda customer=customer, before=before: (p := known(hierarchy, customer)).live
              and p.own_tier.level != before)
        seconds.append(time.perf_counter() - started)
    return seconds


def creation_latencies(registry, hierarchy, parents: list[str], tag: str) -> list[float]:
    seconds = []
    for k, parent in enumerate(parents):
        name = f"live-{tag}-{k:05d}"
        started = time.perf_counter()
        registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(customer_id=name, parent=parent)),
                                timeout=30)
        until(lambda name=name: known(hierarchy, f"customers/{name}") is not None)
        seconds.append(time.perf_counter() - started)
    return seconds


def write_burst(registry, rows: np.ndarray, batch_size: int) -> float:
    """RecordSignals changing the NPS of ``rows``' customers, ``batch_size`` a call; the seconds it took."""
    values = np.random.default_rng(11).integers(-100, 100, len(rows)).astype(float)
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
            customer=f"customers/{customer_id(i)}", signals={"nps": rpb.SignalValue(value=v)})
            for i, v in zip(rows[start:start + batch_size].tolist(), values[start:start + batch_size].tolist())]),
            timeout=120)
    return time.perf_counter() - started


async def apply_rate(server, run_name: str, write) -> tuple[float, float, float]:
    """(changes a second a hierarchy applies, seconds ``write`` took, seconds a reload takes): a hierarchy
    servicer in this process, loaded like any replica (over gRPC: run results, export, re-scores by
    ScoreBatch), is fed every change ``write`` made at once, and times taking them in (parse, re-score, patch)
    as the servicer does; then the reload of a follower the feed no longer serves (export and rebuild)."""
    servicer = HierarchyServicer(db.create_engine(f"sqlite:///{server.database}"))
    servicer.registry = servicer.scoring = Peer(server.target)
    async with servicer.scoring.channel() as channel:
        run = await scoring_service_pb2_grpc.ScoringServiceStub(channel).GetScoringRun(
            scoring_pb.GetScoringRunRequest(name=run_name))
        await servicer._load(channel, run)
    after = servicer.snapshot.sequence
    written = await asyncio.to_thread(write)
    messages = []
    async with servicer.registry.channel() as channel:
        changes = rpb_grpc.RegistryServiceStub(channel).WatchCustomerChanges(
            rpb.WatchCustomerChangesRequest(after_sequence=after))
        async for message in changes:
            messages.append(message)
            if message.last_sequence >= message.head_sequence:
                break
        changes.cancel()
    total = sum(len(m.chunk.customer_ids) for m in messages)
    started = time.perf_counter()
    while messages:
        batch, rows = [], 0
        while messages and rows < MAX_PATCH_ROWS:
            batch.append(messages.pop(0))
            rows += len(batch[-1].chunk.customer_ids)
        await servicer._patch(servicer._generation, batch)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    await servicer._reload_accounts()
    reload_s = time.perf_counter() - started
    await servicer.stop_background()
    return total / seconds, written, reload_s


def lookups(hierarchy, customers: list[str], seconds: float) -> np.ndarray:
    """Sequential GetPriority latencies for ``seconds``."""
    found, clock, k = [], time.perf_counter, 0
    end = clock() + seconds
    while clock() < end:
        started = clock()
        hierarchy.GetPriority(pb.GetPriorityRequest(customer=customers[k % len(customers)]), timeout=10)
        found.append(clock() - started)
        k += 1
    return np.array(found)


def steady_writes(target: str, customers: list[str], per_second: int, started, stop) -> None:
    """RecordSignals of ``per_second`` customers a second (ten calls of a tenth), until ``stop``; ``started`` is
    set after the first."""
    step = max(1, per_second // 10)
    rng = np.random.default_rng(7)
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        tick = time.perf_counter()
        while not stop.is_set():
            chosen = rng.choice(len(customers), step, replace=False)
            registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
                customer=customers[i], signals={"nps": rpb.SignalValue(value=float(rng.integers(-100, 100)))})
                for i in chosen.tolist()]), timeout=30)
            started.set()
            tick += 0.1
            time.sleep(max(0.0, tick - time.perf_counter()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.live", description=__doc__.split("\n\n")[0] + (
            f" Targets: signal_to_priority p95 <= {TARGET_P95_S:g} s (median <= {TARGET_SIGNAL_MEDIAN_S:g} s), "
            f"new_customer_to_priority p95 <= {TARGET_P95_S:g} s, feed_changes_per_s >= {TARGET_FEED_PER_S:,}, "
            f"reload_1m_s <= {TARGET_RELOAD_1M_S:g} s."))
    parser.add_argument("--customers", type=int, default=1_000_000, metavar="N",
                        help="customers in the base (default 1,000,000)")
    parser.add_argument("--samples", type=int, default=40, metavar="N",
                        help="timed signal changes, and as many timed creations (default 40)")
    parser.add_argument("--burst", type=int, default=50_000, metavar="N",
                        help="customers whose signals one import changes, for feed_changes_per_s (default 50,000)")
    parser.add_argument("--window", type=float, default=3.0, metavar="S",
                        help="seconds of sequential GetPriority calls, quiet and under writes (default 3)")
    parser.add_argument("--apart", action="store_true",
                        help="look up from a hierarchy in a `cvh serve hierarchy` process of its own (a replica "
                             "following the feed across processes), the writes going to the suite's")
    add_common_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show = not args.no_progress
    # The base has no value hierarchy: use_case_adoption (written by the adoption service) is left out.
    signal_names = tuple(n for n in scoring_engine.default_model().signal_names if n != "use_case_adoption")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cvh-bench-live-")))
        scoring_engine.warm_up()
        metrics_port = free_port()
        server = ServerProcess(workdir, services=(), health_services=(REGISTRY_SERVICE, SCORING_SERVICE,
                                                                       HIERARCHY_SERVICE),
                               extra_args=("--metrics-port", str(metrics_port)))
        stack.callback(server.stop)
        say(f"server: cvh serve on {server.target}; generating {args.customers:,} customers")
        base = generate_base(args.customers, args.seed, signal_names)
        batches = serialized_column_batches(base, args.batch_size, Progress("serialize", show))
        server.wait_serving()
        with contextlib.ExitStack() as channels:
            channel = channels.enter_context(grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS))
            imported = timed_import(channel, batches, args.customers, args.batch_size, server, Progress("import", show))
            check_import(imported, args.customers)
            del batches
            registry, hierarchy = rpb_grpc.RegistryServiceStub(channel), pb_grpc.HierarchyServiceStub(channel)
            run = timed_run(scoring_service_pb2_grpc.ScoringServiceStub(channel), server,
                            Progress("run (percent x 10)", show)).run
            if args.apart:
                metrics_port = free_port()
                (workdir / "front").mkdir()
                front = ServerProcess(workdir / "front", services=("hierarchy",), health_services=(HIERARCHY_SERVICE,),
                                      extra_args=("--metrics-port", str(metrics_port)),
                                      database_url=f"sqlite:///{server.database}",
                                      env={"CVH_REGISTRY_TARGET": server.target, "CVH_SCORING_TARGET": server.target})
                stack.callback(front.stop)
                front.wait_serving(timeout=600)
                hierarchy = pb_grpc.HierarchyServiceStub(
                    channels.enter_context(grpc.insecure_channel(front.target, options=CHANNEL_OPTIONS)))
                say(f"hierarchy apart: cvh serve hierarchy on {front.target}")
            wait_for_snapshot(hierarchy, run.name)
            say(f"run: {run.name} served; timing live changes")
            rng = np.random.default_rng(args.seed + 5)
            sample = rng.choice(args.customers, min(args.customers, 20 * args.samples + 200), replace=False)
            names = [f"customers/{customer_id(i)}" for i in sample.tolist()]
            answers = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(customers=names[:1000]), timeout=30)
            lowest = max(p.own_tier.level for p in answers.priorities)
            climbers = [p.customer for p in answers.priorities if p.own_tier.level == lowest][:args.samples]
            signal_s = signal_latencies(registry, hierarchy, climbers, signal_names)
            creation_s = creation_latencies(registry, hierarchy, names[-args.samples:], "new")

            buckets = [latency_buckets(metrics_port)]
            quiet = lookups(hierarchy, names, args.window)
            buckets.append(latency_buckets(metrics_port))
            # The writer in a process of its own: in this one it would take the GIL from the timed calls.
            spawn = multiprocessing.get_context("spawn")
            started, stop = spawn.Event(), spawn.Event()
            writer = spawn.Process(target=steady_writes, args=(server.target, names, 1000, started, stop), daemon=True)
            writer.start()
            started.wait(timeout=120)
            sequence = hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest()).feed_sequence
            buckets.append(latency_buckets(metrics_port))
            busy = lookups(hierarchy, names, args.window)
            buckets.append(latency_buckets(metrics_port))
            stop.set()
            writer.join()
            applied = hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest()).feed_sequence - sequence

            burst = rng.choice(args.customers, min(args.burst, args.customers), replace=False)
            per_s, import_s, reload_s = asyncio.run(apply_rate(server, run.name,
                                                     lambda: write_burst(registry, burst, args.batch_size)))
            info = hierarchy.GetSnapshotInfo(pb.GetSnapshotInfoRequest())
    signal, creation = np.array(signal_s), np.array(creation_s)
    quiet_ms, busy_ms = percentiles_ms(quiet), percentiles_ms(busy)
    quiet_server, busy_server = server_p99_bound_ms(*buckets[:2]), server_p99_bound_ms(*buckets[2:])
    figures = {
        "customers": args.customers, "samples": len(signal), "apart": args.apart,
        "signal_to_priority_p50_s": round(float(np.median(signal)), 4),
        "signal_to_priority_p95_s": round(float(np.percentile(signal, 95)), 4),
        "new_customer_to_priority_p50_s": round(float(np.median(creation)), 4),
        "new_customer_to_priority_p95_s": round(float(np.percentile(creation, 95)), 4),
        "feed_changes_per_s": round(per_s), "feed_burst": len(burst), "feed_burst_write_s": round(import_s, 2),
        "reload_s": round(reload_s, 2), "reload_1m_s": round(reload_s * 1_000_000 / args.customers, 2),
        "get_priority_quiet_per_s": round(len(quiet) / args.window),
        "get_priority_busy_per_s": round(len(busy) / args.window),
        "get_priority_quiet_p99_ms": round(quiet_ms["p99"], 3), "get_priority_busy_p99_ms": round(busy_ms["p99"], 3),
        "get_priority_server_quiet_p99_ms": quiet_server[0], "get_priority_server_busy_p99_ms": busy_server[0],
        "busy_changes_applied": int(applied), "live_customers": int(info.live_customers),
    }
    figures["meets_targets"] = (figures["signal_to_priority_p95_s"] <= TARGET_P95_S
                                and figures["signal_to_priority_p50_s"] <= TARGET_SIGNAL_MEDIAN_S
                                and figures["new_customer_to_priority_p95_s"] <= TARGET_P95_S
                                and per_s >= TARGET_FEED_PER_S
                                and figures["reload_1m_s"] <= TARGET_RELOAD_1M_S)
    where = ("the hierarchy in a process of its own, registry and scoring in another" if args.apart else
             "all services in one server subprocess")
    print(f"\nLive hierarchy benchmark: {args.customers:,} customers, {where}, SQLite")
    print(f"signal_to_priority        p50 {figures['signal_to_priority_p50_s']:.3f} s, p95 "
          f"{figures['signal_to_priority_p95_s']:.3f} s  ({len(signal)} tier moves; target p95 <= {TARGET_P95_S:g} s, "
          f"median <= {TARGET_SIGNAL_MEDIAN_S:g} s)")
    print(f"new_customer_to_priority  p50 {figures['new_customer_to_priority_p50_s']:.3f} s, p95 "
          f"{figures['new_customer_to_priority_p95_s']:.3f} s  (target p95 <= {TARGET_P95_S:g} s)")
    print(f"feed_changes_per_s        {per_s:,.0f}  ({len(burst):,} changed NPS, re-scored by ScoreBatch; the "
          f"registry wrote them in {import_s:.1f} s; target >= {TARGET_FEED_PER_S:,})")
    print(f"reload                    {reload_s:.2f} s  (a follower the feed no longer serves: export over gRPC "
          f"and rebuild; target <= {TARGET_RELOAD_1M_S:g} s per 1,000,000)")
    print(f"GetPriority quiet         {figures['get_priority_quiet_per_s']:,}/s, p99 {quiet_ms['p99']:.2f} ms at the "
          f"client, <= {quiet_server[0]:g} ms in the server ({quiet_server[1]:.1%} within 1 ms)")
    print(f"GetPriority, 1,000 changes/s  {figures['get_priority_busy_per_s']:,}/s, p99 {busy_ms['p99']:.2f} ms at "
          f"the client, <= {busy_server[0]:g} ms in the server ({busy_server[1]:.1%} within 1 ms; {applied:,} "
          f"changes applied meanwhile)")
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
