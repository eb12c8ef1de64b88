"""The registry's changes applied to a snapshot in place, between runs.

A batch of WatchCustomerChanges messages (each row a customer as it now stands, or its deletion) and the live
scores of the customers whose signals changed become a Patch: worked out on a worker thread from the snapshot as
it is (only the one patcher writes it, so it holds still meanwhile), then written on the event loop in one step
(``apply``), where every reader runs. Work is proportional to the batch and the subtrees it touches, not to
the base: new customers are appended (the arrays lengthened by one concatenation), fields patched, a changed
parent or own tier re-applies the inheritance rule to that customer's subtree only, deletions are removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.registry.v1 import registry_service_pb2
from services.hierarchy import snapshot as snapshots
from services.hierarchy.snapshot import MAX_DEPTH, OUTCOME_ARRAYS, ROLLUP_SIGNALS, Snapshot
from wire.columns import from_matrix

# Array fields of a snapshot, one value per row, and what a new row starts with.
ROW_ARRAYS = {"parent": -1, "depth": 0, "roles": 0, "rollup_values": np.nan, "own_level": 0, "effective_level": 0,
              "composite": np.nan, "percentile": np.nan, "rank": 0, "dimension_scores": np.nan, "live_time_us": 0,
              "team_cells": 0, "owner_codes": 0, **OUTCOME_ARRAYS}
# A feed row's stage when its message carried none (older registries): not a LifecycleStage value.
STAGE_NOT_SENT = 255


@dataclass
class FeedRows:
    """Customers as a batch of feed messages left them: the last change of each wins."""

    ids: list[str]
    deleted: np.ndarray        # bool
    parent_ids: list[str]
    roles: np.ndarray          # uint8
    owners: list[str]
    signal_names: list[str]
    signals: np.ndarray        # float64 (rows, signal_names), NaN missing
    sequence: int              # the last sequence the batch holds
    # Each row's own current team: role -> one cell per row ("a@x;b@x"; "" for none, a role no row has is absent).
    team: dict[str, list[str]] = field(default_factory=dict)
    # LifecycleStage per row; STAGE_NOT_SENT for a row of a message without stages (the row keeps its own).
    stages: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))

    def signal_columns(self, names: Sequence[str]) -> np.ndarray:
        """The values of ``names`` (NaN for a signal no row carries)."""
        out = np.full((len(self.ids), len(names)), np.nan)
        for j, name in enumerate(names):
            if name in self.signal_names:
                out[:, j] = self.signals[:, self.signal_names.index(name)]
        return out


def feed_rows(messages: Sequence[registry_service_pb2.WatchCustomerChangesResponse]) -> FeedRows:
    names = list(dict.fromkeys(name for message in messages for name in message.chunk.column_names))
    ids: list[str] = []
    parents: list[str] = []
    owners: list[str] = []
    team: dict[str, list[str]] = {}
    signals = np.full((sum(len(m.chunk.customer_ids) for m in messages), len(names)), np.nan)
    for message in messages:  # whole repeated fields at once: an element at a time costs ten times more
        start = len(ids)
        ids += message.chunk.customer_ids
        parents += message.parent_ids
        owners += message.owners
        for column in message.team:  # a role a message lacks: no member in it for that message's rows
            team.setdefault(column.role, [""] * start).extend(column.persons)
        for cells in team.values():
            cells.extend([""] * (len(ids) - len(cells)))
        if message.chunk.column_names:
            columns = [names.index(name) for name in message.chunk.column_names]
            signals[start:len(ids), columns] = from_matrix(message.chunk.values)
    deleted = np.frombuffer(b"".join(m.deleted for m in messages), np.uint8).astype(bool)
    roles = np.frombuffer(b"".join(m.stakeholder_roles for m in messages), np.uint8).copy()
    stages = np.frombuffer(b"".join(m.lifecycle_stages if m.lifecycle_stages
                                    else bytes([STAGE_NOT_SENT]) * len(m.chunk.customer_ids) for m in messages),
                           np.uint8).copy()
    if len(set(ids)) < len(ids):  # a customer changed in two messages: its last change only
        seen: set[str] = set()
        keep = np.zeros(len(ids), bool)
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] not in seen:
                seen.add(ids[i])
                keep[i] = True
        rows = np.flatnonzero(keep).tolist()
        ids, parents, owners = [ids[i] for i in rows], [parents[i] for i in rows], [owners[i] for i in rows]
        deleted, roles, signals, stages = deleted[keep], roles[keep], signals[keep], stages[keep]
        team = {role: [cells[i] for i in rows] for role, cells in team.items()}
    return FeedRows(ids, deleted, parents, roles, owners, names, signals,
                    max((message.last_sequence for message in messages), default=0), team, stages)


@dataclass
class Scores:
    """Live scores of some of a batch's customers, from the run's fitted model."""

    ids: list[str]
    composite: np.ndarray
    levels: np.ndarray         # int32, 1 = top
    dimensions: np.ndarray     # (len(ids), the snapshot's dimensions)
    time_us: int


@dataclass
class Patch:
    sequence: int
    new_ids: list[str]
    grown: dict[str, np.ndarray]                    # arrays lengthened for the new rows (swapped in first)
    writes: list[tuple[str, np.ndarray, np.ndarray]]  # (array, rows, values)
    owners: list[tuple[int, str]]
    deleted_ids: list[str]
    adopted: dict[int, frozenset[int]]
    removed: int
    # (customer_id, effective level before, after, owner) of each customer whose effective tier moved.
    moves: list[tuple[str, int, int, str]] = field(default_factory=list)
    live: int = 0              # rows given live scores


def plan(snap: Snapshot, rows: FeedRows, scores: Scores | None, rule: int, with_moves: bool = True) -> Patch:
    """What ``rows`` and ``scores`` change in ``snap`` (blocking; reads ``snap``, writes nothing of it); with
    the effective-tier moves when ``with_moves`` (someone watches them)."""
    n, k = snap.size, len(rows.ids)
    current = snap.rows(rows.ids)
    upsert = ~rows.deleted
    created = np.flatnonzero(upsert & (current < 0))
    new_ids = [rows.ids[i] for i in created.tolist()]
    n2 = n + len(new_ids)
    target = current.copy()
    target[created] = np.arange(n, n2)
    gone = current[rows.deleted & (current >= 0)]
    grown = _grown(snap, len(new_ids)) if new_ids else {}

    def now(name: str) -> np.ndarray:
        """An array as the patch finds it (lengthened, when rows are added)."""
        return grown.get(name, getattr(snap, name))

    # Accounts: parent, role, owner, the signals summed over subtrees.
    added = dict(zip(new_ids, range(n, n2)))
    up = np.flatnonzero(upsert)
    up_rows = target[up]
    parent_ids = rows.parent_ids if len(up) == k else [rows.parent_ids[i] for i in up.tolist()]
    new_parent = snap.rows(parent_ids)
    if added:  # parents created in this batch too (no customer id is empty: "" stays -1)
        for i in np.flatnonzero(new_parent < 0).tolist():
            new_parent[i] = added.get(parent_ids[i], -1)
    moved = up_rows[now("parent")[up_rows] != new_parent]
    writes = [("parent", up_rows, new_parent), ("parent", gone, np.full(len(gone), -1, np.int64)),
              ("roles", up_rows, rows.roles[up]), ("rollup_values", up_rows, rows.signal_columns(ROLLUP_SIGNALS)[up]),
              ("revenue", up_rows, rows.signal_columns([snap.money_signal])[up, 0])]
    if len(rows.stages) == k:
        staged = up[rows.stages[up] != STAGE_NOT_SENT]
        writes.append(("stages", target[staged], rows.stages[staged]))
    owners = [(int(r), rows.owners[i]) for r, i in zip(up_rows.tolist(), up.tolist())
              if r >= n or snap.owner(r) != rows.owners[i]]
    adopted = dict(snap.adopted)
    for row, above in zip(moved.tolist(), new_parent[np.isin(up_rows, moved)].tolist()):
        if above >= 0:
            adopted[above] = adopted.get(above, frozenset()) | {row}

    writes += _team_writes(snap, rows, up, up_rows, gone, grown)

    # Live scores: only where they differ from what the snapshot holds.
    scored, levels, live = np.empty(0, np.int64), np.empty(0, np.int32), 0
    if scores is not None and len(scores.ids):
        rows_of = dict(zip(rows.ids, target.tolist()))
        scored = np.fromiter(map(rows_of.get, scores.ids, repeat(-1)), np.int64, count=len(scores.ids))
        keep = scored >= 0
        scored, composite = scored[keep], scores.composite[keep]
        levels, dims = scores.levels[keep].astype(np.int32), scores.dimensions[keep]
        differs = ((now("own_level")[scored] != levels) | ~_same(now("composite")[scored], composite)
                   | ~_same(now("dimension_scores")[scored], dims).all(axis=1) | (now("live_time_us")[scored] > 0))
        scored, composite, levels, dims = scored[differs], composite[differs], levels[differs], dims[differs]
        rank, percentile = placed(snap.run_composites, composite)
        writes += [("own_level", scored, levels), ("composite", scored, composite),
                   ("percentile", scored, percentile), ("rank", scored, rank), ("dimension_scores", scored, dims),
                   ("live_time_us", scored, np.full(len(scored), scores.time_us, np.int64))]
        live = len(scored)

    # Deleted customers: their row stays until the next build, cleared.
    for name in ("own_level", "effective_level", "depth", "rank", "roles", "composite", "percentile",
                 "dimension_scores", "rollup_values", "live_time_us", *OUTCOME_ARRAYS):
        array = now(name)
        writes.append((name, gone, np.full((len(gone), *array.shape[1:]), ROW_ARRAYS[name], array.dtype)))
    owners += [(int(r), "") for r in gone.tolist()]

    # Inheritance, again, over the subtrees of what moved, was created or changed tier: read through overlays
    # of the few rows changed, never a copy of the base.
    retiered = scored[now("own_level")[scored] != levels]
    roots = np.unique(np.concatenate([moved, np.arange(n, n2), retiered, gone]))
    moves: list[tuple[str, int, int, str]] = []
    if len(roots):
        parent = _Overlay(now("parent"), np.concatenate([up_rows, gone]),
                          np.concatenate([new_parent, np.full(len(gone), -1, np.int64)]))
        own = _Overlay(now("own_level"), np.concatenate([scored, gone]),
                       np.concatenate([levels, np.zeros(len(gone), np.int32)]))
        affected = _subtrees(snap, roots, parent, adopted)
        depth, effective = _inherit(affected, parent, own, now("depth"), now("effective_level"), len(snap.tiers),
                                    rule)
        kept = ~np.isin(affected, gone)
        affected, depth, effective = affected[kept], depth[kept], effective[kept]
        writes += [("depth", affected, depth), ("effective_level", affected, effective)]
        before = np.zeros(len(affected), np.int32)
        before[affected < n] = snap.effective_level[affected[affected < n]]
        shifted = (before != effective) & with_moves
        owner_now = dict(owners) if shifted.any() else {}
        moves = [(snap.customer_id(r) if r < n else new_ids[r - n], b, a,
                  owner_now.get(r, snap.owner(r) if r < n else ""))
                 for r, b, a in zip(affected[shifted].tolist(), before[shifted].tolist(),
                                    effective[shifted].tolist())]
    if owners:  # interned here, off the loop: Names is append-only, like Teams
        writes.append(("owner_codes", np.array([r for r, _ in owners], np.int64),
                       np.array([snap.owner_names.number(owner) for _, owner in owners], np.int32)))
    deleted_ids = [rows.ids[i] for i in np.flatnonzero(rows.deleted & (current >= 0)).tolist()]
    return Patch(max(rows.sequence, snap.sequence), new_ids, grown, writes, owners, deleted_ids, adopted, len(gone),
                 moves, live)


def apply(snap: Snapshot, patch: Patch) -> None:
    """Write ``patch`` into ``snap``: on the event loop, without an await, so readers see all of it or none."""
    for name, array in patch.grown.items():
        setattr(snap, name, array)
    if patch.new_ids:
        snap.ids.append(patch.new_ids)
    for name, rows, values in patch.writes:
        if len(rows):
            getattr(snap, name)[rows] = values
    snap.ids.delete(patch.deleted_ids)
    snap.adopted = patch.adopted
    snap.removed += patch.removed
    snap.sequence = patch.sequence
    snap.changed()


def placed(run_composites: np.ndarray, composite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, percentile) of live composites among the run's scored customers, as if each joined them: rank 1 +
    those above it, percentile by mid-rank (a NaN composite: rank 0, percentile NaN, as unscored)."""
    below = np.searchsorted(run_composites, composite, side="left")
    equal = np.searchsorted(run_composites, composite, side="right") - below
    total = len(run_composites)
    rank = np.where(np.isnan(composite), 0, total - below - equal + 1).astype(np.int64)
    percentile = np.where(np.isnan(composite), np.nan, 100.0 * (below + (equal + 1) / 2) / (total + 1))
    return rank, percentile


