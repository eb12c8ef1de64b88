"""Benchmark of the hierarchy service: snapshot load after a run, and GetPriority latency.

Starts `cvh serve` (all three services) in a subprocess on a fresh SQLite file, imports N
customers (not timed), runs the default model, then times how long the hierarchy service
takes from the run's completion to serving the new snapshot (StreamRunResults + registry
export + build), and the latency of sequential GetPriority calls: over loopback at the
client, and inside the server from its Prometheus latency histogram.

    python -m benchmarks.hierarchy [--customers N] [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

import scoring_engine
from benchmarks.registry import (CHANNEL_OPTIONS, SERVICE as REGISTRY_SERVICE, Progress, add_common_flags,
                                 check_import, customer_id, generate_base, serialized_column_batches,
                                 timed_import)
from clients.server_process import ServerProcess, free_port
from benchmarks.runs import latencies, percentiles_ms, timed_run
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.scoring.v1 import scoring_service_pb2_grpc

SCORING_SERVICE = "cvh.scoring.v1.ScoringService"
HIERARCHY_SERVICE = "cvh.hierarchy.v1.HierarchyService"
GET_PRIORITY = "/cvh.hierarchy.v1.HierarchyService/GetPriority"
SNAPSHOT_TARGET_1M_S = 5.0
SERVER_P99_TARGET_MS = 1.0


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
    parser.add_argument("--customers", type=int, default=1_000_000, metavar="N",
                        help="customers in the base (default 1,000,000)")
    parser.add_argument("--calls", type=int, default=5_000, metavar="N",
                        help="timed sequential GetPriority calls (default 5,000)")
    parser.add_argument("--warmup", type=int, default=500, metavar="N", help="untimed calls first (default 500)")
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
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cvh-bench-hierarchy-")))
        scoring_engine.warm_up()  # fills the kernel cache the server loads
        metrics_port = free_port()
        server = ServerProcess(workdir, services=(), health_services=(REGISTRY_SERVICE, SCORING_SERVICE,
                                                                       HIERARCHY_SERVICE),
                               extra_args=("--metrics-port", str(metrics_port)))
        stack.callback(server.stop)
        say(f"server: cvh serve on {server.target}; generating {args.customers:,} customers")
        base = generate_base(args.customers, args.seed, signal_names)
        batches = serialized_column_batches(base, args.batch_size, Progress("serialize", show))
        server.wait_serving()
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            imported = timed_import(channel, batches, args.customers, args.batch_size, server, Progress("import", show))
            check_import(imported, args.customers)
            del batches
            hierarchy = pb_grpc.HierarchyServiceStub(channel)
            run = timed_run(scoring_service_pb2_grpc.ScoringServiceStub(channel), server,
                            Progress("run (percent x 10)", show)).run
            say(f"run: {run.name} completed; waiting for the hierarchy snapshot")
            snapshot_s = wait_for_snapshot(hierarchy, run.name)
            say(f"snapshot: {snapshot_s:.2f} s after the run completed")

            rows = np.random.default_rng(args.seed + 3).integers(0, args.customers, size=args.warmup + args.calls)
            requests = [pb.GetPriorityRequest(customer=f"customers/{customer_id(i)}") for i in rows.tolist()]
            for request in requests[:args.warmup]:
                hierarchy.GetPriority(request, timeout=30)
            before = latency_buckets(metrics_port)
            seconds, answers = latencies(hierarchy.GetPriority, requests[args.warmup:], 0,
                                         Progress("GetPriority", show))
            after = latency_buckets(metrics_port)
        if not all(a.scored and a.run == run.name for a in answers):
            raise SystemExit("some GetPriority answers were not scored from the run")
    client = percentiles_ms(seconds)
    server_p99, within_1ms = server_p99_bound_ms(before, after)
    snapshot_1m = snapshot_s * 1_000_000 / args.customers
    figures = {
        "customers": args.customers, "calls": args.calls, "snapshot_s": round(snapshot_s, 3),
        "snapshot_1m_s": round(snapshot_1m, 3), "get_priority_client_p50_ms": round(client["p50"], 3),
        "get_priority_client_p90_ms": round(client["p90"], 3), "get_priority_client_p99_ms": round(client["p99"], 3),
        "get_priority_server_p99_ms": server_p99, "get_priority_server_share_within_1ms": round(within_1ms, 4),
        "snapshot_meets_target": snapshot_1m <= SNAPSHOT_TARGET_1M_S,
        "server_p99_meets_target": server_p99 <= SERVER_P99_TARGET_MS,
    }
    print(f"\nHierarchy benchmark: {args.customers:,} customers, {args.calls:,} sequential GetPriority calls, "
          "all services in one server subprocess, SQLite")
    print(f"snapshot loaded after the run        {snapshot_s:8.2f} s   (per 1M: {snapshot_1m:.2f} s; "
          f"target <= {SNAPSHOT_TARGET_1M_S:g} s)")
    print(f"GetPriority in the server, p99        <= {server_p99:5.2f} ms  (histogram bucket; "
          f"{within_1ms:.1%} within 1 ms; target <= {SERVER_P99_TARGET_MS:g} ms)")
    print(f"GetPriority at the client p50/p90/p99 {client['p50']:6.3f} / {client['p90']:.3f} / {client['p99']:.3f} ms")
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
