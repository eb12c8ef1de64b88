"""Benchmark of the people in the hierarchy: books of business, portfolios and GetPriority with its team.

In process, on the hierarchy's own snapshot code (no server, no gRPC): a synthetic base of N customers (half of
them child accounts), each with an owner (N / 500 owners), a customer success manager (--people of them; one
customer in ten has two) and some a customer experience manager, is built into a snapshot as a run's load
does; then it times one person's book of business (each CSM serves about N / people customers), every CSM's
portfolio at once, and GetPriority's answer with the effective team, escalation path and remaining goodwill.

    python -m benchmarks.books [--customers N] [--people N] [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks.runs import percentiles_ms
from cvh.common.v1 import common_pb2
from services.hierarchy import books, decisions
from services.hierarchy import snapshot as snapshots
from services.hierarchy.policy import default_policy
from services.hierarchy.servicer import People, _priority

CSM = "customer_success_manager"
BOOK_P99_TARGET_MS, PORTFOLIOS_TARGET_S, PRIORITY_P99_TARGET_MS = 50.0, 1.0, 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.books", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000, metavar="N", help="customers (default 1,000,000)")
    parser.add_argument("--people", type=int, default=100, metavar="N",
                        help="customer success managers (default 100: 10,000 customers each at 1,000,000)")
    parser.add_argument("--calls", type=int, default=200, metavar="N", help="timed calls of each look-up")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="end with one line of JSON figures")
    parser.add_argument("--no-progress", action="store_true", help="accepted for symmetry; nothing to show")
    return parser


def synthetic_snapshot(n: int, people: int, seed: int) -> tuple[snapshots.Snapshot, float]:
    """The snapshot and the seconds its teams took to intern."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i:07d}" for i in range(n)]
    tops = max(n // 2, 1)
    parents = [""] * tops + [ids[p] for p in rng.integers(0, tops, n - tops).tolist()]
    csm = rng.integers(0, people, n)
    team = {"owner": [f"owner{i % max(n // 500, 1)}@example.com" for i in range(n)],
            CSM: [f"csm{c}@example.com" if i % 10 else f"csm{c}@example.com;csm{(c + 1) % people}@example.com"
                  for i, c in enumerate(csm.tolist())],
            "customer_experience_manager": [f"cem{i % 20}@example.com" if i % 3 == 0 else "" for i in range(n)]}
    accounts = snapshots.AccountBase(ids, parents, np.zeros(n, np.uint8), [""] * n, rng.random((n, 2)) * 1e5, team,
                                     rng.integers(0, 6, n).astype(np.uint8))
    tiers = [common_pb2.TierRef(tier_id=t, level=i + 1, display_name=t.title())
             for i, t in enumerate(["strategic", "key", "growth", "core", "standard"])]
    results = snapshots.RunResults("runs/1", 0, tiers, [1], ids, rng.random((n, 1)), rng.random(n) * 100,
                                   rng.integers(1, 6, n).astype(np.int32), np.arange(1, n + 1), rng.random(n) * 100,
                                   rng.integers(0, 6, n).astype(np.int32), rng.integers(0, 2, n).astype(np.int8))
    snapshots.Teams().intern(["warm@example.com"])  # Arrow's kernels load on first use
    started = time.perf_counter()
    interned = snapshots.Teams()
    for cells in team.values():
        interned.intern(cells)
    intern_s = time.perf_counter() - started
    return snapshots.build(results, accounts, 3, 1), intern_s


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    snap, intern_s = synthetic_snapshot(args.customers, args.people, args.seed)
    started = time.perf_counter()
    _ = snap.effective_cells  # worked out once per snapshot and patch
    effective_cells_s = time.perf_counter() - started
    column = [snap.teams.role_index[CSM]]
    rng = np.random.default_rng(args.seed)
    book_times, sizes = [], []
    for k in rng.integers(0, args.people, args.calls).tolist():
        person = snap.teams.person_index[f"csm{k}@example.com"]
        started = time.perf_counter()
        book = books.book(snap, f"csm{k}@example.com", CSM, books.person_rows(snap, person, column), 100)
        book_times.append(time.perf_counter() - started)
        sizes.append(book.total.customers)
    started = time.perf_counter()
    portfolios = books.portfolios(snap, CSM, {})
    portfolios_s = time.perf_counter() - started
    policy, org = default_policy(), People({"chief_customer_officer": ["cco@example.com"]},
                                           {"cco@example.com": "Chief Customer Officer"})
    budgets = decisions.Budgets(policy.goodwill_period)
    budgets.roll(int(time.time() * 1e6))
    priority_times = []
    for row in rng.integers(0, args.customers, 100).tolist():  # untimed: first calls load what they use
        _priority(snap, policy, snap.customer_id(row), org)
    for row in rng.integers(0, args.customers, args.calls * 10).tolist():
        started = time.perf_counter()
        answer = _priority(snap, policy, snap.customer_id(row), org)
        answer.goodwill_remaining_minor = budgets.remaining(answer.customer, 500_000)
        priority_times.append(time.perf_counter() - started)
    book = percentiles_ms(np.array(book_times))
    priority = percentiles_ms(np.array(priority_times))
    book_p50, book_p99 = round(book["p50"], 2), round(book["p99"], 2)
    priority_p50, priority_p99 = round(priority["p50"], 3), round(priority["p99"], 3)
    figures = {"customers": args.customers, "people": args.people, "book_customers_mean": float(np.mean(sizes)),
               "team_intern_s": round(intern_s, 3), "effective_cells_s": round(effective_cells_s, 3),
               "book_of_business_p50_ms": book_p50, "book_of_business_10k_p99_ms": book_p99,
               "portfolios_1m_s": round(portfolios_s, 3), "portfolios": len(portfolios.portfolios),
               "priority_with_team_p50_ms": priority_p50, "priority_with_team_p99_ms": priority_p99}
    print(f"{args.customers:,} customers, {args.people:,} CSMs (about {np.mean(sizes):,.0f} customers each)")
    print(f"  book of business      p50 {book_p50:.1f} ms, p99 {book_p99:.1f} ms (target <= {BOOK_P99_TARGET_MS:g})")
    print(f"  every CSM's portfolio {portfolios_s:.2f} s (target <= {PORTFOLIOS_TARGET_S:g})")
    print(f"  GetPriority + team    p50 {priority_p50:.3f} ms, p99 {priority_p99:.3f} ms in process "
          f"(target <= {PRIORITY_P99_TARGET_MS:g})")
    print(f"  teams interned {intern_s:.2f} s; effective cells {effective_cells_s:.2f} s")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
