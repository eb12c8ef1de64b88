"""Customers and signal observations from CSV or JSON Lines files, streamed into import messages.

Customer files (``cvh import``), one customer per row or line:

=================  ==========================================================
column             meaning
=================  ==========================================================
``customer_id``    required; 1 to 128 characters of ``[A-Za-z0-9._:-]``
``display_name``   optional
``parent_id``      the parent account's customer_id; empty for none
``role``           stakeholder role: ``impact_group``, ``end_user`` (default),
                   ``buyer``, ``gatekeeper``, ``partner``, ``donor``,
                   ``internal`` (any case, ``STAKEHOLDER_ROLE_`` prefix allowed)
``owner``          the account owner
``observe_time``   when the signals were observed, RFC 3339; empty means now
every other        a signal named by the column (``[a-z][a-z0-9_]{0,62}``),
column             a number; an empty cell means "not observed"
=================  ==========================================================

In JSON Lines files the same keys name the fields; signals may also be given
as an object under ``"signals"``. Rows that cannot be read (no id, a signal
that is not a number, an unknown role, a bad time) are not sent and are
reported with their line; the registry reports the rest of what it rejects
by position, which :meth:`CustomerFile.line_of` maps back to the line.

Signal files (``cvh signals record``): ``customer_id``, ``signal``,
``value`` and an optional ``observe_time``, one observation per row.
"""

from __future__ import annotations

import csv
import json
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from google.protobuf import timestamp_pb2

from clients.columns import customer_columns
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as registry_pb

CUSTOMER_FIELDS = ("customer_id", "display_name", "parent_id", "role", "owner", "observe_time")
SIGNAL_FIELDS = ("customer_id", "signal", "value", "observe_time")
MAX_ROWS_PER_MESSAGE = 10_000
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class RejectedRow:
    """A row that was not written, and why."""

    line: int
    customer_id: str
    field: str
    reason: str
    raw: str = ""


class InputError(ValueError):
    """A file the command line cannot read as asked."""


class BadRow(ValueError):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


def file_format(path: str | Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"cannot tell the format of {path}: name it .csv or .jsonl, or pass --format csv|jsonl")
    return FORMATS[suffix]


class _Rows:
    """(line, fields, raw text) of each row of a CSV or JSON Lines file, counting the bytes read."""

    def __init__(self, path: str | Path, fmt: str) -> None:
        self.path, self.format = Path(path), fmt
        self.bytes_read = 0
        self.total_bytes = self.path.stat().st_size

    def _lines(self, handle) -> Iterator[str]:
        for raw in handle:
            self.bytes_read += len(raw)
            yield raw.decode("utf-8-sig" if self.bytes_read == len(raw) else "utf-8")

    def __iter__(self) -> Iterator[tuple[int, dict | None, str]]:
        with open(self.path, "rb") as handle:
            lines = self._lines(handle)
            if self.format == "csv":
                yield from self._csv(lines)
            else:
                yield from self._jsonl(lines)

    @staticmethod
    def _csv(lines) -> Iterator[tuple[int, dict | None, str]]:
        reader = csv.reader(lines)
        header = [name.strip() for name in next(reader, [])]
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            raw = ",".join(cells)
            if len(cells) != len(header):
                yield reader.line_num, None, raw
                continue
            yield reader.line_num, dict(zip(header, cells)), raw

    @staticmethod
    def _jsonl(lines) -> Iterator[tuple[int, dict | None, str]]:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except ValueError:
                fields = None
            yield number, fields if isinstance(fields, dict) else None, line.rstrip("\n")


def _text(fields: dict, name: str) -> str:
    value = fields.get(name)
    return "" if value is None else str(value).strip()


