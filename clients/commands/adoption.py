"""The value hierarchy and telemetry: cvh valuemap apply|show|list|diff|activate, cvh telemetry record,
cvh adoption show|node|customers|recommend (``cvh adoption ID`` is ``cvh adoption show ID``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clients import tabular
from clients.client import customer_id
from clients.commands.common import connect, enum_word, existing_file, existing_path, positive_int, whole_number
from clients.commands.hierarchy import picture_file
from clients.output import counted, message_dict, print_json, print_table, progress, timestamp
from clients.telemetry_file import MAX_EVENTS_PER_MESSAGE, TELEMETRY_FILE_RULES, TelemetryFile
from cvh.adoption.v1 import adoption_service_pb2 as pb

LEVEL_NAMES = {"strategy": pb.NODE_LEVEL_STRATEGY, "initiative": pb.NODE_LEVEL_INITIATIVE,
               "use_case": pb.NODE_LEVEL_USE_CASE, "procedure": pb.NODE_LEVEL_PROCEDURE}
FUNCTION_NAMES = {"marketing": pb.OWNING_FUNCTION_MARKETING, "sales": pb.OWNING_FUNCTION_SALES,
                  "customer_success": pb.OWNING_FUNCTION_CUSTOMER_SUCCESS,
                  "cs_operations": pb.OWNING_FUNCTION_CS_OPERATIONS, "product": pb.OWNING_FUNCTION_PRODUCT}
VALUE_MAP_FILE_RULES = """\
A value hierarchy file (YAML or JSON) holds a change_note and the nodes, either as a flat list (each with
its parent) or nested under children (the parent is then implied):

  change_note: first agreed hierarchy
  nodes:
    - key: grow-revenue                 # [a-z][a-z0-9-], unique across levels
      level: strategy                   # strategy, initiative, use_case, procedure
      name: Grow recurring revenue
      definition: What the customer pursues ...
      owner: marketing                  # marketing, sales, customer_success, cs_operations, product
      achieved_when: {all: true}        # or {at_least: 2} or {weighted_share: 0.6} (default all)
      children:
        - key: expand-regions
          level: initiative
          ...
              - key: create-regional-report
                level: procedure
                weight: 2                 # in the parent's weighted share (default 1)
                rule: {events: [report.created], min_count: 3, min_active_days: 2,
                       min_distinct_users: 0, window_days: 30}

