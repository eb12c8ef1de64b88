"""Customers and signal observations from CSV, JSON Lines or Parquet files, streamed into registry messages.

The format comes from the suffix (``.csv``; ``.jsonl``, ``.ndjson`` or ``.json`` for JSON Lines;
``.parquet``, or a folder of ``.parquet`` part files as ``cvh export`` writes) or is named explicitly
(``csv`` / ``jsonl`` / ``parquet``). Text files are UTF-8 (a byte-order mark is skipped) and are read
as a stream: at most one message's rows are held at a time (for Parquet, one row group).
Parquet rows are read as JSON Lines objects are, with the same rules and rejects: a null is "not
observed", a timestamp column is an observe_time, and a row's "line" is its 1-based row number across
the files in name order.

Customer files (``cvh import FILE``), one customer per CSV row or JSON line:

=================  ==========================================================================
column             meaning
=================  ==========================================================================
``customer_id``    required; 1 to 128 characters of ``[A-Za-z0-9._:-]``
``display_name``   optional, at most 256 characters
``parent_id``      the parent account's customer_id; empty for none. The parent may come later
                   in the file (or already be in the registry)
``role``           stakeholder role: ``impact_group``, ``end_user``, ``buyer``,
                   ``gatekeeper``, ``partner``, ``donor``, ``internal``; any case, with or
                   without the ``STAKEHOLDER_ROLE_`` prefix, ``-`` or space for ``_``;
                   empty means ``end_user``
``owner``          the front-line owner (e.g. an e-mail address), at most 256 characters
``observe_time``   when the row's signals were observed: RFC 3339 (``2026-11-01T09:30:00Z``;
                   no offset means UTC) or a date; empty means "now" at the server; at most
                   5 minutes ahead of now (the registry's allowance for clock skew)
``lifecycle_stage`` ``prospect``, ``onboarding``, ``active``, ``at_risk``, ``churned`` (any case,
                   with or without ``LIFECYCLE_STAGE_``); empty keeps the stored stage
                   (``active`` for a new customer)
``lifecycle_stage_time`` when the customer entered that stage (as ``observe_time``); empty
                   means now; read only when the stage changes
``team.<role>``    the customer's own members in a team role (``team.customer_success_manager``):
                   person ids (e-mail addresses) separated by ``;``. An empty cell (JSON ``null``)
                   clears the role; a file (or JSON line) without the column leaves it as it is.
                   ``team.owner`` is the ``owner`` (and wins over an ``owner`` column)
every other        a signal named by the column (``[a-z][a-z0-9_]{0,62}``, e.g.
column             ``annual_revenue``) holding a finite number; an empty cell (JSON ``null``)
                   means "not observed": the customer's current value is kept. Anything else
                   that is not a finite number (``NaN``, ``inf``, ``1e400``) is rejected
=================  ==========================================================================

The names of the first eight columns, and the ``team.`` prefix, are matched without regard to case. In
JSON Lines the same keys name the fields; signals may also be given as an object under ``"signals"``, and a numeric
``customer_id`` is read as its digits. In CSV a column without a name (as a trailing comma makes) is
ignored while its cells are empty. A CSV header without ``customer_id``, with a repeated column or with
a column that is neither a customer field, a ``team.<role>`` nor a signal name stops the import before
anything is sent (``InputError``).

Upserts replace what the registry holds: a file without a ``parent_id`` (or ``role``, ``owner``,
``display_name``) column imports every row without a parent (as ``end_user``, without an owner or
name). A customer_id that appears again in the file replaces its earlier row (the later row wins).

Observation times: a ``CustomerColumns`` message has one ``observe_time`` for all its rows. With
``CustomerFile.requests()``, the rows of a message that share a time (the most common one in it, or
none) travel as packed columns and its other rows in the same message's ``customers`` list, each
signal with its own time: per-row times cost a little speed and never split messages. With
``CustomerFile.chunks()`` (columns only, for ``CvhClient.import_columns``) a message is split into one
message per time instead. A row without signals has no time to keep and travels with any group.

Rows that cannot be sent (no or a malformed customer_id, a signal that is not a finite number, an
unknown role, a bad time, text too long, a CSV row with the wrong number of cells, a line that is not
a JSON object or not UTF-8) are not sent and are listed in ``CustomerFile.rejected`` as
:class:`RejectedRow`: the 1-based line the row starts on, its customer_id, the field (the file's column
name, or ``row``), the reason and the row's raw text.
The registry reports what it rejects (e.g. a parent that never arrives) as ``RowError`` with a
0-based position across the whole import; :meth:`CustomerFile.line_of` maps a position back to its
line and :meth:`CustomerFile.server_rejections` turns the errors into rejected rows.
:func:`write_rejects` writes rejected rows as CSV.

Signal files (``cvh signals record FILE``): columns ``customer_id``, ``signal``, ``value`` and an
optional ``observe_time`` (as above), one observation per row; ``SignalFile.batches`` groups them into
``RecordSignals`` requests of at most 10,000 observations, with the same rejection reporting.

Progress: ``bytes_read`` / ``total_bytes`` and ``rows_read`` on either reader, current after each
message the generators yield.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
from google.protobuf import timestamp_pb2

from clients.parquet import TEAM_PREFIX, ParquetError, ParquetRows
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as registry_pb
from wire import enums
from wire.columns import customer_columns

CUSTOMER_FIELDS = ("customer_id", "display_name", "parent_id", "role", "owner", "observe_time", "lifecycle_stage",
                   "lifecycle_stage_time")
SIGNAL_FIELDS = ("customer_id", "signal", "value", "observe_time")
MAX_ROWS_PER_MESSAGE = 10_000          # ImportCustomersRequest: customers + columns rows per message
MAX_OBSERVATIONS_PER_REQUEST = 10_000  # RecordSignalsRequest.observations
MAX_TEXT = 256
MAX_FUTURE_US = 5 * 60 * 1_000_000  # the registry's allowance for clock skew
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
ROLE_NAMES = tuple(enums.ROLE_NAMES.values())
STAGE_NAMES = tuple(enums.STAGE_NAMES.values())
TEAM_ROLE = re.compile(r"[a-z][a-z0-9_]{0,62}")
MAX_TEAM_MEMBERS = 16
_BAD_PERSON = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# The rules of a customer file as `cvh import --help` and the README state them (the module's notes above say
# the same at more length).
CUSTOMER_FILE_RULES = """\
A .csv or .jsonl/.ndjson/.json file (UTF-8), one customer per row or line, or a .parquet file or a
folder of them (as `cvh export --format parquet` writes). Columns (the first eight named in any case):
  customer_id    required: 1 to 128 characters of [A-Za-z0-9._:-]
  display_name   at most 256 characters
  parent_id      the parent account's customer_id; empty for none. The parent may come later in the
                 file, or be in the registry already
  role           impact_group, end_user (when empty), buyer, gatekeeper, partner, donor, internal; any
                 case, with or without STAKEHOLDER_ROLE_, '-' or ' ' for '_'
  owner          the front-line owner (e.g. an e-mail address), at most 256 characters
  observe_time   when the row's signals were observed: RFC 3339 (2026-11-01T09:30:00Z; no offset means
                 UTC) or a date; empty means now; at most 5 minutes ahead
  lifecycle_stage  prospect, onboarding, active, at_risk, churned; empty keeps the stored stage (active
                 for a new customer)
  lifecycle_stage_time  when it entered that stage (as observe_time); empty means now
  team.<role>    the customer's own members in a team role, e.g. team.customer_success_manager,
                 team.account_executive, team.executive_sponsor: person ids (e-mail addresses)
                 separated by ';', at most 16. An empty cell clears the role; a file without the
                 column leaves it unchanged. team.owner is the owner (it wins over an owner column)
  any other      a signal named by the column ([a-z][a-z0-9_]{0,62}, e.g. annual_revenue): a finite
                 number. An empty cell (JSON null) means "not observed" and keeps the current value;
                 anything else that is not a finite number (NaN, inf, 1e400) rejects the row
