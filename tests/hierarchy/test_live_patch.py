"""Feed batches patched into a snapshot in place give what a whole rebuild gives: random creations (under old
and new parents), moves, deletions, field changes and live scores, checked after each batch against the
snapshot's own arrays worked out again from scratch (tree_depths, effective_levels) and the accounts as sent."""

from __future__ import annotations

import numpy as np
import pytest

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.registry.v1 import registry_service_pb2 as rpb
from services.hierarchy import books, live
from services.hierarchy import snapshot as snapshots
from wire.columns import to_chunk

TIERS = [common_pb2.TierRef(tier_id=t, level=i + 1) for i, t in enumerate(["a", "b", "c", "d", "e"])]


def base(rng: np.random.Generator, n: int) -> tuple[snapshots.Snapshot, dict[str, tuple[str, int, str]]]:
    ids = [f"c{i}" for i in range(n)]
    parents = ["" if i < n // 3 or rng.random() < 0.3 else ids[int(rng.integers(0, i))] for i in range(n)]
    accounts = snapshots.AccountBase(ids, parents, rng.integers(1, 8, n).astype(np.uint8), [f"o{i % 7}" for i in range(n)],
                                     rng.random((n, 2)))
    scored = ids[: n - n // 10]  # the last tenth registered after the run
    composite = rng.random(len(scored)) * 100
    results = snapshots.RunResults("runs/1", 1, TIERS, [1, 2], scored, rng.random((len(scored), 2)), composite,
                                   rng.integers(1, 6, len(scored)).astype(np.int32),
                                   np.argsort(np.argsort(-composite)) + 1, rng.random(len(scored)) * 100)
    snap = snapshots.build(results, accounts, pb.INHERITANCE_RULE_PARENT_MINUS_ONE, 0)
    return snap, {c: (p, int(r), o) for c, p, r, o in zip(ids, parents, accounts.roles, accounts.owners)}


def batch(rng, snap, accounts, sequence) -> tuple[rpb.WatchCustomerChangesResponse, list[str]]:
    """A message of 40 changes: creations (some under each other), moves (never under their own subtree),
    owner and role changes, deletions of leaves."""
    ids, parents, roles, owners, deleted = [], [], [], [], []
    existing = list(accounts)
    for k in range(40):
        kind = rng.choice(["create", "move", "field", "delete"])
        if kind == "create":
            customer_id = f"n{sequence}-{k}"
            fresh = [i for i, d in zip(ids[-3:], deleted[-3:]) if not d]
            parent = str(rng.choice([*existing[:50], *fresh, ""])) if rng.random() < 0.8 else ""
        else:
            customer_id = str(rng.choice(existing))
            if customer_id in ids:
                continue
            parent = accounts[customer_id][0]
            if kind == "move":
                below = set(snap.ids.customer_ids(snap.subtree(snap.row(customer_id)))) \
                    if customer_id in snap.ids else {customer_id}
                parent = str(rng.choice([c for c in existing[:200] if c not in below] + [""]))
            if kind == "delete":
                if any(p == customer_id for p, _, _ in accounts.values()) or any(p == customer_id for p in parents):
                    continue
                deleted.append(1)
                ids.append(customer_id)
                parents.append("")
                roles.append(0)
                owners.append("")
                accounts.pop(customer_id)
                existing.remove(customer_id)
                continue
        deleted.append(0)
        ids.append(customer_id)
        parents.append(parent)
        roles.append(int(rng.integers(1, 8)))
        owners.append(f"o{int(rng.integers(0, 9))}")
        accounts[customer_id] = (parent, roles[-1], owners[-1])
        if customer_id not in existing:
            existing.append(customer_id)
    values = rng.random((len(ids), 2))
    message = rpb.WatchCustomerChangesResponse(
        sequences=list(range(sequence - len(ids) + 1, sequence + 1)), last_sequence=sequence, deleted=bytes(deleted),
        chunk=to_chunk(ids, ["annual_revenue", "nps"], values), display_names=[""] * len(ids), parent_ids=parents,
        stakeholder_roles=bytes(roles), owners=owners)
    return message, [i for i, d in zip(ids, deleted) if not d]


@pytest.mark.parametrize("rule", [pb.INHERITANCE_RULE_PARENT_MINUS_ONE, pb.INHERITANCE_RULE_TOP_PARENT,
                                  pb.INHERITANCE_RULE_OWN])
def test_patches_give_what_a_rebuild_gives(rule):
    rng = np.random.default_rng(rule)
    snap, accounts = base(rng, 3000)
    snap.effective_level = snapshots.with_rule(snap, rule)
    for step in range(1, 25):
        message, upserted = batch(rng, snap, accounts, step * 100)
        rows = live.feed_rows([message])
        rescored = upserted[::3]
        scores = live.Scores(rescored, rng.random(len(rescored)) * 100,
                             rng.integers(1, 6, len(rescored)).astype(np.int32), rng.random((len(rescored), 2)), step)
        before = snap.effective_level.copy()
        patch = live.plan(snap, rows, scores, rule)
        live.apply(snap, patch)
        assert snap.sequence == step * 100 and snap.customers == len(accounts) == len(snap.ids.items())
        assert np.array_equal(snap.depth, snapshots.tree_depths(snap.parent))
        assert np.array_equal(snap.effective_level, snapshots.with_rule(snap, rule)), f"batch {step}"
        for customer_id, (parent, role, owner) in accounts.items():
            row = snap.row(customer_id)
            assert snap.customer_id(row) == customer_id
            assert (snap.customer_id(snap.parent[row]) if snap.parent[row] >= 0 else "") == parent
            assert (int(snap.roles[row]), snap.owner(row)) == (role, owner)
        for row in rng.integers(0, snap.size, 20).tolist():
            assert np.array_equal(snap.children(row), np.flatnonzero(snap.parent == row))
        moved = {(c, b, a) for c, b, a, _ in patch.moves}
        expected = {(c, int(before[r]) if r < len(before) else 0, int(snap.effective_level[r]))
                    for c, r in snap.ids.items() if (before[r] if r < len(before) else 0) != snap.effective_level[r]}
        assert moved == expected
        live_rows = [snap.row(c) for c in rescored]
        assert (snap.live_time_us[live_rows] == step).all() or not live_rows
    assert snap.removed > 0 and snap.size > 3000, "the batches created and deleted"


def test_a_live_composite_ranks_among_the_runs():
    rank, percentile = live.placed(np.array([10.0, 20.0, 20.0, 30.0]), np.array([25.0, 20.0, 5.0, np.nan]))
    assert rank.tolist() == [2, 2, 5, 0]
    assert percentile[:3].tolist() == pytest.approx([70.0, 50.0, 10.0]) and np.isnan(percentile[3])


def test_a_customer_changed_in_two_messages_keeps_its_last_change():
    def message(ids, owners, names, values, deleted, sequence):
        return rpb.WatchCustomerChangesResponse(
            last_sequence=sequence, deleted=bytes(deleted), chunk=to_chunk(ids, names, np.array(values, float)),
            parent_ids=[""] * len(ids), stakeholder_roles=bytes([1] * len(ids)), owners=owners)

    rows = live.feed_rows([message(["a", "b"], ["x", "y"], ["nps"], [[1.0], [2.0]], [0, 0], 5),
                           message(["c", "a"], ["z", "w"], ["annual_revenue"], [[3.0], [4.0]], [0, 1], 7)])
    assert rows.ids == ["b", "c", "a"] and rows.owners == ["y", "z", "w"] and rows.sequence == 7
    assert rows.deleted.tolist() == [False, False, True] and rows.signal_names == ["nps", "annual_revenue"]
    assert np.array_equal(rows.signals, [[2.0, np.nan], [np.nan, 3.0], [np.nan, 4.0]], equal_nan=True)


def test_teams_and_stages_follow_the_feed_as_a_rebuild_gives_them():
    """Own team cells and lifecycle stages patched from the feed (a role new to the snapshot included) give the
    effective teams a walk up the tree gives, and the books see them."""
    rng = np.random.default_rng(5)
    n = 400
    ids = [f"c{i}" for i in range(n)]
    parents = ["" if i < n // 2 else ids[int(rng.integers(0, n // 2))] for i in range(n)]

    def cell() -> str:
        return str(rng.choice(["", "", "ana", "bob", "ana;bob", "cy"]))

    own = {c: {"customer_success_manager": cell()} for c in ids}
    parent_of = dict(zip(ids, parents))
    accounts = snapshots.AccountBase(list(ids), parents, np.ones(n, np.uint8), [""] * n, rng.random((n, 2)),
                                     {"customer_success_manager": [own[c]["customer_success_manager"] for c in ids]})
    results = snapshots.RunResults("runs/1", 1, TIERS, [1], ids[:300], rng.random((300, 1)), rng.random(300) * 100,
                                   rng.integers(1, 6, 300).astype(np.int32), np.arange(1, 301), rng.random(300))
    snap = snapshots.build(results, accounts, pb.INHERITANCE_RULE_PARENT_MINUS_ONE, 0)
    stages = dict.fromkeys(ids, 0)
    for step in range(1, 8):
        changed = [str(c) for c in rng.choice(list(own), 30, replace=False)] + [f"new{step}-{k}" for k in range(5)]
        roles = ["customer_success_manager", "executive_sponsor"] if step >= 3 else ["customer_success_manager"]
        for c in changed:
            own[c] = {role: cell() for role in roles}
            stages[c] = int(rng.integers(0, 6))
        message = rpb.WatchCustomerChangesResponse(
            sequences=list(range(len(changed))), last_sequence=step, deleted=bytes(len(changed)),
            chunk=to_chunk(changed, [], np.empty((len(changed), 0))), display_names=[""] * len(changed),
            parent_ids=[parent_of.get(c, ids[0]) for c in changed],
            stakeholder_roles=bytes([1] * len(changed)), owners=[""] * len(changed),
            lifecycle_stages=bytes(stages[c] for c in changed),
            team=[rpb.TeamColumn(role=role, persons=[own[c].get(role, "") for c in changed]) for role in roles])
        live.apply(snap, live.plan(snap, live.feed_rows([message]), None, pb.INHERITANCE_RULE_PARENT_MINUS_ONE))
        for c, row in snap.ids.items():
            expected, at = {}, row
            while at >= 0:  # the nearest account up the tree with members in each role
                for role, text in own[snap.customer_id(at)].items():
                    if text and role not in expected:
                        expected[role] = (text.split(";"), at)
                at = int(snap.parent[at])
            assert {role: (persons, source) for role, persons, source in snap.effective_team(row)} == expected, c
            assert snap.stages[row] == stages[c]
    ana = snap.teams.person_index["ana"]
    served = {c for c, row in snap.ids.items()
              if any(r == "customer_success_manager" and "ana" in p for r, p, _ in snap.effective_team(row))}
    rows = books.person_rows(snap, ana, [snap.teams.role_index["customer_success_manager"]])
    assert set(snap.ids.customer_ids(rows)) == served


def test_revenue_follows_the_models_money_signal_through_the_feed():
    ids = ["a", "b", "c"]
    accounts = snapshots.AccountBase(ids, ["", "a", ""], np.ones(3, np.uint8), [""] * 3, np.full((3, 2), 1.0),
                                     {"customer_success_manager": ["ana", "", "bob"]}, None,
                                     np.array([100.0, 20.0, np.nan]), "arr")
    snap = snapshots.build(snapshots.no_results(), accounts, pb.INHERITANCE_RULE_OWN, 0)
    ana = [snap.teams.person_index["ana"]]
    column = [snap.teams.role_index["customer_success_manager"]]
    assert books.book(snap, "ana", "", books.person_rows(snap, ana[0], column), 0).total.revenue == 120.0
    message = rpb.WatchCustomerChangesResponse(
        sequences=[1], last_sequence=1, deleted=b"\0", chunk=to_chunk(["b"], ["arr", "annual_revenue"], [[50.0, 9.0]]),
        display_names=[""], parent_ids=["a"], stakeholder_roles=b"\1", owners=[""])
    live.apply(snap, live.plan(snap, live.feed_rows([message]), None, pb.INHERITANCE_RULE_OWN))
    assert books.book(snap, "ana", "", books.person_rows(snap, ana[0], column), 0).total.revenue == 150.0


def test_a_message_without_stages_keeps_the_rows_stage_and_one_with_them_sets_it_even_to_unspecified():
    ids = ["a", "b"]
    accounts = snapshots.AccountBase(ids, ["", ""], np.ones(2, np.uint8), [""] * 2, np.full((2, 2), 1.0), {},
                                     np.array([3, 3], np.uint8))
    snap = snapshots.build(snapshots.no_results(), accounts, pb.INHERITANCE_RULE_OWN, 0)

    def change(customer_id: str, sequence: int, **stages) -> None:
        message = rpb.WatchCustomerChangesResponse(
            sequences=[sequence], last_sequence=sequence, deleted=b"\0", chunk=to_chunk([customer_id], [], [[]]),
            display_names=[""], parent_ids=[""], stakeholder_roles=b"\1", owners=[""], **stages)
        live.apply(snap, live.plan(snap, live.feed_rows([message]), None, pb.INHERITANCE_RULE_OWN))

    change("a", 1)
    change("b", 2, lifecycle_stages=b"\0")
    assert snap.stages.tolist() == [3, 0]
