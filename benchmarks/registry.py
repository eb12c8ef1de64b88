"""Registry benchmark: bulk import through ImportCustomers, bulk export through ExportSignalMatrix.

Run as ``python -m benchmarks.registry`` (``--help`` for the flags). It starts
``cvh serve registry`` in a subprocess on a fresh SQLite file in a temporary
directory (so client and server run on different cores, as in production),
waits for the gRPC health check to answer SERVING, and then:

1. generates N customers with 12 signals each, a few percent with a parent,
   varied stakeholder roles and owners and one label, and serializes them into
   ImportCustomersRequest messages of ``--batch-size`` customers. This happens
   BEFORE the clock starts: the import figure measures the RPC and the server,
   not the client building messages;
2. times one ImportCustomers client stream of those pre-serialized messages and
   checks the summary (created == N, rejected == 0);
3. times ExportSignalMatrix of the 12 signals into one float64 numpy matrix
   (customers x signals) plus the id column, and checks every exported value,
   and the parent, role and owner of a sample of rows, against what was imported.

Targets (issue 2, on the 2-core reference machine): import at 50,000
customers/s or more; export of 1,000,000 x 12 in 5 s or less. With ``--json``
the last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.commands.common import count, database_url
from clients.server_process import ServerProcess
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2

SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
IMPORT_METHOD = f"/{SERVICE}/ImportCustomers"
EXPORT_METHOD = f"/{SERVICE}/ExportSignalMatrix"

IMPORT_TARGET_PER_S = 50_000
EXPORT_TARGET_1M_S = 5.0
MIB = 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * MIB),
    ("grpc.max_send_message_length", 64 * MIB),
]

# The 12 signals every generated customer carries, in export column order.
SIGNAL_NAMES = (
    "annual_revenue", "gross_margin", "tenure_years", "predicted_ltv", "expansion_potential", "strategic_fit",
    "product_lines", "logo_value", "referenceability", "audience_reach", "nps", "feedback_items_90d",
)
# Further signals generate_base can add on request (the rest of the default value model's 16).
EXTRA_SIGNAL_NAMES = ("payment_delay_days", "beta_programs", "feature_adoption", "co_design_sessions")
# Stakeholder roles and how common each is in a generated base.
ROLE_WEIGHTS = {
    common_pb2.STAKEHOLDER_ROLE_BUYER: 0.30,
    common_pb2.STAKEHOLDER_ROLE_END_USER: 0.35,
    common_pb2.STAKEHOLDER_ROLE_GATEKEEPER: 0.10,
    common_pb2.STAKEHOLDER_ROLE_PARTNER: 0.10,
    common_pb2.STAKEHOLDER_ROLE_IMPACT_GROUP: 0.07,
    common_pb2.STAKEHOLDER_ROLE_DONOR: 0.03,
    common_pb2.STAKEHOLDER_ROLE_INTERNAL: 0.05,
}
REGIONS = ("emea", "amer", "apac", "latam")
OWNERS = 400  # distinct account owners
PARENT_SHARE = 0.03  # customers that are a subsidiary or department of another
# When the generated signals were observed (a fixed snapshot, so a run is reproducible).
OBSERVED_AT = Timestamp(seconds=1_735_689_600)  # 2025-01-01T00:00:00Z


def customer_id(index: int) -> str:
    return f"CUST-{index:08d}"


def index_of(customer_id_: str) -> int:
    return int(customer_id_[5:])


# -- the generated customer base ------------------------------------------------------------------------


@dataclass
class CustomerBase:
    """N generated customers as columns; row i is customer_id(i)."""

    signals: np.ndarray  # float64 (N, len(SIGNAL_NAMES))
    parent: np.ndarray  # int64 (N,), -1 for top-level customers
    role: np.ndarray  # int8 (N,)
    owner: np.ndarray  # int32 (N,), index into owner_name
    region: np.ndarray  # int8 (N,), index into REGIONS
    signal_names: tuple[str, ...] = SIGNAL_NAMES  # the columns of signals, in order

    def __len__(self) -> int:
        return len(self.parent)


def owner_name(index: int) -> str:
    return f"owner{index:03d}@example.com"


def generate_base(n: int, seed: int, signal_names: tuple[str, ...] = SIGNAL_NAMES) -> CustomerBase:
    """Realistic-looking, reproducible values; every signal finite.

    ``signal_names`` picks and orders the signal columns, from SIGNAL_NAMES and EXTRA_SIGNAL_NAMES. The extra
    signals are drawn after everything else, so the 12 standard signals and the other columns are the same
    for a given seed whichever signals are asked for.
    """
    unknown = set(signal_names) - set(SIGNAL_NAMES) - set(EXTRA_SIGNAL_NAMES)
    if unknown:
        raise ValueError(f"generate_base cannot make signals {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    revenue = np.round(rng.lognormal(mean=13.0, sigma=1.6, size=n), 2)  # median ~440k currency units
    columns = {
        "annual_revenue": revenue,
        "gross_margin": np.round(rng.beta(5, 4, size=n), 4),  # ratio 0..1
        "tenure_years": np.round(rng.gamma(2.0, 2.5, size=n), 1),
        "predicted_ltv": np.round(revenue * rng.uniform(0.5, 6.0, size=n), 2),
        "expansion_potential": np.round(rng.uniform(0, 1, size=n), 3),
        "strategic_fit": np.round(rng.beta(2, 3, size=n), 3),
        "product_lines": rng.integers(1, 21, size=n).astype(np.float64),
        "logo_value": np.round(rng.beta(1.2, 6, size=n), 3),
        "referenceability": np.round(rng.uniform(0, 1, size=n), 2),
        "audience_reach": np.floor(rng.lognormal(mean=8.0, sigma=2.0, size=n)),
        "nps": rng.integers(-100, 101, size=n).astype(np.float64),
        "feedback_items_90d": rng.poisson(4.0, size=n).astype(np.float64),
    }
    # A few percent are subsidiaries or departments of an earlier top-level customer,
    # so the tree stays two levels deep and every parent precedes its children.
    is_child = rng.random(n) < PARENT_SHARE
    is_child[0] = False
    parent = np.full(n, -1, dtype=np.int64)
    children = np.flatnonzero(is_child)
    top_level = np.flatnonzero(~is_child)
    earlier = np.searchsorted(top_level, children)  # top-level customers before each child (at least 1)
    parent[children] = top_level[(rng.random(len(children)) * earlier).astype(np.int64)]
    roles = np.array(list(ROLE_WEIGHTS), dtype=np.int8)
    weights = np.array(list(ROLE_WEIGHTS.values()))
    role = rng.choice(roles, size=n, p=weights / weights.sum())
    owner = rng.integers(0, OWNERS, size=n, dtype=np.int32)
    region = rng.integers(0, len(REGIONS), size=n, dtype=np.int8)
    if any(name in EXTRA_SIGNAL_NAMES for name in signal_names):
        late = rng.random(n) < 0.3  # most customers pay on time
        columns.update({
            "payment_delay_days": np.where(late, np.round(rng.exponential(12.0, size=n), 1), 0.0),
            "beta_programs": rng.poisson(0.6, size=n).astype(np.float64),
            "feature_adoption": np.round(rng.beta(2, 5, size=n), 3),
            "co_design_sessions": rng.negative_binomial(1, 0.6, size=n).astype(np.float64),
        })
    signals = np.column_stack([columns[name] for name in signal_names])
    return CustomerBase(signals, parent, role, owner, region, tuple(signal_names))


def serialized_batches(base: CustomerBase, batch_size: int, progress: Progress) -> list[bytes]:
    """ImportCustomersRequest messages, already serialized, batch_size customers each."""
    batches = []
    n = len(base)
    owners = [owner_name(i) for i in range(OWNERS)]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        request = registry_service_pb2.ImportCustomersRequest()
        values = base.signals[start:stop].tolist()
        parents = base.parent[start:stop].tolist()
        roles = base.role[start:stop].tolist()
        owner_ix = base.owner[start:stop].tolist()
        regions = base.region[start:stop].tolist()
        for k, i in enumerate(range(start, stop)):
            customer = request.customers.add(
                customer_id=customer_id(i), display_name=f"Customer {i:,}", stakeholder_role=roles[k],
                owner=owners[owner_ix[k]], parent=f"customers/{customer_id(parents[k])}" if parents[k] >= 0 else "")
            customer.labels["region"] = REGIONS[regions[k]]
            signals = customer.signals
            for name, value in zip(base.signal_names, values[k]):
                signal = signals[name]
                signal.value = value
                signal.observe_time.CopyFrom(OBSERVED_AT)
        batches.append(request.SerializeToString())
        progress.update(stop, n)
    progress.done()
    return batches


def serialized_column_batches(base: CustomerBase, batch_size: int, progress: Progress) -> list[bytes]:
    """The same customers as packed CustomerColumns messages (the bulk path; no labels in this form)."""
    batches = []
    n = len(base)
    owners = [owner_name(i) for i in range(OWNERS)]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        rows = range(start, stop)
        parents = base.parent[start:stop].tolist()
        columns = registry_service_pb2.CustomerColumns(
            customer_ids=[customer_id(i) for i in rows], display_names=[f"Customer {i:,}" for i in rows],
            parent_ids=[customer_id(p) if p >= 0 else "" for p in parents],
            stakeholder_roles=base.role[start:stop].astype(np.uint8).tobytes(),
            owners=[owners[k] for k in base.owner[start:stop].tolist()], signal_names=base.signal_names)
        columns.signal_values.rows, columns.signal_values.columns = stop - start, len(base.signal_names)
        columns.signal_values.data = np.ascontiguousarray(base.signals[start:stop], dtype="<f8").tobytes()
        columns.observe_time.CopyFrom(OBSERVED_AT)
        batches.append(registry_service_pb2.ImportCustomersRequest(columns=columns).SerializeToString())
        progress.update(stop, n)
    progress.done()
    return batches


# -- the server under test ------------------------------------------------------------------------------


class ExternalServer:
    """A server someone else started (``--target``), e.g. under a profiler."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.database = None

    def wait_serving(self, timeout: float = 120) -> None:
        with grpc.insecure_channel(self.target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout, wait_for_ready=True)
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                raise RuntimeError(f"{self.target} answers {status}")

    def cpu_seconds(self) -> None:
        return None

    def stop(self) -> None:
        pass


