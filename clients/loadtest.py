"""cvh loadtest: one command from an empty machine to a load report with pass/fail thresholds.

1. Starts the suite on loopback (``cvh serve --workers N`` in a subprocess, on a free port, with a fresh
   SQLite file in the results folder), or targets ``--host`` (an existing deployment: nothing is seeded).
2. Seeds a synthetic base (``clients/synthetic.py``), runs the default model and waits until the
   hierarchy serves the run.
3. Runs Locust headless (``loadtests/locustfile.py``, one Locust process per phase, in a subprocess)
   for ``--run-time`` with ``--users`` users per phase: first ``--rounds`` calibration rounds (the health
   Check RPC, the cheapest call gRPC has and the ceiling; GetPriority alone; ScoreCustomer alone) and a
   closing health phase, then each scenario. Every phase writes Locust's CSV files and HTML report into
   the results folder: a temporary one, removed at the end, unless ``--keep`` or ``--results DIR``.
4. Prints a table per phase and RPC: requests, failures, requests per second and that rate as a
   fraction of the health-check ceiling measured by the same harness against the same server, median and
   p99. Each RPC's ratio is its rate over the mean of the two health phases around it, per round; the
   verdict takes the median over the rounds, and states the calibration's noise (how far the health
   phases, the same measurement repeated, differ, and the health Check's own p99, measured beside each
   scenario too by one probe user). Exits 1 when a threshold fails: any failed request, a phase below its
   minimum rate, a p99 above its limit or a ratio below its minimum by more than that noise (within it the
   check is *inconclusive*: reported, exit 0). ``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# One calibration round: the health Check (the ceiling), then each RPC alone; after the last round the health
# Check once more, so every RPC phase lies between two health phases. A ratio is the RPC's rate over the
# mean of those two, which cancels a slow drift of the machine's other load; the verdict takes the median
# over the rounds, which a burst of other work during one phase does not move.
CALIBRATION_ROUND = {"health": "HealthUser", "get_priority": "GetPriorityUser",
                     "score_customer": "ScoreCustomerUser"}
RATIO_RPCS = {"get_priority": "GetPriority", "score_customer": "ScoreCustomer"}
# Beside each scenario's users, one user calls the health Check 20 times a second: its p99 is the tail that the
# machine and the harness add to every call in that very phase (loadtests/scenarios.py).
PROBE_USER, PROBE_RPC = "LatencyProbeUser", "Check"
DEFAULT_ROUNDS = 3
DEFAULT_RUN_TIME_S = 10
SCENARIOS = {"support_tooling": "SupportToolingUser", "internal_systems": "InternalSystemsUser",
             "registry_writers": "RegistryWriterUser", "mixed": "MixedUser",
             "telemetry_writers": "TelemetryWriterUser", "adoption_lookup": "AdoptionLookupUser",
             "front_line": "FrontLineUser"}
DEFAULT_SCENARIOS = tuple(SCENARIOS)
# p99 limits in milliseconds, per RPC (--max-p99-ms RPC=MS changes one, a bare number GetPriority's, *=MS all).
# Writes wait for SQLite's one writer at a time, across worker processes too: they get more room. The health
# Check has none: its p99, the tail of the cheapest call, is what the machine and the harness add to every
# call's tail in this run, the latency noise the other limits are judged with.
DEFAULT_P99_MS = {"GetPriority": 20.0, "BatchGetPriority": 50.0, "RankCustomers": 20.0, "ScoreCustomer": 50.0,
                  "ScoreSignals": 50.0, "ScoreBatch": 100.0, "GetCustomer": 50.0, "UpdateCustomer": 500.0,
                  "RecordSignals": 500.0, "RecordTelemetry": 500.0, "GetCustomerAdoption": 50.0,
                  "RecordServiceDecision": 500.0}
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
    kind: str = ""  # the calibration phase it is a round of ("health", "get_priority", ...); "" for a scenario
    round: int = 0

    @property
    def rps(self) -> float:
        return self.total.rps if self.total else 0.0

    @property
    def measured_seconds(self) -> float:
        """The window Locust's figures cover (its rate is requests over it): the phase, less the users' start."""
        return self.total.requests / self.total.rps if self.total and self.total.rps else 0.0


def calibration_plan(rounds: int) -> list[Phase]:
    """``rounds`` rounds of health, GetPriority alone, ScoreCustomer alone, then a closing health phase."""
    plan = [Phase(f"{kind}_{r}", user, kind=kind, round=r)
            for r in range(1, rounds + 1) for kind, user in CALIBRATION_ROUND.items()]
    return plan + [Phase(f"health_{rounds + 1}", "HealthUser", kind="health", round=rounds + 1)]


@dataclass
class Verdict:
    checks: list[str] = field(default_factory=list)    # every check made, for the report
    failed: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)  # missed by less than the measured noise

    def check(self, ok: bool, text: str, within_noise: bool = False) -> None:
        mark = "pass  " if ok else "??    " if within_noise else "FAIL  "
        self.checks.append(mark + text)
        if not ok:
            (self.inconclusive if within_noise else self.failed).append(text)

    @property
    def outcome(self) -> str:
        return "failed" if self.failed else "inconclusive" if self.inconclusive else "passed"


# -- durations ---------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def duration(text: str) -> int:
    """Seconds from plain seconds (``20``) or Locust's format (``30s``, ``1m``, ``1h30m``)."""
    text = text.strip().lower()
    if text.isdigit():
        seconds = int(text)
    else:
        match = _DURATION.fullmatch(text)
        if not text or not match:
            raise argparse.ArgumentTypeError(f"expected seconds or a duration like 30s, 1m, 1h30m; got {text!r}")
        hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"a phase runs at least 1 second; got {text!r}")
    return seconds


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
        _seed_adoption(cvh, base, seed_value)
        timings["adoption_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    wait_for_snapshot_everywhere(target, run.name, workers)
    timings["snapshot_seconds"] = round(time.perf_counter() - started, 2)
    return {"run": run.name, **timings}


def _seed_adoption(cvh, base, seed_value: int) -> None:
    """The demo's value hierarchy (unless the suite has one) and its synthetic telemetry for the base, so that
    the adoption scenarios look up customers with something to show."""
    import grpc

    from clients import synthetic_adoption
    from clients.errors import CvhError

    try:
        cvh.get_value_map_version()
    except CvhError as error:
        if error.code != grpc.StatusCode.FAILED_PRECONDITION:  # NO_ACTIVE_VALUE_MAP
            raise
        cvh.create_value_map_version(synthetic_adoption.demo_value_map())
    engagement = base.values[:, list(base.signal_names).index("feature_adoption")]
    cvh.record_telemetry(synthetic_adoption.telemetry(base.customer_ids, engagement, time.time_ns() // 1000,
                                                      seed_value))


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
    """One headless Locust run of ``phase.user_class`` (a scenario with the latency probe beside it); figures
    from its stats CSV."""
    prefix = results / phase.name
    users, classes = args.users, [phase.user_class]
    if not phase.kind:
        users, classes = users + 1, [*classes, PROBE_USER]
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{args.run_time}s",
               "--stop-timeout", "5", "--reset-stats", "--host", host, "--csv", str(prefix),
               "--html", str(prefix) + ".html", "--cvh-seed", str(args.seed), "--cvh-sample", str(args.sample),
               "--loglevel", "WARNING"]
    if args.locust_processes > 1:
        command += ["--processes", str(args.locust_processes)]
    command += classes
    env = dict(os.environ)
    if args.token:
        env["CVH_TOKEN"] = args.token  # not on the command line: flags show in `ps`
    if args.tls_ca:
        env["CVH_TLS_CA"] = args.tls_ca
    with open(str(prefix) + ".log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:  # ends as soon as Locust does, not at the next whole second
            try:
                process.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
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
    calibration = ratio_figures(phases)
    health = calibration["health_rps"]
    failures = sum(p.total.failures for p in phases if p.total)
    verdict.check(failures == 0, f"failed requests: {failures} (must be 0)")
    verdict.check(health > 0, f"health-check ceiling: {health:,.0f} requests/s (must be above 0)")
    p99_limits = parse_limits(args.max_p99_ms, "GetPriority", DEFAULT_P99_MS)
    min_rps = parse_limits(args.min_rps, "", {})
    phase_min = min_rps.pop("", DEFAULT_MIN_PHASE_RPS)
    for phase in phases:
        verdict.check(phase.rps >= phase_min, f"{phase.name}: {phase.rps:,.0f} requests/s (minimum {phase_min:,.0f})")
        # A phase whose users started late measured too short a window to be sure of: not a failure of the
        # server, so inconclusive (listed only then).
        if phase.measured_seconds < 0.5 * args.run_time:
            verdict.check(False, f"{phase.name}: measured only {phase.measured_seconds:.1f} s of {args.run_time} s "
                                 f"(at least half)", within_noise=True)
    # A calibration RPC is judged once, on its median over the rounds; a scenario's RPCs once per phase.
    for label, rpc, figures, latency_noise in judged_rpcs(phases):
        limit = p99_limits.get(rpc)
        if limit is not None:
            text = f"{label} {rpc}: p99 {figures.p99_ms:g} ms (limit {limit:g} ms)"
            within_noise = limit < figures.p99_ms <= limit + latency_noise
            if within_noise:
                text += f": inconclusive, within the health check's own p99 beside it ({latency_noise:g} ms)"
            verdict.check(figures.p99_ms <= limit, text, within_noise)
        if rpc in min_rps:
            verdict.check(figures.rps >= min_rps[rpc], f"{label} {rpc}: {figures.rps:,.0f} requests/s "
                                                       f"(minimum {min_rps[rpc]:,.0f})")
    for kind, rpc in RATIO_RPCS.items():
        if f"{kind}_ratio" not in calibration:
            continue
        minimum = getattr(args, f"min_{kind}_ratio")
        ratio, noise = calibration[f"{kind}_ratio"], calibration[f"{kind}_ratio_noise"]
        rounds = ", ".join(f"{r:.2f}" for r in calibration[f"{kind}_ratio_runs"])
        text = (f"{rpc} alone: {ratio:.2f} ± {noise:.2f} of the health-check rate (median of {rounds}; "
                f"minimum {minimum:.2f})")
        within_noise = ratio < minimum <= ratio + noise
        if within_noise:
            text += f": inconclusive, {minimum - ratio:.2f} below is within this run's noise"
        verdict.check(ratio >= minimum, text, within_noise)
    return verdict


def judged_rpcs(phases: list[Phase]) -> list[tuple[str, str, RpcFigures, float]]:
    """(label, RPC, figures, latency noise) to hold against the limits: per calibration kind, the median over
    its rounds of each figure, with the health phases' median p99 as noise; per scenario phase, its own, with
    its latency probe's p99 (the probe's own calls are not judged)."""
    judged, kinds = [], {}
    health_p99 = ratio_figures(phases)["health_p99_ms"]
    for phase in phases:
        if phase.kind:
            for rpc, figures in phase.rpcs.items():
                kinds.setdefault((phase.kind, rpc), []).append(figures)
        else:
            probe = phase.rpcs.get(PROBE_RPC)
            noise = probe.p99_ms if probe and probe.p99_ms == probe.p99_ms else health_p99
            judged += [(phase.name, rpc, figures, noise) for rpc, figures in sorted(phase.rpcs.items())
                       if rpc != PROBE_RPC]
    for (kind, rpc), runs in kinds.items():
        label = kind if len(runs) == 1 else f"{kind} (median of {len(runs)})"
        judged.insert(0, (label, rpc, RpcFigures(sum(f.requests for f in runs), sum(f.failures for f in runs),
                                                 statistics.median(f.rps for f in runs),
                                                 statistics.median(f.median_ms for f in runs),
                                                 statistics.median(f.p99_ms for f in runs)), health_p99))
    return judged


def _snake(rpc: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in rpc).lstrip("_")


def ceiling(phases: list[Phase]) -> float:
    """The health-check rate: the median of the health phases."""
    rates = [p.rps for p in phases if p.kind == "health" and p.total]
    return statistics.median(rates) if rates else 0.0


def ratio_figures(phases: list[Phase]) -> dict:
    """The calibration: ``health_rps`` (the ceiling, median of the health phases), ``health_rps_runs`` and
    ``health_spread`` (their range over their median: the noise of this machine during this run),
    ``health_p99_ms`` (the median p99 of the health Check: the latency noise of this run), and per
    RPC alone its rate, ``_ratio`` (median over the rounds of its rate over the mean of the health phases
    before and after it), ``_ratio_runs``, ``_ratio_noise`` (the median deviation of the rounds' ratios from
    their median, at least half the health spread of the ratio) and the median p99."""
    health_rates = [p.rps for p in phases if p.kind == "health" and p.total]
    health_rps = ceiling(phases)
    spread = (max(health_rates) - min(health_rates)) / health_rps if health_rps else 0.0
    health_p99 = [p.total.p99_ms for p in phases if p.kind == "health" and p.total]
    figures: dict = {"health_rps": round(health_rps, 1), "health_rps_runs": [round(r, 1) for r in health_rates],
                     "health_spread": round(spread, 3),
                     "health_p99_ms": statistics.median(health_p99) if health_p99 else 0.0}
    health_at = {p.round: p.rps for p in phases if p.kind == "health" and p.total}
    for kind, rpc in RATIO_RPCS.items():
        runs = [p for p in phases if p.kind == kind and rpc in p.rpcs]
        if not runs:
            continue
        ratios = []
        for phase in runs:
            around = [health_at[r] for r in (phase.round, phase.round + 1) if health_at.get(r)]
            ratios.append(phase.rpcs[rpc].rps / statistics.mean(around) if around else 0.0)
        ratio = statistics.median(ratios)
        figures[f"{kind}_rps"] = round(statistics.median(p.rpcs[rpc].rps for p in runs), 1)
        figures[f"{kind}_ratio"] = round(ratio, 3)
        figures[f"{kind}_ratio_runs"] = [round(r, 3) for r in ratios]
        deviation = statistics.median(abs(r - ratio) for r in ratios)  # robust, like the median it goes with
        figures[f"{kind}_ratio_noise"] = round(max(deviation, ratio * spread / 2), 3)
        figures[f"{kind}_p99_ms"] = statistics.median(p.rpcs[rpc].p99_ms for p in runs)
    return figures


def print_report(phases: list[Phase], verdict: Verdict, file=sys.stdout) -> None:
    from clients.output import print_table

    calibration = ratio_figures(phases)
    health = calibration["health_rps"]
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
        runs = calibration["health_rps_runs"]
        if runs:
            print(f"\ncalibration noise: the {len(runs)} health phases gave {min(runs):,.0f} to {max(runs):,.0f} "
                  f"requests/s, a spread of {calibration['health_spread']:.0%} around their median {health:,.0f}; "
                  f"the health check's own p99 was {calibration['health_p99_ms']:g} ms (median)")
        print()
        for line in verdict.checks:
            print(line)
        if verdict.failed:
            print(f"\nFAILED: {len(verdict.failed)} of {len(verdict.checks)} checks")
        elif verdict.inconclusive:
            print(f"\nINCONCLUSIVE: {len(verdict.inconclusive)} check(s) missed by less than this run's noise, the "
                  f"rest passed (exit code 0); on a quieter machine, or with a longer --run-time or more --rounds, "
                  f"the noise is smaller")
        else:
            print("\nPASSED")


# -- the command -------------------------------------------------------------------------------------------

def results_folder(args: argparse.Namespace) -> tuple[Path, bool]:
    """Where the reports go, and whether they stay: ``--results DIR`` (kept), ``--keep``
    (loadtest-results/<date-time>, kept), else a temporary folder removed at the end (the SQLite database of
    a 100,000-customer base alone is about 50 MB)."""
    if args.results:
        return Path(args.results), True
    if args.keep:
        return Path("loadtest-results") / datetime.now().strftime("%Y%m%d-%H%M%S"), True
    return Path(tempfile.mkdtemp(prefix="cvh-loadtest-")), False


def loadtest(args: argparse.Namespace) -> int:
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
    if args.rounds < 1:
        print(f"cvh loadtest: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    if args.host and args.database_url:
        print("cvh loadtest: --database-url is for the suite started here; a --host deployment has its own",
              file=sys.stderr)
        return 2
    import importlib.util
    if importlib.util.find_spec("locust") is None:
        print("cvh loadtest: Locust is not installed: pip install -e '.[dev]' (or pip install locust)", file=sys.stderr)
        return 2
    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON object
    results, keep = results_folder(args)
    results.mkdir(parents=True, exist_ok=True)
    print(f"results folder: {results}" + ("" if keep else " (temporary: removed at the end; --keep keeps it)"),
          file=out, flush=True)
    try:
        return _loadtest(args, scenarios, results, out)
    finally:
        if not keep:
            shutil.rmtree(results, ignore_errors=True)
            print(f"removed {results}", file=out)


def _loadtest(args: argparse.Namespace, scenarios: list[str], results: Path, out) -> int:
    from clients.output import progress
    from services.common.db import redacted_url

    # A progress bar on a terminal; otherwise (a pipe, a CI log, --no-progress) a line per phase.
    show_progress = not args.no_progress and sys.stderr.isatty()
    suite = None
    summary: dict = {"results": str(results)}
    plan = calibration_plan(args.rounds) + [Phase(name, SCENARIOS[name]) for name in scenarios]
    try:
        if args.host:
            host = args.host if "://" in args.host else f"grpc://{args.host}"
            print(f"load-testing {host} (nothing seeded)", file=out)
        else:
            print(f"starting the suite ({args.workers} worker process{'es' if args.workers != 1 else ''})",
                  file=out, flush=True)
            suite = start_suite(results, args.workers, args.database_url)
            suite.wait_serving(timeout=300)  # a first start may compile the Numba kernels
            host = f"grpc://{suite.target}"
            where = redacted_url(args.database_url) if args.database_url else f"SQLite in {results}"
            print(f"started the suite at {suite.target} ({where}); seeding {args.customers:,} customers and "
                  f"scoring them", file=out, flush=True)
            summary["seeding"] = seed(suite.target, args.customers, args.seed, show_progress, args.workers)
            print(f"seeded and scored: {summary['seeding']}", file=out)
        print(f"running {len(plan)} phases of {args.run_time} s with {args.users} users each: {args.rounds} "
              f"calibration round{'s' if args.rounds != 1 else ''} (health, GetPriority alone, ScoreCustomer "
              f"alone) and a closing health phase, then {', '.join(scenarios) or 'no scenario'}", file=out, flush=True)
        with progress(len(plan) * args.run_time, "load", unit=" s", enabled=show_progress) as bar:
            for number, phase in enumerate(plan, 1):
                bar.set_postfix_str(phase.name)
                if not show_progress:
                    print(f"phase {number}/{len(plan)}: {phase.name} ({phase.user_class}, {args.run_time} s) ... ",
                          end="", file=out, flush=True)
                run_phase(phase, host, args, results, on_second=lambda: bar.update(min(1, bar.total - bar.n)))
                if not show_progress:
                    p99 = max((f.p99_ms for f in phase.rpcs.values()), default=float("nan"))
                    print(f"{phase.rps:,.0f} requests/s over {phase.measured_seconds:.1f} s, p99 up to {p99:g} ms",
                          file=out, flush=True)
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
        "failures": failures, "passed": not verdict.failed, "verdict": verdict.outcome,
        "failed_checks": verdict.failed, "inconclusive_checks": verdict.inconclusive,
        "users": args.users, "run_time_s": args.run_time, "rounds": args.rounds,
        "workers": None if args.host else args.workers,
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
                    "Locust headless: rounds of the health Check RPC (the calibration ceiling), GetPriority and "
                    "ScoreCustomer alone, then each scenario. Writes CSV and HTML reports, prints a summary and "
                    "exits 1 when a threshold fails; a ratio or a p99 missed by less than this run's measured noise is "
                    "reported inconclusive (exit 0).",
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
    command.add_argument("--run-time", type=duration, default=DEFAULT_RUN_TIME_S, metavar="TIME",
                         help=f"length of each phase: seconds, or Locust's format (30s, 1m, 1h30m); default "
                              f"{DEFAULT_RUN_TIME_S} s")
    command.add_argument("--rounds", type=positive_int, default=DEFAULT_ROUNDS, metavar="N",
                         help=f"calibration rounds (health, GetPriority alone, ScoreCustomer alone); the ratios are "
                              f"their medians (default {DEFAULT_ROUNDS})")
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
                         help="keep the reports (and the suite's database and log) in this folder (default: a "
                              "temporary folder, removed at the end)")
    command.add_argument("--keep", action="store_true",
                         help="keep the reports in loadtest-results/<date-time> (when no --results is given)")
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
