"""Queries over the registry's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.db import insert_many, placeholders, update_many
from services.registry import signals as packed
from services.registry import teams
from services.registry.customers import ACTIVE, CustomerRow, now_us
from services.registry.signals import SignalCatalog
from services.registry.tables import changes, customers, labels, lifecycle_history, signal_history

# The deepest account tree: a top parent and at most nine levels below it.
MAX_DEPTH = 10
# The PostgreSQL advisory lock that serialises writes to the account tree ("cvh-tree" in ASCII).
TREE_LOCK = 0x6376682D74726565
# How long such a write waits for the lock: as long as a SQLite writer waits for the database.
TREE_LOCK_TIMEOUT = "60s"
# The change feed's counters (registry_feed rows): the latest sequence, and the last one no longer kept.
LAST = "last_sequence"
COMPACTED = "compacted_through"
# Parameters per IN (...) list: well under SQLite's and PostgreSQL's limits.
IN_CHUNK = 900
# Team text an export chunk holds at most, in characters (8 MiB of UTF-8): with the rest of a chunk (at most 8 MiB
# of matrix and 48 MiB of text, servicer.MAX_CHUNK_ROWS) it stays within the 64 MiB message cap.
MAX_TEAM_CHARS = 2 * 1024 * 1024

STORED_COLUMNS = (
    customers.c.customer_id, customers.c.display_name, customers.c.parent_id, customers.c.stakeholder_role,
    customers.c.owner, customers.c.signal_values, customers.c.signal_times, customers.c.revision,
    customers.c.create_time_us, customers.c.update_time_us, customers.c.lifecycle_stage, customers.c.stage_time_us,
    customers.c.owner_since_us,
)


def _chunks(items: list, size: int = IN_CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def fetch(conn: Connection, ids: Iterable[str], for_update: bool = False) -> dict[str, Row]:
    """Stored customers by id; unknown ids are absent.

    ``for_update``: lock the rows until the transaction ends (PostgreSQL; SQLite writers take turns anyway), for
    a write that reads a customer and then replaces it: a concurrent writer of the same customer waits and then
    reads what this one wrote, instead of both writing from the same old row (a lost update, or a delete that
    removes labels and history while the row itself stays). Rows are locked in id order, so two writers that
    lock this way cannot deadlock each other (a deadlock with another writer is answered ABORTED).
    """
    found: dict[str, Row] = {}
    for part in _chunks(sorted(ids) if for_update else list(ids)):
        query = sa.select(*STORED_COLUMNS).where(customers.c.customer_id.in_(part))
        if for_update:
            query = query.order_by(customers.c.customer_id).with_for_update()
        for row in conn.execute(query):
            found[row.customer_id] = row
    return found


def existing(conn: Connection, ids: Iterable[str]) -> dict[str, Row]:
    """Like fetch (locking the rows found), but first finds which ids exist with a bare driver query: cheap
    when (as in a first import) most do not."""
    found = known_ids(conn, ids)
    return fetch(conn, found, for_update=True) if found else {}


def known_ids(conn: Connection, ids: Iterable[str]) -> list[str]:
    """Which of ``ids`` are stored customers: a bare driver query on the unique index, no row read."""
    found = []
    for part in _chunks(list(ids)):
        sql = f"SELECT customer_id FROM registry_customers WHERE customer_id IN ({placeholders(conn, len(part))})"
        found += [row[0] for row in conn.exec_driver_sql(sql, tuple(part))]
    return found


def create_times(conn: Connection, ids: Iterable[str]) -> dict[str, int]:
    """Creation time (microseconds) of each id that exists."""
    found: dict[str, int] = {}
    for part in _chunks(list(ids)):
        sql = (f"SELECT customer_id, create_time_us FROM registry_customers "
               f"WHERE customer_id IN ({placeholders(conn, len(part))})")
        found.update((row[0], int(row[1])) for row in conn.exec_driver_sql(sql, tuple(part)))
    return found


def parents_of(conn: Connection, ids: Iterable[str]) -> dict[str, str | None]:
    """Stored parent of each id that exists."""
    found: dict[str, str | None] = {}
    for part in _chunks(list(ids)):
        query = sa.select(customers.c.customer_id, customers.c.parent_id).where(customers.c.customer_id.in_(part))
        found.update((cid, parent) for cid, parent in conn.execute(query))
    return found


def labels_of(conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for part in _chunks(list(ids)):
        query = sa.select(labels.c.customer_id, labels.c.key, labels.c.value).where(labels.c.customer_id.in_(part))
        for customer_id, key, value in conn.execute(query):
            found.setdefault(customer_id, {})[key] = value
    return found


def ancestors(conn: Connection, parents: dict[str, str | None]) -> dict[str, str | None]:
    """``parents`` (customer -> parent) with every ancestor's own parent added, up the tree (a level per query)."""
    found = dict(parents)
    frontier = {p for p in parents.values() if p and p not in found}
    for _ in range(MAX_DEPTH + 1):
        if not frontier:
            break
        fetched = parents_of(conn, frontier)
        found.update(fetched)
        frontier = {p for p in fetched.values() if p and p not in found}
    return found


