"""The value hierarchy's rules: what makes a version valid, and what changed between two versions.

Validation collects every bad field, each named by its path in the request ("nodes[3].parent_key"), and
says which node it is about by key, so a person editing the file finds it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cvh.adoption.v1 import adoption_service_pb2 as pb
from services.common.errors import Violations
from services.common.validation import SLUG, check_text

MAX_NODES = 5000
MAX_EVENTS_PER_RULE = 32
MAX_MIN_COUNT = 1_000_000_000
MAX_MIN_USERS = 1_000_000
EVENT_NAME = re.compile(r"[a-z][a-z0-9_.:-]{0,127}")
LEVELS = (pb.NODE_LEVEL_STRATEGY, pb.NODE_LEVEL_INITIATIVE, pb.NODE_LEVEL_USE_CASE, pb.NODE_LEVEL_PROCEDURE)
LEVEL_WORDS = {pb.NODE_LEVEL_STRATEGY: "strategy", pb.NODE_LEVEL_INITIATIVE: "initiative",
               pb.NODE_LEVEL_USE_CASE: "use case", pb.NODE_LEVEL_PROCEDURE: "procedure"}
FUNCTIONS = frozenset(pb.OwningFunction.values()) - {pb.OWNING_FUNCTION_UNSPECIFIED}
RULE_KINDS = frozenset(pb.ChildrenRuleKind.values())


def weight_of(node: pb.ValueNode) -> float:
    return node.weight if node.HasField("weight") else 1.0


def rule_kind(node: pb.ValueNode) -> int:
    """The node's children rule, UNSPECIFIED read as ALL."""
    return node.children_rule.kind or pb.CHILDREN_RULE_KIND_ALL


def check_value_map(value_map: pb.ValueMapVersion, retention_days: int) -> None:
    """Raise INVALID_ARGUMENT (INVALID_VALUE_MAP) naming every bad field of ``value_map``."""
    violations = Violations()
    nodes = value_map.nodes
    check_text(value_map.change_note, "value_map.change_note", 1024, violations)
    if not 1 <= len(nodes) <= MAX_NODES:
        violations.add("value_map.nodes", f"1 to {MAX_NODES:,} nodes, got {len(nodes):,}")
        raise violations.error("value_map")
    first_at: dict[str, int] = {}
    for i, node in enumerate(nodes):
        path = f"value_map.nodes[{i}]"
        if not SLUG.fullmatch(node.key):
            violations.add(f"{path}.key", f"{node.key[:70]!r} is not a key: [a-z][a-z0-9-]{{0,62}}")
        elif node.key in first_at:
            violations.add(f"{path}.key", f"duplicate key {node.key!r}: nodes[{first_at[node.key]}] has it too")
        else:
            first_at[node.key] = i
    children: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        _check_node(node, f"value_map.nodes[{i}]", nodes, first_at, retention_days, violations)
        if node.parent_key in first_at:
            children.setdefault(node.parent_key, []).append(i)
    for i, node in enumerate(nodes):
        if node.level in LEVELS[:-1] and first_at.get(node.key) == i:
            _check_children_rule(node, f"value_map.nodes[{i}]", [nodes[c] for c in children.get(node.key, [])],
                                 violations)
    violations.raise_if_any("value_map")  # every path starts with value_map: the reason is INVALID_VALUE_MAP


def _about(node: pb.ValueNode) -> str:
    return f" (node {node.key!r})" if SLUG.fullmatch(node.key) else ""


