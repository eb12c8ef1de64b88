"""Load tests: every Locust scenario runs against a real suite without failures, `cvh loadtest` produces its
report and JSON and its exit code follows the thresholds, and `cvh serve --workers` serves from several
processes on one port.

Locust runs in subprocesses (importing it would patch this process with gevent)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import loadtest
from clients.loadtest import SCENARIOS, Phase, RpcFigures, calibration_plan, start_suite
from tests.conftest import _empty_tables

pytestmark = pytest.mark.slow

RELAXED = ["--max-p99-ms", "*=10000", "--min-rps", "1", "--min-get-priority-ratio", "0",
           "--min-score-customer-ratio", "0"]


def cvh(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def seeded_workers(tmp_path_factory):
    """`cvh serve --workers 2` on a fresh SQLite file, with 2,000 synthetic customers scored."""
    folder = tmp_path_factory.mktemp("loadtest-suite")
    suite = start_suite(folder, workers=2)
    try:
        suite.wait_serving(timeout=180)
        seeding = loadtest.seed(suite.target, 2_000, 0, show_progress=False, workers=2)
        yield suite, seeding
    finally:
        suite.stop()
    assert suite.process.returncode == 0, suite.log_tail()  # SIGTERM: every worker stopped gracefully


def test_workers_share_the_port(seeded_workers):
    suite, seeding = seeded_workers
    children = subprocess.run(["pgrep", "-P", str(suite.process.pid), "-f", "multiprocessing.spawn"],
                              capture_output=True, text=True).stdout.split()
    assert len(children) >= 2, "two worker processes"
    # Separate connections land on both workers; each serves health and has loaded the run's snapshot.
    loadtest.wait_for_snapshot_everywhere(suite.target, seeding["run"], workers=2, timeout=30)
    with grpc.insecure_channel(suite.target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_workers_map_one_shared_build_of_the_run(seeded_workers):
    """The run's snapshot is built once, written into the set's snapshot directory and memory-mapped by both
    workers (the same files in each one's mappings); every connection answers the same priorities."""
    from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
    from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
    from cvh.registry.v1 import registry_service_pb2 as rpb
    from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc

    suite, seeding = seeded_workers
    loadtest.wait_for_snapshot_everywhere(suite.target, seeding["run"], workers=2, timeout=30)
    deadline = time.monotonic() + 15
    while True:  # each worker's mappings as /proc shows them
        children = subprocess.run(["pgrep", "-P", str(suite.process.pid), "-f", "multiprocessing.spawn"],
                                  capture_output=True, text=True, check=False).stdout.split()
        mapped = {}
        for pid in children:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            mapped[pid] = {line.split(None, 5)[5] for line in maps if "cvh-snapshots-" in line and "/run-" in line}
        if len(mapped) == 2 and all(mapped.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in mapped}
    assert len(mapped) == 2 and all(mapped.values()), (mapped, commands, suite.log_tail())
    first, second = mapped.values()
    assert first == second, "both workers map the same files"
    folder = Path(next(iter(first))).parent.parent
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [Path(next(iter(first))).parent.name], \
        "one build of the run"
    with grpc.insecure_channel(suite.target) as channel:
        customers = [c.name for c in rpb_grpc.RegistryServiceStub(channel).ListCustomers(
            rpb.ListCustomersRequest(page_size=20)).customers]
    channels = [grpc.insecure_channel(suite.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(16)]
    try:
        answers = {tuple(hpb_grpc.HierarchyServiceStub(channel).GetPriority(
            hpb.GetPriorityRequest(customer=c), timeout=5).SerializeToString(deterministic=True) for c in customers)
            for channel in channels}
    finally:
        for channel in channels:
            channel.close()
    assert len(answers) == 1


def test_every_worker_applies_the_feed_and_the_live_re_score_alike(seeded_workers):
    """A customer created and an NPS recorded reach both workers' hierarchies (each follows the feed and
    re-scores on its own) within a second or two, and every connection, whichever worker it lands on, answers
    the same."""
    from cvh.common.v1 import common_pb2
    from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
    from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
    from cvh.registry.v1 import registry_service_pb2 as rpb
    from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc

    suite, seeding = seeded_workers
    loadtest.wait_for_snapshot_everywhere(suite.target, seeding["run"], workers=2, timeout=30)
    with grpc.insecure_channel(suite.target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        parent = registry.ListCustomers(rpb.ListCustomersRequest(page_size=1)).customers[0].name
        registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
            customer_id="worker-late", parent=parent, owner="ana", stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER)))
        registry.RecordSignals(rpb.RecordSignalsRequest(observations=[rpb.SignalObservations(
            customer=parent, signals={"nps": rpb.SignalValue(value=-100),
                                      "feature_adoption": rpb.SignalValue(value=0.123456789)})]))
    # Separate connections: the kernel spreads them over both workers (all 32 on one: 1 in 2^31).
    channels = [grpc.insecure_channel(suite.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(32)]
    started, answers = time.monotonic(), {}
    try:
        waiting = list(channels)
        while waiting:
            stub = hpb_grpc.HierarchyServiceStub(waiting[0])
            try:
                late = stub.GetPriority(hpb.GetPriorityRequest(customer="customers/worker-late"), timeout=5)
                live = stub.GetPriority(hpb.GetPriorityRequest(customer=parent), timeout=5)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
                late = live = None
            if late is not None and live.live:
                answers[id(waiting.pop(0))] = (late.owner, late.stakeholder_role, late.effective_tier.level,
                                               live.own_tier.level, live.composite, live.rank)
                continue
            assert time.monotonic() - started < 10, "a worker did not apply the change"
            time.sleep(0.05)
    finally:
        for channel in channels:
            channel.close()
    assert len(set(answers.values())) == 1, set(answers.values())
    assert next(iter(answers.values()))[:2] == ("ana", common_pb2.STAKEHOLDER_ROLE_BUYER)


def test_no_other_server_joins_a_worker_set(seeded_workers, tmp_path):
    """Only the set's own workers share its port: another worker set or a single server is refused."""
    suite, _ = seeded_workers
    for extra in (("--workers", "2"), ()):
        refused = subprocess.run([sys.executable, "-m", "clients.cli", "serve", "--listen", suite.target,
                                  "--database-url", f"sqlite:///{tmp_path / 'other.db'}", *extra],
                                 capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert f"{suite.target} is already in use" in refused.stderr and "Traceback" not in refused.stderr
    assert suite.process.poll() is None


def test_every_scenario_against_a_deployment(seeded_workers, tmp_path):
    """The smoke run: each calibration phase and scenario, a few seconds with two users, no failure."""
    suite, _ = seeded_workers
    result = cvh("loadtest", "--host", f"grpc://{suite.target}", "--run-time", "3s", "--rounds", "1", "--users", "2",
                 "--sample", "500", "--results", str(tmp_path), "--no-progress", "--json", *RELAXED)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["failures"] == 0
    assert set(summary["phases"]) == {p.name for p in calibration_plan(1)} | set(SCENARIOS)
    assert summary["run_time_s"] == 3 and summary["verdict"] != "failed"
    for phase, rpcs in summary["phases"].items():
        assert rpcs, f"{phase}: no calls"
        for rpc, figures in rpcs.items():
            assert figures["failures"] == 0, (phase, rpc, figures)
            assert figures["requests"] > 0 and figures["rps"] > 0, (phase, rpc, figures)
    expected = {"support_tooling": {"GetPriority", "BatchGetPriority", "RankCustomers", "Check"},  # + the probe
                "internal_systems": {"ScoreCustomer", "ScoreSignals", "ScoreBatch", "Check"},
                "registry_writers": {"GetCustomer", "UpdateCustomer", "RecordSignals", "Check"},
                "telemetry_writers": {"RecordTelemetry", "Check"}, "adoption_lookup": {"GetCustomerAdoption", "Check"},
                "front_line": {"GetPriority", "RecordServiceDecision", "Check"},
                "health_1": {"Check"}}
    for phase, rpcs in expected.items():
        assert set(summary["phases"][phase]) == rpcs
    for name in ("health_1", "health_2", "support_tooling", "mixed"):
        assert (tmp_path / f"{name}_stats.csv").exists() and (tmp_path / f"{name}.html").exists()
    assert (tmp_path / "summary.json").exists()  # --results: kept


def test_cvh_loadtest_end_to_end_on_postgresql(postgres_database):
    """Starts its own suite (--database-url: serving from PostgreSQL), seeds, scores, runs a calibration round and
    one scenario; without a terminal a line per phase; by default in a temporary folder it names and removes; JSON
    on the last line. (On SQLite, the default, the same start_suite serves the module's worker set.)"""
    _empty_tables(postgres_database)
    result = cvh("loadtest", "--database-url", postgres_database, "--customers", "1000", "--run-time", "2",
                 "--rounds", "1", "--users", "2", "--workers", "1", "--scenarios", "support_tooling", "--sample",
                 "300", "--json", *RELAXED)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("get_priority_ratio", "get_priority_ratio_runs", "get_priority_ratio_noise", "get_priority_p99_ms",
                "score_customer_ratio", "health_rps", "health_rps_runs", "health_spread", "failures"):
        assert key in summary, key
    assert summary["failures"] == 0 and summary["health_rps"] > 0 and summary["passed"] is True
    assert len(summary["health_rps_runs"]) == 2 and len(summary["get_priority_ratio_runs"]) == 1
    assert 0 < summary["get_priority_ratio"] and 0 < summary["score_customer_ratio"]
    assert "FAILED" not in result.stderr and "calibration noise: the 2 health phases" in result.stderr
    phase_lines = [line for line in result.stderr.splitlines() if re.match(r"phase \d+/\d+: ", line)]
    assert len(phase_lines) == 5 and phase_lines[0].startswith("phase 1/5: health_1") and "requests/s" in phase_lines[0]
    results = Path(summary["results"])
    assert f"results folder: {results} (temporary" in result.stderr and f"removed {results}" in result.stderr
    assert not results.exists()
    assert summary["database"].startswith("postgresql")
    engine = sa.create_engine(postgres_database)
    with engine.connect() as conn:  # the base went into PostgreSQL
        assert conn.exec_driver_sql("SELECT count(*) FROM registry_customers").scalar() == 1000
    engine.dispose()
    _empty_tables(postgres_database)


def test_a_database_url_with_a_host_is_refused(tmp_path):
    result = cvh("loadtest", "--host", "grpc://127.0.0.1:1", "--database-url", "sqlite:///x.db",
                 "--results", str(tmp_path))
    assert result.returncode == 2 and "--database-url is for the suite started here" in result.stderr


def test_run_time_takes_seconds_and_locust_durations():
    assert [loadtest.duration(t) for t in ("20", "30s", "1m", "1h30m", "2m5s")] == [20, 30, 60, 5400, 125]
    for bad in ("", "0", "1x", "m", "-5", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            loadtest.duration(bad)
    result = cvh("loadtest", "--run-time", "5 minutes")
    assert result.returncode == 2 and "like 30s, 1m, 1h30m" in result.stderr and "Traceback" not in result.stderr


def _args(**overrides) -> argparse.Namespace:
    values = dict(max_p99_ms=[], min_rps=[], min_get_priority_ratio=0.8, min_score_customer_ratio=0.5, run_time=10)
    values.update(overrides)
    return argparse.Namespace(**values)


def _phase(name: str, rpc: str, rps: float, p99: float = 5.0, failures: int = 0, round: int = 1) -> Phase:
    """A phase; a calibration one when ``name`` is a calibration kind (health, get_priority, score_customer)."""
    figures = RpcFigures(int(rps * 10), failures, rps, 2.0, p99)
    kind = name if name in loadtest.CALIBRATION_ROUND else ""
    return Phase(f"{name}_{round}" if kind else name, "User", {rpc: figures}, figures, kind=kind, round=round)


def _calibration(health: list[float], get_priority: list[float], score_customer: list[float], p99=12.0):
    """Rounds of health, GetPriority and ScoreCustomer phases at these rates; ``health`` has one rate more, the
    closing health phase's."""
    phases = []
    for r, (g, s) in enumerate(zip(get_priority, score_customer), 1):
        phases += [_phase("health", "Check", health[r - 1], round=r),
                   _phase("get_priority", "GetPriority", g, p99=p99, round=r),
                   _phase("score_customer", "ScoreCustomer", s, p99=30, round=r)]
    return phases + [_phase("health", "Check", health[-1], round=len(get_priority) + 1)]


def test_thresholds_decide_the_verdict():
    good = _calibration([1000, 1000], [850], [600])
    assert loadtest.judge(good, _args()).outcome == "passed"
    figures = loadtest.ratio_figures(good)
    assert figures["get_priority_ratio"] == 0.85 and figures["score_customer_ratio"] == 0.6
    assert figures["health_rps"] == 1000 and figures["get_priority_p99_ms"] == 12 and figures["health_spread"] == 0

    slow = _calibration([1000, 1000], [700], [600], p99=26)
    failed = loadtest.judge(slow, _args()).failed
    assert any("p99 26 ms" in f for f in failed) and any("0.70 ± 0.00 of the health-check" in f for f in failed)
    assert not loadtest.judge(slow, _args(max_p99_ms=["30"], min_get_priority_ratio=0.5)).failed
    # Over the limit by less than the health check's own p99 in this run (5 ms here): inconclusive.
    tail = loadtest.judge(_calibration([1000, 1000], [850], [600], p99=24), _args())
    assert tail.outcome == "inconclusive"
    assert "within the health check's own p99 beside it (5 ms)" in tail.inconclusive[0]

    failing = good[:2] + [_phase("score_customer", "ScoreCustomer", 600, failures=3)] + good[3:]
    assert any("failed requests: 3" in f for f in loadtest.judge(failing, _args()).failed)
    assert any("minimum 2,000" in f for f in loadtest.judge(good, _args(min_rps=["2000"])).failed)
    assert loadtest.judge(good, _args(min_rps=["ScoreCustomer=700"])).failed
    short = loadtest.judge(good, _args(run_time=30))  # 10 s measured of 30: too short a window to be sure of
    assert short.outcome == "inconclusive" and "measured only 10.0 s of 30 s" in short.inconclusive[0]
    scenario = good + [_phase("support_tooling", "GetPriority", 900, p99=26)]
    assert any("support_tooling GetPriority: p99 26 ms" in f for f in loadtest.judge(scenario, _args()).failed)
    # A scenario's p99 is judged with the latency probe's p99 in that phase: 8 ms here, so 26 is within it.
    scenario[-1].rpcs["Check"] = RpcFigures(200, 0, 20, 1, 8)
    assert "(8 ms)" in loadtest.judge(scenario, _args()).inconclusive[0]


def test_ratios_are_medians_over_rounds_between_health_phases_and_a_miss_within_the_noise_is_inconclusive():
    # Round 2's GetPriority phase met a burst of other work: the median ignores it. Each ratio is taken
    # against the mean of the health phases around it (the machine drifted from 1,000 to 1,200).
    drifting = _calibration([1000, 1100, 1200, 1200], [880, 500, 1000], [600, 640, 700])
    figures = loadtest.ratio_figures(drifting)
    assert figures["get_priority_ratio_runs"] == [0.838, 0.435, 0.833] and figures["get_priority_ratio"] == 0.833
    assert figures["health_rps"] == 1150 and figures["health_spread"] == round(200 / 1150, 3)
    assert figures["get_priority_ratio_noise"] == round(0.833 * 200 / 1150 / 2, 3)  # the health spread's share
    assert loadtest.judge(drifting, _args()).outcome == "passed"

    # 0.78 with the health phases 10 % apart: below 0.80 but within the noise, so not a FAIL.
    noisy = _calibration([1000, 1100], [820], [600])
    verdict = loadtest.judge(noisy, _args())
    assert verdict.outcome == "inconclusive" and not verdict.failed
    assert "inconclusive, 0.02 below is within this run's noise" in verdict.inconclusive[0]
    # Far below the minimum, the same noise does not excuse it.
    assert loadtest.judge(_calibration([1000, 1100], [600], [600]), _args()).outcome == "failed"


def test_locust_stats_are_read(tmp_path):
    stats = tmp_path / "x_stats.csv"
    stats.write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%\n"
        "grpc,GetPriority,100,1,3,3.5,1,40,500,50.5,0.5,3,4,4,5,6,8,10,12,40,40,40\n"
        ",Aggregated,100,1,3,3.5,1,40,500,50.5,0.5,3,4,4,5,6,8,10,12,40,40,40\n"
        "grpc,Idle,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n")
    rpcs, total = loadtest.read_stats(stats)
    assert rpcs["GetPriority"] == RpcFigures(100, 1, 50.5, 3.0, 12.0)
    assert total.requests == 100 and math.isnan(rpcs["Idle"].p99_ms)


def test_hosts_are_parsed():
    code = ("from loadtests.grpc_user import parse_host; "
            "print(parse_host('grpc://h:1'), parse_host('grpcs://h:2/'), parse_host('dns:///svc:3'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.stdout.strip() == "('h:1', False) ('h:2', True) ('dns:///svc:3', False)", out.stderr


def test_serve_workers_stops_on_sigterm(tmp_path):
    """Port 0 is chosen once for every worker; SIGTERM stops them all with exit code 0, and the set's snapshot
    directory is removed."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "clients.cli", "serve", "--workers", "2", "--listen",
                                "127.0.0.1:0", "--database-url", f"sqlite:///{tmp_path / 'w.db'}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "TMPDIR": str(temporary)})
    try:
        deadline, started = time.monotonic() + 120, None
        for line in process.stdout:
            if '"workers started"' in line:
                started = json.loads(line)
                break
            assert time.monotonic() < deadline
        assert started and len(started["pids"]) == 2
        with grpc.insecure_channel(started["listen"]) as channel:  # SERVING once the hierarchy knows its snapshot
            answers = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30,
                                                                wait_for_ready=True)
            assert any(a.status == health_pb2.HealthCheckResponse.SERVING for a in answers)
            answers.cancel()
        assert [p.name[:14] for p in temporary.iterdir()] == ["cvh-snapshots-"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert not any(temporary.glob("cvh-snapshots-*"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