def lock_tree(conn: Connection) -> None:
    """Hold the account tree until this transaction ends: for writes that add, remove or re-parent customers.

    Their checks (parent exists, no cycle, at most MAX_DEPTH levels, no children left, id not taken) read the
    tree and then write it. Under PostgreSQL's READ COMMITTED two such writers would each check the tree
    without the other's change and together store a cycle, an orphan or a tree too deep; the lock makes them
    take turns, and each statement after it sees every change committed before. SQLite needs nothing here:
    write transactions begin IMMEDIATE, so writers already take turns and read the latest tree.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{TREE_LOCK_TIMEOUT}'")
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({TREE_LOCK})")


def child_count(conn: Connection, customer_id: str) -> int:
    query = sa.select(sa.func.count()).select_from(customers).where(customers.c.parent_id == customer_id)
    return conn.execute(query).scalar_one()


def subtree_height(conn: Connection, customer_id: str) -> int:
    """Levels below ``customer_id`` (0 for a leaf)."""
    tree = sa.select(customers.c.customer_id, sa.literal(0).label("level")).where(
        customers.c.parent_id == customer_id).cte("tree", recursive=True)
    tree = tree.union_all(
        sa.select(customers.c.customer_id, (tree.c.level + 1).label("level"))
        .join(tree, customers.c.parent_id == tree.c.customer_id)
        .where(tree.c.level < MAX_DEPTH))
    height = conn.execute(sa.select(sa.func.max(tree.c.level))).scalar()
    return 0 if height is None else height + 1


@dataclass
class TreeProblem:
    customer_id: str
    reason: str
    message: str


def check_tree(conn: Connection, proposed: dict[str, str | None], stored: dict[str, Row]) -> list[TreeProblem]:
    """Cycles and depth of the tree once ``proposed`` parents are written.

    ``proposed`` maps customers being written to their new parent; ``stored``
    holds those of them that exist already (to find subtrees that move).
    """
    known: dict[str, str | None] = dict(proposed)
    frontier = {p for p in proposed.values() if p and p not in known}
    for _ in range(MAX_DEPTH + 1):
        if not frontier:
            break
        fetched = parents_of(conn, frontier)
        known.update(fetched)
        frontier = {p for p in fetched.values() if p and p not in known}

    problems = []
    for customer_id, parent_id in proposed.items():
        if parent_id:
            problem = _tree_problem(conn, customer_id, parent_id, known, proposed, stored)
            if problem:
                problems.append(problem)
    return problems


def _tree_problem(conn: Connection, customer_id: str, parent_id: str, known: dict[str, str | None],
                  proposed: dict[str, str | None], stored: dict[str, Row]) -> TreeProblem | None:
    path, current = [customer_id], parent_id
    while current:
        if current in path:
            members = path[path.index(current):]
            cycle = " -> ".join(f"customers/{c}" for c in [*members, current])
            if not proposed.keys() & set(members):  # stored before these rules held, or edited by hand
                return TreeProblem(customer_id, "TREE_CORRUPT", f"the stored account tree has a cycle: {cycle}; "
                                   f"clear the parent of one of them to repair it")
            return TreeProblem(customer_id, "PARENT_CYCLE", f"the parent would make a cycle: {cycle}")
        path.append(current)
        if len(path) > MAX_DEPTH:
            break
        current = known.get(current)
    depth = len(path)
    moved = customer_id in stored and stored[customer_id].parent_id != parent_id
    if moved and depth <= MAX_DEPTH:
        depth += subtree_height(conn, customer_id)
    if depth > MAX_DEPTH:
        return TreeProblem(customer_id, "TREE_TOO_DEEP",
                           f"the account tree would be more than {MAX_DEPTH} levels deep")
    return None


@dataclass
class WriteCounts:
    created: int = 0
    updated: int = 0
    # Observations that became current, went to history only, or equalled the current value (nothing written).
    current: int = 0
    historical: int = 0
    unchanged: int = 0

    def count(self, observations: int, merged: packed.Merged) -> None:
        self.current += merged.current
        self.unchanged += merged.unchanged
        self.historical += observations - merged.current - merged.unchanged


def signals_after(stored: Row, names: set[str], signal_ids: dict[str, int | None]) -> int:
    """How many signals a stored customer has once ``names`` are observed (``signal_ids``: from
    SignalCatalog.current_ids)."""
    values, _ = packed.unpack(stored.signal_values, stored.signal_times)
    return packed.count_after(values, [signal_ids[name] for name in names])


def stage_after(row: CustomerRow, old: Row | None, now: int) -> tuple[int, int, bool]:
    """The stage ``row`` leaves the customer in, since when, and whether it is a stage entered now."""
    if old is not None and row.lifecycle_stage in (0, old.lifecycle_stage):
        return old.lifecycle_stage, old.stage_time_us, False
    return row.lifecycle_stage or ACTIVE, now if row.stage_time_us is None else row.stage_time_us, True


def stage_out_of_order(row: CustomerRow, old: Row | None) -> str | None:
    """Why ``row`` cannot move a stored customer to its stage at its time: the history of stages is kept in time
    order, so a stage cannot be entered before the current one was. None when it can."""
    if old is None or row.lifecycle_stage in (0, old.lifecycle_stage) or row.stage_time_us is None:
        return None
    if row.stage_time_us < old.stage_time_us:
        return (f"is before customers/{row.customer_id} entered its current stage ({_iso(old.stage_time_us)}); "
                f"stages are entered in time order")
    return None


def _iso(time_us: int) -> str:
    return np.datetime_as_string(np.datetime64(time_us, "us"), unit="s") + "Z"


def owner_after(team_plan: teams.TeamPlan, row: CustomerRow, old: Row | None, now: int) -> tuple[str, int]:
    """The owner a write leaves on a customer's row and since when: as its team plan says, else as stored, else
    (a new customer) its owner field, since now."""
    if row.customer_id in team_plan.owners:
        return team_plan.owners[row.customer_id]
    if old is not None:
        return old.owner, old.owner_since_us
    return row.owner, now if row.owner else 0


def write_customers(conn: Connection, catalog: SignalCatalog, rows: list[CustomerRow],
                    stored: dict[str, Row], now: int) -> WriteCounts:
    """Insert new customers and update stored ones (attributes replaced, signals merged)."""
    blocks = {id(row.block[0]): row.block[0] for row in rows if row.block}
    names = {name for row in rows for name, _, _ in row.signals}
    names.update(name for block in blocks.values() for name in block.names)
    signal_ids = catalog.ids_for(conn, names)
    laid_out = {key: block.packed_rows(signal_ids, now) for key, block in blocks.items()}
    counts = WriteCounts()
    team_plan = teams.plan_customers(conn, rows, stored, now)
    inserts, updates, history, stages = [], [], [], []
    for row in rows:
        old = stored.get(row.customer_id)
        row.owner, owner_since = owner_after(team_plan, row, old, now)
        stage, stage_time, entered = stage_after(row, old, now)
        if entered:
            stages.append((row.customer_id, stage, stage_time))
        if old is None and row.block:
            # A new customer from a packed block: its stored arrays are a row of the laid-out block.
            values, times, observed = laid_out[id(row.block[0])]
            i = row.block[1]
            values_blob, times_blob = values[i].tobytes() or None, times[i].tobytes() or None
            counts.current += int(observed[i])
        else:
            observations = [(signal_ids[name], value, t) for name, value, t in row.observations()]
            values, times = packed.unpack(old.signal_values, old.signal_times) if old else packed.unpack(None, None)
            merged = packed.merge(values, times, observations, now)
            counts.count(len(observations), merged)
            history.extend((row.customer_id, s, v, t) for s, v, t in merged.history)
            values_blob, times_blob = values.tobytes() or None, times.tobytes() or None
        if old is None:
            inserts.append((row.customer_id, row.display_name, row.parent_id, row.stakeholder_role, row.owner,
                            owner_since, values_blob, times_blob, 1, now, now, stage, stage_time))
        else:
            updates.append((row.customer_id, row.display_name, row.parent_id, row.stakeholder_role, row.owner,
                            owner_since, values_blob, times_blob, now, old.revision + 1, stage, stage_time))
    insert_many(conn, customers, ["customer_id", "display_name", "parent_id", "stakeholder_role", "owner",
                                  "owner_since_us", "signal_values", "signal_times", "revision", "create_time_us",
                                  "update_time_us", "lifecycle_stage", "stage_time_us"],
                inserts)
    update_many(conn, customers, "customer_id", ["display_name", "parent_id", "stakeholder_role", "owner",
                                                 "owner_since_us", "signal_values", "signal_times", "update_time_us",
                                                 "revision", "lifecycle_stage", "stage_time_us"],
                updates)
    insert_many(conn, lifecycle_history, ["customer_id", "stage", "enter_time_us"], stages)
    teams.apply(conn, team_plan, now)
    if updates:
        for part in _chunks([r[0] for r in updates]):
            conn.execute(labels.delete().where(labels.c.customer_id.in_(part)))
    insert_many(conn, labels, ["customer_id", "key", "value"],
                [(row.customer_id, k, v) for row in rows for k, v in row.labels.items()])
    insert_many(conn, signal_history, ["customer_id", "signal_id", "value", "observe_time_us"], history)
    counts.created, counts.updated = len(inserts), len(updates)
    append_changes(conn, [row.customer_id for row in rows])
    return counts


def update_attributes(conn: Connection, row: CustomerRow, old: Row, now: int) -> bool:
    """Replace a stored customer's attributes if it is still at ``old``'s revision."""
    stage, stage_time, entered = stage_after(row, old, now)
    team_plan = teams.plan_customers(conn, [row], {row.customer_id: old}, now)
    row.owner, owner_since = owner_after(team_plan, row, old, now)
    result = conn.execute(
        customers.update()
        .where(customers.c.customer_id == row.customer_id, customers.c.revision == old.revision)
        .values(display_name=row.display_name, parent_id=row.parent_id, stakeholder_role=row.stakeholder_role,
                owner=row.owner, owner_since_us=owner_since, revision=old.revision + 1, update_time_us=now,
                lifecycle_stage=stage, stage_time_us=stage_time))
    if result.rowcount != 1:
        return False
    if entered:
        conn.execute(lifecycle_history.insert().values(customer_id=row.customer_id, stage=stage,
                                                       enter_time_us=stage_time))
    teams.apply(conn, team_plan, now)
    conn.execute(labels.delete().where(labels.c.customer_id == row.customer_id))
    if row.labels:
        conn.execute(labels.insert(), [{"customer_id": row.customer_id, "key": k, "value": v}
                                       for k, v in row.labels.items()])
    append_changes(conn, [row.customer_id])
    return True


def delete(conn: Connection, customer_id: str, expected_revision: int | None) -> bool:
    where = [customers.c.customer_id == customer_id]
    if expected_revision is not None:
        where.append(customers.c.revision == expected_revision)
    conn.execute(signal_history.delete().where(signal_history.c.customer_id == customer_id))
    conn.execute(labels.delete().where(labels.c.customer_id == customer_id))
    conn.execute(lifecycle_history.delete().where(lifecycle_history.c.customer_id == customer_id))
    teams.delete_customer(conn, customer_id)
    if conn.execute(customers.delete().where(*where)).rowcount != 1:
        return False
    append_changes(conn, [customer_id])
    return True


def record_signals(conn: Connection, catalog: SignalCatalog, observations: dict[str, list[tuple[str, float, int]]],
                   stored: dict[str, Row], now: int) -> WriteCounts:
    """Merge observations into stored customers' current signals; the rest becomes history."""
    signal_ids = catalog.ids_for(conn, {name for obs in observations.values() for name, _, _ in obs})
    counts = WriteCounts()
    changed, history = [], []
    for customer_id, obs in observations.items():
        old = stored[customer_id]
        values, times = packed.unpack(old.signal_values, old.signal_times)
        merged = packed.merge(values, times, [(signal_ids[n], v, t) for n, v, t in obs], now)
        counts.count(len(obs), merged)
        history.extend((customer_id, s, v, t) for s, v, t in merged.history)
        if merged.current:
            changed.append({"b_customer_id": customer_id, "signal_values": values.tobytes(),
                            "signal_times": times.tobytes(), "revision": old.revision + 1, "update_time_us": now})
    if changed:
        conn.execute(customers.update().where(customers.c.customer_id == sa.bindparam("b_customer_id"))
                     .values(signal_values=sa.bindparam("signal_values"), signal_times=sa.bindparam("signal_times"),
                             revision=sa.bindparam("revision"), update_time_us=sa.bindparam("update_time_us")),
                     changed)
    insert_many(conn, signal_history, ["customer_id", "signal_id", "value", "observe_time_us"], history)
    append_changes(conn, [change["b_customer_id"] for change in changed])  # history alone changes no state
    return counts


