"""One RecordTelemetry message as arrays: its shape checked, each event's fate decided, the kept events summed
per customer, event and day (and the distinct users per customer, event and day), all vectorised.

A message whose columns do not fit together is refused as a whole (INVALID_TELEMETRY); within a well-formed
message, each event that cannot be kept is rejected on its own, by position and reason.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from cvh.adoption.v1 import adoption_service_pb2 as pb
from services.adoption.catalog import EVENT_NAME
from services.common.errors import Violations
from services.common.validation import CUSTOMER_ID

MAX_EVENTS = 100_000
MAX_CUSTOMERS = 100_000
MAX_NAMES = 1_000
MAX_USERS = 100_000
MAX_USER_ID = 256
MAX_COUNT = 1_000_000
# How far ahead of the server's clock an event may be (clocks of senders drift).
FUTURE_SKEW_US = 5 * 60 * 1_000_000
DAY_US = 86_400 * 1_000_000
BATCH_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
INVALID = "INVALID_TELEMETRY"

UNKNOWN_CUSTOMER = pb.TELEMETRY_REJECTION_REASON_UNKNOWN_CUSTOMER
BAD_EVENT_NAME = pb.TELEMETRY_REJECTION_REASON_BAD_EVENT_NAME
FUTURE_TIME = pb.TELEMETRY_REJECTION_REASON_FUTURE_TIME
BEYOND_RETENTION = pb.TELEMETRY_REJECTION_REASON_BEYOND_RETENTION
BAD_COUNT = pb.TELEMETRY_REJECTION_REASON_BAD_COUNT


@dataclass
class Message:
    """A well-formed message's columns."""

    index: int
    batch_id: str
    customer_ids: list[str]
    event_names: list[str]
    customers: np.ndarray  # uint32 positions in customer_ids
    events: np.ndarray  # uint32 positions in event_names
    times: np.ndarray  # int64 microseconds
    counts: np.ndarray  # int64
    user_ids: list[str]
    users: np.ndarray | None  # int64 positions in user_ids, -1 for none; None when no event has a user

    @property
    def size(self) -> int:
        return len(self.times)


def _column(data: bytes, dtype: str, name: str, index: int, length: int | None, violations: Violations
            ) -> np.ndarray | None:
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        violations.add(name, f"message {index}: {len(data)} bytes is not a whole number of {width}-byte values",
                       INVALID)
        return None
    values = np.frombuffer(data, dtype)
    if length is not None and len(values) != length:
        violations.add(name, f"message {index}: {len(values):,} values for {length:,} events", INVALID)
        return None
    return values


def parse(request: pb.RecordTelemetryRequest, index: int) -> Message:
    """The message's columns, or INVALID_ARGUMENT (INVALID_TELEMETRY) naming each field that does not fit."""
    violations = Violations()
    if request.batch_id and not BATCH_ID.fullmatch(request.batch_id):
        violations.add("batch_id", f"message {index}: 1 to 128 characters of [A-Za-z0-9._:-]", INVALID)
    for name, table, cap in (("customer_ids", request.customer_ids, MAX_CUSTOMERS),
                             ("event_names", request.event_names, MAX_NAMES)):
        if not 1 <= len(table) <= cap:
            violations.add(name, f"message {index}: 1 to {cap:,} entries, got {len(table):,}", INVALID)
    if len(request.user_ids) > MAX_USERS:
        violations.add("user_ids", f"message {index}: at most {MAX_USERS:,}, got {len(request.user_ids):,}", INVALID)
    elif any(not 1 <= len(u) <= MAX_USER_ID for u in request.user_ids):
        violations.add("user_ids", f"message {index}: each 1 to {MAX_USER_ID} characters", INVALID)
    customers = _column(request.customer_indices, "<u4", "customer_indices", index, None, violations)
    size = len(customers) if customers is not None else None
    if size is not None and not 1 <= size <= MAX_EVENTS:
        violations.add("customer_indices", f"message {index}: 1 to {MAX_EVENTS:,} events, got {size:,}", INVALID)
        size = None
    events = _column(request.event_indices, "<u4", "event_indices", index, size, violations)
    times = _column(request.event_times, "<i8", "event_times", index, size, violations)
    counts = _column(request.counts, "<u4", "counts", index, size, violations) if request.counts else None
    users = _column(request.user_indices, "<i4", "user_indices", index, size, violations) \
        if request.user_indices else None
    for name, column, limit, low in (("customer_indices", customers, len(request.customer_ids), 0),
                                     ("event_indices", events, len(request.event_names), 0),
                                     ("user_indices", users, len(request.user_ids), -1)):
        if column is not None and len(column) and not (low <= column.min() and column.max() < limit):
            position = int(np.flatnonzero((column < low) | (column >= limit))[0])
            violations.add(name, f"message {index}: position {position} refers to entry {column[position]} of "
                                 f"a table of {limit:,}", INVALID)
    violations.raise_if_any("telemetry")
    return Message(index, request.batch_id, list(request.customer_ids), list(request.event_names),
                   customers, events, times.astype(np.int64),
                   counts.astype(np.int64) if counts is not None else np.ones(size, np.int64),
                   list(request.user_ids), users.astype(np.int64) if users is not None else None)