# -- the database and the memory of the processes ------------------------------------------------------


@contextlib.contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """A database for one benchmark: None (the server makes a fresh SQLite file in its folder) for no URL or a
    sqlite one; for a PostgreSQL URL, a new database on that server, dropped (with every connection to it) at
    the end, so that nothing is left behind."""
    if not url or url.startswith("sqlite"):
        yield None
        return
    import sqlalchemy as sa

    from services.common import db

    admin = sa.create_engine(db.normalize_url(url), isolation_level="AUTOCOMMIT")
    name = f"cvh_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.engine.make_url(db.normalize_url(url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def database_bytes(server, url: str | None) -> int | None:
    """Size of the server's database: its SQLite files, or pg_database_size of the PostgreSQL one."""
    if url is None:
        return database_size(server.database)
    import sqlalchemy as sa

    from services.common import db

    engine = sa.create_engine(db.normalize_url(url))
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
    finally:
        engine.dispose()


class PeakMemory:
    """Peak resident memory of a process, stage by stage (Linux).

    ``reset`` sets the kernel's high-water mark (VmHWM in /proc/PID/status) back to the present resident size,
    by writing 5 to /proc/PID/clear_refs (Linux 4.0 and later, for a process of the same user); ``peak_mib``
    reads it. Where the reset is refused, ``resets`` is False and each figure is the peak since the process
    started, no lower than any earlier stage's.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.resets = True

    def reset(self) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            self.resets = False

    def peak_mib(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
        return None


def own_peak_mib() -> float:
    """This process's peak resident memory since it started (ru_maxrss: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the timed phases -----------------------------------------------------------------------------------