def _check_node(node: pb.ValueNode, path: str, nodes, first_at: dict[str, int], retention_days: int,
                violations: Violations) -> None:
    about = _about(node)
    if node.level not in LEVELS:
        violations.add(f"{path}.level", f"required: strategy, initiative, use case or procedure{about}")
    if not node.display_name.strip():
        violations.add(f"{path}.display_name", f"required{about}")
    check_text(node.display_name, f"{path}.display_name", 256, violations)
    check_text(node.definition, f"{path}.definition", 4096, violations)
    if node.owning_function not in FUNCTIONS:
        violations.add(f"{path}.owning_function", "required: marketing, sales, customer success, CS operations or "
                                                  f"product{about}")
    if node.HasField("weight") and not (math.isfinite(node.weight) and node.weight > 0):
        violations.add(f"{path}.weight", f"must be a finite number above 0, got {node.weight}{about}")
    _check_parent(node, path, nodes, first_at, violations)
    if node.level == pb.NODE_LEVEL_PROCEDURE:
        if node.HasField("children_rule"):
            violations.add(f"{path}.children_rule", f"a procedure has no children: give procedure_rule{about}")
        _check_procedure_rule(node.procedure_rule, f"{path}.procedure_rule", about, retention_days, violations)
    elif node.level in LEVELS and node.HasField("procedure_rule"):
        violations.add(f"{path}.procedure_rule", f"only procedures have one; a {LEVEL_WORDS[node.level]} is "
                                                 f"achieved by children_rule{about}")


def _check_parent(node: pb.ValueNode, path: str, nodes, first_at: dict[str, int], violations: Violations) -> None:
    about = _about(node)
    if node.level == pb.NODE_LEVEL_STRATEGY:
        if node.parent_key:
            violations.add(f"{path}.parent_key", f"a strategy is at the top and has no parent{about}")
        return
    if node.level not in LEVELS:
        return
    above = LEVEL_WORDS[node.level - 1]
    if not node.parent_key:
        violations.add(f"{path}.parent_key", f"required: the key of its {above}{about}")
    elif node.parent_key not in first_at:
        violations.add(f"{path}.parent_key", f"unknown parent {node.parent_key[:70]!r}: no node has that key{about}")
    elif (parent := nodes[first_at[node.parent_key]]).level != node.level - 1:
        got = LEVEL_WORDS.get(parent.level, "a node without a level")
        violations.add(f"{path}.parent_key", f"the parent of a {LEVEL_WORDS[node.level]} must be a {above}; "
                                             f"{node.parent_key!r} is a {got}{about}")


def _check_procedure_rule(rule: pb.ProcedureRule, path: str, about: str, retention_days: int,
                          violations: Violations) -> None:
    if not 1 <= len(rule.event_names) <= MAX_EVENTS_PER_RULE:
        violations.add(f"{path}.event_names", f"1 to {MAX_EVENTS_PER_RULE} event names, got "
                                              f"{len(rule.event_names)}{about}")
    seen = set()
    for j, name in enumerate(rule.event_names):
        if not EVENT_NAME.fullmatch(name):
            violations.add(f"{path}.event_names[{j}]", f"{name[:70]!r} is not an event name: "
                                                       f"[a-z][a-z0-9_.:-]{{0,127}}{about}")
        elif name in seen:
            violations.add(f"{path}.event_names[{j}]", f"{name!r} is listed twice{about}")
        seen.add(name)
    if not 1 <= rule.window_days <= retention_days:
        violations.add(f"{path}.window_days", f"1 to {retention_days} days (the telemetry retention: older "
                                              f"days are not kept), got {rule.window_days}{about}")
    if not 0 <= rule.min_count <= MAX_MIN_COUNT:
        violations.add(f"{path}.min_count", f"0 to {MAX_MIN_COUNT:,}, got {rule.min_count}{about}")
    if rule.min_active_days < 0 or (rule.window_days >= 1 and rule.min_active_days > rule.window_days):
        violations.add(f"{path}.min_active_days", f"0 to window_days ({rule.window_days}): can never hold with "
                                                  f"{rule.min_active_days} active days{about}")
    if not 0 <= rule.min_distinct_users <= MAX_MIN_USERS:
        violations.add(f"{path}.min_distinct_users", f"0 to {MAX_MIN_USERS:,}, got "
                                                     f"{rule.min_distinct_users}{about}")
    if rule.min_count <= 0 and rule.min_active_days <= 0 and rule.min_distinct_users <= 0:
        violations.add(path, f"holds without any event: set min_count, min_active_days or min_distinct_users "
                             f"above 0{about}")


