"""Benchmark of the adoption service: telemetry in, achievement of the base, one customer's adoption.

Starts `cvh serve registry adoption` in a subprocess on a fresh SQLite file, registers the customers (not
timed), stores a value hierarchy of 200 procedures over 100 event names, and measures:

* ingest: RecordTelemetry of --events events (skewed: event k fires about 1/k^1.2 as often as the first)
  for --customers customers over 30 days, messages of 100,000 events built before the clock starts;
* evaluation after the ingest and re-derivation: a changed value hierarchy stored and activated, until the
  server's evaluation of the base against it ends (GetNodeAdoption); the first loads the aggregates into the
  server's memory, the second re-derives from them; and the server's peak resident memory;
* GetCustomerAdoption: sequential calls, at the client and inside the server (its latency histogram);
* event to achieved: a message completing a procedure of a customer without telemetry, until
  GetCustomerAdoption shows it achieved;
* evaluation of --evaluate-customers customers with 50 daily rows each over 90 days, as the service runs it
  (blocks of its size, rows unpacked from held keys; the rows are generated per block, not timed): wall and
  CPU seconds, the held rows' bytes and the most one block adds.

    python -m benchmarks.adoption [--customers N] [--events N] [--evaluate-customers N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.hierarchy import latency_buckets, server_p99_bound_ms
from benchmarks.registry import CHANNEL_OPTIONS, Progress
from benchmarks.runs import latencies, percentiles_ms
from clients.server_process import ServerProcess, free_port
from cvh.adoption.v1 import adoption_service_pb2 as pb
from cvh.adoption.v1 import adoption_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from scoring_engine import adoption as engine
from wire.columns import customer_columns, telemetry_chunk

ADOPTION_SERVICE = "cvh.adoption.v1.AdoptionService"
GET_CUSTOMER_ADOPTION = "/cvh.adoption.v1.AdoptionService/GetCustomerAdoption"
DAY_US = 86_400 * 1_000_000
N_EVENT_NAMES = 100
MESSAGE_EVENTS = 100_000
TARGETS = {"ingest_events_per_s": 1_000_000, "evaluate_1m_s": 3.0, "rederive_after_catalog_change_s": 2.0,
           "get_customer_adoption_p99_ms": 5.0, "event_to_achieved_s": 2.0}


def event_name(k: int) -> str:
    return f"feature-{k:03d}.used"


def value_map(min_count: int = 3) -> pb.ValueMapVersion:
    """5 strategies x 2 initiatives x 4 use cases x 5 procedures = 200 procedures over 100 event names (a
    catalog change: another ``min_count``)."""
    N, Rule = pb.ValueNode, pb.ProcedureRule
    nodes, k = [], 0
    for s in range(5):
        nodes.append(N(key=f"s{s}", level=1, display_name=f"Strategy {s}", owning_function=1))
        for i in range(2):
            nodes.append(N(key=f"s{s}-i{i}", level=2, display_name=f"Initiative {s}.{i}", parent_key=f"s{s}",
                           owning_function=2, children_rule=pb.ChildrenRule(kind=2, min_children=1)))
            for u in range(4):
                use_case = f"s{s}-i{i}-u{u}"
                nodes.append(N(key=use_case, level=3, display_name=f"Use case {use_case}",
                               parent_key=f"s{s}-i{i}", owning_function=3,
                               children_rule=pb.ChildrenRule(kind=3, min_weighted_share=0.6)))
                for p in range(5):
                    names = [event_name(k % N_EVENT_NAMES)] + ([event_name((k * 7 + 3) % N_EVENT_NAMES)] if k % 3
                                                               else [])
                    nodes.append(N(key=f"{use_case}-p{p}", level=4, display_name=f"Procedure {k}",
                                   parent_key=use_case, owning_function=5, procedure_rule=Rule(
                                       event_names=names, min_count=min_count, min_active_days=2, window_days=30,
                                       min_distinct_users=2 if k % 10 == 0 else 0)))
                    k += 1
    return pb.ValueMapVersion(change_note="benchmark", nodes=nodes)


def customer_id(i: int) -> str:
    return f"cust-{i:07d}"


def telemetry_messages(customers: int, events: int, seed: int, now_us: int, progress: Progress) -> list[bytes]:
    """Serialized RecordTelemetry messages of skewed events over the last 30 days."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, N_EVENT_NAMES + 1) ** 1.2
    weights /= weights.sum()
    names = [event_name(k) for k in range(N_EVENT_NAMES)]
    users = [f"user-{u}" for u in range(20)]
    messages = []
    for start in range(0, events, MESSAGE_EVENTS):
        size = min(MESSAGE_EVENTS, events - start)
        rows = rng.integers(0, customers, size)
        present, positions = np.unique(rows, return_inverse=True)
        message = telemetry_chunk([customer_id(i) for i in present.tolist()], names, positions,
                                  rng.choice(N_EVENT_NAMES, size, p=weights),
                                  now_us - rng.integers(0, 30 * DAY_US, size), user_ids=users,
                                  user_indices=rng.integers(-1, len(users), size), batch_id=f"bench-{start}")
        messages.append(message.SerializeToString())
        progress.update(start + size, events)
    progress.done()
    return messages


