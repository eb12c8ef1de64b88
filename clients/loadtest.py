"""cvh loadtest: one command from an empty machine to a load report with pass/fail thresholds.

1. Starts the suite on loopback (``cvh serve --workers N`` in a subprocess, on a free port, with a fresh
   SQLite file in the results folder), or targets ``--host`` (an existing deployment: nothing is seeded).
2. Seeds a synthetic base (``clients/synthetic.py``), runs the default model and waits until the
   hierarchy serves the run.
3. Runs Locust headless (``loadtests/locustfile.py``, one Locust process per phase, in a subprocess)
   for ``--run-time`` seconds with ``--users`` users per phase: first the calibration phases (the health
   Check RPC, the cheapest call gRPC has; GetPriority alone; ScoreCustomer alone; the health Check again:
   the ceiling is the better of the two), then each scenario.
   Every phase writes Locust's CSV files and HTML report into ``--results``.
4. Prints a table per phase and RPC: requests, failures, requests per second and that rate as a
   fraction of the health-check ceiling measured by the same harness against the same server, median and
   p99. Exits 1 when a threshold fails: any failed request, a p99 above its limit, a phase below its
   minimum rate, a ratio below its minimum. ``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# The health Check is measured before and after the two RPCs alone; the ceiling is the better of the two, so
# a burst of other work on the machine during one of them does not set it.
CALIBRATION = {"health": "HealthUser", "get_priority": "GetPriorityUser", "score_customer": "ScoreCustomerUser",
               "health_end": "HealthUser"}
HEALTH_PHASES = ("health", "health_end")
SCENARIOS = {"support_tooling": "SupportToolingUser", "internal_systems": "InternalSystemsUser",
             "registry_writers": "RegistryWriterUser", "mixed": "MixedUser"}
DEFAULT_SCENARIOS = tuple(SCENARIOS)
# p99 limits in milliseconds, per RPC (--max-p99-ms RPC=MS changes one, a bare number GetPriority's, *=MS all).
# Writes wait for SQLite's one writer at a time, across worker processes too: they get more room.
DEFAULT_P99_MS = {"GetPriority": 20.0, "BatchGetPriority": 50.0, "RankCustomers": 20.0, "ScoreCustomer": 50.0,
                  "ScoreSignals": 50.0, "ScoreBatch": 100.0, "GetCustomer": 50.0, "UpdateCustomer": 500.0,
                  "RecordSignals": 500.0, "Check": 20.0}
DEFAULT_MIN_PHASE_RPS = 50.0
DEFAULT_MIN_RATIOS = {"GetPriority": 0.8, "ScoreCustomer": 0.5}
LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"


@dataclass
class RpcFigures:
    """One RPC's figures in one phase, from Locust's stats CSV."""

    requests: int
    failures: int
    rps: float
    median_ms: float
    p99_ms: float


@dataclass
class Phase:
    name: str
    user_class: str
    rpcs: dict[str, RpcFigures] = field(default_factory=dict)
    total: RpcFigures | None = None
    exit_code: int = 0


@dataclass
class Verdict:
    checks: list[str] = field(default_factory=list)    # every check made, for the report
    failed: list[str] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        self.checks.append(("pass  " if ok else "FAIL  ") + text)
        if not ok:
            self.failed.append(text)


# -- the suite under test ----------------------------------------------------------------------------------

def start_suite(folder: Path, workers: int, database_url: str | None = None):
    """``cvh serve --workers N`` (all services) on loopback, on ``database_url`` or a fresh SQLite file in
    ``folder``."""
    from clients.server_process import ServerProcess

    return ServerProcess(folder, extra_args=("--workers", str(workers)), database_url=database_url)


def seed(target: str, customers: int, seed_value: int, show_progress: bool, workers: int) -> dict:
    """Import a synthetic base, run the default model, wait until every worker's hierarchy serves it."""
    from clients import synthetic
    from clients.client import CvhClient
    from clients.output import progress
    from cvh.scoring.v1 import scoring_service_pb2 as scoring_pb

    timings = {}
    with CvhClient(target, timeout=60) as cvh:
        started = time.perf_counter()
        base = synthetic.generate_base(customers, seed=seed_value)
        with progress(customers, "seeding", unit=" customers", enabled=show_progress) as bar:
            imported = synthetic.import_base(cvh, base, on_progress=lambda done: bar.update(done - bar.n))
        timings["import_seconds"] = round(time.perf_counter() - started, 2)
        if imported.rejected:
            raise RuntimeError(f"the registry rejected {imported.rejected} synthetic customers")
        started = time.perf_counter()
        run = cvh.wait_for_run(cvh.start_run().name)
        if run.state != scoring_pb.RUN_STATE_COMPLETED:
            raise RuntimeError(f"the scoring run {run.name} ended {run.state}: {run.failure_reason}")
        timings["run_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    wait_for_snapshot_everywhere(target, run.name, workers)
    timings["snapshot_seconds"] = round(time.perf_counter() - started, 2)
    return {"run": run.name, **timings}


def wait_for_snapshot_everywhere(target: str, run: str, workers: int, timeout: float = 300) -> None:
    """Until the hierarchy serves ``run`` on every worker process. Each worker loads its own snapshot; a
    connection lands on one worker, so several separate connections (the kernel spreads them) are asked."""
    import grpc

    from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb, hierarchy_service_pb2_grpc

    connections = 1 if workers <= 1 else 16 * workers
    channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    try:
        deadline = time.monotonic() + timeout
        waiting = list(channels)
        while waiting:
            stub = hierarchy_service_pb2_grpc.HierarchyServiceStub(waiting[0])
            if stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10).run == run:
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hierarchy did not serve {run} within {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        for channel in channels:
            channel.close()


# -- Locust ------------------------------------------------------------------------------------------------

def run_phase(phase: Phase, host: str, args: argparse.Namespace, results: Path, on_second=None) -> Phase:
    """One headless Locust run of ``phase.user_class``; figures from its stats CSV."""
    prefix = results / phase.name
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", f"{args.run_time}s",
               "--stop-timeout", "5", "--reset-stats", "--host", host, "--csv", str(prefix),
               "--html", str(prefix) + ".html", "--cvh-seed", str(args.seed), "--cvh-sample", str(args.sample),
               "--loglevel", "WARNING"]
    if args.locust_processes > 1:
        command += ["--processes", str(args.locust_processes)]
    command.append(phase.user_class)
    env = dict(os.environ)
    if args.token:
        env["CVH_TOKEN"] = args.token  # not on the command line: flags show in `ps`
    if args.tls_ca:
        env["CVH_TLS_CA"] = args.tls_ca
    with open(str(prefix) + ".log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            time.sleep(1)
            if on_second:
                on_second()
    phase.exit_code = process.returncode
    stats = Path(str(prefix) + "_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"Locust wrote no statistics for {phase.name}; see {prefix}.log:\n"
                           + "\n".join(Path(str(prefix) + ".log").read_text(errors="replace").splitlines()[-15:]))
    phase.rpcs, phase.total = read_stats(stats)
    return phase


def read_stats(path: Path) -> tuple[dict[str, RpcFigures], RpcFigures | None]:
    """Per-RPC figures and the aggregate from Locust's ``*_stats.csv``."""
    rpcs, total = {}, None
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            figures = RpcFigures(int(row["Request Count"]), int(row["Failure Count"]), float(row["Requests/s"]),
                                 _number(row["50%"]), _number(row["99%"]))
            if row["Name"] == "Aggregated":
                total = figures
            else:
                rpcs[row["Name"]] = figures
    return rpcs, total


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "N/A" when nothing was measured
        return float("nan")


# -- thresholds and the report -----------------------------------------------------------------------------

def parse_limits(items: list[str], default_name: str, defaults: dict[str, float]) -> dict[str, float]:
    """``["30", "ScoreBatch=200"]`` -> defaults with GetPriority (a bare number) and ScoreBatch changed."""
    limits = dict(defaults)
    for item in items or ():
        name, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N or RPC=N, got {item!r}") from None
        if name == "*":  # every RPC with a limit
            limits.update({known: number for known in limits if known})
        else:
            limits[name if sep else default_name] = number
    return limits


def judge(phases: list[Phase], args: argparse.Namespace) -> Verdict:
    verdict = Verdict()
    health = ceiling(phases)
    failures = sum(p.total.failures for p in phases if p.total)
    verdict.check(failures == 0, f"failed requests: {failures} (must be 0)")
    verdict.check(health > 0, f"health-check ceiling: {health:,.0f} requests/s (must be above 0)")
    p99_limits = parse_limits(args.max_p99_ms, "GetPriority", DEFAULT_P99_MS)
    min_rps = parse_limits(args.min_rps, "", {})
    phase_min = min_rps.pop("", DEFAULT_MIN_PHASE_RPS)
    for phase in phases:
        total = phase.total.rps if phase.total else 0.0
        verdict.check(total >= phase_min, f"{phase.name}: {total:,.0f} requests/s (minimum {phase_min:,.0f})")
        for name, figures in sorted(phase.rpcs.items()):
            limit = p99_limits.get(name)
            if limit is not None:
                verdict.check(figures.p99_ms <= limit, f"{phase.name} {name}: p99 {figures.p99_ms:g} ms "
                                                       f"(limit {limit:g} ms)")
            if name in min_rps:
                verdict.check(figures.rps >= min_rps[name], f"{phase.name} {name}: {figures.rps:,.0f} requests/s "
                                                            f"(minimum {min_rps[name]:,.0f})")
    ratios = ratio_figures(phases)
    for name, minimum in (("GetPriority", args.min_get_priority_ratio), ("ScoreCustomer", args.min_score_customer_ratio)):
        key = _snake(name) + "_ratio"
        if key in ratios:
            verdict.check(ratios[key] >= minimum, f"{name} alone: {ratios[key]:.2f} of the health-check ceiling "
                                                  f"(minimum {minimum:.2f})")
    return verdict


def _snake(rpc: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in rpc).lstrip("_")


def ceiling(phases: list[Phase]) -> float:
    """The health-check rate: the better of the health phases."""
    return max((p.total.rps for p in phases if p.name in HEALTH_PHASES and p.total), default=0.0)


def ratio_figures(phases: list[Phase]) -> dict[str, float]:
    """health_rps (the ceiling) and, for each calibration phase, its RPC's rate, ratio to it and p99."""
    by_name = {p.name: p for p in phases}
    health_rps = ceiling(phases)
    figures: dict = {"health_rps": round(health_rps, 1),
                     "health_rps_runs": [round(p.total.rps, 1) for p in phases
                                         if p.name in HEALTH_PHASES and p.total]}
    for phase_name, rpc in (("get_priority", "GetPriority"), ("score_customer", "ScoreCustomer")):
        phase = by_name.get(phase_name)
        if phase is None or rpc not in phase.rpcs:
            continue
        rates = phase.rpcs[rpc]
        figures[f"{phase_name}_rps"] = round(rates.rps, 1)
        figures[f"{phase_name}_ratio"] = round(rates.rps / health_rps, 3) if health_rps else 0.0
        figures[f"{phase_name}_p99_ms"] = rates.p99_ms
    return figures


def print_report(phases: list[Phase], verdict: Verdict, file=sys.stdout) -> None:
    from clients.output import print_table

    health = ceiling(phases)
    rows = []
    for phase in phases:
        entries = sorted(phase.rpcs.items())
        if len(entries) > 1 and phase.total:
            entries.append(("(all)", phase.total))
        for name, f in entries:
            ratio = f"{f.rps / health:.2f}" if health else "–"
            rows.append([phase.name, name, f"{f.requests:,}", f"{f.failures:,}", f"{f.rps:,.0f}", ratio,
                         f"{f.median_ms:g}", f"{f.p99_ms:g}"])
    with contextlib.redirect_stdout(file):
        print_table(["phase", "rpc", "requests", "failures", "req/s", "x health", "p50 ms", "p99 ms"], rows,
                    right=(2, 3, 4, 5, 6, 7))
        print()
        for line in verdict.checks:
            print(line)
        print("\nPASSED" if not verdict.failed else f"\nFAILED: {len(verdict.failed)} of {len(verdict.checks)} checks")


# -- the command -------------------------------------------------------------------------------------------

def loadtest(args: argparse.Namespace) -> int:
    from services.common.db import redacted_url

    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON object
    results = Path(args.results or Path("loadtest-results") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    results.mkdir(parents=True, exist_ok=True)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else []
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"cvh loadtest: unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    for items, default in ((args.max_p99_ms, "GetPriority"), (args.min_rps, "")):
        try:
            parse_limits(items, default, {})
        except argparse.ArgumentTypeError as error:
            print(f"cvh loadtest: {error}", file=sys.stderr)
            return 2
    if args.host and args.database_url:
        print("cvh loadtest: --database-url is for the suite started here; a --host deployment has its own",
              file=sys.stderr)
        return 2
    import importlib.util
    if importlib.util.find_spec("locust") is None:
        print("cvh loadtest: Locust is not installed: pip install -e '.[dev]' (or pip install locust)", file=sys.stderr)
        return 2
    show_progress = not args.no_progress
    suite = None
    summary: dict = {"results": str(results)}
    try:
        if args.host:
            host = args.host if "://" in args.host else f"grpc://{args.host}"
            print(f"load-testing {host} (nothing seeded); reports in {results}", file=out)
        else:
            suite = start_suite(results, args.workers, args.database_url)
            suite.wait_serving(timeout=300)  # a first start may compile the Numba kernels
            host = f"grpc://{suite.target}"
            where = redacted_url(args.database_url) if args.database_url else f"SQLite in {results}"
            print(f"started the suite at {suite.target} ({args.workers} worker process"
                  f"{'es' if args.workers != 1 else ''}, {where}); seeding {args.customers:,} customers",
                  file=out)
            summary["seeding"] = seed(suite.target, args.customers, args.seed, show_progress, args.workers)
            print(f"seeded and scored: {summary['seeding']}", file=out)
        plan = [Phase(name, user) for name, user in CALIBRATION.items()]
        plan += [Phase(name, SCENARIOS[name]) for name in scenarios]
        print(f"running {len(plan)} phases of {args.run_time} s with {args.users} users each: "
              f"{', '.join(p.name for p in plan)}", file=out)
        from clients.output import progress

        with progress(len(plan) * args.run_time, "load", unit=" s", enabled=show_progress) as bar:
            for phase in plan:
                bar.set_postfix_str(phase.name)
                run_phase(phase, host, args, results, on_second=lambda: bar.update(min(1, bar.total - bar.n)))
    except (RuntimeError, OSError) as error:
        print(f"cvh loadtest: {error}", file=sys.stderr)
        return 1
    finally:
        if suite is not None:
            suite.stop()
    verdict = judge(plan, args)
    print_report(plan, verdict, file=out)
    print(f"\nCSV and HTML reports: {results}", file=out)
    failures = sum(p.total.failures for p in plan if p.total)
    summary.update(ratio_figures(plan))
    summary.update({
        "failures": failures, "passed": not verdict.failed, "failed_checks": verdict.failed,
        "users": args.users, "run_time_s": args.run_time, "workers": None if args.host else args.workers,
        "locust_processes": args.locust_processes, "customers": None if args.host else args.customers,
        "database": None if args.host else ("sqlite" if not args.database_url else redacted_url(args.database_url)),
        "phases": {p.name: {name: vars(f) for name, f in p.rpcs.items()} for p in plan},
    })
    summary = _without_nan(summary)
    (results / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if args.json:
        print(json.dumps(summary, separators=(",", ":"), default=str))
    return 0 if not verdict.failed else 1


def _without_nan(value):
    """JSON has no NaN: a figure Locust could not measure becomes null."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cvh loadtest`` on the ``cvh`` command's subparsers."""
    from clients.commands.common import database_url, existing_file, fraction, positive_int, seed_number

    command = subparsers.add_parser(
        "loadtest", help="load-test the suite with Locust and check thresholds",
        description="Start the suite on loopback (or use --host), seed a synthetic base, score it, then run "
                    "Locust headless: the health Check RPC as the calibration ceiling, GetPriority and "
                    "ScoreCustomer alone, then each scenario. Writes CSV and HTML reports, prints a summary and "
                    "exits 1 when a threshold fails.",
        epilog="Thresholds: no failed request; p99 per RPC (--max-p99-ms, default GetPriority 20 ms, "
               + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_P99_MS.items() if k != "GetPriority")
               + f"); every phase at least --min-rps (default {DEFAULT_MIN_PHASE_RPS:g}) requests/s; GetPriority "
                 "and ScoreCustomer alone at least the given fraction of the health-check rate.")
    command.add_argument("--host", default=None, metavar="grpc://HOST:PORT",
                         help="load-test this deployment instead of starting one (nothing is seeded: it needs "
                              "customers and a completed run); grpcs:// for TLS")
    command.add_argument("--customers", "-n", type=positive_int, default=100_000, metavar="N",
                         help="synthetic customers to seed (default 100,000)")
    command.add_argument("--seed", type=seed_number, default=0, help="seed of the base and of the users' choices")
    command.add_argument("--run-time", type=positive_int, default=20, metavar="SECONDS", help="seconds per phase (default 20)")
    command.add_argument("--users", "-u", type=positive_int, default=6, metavar="N",
                         help="simulated users per phase, each calling as soon as it is answered (default 6: "
                              "enough to keep two cores busy, few enough that Locust's own queueing stays out "
                              "of the latencies)")
    command.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS), metavar="LIST",
                         help=f"scenario phases after the calibration, comma-separated (default all: "
                              f"{', '.join(SCENARIOS)}); empty for the calibration only")
    command.add_argument("--workers", type=positive_int, default=2, metavar="N",
                         help="server worker processes of the suite started here (default 2)")
    command.add_argument("--database-url", type=database_url, default=None, metavar="URL",
                         help="serve the suite started here on this database instead of a fresh SQLite file, "
                              "e.g. postgresql://cvh@127.0.0.1:5432/cvh_load: the base is imported into it and "
                              "scored, so give it an empty database of its own")
    command.add_argument("--locust-processes", type=positive_int, default=1, metavar="N",
                         help="Locust processes per phase (default 1; more need more cores than the server)")
    command.add_argument("--sample", type=positive_int, default=5_000, metavar="N",
                         help="customer ids each Locust process reads to draw requests from (default 5,000)")
    command.add_argument("--results", default=None, metavar="DIR",
                         help="folder of the reports (default loadtest-results/<date-time>)")
    command.add_argument("--max-p99-ms", action="append", default=[], metavar="[RPC=]MS",
                         help="p99 limit of an RPC in ms, repeatable; a bare number sets GetPriority's (default 20), "
                              "*=MS every RPC's")
    command.add_argument("--min-rps", action="append", default=[], metavar="[RPC=]N",
                         help="least requests/s of an RPC in every phase where it runs, repeatable; a bare number "
                              f"sets every phase's total (default {DEFAULT_MIN_PHASE_RPS:g})")
    command.add_argument("--min-get-priority-ratio", type=fraction, default=DEFAULT_MIN_RATIOS["GetPriority"],
                         metavar="R", help="GetPriority alone, as a fraction of the health-check rate (default 0.8)")
    command.add_argument("--min-score-customer-ratio", type=fraction, default=DEFAULT_MIN_RATIOS["ScoreCustomer"],
                         metavar="R", help="ScoreCustomer alone, as a fraction of the health-check rate (default 0.5)")
    command.add_argument("--token", default=os.environ.get("CVH_TOKEN"), metavar="TOKEN",
                         help="bearer token for --host (env CVH_TOKEN; needs reader, scorer and writer roles)")
    command.add_argument("--tls-ca", type=existing_file, default=os.environ.get("CVH_TLS_CA"), metavar="PEM",
                         help="CA of a grpcs:// --host (env CVH_TLS_CA)")
    command.add_argument("--no-progress", action="store_true", help="no progress bars")
    command.add_argument("--json", action="store_true",
                         help="print the figures as one JSON object on the last line of stdout")
    command.set_defaults(run=loadtest)
    return command