JSON Lines use the same keys; signals may also be an object under "signals". Parquet columns are read
as JSON Lines keys (null: not observed; a row's line is its row number). A header without
customer_id, with a column twice or with a column that is neither of the eight, a team.<role> nor a
signal name stops the import before anything is sent (exit 2).
An import upserts: a column the file lacks (parent_id, role, owner, display_name) is set empty on the
customers it updates; a customer_id given twice keeps its later row. Rows that cannot be read, and rows
the registry refuses (say, a parent that never arrives), go to the rejects file with their line,
customer_id, column and reason, and the command exits 1."""


@dataclass(frozen=True)
class RejectedRow:
    """A row that was not written, and why: its 1-based line (0 when unknown), the customer_id as read,
    the field at fault (the file's column name, or the registry's field path) and the raw row."""

    line: int
    customer_id: str
    field: str
    reason: str
    raw: str = ""


class InputError(ValueError):
    """A file the command line cannot read as asked (unknown format, a header it cannot use)."""


class BadRow(ValueError):
    """One row that cannot be sent: which field and why."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


def file_format(path: str | Path, explicit: str | None = None) -> str:
    """``csv``, ``jsonl`` or ``parquet``: ``explicit`` when given, else from the suffix (a folder: parquet)."""
    if explicit:
        if explicit not in ("csv", "jsonl", "parquet"):
            raise InputError(f"unknown format {explicit!r}: csv, jsonl or parquet")
        if explicit != "parquet" and Path(path).is_dir():
            raise InputError(f"{path} is a folder: only Parquet part files are read from a folder")
        return explicit
    if Path(path).is_dir():
        return "parquet"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"cannot tell the format of {path}: name it .csv, .jsonl, .ndjson or .parquet, "
                         f"or pass --format csv|jsonl|parquet")
    return FORMATS[suffix]


# -- reading records ------------------------------------------------------------------------------------


@dataclass
class _Record:
    line: int                       # 1-based line where the record starts
    cells: list[str] | dict | None  # CSV cells, a JSON object, or None when unreadable
    raw: str                        # the record's text as in the file, without the final line break
    problem: str = ""               # why it is unreadable


