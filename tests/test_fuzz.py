"""Bad input, tried at scale: every RPC of the four services gets requests built by hypothesis from the
protobuf descriptors (odd and very long strings, NUL, huge and negative numbers, NaN and infinities, empty
and oversized repeated fields, unknown enum values, nested messages, Timestamps, FieldMasks). No answer may
be INTERNAL or UNKNOWN (nor an error too large for a client to receive), and the server must answer health
checks after every batch.

A batch is usually one valid-looking request and MUTANTS copies of it, each with a different field (at any
depth) made odd: that is what reaches the checks deep in a service. Sometimes it is one request whose every
field is odd. One real server (all services, one process) per database, seeded with customers, an account
tree and a completed run. The examples are derandomized and not shrunk: CI tries the same requests every
time, and a failure's message shows the request. The last test prints how many requests were tried.
"""

from __future__ import annotations

import collections
import math
import struct
import time

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as spb
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from services.common.config import ServerConfig
from services.common.embedded import EmbeddedSuite
from services.common.server import SERVICE_DESCRIPTORS
from services.common.validation import encode_page_token
from tests.adoption.test_adoption_service import value_map as adoption_value_map
from tests.conftest import _empty_tables
from tests.grpc_helpers import details_of, documented_reasons, raises_status
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.scoring.test_scoring_service import SIGNALS, run_to_end, seed

Code = grpc.StatusCode
FD = pb_descriptor.FieldDescriptor

METHODS = [(service, method) for service, descriptor in SERVICE_DESCRIPTORS.items() for method in descriptor.methods]
# Streams that wait for events answer nothing until the deadline: a short one keeps the run short.
WAITING_STREAMS = {"WatchRuns", "WatchScoringRun", "WatchPriorityChanges", "WatchCustomerChanges"}
# Batches per RPC, and the requests each database's run must reach in all (each message of a client stream
# counts once). With 61 RPCs, 14 batches each made ~3,900 requests per database in ~40 s on a loaded 2-core
# machine; 10 make ~2,600, well past every RPC's first checks, in two thirds of the time (the suite's budget).
EXAMPLES = {"sqlite": 10, "postgresql": 10}
TARGET_REQUESTS = {"sqlite": 2400, "postgresql": 2400}
# Variants of each valid-looking call sent in the same batch.
MUTANTS = 6
WAITING_EXAMPLES = 8
DEADLINE_SECONDS = 10.0
WAITING_DEADLINE_SECONDS = 0.1
FORBIDDEN = (Code.INTERNAL, Code.UNKNOWN)

# (database, "service.Method") -> requests sent; (database, code name) -> answers; database -> seconds.
REQUESTS: collections.Counter = collections.Counter()
CODES: collections.Counter = collections.Counter()
SECONDS_SPENT: collections.Counter = collections.Counter()

SEEDED = 60
SEED_IDS = [f"cust-{i:05d}" for i in range(SEEDED)]

# -- values ---------------------------------------------------------------------------------------------------

PAGE_FILTERS = [
    {"parent": "", "role": 0, "owner": "", "label": ""},  # ListCustomers
    {"model_id": ""},  # ListModels
    {"model_id": "", "state": 0},  # ListScoringRuns
    {"run": "runs/1", "tier": ""}, {"run": "models/default", "tier": ""},  # ListRunResults
    {"customer": SEED_IDS[1], "signal": ""},  # ListSignalHistory
    {"tier": "strategic", "run": "runs/1"},  # ListTierMembers
]
# Positions a forged page token may hold: the offsets and ids the services write, and what they never write.
TOKEN_POSITIONS = [0, 1, 99, -1, 2**31, 2**63, 10**30, 1.5, float("nan"), "cust-00003", "", None, [], {"p": 1}, True]
FORGED_TOKENS = [encode_page_token(position, filters) for filters in PAGE_FILTERS for position in TOKEN_POSITIONS]

NAMES = [
    "customers/cust-00001", "customers/cust-00002", "customers/missing", "customers/", "customers/a/b",
    "customers/" + "x" * 129, "customers/a\x00b", "customers/ä", "cust-00001", "models/default",
    "models/default/versions/1", "models/default/versions/0", "models/default/versions/999999999",
    "models/fuzz", "models/Default", "models/", "runs/1", "runs/2", "runs/0", "runs/-1", "runs/999999999999999999",
    "runs/99999999999999999999", "runs/1/x",
]
WORDS = [
    "", " ", "\x00", "a\x00", "\x00" * 64, "default", "fuzz", "strategic", "key", "growth", "core", "standard",
    "annual_revenue", "nps", "gross_margin", *SIGNALS[:4], "Annual_Revenue", "1abc", "a" * 63, "a" * 64,
    "cust-00001", "x" * 128, "x" * 129, "ana", "region=eu", "region", "=eu", "Region=x", "a=b=c",
    "display_name", "parent", "stakeholder_role", "owner", "labels", "labels.region", "*", "customer_id",
    "signals", "etag", 'W/"1"', 'W/"2"', 'W/"0"', 'W/"-1"', 'W/"99999999999999999999"', 'W/"²"', 'W/"١"',
    'W/""', "W/", "\u202eevil", "🙂" * 5, "é" * 300, "\ufeff", "\n\r\t", "'; DROP TABLE registry_customers; --",
    "%s%s%n", "../../etc/passwd", "EUR", "€",
]
LONG_TEXT = ["x" * 257, "ü" * 1025, "y" * 5000, "z" * 100_000]
# Texts that storage, joins and logs choke on: NUL (PostgreSQL text), line breaks (newline-joined columns),
# and the longest ones.
NASTY_TEXT = ["\x00", "a\x00b", "cust-00001\x00", "\x00" * 64, "new-7\nnew-8", "new-9\n", "\r\n", *LONG_TEXT]

