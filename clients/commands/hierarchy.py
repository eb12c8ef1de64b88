"""Looking customers up: cvh health, priority, rank, tree, tiers, pyramid."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.client import customer_id
from clients.commands.common import connect, enum_word
from clients.output import message_dict, number, print_json, print_table
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb


def health(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        status = cvh.health(args.service)
    print_json({"service": args.service, "status": status}) if args.json else print(status)
    return 0 if status == "SERVING" else 1


def priority(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        priorities = cvh.batch_get_priority(args.customers)
    if args.json:
        print_json([message_dict(p) for p in priorities])
        return 0
    for n, p in enumerate(priorities):
        if n:
            print()
        print_priority(p)
    return 0


def print_priority(p: pb.Priority) -> None:
    """One customer's standing, as a support agent reads it."""
    tier = p.effective_tier.display_name or p.effective_tier.tier_id or "default policy"
    inherited = (f" (own tier {p.own_tier.display_name or p.own_tier.tier_id})"
                 if p.own_tier.tier_id and p.own_tier.tier_id != p.effective_tier.tier_id else "")
    print(f"{customer_id(p.customer)}: {tier}{inherited}")
    if p.scored:
        print(f"  value      {number(p.composite)} / 100, rank {p.rank:,}, above {p.percentile:.1f} % of customers")
    else:
        print("  value      not scored yet: the default policy applies")
    print(f"  role       {enum_word(common_pb2.StakeholderRole, p.stakeholder_role)}"
          + (f", owner {p.owner}" if p.owner else ""))
    for reason in p.reasons:
        print(f"  why        {reason.text}")
    policy = p.policy
    sla = policy.sla
    print(f"  service    first response {_duration(sla.first_response)}, resolution {_duration(sla.resolution)}, "
          f"routing priority {policy.routing_priority}")
    authority = policy.authority
    limit = authority.goodwill_credit_limit_minor
    may = [f"goodwill credit up to {limit / 100:,.2f} {authority.currency}".strip() if limit else "no goodwill credit"]
    if authority.may_waive_fees:
        may.append("may waive fees")
    may += list(authority.offers)
    print(f"  may do     {'; '.join(may)}")
    escalation = policy.escalation
    route = ("the account owner, then " if escalation.owner_first else "") + (escalation.team or "the support lead")
    print(f"  escalate   to {route}")