def reasons(message: Message, known_customers: np.ndarray, now_us: int, retention_days: int) -> np.ndarray:
    """Per event, 0 to keep it or the first TelemetryRejectionReason that applies. ``known_customers`` says,
    per entry of message.customer_ids, whether the registry knows it."""
    good_names = np.array([bool(EVENT_NAME.fullmatch(n)) for n in message.event_names])
    first_kept_us = first_kept_day(now_us, retention_days) * DAY_US
    checks = [(~known_customers[message.customers], UNKNOWN_CUSTOMER),
              (~good_names[message.events], BAD_EVENT_NAME),
              (message.times > now_us + FUTURE_SKEW_US, FUTURE_TIME),
              (message.times < first_kept_us, BEYOND_RETENTION),
              ((message.counts < 1) | (message.counts > MAX_COUNT), BAD_COUNT)]
    return np.select([mask for mask, _ in checks], [reason for _, reason in checks], 0).astype(np.int8)


def first_kept_day(now_us: int, retention_days: int) -> int:
    """The oldest day (days since 1970-01-01, UTC) within the retention: today and the retention_days - 1 before."""
    return now_us // DAY_US - retention_days + 1


def well_formed_customers(customer_ids: list[str]) -> np.ndarray:
    return np.array([bool(CUSTOMER_ID.fullmatch(c)) for c in customer_ids])


@dataclass
class Aggregates:
    """The kept events of a message summed: daily counts, and distinct users per customer, event and day; keys
    unique, sorted by day first."""

    customers: np.ndarray  # positions in the message's customer_ids
    events: np.ndarray  # positions in the message's event_names
    days: np.ndarray
    counts: np.ndarray
    user_customers: np.ndarray
    user_events: np.ndarray
    user_hashes: np.ndarray  # int64
    user_days: np.ndarray


def aggregate(message: Message, keep: np.ndarray) -> Aggregates:
    """Sums the kept events per (day, customer, event), and finds the distinct (day, customer, event, user)."""
    customers = message.customers[keep].astype(np.int64)
    events = message.events[keep].astype(np.int64)
    days = message.times[keep] // DAY_US
    n_events = max(len(message.event_names), 1)
    n_customers = max(len(message.customer_ids), 1)
    first_day = int(days.min()) if len(days) else 0
    # One int64 key per (day, customer, event): days of one message span at most the retention (<= 3,660),
    # customers <= 100,000, names <= 1,000: below 2^39.
    keys = ((days - first_day) * n_customers + customers) * n_events + events
    order = np.argsort(keys)
    unique, starts = _distinct(keys[order])
    counts = np.add.reduceat(message.counts[keep][order], starts) if len(starts) else np.empty(0, np.int64)
    day_customer, event = np.divmod(unique, n_events)
    day, customer = np.divmod(day_customer, n_customers)
    aggregates = Aggregates(customer, event, day + first_day, counts, *(np.empty(0, np.int64) for _ in range(4)))
    if message.users is not None:
        has_user = message.users[keep] >= 0
        n_users = max(len(message.user_ids), 1)
        # (day, customer, event) key times users <= 100,000: below 2^56.
        user_keys, _ = _distinct(np.sort(keys[has_user] * n_users + message.users[keep][has_user]))
        day_customer_event, user = np.divmod(user_keys, n_users)
        day_customer, aggregates.user_events = np.divmod(day_customer_event, n_events)
        day, aggregates.user_customers = np.divmod(day_customer, n_customers)
        aggregates.user_days = day + first_day
        aggregates.user_hashes = user_hashes(message.user_ids)[user]
    return aggregates


def _distinct(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of sorted keys and where each starts (sorting beats np.unique's hash table here)."""
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.empty(0, np.int64)
    return ordered[starts], starts


def user_hashes(user_ids: list[str]) -> np.ndarray:
    """A 64-bit hash (signed, as databases store it) per user id: BLAKE2b, stable across processes."""
    return np.array([int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little", signed=True)
                     for u in user_ids], dtype=np.int64)
