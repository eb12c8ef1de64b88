"""Outcomes benchmark: the outcome report between two runs, a customer's history over many runs, and what storing
outcome values costs a run.

Run as ``python -m benchmarks.outcomes`` (``--help`` for the flags). It starts ``cvh serve registry scoring`` in a
subprocess on a fresh SQLite file (as benchmarks.runs does), imports N customers with the default model's 16
signals plus the outcome signals the default model's outcomes block names and the base lacks (referrals,
use_case_adoption), then:

1. ``run_1m_s`` with and without outcome values: the same data, one process, two models that differ only in the
   outcomes block (the default model, and a copy without the block); each timed as StartScoringRun until
   WatchScoringRun reports the end, ``--repeats`` times taking turns at going first (the best of each is
   reported). The block adds the outcome signals' export, values, stages and flags to the run. Both then write
   the history layout (services/scoring/history.py) just after completing: ``history_index_1m_s``, timed
   apart until ScoringRun.history_indexed, before the next run starts;
2. changes the base as a period would: 2 % of the customers churn (lifecycle stage CHURNED), 10 % lose a third
   of their revenue, 10 % grow by a half, 5 % turn detractors (NPS -40); runs the default model again and times
   ``GetOutcomeReport`` between the two default runs (the unary call over loopback, ``--report-calls`` times;
   the median is ``outcome_report_1m_s``, scaled linearly to 1,000,000 customers);
3. runs the default model until it has ``--history-runs`` completed runs (default 20) and times sequential
   ``GetCustomerHistory`` calls (last_runs = that many) for random customers: ``customer_history_20_runs_p99_ms``.

Targets (issue 17): the report <= 2 s at 1,000,000 customers; a history over 20 runs of 1,000,000 <= 10 ms at
the 99th percentile; a run with outcome values no more than 15 % above one without. With ``--json`` the last
line printed is one JSON object with the figures.
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
from google.protobuf import json_format

import scoring_engine
from benchmarks.registry import (CHANNEL_OPTIONS, SERVICE as REGISTRY_SERVICE, Progress, add_common_flags,
                                 check_import, customer_id, database_size, generate_base, serialized_column_batches,
                                 timed_import)
from benchmarks.runs import SCORING_SERVICE, TERMINAL, percentiles_ms
from clients.server_process import ServerProcess
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc
from wire import columns

REPORT_TARGET_1M_S = 2.0
HISTORY_TARGET_P99_MS = 10.0
RUN_OVERHEAD_TARGET = 0.15
EXTRA_SIGNALS = ("referrals", "use_case_adoption")
MESSAGE_ROWS = 10_000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def timed_run(stub, model: str) -> tuple[float, pb.ScoringRun, float]:
    """Seconds until the run completed, the run, and seconds more until its history layout was written (the
    next run starts only then, so that one run's layout does not slow the next one's timing)."""
    started = time.perf_counter()
    run = stub.StartScoringRun(pb.StartScoringRunRequest(model=model), timeout=60)
    for run in stub.WatchScoringRun(pb.WatchScoringRunRequest(name=run.name)):
        if run.state in TERMINAL:
            break
    seconds = time.perf_counter() - started
    if run.state != pb.RUN_STATE_COMPLETED:
        raise SystemExit(f"{run.name} of {model} ended {pb.RunState.Name(run.state)}: {run.failure_reason}")
    while not stub.GetScoringRun(pb.GetScoringRunRequest(name=run.name)).history_indexed:
        time.sleep(0.02)
    return seconds, run, time.perf_counter() - started - seconds


def split(run: pb.ScoringRun) -> dict[str, float]:
    """The server's own split of a run: export, fit/score/rank, store (seconds)."""
    return {"export": round(run.export_seconds, 2), "score": round(run.scoring_seconds, 2),
            "store": round(run.store_seconds, 2)}


def import_columns(registry, ids: list[str], names: list[str], values: np.ndarray, stages=None) -> None:
    """Updates of existing customers, MESSAGE_ROWS a message."""
    def messages():
        for start in range(0, len(ids), MESSAGE_ROWS):
            part = slice(start, start + MESSAGE_ROWS)
            yield registry_service_pb2.ImportCustomersRequest(columns=columns.customer_columns(
                ids[part], names, values[part], stages=() if stages is None else stages[part]))
    summary = registry.ImportCustomers(messages(), timeout=600)
    if summary.rejected:
        raise SystemExit(f"import rejected {summary.rejected:,} rows: {summary.errors[:1]}")


def without_outcomes(stub) -> str:
    """A copy of the default model without the outcomes block: models/no-outcomes."""
    model = json_format.MessageToDict(stub.GetModel(pb.GetModelRequest(name="default")),
                                      preserving_proto_field_name=True)
    model = {k: v for k, v in model.items() if k not in ("name", "version", "creator", "create_time", "active",
                                                         "outcomes")}
    model["model_id"] = "no-outcomes"
    stub.CreateModel(pb.CreateModelRequest(model=json_format.ParseDict(model, pb.ValueModel())))
    return "models/no-outcomes"


