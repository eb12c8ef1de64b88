"""Adoption: which nodes of a value hierarchy each customer has achieved, from daily telemetry aggregates.

A plain library like the rest of the engine (no gRPC, no database). A value hierarchy is compiled once into
an :class:`AdoptionPlan` (flat arrays); :func:`evaluate` then takes the daily aggregates of any number of
customers as NumPy columns and returns, per customer and node, whether it is achieved, its progress and the
last day with activity, plus per procedure the figures its rule compares (events, active days, distinct
users in the window), which is what "why not" is told from.

Definitions (``scoring_engine.reference.adoption_reference`` follows them independently):

* A procedure's window is the ``window_days`` days ending ``today`` (``today - window_days + 1`` to
  ``today``, days since 1970-01-01 UTC). Within it: ``count`` sums the events of the rule's event names,
  ``days`` counts distinct days with at least one, ``users`` counts distinct users seen (a user row's
  ``last_day`` in the window; the same user on two of the rule's events counts once).
* A procedure is achieved when each minimum is reached; its progress is the mean, over the minimums above
  0, of ``min(1, figure / minimum)``.
* Above procedures: ALL is achieved when every child is, progress the children's mean progress; AT_LEAST k
  when k children are, progress the mean of the k highest children's progress; WEIGHTED_SHARE x when the
  achieved children's weights make at least x of the children's weights, progress ``min(1, share / x)``.
* Last activity: a procedure's latest day with any of its events (in or before its window), -1 for none;
  a node above, its children's latest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _adoption_kernels as kernels
from ._config import PARALLEL_LOCK, PARALLEL_MIN_ROWS

PROCEDURE = 4
RULE_ALL, RULE_AT_LEAST, RULE_WEIGHTED_SHARE = 1, 2, 3


class AdoptionPlanError(ValueError):
    """A value hierarchy that cannot be evaluated (the adoption service validates before it plans)."""


@dataclass(frozen=True)
class AdoptionPlan:
    """A value hierarchy as arrays. Nodes are in an order where every parent comes before its children.

    Per node: ``levels`` (1 strategy .. 4 procedure), ``parents`` (index, -1 for strategies), ``weights``,
    ``rule_kinds`` / ``min_children`` / ``min_shares`` (nodes above procedures). Per procedure (in node
    order): ``procedure_nodes`` (its node), ``windows``, ``min_counts``, ``min_days``, ``min_users`` and
    its event ids as CSR (``event_ptr`` over ``event_procedures``: for each event id, the procedures that
    count it). Children as CSR: ``child_ptr`` over ``children``.
    """

    levels: np.ndarray
    parents: np.ndarray
    weights: np.ndarray
    rule_kinds: np.ndarray
    min_children: np.ndarray
    min_shares: np.ndarray
    procedure_nodes: np.ndarray
    windows: np.ndarray
    min_counts: np.ndarray
    min_days: np.ndarray
    min_users: np.ndarray
    event_ptr: np.ndarray
    event_procedures: np.ndarray
    child_ptr: np.ndarray
    children: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.levels)

    @property
    def n_procedures(self) -> int:
        return len(self.procedure_nodes)


def plan(levels, parents, weights, rule_kinds, min_children, min_shares, procedure_events, windows, min_counts,
         min_days, min_users, n_event_ids: int) -> AdoptionPlan:
    """Compiles a hierarchy. Per node: level, parent index (-1), weight, children rule (kind, k, share; any
    value on procedures). Per procedure, in node order: its event ids (a list of ints below
    ``n_event_ids``), window, minimum count, days and users."""
    levels = np.asarray(levels, np.int8)
    parents = np.asarray(parents, np.int64)
    n = len(levels)
    if n == 0 or np.any(parents >= np.arange(n)) or np.any(parents < -1):
        raise AdoptionPlanError("every parent must come before its children")
    if np.any((levels == 1) != (parents == -1)) or np.any(levels[parents[parents >= 0]] != levels[parents >= 0] - 1):
        raise AdoptionPlanError("strategies have no parent; every other node's parent is one level up")
    procedure_nodes = np.flatnonzero(levels == PROCEDURE)
    if len(procedure_events) != len(procedure_nodes):
        raise AdoptionPlanError(f"{len(procedure_nodes)} procedures, {len(procedure_events)} event lists")
    pairs = sorted({(int(e), p) for p, events in enumerate(procedure_events) for e in events})
    if pairs and not 0 <= pairs[0][0] <= pairs[-1][0] < n_event_ids:
        raise AdoptionPlanError(f"event ids must be 0 to {n_event_ids - 1}")
    event_ids = np.array([e for e, _ in pairs], np.int64)
    event_ptr = np.searchsorted(event_ids, np.arange(n_event_ids + 1)).astype(np.int64)
    child_order = np.argsort(parents, kind="stable")
    child_order = child_order[parents[child_order] >= 0]
    child_ptr = np.searchsorted(parents[child_order], np.arange(n + 1)).astype(np.int64)
    return AdoptionPlan(
        levels, parents, np.asarray(weights, np.float64), np.asarray(rule_kinds, np.int8),
        np.asarray(min_children, np.int64), np.asarray(min_shares, np.float64), procedure_nodes.astype(np.int64),
        np.asarray(windows, np.int64), np.asarray(min_counts, np.int64), np.asarray(min_days, np.int64),
        np.asarray(min_users, np.int64), event_ptr, np.array([p for _, p in pairs], np.int64),
        child_ptr, child_order.astype(np.int64))


@dataclass
class AdoptionResult:
    """Per customer (rows) and node or procedure (columns)."""

    achieved: np.ndarray  # bool (customers, nodes)
    progress: np.ndarray  # float64 (customers, nodes), 0..1
    last_day: np.ndarray  # int32 (customers, nodes), -1 for no activity
    counts: np.ndarray  # int64 (customers, procedures): events in the window
    days: np.ndarray  # int32 (customers, procedures): distinct active days in the window
    users: np.ndarray  # int32 (customers, procedures): distinct users in the window


def _grouped(customers: np.ndarray, n_customers: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The order that groups rows by customer (stable; None when they are grouped already), and each customer's
    first row (CSR pointer)."""
    order = None
    if len(customers) and not np.all(customers[1:] >= customers[:-1]):
        order = np.argsort(customers, kind="stable")
    ptr = np.searchsorted(customers if order is None else customers[order], np.arange(n_customers + 1))
    return order, ptr.astype(np.int64)