class _Source:
    """The records of a CSV, JSON Lines or Parquet file, read as a stream, counting bytes and lines."""

    def __init__(self, path: str | Path, fmt: str) -> None:
        self.path, self.format = Path(path), fmt
        self._parquet = None
        if fmt == "parquet":
            try:
                self._parquet = ParquetRows(self.path)
            except ParquetError as error:
                raise InputError(str(error)) from None
            self.total_bytes = self._parquet.total_bytes
        else:
            self.total_bytes = self.path.stat().st_size
        self._bytes_read = 0
        self.header: list[str] = []
        if fmt == "csv":
            for record in self._records():
                if record.cells is None:
                    raise InputError(f"{self.path}: cannot read the header on line {record.line}: {record.problem}")
                self.header = [cell.strip() for cell in record.cells]
                break
            else:
                raise InputError(f"{self.path}: the file is empty; it needs a header line naming the columns")

    @property
    def bytes_read(self) -> int:
        return self._parquet.bytes_read if self._parquet is not None else self._bytes_read

    def __iter__(self) -> Iterator[_Record]:
        if self._parquet is not None:
            yield from self._parquet_records(self._parquet)
            return
        records = self._records()
        if self.format == "csv":
            next(records, None)  # the header, checked in __init__
        yield from records

    @staticmethod
    def _parquet_records(rows: ParquetRows) -> Iterator[_Record]:
        try:
            for line, row in enumerate(rows, start=1):
                yield _Record(line, row, rows.raw(row))
        except ParquetError as error:  # a later part file that is not Parquet: stop, naming it
            raise InputError(str(error)) from None

    def _records(self) -> Iterator[_Record]:
        self._bytes_read = 0
        lines: list[str] = []
        state = {"line": 0, "bad_text": False}

        def read(handle) -> Iterator[str]:
            for raw in handle:
                self._bytes_read += len(raw)
                state["line"] += 1
                if state["line"] == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text, state["bad_text"] = raw.decode("utf-8", errors="replace"), True
                lines.append(text)
                yield text

        with open(self.path, "rb") as handle:
            source = read(handle)
            if self.format == "jsonl":
                for text in source:
                    lines.clear()
                    if not text.strip():
                        continue
                    raw = text.rstrip("\r\n")
                    if state["bad_text"]:
                        state["bad_text"] = False
                        yield _Record(state["line"], None, raw, "not UTF-8 text")
                        continue
                    try:
                        value = json.loads(text)
                    except ValueError as error:
                        yield _Record(state["line"], None, raw, f"not JSON: {error}")
                        continue
                    if not isinstance(value, dict):
                        yield _Record(state["line"], None, raw, "not a JSON object")
                        continue
                    yield _Record(state["line"], value, raw)
                return
            reader = csv.reader(source)
            while True:
                lines.clear()
                start = state["line"] + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    yield _Record(start, None, "".join(lines).rstrip("\r\n"), f"not CSV: {error}")
                    continue
                raw = "".join(lines).rstrip("\r\n")
                if state["bad_text"]:
                    state["bad_text"] = False
                    yield _Record(start, None, raw, "not UTF-8 text")
                    continue
                if not any(cell.strip() for cell in cells):
                    continue
                yield _Record(start, cells, raw)

    def raw_lines(self, wanted: set[int]) -> dict[int, str]:
        """The raw text of the records starting on the ``wanted`` lines (a second pass over the file)."""
        found: dict[int, str] = {}
        last = max(wanted, default=0)
        source = _Source(self.path, self.format)  # a reader of its own: progress stays put
        for record in (source._parquet_records(source._parquet) if source._parquet is not None else source._records()):
            if record.line > last:
                break
            if record.line in wanted:
                found[record.line] = record.raw
        return found


# -- checking values ------------------------------------------------------------------------------------


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, bool, float)):
        raise TypeError
    return str(value).strip()


def _field_text(fields: dict, name: str) -> str:
    try:
        return _text(fields.get(name))
    except TypeError:
        raise BadRow(name, "must be text") from None


