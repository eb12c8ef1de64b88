"""The in-memory snapshot: one completed run joined to the account tree, as NumPy arrays plus an id index.

A run's snapshot is built whole and swapped in with one reference assignment, so a reader never sees half of two
runs. Between runs the registry's change feed patches it in place (services/hierarchy/live.py): the patch is
worked out on a worker thread and written on the event loop, where every reader runs, in one step without an
await, so a reader sees a patch whole or not at all, without a lock.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
import pyarrow as pa

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from services.hierarchy.ids import IdIndex
from services.hierarchy.ids import thread_pool as ids_pool
from services.hierarchy.ids import warm_up as ids_warm_up
from services.registry.store import MAX_DEPTH

# Rows a walk up the tree follows to name what breaks it (a cycle, or a chain too deep).
MAX_WALK = 1000
# Signals summed over account subtrees.
ROLLUP_SIGNALS = ["annual_revenue", "predicted_ltv"]
# Revenue in books of business: the served run's model's outcome money signal, this when it names none.
DEFAULT_MONEY_SIGNAL = "annual_revenue"


def export_signals(money: str) -> list[str]:
    """The signals the hierarchy exports: the roll-up ones, and the money signal after them when another."""
    return [*ROLLUP_SIGNALS, *([money] if money not in ROLLUP_SIGNALS else [])]


SEPARATOR = ";"  # between the members of one role in a team column (services/registry/teams.py)
# Ids: a list of Python strings, or an Arrow string array (what the readers hand over without a str per id).
Ids = Sequence[str] | pa.Array


class Names:
    """Distinct texts (the owners) by number: a row holds the int32 number of its owner, not a string.
    Append-only, like Teams: a live patch interns new names while readers resolve the numbers held."""

    def __init__(self, names: Sequence[str] = ("",)) -> None:
        self.names: list[str] = list(names)
        self.index: dict[str, int] = {name: i for i, name in enumerate(self.names)}

    def intern(self, texts: Ids) -> np.ndarray:
        """The numbers of ``texts`` (int32), new ones added: Arrow's dictionary encoding hashes them in C."""
        if not len(texts):
            return np.empty(0, np.int32)
        array = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())
        encoded = array.dictionary_encode()
        distinct = np.array([self.number(name) for name in encoded.dictionary.to_pylist()], np.int32)
        return distinct[encoded.indices.to_numpy(zero_copy_only=False)]

    def number(self, name: str) -> int:
        found = self.index.get(name)
        if found is None:
            found = len(self.names)
            self.names.append(name)  # appended before it is indexed: a reader never finds it missing
            self.index[name] = found
        return found


class Teams:
    """Who serves the customers, compactly: a row's members of one role are a *cell* (a number standing for the
    tuple of person numbers, cell 0 for none), held in Snapshot.team_cells (rows x roles, int32). Cells and
    persons are interned once: a million customers served by a few thousand people cost 4 bytes per row and role.

    Append-only: a live patch interns the cells it brings on its worker thread while readers resolve the cells the
    snapshot already holds, which never change.
    """

    def __init__(self) -> None:
        self.roles: list[str] = []                 # column j of Snapshot.team_cells
        self.role_index: dict[str, int] = {}
        self.cells: list[tuple[int, ...]] = [()]  # cell -> person numbers, in the order they joined
        self.cell_index: dict[str, int] = {"": 0}
        self.people: list[str] = []
        self.person_index: dict[str, int] = {}
        self.person_cells: dict[int, list[int]] = {}  # person -> the cells they are in

    def role(self, name: str) -> int:
        """The column of role ``name``, added when new."""
        column = self.role_index.get(name)
        if column is None:
            column = self.role_index[name] = len(self.roles)
            self.roles.append(name)
        return column

    def intern(self, texts: Ids) -> np.ndarray:
        """The cells of column texts ("a@x;b@x", "" for none), as int32. Arrow's dictionary encoding hashes the
        texts in C (a million in about 0.1 s, a quarter of a dict look-up each); only the distinct ones meet
        Python."""
        if not texts:
            return np.empty(0, np.int32)
        array = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())
        encoded = array.dictionary_encode()
        distinct = np.array([self._add(text) for text in encoded.dictionary.to_pylist()], np.int32)
        return distinct[encoded.indices.to_numpy(zero_copy_only=False)]

    def _add(self, text: str) -> int:
        cell = self.cell_index.get(text)
        if cell is None:
            persons = []
            for person in text.split(SEPARATOR):
                number = self.person_index.get(person)
                if number is None:
                    number = self.person_index[person] = len(self.people)
                    self.people.append(person)
                persons.append(number)
            cell = len(self.cells)
            self.cells.append(tuple(persons))  # appended before it is indexed: a reader never finds it missing
            for person in persons:
                self.person_cells.setdefault(person, []).append(cell)
            self.cell_index[text] = cell
        return cell

    def cells_of(self, person: int) -> np.ndarray:
        """The cells ``person`` is in."""
        return np.array(self.person_cells.get(person, ()), np.int32)


