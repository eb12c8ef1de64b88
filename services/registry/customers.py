"""A customer as the registry handles it, parsed and checked from its proto form and back."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from services.common.errors import Violations
from services.common.validation import CUSTOMER_ID, LABEL_KEY, SIGNAL_NAME, customer_id_from_name

MAX_LABELS = 32
MAX_SIGNALS = 64
MAX_TEXT = 256
MAX_FUTURE_US = 24 * 3600 * 1_000_000
VALID_ROLES = frozenset(common_pb2.StakeholderRole.values()) - {common_pb2.STAKEHOLDER_ROLE_UNSPECIFIED}


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
    # (signal name, value, observe_time_us)
    signals: list[tuple[str, float, int]] = field(default_factory=list)


def parse_signals(signals, prefix: str, violations: Violations, now: int) -> list[tuple[str, float, int]]:
    """Check a map<string, SignalValue>; returns (name, value, observe_time_us) triples."""
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
            ts = signal.observe_time
            if not 0 <= ts.nanos < 1_000_000_000:
                violations.add(f"{prefix}[{name}].observe_time", "nanos must be in 0..999999999")
                continue
            observed = ts.seconds * 1_000_000 + ts.nanos // 1000
            if observed > now + MAX_FUTURE_US:
                violations.add(f"{prefix}[{name}].observe_time", "is more than one day in the future")
                continue
        else:
            observed = now
        parsed.append((name, value, observed))
    return parsed


def parse_customer(msg: pb.Customer, violations: Violations, prefix: str, now: int) -> CustomerRow | None:
    """Check every field of a customer to create or import; None when something is wrong."""
    before = len(violations.items)
    customer_id = msg.customer_id
    if not CUSTOMER_ID.fullmatch(customer_id):
        violations.add(f"{prefix}customer_id", "required: 1 to 128 characters of [A-Za-z0-9._:-]")
    row = CustomerRow(customer_id=customer_id, display_name=msg.display_name, owner=msg.owner)
    parse_attributes(msg, row, violations, prefix)
    row.signals = parse_signals(msg.signals, f"{prefix}signals", violations, now)
    return row if len(violations.items) == before else None


def parse_attributes(msg: pb.Customer, row: CustomerRow, violations: Violations, prefix: str,
                     paths: frozenset[str] | None = None) -> None:
    """Check the updatable fields (all, or those in ``paths``) and copy them onto ``row``."""
    def wanted(path: str) -> bool:
        return paths is None or path in paths

    if wanted("display_name"):
        row.display_name = msg.display_name
        if len(msg.display_name) > MAX_TEXT:
            violations.add(f"{prefix}display_name", f"at most {MAX_TEXT} characters")
    if wanted("owner"):
        row.owner = msg.owner
        if len(msg.owner) > MAX_TEXT:
            violations.add(f"{prefix}owner", f"at most {MAX_TEXT} characters")
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
    if wanted("labels"):
        row.labels = dict(msg.labels)
        if len(row.labels) > MAX_LABELS:
            violations.add(f"{prefix}labels", f"at most {MAX_LABELS} labels, got {len(row.labels)}")
        for key, value in row.labels.items():
            if not LABEL_KEY.fullmatch(key):
                violations.add(f"{prefix}labels[{key}]", "keys are 1 to 63 characters of [a-z0-9_.-], starting with a letter")
            elif len(value) > MAX_TEXT:
                violations.add(f"{prefix}labels[{key}]", f"values are at most {MAX_TEXT} characters")


def etag_of(revision: int) -> str:
    return f'W/"{revision}"'


def revision_of_etag(etag: str) -> int | None:
    """The revision an etag stands for, or None when it is not one of ours."""
    if etag.startswith('W/"') and etag.endswith('"') and etag[3:-1].isdigit():
        return int(etag[3:-1])
    return None


def set_timestamp(ts, micros: int) -> None:
    ts.seconds, ts.nanos = divmod(micros, 1_000_000)
    ts.nanos *= 1000