@dataclass
class ListFilters:
    parent_id: str | None = None
    stakeholder_role: int = 0
    owner: str = ""
    lifecycle_stage: int = 0
    label_key: str = ""
    label_value: str | None = None


def list_page(conn: Connection, filters: ListFilters, after_id: str | None, limit: int) -> list[Row]:
    query = sa.select(*STORED_COLUMNS).order_by(customers.c.customer_id).limit(limit)
    if after_id is not None:
        query = query.where(customers.c.customer_id > after_id)
    if filters.parent_id is not None:
        query = query.where(customers.c.parent_id == filters.parent_id)
    if filters.stakeholder_role:
        query = query.where(customers.c.stakeholder_role == filters.stakeholder_role)
    if filters.owner:
        query = query.where(customers.c.owner == filters.owner)
    if filters.lifecycle_stage:
        query = query.where(customers.c.lifecycle_stage == filters.lifecycle_stage)
    if filters.label_key:
        has_label = sa.select(labels.c.customer_id).where(
            labels.c.customer_id == customers.c.customer_id, labels.c.key == filters.label_key)
        if filters.label_value is not None:
            has_label = has_label.where(labels.c.value == filters.label_value)
        query = query.where(has_label.exists())
    return list(conn.execute(query))


def signal_observations(conn: Connection, catalog: SignalCatalog, stored: Row,
                        signal_id: int | None) -> list[tuple[str, float, int, bool]]:
    """Every kept observation of a customer: (signal, value, observe_time_us, current)."""
    values, times = packed.unpack(stored.signal_values, stored.signal_times)
    found = [(catalog.name_of(i, conn), values[i], times[i], True)
             for i in range(len(values)) if not math.isnan(values[i]) and signal_id in (None, i)]
    query = sa.select(signal_history.c.signal_id, signal_history.c.value, signal_history.c.observe_time_us).where(
        signal_history.c.customer_id == stored.customer_id)
    if signal_id is not None:
        query = query.where(signal_history.c.signal_id == signal_id)
    found.extend((catalog.name_of(s, conn), v, t, False) for s, v, t in conn.execute(query))
    found.sort(key=lambda o: (-o[2], o[0], not o[3]))
    return found


