"""Benchmark of the hierarchy service: snapshot load after a run, and GetPriority latency.

Starts `cvh serve` (all three services) in a subprocess on a fresh SQLite file, imports N
customers (not timed), runs the default model, then times how long the hierarchy service
takes from the run's completion to serving the new snapshot (StreamRunResults + registry
export + build), and the latency of sequential GetPriority calls: over loopback at the
client, and inside the server from its Prometheus latency histogram.

    python -m benchmarks.hierarchy [--customers N] [--calls N] [--workers N] [--json]
    python -m benchmarks.hierarchy --in-process --customers 10m [--json]

``--workers 2`` serves from two worker processes (``cvh serve --workers 2``), which build the run's snapshot once
and both map it (services/hierarchy/shared.py): the snapshot counts once the run is served by every worker, and
``workers2_snapshot_memory_ratio`` is the two workers' proportional memory (PSS) of the snapshot's files over one
worker's resident memory (RSS) of them, i.e. over one snapshot (1.0: shared whole; 2.0: two copies).

``--customers`` takes 1000000, 1m, 100k or 10m. ``--in-process`` skips the server: it builds the snapshot from
generated columns in this process (no import, no run), and reports the build's seconds, the resident memory it
added (RSS and PSS from /proc/self/smaps_rollup, inputs dropped) and the latency of the GetPriority answer
(``servicer._priority``) over it: the snapshot at sizes whose import and run would take too long.

:func:`measure_serving` takes an already running server (another benchmark's) once a run completed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

import scoring_engine
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
from benchmarks.runs import latencies, percentiles_ms, timed_run
from clients.server_process import ServerProcess, free_port
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.scoring.v1 import scoring_service_pb2_grpc

SCORING_SERVICE = "cvh.scoring.v1.ScoringService"
HIERARCHY_SERVICE = "cvh.hierarchy.v1.HierarchyService"
GET_PRIORITY = "/cvh.hierarchy.v1.HierarchyService/GetPriority"
SNAPSHOT_TARGET_1M_S = 2.0
SNAPSHOT_TARGET_10M_S = 20.0
SNAPSHOT_MEMORY_TARGET_10M_GIB = 2.0
SERVER_P99_TARGET_MS = 1.0


def customer_count(text: str) -> int:
    """1000000, 1_000_000, 1m, 100k, 10M: a count of customers."""
    match = re.fullmatch(r"([0-9][0-9_]*(?:\.[0-9]+)?)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a count such as 1000000, 100k or 10m, got {text!r}")
    value = float(match.group(1).replace("_", "")) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"a whole number of customers, at least 1, got {text!r}")
    return int(value)


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """Rss and Pss (KiB) of a process, from /proc/PID/smaps_rollup."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                found[name.lower()] = int(rest.split()[0])
    return found


def _trim() -> None:
    """Give freed memory back to the system (Python's, glibc's and Arrow's allocators keep some)."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def worker_pids(server_pid: int) -> list[int]:
    """The worker processes of ``cvh serve --workers N`` (its children), or the server itself when it has none."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == server_pid and _is_worker(int(stat.parent.name)):
                children.append(int(stat.parent.name))
    return sorted(children) or [server_pid]


def _is_worker(pid: int) -> bool:
    """Whether ``pid`` is a worker process (spawned), not multiprocessing's resource tracker."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def snapshot_memory(pids: list[int]) -> dict:
    """Memory of the hierarchy snapshot files each of ``pids`` maps (/proc/PID/smaps: Rss and Pss, KiB, of the
    mappings of ``cvh-snapshots-*/run-*`` files: the shared pages and the private copies its live patches
    made), and the ratio of their Pss sum to one process's Rss of them (one snapshot)."""
    per = []
    for pid in pids:
        rss = pss = 0
        current = False
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                head = line.split(None, 1)[0]
                if not head.endswith(":"):  # a mapping's first line: address range, perms, ..., path
                    current = "cvh-snapshots-" in line and "/run-" in line
                elif current and head == "Rss:":
                    rss += int(line.split()[1])
                elif current and head == "Pss:":
                    pss += int(line.split()[1])
        per.append({"pid": pid, "rss_kib": rss, "pss_kib": pss})
    one = max((p["rss_kib"] for p in per), default=0)
    return {"workers": per, "snapshot_mib": round(one / 1024, 1),
            "ratio": round(sum(p["pss_kib"] for p in per) / one, 3) if one else float("nan")}


