"""Numba kernels of adoption. Private: call them through ``scoring_engine.adoption.evaluate``.

One pass per customer: its daily rows add to the procedures that count their event (events, and the day in
a per-procedure bitset of the window for distinct active days), its user rows (sorted by user hash, so one
user's rows are adjacent) to the distinct users, then the rules are rolled up from procedures to strategies
(children after parents in node order, so a reverse walk sees children first). The parallel kernel runs
blocks of customers on threads, each with its own scratch; the serial one runs the same block function over
one block.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import helper_jit, serial_jit

RULE_AT_LEAST, RULE_WEIGHTED_SHARE = 2, 3
BLOCK = 256


@helper_jit
def _popcount(word):
    count = 0
    while word:
        word &= word - np.uint64(1)
        count += 1
    return count


@helper_jit
def _block(first, last, ptr, events, days, counts, user_ptr, user_events, user_hashes, user_last_days,
           event_ptr, event_procedures, window_start, windows, words, procedure_nodes, min_counts, min_days, min_users,
           child_ptr, children, rule_kinds, min_children, min_shares, weights,
           out_counts, out_days, out_users, achieved, progress, last_day):
    n_procedures = len(procedure_nodes)
    n_events = len(event_ptr) - 1
    bits = np.zeros((n_procedures, words), np.uint64)
    touched = np.empty(n_procedures, np.int64)
    in_window = np.zeros(n_procedures, np.bool_)
    last_run = np.full(n_procedures, -1, np.int64)
    buffer = np.empty(max(len(children), 1), np.float64)
    for c in range(first, last):
        n_touched = 0
        for r in range(ptr[c], ptr[c + 1]):
            e, d = events[r], days[r]
            if e < 0 or e >= n_events:
                continue
            for j in range(event_ptr[e], event_ptr[e + 1]):
                p = event_procedures[j]
                node = procedure_nodes[p]
                last_day[c, node] = max(last_day[c, node], d)
                offset = d - window_start[p]
                if offset < 0 or offset >= windows[p]:
                    continue
                out_counts[c, p] += counts[r]
                if not in_window[p]:
                    in_window[p] = True
                    touched[n_touched] = p
                    n_touched += 1
                bits[p, offset >> 6] |= np.uint64(1) << np.uint64(offset & 63)
        for t in range(n_touched):
            p = touched[t]
            total = 0
            for w in range(words):
                total += _popcount(bits[p, w])
                bits[p, w] = 0
            out_days[c, p] = total
            in_window[p] = False
        first_user = user_ptr[c]
        by_user = np.argsort(user_hashes[first_user:user_ptr[c + 1]])  # one user's rows adjacent
        run = -1
        for t in range(len(by_user)):
            r = first_user + by_user[t]
            if t == 0 or user_hashes[r] != user_hashes[first_user + by_user[t - 1]]:
                run = first_user + t  # a number of this user's rows no other user (of any customer) has
            e = user_events[r]
            if e < 0 or e >= n_events:
                continue
            for j in range(event_ptr[e], event_ptr[e + 1]):
                p = event_procedures[j]
                if 0 <= user_last_days[r] - window_start[p] < windows[p] and last_run[p] != run:
                    last_run[p] = run
                    out_users[c, p] += 1
        _roll_up(c, procedure_nodes, min_counts, min_days, min_users, child_ptr, children, rule_kinds,
                 min_children, min_shares, weights, out_counts, out_days, out_users, achieved, progress, last_day,
                 buffer)


@helper_jit
def _sort_small(values, n):
    """Insertion sort of values[:n] in place: a node has few children, and no allocation per customer."""
    for i in range(1, n):
        value = values[i]
        j = i - 1
        while j >= 0 and values[j] > value:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = value


@helper_jit
def _ratio(value, minimum):
    return 1.0 if value >= minimum else value / minimum


@helper_jit
def _roll_up(c, procedure_nodes, min_counts, min_days, min_users, child_ptr, children, rule_kinds, min_children,
             min_shares, weights, out_counts, out_days, out_users, achieved, progress, last_day, buffer):
    for p in range(len(procedure_nodes)):
        node = procedure_nodes[p]
        total, criteria, met = 0.0, 0, True
        if min_counts[p] > 0:
            total += _ratio(out_counts[c, p], min_counts[p])
            criteria += 1
            met = met and out_counts[c, p] >= min_counts[p]
        if min_days[p] > 0:
            total += _ratio(out_days[c, p], min_days[p])
            criteria += 1
            met = met and out_days[c, p] >= min_days[p]
        if min_users[p] > 0:
            total += _ratio(out_users[c, p], min_users[p])
            criteria += 1
            met = met and out_users[c, p] >= min_users[p]
        achieved[c, node] = met
        progress[c, node] = total / criteria if criteria else 1.0
    for node in range(len(child_ptr) - 2, -1, -1):
        first, last = child_ptr[node], child_ptr[node + 1]
        if first == last:
            continue  # a procedure (done above)
        n_achieved, weight_achieved, weight_total, progress_sum, latest = 0, 0.0, 0.0, 0.0, -1
        for k in range(first, last):
            child = children[k]
            buffer[k - first] = progress[c, child]
            progress_sum += progress[c, child]
            weight_total += weights[child]
            if achieved[c, child]:
                n_achieved += 1
                weight_achieved += weights[child]
            latest = max(latest, last_day[c, child])
        last_day[c, node] = latest
        n = last - first
        kind = rule_kinds[node]
        if kind == RULE_AT_LEAST:
            k_needed = min_children[node]
            _sort_small(buffer, n)
            best = 0.0
            for k in range(n - k_needed, n):  # the k highest, added in ascending order
                best += buffer[k]
            achieved[c, node] = n_achieved >= k_needed
            progress[c, node] = best / k_needed
        elif kind == RULE_WEIGHTED_SHARE:
            share = weight_achieved / weight_total
            achieved[c, node] = share >= min_shares[node]
            progress[c, node] = min(1.0, share / min_shares[node])
        else:
            achieved[c, node] = n_achieved == n
            progress[c, node] = progress_sum / n


# nogil: a server evaluates its base on a thread while other threads take telemetry in and answer lookups.
@serial_jit(nogil=True)
def adoption_serial(ptr, events, days, counts, user_ptr, user_events, user_hashes, user_last_days, event_ptr,
                    event_procedures, window_start, windows, words, procedure_nodes, min_counts, min_days, min_users,
                    child_ptr, children, rule_kinds, min_children, min_shares, weights, out_counts, out_days,
                    out_users, achieved, progress, last_day):
    _block(0, len(ptr) - 1, ptr, events, days, counts, user_ptr, user_events, user_hashes, user_last_days,
           event_ptr, event_procedures, window_start, windows, words, procedure_nodes, min_counts, min_days, min_users,
           child_ptr, children, rule_kinds, min_children, min_shares, weights, out_counts, out_days, out_users,
           achieved, progress, last_day)


@serial_jit(parallel=True, nogil=True)
def adoption_parallel(ptr, events, days, counts, user_ptr, user_events, user_hashes, user_last_days, event_ptr,
                      event_procedures, window_start, windows, words, procedure_nodes, min_counts, min_days, min_users,
                      child_ptr, children, rule_kinds, min_children, min_shares, weights, out_counts, out_days,
                      out_users, achieved, progress, last_day):
    n_customers = len(ptr) - 1
    n_blocks = (n_customers + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        _block(b * BLOCK, min((b + 1) * BLOCK, n_customers), ptr, events, days, counts, user_ptr, user_events,
               user_hashes, user_last_days, event_ptr, event_procedures, window_start, windows, words, procedure_nodes,
               min_counts, min_days, min_users, child_ptr, children, rule_kinds, min_children, min_shares, weights,
               out_counts, out_days, out_users, achieved, progress, last_day)