nasty_text = st.sampled_from(NASTY_TEXT)
text = st.one_of(st.sampled_from(NAMES + WORDS), nasty_text, nasty_text, nasty_text, st.sampled_from(FORGED_TOKENS),
                 st.text(st.characters(exclude_categories=("Cs",)), max_size=40))

# Fields whose name says what they hold get, two times in three, values of that kind (most of them valid),
# so that requests get past the first check and into the services' deeper paths.
CUSTOMER_NAMES = [f"customers/{c}" for c in SEED_IDS[:8]] + ["customers/new-1", "customers/missing"]
TIER_IDS = ["strategic", "key", "growth", "core", "standard"]
MODEL_NAMES = ["", "models/default", "models/default/versions/1", "models/default/versions/2", "models/fuzz"]
RUN_NAMES = ["runs/1", "runs/2", "runs/3", "models/default", "models/fuzz"]
LABEL_KEYS = ["region", "segment", "tier.override", "a-b"]
ETAGS = ['W/"1"', 'W/"2"', 'W/"3"', 'W/"99999999999999999999"', 'W/"²"']
DOMAIN_VALUES = {
    "name": NAMES, "names": CUSTOMER_NAMES, "customer": CUSTOMER_NAMES, "customers": CUSTOMER_NAMES,
    "parent": CUSTOMER_NAMES[:3] + [""], "customer_id": SEED_IDS[:8] + ["new-1", "new-2"] * 4, "model": MODEL_NAMES,
    "run": RUN_NAMES, "model_id": ["", "default", "fuzz"], "signal": SIGNALS, "signal_names": SIGNALS,
    "column_names": SIGNALS, "tier_id": TIER_IDS, "tier_ids": TIER_IDS, "page_token": FORGED_TOKENS, "etag": ETAGS,
    "owner": ["", "ana", "bob"], "label": ["region", "region=eu", "segment=smb"], "currency": ["EUR", "USD"],
}
MAP_KEYS = {"signals": SIGNALS, "labels": LABEL_KEYS, "signal_sums": SIGNALS}

INT32_EDGES = [0, 1, -1, 2, 7, 99, 100, 1000, 1001, 8192, 65_536, 65_537, 2**31 - 1, -(2**31)]
INT64_EDGES = INT32_EDGES + [2**53, 10**13, -(10**13), 2**62, -(2**62), 2**63 - 1, -(2**63), -(2**63), 2**63 - 1]
UINT32_EDGES = [0, 1, 2, 3, 4, 1000, 65_536, 65_537, 2**32 - 1]
UINT64_EDGES = UINT32_EDGES + [2**64 - 1]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 100.0, 1e-320, 5e-324, 1e308, -1e308, math.inf, -math.inf, math.nan]
SECONDS = [0, 1, -1, int(time.time()), int(time.time()) + 86_400 * 10, -62_135_596_800, -62_135_596_801,
           253_402_300_799, 253_402_300_800, 10**13, -(10**13), 2**62, -(2**62), 2**63 - 1, -(2**63)]
NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]


def integers(edges: list[int], low: int, high: int) -> st.SearchStrategy[int]:
    """Mostly the edges (hypothesis' own integers favour small ones), sometimes anything in range."""
    return st.one_of(st.sampled_from(edges), st.sampled_from(edges), st.integers(low, high))


def floats(width: int = 64) -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(FLOATS), st.floats(width=width))


def packed_floats(count: int) -> st.SearchStrategy[bytes]:
    return st.lists(floats(), min_size=count, max_size=count).map(lambda xs: struct.pack(f"<{len(xs)}d", *xs))


