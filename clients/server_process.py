"""``cvh serve`` in a subprocess on a free loopback port and a fresh SQLite file: what the benchmarks and
``cvh loadtest`` measure, a server with a process (and cores) of its own."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``cvh serve SERVICES...`` (none named: all three) with its log in ``workdir``, on ``database_url`` or
    else a fresh SQLite file ``workdir/cvh.db`` (``database``; None for another database); ``env`` adds
    environment variables (e.g. CVH_REGISTRY_TARGET).

    ``health_services`` are the gRPC service names :meth:`wait_serving` waits to see SERVING ("" is the
    server as a whole).
    """

    def __init__(self, workdir: Path, services: tuple[str, ...] = (), health_services: tuple[str, ...] = ("",),
                 extra_args: tuple[str, ...] = (), database_url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.database = None if database_url else workdir / "cvh.db"
        if self.database:
            for stale in workdir.glob("cvh.db*"):  # a fresh database every time
                stale.unlink()
            database_url = f"sqlite:///{self.database}"
        self.log_path = workdir / "server.log"
        self.target = f"127.0.0.1:{free_port()}"
        self.health_services = health_services
        command = [sys.executable, "-m", "clients.cli", "serve", *services, "--listen", self.target,
                   "--database-url", database_url, "--log-level", "WARNING", *extra_args]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **env} if env else None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_serving(self, timeout: float = 120) -> None:
        """Block until the health check reports every one of ``health_services`` SERVING."""
        deadline = time.monotonic() + timeout
        waiting = list(self.health_services)
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(grpc.RpcError):
                    while waiting:
                        answer = health.Check(health_pb2.HealthCheckRequest(service=waiting[0]), timeout=1)
                        if answer.status != health_pb2.HealthCheckResponse.SERVING:
                            break
                        waiting.pop(0)
                    if not waiting:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"the server was not SERVING within {timeout:.0f} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU the server process has used so far (Linux only)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a graceful shutdown, of every worker process too), SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