def _check_children_rule(node: pb.ValueNode, path: str, children: list[pb.ValueNode],
                         violations: Violations) -> None:
    about, rule = _about(node), node.children_rule
    if not children:
        violations.add(f"{path}", f"a {LEVEL_WORDS[node.level]} without children can never be achieved{about}")
        return
    kind = rule_kind(node)
    if kind not in RULE_KINDS:
        violations.add(f"{path}.children_rule.kind", f"unknown rule {rule.kind}{about}")
        return
    if kind == pb.CHILDREN_RULE_KIND_AT_LEAST:
        if not 1 <= rule.min_children <= len(children):
            violations.add(f"{path}.children_rule.min_children",
                           f"1 to its {len(children)} children: at least {rule.min_children} can never "
                           f"hold{about}")
    elif rule.min_children:
        violations.add(f"{path}.children_rule.min_children", f"only for AT_LEAST rules{about}")
    if kind == pb.CHILDREN_RULE_KIND_WEIGHTED_SHARE:
        if not 0 < rule.min_weighted_share <= 1:
            violations.add(f"{path}.children_rule.min_weighted_share",
                           f"more than 0, at most 1, got {rule.min_weighted_share}{about}")
    elif rule.min_weighted_share:
        violations.add(f"{path}.children_rule.min_weighted_share", f"only for WEIGHTED_SHARE rules{about}")


def level_counts(nodes) -> list[int]:
    counts = [0, 0, 0, 0]
    for node in nodes:
        if node.level in LEVELS:
            counts[node.level - 1] += 1
    return counts


def normalized(value_map: pb.ValueMapVersion) -> pb.ValueMapVersion:
    """The stored form: nodes parents first (strategies, then initiatives, ...), in the given order within a
    level; the children rule's UNSPECIFIED spelled out as ALL on nodes above procedures."""
    stored = pb.ValueMapVersion(change_note=value_map.change_note)
    for level in LEVELS:
        for node in value_map.nodes:
            if node.level == level:
                copy = stored.nodes.add()
                copy.CopyFrom(node)
                if level != pb.NODE_LEVEL_PROCEDURE:
                    copy.children_rule.kind = rule_kind(node)
    return stored


# -- diff ---------------------------------------------------------------------------------------------------

@dataclass
class Diff:
    added: list[pb.ValueNode]
    removed: list[pb.ValueNode]
    changed: list[pb.ChangedNode]


def diff(base: pb.ValueMapVersion, target: pb.ValueMapVersion) -> Diff:
    before = {node.key: node for node in base.nodes}
    after = {node.key: node for node in target.nodes}
    changed = []
    for node in target.nodes:
        old = before.get(node.key)
        if old is not None and (fields := changed_fields(old, node)):
            changed.append(pb.ChangedNode(key=node.key, before=old, after=node, changed_fields=fields))
    return Diff([n for n in target.nodes if n.key not in before], [n for n in base.nodes if n.key not in after],
                changed)


def changed_fields(old, new, prefix: str = "") -> list[str]:
    """Paths of the fields that differ between two messages of one type, nested messages field by field."""
    fields = []
    for field in old.DESCRIPTOR.fields:
        a, b = getattr(old, field.name), getattr(new, field.name)
        if field.message_type is not None and not field.is_repeated:
            fields += changed_fields(a, b, f"{prefix}{field.name}.")
        elif ((field.has_presence and old.HasField(field.name) != new.HasField(field.name))
              or (list(a) if field.is_repeated else a) != (list(b) if field.is_repeated else b)):
            fields.append(prefix + field.name)
    return fields