def measure_serving(target: str, run: str, customers: int, calls: int, warmup: int, seed: int,
                    metrics_ports: list[int], server_pid: int | None = None, workers: int = 1,
                    show: bool = False) -> dict:
    """Figures of a running server (another benchmark's) once ``run`` completed: seconds until every worker serves
    it, in-server GetPriority p99 (histograms of ``metrics_ports``, one per worker), client latencies, and with
    ``server_pid`` the snapshot memory of its workers (``snapshot_memory``). Customers ids are
    ``benchmarks.registry.customer_id(0..customers-1)``."""
    from clients import loadtest

    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        hierarchy = pb_grpc.HierarchyServiceStub(channel)
        snapshot_s = wait_for_snapshot(hierarchy, run)
        if workers > 1:  # every worker started (its metrics answer) before "every connection serves it" means all
            deadline = time.monotonic() + 300
            for port in metrics_ports:
                while True:
                    try:
                        latency_buckets(port)
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"no worker serves metrics on port {port}") from None
                        time.sleep(0.1)
            started = time.perf_counter()
            loadtest.wait_for_snapshot_everywhere(target, run, workers=workers, timeout=600)
            snapshot_s += time.perf_counter() - started
        rows = np.random.default_rng(seed + 3).integers(0, customers, size=warmup + calls)
        requests = [pb.GetPriorityRequest(customer=f"customers/{customer_id(i)}") for i in rows.tolist()]
        # The untimed calls over separate connections (the kernel spreads them over the workers): each worker
        # serves, and touches the snapshot as serving does; the timed ones over one.
        spread = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                  for _ in range(8 * workers if workers > 1 else 0)]
        try:
            for k, request in enumerate(requests[:warmup]):
                stub = pb_grpc.HierarchyServiceStub(spread[k % len(spread)]) if spread else hierarchy
                stub.GetPriority(request, timeout=30)
        finally:
            for other in spread:
                other.close()
        before = _summed(latency_buckets(port) for port in metrics_ports)
        seconds, answers = latencies(hierarchy.GetPriority, requests[warmup:], 0, Progress("GetPriority", show))
        after = _summed(latency_buckets(port) for port in metrics_ports)
    if not all(a.scored and a.run == run for a in answers):
        raise SystemExit("some GetPriority answers were not scored from the run")
    client = percentiles_ms(seconds)
    server_p99, within_1ms = server_p99_bound_ms(before, after)
    figures = {
        "customers": customers, "calls": calls, "workers": workers, "snapshot_s": round(snapshot_s, 3),
        "snapshot_1m_s": round(snapshot_s * 1_000_000 / customers, 3),
        "get_priority_client_p50_ms": round(client["p50"], 3), "get_priority_client_p90_ms": round(client["p90"], 3),
        "get_priority_client_p99_ms": round(client["p99"], 3), "get_priority_server_p99_ms": server_p99,
        "get_priority_server_share_within_1ms": round(within_1ms, 4),
    }
    if customers == 10_000_000:
        figures["snapshot_10m_s"] = figures["snapshot_s"]
    if server_pid is not None:
        memory = snapshot_memory(worker_pids(server_pid))
        figures["snapshot_memory"] = memory
        figures["snapshot_mapped_mib"] = memory["snapshot_mib"]
        if workers == 2:
            figures["workers2_snapshot_memory_ratio"] = memory["ratio"]
    return figures


def _port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _summed(histograms) -> dict[float, float]:
    total: dict[float, float] = {}
    for histogram in histograms:
        for bound, count in histogram.items():
            total[bound] = total.get(bound, 0.0) + count
    return total


def wait_for_snapshot(stub: pb_grpc.HierarchyServiceStub, run: str, timeout: float = 600) -> float:
    """Seconds until the hierarchy service serves ``run``."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10).run == run:
            return time.perf_counter() - started
        time.sleep(0.01)
    raise SystemExit(f"the hierarchy service did not load {run} within {timeout:.0f} s")


def latency_buckets(metrics_port: int, method: str = GET_PRIORITY) -> dict[float, float]:
    """Cumulative counts of ``method`` (default GetPriority) per histogram bound (seconds), read from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("cvh_rpc_latency_seconds_bucket") and f'method="{method}"' in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def server_p99_bound_ms(before: dict[float, float], after: dict[float, float]) -> tuple[float, float]:
    """Upper bound of the in-server p99 (the histogram bucket holding it) and the share within 1 ms."""
    bounds = sorted(after)
    counts = np.array([after[b] - before.get(b, 0.0) for b in bounds])
    total = counts[-1]
    p99 = next(b for b, c in zip(bounds, counts) if c >= 0.99 * total)
    within_1ms = counts[bounds.index(0.001)] / total if 0.001 in bounds else float("nan")
    return p99 * 1000, float(within_1ms)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hierarchy", description=__doc__.split("\n\n")[0] + (
            f" Targets: snapshot of 1,000,000 customers in <= {SNAPSHOT_TARGET_1M_S:g} s; GetPriority "
            f"p99 inside the server <= {SERVER_P99_TARGET_MS:g} ms."))
    parser.add_argument("--customers", type=customer_count, default=1_000_000, metavar="N",
                        help="customers in the base: 1000000, 1m, 100k, 10m (default 1m)")
    parser.add_argument("--in-process", action="store_true",
                        help="build the snapshot from generated columns in this process (no server, import or run)")
    parser.add_argument("--calls", type=int, default=5_000, metavar="N",
                        help="timed sequential GetPriority calls (default 5,000)")
    parser.add_argument("--warmup", type=int, default=500, metavar="N", help="untimed calls first (default 500)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="server mode: cvh serve --workers N, the snapshot built once and mapped by every "
                             "worker; with 2, workers2_snapshot_memory_ratio (default 1)")
    add_common_flags(parser)
    return parser


