"""Which process does a thing, and whether that process has ended: lets a restarted server fail at once the
scoring runs its dead predecessor left behind, rather than after their heartbeat goes stale.

An identity is ``host boot-id pid-namespace pid start-ticks`` (Linux ``/proc``). Another process can tell that
the process it names has ended only when both share the host, the boot and the pid namespace (one machine or
one container; ``cvh serve --workers N``): then the pid is gone or belongs to a process started at another
time. Anywhere else (another pod, another machine) it cannot tell, and :func:`has_ended` says False.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot; None when no such process (or no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@cache
def _machine() -> tuple[str, str, str] | None:
    """(host, boot id, pid namespace) of this process; None where /proc does not tell them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return socket.gethostname(), boot, namespace


def this_process() -> str | None:
    """This process's identity, or None where it cannot be told."""
    machine, ticks = _machine(), _start_ticks(os.getpid())
    if machine is None or ticks is None:
        return None
    return " ".join([*machine, str(os.getpid()), ticks])


def has_ended(identity: str | None) -> bool:
    """True only when ``identity`` names a process of this machine and pid namespace that no longer runs."""
    machine = _machine()
    parts = (identity or "").split(" ")
    if machine is None or len(parts) != 5 or tuple(parts[:3]) != machine or not parts[3].isdigit():
        return False
    return _start_ticks(int(parts[3])) != parts[4]
