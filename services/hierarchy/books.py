"""Books of business: the customers each person serves, per effective tier, from the snapshot's arrays.

A person serves the customers whose effective team (Snapshot.effective_cells: own members of a role, else the
nearest ancestor's) holds them. Figures are bincounts by tier over the rows: a book costs one gather over the
base per role plus work proportional to the book; every person of a role at once costs one bincount by
(cell, tier) over the base, spread over the people of each cell, so a customer served by several people counts
for each of them and once in the total.
"""

from __future__ import annotations

import numpy as np

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from services.hierarchy.snapshot import Snapshot

MAX_PORTFOLIOS = 10_000
# Figures per row, in BookFigures' order after customers.
MEASURES = ("composite_value", "revenue", "at_risk", "bad_profit", "bad_profit_known", "previous_run_customers")


def measures(snap: Snapshot, rows: np.ndarray | slice) -> np.ndarray:
    """(rows, MEASURES) float64: each row's contribution to the figures."""
    level = snap.effective_level[rows]
    bad = snap.bad_profit[rows]
    return np.column_stack([np.nan_to_num(snap.composite[rows]), np.nan_to_num(snap.revenue[rows]),
                            snap.stages[rows] == common_pb2.LIFECYCLE_STAGE_AT_RISK, bad == 1, bad >= 0,
                            (snap.previous_level[rows] == level) & (level > 0)])


def by_tier(snap: Snapshot, keys: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    """(groups, tiers + 1, 1 + MEASURES): customers and measures summed per (group, tier); tier index 0 holds the
    customers without a tier. ``keys``: each row's group."""
    tiers = len(snap.tiers) + 1
    flat = keys * tiers + values[:, 0].astype(np.int64)
    out = np.empty((groups * tiers, 1 + len(MEASURES)))
    out[:, 0] = np.bincount(flat, minlength=groups * tiers)
    for m in range(len(MEASURES)):
        out[:, 1 + m] = np.bincount(flat, weights=values[:, 1 + m], minlength=groups * tiers)
    return out.reshape(groups, tiers, 1 + len(MEASURES))


def row_values(snap: Snapshot, rows: np.ndarray | slice) -> np.ndarray:
    """(rows, 1 + MEASURES): the effective level, then the measures."""
    return np.column_stack([snap.effective_level[rows], measures(snap, rows)])


def person_rows(snap: Snapshot, person: int, columns: list[int]) -> np.ndarray:
    """The rows whose effective team holds ``person`` in one of ``columns``, each once."""
    cells = snap.effective_cells
    holds = np.zeros(len(snap.teams.cells), bool)
    holds[snap.teams.cells_of(person)] = True
    mask = np.zeros(snap.size, bool)
    for j in columns:
        if j < cells.shape[1]:
            mask |= holds[cells[:, j]]
    return np.flatnonzero(mask)


def book(snap: Snapshot, person: str, role: str, rows: np.ndarray, capacity: int) -> pb.BookOfBusiness:
    values = row_values(snap, rows)
    sums = by_tier(snap, np.zeros(len(rows), np.int64), values, 1)[0]
    answer = pb.BookOfBusiness(person=person, role=role, run=snap.run, previous_run=snap.previous_run,
                               capacity=capacity)
    fill_book(snap, answer, sums, np.flatnonzero(snap.previous_level[rows] > 0).size)
    return answer


def fill_book(snap: Snapshot, answer: pb.BookOfBusiness, sums: np.ndarray, previous_total: int) -> None:
    """``sums``: (tiers + 1, 1 + MEASURES) as by_tier gives them for one group."""
    for level in [*range(1, len(snap.tiers) + 1), 0]:
        if sums[level, 0]:
            tier = snap.tiers[level - 1] if level else common_pb2.TierRef()
            answer.tiers.add(tier=tier, figures=figures(sums[level]))
    answer.total.CopyFrom(figures(sums.sum(axis=0)))
    answer.total.previous_run_customers = previous_total
    if answer.capacity:
        answer.load = answer.total.customers / answer.capacity


def figures(row: np.ndarray) -> pb.BookFigures:
    customers, composite, revenue, at_risk, bad, known, previous = row.tolist()
    return pb.BookFigures(customers=round(customers), composite_value=composite, revenue=revenue,
                          at_risk=round(at_risk), bad_profit=round(bad), bad_profit_known=round(known),
                          previous_run_customers=round(previous))


def portfolios(snap: Snapshot, role: str, capacities: dict[str, int]) -> pb.ListPortfoliosResponse:
    """Every person holding ``role`` in some customer's effective team, most customers first."""
    answer = pb.ListPortfoliosResponse()
    column = snap.teams.role_index.get(role)
    cells = snap.effective_cells
    if column is None or column >= cells.shape[1]:
        return answer
    served = np.flatnonzero(cells[:, column])
    keys = cells[served, column].astype(np.int64)  # each served row is in exactly one cell of the role
    values = row_values(snap, served)
    per_cell = by_tier(snap, keys, values, len(snap.teams.cells))
    previous_cell = np.bincount(keys, weights=snap.previous_level[served] > 0, minlength=len(snap.teams.cells))
    used = np.flatnonzero(per_cell[:, :, 0].sum(axis=1))
    # Spread each cell's sums over its people.
    teams = snap.teams
    pairs = [(cell, p) for cell in used.tolist() for p in teams.cells[cell]]
    cell_index = np.array([k for k, _ in pairs], np.int64)
    people, person_index = np.unique(np.array([p for _, p in pairs], np.int64), return_inverse=True)
    per_person = np.zeros((len(people), *per_cell.shape[1:]))
    np.add.at(per_person, person_index, per_cell[cell_index])
    previous = np.zeros(len(people))
    np.add.at(previous, person_index, previous_cell[cell_index])
    counts = per_person[:, :, 0].sum(axis=1).tolist()
    order = sorted(range(len(people)), key=lambda i: (-counts[i], teams.people[int(people[i])]))[:MAX_PORTFOLIOS]
    for i in order:
        person = teams.people[int(people[i])]
        entry = answer.portfolios.add(person=person, role=role, run=snap.run, previous_run=snap.previous_run,
                                      capacity=capacities.get(person, 0))
        fill_book(snap, entry, per_person[i], int(previous[i]))
        answer.overloaded += entry.load > 1
    answer.total.CopyFrom(figures(per_cell.sum(axis=(0, 1))))
    answer.total.previous_run_customers = int(previous_cell.sum())
    return answer