def _duration(duration) -> str:
    seconds = duration.seconds
    if not seconds:
        return "–"
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def rank(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        ranked = cvh.rank_customers(args.customers)
    if args.json:
        print_json([message_dict(r) for r in ranked])
        return 0
    print_table(["#", "customer", "tier", "role", "value", "ahead of the next by"],
                [[n, customer_id(r.customer), r.effective_tier.display_name or r.effective_tier.tier_id or "–",
                  enum_word(common_pb2.StakeholderRole, r.stakeholder_role),
                  number(r.composite if r.HasField("composite") else None),
                  enum_word(pb.RankRule, r.decided_by) if n < len(ranked) else ""]
                 for n, r in enumerate(ranked, 1)], right=[0, 4])
    return 0


def tree(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        account = cvh.get_account_tree(args.customer, args.max_children)
    if args.json:
        print_json(message_dict(account))
        return 0

    def line(node: pb.AccountNode, depth: int, mark: str = "") -> str:
        tier = node.tier.display_name or node.tier.tier_id or "unscored"
        value = number(node.composite if node.HasField("composite") else None)
        return f"{'  ' * depth}{customer_id(node.customer)}  [{tier}, value {value}]{mark}"

    depth = 0
    for depth, node in enumerate(reversed(account.ancestors)):
        print(line(node, depth))
    depth = len(account.ancestors)
    print(line(account.customer, depth, "  <-"))
    for child in account.children:
        print(line(child, depth + 1))
    hidden = account.children_total - len(account.children)
    if hidden > 0:
        print(f"{'  ' * (depth + 1)}... and {hidden:,} more children")
    rollup = account.rollup
    print(f"subtree: {rollup.customers:,} customers, best tier "
          f"{rollup.best_tier.display_name or rollup.best_tier.tier_id or '–'}, group value "
          f"{number(rollup.group_composite if rollup.HasField('group_composite') else None)}")
    return 0


def tiers(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        summary = cvh.get_hierarchy_summary()
    print_json(message_dict(summary)) if args.json else tiers_table(summary)
    return 0


DIMENSION_WORDS = [enum_word(common_pb2.ValueDimension, d) for d in common_pb2.ValueDimension.values() if d]


def tiers_table(summary: pb.HierarchySummary) -> None:
    print(f"{summary.total_customers:,} customers in {summary.run or 'no run yet'}")
    rows = []
    for t in summary.tiers:
        shares = {enum_word(common_pb2.ValueDimension, s.dimension): s.score
                  for s in t.value_percent if s.HasField("score")}
        rows.append([t.tier.level, t.tier.display_name or t.tier.tier_id, f"{t.customers:,}",
                     f"{t.customer_percent:.1f} %",
                     *(f"{shares.get(d, float('nan')):.1f} %" for d in DIMENSION_WORDS),
                     f"{number(t.min_composite)}–{number(t.max_composite)}"])
    print_table(["level", "tier", "customers", "share", *[f"{d} value" for d in DIMENSION_WORDS], "value range"],
                rows, right=[0, 2, 3, 4, 5, 6, 7])


def pyramid(args: argparse.Namespace) -> int:
    from clients.pyramid import check_suffix

    check_suffix(args.out)  # before asking the server anything
    with connect(args) as cvh:
        summary = cvh.get_hierarchy_summary()
    if not summary.total_customers:
        print("cvh pyramid: no customers in the hierarchy yet; import some and run scoring (see `cvh demo`)")
        return 1
    out = Path(args.out)
    pyramid_file(summary, out, args.title)
    print_json({"out": str(out), "tiers": len(summary.tiers)}) if args.json else print(f"wrote {out}")
    return 0


def pyramid_file(summary: pb.HierarchySummary, out: Path, title: str = "") -> None:
    from clients import pyramid as drawing  # matplotlib loads only for pictures

    drawing.draw_pyramid(drawing.layers_from_summary(summary), out, title=title or "Customer value hierarchy",
                         subtitle=f"{summary.total_customers:,} customers, {summary.run}")


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser("health", parents=[client], help="is the suite serving?",
                                  description="Ask the gRPC health service; exits 0 when SERVING, 1 otherwise.")
    command.add_argument("--service", default="", metavar="NAME",
                         help='one service, e.g. cvh.hierarchy.v1.HierarchyService (default: the whole server)')
    command.set_defaults(run=health)

    command = commands.add_parser(
        "priority", parents=[client], help="who is this customer and how much may the front line do?",
        description="Each customer's tier, value, reasons, service targets and front-line authority, "
                    "from the hierarchy's in-memory snapshot.")
    command.add_argument("customers", nargs="+", metavar="ID", help="customer ids (or customers/ID names)")
    command.set_defaults(run=priority)

    command = commands.add_parser(
        "rank", parents=[client], help="order competing customers: who do we delight first?",
        description="Orders customers by tier, then stakeholder role precedence, then value, and says which "
                    "rule decided each pair.")
    command.add_argument("customers", nargs="+", metavar="ID", help="two or more customer ids")
    command.set_defaults(run=rank)

    command = commands.add_parser("tree", parents=[client], help="a customer's account tree and roll-up",
                                  description="Ancestors, the customer, its children and the subtree's roll-up.")
    command.add_argument("customer", metavar="ID")
    command.add_argument("--max-children", type=int, default=0, metavar="N", help="children shown (default 100)")
    command.set_defaults(run=tree)

    command = commands.add_parser("tiers", parents=[client], help="the hierarchy's tiers, sizes and value shares",
                                  description="Customers per tier and each tier's share of the value on every "
                                              "dimension, for the run the hierarchy serves.")
    command.set_defaults(run=tiers)

    command = commands.add_parser(
        "pyramid", parents=[client], help="draw the hierarchy as a pyramid (PNG or SVG)",
        description="Draw one layer per tier, sized by customer count and annotated with its share of value.")
    command.add_argument("--out", "-o", required=True, metavar="FILE", help="output file: .png or .svg")
    command.add_argument("--title", default="", help="title above the pyramid")
    command.set_defaults(run=pyramid)
