"""A customer as the registry handles it, parsed and checked from its proto form and back."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from services.common.errors import Violations
from services.common.validation import (
    CUSTOMER_ID, LABEL_KEY, SIGNAL_NAME, check_text, customer_id_from_name, timestamp_us,
)
from services.registry import teams

MAX_LABELS = 32
MAX_SIGNALS = 64
MAX_TEXT = 256
# Observation times may be this far ahead of the server's clock (clock skew), no further: a stamp in the
# future would keep later observations out of the current value until the clock caught up.
MAX_CLOCK_SKEW_US = 5 * 60 * 1_000_000
VALID_ROLES = frozenset(common_pb2.StakeholderRole.values()) - {common_pb2.STAKEHOLDER_ROLE_UNSPECIFIED}
VALID_STAGES = frozenset(common_pb2.LifecycleStage.values()) - {common_pb2.LIFECYCLE_STAGE_UNSPECIFIED}
ACTIVE = common_pb2.LIFECYCLE_STAGE_ACTIVE


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class CustomerRow:
    """A customer to write: the fields a caller sets, already checked."""

    customer_id: str
    display_name: str = ""
    parent_id: str | None = None
    stakeholder_role: int = common_pb2.STAKEHOLDER_ROLE_END_USER
    owner: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    # The stage to be in (0: keep the stored one, ACTIVE for a new customer) and when it was entered (None: now).
    lifecycle_stage: int = 0
    stage_time_us: int | None = None
    # The team roles the write sets (teams.Team: role -> members; [] clears) and display names it gives people.
    team: teams.Team = field(default_factory=dict)
    person_names: dict[str, str] = field(default_factory=dict)
    # Whether the write sets the role owner: to the team's owners when it names the role, else to the owner field
    # alone (teams.roles_set). A create or an import always does; an update, when it names the owner.
    owner_set: bool = True
    # (signal name, value, observe_time_us or None when no time was given)
    signals: list[tuple[str, float, int | None]] = field(default_factory=list)
    # Signals given as a row of a packed block instead: (block, row index).
    block: tuple["SignalBlock", int] | None = None

    def most_signals(self) -> int:
        """At most how many signals the row observes (without looking at a block's values)."""
        return len(self.block[0].names) if self.block else len(self.signals)

    def observed_names(self) -> set[str]:
        return {name for name, _, _ in self.observations()}

    def detach(self) -> None:
        """Keep a copy of this row's own signals rather than the whole block of its message, which a row held
        long (waiting for its parent) would otherwise keep in memory."""
        if self.block is not None:
            block, i = self.block
            self.block = (SignalBlock(block.names, block.values[i:i + 1].copy(), block.observe_time_us), 0)

    def observations(self) -> list[tuple[str, float, int | None]]:
        if self.block is None:
            return self.signals
        block, i = self.block
        return [(name, float(v), block.observe_time_us)
                for name, v in zip(block.names, block.values[i]) if v == v]


@dataclass(slots=True)
class SignalBlock:
    """Signals of many rows at once: a float64 matrix (NaN = not observed) and one observation time
    (None when none was given)."""

    names: list[str]
    values: np.ndarray
    observe_time_us: int | None

    def packed_rows(self, signal_ids: dict[str, int], now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: values and times laid out by signal id (the stored layout), and observations made."""
        columns = [signal_ids[name] for name in self.names]
        width = max(columns, default=-1) + 1
        values = np.full((len(self.values), width), np.nan)
        values[:, columns] = self.values
        observed = ~np.isnan(values)
        observe_time = now if self.observe_time_us is None else self.observe_time_us
        times = np.where(observed, observe_time, 0).astype(np.int64)
        return values, times, observed.sum(axis=1)


def restack(rows: list[CustomerRow]) -> None:
    """Gather rows detached from one block (CustomerRow.detach) into one block again, to be laid out at once."""
    groups: dict[tuple[int, int | None], list[CustomerRow]] = {}
    for row in rows:
        if row.block is not None:
            groups.setdefault((id(row.block[0].names), row.block[0].observe_time_us), []).append(row)
    for group in groups.values():
        first = group[0].block[0]
        block = SignalBlock(first.names, np.vstack([row.block[0].values[row.block[1]] for row in group]),
                            first.observe_time_us)
        for i, row in enumerate(group):
            row.block = (block, i)


def parse_signals(signals, prefix: str, violations: Violations, now: int) -> list[tuple[str, float, int | None]]:
    """Check a map<string, SignalValue>; returns (name, value, observe_time_us or None) triples."""
    if len(signals) > MAX_SIGNALS:
        violations.add(prefix, f"at most {MAX_SIGNALS} signals, got {len(signals)}")
        return []
    parsed = []
    for name, signal in signals.items():
        if not SIGNAL_NAME.fullmatch(name):
            violations.add(f"{prefix}[{name}]", "signal names are 1 to 63 characters of [a-z0-9_], starting with a letter")
            continue
        value = signal.value
        if not math.isfinite(value):
            violations.add(f"{prefix}[{name}].value", f"must be a finite number, got {value}")
            continue
        if signal.HasField("observe_time"):
            observed = timestamp_us(signal.observe_time, f"{prefix}[{name}].observe_time", violations)
            if observed is None:
                continue
            if observed > now + MAX_CLOCK_SKEW_US:
                violations.add(f"{prefix}[{name}].observe_time", ahead_of_clock(observed, now))
                continue
        else:
            observed = None
        parsed.append((name, value, observed))
    return parsed


def too_many_signals(customer_id: str, total: int) -> str:
    return f"customers/{customer_id} would have {total} signals, counting those it has; at most {MAX_SIGNALS}"


def ahead_of_clock(observed: int, now: int) -> str:
    return (f"is {(observed - now) / 1e6:,.0f} s ahead of the server's clock; "
            f"at most {MAX_CLOCK_SKEW_US // 60_000_000} minutes (clock skew) are allowed")


def parse_customer(msg: pb.Customer, violations: Violations, prefix: str, now: int) -> CustomerRow | None:
    """Check every field of a customer to create or import; None when something is wrong."""
    before = len(violations.items)
    customer_id = msg.customer_id
    if not CUSTOMER_ID.fullmatch(customer_id):
        violations.add(f"{prefix}customer_id", "required: 1 to 128 characters of [A-Za-z0-9._:-]")
    row = CustomerRow(customer_id=customer_id, display_name=msg.display_name, owner=msg.owner)
    parse_attributes(msg, row, violations, prefix, now=now)
    row.owner = teams.link_owner(row.team, row.owner)
    if msg.lifecycle_stage:
        parse_stage(msg, row, violations, prefix, now)
    row.signals = parse_signals(msg.signals, f"{prefix}signals", violations, now)
    return row if len(violations.items) == before else None


def parse_attributes(msg: pb.Customer, row: CustomerRow, violations: Violations, prefix: str,
                     paths: frozenset[str] | None = None, now: int | None = None) -> None:
    """Check the updatable fields (all, or those in ``paths``) and copy them onto ``row``."""
    def wanted(path: str) -> bool:
        return paths is None or path in paths

    if wanted("display_name"):
        row.display_name = msg.display_name
        check_text(msg.display_name, f"{prefix}display_name", MAX_TEXT, violations)
    if wanted("owner"):
        row.owner = msg.owner
        if msg.owner and (problem := teams.person_problem(msg.owner)):
            violations.add(f"{prefix}owner", f"the owner is the team's role owner: {problem}")
    if wanted("team"):
        row.team, row.person_names = teams.parse_members(msg.team, f"{prefix}team", violations,
                                                         now_us() if now is None else now, MAX_CLOCK_SKEW_US)
    if wanted("parent"):
        row.parent_id = None
        if msg.parent:
            row.parent_id = customer_id_from_name(msg.parent, f"{prefix}parent", violations)
            if row.parent_id is not None and row.parent_id == msg.customer_id:
                violations.add(f"{prefix}parent", "a customer cannot be its own parent")
    if wanted("stakeholder_role"):
        role = msg.stakeholder_role or common_pb2.STAKEHOLDER_ROLE_END_USER
        row.stakeholder_role = role
        if role not in VALID_ROLES:
            violations.add(f"{prefix}stakeholder_role", f"unknown role {role}")
    if paths is not None and "lifecycle_stage" in paths:
        if not msg.lifecycle_stage:
            violations.add(f"{prefix}lifecycle_stage", f"name the stage to enter: {stage_names()}")
        else:
            parse_stage(msg, row, violations, prefix, now_us())
    if wanted("labels"):
        row.labels = dict(msg.labels)
        if len(row.labels) > MAX_LABELS:
            violations.add(f"{prefix}labels", f"at most {MAX_LABELS} labels, got {len(row.labels)}")
        for key, value in row.labels.items():
            if not LABEL_KEY.fullmatch(key):
                violations.add(f"{prefix}labels[{key}]", "keys are 1 to 63 characters of [a-z0-9_.-], starting with a letter")
            else:
                check_text(value, f"{prefix}labels[{key}]", MAX_TEXT, violations)


def parse_stage(msg: pb.Customer, row: CustomerRow, violations: Violations, prefix: str, now: int) -> None:
    """Check a customer's lifecycle stage and the time it was entered, and copy them onto ``row``."""
    row.lifecycle_stage = msg.lifecycle_stage
    if msg.lifecycle_stage not in VALID_STAGES:
        violations.add(f"{prefix}lifecycle_stage", f"unknown stage {msg.lifecycle_stage}; one of {stage_names()}")
    if msg.HasField("lifecycle_stage_time"):
        row.stage_time_us = timestamp_us(msg.lifecycle_stage_time, f"{prefix}lifecycle_stage_time", violations)
        problem = stage_time_problem(row.stage_time_us, now)
        if problem:
            violations.add(f"{prefix}lifecycle_stage_time", problem)


def stage_time_problem(time_us: int | None, now: int) -> str | None:
    if time_us is not None and time_us < 0:
        return "must not be before 1970"
    if time_us is not None and time_us > now + MAX_CLOCK_SKEW_US:
        return ahead_of_clock(time_us, now)
    return None


def stage_names() -> str:
    return ", ".join(common_pb2.LifecycleStage.Name(stage) for stage in sorted(VALID_STAGES))


def etag_of(revision: int) -> str:
    return f'W/"{revision}"'


ETAG = re.compile(r'W/"([0-9]{1,18})"')


def revision_of_etag(etag: str) -> int | None:
    """The revision an etag stands for, or None when it is not one of ours (ASCII digits only: str.isdigit
    also takes "²", which int() refuses)."""
    match = ETAG.fullmatch(etag)
    return int(match.group(1)) if match else None


def set_timestamp(ts, micros: int) -> None:
    ts.seconds, ts.nanos = divmod(micros, 1_000_000)
    ts.nanos *= 1000


def parse_columns(columns: pb.CustomerColumns, first_position: int, now: int,
                  reject) -> list[tuple[int, CustomerRow]]:
    """Rows of a packed block as (position, row); bad rows go to ``reject(position, id, problems)``.

    Whole-block problems (a column of the wrong length) reject every row of the block.
    """
    n = len(columns.customer_ids)
    block_problems = []
    for name in ("display_names", "parent_ids", "owners"):
        if len(getattr(columns, name)) not in (0, n):
            block_problems.append((f"columns.{name}", f"must be empty or have one entry per row ({n})"))
    if len(columns.stakeholder_roles) not in (0, n):
        block_problems.append(("columns.stakeholder_roles", f"must be empty or have one byte per row ({n})"))
    if len(columns.lifecycle_stages) not in (0, n):
        block_problems.append(("columns.lifecycle_stages", f"must be empty or have one byte per row ({n})"))
    if len(columns.lifecycle_stage_times_us) not in (0, n):
        block_problems.append(("columns.lifecycle_stage_times_us", f"must be empty or have one entry per row ({n})"))
    block_problems += _team_column_problems(columns.team_columns, n)
    names = list(columns.signal_names)
    for name in names:
        if not SIGNAL_NAME.fullmatch(name):
            block_problems.append((f"columns.signal_names[{name}]", "not a signal name ([a-z][a-z0-9_]{0,62})"))
    if len(set(names)) != len(names):
        block_problems.append(("columns.signal_names", "names must not repeat"))
    matrix = columns.signal_values
    rows_expected = n if names else 0
    if (matrix.rows, matrix.columns, len(matrix.data)) != (rows_expected, len(names), 8 * rows_expected * len(names)):
        block_problems.append(("columns.signal_values", f"must be {rows_expected} x {len(names)} float64 values"))
    if len(names) > MAX_SIGNALS:
        block_problems.append(("columns.signal_names", f"at most {MAX_SIGNALS} signals (a customer's cap), got {len(names)}"))
    observed = None
    if columns.HasField("observe_time"):
        checked = Violations()
        observed = timestamp_us(columns.observe_time, "columns.observe_time", checked)
        block_problems += [(v.field, v.description) for v in checked.items]
        if observed is not None and observed > now + MAX_CLOCK_SKEW_US:
            block_problems.append(("columns.observe_time", ahead_of_clock(observed, now)))
    if block_problems:
        for i in range(n):
            reject(first_position + i, columns.customer_ids[i], block_problems)
        return []
    values = np.frombuffer(matrix.data, "<f8").reshape(n, len(names)) if names else np.empty((n, 0))
    block = SignalBlock(names, values, observed)
    ids = list(columns.customer_ids)
    display_names = list(columns.display_names) or [""] * n
    parents = list(columns.parent_ids) or [""] * n
    owners = list(columns.owners) or [""] * n
    roles = np.frombuffer(columns.stakeholder_roles, np.uint8) if columns.stakeholder_roles else \
        np.full(n, common_pb2.STAKEHOLDER_ROLE_END_USER, np.uint8)
    roles = np.where(roles == 0, common_pb2.STAKEHOLDER_ROLE_END_USER, roles)
    stages = np.frombuffer(columns.lifecycle_stages, np.uint8) if columns.lifecycle_stages else np.zeros(n, np.uint8)
    stage_times = np.asarray(columns.lifecycle_stage_times_us, np.int64) if columns.lifecycle_stage_times_us \
        else np.zeros(n, np.int64)
    # Whole columns are checked in one pass each; only a block with a bad row is examined row by row.
    suspect = _all_match(CUSTOMER_ID, ids) and _all_match(PARENT_OR_EMPTY, parents)
    suspect = not suspect or max(map(len, display_names), default=0) > MAX_TEXT \
        or max(map(len, owners), default=0) > MAX_TEXT or "\x00" in "".join(display_names) \
        or teams.may_hold_bad_persons("".join(owners)) \
        or not np.isin(roles, list(VALID_ROLES)).all() \
        or not np.isin(stages, [0, *VALID_STAGES]).all() or (stage_times < 0).any() \
        or (stage_times > now + MAX_CLOCK_SKEW_US).any() \
        or np.isinf(values).any() or any(p == c for p, c in zip(parents, ids) if p)
    roles, stages, stage_times = roles.tolist(), stages.tolist(), stage_times.tolist()
    team_cells = [(column.role, column.persons) for column in columns.team_columns]
    rows = []
    for i, customer_id in enumerate(ids):
        problems = []
        if suspect:
            problems = _row_problems(customer_id, display_names[i], parents[i], roles[i], owners[i],
                                     values[i], names)
            problems += _stage_problems(stages[i], stage_times[i], now)
        team = {}
        for role, cells in team_cells:
            team[role], problem = teams.split_persons(cells[i])
            if problem:
                problems.append((f"team.{role}", problem))
        if problems:
            reject(first_position + i, customer_id, problems)
            continue
        row = CustomerRow(customer_id, display_names[i], parents[i] or None, roles[i], owners[i], block=(block, i),
                          lifecycle_stage=stages[i], stage_time_us=stage_times[i] or None, team=team)
        if team_cells:  # without, the owners column alone names each owner
            row.owner = teams.link_owner(team, row.owner)
        rows.append((first_position + i, row))
    return rows


def _team_column_problems(team_columns, n: int) -> list[tuple[str, str]]:
    """Problems of a block's team columns as a whole (each rejects every row of the block)."""
    problems = []
    if len(team_columns) > teams.MAX_ROLES:
        problems.append(("columns.team_columns", f"at most {teams.MAX_ROLES} roles, got {len(team_columns)}"))
    seen = set()
    for j, column in enumerate(team_columns):
        if problem := teams.role_problem(column.role):
            problems.append((f"columns.team_columns[{j}].role", problem))
        elif column.role in seen:
            problems.append((f"columns.team_columns[{j}].role", f"role {column.role} has two columns"))
        seen.add(column.role)
        if len(column.persons) != n:
            problems.append((f"columns.team_columns[{j}].persons", f"must have one entry per row ({n})"))
    return problems


PARENT_OR_EMPTY = re.compile(r"[A-Za-z0-9._:-]{0,128}")


def _all_match(pattern: re.Pattern, texts: list[str]) -> bool:
    """Whether every text fully matches ``pattern``, checked in one regex pass over the joined column."""
    joined = re.compile(rf"(?:(?:{pattern.pattern})\n)*")
    text = "".join(t + "\n" for t in texts)
    # A text holding a newline would pass as two: count them (ids are stored newline-separated).
    return text.count("\n") == len(texts) and joined.fullmatch(text) is not None


def _stage_problems(stage: int, time_us: int, now: int) -> list[tuple[str, str]]:
    problems = []
    if stage and stage not in VALID_STAGES:
        problems.append(("lifecycle_stage", f"unknown stage {stage}; one of {stage_names()}"))
    if problem := stage_time_problem(time_us, now):
        problems.append(("lifecycle_stage_time", problem))
    return problems


def _row_problems(customer_id: str, display_name: str, parent: str, role: int, owner: str,
                  values: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    problems = []
    if not CUSTOMER_ID.fullmatch(customer_id):
        problems.append(("customer_id", "required: 1 to 128 characters of [A-Za-z0-9._:-]"))
    if parent and (not CUSTOMER_ID.fullmatch(parent) or parent == customer_id):
        problems.append(("parent", "must be another customer's id (1 to 128 characters of [A-Za-z0-9._:-])"))
    if role not in VALID_ROLES:
        problems.append(("stakeholder_role", f"unknown role {role}"))
    checked = Violations()
    check_text(display_name, "display_name", MAX_TEXT, checked)
    problems += [(v.field, v.description) for v in checked.items]
    if owner and (problem := teams.person_problem(owner)):
        problems.append(("owner", f"the owner is the team's role owner: {problem}"))
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        problems.append((f"signals[{names[infinite[0]]}].value", "must be a finite number or NaN (not observed)"))
    return problems
