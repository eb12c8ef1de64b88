"""A private PostgreSQL cluster for fault tests: its own data directory and port, stopped and started at will.

The shared server at 127.0.0.1:5432 is never touched. initdb refuses to run as
root, so as root every PostgreSQL command runs as the ``postgres`` user
(``runuser``) in a temporary directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from clients.server_process import free_port
from services.common import db



def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgCluster:
    """``initdb`` once, then ``start`` / ``stop`` / ``restart``; ``destroy`` stops it and removes every file."""

    def __init__(self, database: str = "cvh") -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.as_user = None
        if os.geteuid() == 0:
            self.as_user = "postgres"
            pwd.getpwnam(self.as_user)  # KeyError when there is no such user
        self.base = Path(tempfile.mkdtemp(prefix="cvh-pg-"))
        if self.as_user:
            shutil.chown(self.base, self.as_user)
        self.data = self.base / "data"
        self.port = free_port()
        self.database = database
        self.log = self.base / "server.log"
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, tool: str, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bin / tool), *map(str, args)]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}\n{self.server_log()}")
        return done

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        # fsync=off is safe for these tests: a stopped or crashed server (not the machine) loses nothing written.
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c full_page_writes=off -c max_connections=60")
        self._run("pg_ctl", "start", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, timeout=90)
        self._wait_ready()

    def stop(self, mode: str = "fast") -> None:
        """``fast``: roll back open transactions and close sessions; ``immediate``: crash, recover on start."""
        self._run("pg_ctl", "stop", "-D", self.data, "-m", mode, "-w", "-t", "60", timeout=90)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        command = [str(self.bin / "pg_ctl"), "status", "-D", str(self.data)]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    def create_database(self) -> None:
        admin = sa.create_engine(db.normalize_url(self.url.rsplit("/", 1)[0] + "/postgres"),
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {self.database}")
        admin.dispose()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on port {self.port} did not come up\n{self.server_log()}")
                time.sleep(0.05)

    def destroy(self) -> None:
        try:
            if self.data.exists() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
