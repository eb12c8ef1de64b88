"""Signal catalog (name <-> small integer id) and the packed per-customer signal arrays."""

from __future__ import annotations

import math
import threading
from array import array
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.registry.tables import signal_names

NAN = float("nan")
# One observation: (signal_id, value, observe_time_us); a time of None means none was given (now).
Observation = tuple[int, float, int | None]


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

    def current_ids(self, conn: Connection, names: set[str]) -> dict[str, int | None]:
        """Ids of ``names`` (None for a name that has none yet), reading the catalog again when the cache lacks
        some: another writer may have named them since."""
        if not names <= self._ids.keys():
            self.reload(conn)
        return {name: self._ids.get(name) for name in names}

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


@dataclass
class Merged:
    """What merging observations into a customer's current signals did."""

    # Superseded current values and late arrivals, to keep as history.
    history: list[Observation] = field(default_factory=list)
    # Observations that became their signal's current value.
    current: int = 0
    # Observations equal to the current value: nothing to write.
    unchanged: int = 0


def merge(values: array, times: array, observations: list[Observation], now: int) -> Merged:
    """Apply observations in place: the latest by observe time becomes current.

    An observation equal to the current one changes nothing, so re-sending is safe: the same time and
    value, or the same value with no time given (``None``; otherwise it means ``now``), so that a re-sent
    import without observation times does not move every unchanged value to history.
    """
    merged = Merged()
    for signal_id, value, time_us in observations:
        if signal_id >= len(values):
            grow = signal_id + 1 - len(values)
            values.extend([NAN] * grow)
            times.extend([0] * grow)
        current_time = times[signal_id]
        has_current = not math.isnan(values[signal_id])
        if has_current and value == values[signal_id] and time_us in (None, current_time):
            merged.unchanged += 1
            continue
        if time_us is None:
            time_us = now
        if has_current and time_us < current_time:
            merged.history.append((signal_id, value, time_us))
            continue
        if has_current:
            merged.history.append((signal_id, values[signal_id], current_time))
        values[signal_id] = value
        times[signal_id] = time_us
        merged.current += 1
    return merged


def count_after(values: array, signal_ids: list[int | None]) -> int:
    """How many signals a customer with current ``values`` has once the signals of ``signal_ids`` (one per
    distinct name; None for a name that has no id yet) are observed."""
    present = {i for i, value in enumerate(values) if value == value}  # not NaN
    return len(present) + sum(1 for i in signal_ids if i is None or i not in present)
