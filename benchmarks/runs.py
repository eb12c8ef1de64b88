"""Scoring benchmark: a complete scoring run over the whole base, and online ScoreCustomer latency.

Run as ``python -m benchmarks.runs`` (``--help`` for the flags). It starts
``cvh serve registry scoring`` in a subprocess on a fresh SQLite file in a
temporary directory, or with ``--database-url postgresql://...`` on a new
database of that PostgreSQL server, dropped at the end (the server in its own process, as in production; the
scoring service reaches the registry through the same port), waits for the
gRPC health check to answer SERVING for both services, and then:

0. compiles (or loads) the scoring engine's Numba kernels once in this
   process, so their on-disk cache is current: the server then loads the
   cache instead of compiling, as a deployed server whose package was warmed
   at install would (``--cold`` skips this and measures whatever the cache
   holds, e.g. a compile after the kernels' source changed);
1. generates N customers carrying the 16 signals of the default value model
   (skewed, realistic values; see benchmarks.registry.generate_base) and
   imports them through one ImportCustomers stream of packed CustomerColumns
   messages. None of this is part of the timed run;
2. times a complete scoring run: StartScoringRun (model "models/default") and
   WatchScoringRun until the run ends, i.e. registry export, fit, score, rank
   and storing every customer's result. The finished ScoringRun gives the
   server's own split (export_seconds, scoring_seconds, store_seconds). The
   run must be COMPLETED with tier counts summing to N;
3. measures ScoreCustomer latency over loopback: a warm-up, then sequential
   unary calls on one channel for random existing customers (each call reads
   the customer from the registry and scores it with the run's fitted
   statistics); p50 / p90 / p99 in milliseconds. ScoreSignals (what-if, the
   same customers' signals inline, no registry read) is measured likewise, and
   a sample of customers is checked to score the same both ways.

With ``--runs K`` (K > 1) further runs follow the first one, each against the
previous completed run (reading its tiers for hysteresis), as every run but a
model's first does; the headline figures are the first run's.

The server's peak resident memory is reported for the import and for each
run (VmHWM from /proc/PID/status, reset to the present size before each
stage through /proc/PID/clear_refs; where the kernel refuses the reset, the
figure is the peak since the server started and the report says so), and the
benchmark process's own peak (it holds the generated base and the serialized
import messages).

Targets (issue 4, on the 2-core reference machine): a run over 1,000,000
customers x 16 signals in 15 s or less; ScoreCustomer median 2 ms or less.
Issue 20: a run over 10,000,000 customers in 60 s or less (``--customers
10m``). With ``--json`` the last line printed is one JSON object with the
figures (``run_1m_s`` and ``run_10m_s`` are the run time scaled linearly to
1,000,000 and 10,000,000 customers: measure at that size for the real one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

import scoring_engine
from benchmarks.registry import (CHANNEL_OPTIONS, MIB, SERVICE as REGISTRY_SERVICE, PeakMemory, Progress,
                                 add_common_flags, add_database_flag, check_import, customer_id, database_bytes,
                                 fresh_database, generate_base, own_peak_mib, serialized_column_batches, timed_import)
from clients.commands.common import count
from clients.server_process import ServerProcess
from cvh.scoring.v1 import scoring_service_pb2, scoring_service_pb2_grpc

SCORING_SERVICE = scoring_service_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name
RUN_TARGET_1M_S = 15.0
RUN_TARGET_10M_S = 60.0
SCORE_CUSTOMER_TARGET_P50_MS = 2.0
TERMINAL = {scoring_service_pb2.RUN_STATE_COMPLETED, scoring_service_pb2.RUN_STATE_FAILED,
            scoring_service_pb2.RUN_STATE_CANCELLED}


# -- the timed run --------------------------------------------------------------------------------------


@dataclass
class RunResult:
    seconds: float  # client wall clock: StartScoringRun sent .. the watch stream's final message received
    run: scoring_service_pb2.ScoringRun  # the final state
    updates: int  # messages seen on the watch stream
    server_cpu_s: float | None
    server_peak_mib: float | None = None  # the server's peak resident memory during the run


def timed_run(stub: scoring_service_pb2_grpc.ScoringServiceStub, server, progress: Progress,
              memory: PeakMemory | None = None) -> RunResult:
    if memory:
        memory.reset()
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    run = stub.StartScoringRun(scoring_service_pb2.StartScoringRunRequest(), timeout=60)
    updates = 0
    if run.state not in TERMINAL:
        for update in stub.WatchScoringRun(scoring_service_pb2.WatchScoringRunRequest(name=run.name)):
            run = update
            updates += 1
            if run.customers_total:
                progress.update(round(run.percent_done * 10), 1000)
            if run.state in TERMINAL:
                break
    seconds = time.perf_counter() - started
    cpu_after = server.cpu_seconds()
    progress.done()
    return RunResult(seconds, run, updates, None if cpu_before is None else cpu_after - cpu_before,
                     memory.peak_mib() if memory else None)


def check_run(result: RunResult, customers: int) -> list[str]:
    """Problems with the finished run (empty when it completed over every customer)."""
    run = result.run
    problems = []
    if run.state != scoring_service_pb2.RUN_STATE_COMPLETED:
        return [f"{run.name} ended {scoring_service_pb2.RunState.Name(run.state)}: {run.failure_reason or '?'}"]
    counted = sum(t.customers for t in run.tier_counts)
    if counted != customers:
        problems.append(f"tier counts sum to {counted:,}, not the {customers:,} customers imported")
    if run.customers_done != customers or run.customers_total != customers:
        problems.append(f"customers_done {run.customers_done:,} / customers_total {run.customers_total:,}, "
                        f"expected {customers:,}")
    return problems


# -- online latency -------------------------------------------------------------------------------------


def latencies(call, requests: list, warmup: int, progress: Progress) -> tuple[np.ndarray, list]:
    """Seconds per sequential call (after ``warmup`` untimed ones), and the answers of the timed calls."""
    for request in requests[:warmup]:
        call(request, timeout=30)
    timed = requests[warmup:]
    seconds = np.empty(len(timed))
    answers = []
    clock = time.perf_counter
    for k, request in enumerate(timed):
        started = clock()
        answer = call(request, timeout=30)
        seconds[k] = clock() - started
        answers.append(answer)
        progress.update(k + 1, len(timed))
    progress.done()
    return seconds, answers


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99]) * 1000
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(seconds.mean() * 1000),
            "max": float(seconds.max() * 1000)}


def check_online(base, rows: np.ndarray, customer_answers: list, signal_answers: list,
                 run_name: str) -> list[str]:
    """ScoreCustomer (registry read) and ScoreSignals (inline) must agree for the same customers."""
    problems = []
    for row, by_id, inline in zip(rows.tolist(), customer_answers, signal_answers):
        want = f"customers/{customer_id(row)}"
        if by_id.customer != want or by_id.run != run_name:
            problems.append(f"ScoreCustomer({want}) answered customer {by_id.customer!r}, run {by_id.run!r}")
        elif not (by_id.HasField("composite") and 0 <= by_id.composite <= 100):
            problems.append(f"ScoreCustomer({want}) has no composite in 0..100")
        elif abs(by_id.composite - inline.composite) > 1e-9 or by_id.tier.level != inline.tier.level:
            problems.append(f"{want}: ScoreCustomer composite {by_id.composite!r} tier {by_id.tier.level}, "
                            f"ScoreSignals {inline.composite!r} tier {inline.tier.level}")
        if len(problems) > 10:
            break
    return problems


# -- report ---------------------------------------------------------------------------------------------


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _mib_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def report(args, signal_count: int, imported, run_results: list[RunResult], customer_ms: dict,
           signals_ms: dict | None, database_bytes: int | None, warm_up_s: float | None,
           memory: dict | None = None) -> dict:
    """``memory``: import_server_peak_mib, client_peak_mib and peak_resets (PeakMemory.resets)."""
    n = args.customers
    memory = memory or {}
    database = "PostgreSQL" if args.database_url and not args.database_url.startswith("sqlite") else "SQLite"
    run_result = run_results[0]
    run = run_result.run
    scale = 1_000_000 / n
    run_1m = run_result.seconds * scale
    run_10m = run_result.seconds * 10_000_000 / n
    server_s = (run.end_time.ToNanoseconds() - run.start_time.ToNanoseconds()) / 1e9
    accounted = run.export_seconds + run.scoring_seconds + run.store_seconds
    figures = {
        "customers": n,
        "signals": signal_count,
        "run": run.name,
        "run_s": round(run_result.seconds, 3),
        "run_1m_s": round(run_1m, 3),
        "run_10m_s": round(run_10m, 3),
        "database": database.lower(),
        "run_server_s": round(server_s, 3),
        "export_seconds": round(run.export_seconds, 3),
        "scoring_seconds": round(run.scoring_seconds, 3),
        "store_seconds": round(run.store_seconds, 3),
        "other_seconds": round(run_result.seconds - accounted, 3),
        "run_customers_per_s": round(n / run_result.seconds, 1),
        "run_server_cpu_s": None if run_result.server_cpu_s is None else round(run_result.server_cpu_s, 2),
        "watch_updates": run_result.updates,
        "tier_counts": {t.tier.tier_id: t.customers for t in run.tier_counts},
        "import_s": round(imported.seconds, 3),
        "import_customers_per_s": round(n / imported.seconds, 1),
        "import_server_cpu_s": None if imported.server_cpu_s is None else round(imported.server_cpu_s, 2),
        "import_server_peak_mib": _mib(memory.get("import_server_peak_mib")),
        "run_server_peak_mib": _mib(run_result.server_peak_mib),
        "client_peak_mib": _mib(memory.get("client_peak_mib")),
        "peak_per_stage": memory.get("peak_resets", False),
        "latency_calls": args.calls,
        "score_customer_p50_ms": round(customer_ms["p50"], 3),
        "score_customer_p90_ms": round(customer_ms["p90"], 3),
        "score_customer_p99_ms": round(customer_ms["p99"], 3),
        "score_customer_mean_ms": round(customer_ms["mean"], 3),
        "score_customer_max_ms": round(customer_ms["max"], 3),
        "database_bytes": database_bytes,
        "engine_warm_up_s": None if warm_up_s is None else round(warm_up_s, 2),
        "runs": [{"run": r.run.name, "run_s": round(r.seconds, 3), "export_seconds": round(r.run.export_seconds, 3),
                  "scoring_seconds": round(r.run.scoring_seconds, 3), "store_seconds": round(r.run.store_seconds, 3),
                  "previous_run": r.run.previous_run, "server_peak_mib": _mib(r.server_peak_mib)}
                 for r in run_results],
        "run_target_1m_s": RUN_TARGET_1M_S,
        "run_target_10m_s": RUN_TARGET_10M_S,
        "run_10m_meets_target": run_10m <= RUN_TARGET_10M_S,
        "score_customer_target_p50_ms": SCORE_CUSTOMER_TARGET_P50_MS,
        "run_meets_target": run_1m <= RUN_TARGET_1M_S,
        "score_customer_meets_target": customer_ms["p50"] <= SCORE_CUSTOMER_TARGET_P50_MS,
    }
    if signals_ms is not None:
        figures.update({f"score_signals_{k}_ms": round(signals_ms[k], 3) for k in ("p50", "p90", "p99")})

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    scaled = "" if n == 1_000_000 else f" (scaled from {n:,})"
    scaled_10m = "" if n == 10_000_000 else f" (scaled from {n:,})"
    rows = [
        ("import", "seconds", f"{imported.seconds:.2f}", "", ""),
        ("import", "customers/s", f"{n / imported.seconds:,.0f}", "", ""),
        ("import", "server CPU s", "n/a" if imported.server_cpu_s is None else f"{imported.server_cpu_s:.1f}",
         "", ""),
        ("import", "server peak MiB", _mib_text(memory.get("import_server_peak_mib")), "", ""),
        ("run", "seconds", f"{run_result.seconds:.2f}", "", ""),
        ("run", f"seconds per 1M{scaled}", f"{run_1m:.2f}", f"<= {RUN_TARGET_1M_S:g}",
         verdict(figures["run_meets_target"])),
        ("run", f"seconds per 10M{scaled_10m}", f"{run_10m:.2f}", f"<= {RUN_TARGET_10M_S:g}",
         verdict(figures["run_10m_meets_target"])),
        ("run", "  export (server)", f"{run.export_seconds:.2f}", "", ""),
        ("run", "  fit, score, rank (server)", f"{run.scoring_seconds:.2f}", "", ""),
        ("run", "  store (server)", f"{run.store_seconds:.2f}", "", ""),
        ("run", "  other (start, updates, watch)", f"{run_result.seconds - accounted:.2f}", "", ""),
        ("run", "customers/s", f"{n / run_result.seconds:,.0f}", "", ""),
        ("run", "server CPU s", "n/a" if run_result.server_cpu_s is None else f"{run_result.server_cpu_s:.1f}",
         "", ""),
        ("run", "server peak MiB", _mib_text(run_result.server_peak_mib), "", ""),
    ]
    for k, later in enumerate(run_results[1:], start=2):
        r = later.run
        rows += [(f"run {k}", f"seconds (after {r.previous_run})", f"{later.seconds:.2f}", "", ""),
                 (f"run {k}", "  export / score / store",
                  f"{r.export_seconds:.2f} / {r.scoring_seconds:.2f} / {r.store_seconds:.2f}", "", ""),
                 (f"run {k}", "server peak MiB", _mib_text(later.server_peak_mib), "", "")]
    rows += [
        ("ScoreCustomer", "p50 ms", f"{customer_ms['p50']:.3f}", f"<= {SCORE_CUSTOMER_TARGET_P50_MS:g}",
         verdict(figures["score_customer_meets_target"])),
        ("ScoreCustomer", "p90 ms", f"{customer_ms['p90']:.3f}", "", ""),
        ("ScoreCustomer", "p99 ms", f"{customer_ms['p99']:.3f}", "", ""),
    ]
    if signals_ms is not None:
        rows += [("ScoreSignals", f"{k} ms", f"{signals_ms[k]:.3f}", "", "") for k in ("p50", "p90", "p99")]
    rows += [("client", "peak MiB (whole benchmark)", _mib_text(memory.get("client_peak_mib")), "", "")]
    print()
    print(f"Scoring benchmark: {n:,} customers x {signal_count} signals, model models/default, {database}, "
          f"registry and scoring in one server subprocess, {os.cpu_count()} CPUs")
    print(("Numba kernels warmed in the benchmark process before the server started (the server loads "
           f"the cache on its first run). " if warm_up_s is not None else
           "--cold: the Numba cache was not warmed first. ") +
          f"Import through ImportCustomers took {imported.seconds:.1f} s (not part of the run). Run time is "
          "StartScoringRun until WatchScoringRun reports the end; the split is the server's own. Latency: "
          f"{args.calls:,} sequential calls on one channel after {args.warmup:,} warm-up calls, random customers. "
          + ("Server peak memory is per stage (VmHWM, reset before each stage)." if memory.get("peak_resets") else
             "Server peak memory is the high-water mark since the server started (VmHWM; this kernel refused "
             "to reset it between stages)."))
    header = ("phase", "figure", "measured", "target", "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths[:4]))
    for row in rows:
        print("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                         row[3].ljust(widths[3]), row[4]]).rstrip())
    print("tiers: " + ", ".join(f"{t.tier.tier_id} {t.customers:,} ({100 * t.customers / n:.1f} %)"
                                for t in run.tier_counts))
    if database_bytes is not None:
        print(f"{database} database after the run: {database_bytes / MIB:,.0f} MiB")
    return figures


# -- command line ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.runs",
        description="Benchmark the scoring service over real gRPC against a fresh SQLite (or PostgreSQL) "
                    "database: start "
                    "`cvh serve registry scoring` in a subprocess, import N customers with the 16 signals of "
                    "the default model (not timed), time one complete scoring run (StartScoringRun + "
                    "WatchScoringRun until it ends: export, fit/score/rank, store), then measure ScoreCustomer "
                    "(and ScoreSignals) latency with sequential calls over loopback. Targets: a run over "
                    f"1,000,000 customers in <= {RUN_TARGET_1M_S:g} s; ScoreCustomer median <= "
                    f"{SCORE_CUSTOMER_TARGET_P50_MS:g} ms.")
    parser.add_argument("--customers", type=count(1), default=1_000_000, metavar="N",
                        help="customers to import and score: 20000, 500k, 10m ... (default 1m); run_1m_s and "
                             "run_10m_s scale the run time linearly to 1,000,000 and 10,000,000")
    parser.add_argument("--runs", type=int, default=1, metavar="K",
                        help="scoring runs one after the other (default 1); runs after the first apply "
                             "hysteresis against the one before. The headline figures are the first run's")
    parser.add_argument("--cold", action="store_true",
                        help="do not compile/load the scoring engine's Numba kernels in this process first "
                             "(by default it does, so the server finds an up-to-date on-disk cache)")
    parser.add_argument("--calls", type=int, default=2_000, metavar="N",
                        help="timed sequential ScoreCustomer calls, and as many ScoreSignals calls "
                             "(default 2,000)")
    parser.add_argument("--warmup", type=int, default=200, metavar="N",
                        help="untimed calls of each kind before timing (default 200)")
    parser.add_argument("--no-score-signals", action="store_true",
                        help="skip the ScoreSignals latency figure (and the ScoreCustomer/ScoreSignals check)")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="directory for the SQLite file and server log (default: a temporary directory, "
                             "removed at the end); it must not hold a cvh.db yet")
    add_database_flag(parser)
    add_common_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if args.calls < 1 or args.warmup < 0:
        raise SystemExit("--calls must be at least 1 and --warmup at least 0")
    if not 1 <= args.batch_size <= 10_000:
        raise SystemExit("--batch-size must be 1 to 10,000 (the server's limit per message)")
    show = not args.no_progress
    # The base has no value hierarchy: use_case_adoption (written by the adoption service) is left out.
    signal_names = tuple(n for n in scoring_engine.default_model().signal_names if n != "use_case_adoption")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="cvh-bench-runs-")))
        workdir.mkdir(parents=True, exist_ok=True)
        database_url = stack.enter_context(fresh_database(args.database_url))
        if database_url is None and (workdir / "cvh.db").exists():
            raise SystemExit(f"{workdir / 'cvh.db'} exists; the benchmark needs a fresh database")
        warm_up_s = None
        if not args.cold:
            say("engine: compiling or loading the Numba kernels (fills the on-disk cache the server reads)")
            warm_up_s = scoring_engine.warm_up()
            say(f"engine: {warm_up_s:.1f} s")
        server = ServerProcess(workdir, services=("registry", "scoring"),
                               health_services=(REGISTRY_SERVICE, SCORING_SERVICE), database_url=database_url)
        stack.callback(server.stop)
        memory = PeakMemory(server.pid)
        say(f"server: cvh serve registry scoring on {server.target}, pid {server.pid}, database "
            f"{server.database or database_url}")

        say(f"generating {args.customers:,} customers x {len(signal_names)} signals and serializing the import "
            "messages")
        base = generate_base(args.customers, args.seed, signal_names)
        batches = serialized_column_batches(base, args.batch_size, Progress("serialize", show))
        server.wait_serving()

        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            say(f"import: {len(batches):,} messages, {sum(map(len, batches)) / MIB:,.0f} MiB (not part of the run)")
            memory.reset()
            imported = timed_import(channel, batches, args.customers, args.batch_size, server,
                                    Progress("import", show))
            import_peak = memory.peak_mib()
            del batches
            summary = check_import(imported, args.customers)
            say(f"import: {imported.seconds:.2f} s; created {summary.created:,}; server peak "
                f"{_mib_text(import_peak)} MiB")

            stub = scoring_service_pb2_grpc.ScoringServiceStub(channel)
            run_results = []
            for k in range(args.runs):
                say(f"run {k + 1}: StartScoringRun(models/default), watching until it ends")
                run_result = timed_run(stub, server, Progress("run (percent x 10)", show), memory)
                problems = check_run(run_result, args.customers)
                if problems:
                    raise SystemExit("the run is not right:\n  " + "\n  ".join(problems) +
                                     f"\nserver log:\n{server.log_tail()}")
                run = run_result.run
                say(f"run {k + 1}: {run.name} COMPLETED in {run_result.seconds:.2f} s (export "
                    f"{run.export_seconds:.2f}, scoring {run.scoring_seconds:.2f}, store {run.store_seconds:.2f}); "
                    f"server peak {_mib_text(run_result.server_peak_mib)} MiB")
                run_results.append(run_result)

            rng = np.random.default_rng(args.seed + 2)
            rows = rng.integers(0, args.customers, size=args.warmup + args.calls)
            say(f"ScoreCustomer: {args.warmup:,} warm-up + {args.calls:,} timed sequential calls")
            customer_s, customer_answers = latencies(
                stub.ScoreCustomer, [scoring_service_pb2.ScoreCustomerRequest(customer=f"customers/{customer_id(i)}")
                                     for i in rows.tolist()],
                args.warmup, Progress("ScoreCustomer", show))
            signals_ms = None
            if not args.no_score_signals:
                say(f"ScoreSignals: {args.warmup:,} warm-up + {args.calls:,} timed sequential calls")
                signal_s, signal_answers = latencies(
                    stub.ScoreSignals, [scoring_service_pb2.ScoreSignalsRequest(
                        signals=dict(zip(signal_names, base.signals[i].tolist()))) for i in rows.tolist()],
                    args.warmup, Progress("ScoreSignals", show))
                signals_ms = percentiles_ms(signal_s)
                problems = check_online(base, rows[args.warmup:], customer_answers, signal_answers, run.name)
                if problems:
                    raise SystemExit("ScoreCustomer and ScoreSignals disagree:\n  " + "\n  ".join(problems))
                say(f"checked: ScoreCustomer and ScoreSignals agree on all {args.calls:,} customers")
        figures = report(args, len(signal_names), imported, run_results, percentiles_ms(customer_s), signals_ms,
                         database_bytes(server, database_url), warm_up_s,
                         {"import_server_peak_mib": import_peak, "client_peak_mib": own_peak_mib(),
                          "peak_resets": memory.resets})
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
