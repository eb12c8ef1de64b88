"""First achieved days, derived again over the kept history (when a value hierarchy version is activated).

For each customer and node: the first day in ``first_day .. today`` on which the node's rule held, as
:func:`scoring_engine.adoption.evaluate` would have found it that day (its windows ending that day), or -1.
Only rows of ``first_day`` on count (the kept history). Distinct users come from the store's span per
customer, event and user (first and last day seen): a user counts in a window that overlaps its span, so a
user seen on days 1 and 30 counts in every window in between; that is all the store keeps.
``scoring_engine.reference.first_achieved_reference`` replays the days one by one with the NumPy reference.
"""

from __future__ import annotations

import numpy as np

from . import _history_kernels as kernels
from ._config import PARALLEL_LOCK, PARALLEL_MIN_ROWS
from .adoption import AdoptionPlan, _grouped, _in_order


def first_achieved_days(plan: AdoptionPlan, first_day: int, today: int, n_customers: int, customers, events, days,
                        counts, user_customers=(), user_events=(), user_hashes=(), user_first_days=(),
                        user_last_days=()) -> np.ndarray:
    """int64 (customers, nodes): the first day each node held, -1 for never. Rows need no order."""
    if today < first_day:
        raise ValueError("today must not come before first_day")
    customers = np.asarray(customers, np.int64)
    events, days, counts = (np.asarray(a, np.int64) for a in (events, days, counts))
    if not len(customers) == len(events) == len(days) == len(counts):
        raise ValueError("customers, events, days and counts must have one value per row")
    if len(customers) and (customers.min() < 0 or customers.max() >= n_customers):
        raise ValueError(f"customer indices must be 0 to {n_customers - 1}")
    user_customers, user_events, user_hashes, user_first_days, user_last_days = (
        np.asarray(a, np.int64) for a in (user_customers, user_events, user_hashes, user_first_days, user_last_days))
    order, ptr = _grouped(customers, n_customers)
    user_order = np.lexsort((user_hashes, user_customers)) if len(user_customers) else np.empty(0, np.int64)
    user_ptr = np.searchsorted(user_customers[user_order], np.arange(n_customers + 1)).astype(np.int64)
    out = np.full((n_customers, plan.n_nodes), -1, np.int64)
    arguments = (first_day, today, ptr, *_in_order(order, events, days, counts), user_ptr, user_events[user_order],
                 user_hashes[user_order], user_first_days[user_order], user_last_days[user_order], plan.event_ptr,
                 plan.event_procedures, plan.windows, plan.procedure_nodes, plan.min_counts, plan.min_days,
                 plan.min_users, plan.parents, plan.child_ptr, plan.children, plan.rule_kinds, plan.min_children,
                 plan.min_shares, plan.weights, out)
    if n_customers * max(plan.n_nodes, 1) < PARALLEL_MIN_ROWS:
        kernels.first_days_serial(*arguments)
    else:
        with PARALLEL_LOCK:
            kernels.first_days_parallel(*arguments)
    return out


def warm_up() -> None:
    """Compiles (or loads) both kernels on a tiny hierarchy, as servers do at start-up."""
    from .adoption import plan

    tiny = plan([1, 2, 3, 4], [-1, 0, 1, 2], [1.0] * 4, [1, 2, 3, 0], [0, 1, 0, 0], [0, 0, 0.5, 0], [[0]], [7],
                [1], [1], [1], 1)
    for n in (1, PARALLEL_MIN_ROWS):
        first_achieved_days(tiny, 5, 10, n, [0], [0], [8], [1], [0], [0], [5], [8], [9])
