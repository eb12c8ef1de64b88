"""Numba kernel of first achieved days. Private: call it through ``scoring_engine.adoption_history``.

Per customer, over its days from the first with a row to ``today``: each procedure's daily events and active
days become cumulative sums, so the figures of the window ending on any day are two lookups; its distinct
users per day come from each user's covered days (a user seen from its first to its last day counts in every
window that overlaps that span). The rules are then rolled up day by day, children before parents, and each
node's first day that holds is kept. Blocks of customers run on threads, each with its own scratch.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import helper_jit, serial_jit

RULE_AT_LEAST, RULE_WEIGHTED_SHARE = 2, 3
BLOCK = 64


@helper_jit
def _block(first, last, first_day, today, ptr, events, days, counts, user_ptr, user_events, user_hashes,
           user_first_days, user_last_days, event_ptr, event_procedures, windows, procedure_nodes, min_counts,
           min_days, min_users, parents, child_ptr, children, rule_kinds, min_children, min_shares, weights, out):
    n_procedures, n_nodes = len(procedure_nodes), len(child_ptr) - 1
    n_events = len(event_ptr) - 1
    span = today - first_day + 1
    cum_counts = np.zeros((n_procedures, span), np.int64)
    cum_days = np.zeros((n_procedures, span), np.int64)
    user_counts = np.zeros((n_procedures, span), np.int64)
    cover = np.zeros((n_procedures, span), np.bool_)
    user_touched = np.zeros(n_procedures, np.bool_)
    touched = np.zeros(n_procedures, np.bool_)  # procedures some row of the customer counts for
    touched_list = np.empty(n_procedures, np.int64)
    live = np.zeros(n_nodes, np.bool_)  # nodes above a touched procedure: the only ones that can hold
    held = np.zeros((n_nodes, span), np.bool_)  # per node and candidate day (columns 0 .. n_days - 1)
    change = np.zeros(span + 1, np.bool_)
    candidates = np.empty(span, np.int64)
    for c in range(first, last):
        out[c, :] = -1
        start = today + 1
        for r in range(ptr[c], ptr[c + 1]):
            if first_day <= days[r] < start:
                start = days[r]
        for r in range(user_ptr[c], user_ptr[c + 1]):
            if user_first_days[r] < start:
                start = max(user_first_days[r], first_day)
        if start > today:
            continue  # nothing kept: nothing ever held
        n = today - start + 1
        n_touched = 0
        for r in range(ptr[c], ptr[c + 1]):
            e = events[r]
            if 0 <= e < n_events:
                for j in range(event_ptr[e], event_ptr[e + 1]):
                    p = event_procedures[j]
                    if not touched[p]:
                        touched[p] = True
                        touched_list[n_touched] = p
                        n_touched += 1
        for r in range(user_ptr[c], user_ptr[c + 1]):
            e = user_events[r]
            if 0 <= e < n_events:
                for j in range(event_ptr[e], event_ptr[e + 1]):
                    p = event_procedures[j]
                    if not touched[p]:
                        touched[p] = True
                        touched_list[n_touched] = p
                        n_touched += 1
        for k in range(n_touched):
            p = touched_list[k]
            cum_counts[p, :n] = 0
            cum_days[p, :n] = 0
            user_counts[p, :n] = 0
        # Candidate days: a rule's figures change only when a row enters its window (its day) or leaves it
        # (its day + the window), and a user's coverage at its ends; between two candidates nothing changes.
        change[:n] = False
        change[0] = True
        for r in range(ptr[c], ptr[c + 1]):
            e, t = events[r], days[r] - start
            if e < 0 or e >= n_events or t < 0 or t >= n:
                continue
            change[t] = True
            for j in range(event_ptr[e], event_ptr[e + 1]):
                p = event_procedures[j]
                cum_counts[p, t] += counts[r]
                cum_days[p, t] = 1
                if t + windows[p] < n:
                    change[t + windows[p]] = True
        for r in range(user_ptr[c], user_ptr[c + 1]):
            e = user_events[r]
            if 0 <= e < n_events:
                for j in range(event_ptr[e], event_ptr[e + 1]):
                    p = event_procedures[j]
                    user_touched[p] = True
                    low = max(user_first_days[r] - start, 0)
                    high = min(user_last_days[r] + windows[p] - 1 - start, n - 1)
                    if low < n:
                        change[low] = True
                    if 0 <= high + 1 < n:
                        change[high + 1] = True
                    for t in range(low, high + 1):
                        cover[p, t] = True
            if r + 1 == user_ptr[c + 1] or user_hashes[r + 1] != user_hashes[r]:  # the user's last row
                for k in range(n_touched):
                    p = touched_list[k]
                    if user_touched[p]:
                        user_touched[p] = False
                        for t in range(n):
                            if cover[p, t]:
                                user_counts[p, t] += 1
                                cover[p, t] = False
        n_days = 0
        for t in range(n):
            if change[t]:
                candidates[n_days] = t
                n_days += 1
        for k in range(n_touched):
            p = touched_list[k]
            touched[p] = False
            w = windows[p]
            node = procedure_nodes[p]
            for t in range(1, n):
                cum_counts[p, t] += cum_counts[p, t - 1]
                cum_days[p, t] += cum_days[p, t - 1]
            for i in range(n_days):
                t = candidates[i]
                before = t - w
                events_in = cum_counts[p, t] - (cum_counts[p, before] if before >= 0 else 0)
                days_in = cum_days[p, t] - (cum_days[p, before] if before >= 0 else 0)
                held[node, i] = (events_in >= min_counts[p] and days_in >= min_days[p]
                                 and user_counts[p, t] >= min_users[p])
            while node >= 0 and not live[node]:
                live[node] = True
                node = parents[node]
        for node in range(n_nodes - 1, -1, -1):
            a, b = child_ptr[node], child_ptr[node + 1]
            if a == b or not live[node]:
                continue
            kind = rule_kinds[node]
            total = 0.0
            for k in range(a, b):
                total += weights[children[k]]
            for i in range(n_days):
                done, share = 0, 0.0
                for k in range(a, b):
                    child = children[k]
                    if live[child] and held[child, i]:
                        done += 1
                        share += weights[child]
                if kind == RULE_AT_LEAST:
                    held[node, i] = done >= min_children[node]
                elif kind == RULE_WEIGHTED_SHARE:
                    held[node, i] = share / total >= min_shares[node]
                else:
                    held[node, i] = done == b - a
        for node in range(n_nodes):
            if live[node]:
                live[node] = False
                for i in range(n_days):
                    if held[node, i]:
                        out[c, node] = start + candidates[i]
                        break


# nogil: a server runs it on a thread while other threads take telemetry in and answer lookups.
@serial_jit(nogil=True)
def first_days_serial(first_day, today, ptr, events, days, counts, user_ptr, user_events, user_hashes,
                      user_first_days, user_last_days, event_ptr, event_procedures, windows, procedure_nodes,
                      min_counts, min_days, min_users, parents, child_ptr, children, rule_kinds, min_children,
                      min_shares, weights, out):
    _block(0, out.shape[0], first_day, today, ptr, events, days, counts, user_ptr, user_events, user_hashes,
           user_first_days, user_last_days, event_ptr, event_procedures, windows, procedure_nodes, min_counts,
           min_days, min_users, parents, child_ptr, children, rule_kinds, min_children, min_shares, weights, out)


@serial_jit(parallel=True, nogil=True)
def first_days_parallel(first_day, today, ptr, events, days, counts, user_ptr, user_events, user_hashes,
                        user_first_days, user_last_days, event_ptr, event_procedures, windows, procedure_nodes,
                        min_counts, min_days, min_users, parents, child_ptr, children, rule_kinds, min_children,
                        min_shares, weights, out):
    n_blocks = (out.shape[0] + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        _block(b * BLOCK, min((b + 1) * BLOCK, out.shape[0]), first_day, today, ptr, events, days, counts, user_ptr,
               user_events, user_hashes, user_first_days, user_last_days, event_ptr, event_procedures, windows,
               procedure_nodes, min_counts, min_days, min_users, parents, child_ptr, children, rule_kinds,
               min_children, min_shares, weights, out)