def lifecycle_changes(conn: Connection, customer_id: str) -> list[tuple[int, int]]:
    """Every stage a customer entered, newest first: (stage, enter_time_us)."""
    query = (sa.select(lifecycle_history.c.stage, lifecycle_history.c.enter_time_us)
             .where(lifecycle_history.c.customer_id == customer_id)
             .order_by(lifecycle_history.c.enter_time_us.desc(), lifecycle_history.c.pk.desc()))
    return [tuple(row) for row in conn.execute(query)]


@dataclass
class ExportChunk:
    customer_ids: list[str]
    parent_ids: list[str]
    stakeholder_roles: bytes
    owners: list[str]
    matrix: np.ndarray  # float64 (rows, signals)
    lifecycle_stages: bytes = b""
    team: list[tuple[str, list[str]]] = field(default_factory=list)  # (role, persons per row) as teams.team_columns

    def rows(self, start: int, stop: int) -> ExportChunk:
        return ExportChunk(self.customer_ids[start:stop], self.parent_ids[start:stop],
                           self.stakeholder_roles[start:stop], self.owners[start:stop], self.matrix[start:stop],
                           self.lifecycle_stages[start:stop],
                           [(role, persons[start:stop]) for role, persons in self.team])

    def fitted(self) -> Iterator[ExportChunk]:
        """This chunk, or its halves (and so on) where its teams hold more than MAX_TEAM_CHARS."""
        if len(self.customer_ids) < 2 or sum(sum(map(len, persons)) for _, persons in self.team) <= MAX_TEAM_CHARS:
            yield self
            return
        half = len(self.customer_ids) // 2
        yield from self.rows(0, half).fitted()
        yield from self.rows(half, len(self.customer_ids)).fitted()


