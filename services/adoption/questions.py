"""Questions people ask of adoption across the base: a node's adoption per value tier and its time to value
(GetNodeAdoption), the customers that have or have not achieved a node (ListNodeCustomers), and the use cases
that customers like a customer have and it has not (RecommendUseCases).

Every answer comes from the latest evaluation of the base (:class:`AchievedBase`: what each evaluated
customer has achieved, one bit per node) joined with the hierarchy service's value tiers (:class:`Tiers`: its
current snapshot, read in one go and kept until the next evaluation). Customers the hierarchy ranks that sent
no telemetry join as customers that have achieved nothing: they belong on the target lists.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from cvh.adoption.v1 import adoption_service_pb2 as pb
from scoring_engine import adoption_peers
from services.adoption.achievement import day_text
from services.adoption.tables import achievements, customers

DAY_US = 86_400 * 1_000_000
DEFAULT_RECOMMENDATIONS, MAX_RECOMMENDATIONS = 5, 100
DEFAULT_PEERS, MAX_PEERS = 50, 10_000
UNRANKED = np.iinfo(np.int64).max  # orders customers the hierarchy does not rank after the ranked ones


# -- what the evaluation found ----------------------------------------------------------------------------------

class Collector:
    """Gathers an evaluation's blocks (customer ids and their achieved nodes) as bits: 1 bit per customer and
    node, so 1,000,000 customers x 300 nodes hold 38 MB."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.blocks: list[np.ndarray] = []

    def add(self, customer_ids: list[str], achieved: np.ndarray) -> None:
        self.ids.extend(customer_ids)
        self.blocks.append(np.packbits(achieved, axis=1, bitorder="little"))

    def finish(self, evaluation, nodes) -> AchievedBase:
        width = (len(nodes) + 7) // 8
        packed = np.concatenate(self.blocks) if self.blocks else np.zeros((0, width), np.uint8)
        return AchievedBase(evaluation, list(nodes), self.ids, packed)


@dataclass(eq=False)
class AchievedBase:
    """One evaluation: per evaluated customer (rows) and node of the version (bits), achieved or not."""

    evaluation: object  # services.adoption.evaluation.Evaluation
    nodes: list  # ValueNode, in the version's order
    customer_ids: list[str]
    packed: np.ndarray  # uint8 (customers, ceil(nodes / 8)), bit order little
    # Answers that hold as long as this evaluation does (per-tier joins, first days, peers' bitsets).
    cache: dict = field(default_factory=dict)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.customer_ids)}

    @functools.cached_property
    def node_index(self) -> dict[str, int]:
        return {n.key: i for i, n in enumerate(self.nodes)}

    def columns(self, nodes: list[int], rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Achieved (rows x len(nodes), bool) of the given node columns."""
        nodes_ = np.asarray(nodes, np.int64)
        return ((self.packed[rows][:, nodes_ >> 3] >> (nodes_ & 7).astype(np.uint8)) & 1).astype(bool)

    @functools.cached_property
    def use_cases(self) -> np.ndarray:
        return np.array([i for i, n in enumerate(self.nodes) if n.level == pb.NODE_LEVEL_USE_CASE], np.int64)

    @functools.cached_property
    def procedures_beneath(self) -> list[list[int]]:
        """Per node, the procedures beneath it (itself for a procedure)."""
        found: list[list[int]] = [[i] if n.level == pb.NODE_LEVEL_PROCEDURE else [] for i, n in enumerate(self.nodes)]
        for i in range(len(self.nodes) - 1, -1, -1):  # children come after parents
            parent = self.node_index.get(self.nodes[i].parent_key)
            if parent is not None:
                found[parent] = found[i] + found[parent]
        return found


# -- value tiers ------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Tiers:
    """The hierarchy service's current tiers: per ranked customer its own tier (level, 1 = best), rank and
    owner; ``subtree(account)`` gives an account and those beneath it (None when not in the snapshot), when
    the snapshot is in this process."""

    tiers: list[tuple[str, str, int]]  # (tier_id, display_name, level), best first
    customer_ids: list[str]
    level: np.ndarray  # int32, 0 = unranked
    rank: np.ndarray  # int64, 0 = unranked
    owners: list[str]
    subtree: Callable[[str], list[str] | None] | None = None

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.customer_ids)}

    def level_of(self, tier_id: str) -> int | None:
        return next((level for t, _, level in self.tiers if t == tier_id), None)

    def tier_list(self) -> str:
        return ", ".join(t for t, _, _ in self.tiers) or "none: the hierarchy has no run loaded yet"


def local_tiers(snapshot) -> Tiers:
    """Tiers from the hierarchy servicer's snapshot in this process (its arrays, not copied; ids and owners as
    lists)."""
    def subtree(account: str) -> list[str] | None:
        row = snapshot.row(account)
        if row is None:
            return None
        try:
            return snapshot.ids.customer_ids(snapshot.subtree(row))
        except Exception:  # noqa: BLE001 (a broken tree: the account alone)
            return [account]
    owners = snapshot.owner_names.names
    return Tiers([(t.tier_id, t.display_name, t.level) for t in snapshot.tiers], snapshot.ids.customer_ids(),
                 snapshot.own_level, snapshot.rank, [owners[c] for c in snapshot.owner_codes.tolist()], subtree)


def remote_tiers(tiers: list[tuple[str, str, int]], members: list[tuple[str, int, int, str]]) -> Tiers:
    """Tiers from the hierarchy's RPCs: its tiers and every member (customer id, level, rank, owner)."""
    return Tiers(tiers, [m[0] for m in members], np.array([m[1] for m in members], np.int32),
                 np.array([m[2] for m in members], np.int64), [m[3] for m in members])