def _in_order(order: np.ndarray | None, *columns: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(c) if order is None else c[order] for c in columns]


def _result(plan: AdoptionPlan, n_customers: int, out: AdoptionResult | None) -> AdoptionResult:
    """Zeroed result arrays: ``out``'s when its shape fits (a block loop re-uses its pages), else new ones."""
    shape_p, shape_n = (n_customers, plan.n_procedures), (n_customers, plan.n_nodes)
    if out is None or out.achieved.shape != shape_n or out.counts.shape != shape_p:
        return AdoptionResult(np.zeros(shape_n, np.bool_), np.zeros(shape_n), np.full(shape_n, -1, np.int32),
                              np.zeros(shape_p, np.int64), np.zeros(shape_p, np.int32), np.zeros(shape_p, np.int32))
    for array in (out.achieved, out.progress, out.counts, out.days, out.users):
        array.fill(0)
    out.last_day.fill(-1)
    return out


def evaluate(plan: AdoptionPlan, today: int, n_customers: int, customers, events, days, counts,
             user_customers=(), user_events=(), user_hashes=(), user_last_days=(),
             out: AdoptionResult | None = None) -> AdoptionResult:
    """Achievement of ``n_customers`` customers (0 .. n_customers - 1) on ``today``.

    Daily aggregates as columns: ``customers`` (index), ``events`` (event id; ids beyond the plan's count
    nothing), ``days``, ``counts``. Users, optional: per customer, event and user (a 64-bit hash), a day
    the user was seen (one row or several: a user counts once). Rows need no order (grouped by customer,
    they are not copied). ``out``, a result of the same shape, is overwritten and returned instead of new
    arrays.
    """
    customers = np.asarray(customers, np.int64)
    events, days, counts = (np.asarray(a, np.int64) for a in (events, days, counts))
    if not len(customers) == len(events) == len(days) == len(counts):
        raise ValueError("customers, events, days and counts must have one value per row")
    if len(customers) and (customers.min() < 0 or customers.max() >= n_customers):
        raise ValueError(f"customer indices must be 0 to {n_customers - 1}")
    window_start = today - plan.windows + 1
    max_window = int(plan.windows.max()) if plan.n_procedures else 1
    order, ptr = _grouped(customers, n_customers)
    user_customers, user_events, user_hashes, user_last_days = (
        np.asarray(a, np.int64) for a in (user_customers, user_events, user_hashes, user_last_days))
    # Users grouped by customer (the kernel sorts each customer's rows by user, so a user counts once).
    user_order, user_ptr = _grouped(user_customers, n_customers)
    result = _result(plan, n_customers, out)
    arguments = (ptr, *_in_order(order, events, days, counts), user_ptr,
                 *_in_order(user_order, user_events, user_hashes, user_last_days), plan.event_ptr,
                 plan.event_procedures, window_start, plan.windows, (max_window + 63) // 64, plan.procedure_nodes,
                 plan.min_counts, plan.min_days, plan.min_users, plan.child_ptr, plan.children, plan.rule_kinds,
                 plan.min_children, plan.min_shares, plan.weights, result.counts, result.days, result.users,
                 result.achieved, result.progress, result.last_day)
    if n_customers * max(plan.n_nodes, 1) < PARALLEL_MIN_ROWS:
        kernels.adoption_serial(*arguments)
    else:
        with PARALLEL_LOCK:
            kernels.adoption_parallel(*arguments)
    return result


def warm_up() -> None:
    """Compiles (or loads) both kernels on a tiny hierarchy, as servers do at start-up."""
    tiny = plan([1, 2, 3, 4], [-1, 0, 1, 2], [1.0] * 4, [1, 2, 3, 0], [0, 1, 0, 0], [0, 0, 0.5, 0], [[0]], [7],
                [1], [1], [1], 1)
    for n in (1, PARALLEL_MIN_ROWS):
        evaluate(tiny, 10, n, [0], [0], [10], [1], [0], [0], [5], [10])