@dataclass(eq=False)
class Snapshot:
    run: str                          # "runs/{id}", "" when nothing was loaded
    score_time_us: int                # when the run completed
    load_time: float                  # time.time() of the load
    tiers: tuple[common_pb2.TierRef, ...]
    dimensions: tuple[int, ...]       # ValueDimension values, columns of dimension_scores
    ids: IdIndex                      # customer ids by row, rows by id (snap.row, snap.rows, snap.customer_id)
    parent: np.ndarray                # int32 row of the parent, -1 for none (int64 from 2**31 rows: row_type)
    depth: np.ndarray                 # int32 levels above the row (0 = top account), -1 in a broken tree
    roles: np.ndarray                 # uint8 StakeholderRole
    owner_codes: np.ndarray           # int32 number of the row's owner in owner_names ("" is 0)
    rollup_values: np.ndarray         # float64 (n, len(ROLLUP_SIGNALS)), NaN missing
    own_level: np.ndarray             # int32, 1 = top tier, 0 = not in the run
    effective_level: np.ndarray       # int32, after the inheritance rule
    composite: np.ndarray             # float64, NaN when unscored
    percentile: np.ndarray            # float64
    rank: np.ndarray                  # int32 (row_type), 0 when unscored
    dimension_scores: np.ndarray      # float64 (n, dims)
    # Per dimension, the scored customers' scores in ascending order (for "top x %" reasons).
    sorted_dimension_scores: tuple[np.ndarray, ...] = field(default=())
    # The registry's change feed sequence the accounts hold; -1 before they were first read (every customer is
    # then unknown to the snapshot, registered or not).
    sequence: int = -1
    # Children by parent as built: rows of child_order[child_start[p]:child_start[p + 1]] had parent p then.
    child_order: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    child_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))
    # Rows given a parent since the build (created or moved), by that parent: children(p) checks them too.
    adopted: dict[int, frozenset[int]] = field(default_factory=dict)
    # The run's scored composites, ascending: where a live re-score ranks.
    run_composites: np.ndarray = field(default_factory=lambda: np.empty(0))
    # Per row, when its values were re-scored live (microseconds since the epoch), 0 when they are the run's.
    live_time_us: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    # Rows of deleted customers (their id no longer in the index; their values cleared).
    removed: int = 0
    # Each row's own current team: team_cells[row, j] is its cell (see Teams) of role teams.roles[j].
    teams: Teams = field(default_factory=Teams)
    team_cells: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))
    # Outcomes (see attach_outcomes), one array each, patched from the feed where the registry holds them: per row
    # the lifecycle stage the registry holds (uint8), the run's bad-profit flag (int8: 1 flagged, 0 not, -1
    # unknown: a run without flags or a customer it lacks), the own level and composite of the previous run.
    stages: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))
    bad_profit: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    previous_level: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    previous_composite: np.ndarray = field(default_factory=lambda: np.empty(0))
    previous_run: str = ""
    previous_time_us: int = 0
    # Two money values, both needed: run_money is the money signal's value the run stored (what its bad-profit
    # flag was judged on; ListBadProfits orders by it), revenue the registry's current value (live, patched from
    # the feed; books of business sum it). money_signal names the signal.
    run_money: np.ndarray = field(default_factory=lambda: np.empty(0))
    revenue: np.ndarray = field(default_factory=lambda: np.empty(0))
    money_signal: str = DEFAULT_MONEY_SIGNAL
    owner_names: Names = field(default_factory=Names)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.live_time_us) != n:
            self.live_time_us = np.zeros(n, np.int64)
        if len(self.team_cells) != n:
            self.team_cells = np.zeros((n, len(self.teams.roles)), np.int32)
        for name, start in OUTCOME_ARRAYS.items():
            if len(getattr(self, name)) != n:
                setattr(self, name, np.full(n, start, getattr(self, name).dtype))

    @functools.cached_property
    def effective_cells(self) -> np.ndarray:
        """team_cells after inheritance: each row's cell of each role, or its nearest ancestor's that has one
        (rows of a broken tree keep their own). Once per snapshot and patch: depth passes over the base."""
        cells = self.team_cells.copy()
        for d in range(1, int(self.depth.max(initial=0)) + 1):
            rows = np.flatnonzero(self.depth == d)
            inherit = cells[rows] == 0
            cells[rows] = np.where(inherit, cells[self.parent[rows]], cells[rows])
        return cells

    def effective_team(self, row: int) -> list[tuple[str, list[str], int]]:
        """(role, person ids, the row they come from) of each role the row or its nearest ancestor that has
        members in it sets, in role name order. A broken tree above the row: its own members only."""
        try:
            rows = [row, *self.ancestors(row)]
        except BrokenTree:
            rows = [row]
        cells = self.team_cells[rows]  # (levels, roles), the row first
        teams, found = self.teams, []
        for j in range(cells.shape[1]):
            column = cells[:, j]
            at = int(np.argmax(column != 0))
            if column[at]:
                found.append((teams.roles[j], [teams.people[p] for p in teams.cells[column[at]]], rows[at]))
        found.sort()
        return found

    def row(self, customer_id: str) -> int | None:
        """The row of ``customer_id``, None when the snapshot holds none."""
        return self.ids.row(customer_id)

    def rows(self, customer_ids: Ids) -> np.ndarray:
        """The row of each id (int64), -1 for those the snapshot does not hold."""
        return self.ids.rows(customer_ids)

    def customer_id(self, row: int) -> str:
        return self.ids.customer_id(row)

    def owner(self, row: int) -> str:
        return self.owner_names.names[self.owner_codes[row]]

    def changed(self) -> None:
        """Forget what was derived from the arrays (after a patch)."""
        for name in ("rank_order", "broken", "bad_profit_order", "effective_cells"):
            self.__dict__.pop(name, None)

    @property
    def customers(self) -> int:
        """Registered customers held (deleted ones' rows stay until the next build)."""
        return self.size - self.removed

    @property
    def size(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def rank_order(self) -> np.ndarray:
        """Scored rows by rank, sorted once per snapshot."""
        return bucket_order(self.rank, 1, int(self.rank.max(initial=0)) + 1)

    def tier_members(self, level: int) -> np.ndarray:
        """Rows whose own tier is ``level``, in rank order."""
        order = self.rank_order
        return order[self.own_level[order] == level]

    @functools.cached_property
    def bad_profit_order(self) -> np.ndarray:
        """Rows the run flagged as bad profit that are neither churned nor deleted, highest money value of the run
        first (those without one last), sorted once per snapshot and patch."""
        rows = np.flatnonzero((self.bad_profit == 1) & (self.stages != common_pb2.LIFECYCLE_STAGE_CHURNED))
        money = self.run_money[rows]
        return rows[np.lexsort((rows, -np.nan_to_num(money, nan=0.0), np.isnan(money)))]

    @functools.cached_property
    def broken(self) -> int:
        """Customers in a broken account tree (see tree_depths)."""
        return int((self.depth < 0).sum())

    def children(self, row: int) -> np.ndarray:
        return self.children_of(np.array([row], np.int64))

    def children_of(self, rows: np.ndarray) -> np.ndarray:
        """The rows whose parent is one of ``rows`` now."""
        return children_in(rows, self.child_order, self.child_start, self.parent, self.adopted)

    def ancestors(self, row: int) -> list[int]:
        """The rows above ``row``, its parent first; BrokenTree when they do not end in a top account."""
        if self.depth[row] < 0:
            raise self._broken_above(row)
        found = []
        for _ in range(int(self.depth[row])):
            row = int(self.parent[row])
            found.append(row)
        return found

    def subtree(self, row: int) -> np.ndarray:
        """``row`` and every account below it; BrokenTree when the tree goes deeper than MAX_DEPTH levels."""
        if self.depth[row] < 0:
            raise self._broken_above(row)
        found, frontier = [np.array([row])], np.array([row])
        for _ in range(MAX_DEPTH - int(self.depth[row])):
            frontier = self.children_of(frontier)
            if not frontier.size:
                return np.concatenate(found)
            found.append(frontier)
        deepest = int(frontier[0])
        raise BrokenTree([self.customer_id(r) for r in [deepest, *self._up(deepest, MAX_DEPTH)]], cycle=False)

    def _up(self, row: int, steps: int) -> list[int]:
        """At most ``steps`` rows above ``row``, its parent first, stopping at a top account."""
        found: list[int] = []
        while len(found) < steps and self.parent[row] >= 0:
            row = int(self.parent[row])
            found.append(row)
        return found

    def _broken_above(self, row: int) -> "BrokenTree":
        """What breaks the tree above ``row``: the cycle it is in or under, or the chain too deep."""
        path = [row, *self._up(row, MAX_WALK)]
        first: dict[int, int] = {}
        for i, current in enumerate(path):
            if current in first:
                return BrokenTree([self.customer_id(r) for r in path[first[current]:i + 1]], cycle=True)
            first[current] = i
        return BrokenTree([self.customer_id(r) for r in path], cycle=False)


class BrokenTree(Exception):
    """The account tree around a customer breaks the registry's rules: a cycle, or more than MAX_DEPTH levels.

    The registry refuses both, but a database written before its checks held (or edited by hand) may hold them.
    ``customer_ids`` runs from a customer to its parent and on up: the cycle (its first customer repeated at the
    end) or the chain too deep.
    """

    def __init__(self, customer_ids: list[str], cycle: bool) -> None:
        self.customer_ids, self.cycle = customer_ids, cycle
        shown = customer_ids if len(customer_ids) <= 12 else [*customer_ids[:10], "...", customer_ids[-1]]
        path = " -> ".join(c if c == "..." else f"customers/{c}" for c in shown)
        super().__init__(f"the account tree holds a cycle: {path}" if cycle else
                         f"the account tree is more than {MAX_DEPTH} levels deep: {path}")


def empty_snapshot() -> Snapshot:
    nothing = np.empty(0)
    return Snapshot("", 0, time.time(), (), (), IdIndex.of([]), np.empty(0, np.int32), np.empty(0, np.int32),
                    np.empty(0, np.uint8), np.empty(0, np.int32),
                    np.empty((0, len(ROLLUP_SIGNALS))), np.empty(0, np.int32), np.empty(0, np.int32), nothing,
                    nothing, np.empty(0, np.int32), np.empty((0, 0)))


# Outcome row arrays and the value of a row that has none (a customer new since the build, or deleted).
OUTCOME_ARRAYS = {"stages": 0, "bad_profit": -1, "run_money": np.nan, "revenue": np.nan, "previous_level": 0,
                  "previous_composite": np.nan}


@dataclass
class RunResults:
    """A run's results as arrays (from StreamRunResults)."""

    run: str
    score_time_us: int
    tiers: list[common_pb2.TierRef]
    dimensions: list[int]
    customer_ids: Ids
    dimension_scores: np.ndarray
    composite: np.ndarray
    tier_levels: np.ndarray
    ranks: np.ndarray
    percentiles: np.ndarray
    # Outcomes: per row the previous run's level and the bad-profit flag (int8, -1 unknown), the stored outcome
    # values (run_money: the model's money signal's column); the previous run's name, end and composites by
    # customer (empty: none).
    previous_levels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    bad_profit: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    outcome_signals: list[str] = field(default_factory=list)
    outcome_values: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    run_money: np.ndarray = field(default_factory=lambda: np.empty(0))
    previous_run: str = ""
    previous_time_us: int = 0
    previous_ids: Ids = field(default_factory=list)
    previous_composite: np.ndarray = field(default_factory=lambda: np.empty(0))


@dataclass
class AccountBase:
    """The registry's view of every customer (from ExportSignalMatrix)."""

    customer_ids: Ids
    parent_ids: Ids
    roles: np.ndarray
    owners: Ids
    rollup_values: np.ndarray
    team: dict[str, list[str]] = field(default_factory=dict)  # role -> one column cell per row
    stages: np.ndarray | None = None  # LifecycleStage per row, uint8
    revenue: np.ndarray | None = None  # the money signal per row (None: annual_revenue of rollup_values)
    money_signal: str = DEFAULT_MONEY_SIGNAL
    # Held accounts (held_accounts): parent rows instead of parent_ids, owners and teams already interned.
    parent_rows: np.ndarray | None = None
    owner_names: Names | None = None
    owner_codes: np.ndarray | None = None
    teams: Teams | None = None
    team_cells: np.ndarray | None = None


def held_accounts(snap: Snapshot) -> AccountBase:
    """The account base ``snap`` holds, as the change feed keeps it (up to snap.sequence), deleted customers left
    out: what the next run joins onto instead of reading every account from the registry again. Blocking; the
    caller keeps patches from writing meanwhile. Owners and teams stay interned (Names and Teams are append-only,
    so the two snapshots can share them)."""
    alive = snap.ids.alive()
    rows = np.flatnonzero(alive)
    renumbered = np.full(snap.size, -1, np.int64)
    renumbered[rows] = np.arange(len(rows))
    parent = snap.parent[rows]
    parent_rows = np.where(parent >= 0, renumbered[np.maximum(parent, 0)], -1)
    column = snap.ids.column()
    ids = column if len(rows) == snap.size else column.take(pa.array(rows))
    return AccountBase(ids, [], snap.roles[rows], [], snap.rollup_values[rows], {}, snap.stages[rows],
                       snap.revenue[rows], snap.money_signal, parent_rows, snap.owner_names, snap.owner_codes[rows],
                       snap.teams, snap.team_cells[rows])


def no_results() -> RunResults:
    """The results of no run: the accounts served before the first run completes."""
    return RunResults("", 0, [], [], [], np.empty((0, 0)), np.empty(0), np.empty(0, np.int32), np.empty(0, np.int64),
                      np.empty(0))


def build(results: RunResults, accounts: AccountBase, inheritance_rule: int, sequence: int) -> Snapshot:
    """Join a run's results onto the account base; customers the run lacks stay unscored."""
    ids = IdIndex.of(accounts.customer_ids)
    n = len(ids)
    # No customer id is empty, so an empty parent id maps to -1 like an unknown one.
    rows_as = row_type(n)
    parent = (accounts.parent_rows if accounts.parent_rows is not None else ids.rows(accounts.parent_ids)) \
        .astype(rows_as, copy=False)
    mapped = ids.rows(results.customer_ids)
    known = mapped >= 0
    rows = mapped[known]
    own = np.zeros(n, np.int32)
    own[rows] = results.tier_levels[known]
    composite = np.full(n, np.nan)
    composite[rows] = results.composite[known]
    percentile = np.full(n, np.nan)
    percentile[rows] = results.percentiles[known]
    rank = np.zeros(n, rows_as)
    rank[rows] = results.ranks[known]
    dims = np.full((n, len(results.dimensions)), np.nan)
    dims[rows] = results.dimension_scores[known]
    # NumPy's sort releases the GIL: the dimensions' and the composites' sorts at once, one per core.
    sorting = [ids_pool().submit(_sorted_scores, column) for column in
               [*np.asarray(results.dimension_scores).T, np.asarray(results.composite)]]
    depth = tree_depths(parent)
    effective = effective_levels(own, parent, depth, len(results.tiers), inheritance_rule)
    child_order, child_start = children_index(parent)
    revenue = accounts.revenue if accounts.revenue is not None and len(accounts.revenue) == n \
        else np.asarray(accounts.rollup_values, np.float64)[:, ROLLUP_SIGNALS.index(DEFAULT_MONEY_SIGNAL)]
    if accounts.owner_codes is not None:
        owner_names, owner_codes = accounts.owner_names, accounts.owner_codes
    else:
        owner_names = Names()
        owner_codes = owner_names.intern(accounts.owners)
    if accounts.team_cells is not None:
        teams, team_cells = accounts.teams, accounts.team_cells
    else:
        teams = Teams()
        team_cells = np.zeros((n, len(accounts.team)), np.int32)
        for role, cells in sorted(accounts.team.items()):
            team_cells[:, teams.role(role)] = teams.intern(cells)
    snap = Snapshot(results.run, results.score_time_us, time.time(), tuple(results.tiers), tuple(results.dimensions),
                    ids, parent, depth, np.array(accounts.roles, np.uint8), owner_codes,
                    np.array(accounts.rollup_values, np.float64), own, effective, composite, percentile, rank, dims,
                    tuple(f.result() for f in sorting[:-1]), sequence, child_order, child_start,
                    run_composites=sorting[-1].result(), teams=teams,
                    team_cells=team_cells, revenue=np.array(revenue, np.float64),
                    money_signal=accounts.money_signal if accounts.revenue is not None else DEFAULT_MONEY_SIGNAL,
                    owner_names=owner_names)
    return attach_outcomes(snap, results, accounts, mapped)


def attach_outcomes(snap: Snapshot, results: RunResults, accounts: AccountBase, rows: np.ndarray) -> Snapshot:
    """Give a built snapshot its outcome arrays (once, in build): stages from the accounts; the run's flags,
    money values and previous levels (``rows``: the snapshot row of each of its results, -1 for none); the
    previous run's composites (customers either run lacks keep the empty values)."""
    if accounts.stages is not None and len(accounts.stages) == snap.size:
        snap.stages = np.array(accounts.stages, np.uint8)
    known = rows >= 0
    for name, column in (("bad_profit", results.bad_profit), ("run_money", results.run_money),
                         ("previous_level", results.previous_levels)):
        if column is not None and len(column) == len(rows):
            getattr(snap, name)[rows[known]] = column[known]
    before = snap.rows(results.previous_ids)
    snap.previous_composite[before[before >= 0]] = results.previous_composite[before >= 0]
    snap.previous_run, snap.previous_time_us = results.previous_run, results.previous_time_us
    return snap


def _sorted_scores(column: np.ndarray) -> np.ndarray:
    """The scores of ``column`` that are not NaN, ascending."""
    return np.sort(column[~np.isnan(column)])


def warm_up() -> None:
    """Compile (or load from the cache) the kernels of a build and a look-up before the first needs them."""
    ids_warm_up()
    for dtype in (np.int32, np.int64):
        bucket_order(np.array([1, -1, 0], dtype), 0, 2)


def children_in(rows: np.ndarray, child_order: np.ndarray, child_start: np.ndarray, parent: np.ndarray,
                adopted: dict[int, frozenset[int]]) -> np.ndarray:
    """The rows whose parent under ``parent`` is one of ``rows``: those the build's index (child_order,
    child_start) lists under them that still have it, and those ``adopted`` since."""
    built = rows[rows < len(child_start) - 1]  # rows added since the build had no children then
    starts, ends = child_start[built], child_start[built + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    found = np.empty(0, np.int64)
    if total:
        # Every index in [starts[i], ends[i]) for each i, without a Python loop.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        candidates = child_order[offsets]
        found = candidates[parent[candidates] == np.repeat(built, lengths)]
    if not adopted:
        return found
    if len(rows) <= len(adopted):
        keys = rows.tolist()
    else:
        wanted = set(rows.tolist())
        keys = [r for r in adopted if r in wanted]
    extra = [c for r in keys for c in adopted.get(r, ()) if parent[c] == r]
    return np.union1d(found, np.array(extra, np.int64)) if extra else found


def children_index(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(child_order, child_start): the rows with a parent sorted by it, and where each parent's start."""
    return _bucket_sort(parent, 0, len(parent))


def row_type(n: int) -> type:
    """The dtype of row numbers (and ranks) of a snapshot of ``n`` rows: int32, int64 from 2**31 rows."""
    return np.int32 if n < 2**31 - 1 else np.int64


def bucket_order(keys: np.ndarray, low: int, high: int) -> np.ndarray:
    """The rows whose key is in [low, high), by key, rows of equal keys in row order: what a stable argsort of
    them gives, in linear time (a counting sort)."""
    return _bucket_sort(keys, low, high)[0]


def _bucket_sort(keys: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a key in [low, high) by key, stable; where each key's rows start: high - low + 1 of them)."""
    dtype = row_type(len(keys))
    start = np.zeros(high - low + 1, dtype)
    _count_keys(keys, low, high, start)
    order = np.empty(int(start[-1]), dtype)
    _place_rows(keys, low, high, start[:-1].copy(), order)
    return order, start


@numba.njit(cache=True, nogil=True)
def _count_keys(keys, low, high, start):  # pragma: no cover - compiled
    for k in keys:
        if low <= k < high:
            start[k - low + 1] += 1
    for j in range(1, start.shape[0]):
        start[j] += start[j - 1]


@numba.njit(cache=True, nogil=True)
def _place_rows(keys, low, high, at, order):  # pragma: no cover - compiled
    for row in range(keys.shape[0]):
        k = keys[row]
        if low <= k < high:
            order[at[k - low]] = row
            at[k - low] += 1


def with_rule(snapshot: Snapshot, inheritance_rule: int) -> np.ndarray:
    """The effective levels of ``snapshot`` under another inheritance rule (a policy change)."""
    return effective_levels(snapshot.own_level, snapshot.parent, snapshot.depth, len(snapshot.tiers), inheritance_rule)


def tree_depths(parent: np.ndarray) -> np.ndarray:
    """Levels above each row (0 = a top account), or -1 where the way up does not reach a top account within
    MAX_DEPTH levels: a row in or under a cycle, or in a tree deeper than the registry allows. Such data breaks
    the registry's rules (written before its checks held, or edited by hand); every walk of the tree stops at
    these rows instead of going round a cycle for ever. MAX_DEPTH vectorised steps, whatever the data."""
    depth = np.where(parent < 0, 0, -1).astype(np.int32)
    below = np.flatnonzero(parent >= 0)
    for level in range(1, MAX_DEPTH):
        placed = depth[parent[below]] == level - 1
        if not placed.any():
            break
        depth[below[placed]] = level
        below = below[~placed]
    return depth


def effective_levels(own: np.ndarray, parent: np.ndarray, depth: np.ndarray, n_tiers: int, rule: int) -> np.ndarray:
    """Tier levels after inheritance (1 = top; 0 = unscored and nothing inherited). Rows of a broken tree
    (depth -1) inherit nothing: they keep their own level."""
    if rule in (pb.INHERITANCE_RULE_UNSPECIFIED, pb.INHERITANCE_RULE_OWN) or not len(own):
        return own.copy()
    floor = n_tiers + 1  # unscored counts as below the lowest tier
    level = np.where(own == 0, floor, own).astype(np.int64)
    # Rows by depth, top accounts' children first: each row's parent is settled before the row.
    below_top = [np.flatnonzero(depth == d) for d in range(1, int(depth.max(initial=0)) + 1)]
    if rule == pb.INHERITANCE_RULE_TOP_PARENT:
        top = np.arange(len(own))
        for nodes in below_top:
            top[nodes] = top[parent[nodes]]
        level = np.minimum(level, level[top])
    else:  # PARENT_MINUS_ONE: at least the parent's effective level, one level lower
        for nodes in below_top:
            level[nodes] = np.minimum(level[nodes], level[parent[nodes]] + 1)
    result = level.astype(np.int32)
    result[result > n_tiers] = 0
    return result


def tier_changes(old: Snapshot, new: Snapshot) -> list[tuple[str, int, int, str]]:
    """(customer_id, previous effective level, new level, owner) of every customer whose effective tier moved."""
    old_rows = old.rows(new.ids.column()) if old.size else np.full(new.size, -1, np.int64)
    before = np.where(old_rows >= 0, old.effective_level[np.maximum(old_rows, 0)] if old.size else 0, 0)
    moved = np.flatnonzero(before != new.effective_level)
    moved_ids = new.ids.customer_ids(moved)
    return [(customer_id, int(before[r]), int(new.effective_level[r]), new.owner(r))
            for customer_id, r in zip(moved_ids, moved.tolist())]