def _number(value, name: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    if isinstance(value, bool):
        raise BadRow(name, "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRow(name, f"{value!r} is not a number") from None
    if math.isinf(number):
        raise BadRow(name, "must be finite")
    return number


def _role(text: str) -> int:
    if not text:
        return 0
    name = text.strip().upper().replace(" ", "_").replace("-", "_")
    name = name if name.startswith("STAKEHOLDER_ROLE_") else f"STAKEHOLDER_ROLE_{name}"
    if name not in common_pb2.StakeholderRole.keys() or name.endswith("UNSPECIFIED"):
        words = ", ".join(k.removeprefix("STAKEHOLDER_ROLE_").lower() for k in common_pb2.StakeholderRole.keys()[1:])
        raise BadRow("role", f"unknown role {text!r}; one of {words}")
    return common_pb2.StakeholderRole.Value(name)


def _time(text: str, name: str = "observe_time") -> timestamp_pb2.Timestamp | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRow(name, f"{text!r} is not an RFC 3339 time, e.g. 2026-11-01T09:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@dataclass
class _Customer:
    line: int
    customer_id: str
    display_name: str
    parent_id: str
    role: int
    owner: str
    observe_time: str
    signals: dict[str, float]


def _customer(line: int, fields: dict) -> _Customer:
    customer_id = _text(fields, "customer_id")
    if not customer_id:
        raise BadRow("customer_id", "required")
    signals = {name: value for name, value in fields.items() if name not in CUSTOMER_FIELDS and name != "signals"}
    if isinstance(fields.get("signals"), dict):
        signals.update(fields["signals"])
    values = {name: _number(value, name) for name, value in signals.items()}
    observe_time = _text(fields, "observe_time")
    _time(observe_time)
    return _Customer(line, customer_id, _text(fields, "display_name"), _text(fields, "parent_id"),
                     _role(_text(fields, "role")), _text(fields, "owner"), observe_time, values)


@dataclass
class CustomerFile:
    """Reads a customer file as ``CustomerColumns`` messages of at most ``chunk_rows`` rows.

    Rows are sent in file order; a message ends early when the observation time changes (one time per
    message). ``rejected`` collects rows refused here; ``line_of(position)`` maps the registry's row
    positions back to lines.
    """

    path: str | Path
    format: str | None = None
    chunk_rows: int = MAX_ROWS_PER_MESSAGE
    rejected: list[RejectedRow] = field(default_factory=list)
    _sent_lines: array = field(default_factory=lambda: array("q"))

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_rows <= MAX_ROWS_PER_MESSAGE:
            raise InputError(f"chunk_rows must be 1 to {MAX_ROWS_PER_MESSAGE:,}")
        self._rows = _Rows(self.path, file_format(self.path, self.format))

    @property
    def bytes_read(self) -> int:
        return self._rows.bytes_read

    @property
    def total_bytes(self) -> int:
        return self._rows.total_bytes

    @property
    def rows_sent(self) -> int:
        return len(self._sent_lines)

    def line_of(self, position: int) -> int:
        return self._sent_lines[position]

    def chunks(self) -> Iterator[registry_pb.CustomerColumns]:
        pending: list[_Customer] = []
        for line, fields, raw in self._rows:
            if fields is None:
                self.rejected.append(RejectedRow(line, "", "row", "cannot be read: wrong number of cells or not a "
                                                 "JSON object", raw))
                continue
            try:
                customer = _customer(line, fields)
            except BadRow as bad:
                self.rejected.append(RejectedRow(line, _text(fields, "customer_id"), bad.field, bad.reason, raw))
                continue
            if pending and (len(pending) == self.chunk_rows or customer.observe_time != pending[0].observe_time):
                yield self._message(pending)
                pending = []
            pending.append(customer)
        if pending:
            yield self._message(pending)

    def _message(self, rows: list[_Customer]) -> registry_pb.CustomerColumns:
        names = list(dict.fromkeys(name for row in rows for name in row.signals))
        values = np.full((len(rows), len(names)), np.nan)
        column = {name: j for j, name in enumerate(names)}
        for i, row in enumerate(rows):
            for name, value in row.signals.items():
                values[i, column[name]] = value
        self._sent_lines.extend(row.line for row in rows)
        message = customer_columns(
            [r.customer_id for r in rows], names, values, display_names=[r.display_name for r in rows],
            parent_ids=[r.parent_id for r in rows], roles=[r.role for r in rows], owners=[r.owner for r in rows])
        observed = _time(rows[0].observe_time)
        if observed is not None:
            message.observe_time.CopyFrom(observed)
        return message

    def server_rejections(self, errors) -> list[RejectedRow]:
        """The registry's ``RowError`` list as rejected rows with their lines."""
        lines = [self.line_of(e.position) if 0 <= e.position < self.rows_sent else 0 for e in errors]
        # The rows' text is read again rather than kept for every row sent: rejections are few, rows many.
        wanted = set(lines)
        raw = {line: text for line, _, text in _Rows(self.path, self._rows.format) if line in wanted}
        return [RejectedRow(line, e.customer_id, e.field, e.reason, raw.get(line, ""))
                for line, e in zip(lines, errors)]


@dataclass
class SignalFile:
    """Reads a signal file as ``RecordSignalsRequest`` observations, ``batch`` observations per request."""

    path: str | Path
    format: str | None = None
    batch: int = 5_000
    rejected: list[RejectedRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rows = _Rows(self.path, file_format(self.path, self.format))

    @property
    def bytes_read(self) -> int:
        return self._rows.bytes_read

    @property
    def total_bytes(self) -> int:
        return self._rows.total_bytes

    def batches(self) -> Iterator[list[tuple[int, str, registry_pb.SignalObservations]]]:
        """Lists of (line, raw row, one observation of one customer)."""
        batch = []
        for line, fields, raw in self._rows:
            try:
                if fields is None:
                    raise BadRow("row", "cannot be read: wrong number of cells or not a JSON object")
                observation = self._observation(fields)
            except BadRow as bad:
                self.rejected.append(RejectedRow(line, _text(fields or {}, "customer_id"), bad.field, bad.reason, raw))
                continue
            batch.append((line, raw, observation))
            if len(batch) == self.batch:
                yield batch
                batch = []
        if batch:
            yield batch

    @staticmethod
    def _observation(fields: dict) -> registry_pb.SignalObservations:
        customer_id, signal = _text(fields, "customer_id"), _text(fields, "signal")
        if not customer_id:
            raise BadRow("customer_id", "required")
        if not signal:
            raise BadRow("signal", "required")
        value = _number(fields.get("value"), "value")
        if math.isnan(value):
            raise BadRow("value", "required")
        observed = registry_pb.SignalValue(value=value)
        stamp = _time(_text(fields, "observe_time"))
        if stamp is not None:
            observed.observe_time.CopyFrom(stamp)
        return registry_pb.SignalObservations(customer=f"customers/{customer_id}", signals={signal: observed})


def write_rejects(path: str | Path, rejects: list[RejectedRow]) -> None:
    """A CSV of rejected rows: line, customer_id, field, reason and the row as it was in the file."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "customer_id", "field", "reason", "row"])
        for row in sorted(rejects, key=lambda r: r.line):
            writer.writerow([row.line, row.customer_id, row.field, row.reason, row.raw])
