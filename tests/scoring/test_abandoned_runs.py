"""Runs of several processes on one database: only a run whose heartbeat went stale is failed as abandoned."""

from __future__ import annotations

from cvh.scoring.v1 import scoring_service_pb2 as pb
from services.common import db
from services.registry.customers import now_us
from services.scoring import store
from tests.conftest import start_server

NOW = 1_800_000_000_000_000


def test_only_quiet_runs_are_failed_and_a_failed_run_takes_no_more_writes(database_url):
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    try:
        with db.write_transaction(engine) as conn:
            busy = store.create_run(conn, "default", 1, NOW - 60_000_000)
            quiet = store.create_run(conn, "default", 1, NOW - 60_000_000)
            fresh = store.create_run(conn, "other", 1, NOW - 1_000_000)  # pending, just created
            assert store.update_run(conn, busy, state=pb.RUN_STATE_RUNNING, heartbeat_us=NOW - 1_000_000)
            assert store.update_run(conn, quiet, state=pb.RUN_STATE_RUNNING,
                                    heartbeat_us=NOW - store.ABANDONED_AFTER_US - 1)
        with db.write_transaction(engine) as conn:
            assert store.fail_abandoned(conn, NOW) == 1
            states = {run: store.get_run(conn, run).state for run in (busy, quiet, fresh)}
        assert states == {busy: pb.RUN_STATE_RUNNING, quiet: pb.RUN_STATE_FAILED, fresh: pb.RUN_STATE_PENDING}
        with db.write_transaction(engine) as conn:
            # The quiet run's process comes back to life: its completion must not overwrite FAILED.
            assert not store.update_run(conn, quiet, state=pb.RUN_STATE_COMPLETED, percent_done=100.0)
            assert store.get_run(conn, quiet).state == pb.RUN_STATE_FAILED
            assert "stopped during the run" in store.get_run(conn, quiet).failure_reason
    finally:
        engine.dispose()


def test_a_second_server_on_the_database_leaves_a_running_run_alone(database_url):
    """What `cvh serve --workers N`, replicas and rolling updates do: a scoring process starting while
    another one runs a run (its heartbeat fresh) must not fail that run."""
    first = start_server(database_url, services=("scoring",))
    try:
        with db.write_transaction(first.suite.engine) as conn:
            run = store.create_run(conn, "default", 1, NOW)
            store.update_run(conn, run, state=pb.RUN_STATE_RUNNING, heartbeat_us=now_us())
        second = start_server(database_url, services=("scoring",))
        second.stop()
        with db.read_transaction(first.suite.engine) as conn:
            assert store.get_run(conn, run).state == pb.RUN_STATE_RUNNING
    finally:
        first.stop()


def test_a_run_whose_process_has_ended_on_this_machine_is_failed_at_once(database_url):
    """A restart does not wait for the heartbeat of its predecessor's run to go stale: a process of this
    machine that has ended is known dead. A live one, or one of another machine, is left to its heartbeat."""
    import subprocess
    import sys

    from services.common import processes

    ended = subprocess.run([sys.executable, "-c", "from services.common import processes; "
                            "print(processes.this_process())"], capture_output=True, text=True, check=True)
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    try:
        with db.write_transaction(engine) as conn:
            fresh = {}
            for name, executor in [("dead", ended.stdout.strip()), ("alive", processes.this_process()),
                                   ("elsewhere", "other-host " + ended.stdout.strip().split(" ", 1)[1])]:
                fresh[name] = store.create_run(conn, name, 1, now_us())
                store.update_run(conn, fresh[name], state=pb.RUN_STATE_RUNNING, heartbeat_us=now_us(),
                                 executor=executor)
        with db.write_transaction(engine) as conn:
            assert store.fail_abandoned(conn, now_us()) == 1
            states = {name: store.get_run(conn, run).state for name, run in fresh.items()}
        assert states == {"dead": pb.RUN_STATE_FAILED, "alive": pb.RUN_STATE_RUNNING,
                          "elsewhere": pb.RUN_STATE_RUNNING}
    finally:
        engine.dispose()