def changes(snap: Snapshot, moves: list[tuple[str, int, int, str]]) -> list[pb.PriorityChange]:
    def tier(level: int):
        return snap.tiers[level - 1] if 0 < level <= len(snap.tiers) else None

    return [pb.PriorityChange(customer=f"customers/{customer_id}", previous_tier=tier(before), new_tier=tier(after),
                              owner=owner, run=snap.run, live=True)
            for customer_id, before, after, owner in moves]


# -- the parts ----------------------------------------------------------------------------------------

def _grown(snap: Snapshot, added: int) -> dict[str, np.ndarray]:
    """Every row array lengthened by ``added`` rows of its start value. Views of a buffer with room to spare:
    the rows beyond the snapshot's are not read by anyone, so they are written here; a buffer without room is
    replaced by one an eighth larger than needed (a copy, once in a while)."""
    grown = {}
    for name, start in ROW_ARRAYS.items():
        array = getattr(snap, name)
        n = len(array)
        buffer = array.base if isinstance(array.base, np.ndarray) and array.base.ndim == array.ndim else None
        if buffer is None or len(buffer) < n + added or not np.shares_memory(buffer[:1], array[:1]) and n:
            buffer = np.empty((n + added + max((n + added) // 8, 1024), *array.shape[1:]), array.dtype)
            buffer[:n] = array
        buffer[n:n + added] = start
        grown[name] = buffer[:n + added]
    return grown


def _team_writes(snap: Snapshot, rows: FeedRows, up: np.ndarray, up_rows: np.ndarray, gone: np.ndarray,
                 grown: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every changed row's whole team (a role its row does not carry has no member), deleted rows' cleared. Cells
    and roles new to the snapshot are interned into snap.teams (append-only: readers are not disturbed); a new
    role widens team_cells, in ``grown``, by a copy."""
    teams = snap.teams
    columns = [teams.role(role) for role in rows.team]
    cells = grown.get("team_cells", snap.team_cells)
    if len(teams.roles) > cells.shape[1]:
        wider = np.zeros((len(cells), len(teams.roles)), np.int32)
        wider[:, :cells.shape[1]] = cells
        grown["team_cells"] = cells = wider
    values = np.zeros((len(up), cells.shape[1]), np.int32)
    for column, texts in zip(columns, rows.team.values()):
        values[:, column] = teams.intern([texts[i] for i in up.tolist()])
    return [("team_cells", up_rows, values), ("team_cells", gone, np.zeros((len(gone), cells.shape[1]), np.int32))]


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


class _Overlay:
    """An array as a patch will leave it, read without copying it: ``base``, but ``values`` at ``rows``."""

    def __init__(self, base: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
        order = np.argsort(rows, kind="stable")
        self.base, self.rows, self.values = base, rows[order], values[order]

    def __getitem__(self, at):
        found = self.base[at]
        if not len(self.rows):
            return found
        position = np.minimum(np.searchsorted(self.rows, at), len(self.rows) - 1)
        return np.where(self.rows[position] == at, self.values[position], found)


def _subtrees(snap: Snapshot, roots: np.ndarray, parent: _Overlay, adopted: dict) -> np.ndarray:
    """``roots`` and every row below them under ``parent``, each once (a cycle stops after MAX_DEPTH levels)."""
    seen = set(roots.tolist())
    found, frontier = [roots], roots
    built = snap.child_order, snap.child_start
    for _ in range(MAX_DEPTH + 1):
        if not len(frontier):
            break
        frontier = snapshots.children_in(frontier, *built, parent, adopted)
        fresh = [r for r in frontier.tolist() if r not in seen]
        seen.update(fresh)
        frontier = np.array(fresh, np.int64)
        found.append(frontier)
    return np.concatenate(found).astype(np.int64)


def _inherit(rows: np.ndarray, parent: _Overlay, own: _Overlay, depth_now: np.ndarray, effective_now: np.ndarray,
             n_tiers: int, rule: int) -> tuple[np.ndarray, np.ndarray]:
    """(depth, effective level) of ``rows`` (closed under children) again, as snapshot.build would give them:
    parents first, level by level, a parent outside ``rows`` keeping what it has; a row whose way up does not
    reach a top account within MAX_DEPTH levels is broken (depth -1, its own level)."""
    k = len(rows)
    if not k:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    order = np.argsort(rows)
    ranked = rows[order]
    above = parent[rows]
    position = np.minimum(np.searchsorted(ranked, np.maximum(above, 0)), k - 1)
    local = np.where((above >= 0) & (ranked[position] == above), order[position], -1)  # parent's place in rows
    mine = own[rows]
    depth = np.full(k, -2, np.int32)  # -2: not placed yet
    settled, pending = [], np.arange(k)
    for _ in range(MAX_DEPTH):
        p, at = above[pending], local[pending]
        theirs = np.where(p < 0, -1, np.where(at >= 0, depth[np.maximum(at, 0)], depth_now[np.maximum(p, 0)]))
        ready = (p < 0) | (theirs >= -1)
        placed = pending[ready]
        depth[placed] = np.where(p[ready] < 0, 0, np.where(theirs[ready] >= 0, theirs[ready] + 1, -1))
        settled.append(placed)
        pending = pending[~ready]
        if not len(pending):
            break
    depth[pending] = -1  # in a cycle, or deeper than allowed
    depth[depth >= MAX_DEPTH] = -1
    floor = n_tiers + 1
    effective = np.zeros(k, np.int32)
    for placed in settled:
        level = np.where(mine[placed] == 0, floor, mine[placed])
        inherits = depth[placed] > 0
        if rule == pb.INHERITANCE_RULE_PARENT_MINUS_ONE and inherits.any():
            p, at = above[placed][inherits], local[placed][inherits]
            theirs = np.where(at >= 0, effective[np.maximum(at, 0)], effective_now[p])
            level[inherits] = np.minimum(level[inherits], np.where(theirs == 0, floor, theirs) + 1)
        elif rule == pb.INHERITANCE_RULE_TOP_PARENT and inherits.any():
            top = rows[placed][inherits]
            for _ in range(MAX_DEPTH):
                up = parent[top]
                top = np.where(up >= 0, up, top)
            theirs = own[top]
            level[inherits] = np.minimum(level[inherits], np.where(theirs == 0, floor, theirs))
        effective[placed] = np.where(level > n_tiers, 0, level)
    effective[pending] = mine[pending]
    return depth, effective