The service checks every field and names each bad one by its path (nodes[3].parent_key); the first
node of the file is nodes[0], counted depth first."""


class ValueMapFileError(ValueError):
    """A value hierarchy file that cannot be read (not YAML/JSON, or not the shape above)."""


def read_value_map(path: str | Path) -> pb.ValueMapVersion:
    """A value hierarchy from a YAML or JSON file (JSON is YAML, so one parser reads both)."""
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueMapFileError(f"{path}: not readable YAML or JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
        raise ValueMapFileError(f"{path}: expected a mapping with a list of nodes\n\n{VALUE_MAP_FILE_RULES}")
    value_map = pb.ValueMapVersion(change_note=str(document.get("change_note") or ""))
    _add_nodes(value_map, document["nodes"], "", "nodes", path)
    return value_map


def _add_nodes(value_map: pb.ValueMapVersion, items: list, parent: str, where: str, path) -> None:
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ValueMapFileError(f"{path}: {here} is not a mapping of a node's fields")
        value_map.nodes.append(_node(item, parent, here, path))
        children = item.get("children") or []
        if not isinstance(children, list):
            raise ValueMapFileError(f"{path}: {here}.children is not a list")
        _add_nodes(value_map, children, str(item.get("key", "")), f"{here}.children", path)


def _node(item: dict, parent: str, here: str, path) -> pb.ValueNode:
    known = {"key", "level", "name", "definition", "parent", "owner", "weight", "rule", "achieved_when", "children"}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ValueMapFileError(f"{path}: {here} has unknown field {unknown[0]!r}; a node has {', '.join(sorted(known))}")
    node = pb.ValueNode(key=str(item.get("key", "")), display_name=str(item.get("name", "")),
                        definition=str(item.get("definition") or ""),
                        parent_key=str(item.get("parent") or parent))
    node.level = _word(item.get("level"), LEVEL_NAMES, f"{here}.level", path)
    node.owning_function = _word(item.get("owner"), FUNCTION_NAMES, f"{here}.owner", path)
    if "weight" in item:
        node.weight = _number(item["weight"], f"{here}.weight", path)
    if "rule" in item:
        rule = item["rule"] or {}
        if not isinstance(rule, dict):
            raise ValueMapFileError(f"{path}: {here}.rule is not a mapping")
        events = rule.get("events", [])
        node.procedure_rule.event_names.extend([str(e) for e in (events if isinstance(events, list) else [events])])
        for field, name in (("min_count", "min_count"), ("min_active_days", "min_active_days"),
                            ("min_distinct_users", "min_distinct_users"), ("window_days", "window_days")):
            setattr(node.procedure_rule, field, int(_number(rule.get(name, 0), f"{here}.rule.{name}", path)))
    if "achieved_when" in item:
        node.children_rule.CopyFrom(_children_rule(item["achieved_when"], f"{here}.achieved_when", path))
    return node


def _children_rule(spec, here: str, path) -> pb.ChildrenRule:
    if spec == "all" or spec == {"all": True}:
        return pb.ChildrenRule(kind=pb.CHILDREN_RULE_KIND_ALL)
    if isinstance(spec, dict) and len(spec) == 1 and "at_least" in spec:
        return pb.ChildrenRule(kind=pb.CHILDREN_RULE_KIND_AT_LEAST,
                               min_children=int(_number(spec["at_least"], f"{here}.at_least", path)))
    if isinstance(spec, dict) and len(spec) == 1 and "weighted_share" in spec:
        return pb.ChildrenRule(kind=pb.CHILDREN_RULE_KIND_WEIGHTED_SHARE,
                               min_weighted_share=_number(spec["weighted_share"], f"{here}.weighted_share", path))
    raise ValueMapFileError(f"{path}: {here}: one of all, {{at_least: K}} or {{weighted_share: X}}")


def _word(value, names: dict[str, int], here: str, path) -> int:
    if value is None:
        return 0  # the service names the missing field
    key = str(value).strip().lower().replace(" ", "_").replace("-", "_")
    if key not in names:
        raise ValueMapFileError(f"{path}: {here}: {value!r} is not one of {', '.join(names)}")
    return names[key]


def _number(value, here: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueMapFileError(f"{path}: {here}: {value!r} is not a number")
    return float(value)


def write_value_map(value_map: pb.ValueMapVersion) -> dict:
    """A version in the file form `cvh valuemap apply` reads (flat, parents first)."""
    levels = {v: k for k, v in LEVEL_NAMES.items()}
    functions = {v: k for k, v in FUNCTION_NAMES.items()}
    nodes = []
    for node in value_map.nodes:
        item = {"key": node.key, "level": levels.get(node.level, node.level), "name": node.display_name}
        if node.definition:
            item["definition"] = node.definition
        if node.parent_key:
            item["parent"] = node.parent_key
        item["owner"] = functions.get(node.owning_function, node.owning_function)
        if node.HasField("weight"):
            item["weight"] = node.weight
        if node.level == pb.NODE_LEVEL_PROCEDURE:
            rule = node.procedure_rule
            item["rule"] = {"events": list(rule.event_names), "min_count": rule.min_count,
                            "min_active_days": rule.min_active_days,
                            "min_distinct_users": rule.min_distinct_users, "window_days": rule.window_days}
        else:
            item["achieved_when"] = _rule_text(node.children_rule)
        nodes.append(item)
    return {"change_note": value_map.change_note, "nodes": nodes}


def _rule_text(rule: pb.ChildrenRule):
    if rule.kind == pb.CHILDREN_RULE_KIND_AT_LEAST:
        return {"at_least": rule.min_children}
    if rule.kind == pb.CHILDREN_RULE_KIND_WEIGHTED_SHARE:
        return {"weighted_share": rule.min_weighted_share}
    return "all"


# -- commands ------------------------------------------------------------------------------------------------

def valuemap_apply(args: argparse.Namespace) -> int:
    try:
        value_map = read_value_map(args.file)
    except ValueMapFileError as error:
        raise tabular.InputError(str(error)) from None
    if args.note:
        value_map.change_note = args.note
    with connect(args) as cvh:
        stored = cvh.create_value_map_version(value_map, activate=not args.no_activate,
                                              validate_only=args.validate_only)
    if args.json:
        print_json(message_dict(stored))
    elif args.validate_only:
        print(f"{args.file} is valid: {_sizes(stored)}")
    else:
        print(f"created {stored.name}: {_sizes(stored)}"
              + (" (active)" if stored.active else f"; activate it with `cvh valuemap activate {stored.version}`"))
    return 0


def _sizes(value_map: pb.ValueMapVersion) -> str:
    nouns = (("strategy", "strategies"), ("initiative", ""), ("use case", ""), ("procedure", ""))
    counts = list(value_map.level_counts) or [0, 0, 0, 0]
    return ", ".join(counted(n, noun, plural) for n, (noun, plural) in zip(counts, nouns))


def valuemap_show(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        value_map = cvh.get_value_map_version(args.version or "")
    if args.json:
        print_json(message_dict(value_map))
        return 0
    print(f"# {value_map.name}{' (active)' if value_map.active else ''}, by {value_map.author or 'unknown'} "
          f"at {timestamp(value_map.create_time)}: {_sizes(value_map)}")
    if args.tree:
        _print_tree(value_map)
        return 0
    import yaml

    print(yaml.safe_dump(write_value_map(value_map), sort_keys=False, allow_unicode=True, width=110), end="")
    return 0


def _print_tree(value_map: pb.ValueMapVersion) -> None:
    children: dict[str, list[pb.ValueNode]] = {}
    for node in value_map.nodes:
        children.setdefault(node.parent_key, []).append(node)

    def show(node: pb.ValueNode, depth: int) -> None:
        if node.level == pb.NODE_LEVEL_PROCEDURE:
            rule = node.procedure_rule
            needs = [f"{rule.min_count}+ events" if rule.min_count else "",
                     f"{rule.min_active_days}+ active days" if rule.min_active_days else "",
                     f"{rule.min_distinct_users}+ users" if rule.min_distinct_users else ""]
            detail = f"{', '.join(n for n in needs if n)} of {', '.join(rule.event_names)} in {rule.window_days} d"
        else:
            detail = json.dumps(_rule_text(node.children_rule))
        print(f"{'  ' * depth}{node.key}: {node.display_name} [{enum_word(pb.OwningFunction, node.owning_function)}]"
              f" - {detail}")
        for child in children.get(node.key, []):
            show(child, depth + 1)
    for root in children.get("", []):
        show(root, 0)


def valuemap_list(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        versions = list(cvh.list_value_map_versions())
    if args.json:
        print_json([message_dict(v) for v in versions])
        return 0
    if not versions:
        print("no value hierarchy yet: `cvh valuemap apply FILE` stores the first")
        return 0
    print_table(["version", "active", "nodes", "author", "created", "note"],
                [[v.version, "yes" if v.active else "", sum(v.level_counts), v.author, timestamp(v.create_time),
                  v.change_note] for v in versions], right=[0, 2])
    return 0


def valuemap_diff(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        diff = cvh.diff_value_map_versions(args.base, args.target)
    if args.json:
        print_json(message_dict(diff))
        return 0
    if not (diff.added or diff.removed or diff.changed):
        print(f"{diff.base} and {diff.target} hold the same nodes")
    for node in diff.added:
        print(f"+ {node.key} ({enum_word(pb.NodeLevel, node.level)}): {node.display_name}")
    for node in diff.removed:
        print(f"- {node.key} ({enum_word(pb.NodeLevel, node.level)}): {node.display_name}")
    for change in diff.changed:
        print(f"~ {change.key}: {', '.join(change.changed_fields)}")
    return 0


def valuemap_draw(args: argparse.Namespace) -> int:
    from clients.valuemap_picture import draw_value_map, node_achieved

    with connect(args) as cvh:
        if args.customer:
            tree = cvh.get_customer_adoption(args.customer)
            out = draw_value_map(tree.nodes, {}, args.out, f"What {customer_id(tree.customer)} has achieved",
                                 f"{tree.value_map_version} on {tree.evaluated_day}: achieved in blue",
                                 achieved=node_achieved(tree))
        else:
            report = cvh.get_node_adoption()
            out = draw_value_map(report.nodes, {n.key: n.share for n in report.nodes}, args.out,
                                 "The value hierarchy: share of customers that achieved each node",
                                 f"{report.value_map_version}, {report.customers_evaluated:,} customers with "
                                 f"telemetry, evaluated {timestamp(report.evaluate_time)} UTC")
    print_json({"out": str(out)}) if args.json else print(f"drew the value hierarchy into {out}")
    return 0


def valuemap_activate(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        value_map = cvh.activate_value_map_version(args.version)
    print_json(message_dict(value_map)) if args.json else print(f"{value_map.name} is now the active version")
    return 0


def telemetry_record(args: argparse.Namespace) -> int:
    source = TelemetryFile(args.file, args.format, args.chunk_events, batch_ids=not args.no_batch_ids)
    with connect(args) as cvh, progress(source.total_bytes, f"recording {Path(args.file).name}", unit="B",
                                        enabled=not args.json) as bar:
        def requests():
            for request in source.requests():
                bar.update(source.bytes_read - bar.n)
                bar.set_postfix_str(counted(source.events_sent, "event"))
                yield request
        summary = cvh.record_telemetry(requests())
        bar.update(source.total_bytes - bar.n)
    rejects = [tabular.RejectedRow(row, "", "", "empty customer_id, event or time") for row in source.rejected_here]
    rejects += [tabular.RejectedRow(source.line_of(r.message_index, r.position), "", "",
                                    enum_word(pb.TelemetryRejectionReason, r.reason)) for r in summary.rejections]
    rejects_file = Path(args.rejects or f"{args.file}.rejects.csv")
    if rejects:
        tabular.write_rejects(rejects_file, sorted(rejects, key=lambda r: r.line))
    rejected = summary.events_rejected + len(source.rejected_here)
    if args.json:
        print_json({**message_dict(summary), "rejected_here": len(source.rejected_here),
                    "rejects_file": str(rejects_file) if rejects else ""})
        return 1 if rejected else 0
    print(f"{summary.events_kept:,} events kept, {rejected:,} rejected, "
          f"{counted(summary.duplicate_messages, 'message')} already recorded (skipped), "
          f"{summary.daily_rows_written:,} daily aggregates written")
    for count in summary.rejection_counts:
        print(f"  {count.events:,} {enum_word(pb.TelemetryRejectionReason, count.reason)}")
    if rejects:
        listed = " (the first 1,000 the service listed)" if summary.events_rejected > len(summary.rejections) else ""
        print(f"rejected rows and reasons: {rejects_file}{listed}")
    return 1 if rejected else 0


def customer_adoption(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        tree = cvh.get_customer_adoption(args.customer, args.version or "")
    if args.json:
        print_json(message_dict(tree))
        return 0
    print_adoption(tree)
    return 0


ADOPTION_ACTIONS = ("show", "node", "customers", "recommend")


def adoption_shorthand(argv: list[str]) -> list[str]:
    """``cvh adoption ID ...`` -> ``cvh adoption show ID ...``: the customer's tree stays one word away."""
    if len(argv) >= 2 and argv[0] == "adoption" and argv[1] not in ADOPTION_ACTIONS and not argv[1].startswith("-"):
        return ["adoption", "show", *argv[1:]]
    return argv