@dataclass(eq=False)
class Population:
    """The evaluated customers (first ``evaluated`` rows, in the base's order) and then the customers the
    hierarchy ranks that sent no telemetry, with their tier level, rank and owner."""

    customer_ids: list[str]
    evaluated: int
    level: np.ndarray
    rank: np.ndarray
    owners: np.ndarray  # object array of str

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.customer_ids)}

    @functools.cached_property
    def order(self) -> np.ndarray:
        """Rows by rank (unranked last), then by customer id."""
        by_id = np.argsort(np.array(self.customer_ids, dtype=object), kind="stable")
        position = np.empty(len(by_id), np.int64)
        position[by_id] = np.arange(len(by_id))
        return np.lexsort((position, np.where(self.rank > 0, self.rank, UNRANKED)))


def population(base: AchievedBase, tiers: Tiers | None) -> Population:
    """The base joined with the tiers (kept with the base until other tiers are read)."""
    cached = base.cache.get("population")
    if cached is not None and cached[0] is tiers:
        return cached[1]
    ids = list(base.customer_ids)
    if tiers is None:
        n = len(ids)
        found = Population(ids, n, np.zeros(n, np.int32), np.zeros(n, np.int64), np.full(n, "", object))
    else:
        rows = np.array([tiers.index.get(c, -1) for c in ids], np.int64)
        extra = np.setdiff1d(np.arange(len(tiers.customer_ids)), rows[rows >= 0], assume_unique=True)
        ids += [tiers.customer_ids[r] for r in extra.tolist()]
        rows = np.r_[rows, extra]
        known = rows >= 0
        level = np.where(known, tiers.level[np.maximum(rows, 0)] if len(tiers.level) else 0, 0).astype(np.int32)
        rank = np.where(known, tiers.rank[np.maximum(rows, 0)] if len(tiers.rank) else 0, 0).astype(np.int64)
        owners = np.array([tiers.owners[r] if r >= 0 else "" for r in rows.tolist()], dtype=object)
        found = Population(ids, len(base.customer_ids), level, rank, owners)
    base.cache["population"] = (tiers, found)  # the tiers held with it: one join per base at a time
    return found


