"""First achieved days over the kept history: the cumulative-sum kernel against the day-by-day replay of the
NumPy reference, on random rows (serial and parallel sizes) and on edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from scoring_engine import adoption, adoption_history
from scoring_engine import reference as R

TODAY, FIRST_DAY = 20_000, 20_000 - 39


def hierarchy() -> adoption.AdoptionPlan:
    """strategy <- initiative (at least 1) <- two use cases (all; weighted share 0.6) <- five procedures: counts
    with active days, a distinct-users rule, a one-day window and an event two procedures count."""
    levels = [1, 2, 3, 3, 4, 4, 4, 4, 4]
    parents = [-1, 0, 1, 1, 2, 2, 3, 3, 3]
    weights = [1, 1, 1, 1, 1, 1, 2, 1, 1]
    return adoption.plan(levels, parents, weights, rule_kinds=[1, 2, 1, 3, 0, 0, 0, 0, 0],
                         min_children=[0, 1, 0, 0, 0, 0, 0, 0, 0], min_shares=[0, 0, 0, 0.6, 0, 0, 0, 0, 0],
                         procedure_events=[[0], [1, 2], [2], [3], [4]], windows=[7, 30, 14, 1, 10],
                         min_counts=[5, 1, 0, 2, 0], min_days=[2, 0, 0, 1, 0], min_users=[0, 0, 2, 0, 1],
                         n_event_ids=6)


def rows(n: int, n_rows: int, seed: int):
    rng = np.random.default_rng(seed)
    daily = (rng.integers(0, n, n_rows), rng.integers(0, 6, n_rows), rng.integers(FIRST_DAY - 5, TODAY + 3, n_rows),
             rng.integers(1, 4, n_rows))
    first = rng.integers(FIRST_DAY - 5, TODAY + 1, n_rows // 2)
    users = (rng.integers(0, n, n_rows // 2), rng.integers(0, 6, n_rows // 2), rng.integers(0, 5, n_rows // 2),
             first, first + rng.integers(0, 12, n_rows // 2))
    return daily, users


@pytest.mark.parametrize("n, n_rows, seed", [(1, 0, 0), (1, 30, 1), (60, 1500, 2), (460, 5000, 3)])
def test_the_kernel_matches_the_day_by_day_replay(n, n_rows, seed):
    plan = hierarchy()
    daily, users = rows(n, n_rows, seed)
    got = adoption_history.first_achieved_days(plan, FIRST_DAY, TODAY, n, *daily, *users)
    want = R.first_achieved_reference(plan, FIRST_DAY, TODAY, n, *daily, *users)
    np.testing.assert_array_equal(got, want)
    if n > 1:
        assert (got >= 0).any() and (got < 0).any()  # the data reaches and misses rules: the test can fail


def test_a_rule_held_once_keeps_its_first_day_and_today_agrees_with_evaluate():
    plan = hierarchy()
    # Customer 0: 5 events of event 0 on two days 30 days ago (held then, lost since); customer 1: today.
    daily = ([0, 0, 1, 1], [0, 0, 0, 0], [TODAY - 30, TODAY - 29, TODAY, TODAY - 1], [3, 2, 4, 1])
    got = adoption_history.first_achieved_days(plan, FIRST_DAY, TODAY, 2, *daily)
    procedure = int(plan.procedure_nodes[0])
    assert got[0, procedure] == TODAY - 29 and got[1, procedure] == TODAY
    now = adoption.evaluate(plan, TODAY, 2, *daily)
    assert not now.achieved[0, procedure] and now.achieved[1, procedure]
    assert (got[:, 2] == -1).all()  # use case 2 needs the one event of procedures 0 and 1 together
    with pytest.raises(ValueError, match="today"):
        adoption_history.first_achieved_days(plan, TODAY, TODAY - 1, 1, [], [], [], [])
