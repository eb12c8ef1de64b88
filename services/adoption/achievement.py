"""A value hierarchy version evaluated with the engine's adoption kernels, and told in words.

The version's nodes (stored parents first) become a ``scoring_engine.adoption`` plan; event names become the
ids the daily aggregates are stored under (names no telemetry has used yet get ids no row holds).
"""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np

from cvh.adoption.v1 import adoption_service_pb2 as pb
from scoring_engine import adoption as engine
from services.adoption.catalog import rule_kind, weight_of

EPOCH = dt.date(1970, 1, 1)


@functools.lru_cache(maxsize=4096)
def day_text(day: int) -> str:
    return (EPOCH + dt.timedelta(days=int(day))).isoformat() if day >= 0 else ""


def rule_event_names(value_map: pb.ValueMapVersion) -> list[str]:
    return sorted({name for node in value_map.nodes for name in node.procedure_rule.event_names})


def compile_plan(value_map: pb.ValueMapVersion, event_ids: dict[str, int]) -> engine.AdoptionPlan:
    """The version as an engine plan. ``event_ids`` maps the names telemetry has used to their stored ids."""
    nodes = value_map.nodes
    index = {node.key: i for i, node in enumerate(nodes)}
    unused = max(event_ids.values(), default=0) + 1
    ids = dict(event_ids)
    for name in rule_event_names(value_map):
        if name not in ids:
            ids[name], unused = unused, unused + 1
    procedures = [n for n in nodes if n.level == pb.NODE_LEVEL_PROCEDURE]
    rules = [n.procedure_rule for n in procedures]
    return engine.plan(
        levels=[n.level for n in nodes], parents=[index.get(n.parent_key, -1) for n in nodes],
        weights=[weight_of(n) for n in nodes], rule_kinds=[rule_kind(n) if n.level < 4 else 0 for n in nodes],
        min_children=[n.children_rule.min_children for n in nodes],
        min_shares=[n.children_rule.min_weighted_share for n in nodes],
        procedure_events=[[ids[name] for name in r.event_names] for r in rules], windows=[r.window_days for r in rules],
        min_counts=[r.min_count for r in rules], min_days=[r.min_active_days for r in rules],
        min_users=[r.min_distinct_users for r in rules], n_event_ids=unused)


def customer_adoption(value_map: pb.ValueMapVersion, plan: engine.AdoptionPlan, beneath: list[list[int]],
                      today: int, result: engine.AdoptionResult, row: int = 0) -> pb.CustomerAdoption:
    """One customer's tree (row ``row`` of ``result``) with progress and, where not achieved, why;
    ``beneath`` is :func:`procedures_beneath` of the plan."""
    nodes = value_map.nodes
    procedure_of = {int(node): p for p, node in enumerate(plan.procedure_nodes)}
    answer = pb.CustomerAdoption(value_map_version=value_map.name, evaluated_day=day_text(today))
    achieved_counts = [0, 0, 0, 0]
    # Python lists once: indexing a NumPy array per node costs as much as the rest of the loop.
    achieved, progress, last_day = (getattr(result, f)[row].tolist() for f in ("achieved", "progress", "last_day"))
    counts, days, users = (getattr(result, f)[row].tolist() for f in ("counts", "days", "users"))
    for i, node in enumerate(nodes):
        done = achieved[i]
        item = answer.nodes.add(key=node.key, level=node.level, display_name=node.display_name,
                                parent_key=node.parent_key, achieved=done, progress=progress[i],
                                last_active_day=day_text(last_day[i]))
        if done:
            achieved_counts[node.level - 1] += 1
        p = procedure_of.get(i)
        if p is not None:
            item.events, item.active_days, item.distinct_users = counts[p], days[p], users[p]
            if not done:
                item.why_not.extend(_procedure_shortfalls(node.procedure_rule, item))
        elif not done:
            item.why_not.append(_rule_shortfall(node, plan, achieved, i))
            item.missing_procedures.extend(nodes[d].key for d in beneath[i] if not achieved[d])
    answer.achieved_counts.extend(achieved_counts)
    return answer


def _procedure_shortfalls(rule: pb.ProcedureRule, item: pb.NodeAdoption) -> list[str]:
    window = f"in the last {rule.window_days} day{'s' if rule.window_days != 1 else ''}"
    found = []
    for have, need, noun in ((item.events, rule.min_count, "events"), (item.active_days, rule.min_active_days,
                                                                       "active days"),
                             (item.distinct_users, rule.min_distinct_users, "distinct users")):
        if have < need:
            found.append(f"{have:,} of {need:,} {noun} {window}")
    return found


def _rule_shortfall(node: pb.ValueNode, plan: engine.AdoptionPlan, achieved: list[bool], i: int) -> str:
    children = plan.children[plan.child_ptr[i]:plan.child_ptr[i + 1]].tolist()
    done = sum(achieved[c] for c in children)
    kind = rule_kind(node)
    if kind == pb.CHILDREN_RULE_KIND_AT_LEAST:
        return f"{done} of {len(children)} children achieved, {node.children_rule.min_children} needed"
    if kind == pb.CHILDREN_RULE_KIND_WEIGHTED_SHARE:
        weights = plan.weights[children].tolist()
        share = sum(w for w, c in zip(weights, children) if achieved[c]) / sum(weights)
        return (f"achieved children weigh {100 * share:.0f} % of all, "
                f"{100 * node.children_rule.min_weighted_share:.0f} % needed")
    return f"{done} of {len(children)} children achieved, all needed"


def procedures_beneath(plan: engine.AdoptionPlan) -> list[list[int]]:
    """Per node, the procedures beneath it (itself for a procedure), in node order: children after parents,
    so one walk from the last node up gathers them."""
    found: list[list[int]] = [[n] if level == engine.PROCEDURE else [] for n, level in enumerate(plan.levels.tolist())]
    for node in range(plan.n_nodes - 1, -1, -1):
        parent = int(plan.parents[node])
        if parent >= 0:
            found[parent] = found[node] + found[parent]
    return [sorted(f) for f in found]


def evaluate_one(plan: engine.AdoptionPlan, today: int, events: np.ndarray, days: np.ndarray, counts: np.ndarray,
                 user_events: np.ndarray, user_hashes: np.ndarray, user_days: np.ndarray) -> engine.AdoptionResult:
    """One customer from its rows as columns: daily (event id, day, events), users (event id, hash, day seen)."""
    return engine.evaluate(plan, today, 1, np.zeros(len(events), np.int64), events, days, counts,
                           np.zeros(len(user_events), np.int64), user_events, user_hashes, user_days)