def register(channel: grpc.Channel, customers: int) -> None:
    registry = rpb_grpc.RegistryServiceStub(channel)
    requests = (rpb.ImportCustomersRequest(columns=customer_columns([customer_id(i) for i in range(
        start, min(start + 10_000, customers))])) for start in range(0, customers, 10_000))
    answer = registry.ImportCustomers(requests, timeout=600)
    if answer.created + answer.updated != customers:
        raise SystemExit(f"registering the customers failed: {answer}")


def evaluate_kernel(customers: int, seed: int, progress: Progress) -> tuple[float, float, int, int]:
    """``customers`` with 50 daily rows each over 90 days evaluated as the service does (blocks of its size,
    rows unpacked from the held keys, result arrays re-used): wall and CPU seconds, the held rows' bytes and the
    most one block adds. The held rows are generated per block (untimed) rather than all kept."""
    from services.adoption import achievement, evaluation, held

    version = value_map()
    plan = achievement.compile_plan(version, {event_name(k): k for k in range(N_EVENT_NAMES)})
    rng = np.random.default_rng(seed)
    today, block, seconds, cpu, held_bytes, block_bytes = 20_000, evaluation.BLOCK_CUSTOMERS, 0.0, 0.0, 0, 0
    result = None
    for start in range(0, customers, block):
        n = min(block, customers - start)
        rows = n * 50
        keys = np.sort(held.pack_keys(np.repeat(np.arange(start, start + n), 50),
                                      rng.integers(0, N_EVENT_NAMES, rows), today - rng.integers(0, 90, rows)))
        counts = rng.integers(1, 5, rows)
        held_bytes += keys.nbytes + counts.nbytes
        started, cpu_started = time.perf_counter(), time.process_time()
        row_customers, events, days = held.unpack_keys(keys)
        result = engine.evaluate(plan, today, n, row_customers - start, events, days, counts, out=result)
        seconds += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        block_bytes = max(block_bytes, 4 * keys.nbytes + sum(
            getattr(result, f).nbytes for f in ("achieved", "progress", "last_day", "counts", "days", "users")))
        progress.update(start + n, customers)
    progress.done()
    return seconds, cpu, held_bytes, block_bytes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adoption", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000, metavar="N",
                        help="registered customers sending telemetry (default 100,000)")
    parser.add_argument("--events", type=int, default=20_000_000, metavar="N",
                        help="telemetry events recorded (default 20,000,000)")
    parser.add_argument("--evaluate-customers", type=int, default=1_000_000, metavar="N",
                        help="customers of the kernel-only evaluation (default 1,000,000)")
    parser.add_argument("--calls", type=int, default=1_000, metavar="N",
                        help="timed sequential GetCustomerAdoption calls (default 1,000)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    parser.add_argument("--no-progress", action="store_true", help="no progress reports on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show = not args.no_progress

    def say(text: str) -> None:
        if show:
            print(text, file=sys.stderr, flush=True)

    engine.warm_up()  # fills the kernel cache the server loads
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cvh-bench-adoption-")))
        metrics_port = free_port()
        server = ServerProcess(workdir, services=("registry", "adoption"), health_services=(ADOPTION_SERVICE,),
                               extra_args=("--metrics-port", str(metrics_port)))
        stack.callback(server.stop)
        now = time.time_ns() // 1000
        say(f"server: cvh serve registry adoption on {server.target}; building {args.events:,} events")
        messages = telemetry_messages(args.customers, args.events, args.seed, now, Progress("messages", show))
        server.wait_serving()
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            register(channel, args.customers + 1)  # the last one sends no telemetry: the event-to-achieved probe
            adoption = pb_grpc.AdoptionServiceStub(channel)
            adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map()))
            send = channel.stream_unary("/cvh.adoption.v1.AdoptionService/RecordTelemetry",
                                        request_serializer=lambda m: m,
                                        response_deserializer=pb.RecordTelemetryResponse.FromString)
            cpu_before = server.cpu_seconds()
            started = time.perf_counter()
            answer = send(iter(messages), timeout=3600)
            ingest_s = time.perf_counter() - started
            ingest_cpu = (server.cpu_seconds() or 0) - (cpu_before or 0)
            del messages
            if answer.events_kept != args.events:
                raise SystemExit(f"only {answer.events_kept:,} of {args.events:,} events were kept: {answer}")
            say(f"ingest: {args.events:,} events in {ingest_s:.2f} s ({answer.daily_rows_written:,} daily rows)")

            # A catalog change twice: the first evaluation after the ingest loads the aggregates into the
            # server's memory (cold); the second re-derives from them (what a catalog change costs).
            wait_idle(server)
            cold_s = catalog_change(adoption, value_map(min_count=4))
            wait_idle(server)  # the signals of the changes written
            rederive_s = catalog_change(adoption, value_map(min_count=3))
            wait_idle(server)
            server_peak_mib = peak_rss_mib(server.pid)
            say(f"evaluation after the ingest {cold_s:.2f} s; re-derivation after a catalog change {rederive_s:.2f} s")

            requests = [pb.GetCustomerAdoptionRequest(customer=customer_id(i)) for i in
                        np.random.default_rng(args.seed).integers(0, args.customers, args.calls + 50).tolist()]
            latencies(adoption.GetCustomerAdoption, requests[:50], 0, Progress("warm-up", False))
            before = latency_buckets_for(metrics_port)
            seconds, _ = latencies(adoption.GetCustomerAdoption, requests[50:], 0, Progress("GetCustomerAdoption",
                                                                                             show))
            server_p99, _ = server_p99_bound_ms(before, latency_buckets_for(metrics_port))

            probe = customer_id(args.customers)
            rule = value_map().nodes[4].procedure_rule  # s0-i0-u0-p1: 3 events on 2 days, no users needed
            completing = telemetry_chunk([probe], [rule.event_names[0]], [0, 0, 0], [0, 0, 0],
                                         [now, now, now - DAY_US])
            started = time.perf_counter()
            adoption.RecordTelemetry(iter([completing]), timeout=60)
            while not next(n for n in adoption.GetCustomerAdoption(
                    pb.GetCustomerAdoptionRequest(customer=probe)).nodes if n.key == "s0-i0-u0-p1").achieved:
                if time.perf_counter() - started > 60:
                    raise SystemExit("the completing event did not show as achieved within 60 s")
            event_to_achieved_s = time.perf_counter() - started

    say(f"kernel: evaluating {args.evaluate_customers:,} customers x 50 daily rows")
    kernel_s, kernel_cpu, held_bytes, block_bytes = evaluate_kernel(args.evaluate_customers, args.seed,
                                                                    Progress("evaluate", show))
    client = percentiles_ms(seconds)
    figures = {
        "customers": args.customers, "events": args.events, "daily_rows": answer.daily_rows_written,
        "ingest_events_per_s": round(args.events / ingest_s), "ingest_server_cpu_s": round(ingest_cpu, 2),
        "rederive_after_catalog_change_s": round(rederive_s, 3), "evaluate_after_ingest_s": round(cold_s, 3),
        "server_peak_rss_mib": server_peak_mib,
        "get_customer_adoption_client_p50_ms": round(client["p50"], 3),
        "get_customer_adoption_client_p99_ms": round(client["p99"], 3),
        "get_customer_adoption_p99_ms": server_p99, "event_to_achieved_s": round(event_to_achieved_s, 3),
        "evaluate_customers": args.evaluate_customers, "evaluate_s": round(kernel_s, 3),
        "evaluate_1m_s": round(kernel_s * 1_000_000 / max(args.evaluate_customers, 1), 3),
        "evaluate_1m_cpu_s": round(kernel_cpu * 1_000_000 / max(args.evaluate_customers, 1), 3),
        "evaluate_held_mib": round(held_bytes / 2**20, 1), "evaluate_block_mib": round(block_bytes / 2**20, 1),
    }
    print(f"\nAdoption benchmark: {args.customers:,} customers, {args.events:,} events over 30 days, 200 procedures, "
          "registry + adoption in one server subprocess, SQLite")
    for name, target in TARGETS.items():
        better = "<=" if name != "ingest_events_per_s" else ">="
        print(f"  {name:34s} {figures[name]:>14,}   (target {better} {target:,})")
    print(f"  daily rows {figures['daily_rows']:,}; server CPU for the ingest {ingest_cpu:.1f} s; GetCustomerAdoption "
          f"at the client p50/p99 {client['p50']:.2f} / {client['p99']:.2f} ms; evaluation after the ingest "
          f"{cold_s:.2f} s; server peak memory {server_peak_mib} MiB")
    print(f"  evaluation of {args.evaluate_customers:,}: {kernel_cpu:.2f} s of CPU; memory: the held rows "
          f"{figures['evaluate_held_mib']} MiB + at most {figures['evaluate_block_mib']} MiB per block")
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