SCALARS = {
    FD.TYPE_STRING: text,
    FD.TYPE_BYTES: st.one_of(st.binary(max_size=64), st.integers(0, 8).flatmap(packed_floats)),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_DOUBLE: floats(),
    FD.TYPE_FLOAT: floats(32),
    FD.TYPE_INT32: integers(INT32_EDGES, -(2**31), 2**31 - 1),
    FD.TYPE_SINT32: integers(INT32_EDGES, -(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: integers(INT32_EDGES, -(2**31), 2**31 - 1),
    FD.TYPE_INT64: integers(INT64_EDGES, -(2**63), 2**63 - 1),
    FD.TYPE_SINT64: integers(INT64_EDGES, -(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: integers(INT64_EDGES, -(2**63), 2**63 - 1),
    FD.TYPE_UINT32: integers(UINT32_EDGES, 0, 2**32 - 1),
    FD.TYPE_FIXED32: integers(UINT32_EDGES, 0, 2**32 - 1),
    FD.TYPE_UINT64: integers(UINT64_EDGES, 0, 2**64 - 1),
    FD.TYPE_FIXED64: integers(UINT64_EDGES, 0, 2**64 - 1),
}
# Sizes just above the caps the services state (1,000 names, 10,000 rows, 65,536 rows per chunk).
OVERSIZED = [1001, 10_001, 65_537]
MAX_DEPTH = 4
# Requests are kept below this many bytes.
MAX_BYTES = 8 * 1024 * 1024


# -- messages -------------------------------------------------------------------------------------------------
# A request is either wild (every field drawn from the odd values above) or sane with one to three fields made
# wild: a valid-looking request with one bad field is what reaches the checks deep in a service.

SANE_WORDS = ["", "ana", "Acme Corp", "note", "x"]
SANE_SCALARS = {
    FD.TYPE_BYTES: st.binary(max_size=8),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_DOUBLE: st.floats(-1000, 1000),
    FD.TYPE_FLOAT: st.floats(-1000, 1000, width=32),
    **{kind: st.integers(0, 10) for kind in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32, FD.TYPE_INT64,
                                             FD.TYPE_SINT64, FD.TYPE_SFIXED64, FD.TYPE_UINT32, FD.TYPE_FIXED32,
                                             FD.TYPE_UINT64, FD.TYPE_FIXED64)},
}
UPDATABLE_PATHS = ["display_name", "parent", "stakeholder_role", "owner", "labels", "*"]


def _message_class(descriptor: pb_descriptor.Descriptor):
    return message_factory.GetMessageClass(descriptor)


def _is_map(field: FD) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _enum(field: FD, sane: bool) -> st.SearchStrategy[int]:
    known = [v.number for v in field.enum_type.values]
    if sane:
        return st.sampled_from(known)
    return st.one_of(st.sampled_from(known), st.sampled_from([-1, max(known) + 1, 99, 2**31 - 1]))


def _value(field: FD, depth: int, sane: bool) -> st.SearchStrategy:
    if field.type == FD.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1, sane)
    if field.type == FD.TYPE_ENUM:
        return _enum(field, sane)
    if field.type == FD.TYPE_STRING:
        domain = DOMAIN_VALUES.get(field.name)
        if domain and field.name == "customer_id":  # mostly new ids, so that creating one is not ALREADY_EXISTS
            fresh = st.randoms(use_true_random=False).map(lambda r: f"new-{r.randrange(10**9)}")
            domain = st.one_of(fresh, fresh, st.sampled_from(domain))
        elif domain:
            domain = st.sampled_from(domain)
        if sane:
            return domain if domain is not None else st.sampled_from(SANE_WORDS)
        return text
    return SANE_SCALARS[field.type] if sane else SCALARS[field.type]


def _repeated(element: st.SearchStrategy, sane: bool) -> st.SearchStrategy[list]:
    """A few elements; when wild, sometimes just over a stated cap (copies of one element: cheap to build)."""
    if sane:
        return st.lists(element, min_size=1, max_size=3)
    few = st.lists(element, max_size=4)
    many = st.tuples(element, st.sampled_from(OVERSIZED)).map(
        lambda pair: [pair[0]] * min(pair[1], MAX_BYTES // 2 // _size(pair[0])))
    return st.one_of(few, few, few, many)


def _size(value) -> int:
    """About the bytes ``value`` takes in a message (oversized lists stay below MAX_BYTES)."""
    if isinstance(value, tuple):
        return sum(map(_size, value))
    if isinstance(value, str):
        return len(value.encode()) + 2
    if isinstance(value, bytes):
        return len(value) + 2
    if hasattr(value, "ByteSize"):
        return value.ByteSize() + 2
    return 10


def _set_field(message, field: FD, value) -> None:
    if _is_map(field):
        target = getattr(message, field.name)
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value:
            if value_field.type == FD.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        target = getattr(message, field.name)
        if field.type == FD.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FD.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _field_strategy(field: FD, depth: int, sane: bool) -> st.SearchStrategy:
    if _is_map(field):
        entry = field.message_type
        keys = MAP_KEYS.get(field.name, SANE_WORDS[1:])
        key = st.sampled_from(keys) if sane else st.one_of(st.sampled_from(keys), SCALARS[FD.TYPE_STRING])
        return _repeated(st.tuples(key, _value(entry.fields_by_name["value"], depth, sane)), sane)
    if field.is_repeated:
        return _repeated(_value(field, depth, sane), sane)
    return _value(field, depth, sane)


def _generic(descriptor: pb_descriptor.Descriptor, depth: int, sane: bool) -> st.SearchStrategy:
    cls = _message_class(descriptor)
    fields = [f for f in descriptor.fields if depth < MAX_DEPTH or f.type != FD.TYPE_MESSAGE]
    # Sane messages have most fields set (the required ones among them); wild ones about half. Structure is
    # drawn through a hypothesis-controlled Random: evenly, where hypothesis would favour its simplest choice.
    present = 0.9 if sane else 0.5

    @st.composite
    def build(draw):
        message = cls()
        structure = draw(st.randoms(use_true_random=False))
        for field in fields:
            if structure.random() < present:
                _set_field(message, field, draw(_field_strategy(field, depth, sane)))
        return message
    return build()


def _mutation_sites(message, depth: int = 0) -> list[tuple[object, FD, int]]:
    """Every field of ``message`` and of the messages set inside it: (message, field, depth)."""
    sites = []
    for field in message.DESCRIPTOR.fields:
        sites.append((message, field, depth))
        if field.type != FD.TYPE_MESSAGE or depth >= MAX_DEPTH:
            continue
        container = getattr(message, field.name)
        # The first few entries of a list or map (an oversized one holds thousands of the same).
        if _is_map(field):
            if field.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE:
                for key in sorted(container)[:8]:
                    sites += _mutation_sites(container[key], depth + 1)
        elif field.is_repeated:
            for item in container[:8]:
                sites += _mutation_sites(item, depth + 1)
        elif message.HasField(field.name):
            sites += _mutation_sites(container, depth + 1)
    return sites


def _weight(site) -> int:
    """Leaves three times as often as whole sub-messages: one odd value in an otherwise valid request."""
    return 1 if site[1].type == FD.TYPE_MESSAGE else 3


def _make_wild(draw, site) -> None:
    target, field, depth = site
    target.ClearField(field.name)
    _set_field(target, field, draw(_field_strategy(field, depth, sane=False)))


def _mutate(draw, message) -> None:
    """Make one field, chosen among all fields at every depth of ``message``, wild."""
    sites = _mutation_sites(message)
    if sites:
        _make_wild(draw, draw(st.randoms(use_true_random=False)).choices(sites, list(map(_weight, sites)))[0])


def _timestamp_like(descriptor, sane: bool):
    cls = _message_class(descriptor)
    if sane:
        now = int(time.time())
        seconds = st.integers(0, 10**6) if descriptor.name == "Duration" else st.integers(now - 10**8, now)
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, st.integers(0, 999_999_999))
    # One part odd at a time (an odd part hides behind the other's violation), sometimes both.
    seconds, nanos = integers(SECONDS, -(2**63), 2**63 - 1), integers(NANOS, -(2**31), 2**31 - 1)
    sane_seconds, sane_nanos = st.integers(0, 2 * 10**9), st.integers(0, 999_999_999)
    build = lambda s, n: cls(seconds=s, nanos=n)  # noqa: E731
    return st.one_of(st.builds(build, seconds, sane_nanos), st.builds(build, sane_seconds, nanos),
                     st.builds(build, seconds, nanos))


def _field_mask(descriptor, sane: bool):
    cls = _message_class(descriptor)
    paths = st.sampled_from(UPDATABLE_PATHS) if sane else st.one_of(st.sampled_from(UPDATABLE_PATHS), text)
    return st.lists(paths, min_size=1 if sane else 0, max_size=4).map(lambda p: cls(paths=p))


def _cells(count: int, sane: bool) -> st.SearchStrategy[bytes]:
    """``count`` float64 little-endian; sane ones are finite or NaN (missing)."""
    cell = st.one_of(st.floats(-1e6, 1e6), st.just(math.nan)) if sane else floats()
    return st.lists(cell, min_size=count, max_size=count).map(lambda xs: struct.pack(f"<{len(xs)}d", *xs))


def _matrix(descriptor, sane: bool):
    """Float64Matrix whose rows, columns and data agree, or (wild) a generic one where they need not."""
    cls = _message_class(descriptor)
    consistent = st.tuples(st.integers(0, 4), st.integers(0, 4)).flatmap(
        lambda rc: _cells(rc[0] * rc[1], sane).map(lambda data: cls(rows=rc[0], columns=rc[1], data=data)))
    return consistent if sane else st.one_of(consistent, consistent, _generic(descriptor, MAX_DEPTH, False))


def _columnar_chunk(descriptor, sane: bool):
    """ColumnarChunk whose ids, column names and matrix agree (ScoreBatch gets past its shape checks)."""
    cls = _message_class(descriptor)
    matrix_cls = _message_class(descriptor.fields_by_name["values"].message_type)
    name = st.sampled_from(SIGNALS) if sane else st.one_of(st.sampled_from(SIGNALS), text)
    customer_id = st.sampled_from(SEED_IDS[:8]) if sane else text

    @st.composite
    def build(draw):
        rows = draw(st.integers(1 if sane else 0, 4))
        names = draw(st.lists(name, max_size=4, unique=sane))
        ids = draw(st.lists(customer_id, min_size=rows, max_size=rows))
        return cls(customer_ids=ids, column_names=names, values=matrix_cls(
            rows=rows, columns=len(names), data=draw(_cells(rows * len(names), sane))))
    return build() if sane else st.one_of(build(), _generic(descriptor, MAX_DEPTH - 1, False))


def _customer_columns(descriptor, sane: bool):
    """CustomerColumns with consistent lengths (rows reach the per-row checks and the database)."""
    cls = _message_class(descriptor)
    matrix_cls = _message_class(descriptor.fields_by_name["signal_values"].message_type)
    stamp = _timestamp_like(descriptor.fields_by_name["observe_time"].message_type, sane)
    ids = SEED_IDS[:4] + ["new-1", "new-2", "new-3"]
    customer_id = st.sampled_from(ids) if sane else st.one_of(st.sampled_from(ids), text)
    name = st.sampled_from(SIGNALS) if sane else st.one_of(st.sampled_from(SIGNALS), text)
    word = st.sampled_from(SANE_WORDS) if sane else text
    parent = st.sampled_from(["", SEED_IDS[0]]) if sane else text
    role = st.integers(1, 7) if sane else st.integers(0, 255)

    @st.composite
    def build(draw):
        rows = draw(st.integers(1, 4))
        message = cls(customer_ids=draw(st.lists(customer_id, min_size=rows, max_size=rows, unique=sane)),
                      signal_names=draw(st.lists(name, max_size=3, unique=sane)))
        if message.signal_names:
            columns = len(message.signal_names)
            message.signal_values.CopyFrom(matrix_cls(rows=rows, columns=columns,
                                                      data=draw(_cells(rows * columns, sane))))
        for column, values in (("display_names", word), ("parent_ids", parent), ("owners", word)):
            if draw(st.booleans()):
                getattr(message, column).extend(draw(st.lists(values, min_size=rows, max_size=rows)))
        if draw(st.booleans()):
            message.stakeholder_roles = bytes(draw(st.lists(role, min_size=rows, max_size=rows)))
        if draw(st.booleans()):
            message.observe_time.CopyFrom(draw(stamp))
        return message
    return build() if sane else st.one_of(build(), _generic(descriptor, MAX_DEPTH - 1, False))


def _telemetry(descriptor, sane: bool):
    """RecordTelemetryRequest whose columns agree in length and refer within their tables (events reach the
    registry check, the per-event checks and the database), or (wild) a generic one."""
    cls = _message_class(descriptor)
    customer_id = st.sampled_from(SEED_IDS[:4] + ["new-1"]) if sane else st.one_of(st.sampled_from(SEED_IDS[:4]), text)
    event_name = st.sampled_from(["login", "report.created", "Bad Name"]) if sane else text
    micros = st.sampled_from([int(time.time() * 1e6) - k * 86_400_000_000 for k in (0, 1, 30, 500)]
                             + [int(time.time() * 1e6) + 86_400_000_000, 0, -(2**63), 2**63 - 1])

    @st.composite
    def build(draw):
        events = draw(st.integers(1, 5))
        customers = draw(st.lists(customer_id, min_size=1, max_size=3))
        names = draw(st.lists(event_name, min_size=1, max_size=3))
        users = draw(st.lists(st.sampled_from(["ana", "bob", "x" * 257]), max_size=2))
        message = cls(batch_id=draw(st.sampled_from(["", "b-1", "b-2", "bad id"])), customer_ids=customers,
                      event_names=names, user_ids=users)
        message.customer_indices = struct.pack(f"<{events}I", *draw(st.lists(
            st.integers(0, len(customers) - 1), min_size=events, max_size=events)))
        message.event_indices = struct.pack(f"<{events}I", *draw(st.lists(
            st.integers(0, len(names) - 1), min_size=events, max_size=events)))
        message.event_times = struct.pack(f"<{events}q", *draw(st.lists(micros, min_size=events, max_size=events)))
        if draw(st.booleans()):
            message.counts = struct.pack(f"<{events}I", *draw(st.lists(
                st.sampled_from([0, 1, 7, 1_000_001, 2**32 - 1]), min_size=events, max_size=events)))
        if users and draw(st.booleans()):
            message.user_indices = struct.pack(f"<{events}i", *draw(st.lists(
                st.integers(-1, len(users) - 1), min_size=events, max_size=events)))
        return message
    return build() if sane else st.one_of(build(), _generic(descriptor, MAX_DEPTH - 1, False))


def _templates() -> dict[str, object]:
    """Valid messages too intricate to come about by chance: the default value model and tier policy."""
    import scoring_engine
    from services.hierarchy.policy import default_policy
    from services.scoring.models import to_proto

    model = to_proto(scoring_engine.default_model().to_json(), 1, "", "", 0, False)
    for output_only in ("name", "version", "creator", "create_time", "active"):
        model.ClearField(output_only)
    policy = default_policy()
    policy.ClearField("version")
    value_map = adoption_value_map()
    return {model.DESCRIPTOR.full_name: model, policy.DESCRIPTOR.full_name: policy,
            value_map.DESCRIPTOR.full_name: value_map}


TEMPLATES = _templates()
SPECIAL = {
    "google.protobuf.Timestamp": _timestamp_like,
    "google.protobuf.Duration": _timestamp_like,
    "google.protobuf.FieldMask": _field_mask,
    "cvh.common.v1.Float64Matrix": _matrix,
    "cvh.common.v1.ColumnarChunk": _columnar_chunk,
    "cvh.registry.v1.CustomerColumns": _customer_columns,
    "cvh.adoption.v1.RecordTelemetryRequest": _telemetry,
}
_CACHE: dict[tuple[str, int, bool], st.SearchStrategy] = {}


def _copy(message):
    fresh = type(message)()
    fresh.CopyFrom(message)
    return fresh


def message_strategy(descriptor: pb_descriptor.Descriptor, depth: int = 0, sane: bool = False) -> st.SearchStrategy:
    key = (descriptor.full_name, depth, sane)
    if key not in _CACHE:
        special = SPECIAL.get(descriptor.full_name)
        if special:
            strategy = st.deferred(lambda: special(descriptor, sane))
        else:
            strategy = st.deferred(lambda: _generic(descriptor, depth, sane))
        if sane and descriptor.full_name in TEMPLATES:
            strategy = st.one_of(st.just(TEMPLATES[descriptor.full_name]).map(_copy), strategy)
        _CACHE[key] = strategy
    return _CACHE[key]


def _mutants(draw, base: list, count: int) -> list[list]:
    """``count`` copies of ``base`` (a list of messages), each with a different field made wild (a few with
    one more): a batch covers many fields of the same valid-looking request."""
    structure = draw(st.randoms(use_true_random=False))
    sites = [(i, j, _weight(site)) for i, message in enumerate(base) for j, site in enumerate(_mutation_sites(message))]
    # Weighted sampling without replacement (Efraimidis-Spirakis): the `count` largest u ** (1 / weight).
    chosen = sorted(sites, key=lambda site: structure.random() ** (1 / site[2]), reverse=True)
    # A small request has fewer fields than `count`: its fields get more than one odd value each.
    chosen = (chosen * (1 + count // max(1, len(chosen))))[:count] if chosen else []
    mutants = []
    for i, j, _ in chosen:
        messages = [_copy(m) for m in base]
        for message in messages:  # each its own new customer: the base (sent first) creates the base's
            _renew_customer_ids(message, structure)
        _make_wild(draw, _mutation_sites(messages[i])[j])
        if structure.random() < 0.25:
            _mutate(draw, structure.choice(messages))
        mutants.append(messages)
    return mutants


def _renew_customer_ids(message, structure) -> None:
    """New ids ("new-...") in every customer_id field of ``message`` get another new id."""
    for target, field, _ in _mutation_sites(message):
        if field.name == "customer_id" and getattr(target, field.name).startswith("new-"):
            setattr(target, field.name, f"new-{structure.randrange(10**9)}")


class Batch(list):
    """Calls (each a list of messages), shown briefly when hypothesis reports a failing batch."""

    def __repr__(self) -> str:
        shown = " | ".join("; ".join(str(m).replace("\n", " ")[:300] for m in call) for call in self[:3])
        return f"<{len(self)} calls: {shown}{' | ...' if len(self) > 3 else ''}>"


def batches_for(method: pb_descriptor.MethodDescriptor) -> st.SearchStrategy[list]:
    """A batch of calls, each a list of request messages (one, or one to three on a client stream).

    Usually a valid-looking call and MUTANTS variants of it with one odd field each (what reaches deep
    into a service); sometimes one call whose every field is odd.
    """
    count = (1, 3) if method.client_streaming else (1, 1)
    mutants = 1 if method.name in WAITING_STREAMS else MUTANTS

    @st.composite
    def nearly_valid(draw):
        base = draw(st.lists(message_strategy(method.input_type, sane=True), min_size=count[0],
                             max_size=count[1]))
        return Batch([base, *_mutants(draw, base, mutants)])

    wild = st.lists(message_strategy(method.input_type), min_size=count[0], max_size=count[1]).map(
        lambda m: Batch([m]))
    return st.one_of(nearly_valid(), nearly_valid(), nearly_valid(), wild)


# -- the server -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(request, tmp_path_factory):
    """(database name, target): a suite seeded with customers (some with parents) and a completed run."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = EmbeddedSuite(ServerConfig(listen="127.0.0.1:0", database_url=url))
    try:
        with grpc.insecure_channel(server.target) as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            seed(registry, SEEDED)
            for i in range(1, 6):  # a small account tree
                registry.UpdateCustomer(rpb.UpdateCustomerRequest(
                    customer=rpb.Customer(name=f"customers/{SEED_IDS[i]}", parent=f"customers/{SEED_IDS[0]}"),
                    update_mask={"paths": ["parent"]}))
            run = run_to_end(spb_grpc.ScoringServiceStub(channel))
            wait_for_snapshot(hpb_grpc.HierarchyServiceStub(channel), run.name)
        yield request.param, server.target
    finally:
        server.stop()


def _call(channel: grpc.Channel, method: pb_descriptor.MethodDescriptor, messages: list):
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_class = _message_class(method.output_type)
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    rpc = kind(path, request_serializer=lambda m: m.SerializeToString(),
               response_deserializer=response_class.FromString)
    timeout = WAITING_DEADLINE_SECONDS if method.name in WAITING_STREAMS else DEADLINE_SECONDS
    argument = iter(messages) if method.client_streaming else messages[0]
    answer = rpc(argument, timeout=timeout)
    if method.server_streaming:
        for _ in answer:
            pass


def _check_healthy(channel: grpc.Channel) -> None:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service,method", METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_bad_input_never_answers_internal_or_unknown(fuzzed, service, method):
    database, target = fuzzed
    examples = WAITING_EXAMPLES if method.name in WAITING_STREAMS else EXAMPLES[database]
    started = time.monotonic()
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:

        # No shrinking: a failure's message shows the request, and shrinking batches would take minutes.
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
                  phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
        @given(batch=batches_for(method))
        def tried(batch):
            # Messages above the size limit are the transport's business (test_limits.py), not the services'.
            calls = [messages for messages in batch if sum(m.ByteSize() for m in messages) < MAX_BYTES]
            assume(calls)
            for messages in calls:
                REQUESTS[database, f"{service}.{method.name}"] += len(messages)
                try:
                    _call(channel, method, messages)
                    code = Code.OK
                except grpc.RpcError as error:
                    code, details = error.code(), error.details() or ""
                    assert code not in FORBIDDEN, \
                        f"{method.name} answered {code.name}: {details}\nto: {Batch([messages])!r}"
                    # An error whose details outgrow what clients accept as trailers reaches them as this.
                    assert "metadata size exceeds" not in details, \
                        f"{method.name}: the error is too large for clients: {details}\nto: {Batch([messages])!r}"
                    # The reason says what went wrong, and the RPC's proto comment lists it.
                    reason, full_name = details_of(error).reason, f"{method.containing_service.full_name}/{method.name}"
                    assert not reason or reason in documented_reasons(full_name), \
                        f"{method.name} answered reason {reason}, not listed in its proto comment"
                CODES[database, code.name] += 1
            _check_healthy(channel)

        tried()
    SECONDS_SPENT[database] += time.monotonic() - started


def test_fuzzing_tried_enough_requests(capsys):
    """Runs last: every RPC was tried, and enough requests in all (printed for the record)."""
    databases = {database for database, _ in REQUESTS}
    if not databases or any(len({m for d, m in REQUESTS if d == database}) < len(METHODS)
                            for database in databases):
        pytest.skip("only part of the fuzzing ran")
    for database in sorted(databases):
        total = sum(n for (d, _), n in REQUESTS.items() if d == database)
        codes = {code: n for (d, code), n in sorted(CODES.items()) if d == database}
        with capsys.disabled():
            print(f"\nfuzz ({database}): {total} requests to {len(METHODS)} RPCs in "
                  f"{SECONDS_SPENT[database]:.0f} s; answers {codes}")
        assert total >= TARGET_REQUESTS[database], f"{database}: only {total} requests tried"


# -- regressions: what the fuzzing found, pinned (each on SQLite and PostgreSQL) ------------------------------

@pytest.fixture
def registry(channel):
    return rpb_grpc.RegistryServiceStub(channel)


def _customer(**fields) -> rpb.Customer:
    return rpb.Customer(customer_id=fields.pop("customer_id", "acme"), **fields)


def test_regression_nul_in_stored_or_filtered_text_is_invalid_argument(channel, registry):
    """PostgreSQL text cannot hold NUL: it was INTERNAL (psycopg DataError) for every one of these."""
    from google.protobuf import field_mask_pb2
    for customer, field in ((_customer(display_name="a\x00b"), "customer.display_name"),
                            (_customer(owner="\x00"), "customer.owner"),
                            (_customer(labels={"region": "eu\x00"}), "customer.labels[region]")):
        with raises_status(Code.INVALID_ARGUMENT, field=field):
            registry.CreateCustomer(rpb.CreateCustomerRequest(customer=customer))
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=_customer()))
    with raises_status(Code.INVALID_ARGUMENT, field="customer.owner"):
        registry.UpdateCustomer(rpb.UpdateCustomerRequest(customer=rpb.Customer(name="customers/acme", owner="\x00"),
                                                          update_mask=field_mask_pb2.FieldMask(paths=["owner"])))
    with raises_status(Code.INVALID_ARGUMENT, field="owner"):
        registry.ListCustomers(rpb.ListCustomersRequest(owner="ana\x00"))
    with raises_status(Code.INVALID_ARGUMENT, field="label"):
        registry.ListCustomers(rpb.ListCustomersRequest(label="region=\x00"))
    summary = registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=rpb.CustomerColumns(
        customer_ids=["b", "c"], display_names=["fine", "bad\x00"], owners=["\x00", ""]))]))
    assert summary.rejected == 2 and {e.field for e in summary.errors} == {"display_name", "owner"}
    scoring = spb_grpc.ScoringServiceStub(channel)
    with raises_status(Code.INVALID_ARGUMENT, field="model_id"):
        scoring.ListScoringRuns(spb.ListScoringRunsRequest(model_id="default\x00"))
    model = scoring.GetModel(spb.GetModelRequest(name="models/default"))
    model.change_note = "\x00"
    with raises_status(Code.INVALID_ARGUMENT, field="model.change_note"):
        scoring.CreateModel(spb.CreateModelRequest(model=model))


def test_regression_timestamps_outside_their_range_are_invalid_argument(registry):
    """Observation times far before year 1 overflowed int64 microseconds: INTERNAL (OverflowError)."""
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=_customer()))
    for seconds in (-(2**63), -(10**13), -62_135_596_801):
        odd = rpb.SignalValue(value=1.0, observe_time={"seconds": seconds})
        with raises_status(Code.INVALID_ARGUMENT, field="customer.signals[nps].observe_time"):
            registry.CreateCustomer(rpb.CreateCustomerRequest(
                customer=_customer(customer_id="b", signals={"nps": odd})))
        with raises_status(Code.INVALID_ARGUMENT, field="observations[0].signals[nps].observe_time"):
            registry.RecordSignals(rpb.RecordSignalsRequest(observations=[
                rpb.SignalObservations(customer="customers/acme", signals={"nps": odd})]))
        summary = registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=rpb.CustomerColumns(
            customer_ids=["c"], observe_time={"seconds": seconds}))]))
        assert summary.rejected == 1 and summary.errors[0].field == "columns.observe_time"


def test_regression_etags_take_ascii_digits_only(registry):
    """'W/"²"' passed str.isdigit() and then failed int(): INTERNAL."""
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=_customer()))
    for etag in ('W/"²"', 'W/"١"', 'W/"99999999999999999999"'):
        with raises_status(Code.INVALID_ARGUMENT, field="etag"):
            registry.DeleteCustomer(rpb.DeleteCustomerRequest(name="customers/acme", etag=etag))


def test_regression_made_up_page_tokens_are_invalid_argument(channel, registry):
    """Tokens are opaque, not signed: an offset of 10**30 reached the database (OverflowError: INTERNAL)."""
    scoring = spb_grpc.ScoringServiceStub(channel)
    for position in (10**30, 2**63, -1, 1.5, True, "x"):
        with raises_status(Code.INVALID_ARGUMENT, field="page_token"):
            scoring.ListScoringRuns(spb.ListScoringRunsRequest(
                page_token=encode_page_token(position, {"model_id": "", "state": 0})))
        with raises_status(Code.INVALID_ARGUMENT, field="page_token"):
            scoring.ListModels(spb.ListModelsRequest(page_token=encode_page_token(position, {"model_id": ""})))
    for position in ("a\x00", "not an id", 7):
        with raises_status(Code.INVALID_ARGUMENT, field="page_token"):
            registry.ListCustomers(rpb.ListCustomersRequest(page_token=encode_page_token(
                position, {"parent": "", "role": 0, "owner": "", "label": ""})))


def test_regression_errors_quoting_huge_input_still_reach_the_caller(channel, registry):
    """A violation quoting a 100,000-character name made trailers no client accepts (over 8 KiB): the
    caller saw RESOURCE_EXHAUSTED instead of INVALID_ARGUMENT and the field."""
    huge = "customers/" + "x" * 100_000
    with raises_status(Code.INVALID_ARGUMENT, field="name"):
        registry.GetCustomer(rpb.GetCustomerRequest(name=huge))
    with raises_status(Code.INVALID_ARGUMENT, field="names[0]") as seen:  # each violation quotes its name
        registry.BatchGetCustomers(rpb.BatchGetCustomersRequest(names=[f"{i}" + "x" * 10_000 for i in range(1000)]))
    assert len(seen.message) < 1024
    with raises_status(Code.INVALID_ARGUMENT) as seen:
        registry.CreateCustomer(rpb.CreateCustomerRequest(customer=_customer(
            signals={"s" + "x" * 50_000 + str(i): rpb.SignalValue(value=1) for i in range(60)})))
    assert seen.fields and all(len(f) <= 160 for f in seen.fields)
    hierarchy = hpb_grpc.HierarchyServiceStub(channel)
    with raises_status(Code.INVALID_ARGUMENT, field="customers[0]"):
        hierarchy.RankCustomers(hpb.RankCustomersRequest(customers=[huge, huge + "y"]))
    # Import answers stay small too: 1,000 reported errors quoting such names fit a default (4 MiB) client.
    long_name = "z" * 100_000
    summary = registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=rpb.CustomerColumns(
        customer_ids=[f"r{i}" for i in range(1000)], signal_names=[long_name]))]))
    assert summary.rejected == 1000 and all(len(e.field) <= 160 for e in summary.errors)


def test_regression_output_only_fields_of_a_model_are_ignored(channel):
    """A create_time outside the Timestamp range could not be turned into JSON: CreateModel was INTERNAL."""
    scoring = spb_grpc.ScoringServiceStub(channel)
    model = scoring.GetModel(spb.GetModelRequest(name="models/default"))
    model.create_time.seconds = -62_135_596_801
    model.version, model.name = 99, "models/elsewhere/versions/7"
    created = scoring.CreateModel(spb.CreateModelRequest(model=model))
    assert created.name == "models/default/versions/2"


def test_regression_huge_model_lists_are_refused_before_any_work(channel):
    """65,537 bands were converted to JSON on the event loop before the engine's cap said no: the whole
    server stopped answering (health checks included) for seconds."""
    scoring = spb_grpc.ScoringServiceStub(channel)
    model = spb.ValueModel(model_id="big", signals=[spb.SignalSpec(name="nps", bands=[spb.Band()] * 65_537)])
    started = time.monotonic()
    with raises_status(Code.INVALID_ARGUMENT, field="model.signals[0].bands"):
        scoring.CreateModel(spb.CreateModelRequest(model=model), timeout=10)
    assert time.monotonic() - started < 1.0


def test_regression_a_newline_in_an_id_column_is_not_two_ids(registry):
    """The one-pass column check joined ids with newlines, so "a\\nb" passed as two valid ids and was stored
    (ids are stored newline-joined in run results)."""
    summary = registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=rpb.CustomerColumns(
        customer_ids=["a\nb", "ok"]))]))
    assert summary.rejected == 1 and summary.errors[0].field == "customer_id" and summary.created == 1