def change_the_base(registry, base, n: int, seed: int) -> dict[str, int]:
    """A period's changes: churn, lost and grown revenue, new detractors (counts by kind)."""
    rng = np.random.default_rng(seed + 7)
    kind = rng.choice(4 + 1, size=n, p=[0.02, 0.10, 0.10, 0.05, 0.73])  # churn, lose, grow, detract, same
    revenue = base.signals[:, base.signal_names.index("annual_revenue")].copy()
    nps = base.signals[:, base.signal_names.index("nps")].copy()
    revenue[kind == 1] *= 2 / 3
    revenue[kind == 2] *= 1.5
    nps[kind == 3] = -40.0
    stages = np.where(kind == 0, common_pb2.LIFECYCLE_STAGE_CHURNED, 0).astype(np.uint8)
    changed = np.flatnonzero(kind != 4)
    import_columns(registry, [customer_id(i) for i in changed.tolist()], ["annual_revenue", "nps"],
                   np.column_stack([revenue, nps])[changed], stages[changed])
    return {name: int((kind == k).sum()) for k, name in enumerate(("churned", "lost_revenue", "grew", "detractors"))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.outcomes",
        description="Benchmark outcome reports, customer histories and the cost of storing outcome values over "
                    "real gRPC against a fresh SQLite database (see the module's docstring). Targets: "
                    f"GetOutcomeReport <= {REPORT_TARGET_1M_S:g} s at 1,000,000 customers; GetCustomerHistory over "
                    f"20 runs p99 <= {HISTORY_TARGET_P99_MS:g} ms; a run with outcome values <= "
                    f"{100 * RUN_OVERHEAD_TARGET:g} % above one without.")
    parser.add_argument("--customers", type=int, default=1_000_000, metavar="N",
                        help="customers (default 1,000,000); the report and run times are scaled to 1,000,000")
    parser.add_argument("--repeats", type=int, default=2, metavar="K",
                        help="runs with and without the outcomes block, alternately, K of each (default 2)")
    parser.add_argument("--report-calls", type=int, default=3, metavar="K",
                        help="GetOutcomeReport calls between the two runs (default 3; the median is reported)")
    parser.add_argument("--history-runs", type=int, default=20, metavar="R",
                        help="completed runs of the default model before histories are timed (default 20)")
    parser.add_argument("--calls", type=int, default=500, metavar="N",
                        help="timed sequential GetCustomerHistory calls (default 500, after 50 untimed)")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="directory for the SQLite file and server log (default: a temporary directory)")
    add_common_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.customers < 10 or args.repeats < 1 or args.report_calls < 1 or args.calls < 1:
        raise SystemExit("--customers must be at least 10; --repeats, --report-calls and --calls at least 1")
    if not 2 <= args.history_runs <= 100:
        raise SystemExit("--history-runs must be 2 to 100")
    show = not args.no_progress
    n = args.customers
    scale = 1_000_000 / n
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="cvh-bench-outcomes-")))
        workdir.mkdir(parents=True, exist_ok=True)
        say("engine: compiling or loading the Numba kernels")
        scoring_engine.warm_up()
        server = ServerProcess(workdir, services=("registry", "scoring"),
                               health_services=(REGISTRY_SERVICE, SCORING_SERVICE))
        stack.callback(server.stop)
        # use_case_adoption, which the adoption service writes, comes with the extra signals.
        signal_names = tuple(n for n in scoring_engine.default_model().signal_names if n not in EXTRA_SIGNALS)
        say(f"generating {n:,} customers x {len(signal_names)} signals + {', '.join(EXTRA_SIGNALS)}")
        base = generate_base(n, args.seed, signal_names)
        batches = serialized_column_batches(base, args.batch_size, Progress("serialize", show))
        server.wait_serving()
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            check_import(timed_import(channel, batches, n, args.batch_size, server, Progress("import", show)), n)
            del batches
            registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
            rng = np.random.default_rng(args.seed + 3)
            extra = np.column_stack([rng.poisson(0.8, n).astype(float), np.round(rng.beta(2, 3, n), 3)])
            import_columns(registry, [customer_id(i) for i in range(n)], list(EXTRA_SIGNALS), extra)
            stub = scoring_service_pb2_grpc.ScoringServiceStub(channel)
            plain = without_outcomes(stub)

            # 1. the same run with and without outcome values, alternately.
            with_s, without_s, default_runs, splits, index_s = [], [], [], [], []
            for k in range(args.repeats):
                # Each run reads while the one before's writes are checkpointed: take turns at going first.
                first, second = (plain, "models/default") if k % 2 == 0 else ("models/default", plain)
                for model in (first, second):
                    seconds, run, indexing = timed_run(stub, model)
                    (without_s if model == plain else with_s).append(seconds)
                    if model == plain:
                        plain_run = run
                    else:
                        default_runs.append(run)
                        index_s.append(indexing)
                splits.append({"without": split(plain_run), "with": split(default_runs[-1])})
                say(f"repeat {k + 1}: without outcomes {without_s[-1]:.2f} s {splits[-1]['without']}, with "
                    f"{with_s[-1]:.2f} s {splits[-1]['with']}")

            # 2. a period's changes, a new run, the report between the last two default runs.
            changes = change_the_base(registry, base, n, args.seed)
            _, end, _ = timed_run(stub, "models/default")
            start = default_runs[-1]
            report_s = []
            for _ in range(args.report_calls):
                started = time.perf_counter()
                report = stub.GetOutcomeReport(pb.GetOutcomeReportRequest(from_run=start.name, to_run=end.name),
                                               timeout=600)
                report_s.append(time.perf_counter() - started)
            total = report.periods[0].total
            say(f"GetOutcomeReport {start.name} -> {end.name}: {np.median(report_s):.2f} s; logo retention "
                f"{total.logo_retention:.3f}, NRR {total.net_revenue_retention:.3f}, bad profit "
                f"{total.bad_profit_customers:,}")

            # 3. histories over the model's last runs.
            done = len(default_runs) + 1
            progress = Progress("runs for histories", show)
            for k in range(done, args.history_runs):
                timed_run(stub, "models/default")
                progress.update(k + 1, args.history_runs)
            progress.done()
            ids = [customer_id(i) for i in rng.integers(0, n, size=50 + args.calls).tolist()]
            requests = [pb.GetCustomerHistoryRequest(customer=c, last_runs=args.history_runs) for c in ids]
            for request in requests[:50]:
                stub.GetCustomerHistory(request, timeout=30)
            seconds = np.empty(args.calls)
            for k, request in enumerate(requests[50:]):
                started = time.perf_counter()
                answer = stub.GetCustomerHistory(request, timeout=30)
                seconds[k] = time.perf_counter() - started
            if len(answer.runs) != args.history_runs:
                raise SystemExit(f"GetCustomerHistory gave {len(answer.runs)} runs, not {args.history_runs}")
            history_ms = percentiles_ms(seconds)
            database = database_size(server.database)

    best_with, best_without = min(with_s), min(without_s)
    figures = {
        "customers": n,
        "run_with_outcomes_s": round(best_with, 3),
        "run_without_outcomes_s": round(best_without, 3),
        "run_1m_s": round(best_with * scale, 3),
        "run_1m_without_outcomes_s": round(best_without * scale, 3),
        "run_outcomes_overhead": round(best_with / best_without - 1, 4),
        "runs_with_s": [round(s, 3) for s in with_s], "runs_without_s": [round(s, 3) for s in without_s],
        "run_splits": splits,
        "history_index_s": [round(s, 3) for s in index_s],
        "history_index_1m_s": round(min(index_s) * scale, 3),
        "changes": changes,
        "outcome_report_s": round(float(np.median(report_s)), 3),
        "outcome_report_1m_s": round(float(np.median(report_s)) * scale, 3),
        "history_runs": args.history_runs,
        "customer_history_p50_ms": round(history_ms["p50"], 3),
        "customer_history_p99_ms": round(history_ms["p99"], 3),
        "customer_history_20_runs_p99_ms": round(history_ms["p99"], 3) if args.history_runs == 20 else None,
        "database_bytes": database,
        "targets": {"outcome_report_1m_s": REPORT_TARGET_1M_S, "customer_history_20_runs_p99_ms":
                    HISTORY_TARGET_P99_MS, "run_outcomes_overhead": RUN_OVERHEAD_TARGET},
    }
    rows = [
        ("run with outcome values (s per 1M)", f"{best_with * scale:.2f}", ""),
        ("run without (s per 1M)", f"{best_without * scale:.2f}", ""),
        ("  overhead", f"{100 * (best_with / best_without - 1):+.1f} %", f"<= {100 * RUN_OVERHEAD_TARGET:g} %"),
        ("history layout after the run (s per 1M)", f"{min(index_s) * scale:.2f}", ""),
        ("GetOutcomeReport (s per 1M)", f"{float(np.median(report_s)) * scale:.2f}", f"<= {REPORT_TARGET_1M_S:g}"),
        (f"GetCustomerHistory over {args.history_runs} runs p50 ms", f"{history_ms['p50']:.2f}", ""),
        (f"GetCustomerHistory over {args.history_runs} runs p99 ms", f"{history_ms['p99']:.2f}",
         f"<= {HISTORY_TARGET_P99_MS:g} (20 runs)"),
    ]
    print(f"Outcomes benchmark: {n:,} customers, SQLite, registry and scoring in one server subprocess")
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:>10}  {target}".rstrip())
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
