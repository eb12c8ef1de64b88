"""A small value hierarchy and synthetic product telemetry, for `cvh demo`.

3 strategies, 8 initiatives, 20 use cases and 60 procedures (three per use case, one event name each). How
much a customer uses the product follows its ``feature_adoption`` signal (engaged customers adopt more), so
adoption and the value score tell one story; the most popular procedures are the first of each use case.
Telemetry is sent as daily rows with counts (one row per customer, procedure and active day).
"""

from __future__ import annotations

import numpy as np

from cvh.adoption.v1 import adoption_service_pb2 as pb
from wire.columns import telemetry_chunk

DAY_US = 86_400 * 1_000_000
CHANGE_NOTE = "cvh demo: a small value hierarchy"
# strategy -> initiative -> use cases (each with three procedures)
HIERARCHY = {
    ("grow-revenue", "Grow recurring revenue", pb.OWNING_FUNCTION_MARKETING): {
        ("expand-regions", "Expand into new regions"): ["regional-pricing", "local-campaigns", "partner-sales"],
        ("upsell-base", "Sell more to the base"): ["usage-insights", "renewal-offers", "bundles"],
        ("win-new-logos", "Win new logos"): ["lead-scoring", "trial-conversion"],
    },
    ("run-reliably", "Run a reliable operation", pb.OWNING_FUNCTION_CUSTOMER_SUCCESS): {
        ("automate-ops", "Automate operations"): ["scheduled-jobs", "alerting", "runbooks"],
        ("meet-compliance", "Meet compliance"): ["audit-trail", "access-reviews"],
        ("cut-costs", "Cut operating costs"): ["capacity-planning", "vendor-reports"],
    },
    ("know-customers", "Know the customer", pb.OWNING_FUNCTION_PRODUCT): {
        ("listen-to-feedback", "Listen to feedback"): ["surveys", "feedback-portal", "beta-programs"],
        ("personalise", "Personalise the experience"): ["segments", "recommendations"],
    },
}
# (key, name, min count, min active days, min distinct users) of each use case's three procedures
STEPS = (("set-up", "Set up", 2, 1, 0), ("use", "Use weekly", 4, 3, 0), ("share", "Share with the team", 2, 1, 2))
OWNERS = (pb.OWNING_FUNCTION_PRODUCT, pb.OWNING_FUNCTION_CUSTOMER_SUCCESS, pb.OWNING_FUNCTION_CS_OPERATIONS)


def demo_value_map() -> pb.ValueMapVersion:
    """The demo's value hierarchy: use cases need two of their three procedures, initiatives all their use
    cases but one (at least k), strategies a weighted share of 60 % of their initiatives."""
    nodes = []
    for (strategy, strategy_name, function), initiatives in HIERARCHY.items():
        nodes.append(pb.ValueNode(key=strategy, level=pb.NODE_LEVEL_STRATEGY, display_name=strategy_name,
                                  owning_function=function, definition=f"What customers who {strategy_name.lower()} "
                                                                       "pursue.",
                                  children_rule=pb.ChildrenRule(kind=pb.CHILDREN_RULE_KIND_WEIGHTED_SHARE,
                                                                min_weighted_share=0.6)))
        for (initiative, initiative_name), use_cases in initiatives.items():
            nodes.append(pb.ValueNode(key=initiative, level=pb.NODE_LEVEL_INITIATIVE, display_name=initiative_name,
                                      parent_key=strategy, owning_function=pb.OWNING_FUNCTION_SALES,
                                      children_rule=pb.ChildrenRule(kind=pb.CHILDREN_RULE_KIND_AT_LEAST,
                                                                    min_children=max(1, len(use_cases) - 1))))
            for use_case in use_cases:
                nodes.append(pb.ValueNode(key=use_case, level=pb.NODE_LEVEL_USE_CASE,
                                          display_name=use_case.replace("-", " ").capitalize(), parent_key=initiative,
                                          owning_function=pb.OWNING_FUNCTION_CUSTOMER_SUCCESS,
                                          children_rule=pb.ChildrenRule(kind=pb.CHILDREN_RULE_KIND_AT_LEAST,
                                                                        min_children=2)))
                for (step, step_name, min_count, min_days, min_users), owner in zip(STEPS, OWNERS):
                    nodes.append(pb.ValueNode(
                        key=f"{use_case}-{step}", level=pb.NODE_LEVEL_PROCEDURE, parent_key=use_case,
                        display_name=f"{step_name}: {use_case.replace('-', ' ')}", owning_function=owner,
                        procedure_rule=pb.ProcedureRule(event_names=[event_name(use_case, step)], min_count=min_count,
                                                        min_active_days=min_days, min_distinct_users=min_users,
                                                        window_days=30)))
    return pb.ValueMapVersion(change_note=CHANGE_NOTE, nodes=nodes)


def event_name(use_case: str, step: str) -> str:
    return f"{use_case}.{step}"


def event_names() -> list[str]:
    """Every procedure's event name, in the hierarchy's order."""
    return [event_name(u, step) for initiatives in HIERARCHY.values() for use_cases in initiatives.values()
            for u in use_cases for step, *_ in STEPS]


def telemetry(customer_ids: list[str], engagement: np.ndarray, now_us: int, seed: int = 0,
              rows_per_message: int = 50_000) -> list[pb.RecordTelemetryRequest]:
    """RecordTelemetry messages for ``customer_ids`` over the last 30 days; ``engagement`` (0..1 per customer)
    sets how much each uses the product."""
    rng = np.random.default_rng(seed)
    procedures = event_names()
    popularity = np.tile([0.8, 0.5, 0.3], len(procedures) // 3)
    engagement = np.nan_to_num(np.clip(engagement, 0, 1), nan=0.3)
    active = rng.random((len(customer_ids), len(procedures))) < engagement[:, None] * popularity[None, :]
    customers, events = np.nonzero(active)
    days_each = rng.integers(1, 5, len(customers))  # active days of each (customer, procedure)
    customers, events = np.repeat(customers, days_each), np.repeat(events, days_each)
    times = now_us - rng.integers(0, 30 * DAY_US, len(customers))
    counts = rng.integers(1, 4, len(customers))
    users = [f"user-{u}" for u in range(4)]
    user_indices = rng.integers(0, len(users), len(customers))
    messages = []
    for start in range(0, len(customers), rows_per_message):
        part = slice(start, start + rows_per_message)
        present, positions = np.unique(customers[part], return_inverse=True)
        messages.append(telemetry_chunk([customer_ids[i] for i in present.tolist()], procedures, positions,
                                        events[part], times[part], counts[part], users, user_indices[part],
                                        batch_id=f"demo-{seed}-{start}"))
    return messages