def node_adoption(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        report = cvh.get_node_adoption(args.key, args.tier or "")
    if args.json:
        print_json(message_dict(report))
        return 0
    (node,) = report.nodes
    trend = ""
    if node.HasField("previous_share"):
        trend = f", {100 * (node.share - node.previous_share):+.1f} points since the evaluation before"
    ttv = f"; median time to value {node.median_days_to_value:g} days" if node.HasField("median_days_to_value") else ""
    print(f"{node.key}: {node.display_name} ({report.value_map_version}, {timestamp(report.evaluate_time)})")
    print(f"achieved by {node.customers_achieved:,} of {report.customers_evaluated:,} customers with telemetry "
          f"({100 * node.share:.1f} %{trend}){ttv}")
    if node.tiers:
        print_table(["tier", "customers", "achieved", "share"],
                    [[t.tier_id, f"{t.customers:,}", f"{t.customers_achieved:,}", f"{100 * t.share:.1f} %"]
                     for t in node.tiers])
    elif not args.tier:
        print("(no value tiers: the hierarchy service is not reachable from the adoption service, or has no run)")
    return 0


def node_customers(args: argparse.Namespace) -> int:
    rows, total, shown = [], 0, 0
    with connect(args) as cvh:
        for page in cvh.list_node_customers(args.key, not args.not_achieved, args.tier or "", args.owner or "",
                                            args.account or "", page_size=min(args.limit or 1000, 1000)):
            total = page.total_size
            for customer in page.customers:
                if args.limit and shown >= args.limit:
                    break
                rows.append(customer)
                shown += 1
            if args.limit and shown >= args.limit:
                break
    if args.json:
        print_json({"total_size": total, "customers": [message_dict(c) for c in rows]})
        return 0
    print_table(["customer", "tier", "owner", "achieved" if not args.not_achieved else "procedures done"],
                [[c.customer.removeprefix("customers/"), c.tier_id or "-", c.owner or "-",
                  c.first_achieved_day if not args.not_achieved else f"{100 * c.procedures_achieved_share:.0f} %"]
                 for c in rows])
    print(f"{len(rows):,} of {total:,} customers that have {'not ' if args.not_achieved else ''}achieved {args.key}")
    return 0


def recommend(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        answer = cvh.recommend_use_cases(args.customer, args.limit, args.peers)
    if args.json:
        print_json(message_dict(answer))
        return 0
    among = f"tier {answer.tier_id}" if answer.tier_id else "all customers"
    print(f"{answer.customer}: {answer.peers:,} peers in {among} (mean similarity {answer.mean_similarity:.2f}), "
          f"{answer.value_map_version}")
    if not answer.use_cases:
        print("nothing to recommend: no peer has a use case this customer lacks")
        return 0
    print_table(["use case", "name", "initiative", "peers", "all", "lift"],
                [[u.key, u.display_name, u.parent_key, f"{100 * u.peer_share:.0f} %", f"{100 * u.base_share:.0f} %",
                  f"{u.lift:.2f}"] for u in answer.use_cases])
    return 0


def print_adoption(tree: pb.CustomerAdoption, deepest: int = pb.NODE_LEVEL_PROCEDURE, indent: str = "") -> None:
    """The tree down to level ``deepest``: [x] achieved, progress, last activity, and why not."""
    counts = ", ".join(f"{a}/{n}" for a, n in zip(tree.achieved_counts, _level_sizes(tree)))
    print(f"{indent}{tree.customer} on {tree.evaluated_day}, {tree.value_map_version}: achieved {counts} "
          "(strategies, initiatives, use cases, procedures)")
    children: dict[str, list[pb.NodeAdoption]] = {}
    for node in tree.nodes:  # stored level by level: walk it as a tree
        children.setdefault(node.parent_key, []).append(node)

    def show(node: pb.NodeAdoption) -> None:
        pad = indent + "  " * (node.level - 1)
        mark = "[x]" if node.achieved else "[ ]"
        last = f", last active {node.last_active_day}" if node.last_active_day else ""
        print(f"{pad}{mark} {node.key}: {node.display_name} ({100 * node.progress:.0f} %{last})")
        for reason in node.why_not:
            print(f"{pad}      {reason}")
        for child in children.get(node.key, []) if node.level < deepest else []:
            show(child)
    for root in children.get("", []):
        show(root)


def _level_sizes(tree: pb.CustomerAdoption) -> list[int]:
    sizes = [0, 0, 0, 0]
    for node in tree.nodes:
        sizes[node.level - 1] += 1
    return sizes


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    valuemap = commands.add_parser(
        "valuemap", help="the value hierarchy: strategies, initiatives, use cases, procedures",
        description="Versions of the value hierarchy: one agreed structure and vocabulary for every team. "
                    "Versions are immutable; one is active.")
    actions = valuemap.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser("apply", parents=[client], help="store a new version from a YAML or JSON file",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Check FILE and store it as a new version, which becomes the active "
                                             "one (unless --no-activate). Every bad field is named by its "
                                             "path.\n\n" + VALUE_MAP_FILE_RULES)
    command.add_argument("file", type=existing_file, metavar="FILE", help="a .yaml, .yml or .json file")
    command.add_argument("--note", metavar="TEXT", help="the change note (default: the file's change_note)")
    command.add_argument("--no-activate", action="store_true", help="store it, but keep the active version")
    command.add_argument("--validate-only", action="store_true", help="only check it; store nothing")
    command.set_defaults(run=valuemap_apply)
    command = actions.add_parser("show", parents=[client], help="a version in the file form (default: the active)",
                                 description="Print a version as `cvh valuemap apply` reads it (YAML), or as "
                                             "an indented tree with --tree.")
    command.add_argument("--version", type=positive_int, metavar="N", help="which version (default: the active)")
    command.add_argument("--tree", action="store_true", help="an indented tree with each node's rule")
    command.set_defaults(run=valuemap_show)
    command = actions.add_parser("list", parents=[client], help="the versions, newest first",
                                 description="Every stored version with its author, time and change note.")
    command.set_defaults(run=valuemap_list)
    command = actions.add_parser("diff", parents=[client], help="nodes added, removed and changed between two "
                                                                "versions",
                                 description="What changed from version BASE to version TARGET: nodes added (+), "
                                             "removed (-) and changed (~, with the fields).")
    command.add_argument("base", metavar="BASE", help="the version compared from: N or valueMapVersions/N")
    command.add_argument("target", metavar="TARGET", help="the version compared to: N or valueMapVersions/N")
    command.set_defaults(run=valuemap_diff)
    command = actions.add_parser(
        "draw", parents=[client], help="draw the value hierarchy, shaded by adoption (.png or .svg)",
        description="Draw the active value hierarchy as an icicle (strategies on top, each node as wide as the "
                    "procedures beneath it), each node shaded by the share of customers that have achieved it "
                    "(from the latest evaluation of the base); with --customer, that customer's achieved "
                    "branches.")
    command.add_argument("--out", type=picture_file, required=True, metavar="FILE", help="a .png or .svg file")
    command.add_argument("--customer", metavar="ID", help="draw what this customer has achieved")
    command.set_defaults(run=valuemap_draw)
    command = actions.add_parser("activate", parents=[client], help="make a stored version the active one",
                                 description="Make version N the active one; the others stay stored.")
    command.add_argument("version", type=positive_int, metavar="N", help="the version")
    command.set_defaults(run=valuemap_activate)

    adoption = commands.add_parser(
        "adoption", help="what customers achieved of the value hierarchy: one customer, one node, targets, "
                         "recommendations",
        description="Adoption of the value hierarchy. `cvh adoption ID` is short for `cvh adoption show ID`.")
    actions = adoption.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser(
        "show", parents=[client], help="a customer's value hierarchy: what it achieved, and why not",
        description="The customer's value hierarchy today: each node achieved [x] or not [ ], its progress and "
                    "last activity, and under what is not achieved, why (\"2 of 5 active days in the last 30 "
                    "days\").")
    command.add_argument("customer", metavar="ID", help="customer id (or customers/ID)")
    command.add_argument("--version", type=positive_int, metavar="N", help="which version (default: the active)")
    command.set_defaults(run=customer_adoption)
    command = actions.add_parser(
        "node", parents=[client], help="a node across the base: share achieved, per value tier, time to value",
        description="How many customers have achieved node KEY and their share (with the change since the "
                    "evaluation before), per value tier of the hierarchy, and the median days from a customer's "
                    "creation to achieving it. From the latest evaluation of the base.")
    command.add_argument("key", metavar="KEY", help="the node's key")
    command.add_argument("--tier", metavar="T", help="only this tier's figures (a tier id, e.g. strategic)")
    command.set_defaults(run=node_adoption)
    command = actions.add_parser(
        "customers", parents=[client], help="customers that have (or have not) achieved a node: targets and "
                                            "opportunities",
        description="The customers that have achieved node KEY, or with --not-achieved those that have not "
                    "(customers without telemetry included): the target list for CS Operations and the "
                    "opportunity list for Sales. By rank in the hierarchy, then id.")
    command.add_argument("key", metavar="KEY", help="the node's key")
    command.add_argument("--not-achieved", action="store_true", help="those that have not achieved it")
    command.add_argument("--tier", metavar="T", help="only customers of this tier (a tier id)")
    command.add_argument("--owner", metavar="O", help="only customers this owner owns (exact)")
    command.add_argument("--account", metavar="ID", help="only this account and the accounts beneath it")
    command.add_argument("--limit", type=whole_number(0, zero_means="all"), default=100, metavar="N",
                         help="at most N customers (default 100; 0 for all)")
    command.set_defaults(run=node_customers)
    command = actions.add_parser(
        "recommend", parents=[client], help="use cases to offer a customer, from customers like it",
        description="The use cases customer ID has not achieved that its nearest peers (same value tier, most "
                    "similar achieved use cases by Jaccard) most often have, with the peers' share, the share "
                    "over all customers and the lift (the one over the other).")
    command.add_argument("customer", metavar="ID", help="customer id (or customers/ID)")
    command.add_argument("--limit", type=whole_number(1, 100), default=5, metavar="N",
                         help="at most N use cases (1 to 100, default 5)")
    command.add_argument("--peers", type=whole_number(1, 10_000), default=50, metavar="N",
                         help="at most N nearest peers (1 to 10,000, default 50)")
    command.set_defaults(run=recommend)

    telemetry = commands.add_parser("telemetry", help="product telemetry in",
                                    description="Product events, kept as daily aggregates per customer and event.")
    actions = telemetry.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser(
        "record", parents=[client], help="record events from CSV, JSON Lines or Parquet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Stream the events of FILE to the adoption service, each message committed on its own. "
                    "Events of unknown customers, with bad names, in the future or beyond the retention are "
                    "not kept: their rows go to --rejects and the command exits 1. Each message carries a "
                    "batch id made from its content, so recording a file again (or again after an "
                    "interruption) does not count its events twice.\n\n" + TELEMETRY_FILE_RULES)
    command.add_argument("file", type=existing_path, metavar="FILE",
                         help="a .csv, .jsonl, .ndjson or .parquet file, or a folder of .parquet files")
    command.add_argument("--format", choices=["csv", "jsonl", "parquet"], help="file format (default: from the suffix)")
    command.add_argument("--rejects", metavar="FILE", help="where rejected rows go (default FILE.rejects.csv)")
    command.add_argument("--chunk-events", type=whole_number(1, MAX_EVENTS_PER_MESSAGE),
                         default=MAX_EVENTS_PER_MESSAGE, metavar="N",
                         help="events per message, each committed on its own (default 100,000)")
    command.add_argument("--no-batch-ids", action="store_true",
                         help="send no batch ids: a file recorded twice counts twice")
    command.set_defaults(run=telemetry_record)
