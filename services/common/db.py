"""Database engine and migrations, shared by the services (each owns its own tables).

SQLite (the embedded default) runs in WAL mode with foreign keys on; write
transactions start with BEGIN IMMEDIATE so two writers queue on the lock
instead of failing when one upgrades a read. PostgreSQL goes through psycopg 3.
"""

from __future__ import annotations

import ctypes
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_WRITE = "cvh_write"


def normalize_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redacted_url(url: str) -> str:
    """``url`` without its password, for logs and reports."""
    return sa.engine.make_url(normalize_url(url)).render_as_string(hide_password=True)


# Seconds a call waits for a free pooled connection before it is answered UNAVAILABLE.
POOL_TIMEOUT_SECONDS = 10


def create_engine(url: str, pool_size: int = 16) -> Engine:
    """An engine keeping up to ``pool_size`` connections: half stay open, half are opened on demand."""
    url = normalize_url(url)
    pool = {"pool_size": (pool_size + 1) // 2, "max_overflow": pool_size // 2, "pool_timeout": POOL_TIMEOUT_SECONDS}
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **pool)
        _configure_sqlite(engine)
        return engine
    # No server-side prepared statements: psycopg prepares a query after 5 runs and PostgreSQL then
    # may switch to a generic plan, which for the importer's `customer_id IN ($1, ..., $900)` on a table
    # not yet analyzed is a sequential scan comparing every row with 900 parameters: a first import
    # became quadratic (the 4th 10,000-row message took 13 s). Unnamed statements are planned with
    # their values every time.
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"prepare_threshold": None}, **pool)


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA cache_size=-131072")  # 128 MiB: bulk imports keep the indexes in memory
        cursor.execute("PRAGMA temp_store=MEMORY")
        # Checkpoint the log every ~40 MiB rather than every 4 MiB: a committing writer runs the checkpoint,
        # and rarer, larger ones write each hot index page once (a 1M import: 14.5 -> 11 s in SQLite alone).
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        # A checkpoint that empties the log also cuts its file back to this size: a log that grew while a long
        # reader pinned it does not keep its peak size on disk.
        cursor.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: commits on success, rolls back on any error."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A consistent read: one snapshot for everything read inside."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


@contextmanager
def long_read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read_transaction for a long scan (an export), after which what it took is given back.

    On SQLite the scan fills its connection's page cache (up to 128 MiB, kept while the connection stays
    pooled): freed after the scan. Its snapshot also keeps checkpoints from emptying the log, which grows
    with every write meanwhile: the last long scan to end checkpoints the log and truncates it (waiting at
    most 0.2 s for other readers and writers; when they stay busy, a later writer checkpoints instead). The
    last one also hands the heap's free pages back to the system (glibc keeps them otherwise).
    """
    with _long_reads_lock:
        _long_reads[engine] = _long_reads.get(engine, 0) + 1
    last = False
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                with conn.begin():
                    yield conn
            finally:
                with _long_reads_lock:
                    _long_reads[engine] -= 1
                    last = not _long_reads[engine]
                if engine.dialect.name == "sqlite":
                    _give_back(conn.connection.driver_connection, checkpoint=last)
    finally:
        if last:
            _trim_heap()


_long_reads: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_long_reads_lock = threading.Lock()


def _give_back(driver: sqlite3.Connection, checkpoint: bool) -> None:
    """Frees this connection's page cache; with ``checkpoint``, empties the log (straight through sqlite3,
    outside any transaction)."""
    try:
        driver.execute("PRAGMA shrink_memory")
        if checkpoint:
            driver.execute("PRAGMA busy_timeout=200")
            try:
                driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                driver.execute("PRAGMA busy_timeout=60000")
    except sqlite3.Error:  # a busy log is checkpointed by a later writer instead
        pass


def _trim_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(engine), revision)


def schema_problem(engine: Engine) -> str | None:
    """Why this code cannot serve from the database's schema, or None when it can.

    For servers that do not migrate at start-up (a `cvh db upgrade` job owns the schema): a schema behind
    this code's migrations, or none at all, is a problem; a schema ahead of them (a newer release migrated
    first, during a rolling update) is not, as migrations only add what older code does not read.
    """
    script = ScriptDirectory.from_config(alembic_config(engine))
    heads = set(script.get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == heads:
        return None
    if not current:
        return "the database has no cvh schema yet: run `cvh db upgrade` against it first"
    known = {revision.revision for revision in script.walk_revisions()}
    if current <= known:
        return (f"the database schema is at {', '.join(sorted(current))}, this server needs "
                f"{', '.join(sorted(heads))}: run `cvh db upgrade` against it first")
    return None


def placeholders(bind: Connection | Engine, count: int) -> str:
    """``count`` positional parameter marks for raw driver SQL (sqlite3: ?, psycopg: %s)."""
    mark = "?" if bind.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * count)


def insert_many(conn: Connection, table: sa.Table, columns: list[str], rows: list[tuple],
                binary: bool = False) -> None:
    """Bulk INSERT of plain tuples: COPY on PostgreSQL, the driver's executemany on SQLite.

    SQLAlchemy's per-row parameter processing costs more than SQLite's insert
    itself on the import path; plain tuples of plain values need none of it.
    On PostgreSQL, executemany is still a statement per row (about 20,000 rows/s
    here: a re-import whose values changed spent most of its time writing
    history); COPY in the same transaction is an order of magnitude faster.

    ``binary``: COPY in PostgreSQL's binary format, for rows of large byte strings (a run's results): text COPY
    sends each as hex, twice its size, encoded by the client and decoded by the server. The values must be
    exactly of their columns' types (Python int for integer columns, bytes for binary ones).
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, table, columns, rows, _binary_types(table, columns) if binary else None)
        return
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders(conn, len(columns))})"
    conn.exec_driver_sql(sql, rows)


