"""Adoption kernels against the NumPy reference (scoring_engine/reference.py): random hierarchies and
telemetry, serial and parallel, and edge cases; plus one case worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from scoring_engine import adoption
from scoring_engine.reference import adoption_reference

TODAY = 20_000


def random_plan(rng: np.random.Generator, n_events: int = 12):
    """A hierarchy of 1-2 strategies down to 1-3 children per node, random rules over ``n_events`` ids."""
    levels, parents, kinds, ks, shares = [1], [-1], [], [], []
    frontier = [0]
    for level in (2, 3, 4):
        next_frontier = []
        for parent in frontier:
            for _ in range(rng.integers(1, 4)):
                levels.append(level)
                parents.append(parent)
                next_frontier.append(len(levels) - 1)
        frontier = next_frontier
    order = np.argsort(levels, kind="stable")  # parents first
    position = np.empty(len(levels), np.int64)
    position[order] = np.arange(len(levels))
    levels = np.array(levels)[order]
    parents = np.array([position[p] if p >= 0 else -1 for p in np.array(parents)[order]])
    n = len(levels)
    n_children = np.bincount(parents[parents >= 0], minlength=n)
    for node in range(n):
        kind = rng.integers(1, 4) if levels[node] < 4 else 0
        kinds.append(kind)
        ks.append(rng.integers(1, n_children[node] + 1) if kind == adoption.RULE_AT_LEAST else 0)
        shares.append(rng.choice([0.25, 0.5, 2 / 3, 1.0]) if kind == adoption.RULE_WEIGHTED_SHARE else 0.0)
    weights = rng.choice([0.5, 1.0, 2.0, 3.0], size=n)
    n_procedures = int((levels == 4).sum())
    events = [rng.choice(n_events, size=rng.integers(1, 4), replace=False).tolist() for _ in range(n_procedures)]
    windows = rng.integers(1, 40, n_procedures)
    minimums = [rng.integers(0, 6, n_procedures) for _ in range(3)]
    minimums[0] = np.where((minimums[1] == 0) & (minimums[2] == 0) & (minimums[0] == 0), 1, minimums[0])
    minimums[1] = np.minimum(minimums[1], windows)
    return adoption.plan(levels, parents, weights, kinds, ks, shares, events, windows, *minimums, n_events)


def random_telemetry(rng: np.random.Generator, n_customers: int, rows: int, n_events: int = 12):
    customers = rng.integers(0, n_customers, rows)
    events = rng.integers(-1, n_events + 2, rows)  # some ids no rule counts, some beyond the plan
    days = TODAY - rng.integers(-2, 60, rows)  # some in the future, some beyond every window
    counts = rng.integers(1, 5, rows)
    users = rows // 2
    user_columns = (rng.integers(0, n_customers, users), rng.integers(0, n_events, users),
                    rng.integers(0, 6, users) * 1_000_003 - 2**62, TODAY - rng.integers(-1, 50, users))
    return (customers, events, days, counts, *user_columns)


def assert_same(got: adoption.AdoptionResult, want: adoption.AdoptionResult) -> None:
    for name in ("counts", "days", "users", "last_day", "achieved", "progress"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@pytest.mark.parametrize("seed", range(6))
def test_kernels_match_the_reference_on_random_hierarchies(seed):
    rng = np.random.default_rng(seed)
    plan = random_plan(rng)
    for n_customers, rows in ((7, 60), (3000, 20_000)):  # serial, then parallel (customers x nodes >= 4096)
        columns = random_telemetry(rng, n_customers, rows)
        assert_same(adoption.evaluate(plan, TODAY, n_customers, *columns),
                    adoption_reference(plan, TODAY, n_customers, *columns))


def test_edge_cases_match_the_reference():
    rng = np.random.default_rng(42)
    plan = random_plan(rng)
    empty = [np.empty(0, np.int64)] * 4
    for n_customers, columns in ((5, (*empty, *empty)),  # no telemetry at all
                                 (1, ([0], [3], [TODAY], [1], *empty)),  # one row
                                 (4, ([3, 3, 3], [1, 1, 1], [TODAY, TODAY, TODAY], [2**40, 1, 1], *empty))):
        got = adoption.evaluate(plan, TODAY, n_customers, *columns)
        assert_same(got, adoption_reference(plan, TODAY, n_customers, *columns))
    nothing = adoption.evaluate(plan, TODAY, 2, *empty, *empty)
    assert (nothing.last_day == -1).all() and not nothing.counts.any()


def worked_plan():
    """strategy <- initiative (AT_LEAST 1) <- use case (WEIGHTED_SHARE 0.6) <- two procedures:
    "report" (event 0: 3 events on 2 days in 7) weight 2, and "share" (events 1 and 2: 2 users in 30)."""
    return adoption.plan(levels=[1, 2, 3, 4, 4], parents=[-1, 0, 1, 2, 2], weights=[1, 1, 1, 2, 1],
                         rule_kinds=[1, 2, 3, 0, 0], min_children=[0, 1, 0, 0, 0], min_shares=[0, 0, 0.6, 0, 0],
                         procedure_events=[[0], [1, 2]], windows=[7, 30], min_counts=[3, 0], min_days=[2, 0],
                         min_users=[0, 2], n_event_ids=3)


def test_a_case_worked_by_hand():
    plan = worked_plan()
    # Customer 0: 2 events today, 1 event 8 days ago (outside the 7-day window): 2 of 3 events, 1 of 2 days.
    # Customer 1: 2 + 1 events on 2 days within the window; one user on both of "share"'s events.
    rows = ([0, 0, 1, 1], [0, 0, 0, 0], [TODAY, TODAY - 8, TODAY, TODAY - 6], [2, 1, 2, 1])
    users = ([1, 1], [1, 2], [77, 77], [TODAY, TODAY - 3])
    got = adoption.evaluate(plan, TODAY, 2, *rows, *users)
    assert got.counts.tolist() == [[2, 0], [3, 0]] and got.days.tolist() == [[1, 0], [2, 0]]
    assert got.users.tolist() == [[0, 0], [0, 1]]  # the same user on two events counts once
    assert got.achieved.tolist() == [[False] * 5, [True, True, True, True, False]]
    assert got.progress[0, 3] == pytest.approx((2 / 3 + 1 / 2) / 2) and got.progress[1, 4] == 0.5
    assert got.progress[1, 2] == 1.0 and got.progress[0, 2] == 0.0  # weight 2 of 3 achieved: 0.67 >= 0.6
    # Last activity comes from the daily rows ("share" has none here, only users).
    assert got.last_day.tolist() == [[TODAY] * 4 + [-1], [TODAY] * 4 + [-1]]
    assert_same(got, adoption_reference(plan, TODAY, 2, *rows, *users))


def test_plans_that_cannot_be_evaluated_are_refused():
    with pytest.raises(adoption.AdoptionPlanError, match="before its children"):
        adoption.plan([1, 2], [1, -1], [1, 1], [1, 1], [0, 0], [0, 0], [], [], [], [], [], 1)
    with pytest.raises(adoption.AdoptionPlanError, match="one level up"):
        adoption.plan([1, 3], [-1, 0], [1, 1], [1, 1], [0, 0], [0, 0], [], [], [], [], [], 1)
    with pytest.raises(adoption.AdoptionPlanError, match="event ids"):
        adoption.plan([1, 2, 3, 4], [-1, 0, 1, 2], [1] * 4, [1, 1, 1, 0], [0] * 4, [0] * 4, [[5]], [7], [1], [0],
                      [0], 3)