def achieved_in(base: AchievedBase, people: Population, node: int) -> np.ndarray:
    """Per row of ``people``, whether it has achieved ``node`` (no telemetry: not)."""
    found = np.zeros(len(people.customer_ids), bool)
    found[:people.evaluated] = base.columns([node])[:, 0]
    return found


# -- GetNodeAdoption --------------------------------------------------------------------------------------------

def tier_adoption(people: Population, achieved: np.ndarray, tiers: Tiers, tier_id: str = "") -> list[pb.TierAdoption]:
    """A node's figures per tier (or of ``tier_id``), best tier first."""
    n_levels = max((level for _, _, level in tiers.tiers), default=0) + 1
    members = np.bincount(people.level, minlength=n_levels)
    done = np.bincount(people.level[achieved], minlength=n_levels)
    return [pb.TierAdoption(tier_id=t, display_name=name, customers=int(members[level]),
                            customers_achieved=int(done[level]),
                            share=float(done[level] / members[level]) if members[level] else 0.0)
            for t, name, level in tiers.tiers if not tier_id or t == tier_id]


def first_days(conn, node_keys: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per node key: the customers recorded as having achieved it and the day each first did."""
    found: dict[str, tuple[list[str], list[int]]] = {k: ([], []) for k in node_keys}
    rows = conn.execute(sa.select(achievements.c.node_key, customers.c.customer_id, achievements.c.first_day)
                        .join(customers, customers.c.customer_key == achievements.c.customer_key)
                        .where(achievements.c.node_key.in_(node_keys))).all()
    for key, customer_id, day in rows:
        found[key][0].append(customer_id)
        found[key][1].append(day)
    return {k: (ids, np.array(days, np.int64)) for k, (ids, days) in found.items()}


def days_to_value(first_day: np.ndarray | int, create_time_us: np.ndarray | int) -> np.ndarray | int:
    """Days from creation to the first day achieved; 0 when telemetry of before the creation achieved it."""
    return np.maximum(np.asarray(first_day) - np.asarray(create_time_us) // DAY_US, 0)


def achievers(base: AchievedBase, node: int) -> list[str]:
    """The evaluated customers that have ``node`` achieved now."""
    return [base.customer_ids[r] for r in np.flatnonzero(base.columns([node])[:, 0]).tolist()]


def median_days_to_value(base: AchievedBase, node: int, ids: list[str], days: np.ndarray,
                         create_times: dict[str, int]) -> float | None:
    """The median time to value of ``node`` over the customers that have it achieved now and whose creation
    time is known: first achieved on ``days`` (of ``ids``, as recorded), or on the evaluation's day for those
    whose achievement is not recorded yet (the writer records it with that day after the evaluation is
    published); None when there are none."""
    recorded = dict(zip(ids, days.tolist()))
    today = base.evaluation.today
    keep = [(create_times[c], recorded.get(c, today)) for c in achievers(base, node) if c in create_times]
    if not keep:
        return None
    created, first = np.array(keep, np.int64).T
    return float(np.median(days_to_value(first, created)))


# -- ListNodeCustomers ------------------------------------------------------------------------------------------

def node_customers(people: Population, achieved: np.ndarray, want_achieved: bool, level: int | None,
                   owner: str, accounts: list[str] | None) -> np.ndarray:
    """Rows of ``people`` that match, by rank (unranked last) and then customer id."""
    match = achieved == want_achieved
    if level is not None:
        match &= people.level == level
    if owner:
        match &= people.owners == owner
    if accounts is not None:
        inside = np.zeros(len(match), bool)
        inside[[r for a in accounts if (r := people.index.get(a)) is not None]] = True
        match &= inside
    order = people.order
    return order[match[order]]


def node_customer_page(base: AchievedBase, people: Population, tiers: Tiers | None, node: int, rows: np.ndarray,
                       first: dict[str, int]) -> list[pb.NodeCustomer]:
    """The answers for ``rows`` (one page): tier, owner, first day (the evaluation's day for an achievement not
    recorded yet) and the share of procedures achieved."""
    level_name = {level: t for t, _, level in tiers.tiers} if tiers else {}
    beneath = base.procedures_beneath[node]
    evaluated = rows[rows < people.evaluated]
    shares = dict(zip(evaluated.tolist(), base.columns(beneath, evaluated).mean(axis=1).tolist())) if len(
        evaluated) else {}
    found = []
    for row in rows.tolist():
        customer_id = people.customer_ids[row]
        achieved = row < people.evaluated and bool(base.columns([node], np.array([row]))[0, 0])
        found.append(pb.NodeCustomer(
            customer=f"customers/{customer_id}", tier_id=level_name.get(int(people.level[row]), ""),
            owner=people.owners[row], achieved=achieved,
            first_achieved_day=day_text(first.get(customer_id, base.evaluation.today)) if achieved else "",
            procedures_achieved_share=shares.get(row, 0.0)))
    return found


# -- RecommendUseCases ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recommendation:
    tier_level: int  # the peers' tier, 0 when drawn from every evaluated customer
    peers: np.ndarray  # rows of the base
    mean_similarity: float
    use_cases: list[tuple[int, float, float, float]]  # (node, peer share, base share, lift)


def _use_case_bits(base: AchievedBase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evaluated customers' achieved use cases (bool and bitsets) and each use case's share of them."""
    found = base.cache.get("use_cases")
    if found is None:
        achieved = base.columns(base.use_cases.tolist()) if len(base.use_cases) else np.zeros((len(
            base.customer_ids), 0), bool)
        share = achieved.mean(axis=0) if len(achieved) else np.zeros(achieved.shape[1])
        found = base.cache["use_cases"] = (achieved, adoption_peers.bitsets(achieved), share)
    return found


def recommend(base: AchievedBase, people: Population, customer_id: str, limit: int, k: int) -> Recommendation:
    """Use cases ``customer_id`` has not achieved that its nearest peers most often have.

    Peers: evaluated customers of its tier (every evaluated customer when it has none), itself left out,
    nearest by the Jaccard similarity of their achieved use cases, at most ``k`` with a similarity above 0
    (ties by customer id); a customer that has achieved nothing is like its whole tier."""
    achieved, bits, base_share = _use_case_bits(base)
    row = base.index.get(customer_id)
    mine = achieved[row] if row is not None else np.zeros(achieved.shape[1], bool)
    own = people.index.get(customer_id)
    level = int(people.level[own]) if own is not None else 0
    candidates = np.ones(len(base.customer_ids), bool)
    if level:
        candidates &= people.level[:people.evaluated] == level
    if row is not None:
        candidates[row] = False
    similarity = adoption_peers.jaccard(bits, adoption_peers.bitsets(mine[None, :])[0]) if len(bits) else np.zeros(0)
    near = candidates & (similarity > 0)
    if near.any():
        order = people.order[people.order < people.evaluated]  # by rank, then id: the tie order
        ranked = order[near[order]]
        peers = ranked[np.argsort(-similarity[ranked], kind="stable")[:k]]
    else:
        peers = np.flatnonzero(candidates)
    peer_share = achieved[peers].mean(axis=0) if len(peers) else np.zeros(achieved.shape[1])
    found = []
    for j in np.flatnonzero(~mine & (peer_share > 0)).tolist():
        lift = float(peer_share[j] / base_share[j]) if base_share[j] > 0 else 0.0
        found.append((int(base.use_cases[j]), float(peer_share[j]), float(base_share[j]), lift))
    found.sort(key=lambda u: (-u[1], -u[3], base.nodes[u[0]].key))
    return Recommendation(level, peers, float(similarity[peers].mean()) if len(peers) else 0.0, found[:limit])