def count_customers(conn: Connection) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(customers)).scalar_one()


def export_chunks(conn: Connection, catalog: SignalCatalog, signal_names: list[str],
                  chunk_size: int, signals_only: bool = False) -> Iterator[ExportChunk]:
    """The whole base in insertion order, as column blocks of the requested signals (with ``signals_only``, only
    ids, signals and lifecycle stages: no parents, roles, owners or teams)."""
    catalog.reload(conn)
    columns = [catalog.id_of(name) for name in signal_names]
    # A raw driver cursor (server-side on PostgreSQL) inside the caller's transaction:
    # SQLAlchemy's row objects cost more than SQLite's reading on this path. On PostgreSQL its results come in
    # the binary format: the packed signals as they are stored, not as hex text twice their size.
    driver = conn.connection.driver_connection
    cursor = driver.cursor(name="cvh_export", binary=True) if conn.dialect.name == "postgresql" else \
        driver.cursor()
    if signals_only:
        try:
            cursor.execute("SELECT customer_id, signal_values, lifecycle_stage FROM registry_customers ORDER BY pk")
            while rows := cursor.fetchmany(chunk_size):
                ids, blobs, stages = zip(*rows)
                yield ExportChunk(list(ids), [], b"", [], signal_matrix(blobs, columns), bytes(stages))
        finally:
            cursor.close()
        return
    members = driver.cursor()  # each chunk's team in one query, by the chunk's range of pk
    mark = placeholders(conn, 1)
    # Every chunk has a column per role of the base (one schema); the owners come with the customers' rows.
    team_roles, on_rows = teams.export_roles(members)
    with_owners = teams.OWNER in team_roles
    try:
        cursor.execute("SELECT customer_id, parent_id, stakeholder_role, owner, signal_values, lifecycle_stage, pk "
                       "FROM registry_customers ORDER BY pk")
        while rows := cursor.fetchmany(chunk_size):
            ids, parents, roles, owners, blobs, stages, pks = zip(*rows)
            ids = list(ids)
            team = teams.team_columns(ids, teams.members_between(members, pks[0], pks[-1], mark) if on_rows else (),
                                      team_roles, owners if with_owners else None)
            yield from ExportChunk(ids, [p or "" for p in parents], bytes(roles), list(owners),
                                   signal_matrix(blobs, columns), bytes(stages), team).fitted()
    finally:
        members.close()
        cursor.close()