def generated_inputs(n: int, seed: int):
    """Accounts and a run's results of ``n`` customers as Arrow and NumPy columns (no Python string per row):
    a third of them top accounts, the rest under one; ids in rank order shuffled against the accounts'."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from cvh.common.v1 import common_pb2
    from services.hierarchy import snapshot as snapshots

    rng = np.random.default_rng(seed)
    ids = pc.binary_join_element_wise("c", pc.cast(pa.array(np.arange(n)), pa.string()), "")
    tops = max(n // 3, 1)
    parent = np.concatenate([np.full(tops, -1), rng.integers(0, tops, n - tops)])
    parent_ids = pc.fill_null(ids.take(pa.array(parent, mask=parent < 0)), "")
    owners = pa.array([f"owner{k}@example.com" for k in range(max(n // 500, 1))]).take(
        pa.array(rng.integers(0, max(n // 500, 1), n)))
    csm = pa.array([""] + [f"csm{k}@example.com" for k in range(2000)]).take(pa.array(rng.integers(0, 2001, n)))
    accounts = snapshots.AccountBase(ids, parent_ids, rng.integers(1, 8, n).astype(np.uint8), owners,
                                     rng.random((n, 2)) * 1e5, {"customer_success_manager": csm},
                                     rng.integers(0, 6, n).astype(np.uint8))
    order = rng.permutation(n)
    composite = np.sort(rng.random(n) * 100)[::-1].copy()
    tiers = [common_pb2.TierRef(tier_id=t, level=i + 1, display_name=t.title())
             for i, t in enumerate(["strategic", "key", "growth", "core", "standard"])]
    levels = np.minimum(np.arange(n) * 5 // n + 1, 5).astype(np.int32)
    results = snapshots.RunResults("runs/1", 0, tiers, [1, 2, 3, 4], ids.take(pa.array(order)), rng.random((n, 4)),
                                   composite, levels, np.arange(1, n + 1), np.linspace(100, 0, n),
                                   levels, rng.integers(0, 2, n).astype(np.int8))
    return accounts, results


def in_process(customers: int, calls: int, seed: int, say) -> dict:
    """The snapshot of ``customers`` built in this process from generated columns: seconds, resident memory
    added, and the GetPriority answer's latency over it."""
    from services.hierarchy import snapshot as snapshots
    from services.hierarchy.policy import default_policy
    from services.hierarchy.servicer import People, _priority

    snapshots.warm_up()
    _priority(snapshots.empty_snapshot(), default_policy(), "warm", People())
    _trim()
    before = memory_kib()  # before the inputs: what the snapshot holds after they are dropped, it added
    accounts, results = generated_inputs(customers, seed)
    say(f"building the snapshot of {customers:,} customers in process")
    started, cpu = time.perf_counter(), time.process_time()
    snap = snapshots.build(results, accounts, 3, 1)
    _ = snap.rank_order, snap.effective_cells  # derived once per snapshot
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    del accounts, results
    _trim()
    after = memory_kib()
    policy, rng = default_policy(), np.random.default_rng(seed + 3)
    rows = rng.integers(0, customers, calls + 200)
    wanted = [snap.customer_id(r) for r in rows.tolist()]
    latency = np.empty(calls)
    for k, wanted_id in enumerate(wanted):
        begun = time.perf_counter()
        answer = _priority(snap, policy, wanted_id, People())
        if k >= 200:
            latency[k - 200] = time.perf_counter() - begun
    assert answer.customer == f"customers/{wanted[-1]}"
    p50, p99 = np.percentile(latency, [50, 99]) * 1000
    return {"customers": customers, "snapshot_s": round(seconds, 3), "snapshot_cpu_s": round(cpu, 3),
            "snapshot_1m_s": round(seconds * 1_000_000 / customers, 3),
            "snapshot_rss_mib": round((after["rss"] - before["rss"]) / 1024, 1),
            "snapshot_pss_mib": round((after["pss"] - before["pss"]) / 1024, 1),
            "get_priority_in_process_p50_ms": round(float(p50), 4),
            "get_priority_in_process_p99_ms": round(float(p99), 4)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show = not args.no_progress
    if args.in_process:
        figures = in_process(args.customers, args.calls, args.seed,
                             (lambda text: print(text, file=sys.stderr, flush=True)) if show else (lambda text: None))
        key = "snapshot_10m_s" if args.customers == 10_000_000 else "snapshot_s"
        figures[key] = figures["snapshot_s"]
        print(f"\nHierarchy snapshot built in process: {args.customers:,} customers (generated columns)")
        print(f"build                      {figures['snapshot_s']:8.2f} s  (CPU {figures['snapshot_cpu_s']:.2f} s; "
              f"per 1M {figures['snapshot_1m_s']:.2f} s)")
        print(f"resident memory added      {figures['snapshot_rss_mib']:8.1f} MiB RSS, "
              f"{figures['snapshot_pss_mib']:.1f} MiB PSS")
        print(f"GetPriority answer p50/p99 {figures['get_priority_in_process_p50_ms']:.3f} / "
              f"{figures['get_priority_in_process_p99_ms']:.3f} ms (servicer._priority, {args.calls:,} calls)")
        if args.json:
            print(json.dumps(figures, sort_keys=True))
        return 0
    # The base has no value hierarchy: use_case_adoption (written by the adoption service) is left out.
    signal_names = tuple(n for n in scoring_engine.default_model().signal_names if n != "use_case_adoption")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cvh-bench-hierarchy-")))
        scoring_engine.warm_up()  # fills the kernel cache the server loads
        metrics_port = free_port()
        while any(_port_taken(metrics_port + i) for i in range(1, args.workers)):
            metrics_port = free_port()
        server = ServerProcess(workdir, services=(), health_services=(REGISTRY_SERVICE, SCORING_SERVICE,
                                                                       HIERARCHY_SERVICE),
                               extra_args=("--metrics-port", str(metrics_port), "--workers", str(args.workers)))
        stack.callback(server.stop)
        say(f"server: cvh serve --workers {args.workers} on {server.target}; generating {args.customers:,} customers")
        base = generate_base(args.customers, args.seed, signal_names)
        batches = serialized_column_batches(base, args.batch_size, Progress("serialize", show))
        server.wait_serving()
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            imported = timed_import(channel, batches, args.customers, args.batch_size, server, Progress("import", show))
            check_import(imported, args.customers)
            del batches, base
            run = timed_run(scoring_service_pb2_grpc.ScoringServiceStub(channel), server,
                            Progress("run (percent x 10)", show)).run
        say(f"run: {run.name} completed; waiting for the hierarchy snapshot")
        figures = measure_serving(server.target, run.name, args.customers, args.calls, args.warmup, args.seed,
                                  [metrics_port + i for i in range(args.workers)], server.pid, args.workers, show)
    snapshot_s, snapshot_1m = figures["snapshot_s"], figures["snapshot_1m_s"]
    server_p99, within_1ms = figures["get_priority_server_p99_ms"], figures["get_priority_server_share_within_1ms"]
    figures["snapshot_meets_target"] = snapshot_1m <= SNAPSHOT_TARGET_1M_S
    figures["server_p99_meets_target"] = server_p99 <= SERVER_P99_TARGET_MS
    print(f"\nHierarchy benchmark: {args.customers:,} customers, {args.calls:,} sequential GetPriority calls, "
          f"all services in one server subprocess ({args.workers} worker{'s' * (args.workers > 1)}), SQLite")
    print(f"snapshot loaded after the run        {snapshot_s:8.2f} s   (per 1M: {snapshot_1m:.2f} s; "
          f"target <= {SNAPSHOT_TARGET_1M_S:g} s{'; every worker' if args.workers > 1 else ''})")
    print(f"GetPriority in the server, p99        <= {server_p99:5.2f} ms  (histogram bucket; "
          f"{within_1ms:.1%} within 1 ms; target <= {SERVER_P99_TARGET_MS:g} ms)")
    print(f"GetPriority at the client p50/p90/p99 {figures['get_priority_client_p50_ms']:6.3f} / "
          f"{figures['get_priority_client_p90_ms']:.3f} / {figures['get_priority_client_p99_ms']:.3f} ms")
    memory = figures["snapshot_memory"]
    if memory["snapshot_mib"]:
        shares = ", ".join(f"{w['pss_kib'] / 1024:.0f}" for w in memory["workers"])
        print(f"snapshot mapped from files           {memory['snapshot_mib']:8.1f} MiB resident in one worker; "
              f"PSS per worker {shares} MiB; ratio {memory['ratio']:.3f}"
              f"{' (workers2_snapshot_memory_ratio, target <= 1.2)' if args.workers == 2 else ''}")
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