class Progress:
    """Progress of a long phase on stderr: one self-overwriting line on a terminal, else a line per 10 %."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.terminal = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.last = 0.0
        self.next_tenth = 1

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.terminal:
            if now - self.last < 0.2 and done != total:
                return
            self.last = now
            end = "\r"
        elif 10 * done >= self.next_tenth * total:
            self.next_tenth = 10 * done // max(total, 1) + 1
            end = "\n"
        else:
            return
        sys.stderr.write(f"{end if self.terminal else ''}  {self.label}: {done:,}/{total:,} "
                         f"({100 * done / max(total, 1):5.1f} %) {now - self.started:6.1f} s"
                         f"{'' if self.terminal else end}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.terminal:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class ImportResult:
    seconds: float
    bytes_sent: int
    summary: registry_service_pb2.ImportCustomersResponse
    server_cpu_s: float | None


def timed_import(channel: grpc.Channel, batches: list[bytes], customers: int, batch_size: int,
                 server, progress: Progress) -> ImportResult:
    # Pre-serialized messages go out as they are: the serializer is the identity.
    import_customers = channel.stream_unary(
        IMPORT_METHOD, request_serializer=lambda payload: payload,
        response_deserializer=registry_service_pb2.ImportCustomersResponse.FromString)

    def requests() -> Iterator[bytes]:
        for k, payload in enumerate(batches):
            yield payload
            # Counts messages handed to gRPC; flow control keeps this close to what the server took.
            progress.update(min((k + 1) * batch_size, customers), customers)

    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    summary = import_customers(requests())
    seconds = time.perf_counter() - started
    cpu_after = server.cpu_seconds()
    progress.done()
    return ImportResult(seconds, sum(map(len, batches)), summary,
                        None if cpu_before is None else cpu_after - cpu_before)


def check_import(imported: ImportResult, customers: int):
    """The import's summary; exits when it did not create exactly ``customers`` new customers."""
    summary = imported.summary
    if summary.created != customers or summary.rejected or summary.updated:
        first = summary.errors[0] if summary.errors else None
        raise SystemExit(f"import summary: created {summary.created:,}, updated {summary.updated:,}, "
                         f"rejected {summary.rejected:,} (expected created {customers:,}, none "
                         f"rejected){'; first error: ' + str(first).strip() if first else ''}")
    return summary