def catalog_change(adoption: pb_grpc.AdoptionServiceStub, version: pb.ValueMapVersion) -> float:
    """Seconds from storing (and activating) ``version`` until the server's evaluation of the base against it
    has ended (GetNodeAdoption reports it)."""
    started = time.perf_counter()
    name = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=version)).name
    while True:
        with contextlib.suppress(grpc.RpcError):  # FAILED_PRECONDITION before the first evaluation ends
            if adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="s0")).value_map_version == name:
                return time.perf_counter() - started
        if time.perf_counter() - started > 600:
            raise SystemExit(f"{name} was not evaluated within 600 s")
        time.sleep(0.01)


def wait_idle(server: ServerProcess, timeout: float = 600) -> None:
    """Until the server's background work (evaluation, signals to the registry) is done: under 5 % of a core
    used over a second."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        before = server.cpu_seconds()
        time.sleep(1.0)
        after = server.cpu_seconds()
        if before is None or after is None or after - before < 0.05:
            return


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (Linux only)."""
    with contextlib.suppress(OSError, StopIteration):
        line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
        return round(int(line.split()[1]) / 1024, 1)
    return None


def latency_buckets_for(metrics_port: int) -> dict[float, float]:
    return latency_buckets(metrics_port, GET_CUSTOMER_ADOPTION)


if __name__ == "__main__":
    sys.exit(main())