def _number(value, name: str) -> float:
    """A signal value: NaN for "not observed" (an empty cell, JSON null); every other cell must be a finite
    number (NaN, inf and numbers beyond float64's range such as 1e400 are refused: one rule, the registry's)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    if isinstance(value, (bool, dict, list)):
        raise BadRow(name, f"{json.dumps(value)} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRow(name, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        text = value.strip() if isinstance(value, str) else repr(value)
        raise BadRow(name, f"{text} is not a finite number (beyond float64's ±1.8e308, or NaN/inf); leave the cell "
                           "empty for \"not observed\"")
    return number


def role_value(text: str) -> int:
    """A ``StakeholderRole`` value from its name ("buyer", "End user", "STAKEHOLDER_ROLE_BUYER");
    0 (the registry's default, end user) for an empty text; ``BadRow`` for anything else."""
    if not text:
        return 0
    return _role(text)


def stage_value(text: str) -> int:
    """A ``LifecycleStage`` value from its name ("churned", "At risk", "LIFECYCLE_STAGE_ACTIVE"); 0 (keep the
    stored stage) for an empty text; ``BadRow`` for anything else."""
    if not text:
        return 0
    return _stage(text)


@lru_cache(maxsize=64)
def _stage(text: str) -> int:
    name = text.strip().upper().replace(" ", "_").replace("-", "_")
    name = name if name.startswith("LIFECYCLE_STAGE_") else f"LIFECYCLE_STAGE_{name}"
    if name not in common_pb2.LifecycleStage.keys() or name.endswith("UNSPECIFIED"):
        raise BadRow("lifecycle_stage", f"unknown stage {text!r}; one of {', '.join(STAGE_NAMES)}")
    return common_pb2.LifecycleStage.Value(name)


@lru_cache(maxsize=256)
def _role(text: str) -> int:
    name = text.strip().upper().replace(" ", "_").replace("-", "_")
    name = name if name.startswith("STAKEHOLDER_ROLE_") else f"STAKEHOLDER_ROLE_{name}"
    if name not in common_pb2.StakeholderRole.keys() or name.endswith("UNSPECIFIED"):
        raise BadRow("role", f"unknown role {text!r}; one of {', '.join(ROLE_NAMES)}")
    return common_pb2.StakeholderRole.Value(name)


def _time_us(text: str, name: str, now_us: int) -> int | None:
    """Microseconds since the epoch of an RFC 3339 time (or ISO date); None when empty."""
    if not text:
        return None
    micros = _parse_time(text, name)
    if micros > now_us + MAX_FUTURE_US:
        raise BadRow(name, f"{text} is more than 5 minutes in the future (the allowance for clock skew)")
    return micros


@lru_cache(maxsize=1024)
def _parse_time(text: str, name: str) -> int:
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise BadRow(name, f"{text!r} is not an RFC 3339 time, e.g. 2026-11-01T09:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int((moment - _EPOCH).total_seconds()) * 1_000_000 + moment.microsecond


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def _customer_id(text: str, name: str = "customer_id") -> str:
    if not text:
        raise BadRow(name, "required")
    if not CUSTOMER_ID.fullmatch(text):
        raise BadRow(name, f"{text[:140]!r} is not a customer id: 1 to 128 characters of [A-Za-z0-9._:-]")
    return text


def _now_us() -> int:
    return time.time_ns() // 1000


# -- customers ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Customer:
    customer_id: str
    display_name: str
    parent_id: str
    role: int
    owner: str
    observed_us: int | None  # None: observed "now", at the server
    stage: int               # 0: keep the stored stage
    stage_time_us: int       # 0: entered "now", at the server
    names: tuple[str, ...]   # signal names; rows of one CSV file share one tuple
    values: list[float]      # one per name, NaN for "not observed"
    team: dict[str, str] = field(default_factory=dict)  # role -> persons joined by ";" ("" clears the role)

    def team_roles(self) -> tuple[str, ...]:
        return tuple(sorted(self.team))


def _customer(customer_id: str, display_name: str, parent_id: str, role: str, owner: str, observe_time: str,
              stage: str, stage_time: str, now_us: int) -> _Customer:
    """A customer's own fields, checked as the registry would; the signals are filled in by the caller."""
    _customer_id(customer_id)
    if len(display_name) > MAX_TEXT:
        raise BadRow("display_name", f"at most {MAX_TEXT} characters, got {len(display_name)}")
    if len(owner) > MAX_TEXT:
        raise BadRow("owner", f"at most {MAX_TEXT} characters, got {len(owner)}")
    if parent_id:
        _customer_id(parent_id, "parent_id")
        if parent_id == customer_id:
            raise BadRow("parent_id", "a customer cannot be its own parent")
    return _Customer(customer_id, display_name, parent_id, role_value(role), owner,
                     _time_us(observe_time, "observe_time", now_us), stage_value(stage),
                     _time_us(stage_time, "lifecycle_stage_time", now_us) or 0, (), [])


def team_role(column: str) -> str | None:
    """The role of a ``team.<role>`` column name (prefix in any case), or None for another column."""
    return column[len(TEAM_PREFIX):] if column[:len(TEAM_PREFIX)].lower() == TEAM_PREFIX else None


def team_cell(role: str, value) -> str:
    """A team cell (text "a@x;b@x", a JSON list of ids, or null) as the registry takes it: ids joined by ';',
    "" for none; ``BadRow`` naming the column when it holds something else."""
    column = TEAM_PREFIX + role
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        persons = [v.strip() for v in value]
    elif isinstance(value, str):
        persons = [v.strip() for v in value.split(";")] if value.strip() else []
    else:
        raise BadRow(column, "must be person ids separated by ';' (or a JSON list of them)")
    if any(not person for person in persons):
        raise BadRow(column, "an empty person id between ';'")
    for person in persons:
        if len(person) > MAX_TEXT or _BAD_PERSON.search(person):
            raise BadRow(column, f"person ids have at most {MAX_TEXT} characters and no control characters")
    if len(set(persons)) != len(persons):
        raise BadRow(column, "a person is given twice")
    if len(persons) > MAX_TEAM_MEMBERS:
        raise BadRow(column, f"at most {MAX_TEAM_MEMBERS} members in a role, got {len(persons)}")
    return ";".join(persons)


def _check_team_column(role: str, path: Path) -> None:
    if not TEAM_ROLE.fullmatch(role):
        raise InputError(f"{path}: column {TEAM_PREFIX + role!r}: a team role is 1 to 63 characters of [a-z0-9_], "
                         f"starting with a letter (e.g. {TEAM_PREFIX}customer_success_manager)")


class _CsvCustomers:
    """Customers from CSV cells, laid out by the header: the fixed columns and one column per signal."""

    def __init__(self, header: list[str], path: Path) -> None:
        self.width = len(header)
        fixed: dict[str, int] = {}
        signals: list[tuple[int, str]] = []
        self.team: list[tuple[int, str]] = []
        self.unnamed: list[int] = []
        bad, seen = [], {}
        for index, name in enumerate(header):
            if not name:
                self.unnamed.append(index)
                continue
            role = team_role(name)
            key = name.lower() if name.lower() in CUSTOMER_FIELDS else name if role is None else TEAM_PREFIX + role
            if key in seen:
                raise InputError(f"{path}: column {name!r} appears twice in the header (columns {seen[key] + 1} "
                                 f"and {index + 1})")
            seen[key] = index
            if key in CUSTOMER_FIELDS:
                fixed[key] = index
            elif role is not None:
                _check_team_column(role, path)
                self.team.append((index, role))
            elif SIGNAL_NAME.fullmatch(name):
                signals.append((index, name))
            else:
                bad.append(name)
        if "customer_id" not in fixed:
            raise InputError(f"{path}: the header has no customer_id column (it has: {', '.join(header)})")
        if bad:
            raise InputError(f"{path}: column{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} "
                             f"{'are' if len(bad) > 1 else 'is'} neither one of {', '.join(CUSTOMER_FIELDS)}, "
                             f"a team role (team.<role>) nor a signal name (a lower-case letter, then up to 62 "
                             f"of [a-z0-9_], e.g. annual_revenue); rename or remove {'them' if len(bad) > 1 else 'it'}")
        self.fixed = [fixed.get(name) for name in CUSTOMER_FIELDS]
        self.signals = signals
        self.signal_indexes = [index for index, _ in signals]
        self.names = tuple(name for _, name in signals)

    def customer_id(self, cells: list[str]) -> str:
        index = self.fixed[0]
        return cells[index].strip()[:128] if index < len(cells) else ""

    def parse(self, cells: list[str], now_us: int) -> _Customer:
        if len(cells) != self.width:
            raise BadRow("row", f"has {len(cells)} cells, the header has {self.width}")
        for index in self.unnamed:
            if cells[index].strip():
                raise BadRow("row", f"a value in column {index + 1}, which has no name in the header")
        row = _customer(*("" if index is None else cells[index].strip() for index in self.fixed), now_us)
        try:  # the common case in one pass; the slow one finds the cell at fault
            values = [float(cells[index]) if cells[index] else math.nan for index in self.signal_indexes]
            suspect = not all(math.isfinite(value) or not cells[index]
                              for value, index in zip(values, self.signal_indexes))
        except ValueError:
            suspect = True
        if suspect:
            values = [_number(cells[index], name) for index, name in self.signals]
        row.names, row.values = self.names, values
        if self.team:
            row.team = {role: team_cell(role, cells[index]) for index, role in self.team}
        return row


class _JsonCustomers:
    """Customers from JSON objects; rows with the same signal keys share one names tuple."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}

    @staticmethod
    def customer_id(obj) -> str:
        if not isinstance(obj, dict):
            return ""
        value = next((v for k, v in obj.items() if isinstance(k, str) and k.lower() == "customer_id"), "")
        return str(value).strip()[:128] if isinstance(value, (str, int)) else ""

    def parse(self, obj: dict, now_us: int) -> _Customer:
        fixed, signals, team = {}, [], {}
        for key, value in obj.items():
            lower = key.lower()
            if lower in CUSTOMER_FIELDS:
                fixed[lower] = value
            elif (role := team_role(key)) is not None:
                if not TEAM_ROLE.fullmatch(role):
                    raise BadRow(key, "a team role is 1 to 63 characters of [a-z0-9_], starting with a letter")
                team[role] = team_cell(role, value)
            elif key == "signals":
                if not isinstance(value, dict):
                    raise BadRow("signals", "must be an object of signal names to numbers")
                signals.extend(value.items())
            else:
                signals.append((key, value))
        if isinstance(fixed.get("customer_id"), int) and not isinstance(fixed["customer_id"], bool):
            fixed["customer_id"] = str(fixed["customer_id"])
        row = _customer(*(_field_text(fixed, name) for name in CUSTOMER_FIELDS), now_us)
        for name, _ in signals:
            if not SIGNAL_NAME.fullmatch(name):
                raise BadRow(name, "not a field of a customer nor a signal name (a lower-case letter, then up "
                                   "to 62 of [a-z0-9_])")
        names = tuple(name for name, _ in signals)
        if len(set(names)) != len(names):
            raise BadRow("signals", "a signal is given twice")
        if len(self._names) > 4096:
            self._names.clear()
        row.names = self._names.setdefault(names, names)
        row.values = [_number(value, name) for name, value in signals]
        row.team = team
        return row


class _Chunk:
    """The rows of one message being gathered; the signal matrix is built once, when it is sent."""

    def __init__(self) -> None:
        self.lines: list[int] = []
        self.rows: list[_Customer] = []
        self.ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, line: int, row: _Customer) -> None:
        self.lines.append(line)
        self.rows.append(row)
        self.ids.add(row.customer_id)

    def _matrix(self) -> tuple[list[str], np.ndarray]:
        """Signal names and the rows x names float64 matrix (NaN = not observed)."""
        columns: dict[str, int] = {}
        groups: dict[int, tuple[tuple[str, ...], list[int]]] = {}
        for i, row in enumerate(self.rows):
            group = groups.get(id(row.names))
            if group is None:
                group = groups[id(row.names)] = (row.names, [])
                for name in row.names:
                    columns.setdefault(name, len(columns))
            group[1].append(i)
        matrix = np.full((len(self.rows), len(columns)), np.nan)
        for names, members in groups.values():
            if names:
                block = np.array([self.rows[i].values for i in members], dtype=np.float64)
                matrix[np.ix_(members, [columns[name] for name in names])] = block
        return list(columns), matrix

    def message(self) -> tuple[registry_pb.ImportCustomersRequest, list[int]]:
        """The request and the line of each of its rows in position order (``customers``, then columns)."""
        names, matrix = self._matrix()
        observed = ~np.isnan(matrix).all(axis=1)
        times = Counter(row.observed_us for row, seen in zip(self.rows, observed) if seen)
        column_time = times.most_common(1)[0][0] if times else None
        # A column sets its role on every row: a row naming other roles (a JSON line) travels as a row.
        column_roles = Counter(row.team_roles() for row in self.rows).most_common(1)[0][0]
        request = registry_pb.ImportCustomersRequest()
        lines, keep = [], []
        for i, (row, line, seen) in enumerate(zip(self.rows, self.lines, observed)):
            if (not seen or row.observed_us == column_time) and row.team_roles() == column_roles:
                keep.append(i)
            else:
                request.customers.append(_customer_message(row, names, matrix[i]))
                lines.append(line)
        if keep:
            request.columns.CopyFrom(self._columns(keep, column_time, names, matrix))
            lines.extend(self.lines[i] for i in keep)
        return request, lines

    def column_messages(self) -> Iterator[tuple[registry_pb.CustomerColumns, list[int]]]:
        """The rows as packed columns only: one message per observation time, in order of first appearance."""
        names, matrix = self._matrix()
        observed = ~np.isnan(matrix).all(axis=1)
        groups: dict[tuple, list[int]] = {}  # (observation time, team roles) -> rows
        untimed: dict[tuple, list[int]] = {}
        for i, (row, seen) in enumerate(zip(self.rows, observed)):
            if seen:
                groups.setdefault((row.observed_us, row.team_roles()), []).append(i)
            else:
                untimed.setdefault(row.team_roles(), []).append(i)
        for roles, rows in untimed.items():  # rows without signals have no time to keep: they ride with any
            key = next((key for key in groups if key[1] == roles), (None, roles))
            groups[key] = sorted(groups.get(key, []) + rows)
        for (time_us, _), rows in groups.items():
            yield self._columns(rows, time_us, names, matrix), [self.lines[i] for i in rows]

    def _columns(self, keep: list[int], observed: int | None, names: list[str],
                 matrix: np.ndarray) -> registry_pb.CustomerColumns:
        rows = [self.rows[i] for i in keep]
        values = matrix[keep]
        present = ~np.isnan(values).all(axis=0)  # a signal none of these rows observed is not sent
        roles = np.fromiter((row.role for row in rows), np.uint8, len(rows))
        stages = np.fromiter((row.stage for row in rows), np.uint8, len(rows))
        stage_times = [row.stage_time_us for row in rows]
        columns = customer_columns(
            [row.customer_id for row in rows], [n for n, p in zip(names, present) if p], values[:, present],
            display_names=_column([row.display_name for row in rows]),
            parent_ids=_column([row.parent_id for row in rows]),
            roles=roles if roles.any() else (), owners=_column([row.owner for row in rows]))
        if stages.any():
            columns.lifecycle_stages = stages.tobytes()
        for role in rows[0].team_roles() if rows else ():
            columns.team_columns.add(role=role, persons=[row.team[role] for row in rows])
        if any(stage_times):
            columns.lifecycle_stage_times_us.extend(stage_times)
        if not present.any():  # the registry wants a 0 x 0 matrix when there are no signal columns
            columns.ClearField("signal_values")
        if observed is not None:
            columns.observe_time.CopyFrom(_timestamp(observed))
        return columns


def _column(texts: list[str]) -> list[str]:
    """A text column as sent: empty when every row is empty (the registry reads that as "" per row)."""
    return texts if any(texts) else []


def _customer_message(row: _Customer, names: list[str], values: np.ndarray) -> registry_pb.Customer:
    message = registry_pb.Customer(customer_id=row.customer_id, display_name=row.display_name,
                                   parent=f"customers/{row.parent_id}" if row.parent_id else "",
                                   stakeholder_role=row.role, owner=row.owner, lifecycle_stage=row.stage)
    if row.stage_time_us:
        message.lifecycle_stage_time.CopyFrom(_timestamp(row.stage_time_us))
    for role, persons in sorted(row.team.items()):
        message.team.extend(registry_pb.TeamMember(role=role, person=person) for person in persons.split(";"))
    stamp = _timestamp(row.observed_us) if row.observed_us is not None else None
    for name, value in zip(names, values.tolist()):
        if value == value:
            signal = message.signals[name]
            signal.value = value
            if stamp is not None:
                signal.observe_time.CopyFrom(stamp)
    return message


class _Progress:
    """Progress of a reader through its file, for progress bars."""

    _source: _Source

    @property
    def bytes_read(self) -> int:
        return self._source.bytes_read

    @property
    def total_bytes(self) -> int:
        return self._source.total_bytes


@dataclass
class CustomerFile(_Progress):
    """A customer file read as ``ImportCustomersRequest`` messages of at most ``chunk_rows`` rows.

    ``requests()`` yields ``ImportCustomersRequest`` messages, ``chunks()`` the packed ``CustomerColumns``
    alone (for ``CvhClient.import_columns``). As each message is yielded, ``rejected`` holds the rows
    refused here so far and ``line_of(position)`` maps the registry's row positions to lines. The header
    is checked when the object is made (``InputError``), so nothing fails half-way through a stream.
    """

    path: str | Path
    format: str | None = None
    chunk_rows: int = MAX_ROWS_PER_MESSAGE
    rejected: list[RejectedRow] = field(default_factory=list)
    _sent_lines: array = field(default_factory=lambda: array("q"), repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_rows <= MAX_ROWS_PER_MESSAGE:
            raise InputError(f"chunk_rows must be 1 to {MAX_ROWS_PER_MESSAGE:,}, got {self.chunk_rows}")
        self._source = _Source(self.path, file_format(self.path, self.format))
        self._reader = (_CsvCustomers(self._source.header, self._source.path) if self._source.format == "csv"
                        else _JsonCustomers())
        self.rows_read = 0

    @property
    def rows_sent(self) -> int:
        """Rows handed to the registry so far: the next message's first position."""
        return len(self._sent_lines)

    def line_of(self, position: int) -> int:
        """The 1-based line of the row the registry numbers ``position`` (0-based, whole import)."""
        return self._sent_lines[position]

    def requests(self, all_or_nothing: bool = False) -> Iterator[registry_pb.ImportCustomersRequest]:
        """The file as import messages (``all_or_nothing`` set on the first), rows in file order except
        that rows with a time of their own come first in their message (see the module's notes)."""
        first = True
        for chunk in self._chunks():
            request, lines = chunk.message()
            request.all_or_nothing = all_or_nothing and first
            first = False
            self._sent_lines.extend(lines)
            yield request

    def chunks(self) -> Iterator[registry_pb.CustomerColumns]:
        """The file as packed ``CustomerColumns`` only: a message of mixed observation times is split in
        one message per time, so per-row times make more, smaller messages than ``requests()``."""
        for chunk in self._chunks():
            for columns, lines in chunk.column_messages():
                self._sent_lines.extend(lines)
                yield columns

    def _chunks(self) -> Iterator[_Chunk]:
        """Rows gathered into chunks of at most ``chunk_rows``; a customer_id seen again starts a new one."""
        self.rejected.clear()
        self._sent_lines = array("q")
        self.rows_read = 0
        chunk = _Chunk()
        now = _now_us()
        for record in self._source:
            self.rows_read += 1
            row = self._parse(record, now)
            if row is None:
                continue
            if len(chunk) == self.chunk_rows or row.customer_id in chunk.ids:
                yield chunk
                chunk = _Chunk()
                now = _now_us()
            chunk.add(record.line, row)
        if len(chunk):
            yield chunk

    def _parse(self, record: _Record, now: int) -> _Customer | None:
        cells = record.cells
        try:
            if cells is None:
                raise BadRow("row", f"cannot be read: {record.problem}")
            return self._reader.parse(cells, now)
        except BadRow as bad:
            customer_id = self._reader.customer_id(cells) if cells is not None else ""
            self.rejected.append(RejectedRow(record.line, customer_id, bad.field, bad.reason, record.raw))
            return None

    def server_rejections(self, errors: Sequence[registry_pb.RowError]) -> list[RejectedRow]:
        """The registry's ``RowError`` list as rejected rows with their lines, raw text and the file's column
        at fault (``parent_id`` where the registry says ``parent``)."""
        lines = [self.line_of(e.position) if 0 <= e.position < self.rows_sent else 0 for e in errors]
        # The rows' text is read again rather than kept for every row sent: rejections are few, rows many.
        raw = self._source.raw_lines({line for line in lines if line})
        return [RejectedRow(line, e.customer_id, customer_column(e.field), e.reason, raw.get(line, ""))
                for line, e in zip(lines, errors)]


# The registry names fields as the proto does (``parent``, ``columns.parent_ids``, ``signals[nps].value``);
# a rejects file names the column of the file the user wrote.
_CUSTOMER_COLUMNS = {"parent": "parent_id", "parent_ids": "parent_id", "stakeholder_role": "role",
                     "stakeholder_roles": "role", "display_names": "display_name", "owners": "owner",
                     "customer_ids": "customer_id", "signal_values": "row", "signal_names": "row",
                     "lifecycle_stages": "lifecycle_stage", "lifecycle_stage_times_us": "lifecycle_stage_time"}
_SIGNAL_PATH = re.compile(r"signal(?:s|_names)\[([^\]]*)\](?:\.(value|observe_time))?")


def customer_column(field_path: str) -> str:
    """The customer file's column for a registry field path: ``parent`` -> ``parent_id``,
    ``signals[nps].value`` -> ``nps``, ``signals[nps].observe_time`` -> ``observe_time``."""
    path = field_path.removeprefix("columns.")
    signal = _SIGNAL_PATH.fullmatch(path)
    if signal:
        return "observe_time" if signal.group(2) == "observe_time" else signal.group(1)
    return _CUSTOMER_COLUMNS.get(path, path)


def signal_column(field_path: str) -> str:
    """The signal file's column for a registry field path within one observation: ``customer`` ->
    ``customer_id``, ``signals[nps].value`` -> ``value``, ``signals[nps]`` -> ``signal``."""
    signal = _SIGNAL_PATH.fullmatch(field_path)
    if signal:
        return signal.group(2) or "signal"
    return {"customer": "customer_id"}.get(field_path, field_path)


# -- signal observations --------------------------------------------------------------------------------


@dataclass
class SignalFile(_Progress):
    """A signal file read as batches for ``RecordSignals``: lists of (line, raw row, observation), one
    ``SignalObservations`` with one signal per row, at most ``batch`` per list. Rows refused here go to
    ``rejected``; ``signal_request(batch)`` makes the request."""

    path: str | Path
    format: str | None = None
    batch: int = 5_000
    rejected: list[RejectedRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= MAX_OBSERVATIONS_PER_REQUEST:
            raise InputError(f"batch must be 1 to {MAX_OBSERVATIONS_PER_REQUEST:,}, got {self.batch}")
        self._source = _Source(self.path, file_format(self.path, self.format))
        self._columns: dict[str, int] | None = None
        self.rows_read = 0
        if self._source.format == "csv":
            header = [name.lower() for name in self._source.header]
            missing = [name for name in SIGNAL_FIELDS[:3] if name not in header]
            unknown = [name for name in self._source.header if name and name.lower() not in SIGNAL_FIELDS]
            if missing or unknown or len(set(header)) != len(header):
                raise InputError(f"{self.path}: a signal file has the columns customer_id, signal, value and "
                                 f"optionally observe_time, once each; the header has: "
                                 f"{', '.join(self._source.header)}")
            self._columns = {name: header.index(name) for name in SIGNAL_FIELDS if name in header}

    def batches(self) -> Iterator[list[tuple[int, str, registry_pb.SignalObservations]]]:
        self.rejected.clear()
        self.rows_read = 0
        batch = []
        now = _now_us()
        for record in self._source:
            self.rows_read += 1
            fields = {}
            try:
                if record.cells is None:
                    raise BadRow("row", f"cannot be read: {record.problem}")
                fields = self._fields(record.cells)
                observation = _observation(fields, now)
            except BadRow as bad:
                customer_id = fields.get("customer_id") if isinstance(fields.get("customer_id"), (str, int)) else ""
                self.rejected.append(RejectedRow(record.line, str(customer_id).strip()[:128], bad.field,
                                                 bad.reason, record.raw))
                continue
            batch.append((record.line, record.raw, observation))
            if len(batch) == self.batch:
                yield batch
                batch = []
                now = _now_us()
        if batch:
            yield batch

    def _fields(self, cells: list[str] | dict) -> dict:
        if isinstance(cells, dict):
            return {key.lower() if isinstance(key, str) else key: value for key, value in cells.items()}
        if len(cells) != len(self._source.header):
            raise BadRow("row", f"has {len(cells)} cells, the header has {len(self._source.header)}")
        return {name: cells[index] for name, index in self._columns.items()}


def _observation(fields: dict, now_us: int) -> registry_pb.SignalObservations:
    customer_id = fields.get("customer_id")
    if isinstance(customer_id, int) and not isinstance(customer_id, bool):
        fields["customer_id"] = str(customer_id)
    customer_id = _customer_id(_field_text(fields, "customer_id"))
    signal = _field_text(fields, "signal")
    if not signal:
        raise BadRow("signal", "required")
    if not SIGNAL_NAME.fullmatch(signal):
        raise BadRow("signal", f"{signal[:70]!r} is not a signal name (a lower-case letter, then up to 62 of "
                               f"[a-z0-9_])")
    value = _number(fields.get("value"), "value")
    if math.isnan(value):
        raise BadRow("value", "required: a finite number")
    observed = registry_pb.SignalValue(value=value)
    micros = _time_us(_field_text(fields, "observe_time"), "observe_time", now_us)
    if micros is not None:
        observed.observe_time.CopyFrom(_timestamp(micros))
    return registry_pb.SignalObservations(customer=f"customers/{customer_id}", signals={signal: observed})


def signal_request(batch: Sequence[tuple[int, str, registry_pb.SignalObservations]]
                   ) -> registry_pb.RecordSignalsRequest:
    """The ``RecordSignals`` request of one batch; the registry's ``observations[i]`` is ``batch[i]``."""
    return registry_pb.RecordSignalsRequest(observations=[observation for _, _, observation in batch])


def write_rejects(path: str | Path, rejects: Iterable[RejectedRow]) -> None:
    """A CSV of rejected rows, by line: line, customer_id, field, reason and the row as it was in the file."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "customer_id", "field", "reason", "row"])
        for row in sorted(rejects, key=lambda r: r.line):
            writer.writerow([row.line, row.customer_id, row.field, row.reason, row.raw])