@dataclass
class ExportResult:
    seconds: float
    bytes_received: int
    chunks: int
    customer_ids: list[str]
    matrix: np.ndarray
    parent_ids: list[str]
    roles: bytes
    owners: list[str]
    server_cpu_s: float | None


def timed_export(channel: grpc.Channel, chunk_size: int, server, progress: Progress) -> ExportResult:
    received = 0

    def parse(payload: bytes) -> registry_service_pb2.ExportSignalMatrixResponse:
        nonlocal received
        received += len(payload)
        return registry_service_pb2.ExportSignalMatrixResponse.FromString(payload)

    export = channel.unary_stream(
        EXPORT_METHOD, request_serializer=registry_service_pb2.ExportSignalMatrixRequest.SerializeToString,
        response_deserializer=parse)
    request = registry_service_pb2.ExportSignalMatrixRequest(signal_names=SIGNAL_NAMES, chunk_size=chunk_size)
    columns = len(SIGNAL_NAMES)
    ids: list[str] = []
    parents: list[str] = []
    owners: list[str] = []
    roles = bytearray()
    matrix = np.empty((0, columns))
    total = filled = chunks = 0

    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    for response in export(request):
        chunk = response.chunk
        if chunks == 0:
            total = response.total_customers
            matrix = np.empty((total, columns), dtype=np.float64)
        if list(chunk.column_names) != list(SIGNAL_NAMES) or chunk.values.columns != columns:
            raise AssertionError(f"chunk {chunks} has columns {list(chunk.column_names)}")
        rows = chunk.values.rows
        block = np.frombuffer(chunk.values.data, dtype="<f8").reshape(rows, columns)
        if filled + rows > total:
            raise AssertionError(f"more rows than the announced total_customers={total}")
        matrix[filled:filled + rows] = block
        filled += rows
        chunks += 1
        ids.extend(chunk.customer_ids)
        parents.extend(response.parent_ids)
        owners.extend(response.owners)
        roles += response.stakeholder_roles
        progress.update(filled, total)
    seconds = time.perf_counter() - started
    cpu_after = server.cpu_seconds()
    progress.done()
    if filled != total:
        raise AssertionError(f"received {filled:,} rows, total_customers said {total:,}")
    return ExportResult(seconds, received, chunks, ids, matrix, parents, bytes(roles), owners,
                        None if cpu_before is None else cpu_after - cpu_before)


def verify_export(base: CustomerBase, result: ExportResult, sample: int, seed: int) -> list[str]:
    """Problems found comparing the export with the generated base (empty when it round-trips)."""
    n = len(base)
    problems = []
    if len(result.customer_ids) != n:
        return [f"exported {len(result.customer_ids):,} customers, imported {n:,}"]
    order = np.fromiter((index_of(c) for c in result.customer_ids), dtype=np.int64, count=n)
    if not np.array_equal(np.sort(order), np.arange(n)):
        return ["exported customer ids are not exactly the imported ones"]
    # Every value, bit for bit (cheap with numpy); NaN would mean a signal was lost.
    expected = base.signals[order]
    if not np.array_equal(result.matrix, expected):
        bad = np.argwhere(result.matrix != expected)
        row, col = bad[0]
        problems.append(f"{len(bad):,} matrix values differ, first {result.customer_ids[row]} "
                        f"{SIGNAL_NAMES[col]}: exported {result.matrix[row, col]!r}, imported {expected[row, col]!r}")
    # The non-matrix columns on a sample of rows.
    rng = np.random.default_rng(seed + 1)
    for row in rng.choice(n, size=min(sample, n), replace=False).tolist():
        i = int(order[row])
        want_parent = customer_id(int(base.parent[i])) if base.parent[i] >= 0 else ""
        got = (result.parent_ids[row], result.roles[row], result.owners[row])
        want = (want_parent, int(base.role[i]), owner_name(int(base.owner[i])))
        if got != want:
            problems.append(f"{customer_id(i)}: exported (parent, role, owner) {got}, imported {want}")
            if len(problems) > 10:
                break
    return problems


