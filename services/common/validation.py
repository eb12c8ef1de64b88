"""Checks of identifiers, resource names and paging arguments, shared by every servicer."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re

from services.common.errors import Violations, invalid_argument

CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
SLUG = re.compile(r"[a-z][a-z0-9-]{0,62}")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Largest position an offset page token may hold (a signed 64-bit OFFSET with room to add a page).
MAX_OFFSET = 2**62
INVALID_CUSTOMER_NAME = "INVALID_CUSTOMER_NAME"


def customer_id_from_name(name: str, field_path: str, violations: Violations | None = None) -> str | None:
    """``customers/{id}``, or the bare id (it holds no '/'), -> id; records (or raises) a violation naming
    field_path, with the reason INVALID_CUSTOMER_NAME."""
    customer_id = name.removeprefix("customers/")
    problem = None
    if not name:
        problem = "required: customers/{customer_id} (or the bare customer_id)"
    elif "/" in customer_id:
        problem = f"{name!r} is neither customers/{{customer_id}} nor a customer_id"
    elif not CUSTOMER_ID.fullmatch(customer_id):
        problem = "customer_id must be 1 to 128 characters of [A-Za-z0-9._:-]"
    if problem is None:
        return customer_id
    if violations is None:
        raise invalid_argument(field_path, problem, INVALID_CUSTOMER_NAME)
    violations.add(field_path, problem, INVALID_CUSTOMER_NAME)
    return None


def check_text(value: str, field_path: str, max_len: int, violations: Violations) -> bool:
    """Free text the services store or filter on: at most ``max_len`` characters and no NUL (which
    PostgreSQL text cannot hold). Records a violation and returns False when ``value`` is not such text."""
    if len(value) > max_len:
        violations.add(field_path, f"at most {max_len} characters, got {len(value)}")
        return False
    if "\x00" in value:
        violations.add(field_path, "must not contain NUL (U+0000) characters")
        return False
    return True


# The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799


def timestamp_us(ts, field_path: str, violations: Violations) -> int | None:
    """A google.protobuf.Timestamp as microseconds since the epoch; None (and a violation) when it is
    outside the range a Timestamp may hold or its nanos are not 0..999,999,999."""
    if not 0 <= ts.nanos < 1_000_000_000:
        violations.add(field_path, "nanos must be in 0..999999999")
        return None
    if not MIN_TIMESTAMP_SECONDS <= ts.seconds <= MAX_TIMESTAMP_SECONDS:
        violations.add(field_path, "must be between 0001-01-01 and 9999-12-31")
        return None
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def check_finite(value: float, field_path: str, violations: Violations) -> None:
    if not math.isfinite(value):
        violations.add(field_path, f"must be a finite number, got {value}")


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """AIP-158: 0 -> default, above max -> max, negative -> INVALID_ARGUMENT."""
    if requested < 0:
        raise invalid_argument("page_size", "must not be negative")
    return default if requested == 0 else min(requested, maximum)


def _filter_hash(filters: dict) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode_page_token(position, filters: dict) -> str:
    """An opaque token holding where the next page starts and which filters it belongs to."""
    payload = json.dumps({"p": position, "f": _filter_hash(filters)}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_page_token(token: str, filters: dict):
    """Position stored in the token, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, filter_hash = payload["p"], payload["f"]
    except (ValueError, KeyError, TypeError):
        raise invalid_argument("page_token", "not a token returned by this list call") from None
    if filter_hash != _filter_hash(filters):
        raise invalid_argument("page_token", "was issued for other filters; send the same filters or start over")
    return position


def decode_offset_token(token: str, filters: dict) -> int:
    """The offset a token of an offset-paged list holds (0 for the first page)."""
    offset = decode_page_token(token, filters) or 0
    # Tokens are opaque, not signed: a made-up one may hold anything, e.g. an offset no database can take.
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise invalid_argument("page_token", "not a token returned by this list call")
    return offset