def signal_matrix(blobs: tuple[bytes | None, ...], columns: list[int | None]) -> np.ndarray:
    """Rows of packed signal arrays -> the requested columns, NaN where absent."""
    lengths = set(map(len, blobs)) if None not in blobs else ()
    known = [(j, c) for j, c in enumerate(columns) if c is not None]
    if len(lengths) == 1 and all(8 * c < min(lengths) for _, c in known):
        # Every row holds every requested signal the catalog knows (the common case: a bulk-imported base): one
        # join, no padding of row after row (a sixth of a large export's time went to that).
        full = np.frombuffer(b"".join(blobs), dtype="<f8").reshape(len(blobs), min(lengths) // 8)
        if len(known) == len(columns):
            return np.take(full, columns, axis=1)
        matrix = np.empty((len(blobs), len(columns)))
        for j, column in enumerate(columns):  # a column at a time: fancy indexing on both sides costs more
            matrix[:, j] = full[:, column] if column is not None else np.nan
        return matrix
    width = max([len(b) for b in blobs if b] + [8 * (c + 1) for c in columns if c is not None] + [8])
    nan_row = np.full(width // 8, np.nan).tobytes()
    padded = b"".join(b + nan_row[len(b):] if b else nan_row for b in blobs)
    full = np.frombuffer(padded, dtype="<f8").reshape(len(blobs), width // 8)
    matrix = np.full((len(blobs), len(columns)), np.nan)
    for j, column in enumerate(columns):
        if column is not None:
            matrix[:, j] = full[:, column]
    return matrix


def append_changes(conn: Connection, customer_ids: list[str]) -> None:
    """Append one change per customer of ``customer_ids`` (distinct) to the change feed (feed.py). Call it last in the
    writing transaction: from here until the commit, other appending writers wait."""
    if not customer_ids:
        return
    if conn.dialect.name == "postgresql":
        # The deferred foreign-key checks lock the parents (KEY SHARE) at commit: run them now, before the
        # counter. Else a writer holding the counter would wait at its commit for a parent another writer
        # locked (RecordSignals on it) while that one waits for the counter: a deadlock.
        conn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
    mark = placeholders(conn, 1)
    last = conn.exec_driver_sql(
        f"INSERT INTO registry_feed (name, value) VALUES ('{LAST}', {mark}) ON CONFLICT (name) "
        f"DO UPDATE SET value = registry_feed.value + excluded.value RETURNING value",
        (len(customer_ids),)).scalar_one()
    now = now_us()  # the time once it is our turn: it grows with the sequence
    insert_many(conn, changes, ["seq", "first_seq", "change_time_us", "customer_ids"],
                [(last, last - len(customer_ids) + 1, now, "\n".join(customer_ids))])