# -- report ---------------------------------------------------------------------------------------------


def report(args, import_result: ImportResult, export_result: ExportResult, prepare_s: float,
           database_bytes: int | None) -> dict:
    n = args.customers
    import_rate = n / import_result.seconds
    export_1m = export_result.seconds * 1_000_000 / n
    figures = {
        "customers": n,
        "signals": len(SIGNAL_NAMES),
        "format": args.format,
        "batch_size": args.batch_size,
        "import_s": round(import_result.seconds, 3),
        "import_customers_per_s": round(import_rate, 1),
        "import_mb_per_s": round(import_result.bytes_sent / MIB / import_result.seconds, 2),
        "import_bytes": import_result.bytes_sent,
        "import_server_cpu_s": _round(import_result.server_cpu_s),
        "export_s": round(export_result.seconds, 3),
        "export_1m_s": round(export_1m, 3),
        "export_customers_per_s": round(n / export_result.seconds, 1),
        "export_mb_per_s": round(export_result.bytes_received / MIB / export_result.seconds, 2),
        "export_bytes": export_result.bytes_received,
        "export_chunks": export_result.chunks,
        "export_server_cpu_s": _round(export_result.server_cpu_s),
        "prepare_s": round(prepare_s, 3),
        "database_bytes": database_bytes,
        "import_target_customers_per_s": IMPORT_TARGET_PER_S,
        "export_target_1m_s": EXPORT_TARGET_1M_S,
        "import_meets_target": import_rate >= IMPORT_TARGET_PER_S,
        "export_meets_target": export_1m <= EXPORT_TARGET_1M_S,
    }

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    scaled = "" if n == 1_000_000 else f" (scaled from {n:,})"
    rows = [
        ("import", "customers/s", f"{import_rate:,.0f}", f">= {IMPORT_TARGET_PER_S:,}",
         verdict(figures["import_meets_target"])),
        ("import", "seconds", f"{import_result.seconds:.2f}", "", ""),
        ("import", "MB/s sent", f"{figures['import_mb_per_s']:.1f}", "", ""),
        ("import", "server CPU s", _text(import_result.server_cpu_s), "", ""),
        ("export", "seconds", f"{export_result.seconds:.2f}", "", ""),
        ("export", f"seconds per 1M{scaled}", f"{export_1m:.2f}", f"<= {EXPORT_TARGET_1M_S:g}",
         verdict(figures["export_meets_target"])),
        ("export", "customers/s", f"{n / export_result.seconds:,.0f}", "", ""),
        ("export", "MB/s received", f"{figures['export_mb_per_s']:.1f}", "", ""),
        ("export", "chunks", f"{export_result.chunks:,}", "", ""),
        ("export", "server CPU s", _text(export_result.server_cpu_s), "", ""),
    ]
    print()
    print(f"Registry benchmark: {n:,} customers x {len(SIGNAL_NAMES)} signals, "
          f"{args.batch_size:,} customers per ImportCustomers message, SQLite, "
          f"{'server in a subprocess' if not args.target else 'server at ' + args.target}, {os.cpu_count()} CPUs")
    print(f"Import messages were built and serialized before timing ({prepare_s:.1f} s, "
          f"{import_result.bytes_sent / MIB:,.0f} MiB, not measured); export time includes "
          f"parsing the chunks and assembling one {n:,} x {len(SIGNAL_NAMES)} float64 matrix.")
    widths = [max(len(str(r[i])) for r in [("phase", "figure", "measured", "target", ""), *rows]) for i in range(5)]
    header = ("phase", "figure", "measured", "target", "")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths[:4]))
    for row in rows:
        print("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                         row[3].ljust(widths[3]), row[4]]).rstrip())
    if database_bytes is not None:
        print(f"SQLite database after import: {database_bytes / MIB:,.0f} MiB")
    return figures


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def database_size(path: Path | None) -> int | None:
    if path is None:
        return None
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


# -- command line ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.registry",
        description="Benchmark the registry's bulk paths over real gRPC against a fresh SQLite database: "
                    "import N customers (12 signals each) through ImportCustomers, then export the 12 signals "
                    "back through ExportSignalMatrix into one numpy matrix and check the values round-trip. "
                    f"Targets: import >= {IMPORT_TARGET_PER_S:,} customers/s; export of 1,000,000 x 12 "
                    f"in <= {EXPORT_TARGET_1M_S:g} s. Import messages are built and serialized before timing.",
)
    parser.add_argument("--customers", type=count(1), default=1_000_000, metavar="N",
                        help="customers to import and export: 20000, 500k, 10m ... (default 1m)")
    parser.add_argument("--format", choices=["columns", "rows"], default="columns",
                        help="import message form: packed CustomerColumns (the bulk path, default) or one "
                             "Customer message per row (with a region label each)")
    parser.add_argument("--chunk-size", type=int, default=0, metavar="N",
                        help="customers per ExportSignalMatrix chunk; 0 (the default) lets the server choose: 8,192")
    parser.add_argument("--verify-sample", type=int, default=10_000, metavar="N",
                        help="rows whose parent, role and owner are checked after export "
                             "(default 10,000; every matrix value is always checked)")
    parser.add_argument("--target", default=None, metavar="HOST:PORT",
                        help="use a registry already serving there (its database must hold no customers), "
                             "e.g. one started under a profiler, instead of starting `cvh serve registry`")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="directory for the SQLite file and server log (default: a temporary directory, "
                             "removed at the end)")
    add_common_flags(parser)
    return parser