def update_many(conn: Connection, table: sa.Table, key: str, columns: list[str], rows: list[tuple]) -> None:
    """Bulk UPDATE of ``columns`` of the rows whose ``key`` is each tuple's first value (the rest follow in
    ``columns`` order). On PostgreSQL the tuples are COPYed into a temporary table and applied by one
    UPDATE ... FROM (an UPDATE per row ran at about 8,000 rows/s); elsewhere, executemany."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        sets = ", ".join(f"{column} = ?" for column in columns)
        conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {key} = ?", [(*r[1:], r[0]) for r in rows])
        return
    staged = f"cvh_staged_{table.name}"
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staged} ON COMMIT DELETE ROWS AS "
                         f"SELECT {key}, {', '.join(columns)} FROM {table.name} WITH NO DATA")
    conn.exec_driver_sql(f"TRUNCATE {staged}")
    _copy_rows(conn, sa.table(staged), [key, *columns], rows)
    sets = ", ".join(f"{column} = s.{column}" for column in columns)
    conn.exec_driver_sql(f"UPDATE {table.name} AS t SET {sets} FROM {staged} AS s WHERE t.{key} = s.{key}")


# How upsert_many merges a stored value with the one arriving, per dialect: {old} and {new} are replaced.
MERGES = {"add": ("{old} + {new}", "{old} + {new}"), "max": ("max({old}, {new})", "greatest({old}, {new})"),
          "min": ("min({old}, {new})", "least({old}, {new})")}


def upsert_many(conn: Connection, table: sa.Table, keys: list[str], merged: dict[str, str], rows: list[tuple]) -> None:
    """Bulk INSERT of plain tuples (``keys`` then the ``merged`` columns, in order) where a row whose keys are
    stored already merges into it: ``merged`` maps each column to "add", "max" or "min". The keys must be unique
    among ``rows``. On PostgreSQL the tuples are COPYed into a temporary table and applied by one
    INSERT ... SELECT ... ON CONFLICT DO UPDATE, in key order (so two concurrent upserts lock in the same
    order); elsewhere, executemany of INSERT ... ON CONFLICT DO UPDATE."""
    if not rows:
        return
    columns = [*keys, *merged]
    postgres = conn.dialect.name == "postgresql"
    sets = ", ".join(f"{column} = " + MERGES[how][postgres].format(old=f"{table.name}.{column}",
                                                                   new=f"excluded.{column}")
                     for column, how in merged.items())
    conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    if not postgres:
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
                             f"({placeholders(conn, len(columns))}) {conflict}", rows)
        return
    staged = f"cvh_upsert_{table.name}"
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staged} ON COMMIT DELETE ROWS AS "
                         f"SELECT {', '.join(columns)} FROM {table.name} WITH NO DATA")
    conn.exec_driver_sql(f"TRUNCATE {staged}")
    _copy_rows(conn, sa.table(staged), columns, rows)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join(columns)} "
                         f"FROM {staged} ORDER BY {', '.join(keys)} {conflict}")


# PostgreSQL's names of the column types a binary COPY sends (the first that a column's type is an instance of).
_BINARY_COPY_TYPES = ((sa.LargeBinary, "bytea"), (sa.BigInteger, "int8"), (sa.SmallInteger, "int2"),
                      (sa.Integer, "int4"), (sa.Boolean, "bool"), (sa.Text, "text"), (sa.String, "text"))


def _binary_types(table: sa.Table, columns: list[str]) -> list[str] | None:
    """The PostgreSQL type of each of ``columns`` for a binary COPY, or None (text COPY) when one has no
    entry in _BINARY_COPY_TYPES."""
    names = []
    for column in columns:
        kind = table.c[column].type
        name = next((pg for sa_type, pg in _BINARY_COPY_TYPES if isinstance(kind, sa_type)), None)
        if name is None:
            return None
        names.append(name)
    return names


def _copy_rows(conn: Connection, table: sa.Table, columns: list[str], rows: list[tuple],
               binary_types: list[str] | None = None) -> None:
    """COPY ``rows`` into ``table`` through psycopg, inside ``conn``'s transaction (in the binary format with
    ``binary_types``). Driver errors are raised as SQLAlchemy's, as every other statement's are, so the
    callers' error mapping holds."""
    import psycopg

    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN" + (" (FORMAT BINARY)" if binary_types else "")
    try:
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(sql) as copy:
            if binary_types:
                copy.set_types(binary_types)
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as error:
        raise sa.exc.DBAPIError.instance(sql, None, error, psycopg.Error) from error
