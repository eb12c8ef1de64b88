"""Several server processes on one port: ``cvh serve --workers N``.

A Python process serves from one core (the GIL). ``N`` worker processes, each a complete server
(:func:`services.common.server.serve`: the configured services, health, reflection), bind the same
address with ``SO_REUSEPORT`` (``ServerConfig.share_port``; every other server binds without it), and the
kernel spreads incoming *connections* over them, as in grpc's ``examples/python/multiprocessing``. A
client's channel stays with one worker; many clients, or ``round_robin`` over several channels, use them
all.

Once, in this (parent) process, before any worker starts:

- holding the address (:func:`services.common.addresses.reserve`): refused with a clear message when
  another server (or another worker set) has it; otherwise a socket bound with ``SO_REUSEPORT`` (never
  listening) holds it until the workers stop, so only this set's workers can bind beside it. For port 0
  this also chooses the port, once for every worker. The ``--health-listen`` address is checked too;
- the database migrations (the workers start with ``migrate=False``).

Worker 0 starts alone; the others start once it serves. On a new database it creates the default model,
and it compiles (or loads from Numba's cache) the scoring kernels, so the others neither race to insert
the same row nor all compile at once.

Shared by the workers: the hierarchy snapshot. The parent makes a private temporary directory
(``ServerConfig.snapshot_dir``, unless one was given) and removes it when the set stops; each worker
follows ``WatchRuns`` through the shared port, and of each run the first to take its lock builds the
snapshot and writes it there, the others memory-map the same files (services/hierarchy/shared.py): one
copy in memory, whatever ``N``, plus each worker's live changes since.

Per worker, and fine so: scoring runs (a run executes in the worker that accepted
``StartScoringRun``; the others see its progress and result through the database, polled every second,
and its heartbeat tells them it is alive); online scoring's cache of fitted models. Prometheus metrics
are per worker, on ``metrics_port + i``; the plaintext health-only port (``health_listen``) is served by
worker 0.

Workers are started with the *spawn* method, never forked: Numba's OpenMP threading layer, gRPC's core
and open database connections are not fork-safe. SIGTERM or SIGINT to the parent reaches every worker,
which shuts down gracefully (health NOT_SERVING, in-flight calls get their grace); SIGHUP to the parent
reaches every worker too (each reads its tokens file again), and kills none. When a worker dies,
the parent stops the others and exits with its code, so a supervisor (Kubernetes, systemd) restarts the
whole set rather than leaving one port half served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time

from services.common import addresses
from services.common.config import ConfigError, ServerConfig, check_before_start

log = logging.getLogger("cvh.workers")

START_TIMEOUT_S = 300.0  # the first worker may compile the Numba kernels from scratch (~20 s)


def serve_workers(config: ServerConfig, workers: int, start_timeout: float = START_TIMEOUT_S) -> int:
    """Serve ``config`` from ``workers`` processes on one port until SIGTERM or SIGINT; the exit code."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    check_before_start(config)
    # Ignored until the group forwards it to its workers (run): a SIGHUP during migrations killed the set.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with addresses.reserve(config.listen) as listen:
        if config.health_listen:
            addresses.ensure_free(config.health_listen, "--health-listen")
        if config.migrate:
            from services.common import db

            engine = db.create_engine(config.database_url)
            try:
                db.upgrade(engine)
            finally:
                engine.dispose()
        made = ""
        if "hierarchy" in config.services and not config.snapshot_dir:
            made = tempfile.mkdtemp(prefix="cvh-snapshots-")  # mode 0700: this user's workers only
            config = dataclasses.replace(config, snapshot_dir=made)
        try:
            group = _WorkerGroup(multiprocessing.get_context("spawn"), config, listen)
            return group.run(workers, start_timeout)
        finally:
            if made:
                shutil.rmtree(made, ignore_errors=True)


def worker_config(config: ServerConfig, listen: str, index: int) -> ServerConfig:
    """Worker ``index``'s configuration: the shared address, no migrations, its own metrics port."""
    return dataclasses.replace(
        config, listen=listen, share_port=True, migrate=False,
        metrics_port=config.metrics_port + index if config.metrics_port else 0,
        health_listen=config.health_listen if index == 0 else "")


class _WorkerGroup:
    def __init__(self, context, config: ServerConfig, listen: str) -> None:
        self.context = context
        self.config = config
        self.listen = listen
        self.processes: list = []
        self.ready: list = []  # kept: a child unpickles its Event from the parent's, which must still exist
        self.stopping = False

    def _start(self, index: int):
        ready = self.context.Event()
        process = self.context.Process(target=_worker_main, name=f"cvh-worker-{index}",
                                       args=(worker_config(self.config, self.listen, index), index, ready))
        # The worker inherits "ignore SIGHUP" through exec, until its server sets its own handler: a SIGHUP
        # forwarded while it starts does not kill it.
        hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGHUP, hangup)
        self.processes.append(process)
        self.ready.append(ready)
        return process, ready

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
        self.stopping = True

    def _on_hangup(self, _signum, _frame) -> None:
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGHUP)

    def run(self, workers: int, start_timeout: float) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            code = self._run(workers, start_timeout)
        finally:
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
        failed = [p.exitcode for p in self.processes if p.exitcode not in (0, None, -signal.SIGTERM)]
        return code if code else (1 if failed else 0)

    def _run(self, workers: int, start_timeout: float) -> int:
        first, ready = self._start(0)
        deadline = time.monotonic() + start_timeout
        while not ready.wait(0.2):
            if self.stopping:
                return 0
            if not first.is_alive():
                return first.exitcode or 1
            if time.monotonic() > deadline:
                log.error("worker 0 did not start serving", extra={"seconds": start_timeout})
                return 1
        for index in range(1, workers):
            self._start(index)
        log.info("workers started", extra={"workers": workers, "listen": self.listen,
                                           "pids": [p.pid for p in self.processes]})
        while not self.stopping:
            ended = multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=0.5)
            if ended and not self.stopping:
                dead = next(p for p in self.processes if p.sentinel in ended)
                dead.join(5)
                log.error("a worker exited; stopping the others", extra={"worker": dead.name,
                                                                        "exit_code": dead.exitcode})
                return dead.exitcode or 1
        return 0

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: a graceful shutdown in the worker
        deadline = time.monotonic() + self.config.grace_seconds + 15
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.error("a worker did not stop in time; killing it", extra={"worker": process.name})
                process.kill()
                process.join(5)


def _worker_main(config: ServerConfig, index: int, ready) -> None:
    """One worker process: serve until SIGTERM or SIGINT."""
    from services.common import logs
    from services.common.server import exit_code, serve

    logs.configure(config.log_level)
    sys.exit(exit_code(lambda: asyncio.run(serve(config, on_started=lambda suite: ready.set())),
                       f"cvh serve (worker {index})"))