def add_database_flag(parser: argparse.ArgumentParser) -> None:
    """--database-url: the server on a new PostgreSQL database (fresh_database) instead of a SQLite file."""
    parser.add_argument("--database-url", type=database_url, default=None, metavar="URL",
                        help="run the server on a new database of this PostgreSQL server (e.g. "
                             "postgresql://postgres@127.0.0.1:5432/test), created for the benchmark and dropped "
                             "after it, instead of a fresh SQLite file")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every server benchmark shares: base generation, import batching and output."""
    parser.add_argument("--batch-size", type=int, default=5_000, metavar="N",
                        help="customers per ImportCustomers message, 1 to 10,000 (default 5,000)")
    parser.add_argument("--seed", type=int, default=20250101,
                        help="seed of the generated customer base (default %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print the figures as one JSON object on the last line")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress reports on stderr (the result table still goes to stdout)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.customers < 1:
        raise SystemExit("--customers must be at least 1")
    if not 1 <= args.batch_size <= 10_000:
        raise SystemExit("--batch-size must be 1 to 10,000 (the server's limit per message)")
    show = not args.no_progress

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="cvh-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        if args.target:
            server = ExternalServer(args.target)
        else:
            if (workdir / "cvh.db").exists():
                raise SystemExit(f"{workdir / 'cvh.db'} exists; the benchmark needs a fresh database")
            server = ServerProcess(workdir, services=("registry",), health_services=(SERVICE,))
            say(f"server: cvh serve registry on {server.target}, pid {server.pid}, database {server.database}")
        stack.callback(server.stop)

        say(f"generating {args.customers:,} customers and serializing the import messages (not timed)")
        started = time.perf_counter()
        base = generate_base(args.customers, args.seed)
        serialize = serialized_column_batches if args.format == "columns" else serialized_batches
        batches = serialize(base, args.batch_size, Progress("serialize", show))
        prepare_s = time.perf_counter() - started
        server.wait_serving()

        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            say(f"import: {len(batches):,} messages, {sum(map(len, batches)) / MIB:,.0f} MiB")
            imported = timed_import(channel, batches, args.customers, args.batch_size, server,
                                    Progress("import", show))
            del batches
            summary = check_import(imported, args.customers)
            say(f"import: {imported.seconds:.2f} s; created {summary.created:,}, rejected 0, "
                f"{summary.batches_committed:,} batches committed")

            say("export: ExportSignalMatrix of 12 signals")
            exported = timed_export(channel, args.chunk_size, server, Progress("export", show))
            say(f"export: {exported.seconds:.2f} s, {exported.chunks:,} chunks")
        problems = verify_export(base, exported, args.verify_sample, args.seed)
        if problems:
            raise SystemExit("export does not match the import:\n  " + "\n  ".join(problems))
        say(f"verified: every exported value, and parent/role/owner of {min(args.verify_sample, len(base)):,} "
            "sampled rows, equal what was imported")
        figures = report(args, imported, exported, prepare_s, database_size(server.database))
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
