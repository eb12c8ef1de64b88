"""Signal catalog (name <-> small integer id) and the packed per-customer signal arrays."""

from __future__ import annotations

import math
import threading
from array import array

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.registry.tables import signal_names

NAN = float("nan")
# One observation: (signal_id, value, observe_time_us).
Observation = tuple[int, float, int]


class SignalCatalog:
    """Maps signal names to the ids that index the packed arrays. Ids never change once given."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()

    def reload(self, conn: Connection) -> None:
        rows = conn.execute(sa.select(signal_names.c.signal_id, signal_names.c.name)).all()
        with self._lock:
            self._ids = {name: sid for sid, name in rows}
            self._names = {sid: name for sid, name in rows}

    def id_of(self, name: str) -> int | None:
        return self._ids.get(name)

    def cached_name(self, signal_id: int) -> str | None:
        """The name of ``signal_id`` when the cache knows it (no database read)."""
        return self._names.get(signal_id)

    def name_of(self, signal_id: int, conn: Connection) -> str:
        if signal_id not in self._names:
            self.reload(conn)
        return self._names[signal_id]

    def ids_for(self, conn: Connection, names: set[str]) -> dict[str, int]:
        """Ids of ``names``, giving new ids to unseen names inside the caller's write transaction.

        The cache learns new ids only by reading committed rows, so a rolled-back
        transaction never leaves an id behind that the database does not have.
        """
        if names <= self._ids.keys():
            return {name: self._ids[name] for name in names}
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE registry_signal_names IN EXCLUSIVE MODE")
        self.reload(conn)
        next_id = max(self._names, default=-1) + 1
        new = {name: next_id + i for i, name in enumerate(sorted(names - self._ids.keys()))}
        if new:
            conn.execute(signal_names.insert(), [{"signal_id": i, "name": n} for n, i in new.items()])
        return {name: self._ids.get(name, new.get(name)) for name in names}


def unpack(values_blob: bytes | None, times_blob: bytes | None) -> tuple[array, array]:
    values, times = array("d"), array("q")
    if values_blob:
        values.frombytes(values_blob)
        times.frombytes(times_blob)
    return values, times


def merge(values: array, times: array, observations: list[Observation]) -> tuple[list[Observation], int]:
    """Apply observations in place: the latest by observe time becomes current.

    Returns the observations that go to history (superseded current values and
    late arrivals) and how many observations became current. An observation equal
    to the current one (same time and value) changes nothing, so re-sending is safe.
    """
    history: list[Observation] = []
    became_current = 0
    for signal_id, value, time_us in observations:
        if signal_id >= len(values):
            grow = signal_id + 1 - len(values)
            values.extend([NAN] * grow)
            times.extend([0] * grow)
        current_time = times[signal_id]
        has_current = not math.isnan(values[signal_id])
        if has_current and time_us == current_time and value == values[signal_id]:
            continue
        if has_current and time_us < current_time:
            history.append((signal_id, value, time_us))
            continue
        if has_current:
            history.append((signal_id, values[signal_id], current_time))
        values[signal_id] = value
        times[signal_id] = time_us
        became_current += 1
    return history, became_current
