"""A realistic synthetic customer base: for `cvh demo`, load tests and benchmarks.

Customers differ on three hidden traits, drawn per customer: *size* (how much
business they bring), *engagement* (how closely they work with the company)
and *brand* (how visible they are). Every signal of the default model is a
noisy function of one or two traits, so signals correlate as in real data
(big customers buy more product lines and have a higher lifetime value;
engaged ones give feedback, join betas and recommend). Revenue is log-normal
(a few customers bring most of it); about 5 % of values are missing. A fifth
of the customers are accounts under a parent (subsidiaries, departments), up
to three levels deep, parents always before their children. Every stakeholder
role occurs. Each top account has an owner, a customer success manager and a
customer experience manager (a CSM per ~300 customers, a CEM per ~3,000),
which the accounts below it inherit; those below have an owner of their own.
The same seed gives the same base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cvh.common.v1 import common_pb2
from scoring_engine import lifetime_value
from cvh.registry.v1 import registry_service_pb2 as registry_pb
from wire.columns import customer_columns

SIGNALS = ("annual_revenue", "gross_margin", "tenure_years", "predicted_ltv", "payment_delay_days",
           "expansion_potential", "strategic_fit", "product_lines", "logo_value", "referenceability",
           "audience_reach", "nps", "feedback_items_90d", "beta_programs", "feature_adoption", "co_design_sessions",
           # What the default model's lifetime-value block reads (days): repeat purchases, first to last and to
           # now, mean spend per repeat purchase; a run derives predicted_ltv, p_alive and expected_purchases.
           "purchase_frequency", "purchase_recency", "purchase_age", "purchase_spend")
# BG/NBD (rates per day) and Gamma-Gamma parameters the purchase histories are drawn from.
PURCHASE_MODELS = ({"r": 0.6, "alpha": 40.0, "a": 0.7, "b": 3.0}, {"p": 6.0, "q": 4.0, "gamma": 30.0})
# Share of customers in each stakeholder role (StakeholderRole values).
ROLE_SHARES = {common_pb2.STAKEHOLDER_ROLE_END_USER: 0.40, common_pb2.STAKEHOLDER_ROLE_BUYER: 0.22,
               common_pb2.STAKEHOLDER_ROLE_GATEKEEPER: 0.10, common_pb2.STAKEHOLDER_ROLE_PARTNER: 0.10,
               common_pb2.STAKEHOLDER_ROLE_IMPACT_GROUP: 0.06, common_pb2.STAKEHOLDER_ROLE_DONOR: 0.04,
               common_pb2.STAKEHOLDER_ROLE_INTERNAL: 0.08}
CHILD_SHARE = 0.2
CUSTOMERS_PER_CSM, CUSTOMERS_PER_CEM = 300, 3_000
MISSING_SHARE = 0.05
_FIRST = ("Northern", "Blue", "Vertex", "Summit", "Harbor", "Golden", "Silver", "Quantum", "Crescent", "Atlas",
          "Pioneer", "Evergreen", "Redwood", "Lumen", "Orbit", "Cobalt")
_SECOND = ("Logistics", "Health", "Foods", "Energy", "Robotics", "Media", "Retail", "Finance", "Labs", "Systems",
           "Foundation", "Partners", "Studio", "Works")
_SUFFIX = ("Ltd", "GmbH", "Inc", "AB", "SA", "BV", "Group", "Co")


@dataclass
class SyntheticBase:
    """Columns of a customer base, row i = one customer; parents come before their children."""

    customer_ids: list[str]
    display_names: list[str]
    parent_ids: list[str]
    roles: np.ndarray          # uint8 StakeholderRole values
    owners: list[str]
    signal_names: tuple[str, ...]
    values: np.ndarray         # customers x signals, NaN = not observed
    # Per team role, each row's own members ("" for none: a child account inherits its parent's).
    team: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.customer_ids)


def generate_base(customers: int, seed: int = 0, id_prefix: str = "cust-") -> SyntheticBase:
    """``customers`` synthetic customers with ids ``{id_prefix}0000000``, ``{id_prefix}0000001``, ..."""
    if customers < 1:
        raise ValueError("customers must be at least 1")
    rng = np.random.default_rng(seed)
    n = customers
    size, engagement, brand = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    values = _signals(rng, size, engagement, brand)
    values[rng.random(values.shape) < MISSING_SHARE] = np.nan
    ids = [f"{id_prefix}{i:07d}" for i in range(n)]
    roles = rng.choice(list(ROLE_SHARES), size=n, p=list(ROLE_SHARES.values())).astype(np.uint8)
    roles[: min(n, len(ROLE_SHARES))] = list(ROLE_SHARES)[: min(n, len(ROLE_SHARES))]  # every role occurs
    owners = [f"owner-{k:03d}@example.com" for k in rng.integers(0, max(5, n // 500), size=n)]
    names = [f"{_FIRST[a]} {_SECOND[b]} {_SUFFIX[c]}" for a, b, c in zip(
        rng.integers(0, len(_FIRST), n), rng.integers(0, len(_SECOND), n), rng.integers(0, len(_SUFFIX), n))]
    parents = _parents(rng, ids)
    return SyntheticBase(ids, names, parents, roles, owners, SIGNALS, values, _teams(rng, parents))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _signals(rng: np.random.Generator, size: np.ndarray, engagement: np.ndarray, brand: np.ndarray) -> np.ndarray:
    n = len(size)

    def noise(scale: float = 1.0) -> np.ndarray:
        return rng.standard_normal(n) * scale

    revenue = np.exp(10.5 + 1.3 * size + noise(0.4))
    tenure = rng.gamma(2.0, 2.5, n)
    columns = {
        "annual_revenue": revenue,
        "gross_margin": np.clip(0.32 + 0.05 * size + noise(0.1), -0.3, 0.85),
        "tenure_years": tenure,
        "predicted_ltv": revenue * (1 + tenure / 4) * np.exp(noise(0.3)),
        "payment_delay_days": np.clip(6 - 4 * engagement + noise(8), 0, 120),
        "expansion_potential": _sigmoid(0.6 * size + 0.6 * engagement + noise(0.5)),
        "strategic_fit": _sigmoid(0.5 * size + noise(0.8)),
        "product_lines": rng.poisson(np.exp(0.4 + 0.5 * size)).astype(float),
        "logo_value": _sigmoid(1.3 * brand + 0.5 * size - 1.0),
        "referenceability": _sigmoid(engagement + 0.5 * brand - 0.5 + noise(0.4)),
        "audience_reach": np.exp(7 + 1.6 * brand + noise(0.5)),
        "nps": np.clip(25 + 30 * engagement + noise(20), -100, 100).round(),
        "feedback_items_90d": rng.poisson(np.exp(0.6 + 0.8 * engagement)).astype(float),
        "beta_programs": np.minimum(rng.poisson(np.exp(-0.8 + 0.8 * engagement)), 8).astype(float),
        "feature_adoption": _sigmoid(0.9 * engagement + noise(0.4)),
        "co_design_sessions": rng.poisson(np.exp(-1.5 + engagement)).astype(float),
    }
    purchases = lifetime_value.simulate(n, *PURCHASE_MODELS, age_min=30, age_max=1500,
                                        seed=int(rng.integers(2**32)))
    columns.update(purchase_frequency=purchases.frequency, purchase_recency=purchases.recency,
                   purchase_age=purchases.age, purchase_spend=purchases.spend * revenue / 1e3)  # bigger customers spend more
    return np.column_stack([columns[name] for name in SIGNALS])


def _parents(rng: np.random.Generator, ids: list[str]) -> list[str]:
    """A fifth of the customers get a parent among the customers before them, at most three levels deep."""
    n = len(ids)
    depth = np.zeros(n, dtype=np.int8)
    parents = [""] * n
    children = np.flatnonzero(rng.random(n) < CHILD_SHARE)
    picks = rng.random(n)
    for i in children[children > 0]:
        parent = int(picks[i] * i)  # anyone before i
        if depth[parent] < 2:
            parents[i] = ids[parent]
            depth[i] = depth[parent] + 1
    return parents


def _teams(rng: np.random.Generator, parents: list[str]) -> dict[str, list[str]]:
    """A CSM and a CEM for each top account (drawn after everything else: the rest of a seed's base stays)."""
    n = len(parents)
    top = np.array([not parent for parent in parents])
    teams = {}
    for role, prefix, per in (("customer_success_manager", "csm", CUSTOMERS_PER_CSM),
                              ("customer_experience_manager", "cem", CUSTOMERS_PER_CEM)):
        people = rng.integers(0, max(1, n // per), size=n)
        teams[role] = [f"{prefix}-{k:02d}@example.com" if is_top else "" for k, is_top in zip(people.tolist(), top)]
    return teams


def import_base(cvh, base: SyntheticBase, chunk_rows: int = 10_000,
                on_progress: Callable[[int], None] | None = None,
                labels: dict[str, str] | None = None) -> registry_pb.ImportCustomersResponse:
    """Imports ``base`` through ImportCustomers, ``chunk_rows`` customers per message; ``on_progress(customers
    _sent)`` after each message is handed to gRPC. ``cvh`` is a CvhClient. Packed columns, the fast way, carry
    no labels: with ``labels`` every customer travels as a ``Customer`` message carrying them."""
    if labels:
        def requests():
            for start in range(0, len(base), chunk_rows):
                end = min(start + chunk_rows, len(base))
                yield registry_pb.ImportCustomersRequest(customers=[_customer(base, i, labels)
                                                                    for i in range(start, end)])
                if on_progress:
                    on_progress(end)
        return cvh.import_customers(requests())

    def chunks():
        for start in range(0, len(base), chunk_rows):
            end = min(start + chunk_rows, len(base))
            yield customer_columns(base.customer_ids[start:end], base.signal_names, base.values[start:end],
                                   display_names=base.display_names[start:end],
                                   parent_ids=base.parent_ids[start:end], roles=base.roles[start:end],
                                   owners=base.owners[start:end],
                                   team={role: persons[start:end] for role, persons in base.team.items()})
            if on_progress:
                on_progress(end)
    return cvh.import_columns(chunks())


def _customer(base: SyntheticBase, i: int, labels: dict[str, str]) -> registry_pb.Customer:
    parent = base.parent_ids[i]
    return registry_pb.Customer(
        customer_id=base.customer_ids[i], display_name=base.display_names[i],
        parent=f"customers/{parent}" if parent else "", stakeholder_role=int(base.roles[i]), owner=base.owners[i],
        team=[registry_pb.TeamMember(role=role, person=persons[i]) for role, persons in base.team.items()
              if persons[i]],
        labels=labels, signals={name: registry_pb.SignalValue(value=value)
                                for name, value in zip(base.signal_names, base.values[i].tolist()) if value == value})
