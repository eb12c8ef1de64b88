"""Looking customers up: cvh health, priority, rank, tree, tiers, pyramid, book, portfolios."""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np

from clients.client import customer_id
from clients.commands.common import connect, enum_word, whole_number
from clients.output import counted, message_dict, money, number, percent, print_json, print_table
from clients.pyramid import check_suffix, tier_layers, value_by_level, value_word
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb

MAX_BATCH = 1000  # BatchGetPriority: customers per call


def health(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        status = cvh.health(args.service)
    print_json({"service": args.service, "status": status}) if args.json else print(status)
    return 0 if status == "SERVING" else 1


def priority(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        priorities = cvh.batch_get_priority(args.customers)
    missing = [p for p in priorities if p.not_found]
    if args.json:
        print_json([message_dict(p) for p in priorities])
        return 1 if missing else 0
    for n, p in enumerate(priorities):
        if n:
            print()
        if p.not_found:
            print(f"{customer_id(p.customer)}: not registered (the registry holds no such customer)")
        else:
            print_priority(p)
    return 1 if missing else 0


def print_priority(p: pb.Priority) -> None:
    """One customer's standing, as a support agent reads it."""
    churned = p.lifecycle_stage == common_pb2.LIFECYCLE_STAGE_CHURNED
    print(f"{customer_id(p.customer)}: "
          f"{'churned' if churned else tier_words(p.effective_tier, p.own_tier, 'default policy')}")
    if p.lifecycle_stage:
        print(f"  stage      {enum_word(common_pb2.LifecycleStage, p.lifecycle_stage)}")
    if churned:
        print("  value      none: churned customers are not scored; the default policy applies")
    elif p.scored:
        print(f"  value      {number(p.composite)} / 100, rank {p.rank:,}, above {p.percentile:.1f} % of customers")
        if p.live:
            print(f"  live       re-scored at {p.live_time.ToDatetime():%Y-%m-%d %H:%M:%S} UTC with the model of "
                  f"{p.run}: its signals changed since that run")
    elif p.effective_tier.tier_id:
        print("  value      not scored yet: served at the standing it inherits from its parent account")
    else:
        print("  value      not scored yet: the default policy applies")
    if p.trend.note:
        print(f"  trend      {p.trend.note}")
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
    may = [f"goodwill credit up to {money(limit, authority.currency)}" if limit else "no goodwill credit"]
    if authority.may_waive_fees:
        may.append("may waive fees")
    may += list(authority.offers)
    print(f"  may do     {'; '.join(may)}")
    if limit and p.HasField("goodwill_remaining_minor"):
        print(f"  goodwill   {money(p.goodwill_remaining_minor, authority.currency)} left this period "
              f"(since {p.goodwill_period_start.ToDatetime():%Y-%m-%d})")
    for member in p.team:
        source = f" (from {customer_id(member.inherited_from)})" if member.inherited_from else ""
        print(f"  team       {member.role}: {_who(member)}{source}")
    if p.escalation:
        print("  escalate   " + " -> ".join(f"{_who(step.persons[0]) if step.persons else step.contact or '?'} "
                                            f"({step.level})" for step in p.escalation))
    else:
        escalation = policy.escalation
        route = ("the account owner, then " if escalation.owner_first else "") + (escalation.team or "the support lead")
        print(f"  escalate   to {route}")


def tier_words(effective: common_pb2.TierRef, own: common_pb2.TierRef, none: str = "unscored") -> str:
    """The tier the customer is served at, first, then its own when it inherits another: what `cvh priority`
    and `cvh tree` both lead with ("Core (own tier Standard)")."""
    served = effective.display_name or effective.tier_id or own.display_name or own.tier_id or none
    if own.tier_id and effective.tier_id and own.tier_id != effective.tier_id:
        return f"{served} (own tier {own.display_name or own.tier_id})"
    return served


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


def bad_profits(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        found = list(itertools.islice(cvh.list_bad_profits(args.tier, args.owner, min(args.limit or 1000, 1000)),
                                      args.limit or None))
    if args.json:
        print_json([message_dict(c) for c in found])
        return 0
    if not found:
        print("no bad-profit customers" + (" in this selection" if args.tier or args.owner else "")
              + " in the served run")
        return 0
    print("profit at risk of being bad profit (profitable, but the relationship suffers): repair the relationship "
          "before you sell")
    print_table(["#", "customer", "tier", "owner", "revenue", "value"],
                [[n, customer_id(c.customer), c.effective_tier.display_name or c.effective_tier.tier_id or "–",
                  c.owner or "–", number(c.revenue if c.HasField("revenue") else None),
                  number(c.composite if c.HasField("composite") else None)] for n, c in enumerate(found, 1)],
                right=[0, 4, 5])
    if args.limit and len(found) == args.limit:
        print(f"(the first {counted(args.limit, 'customer')} by revenue; --limit 0 shows all)")
    return 0


def tree(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        account = cvh.get_account_tree(args.customer, args.max_children)
        nodes = [*account.ancestors, account.customer, *account.children]
        # The tree's nodes carry their own tier; the tier each is served at comes with its priority.
        served = {p.customer: p.effective_tier for start in range(0, len(nodes), MAX_BATCH)
                  for p in cvh.batch_get_priority([n.customer for n in nodes[start:start + MAX_BATCH]])}
    if args.json:
        print_json(message_dict(account))
        return 0

    def line(node: pb.AccountNode, depth: int, mark: str = "") -> str:
        tier = tier_words(served.get(node.customer, common_pb2.TierRef()), node.tier)
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
        print(f"{'  ' * (depth + 1)}... and {counted(hidden, 'more child', 'more children')}")
    rollup = account.rollup
    print(f"subtree: {counted(rollup.customers, 'customer')}, best tier "
          f"{rollup.best_tier.display_name or rollup.best_tier.tier_id or '–'}, group value "
          f"{number(rollup.group_composite if rollup.HasField('group_composite') else None)}")
    return 0


def tiers(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        summary = cvh.get_hierarchy_summary()
        sums = value_sums(cvh, summary.run, args.value_signal)
    layers = tier_layers(summary, sums)
    if args.json:
        data = message_dict(summary)
        data["value_signal"] = args.value_signal
        shares = {layer.tier_id: layer.value_share for layer in layers}
        for tier in data.get("tiers", []):
            share = shares.get(tier["tier"].get("tier_id", ""), math.nan)
            tier["value_signal_percent"] = None if math.isnan(share) else 100 * share
        print_json(data)
    else:
        tiers_table(summary, layers, args.value_signal)
    return 0


def value_sums(cvh, run: str, signal: str) -> dict[int, float] | None:
    """The value signal summed per tier level of ``run``: the run's tier per customer (StreamRunResults)
    joined here with the registry's current values of that one signal (ExportSignalMatrix). None when
    there is no run, no signal asked for, or no customer has the signal."""
    if not run or not signal:
        return None
    ids, levels = [], []
    for chunk in cvh.stream_run_results(run):
        ids.extend(chunk.dimension_scores.customer_ids)
        levels.append(np.frombuffer(chunk.tier_levels, "<i4"))
    export = cvh.export_signals([signal])
    if export.values is None or not np.isfinite(export.values).any():
        return None
    return value_by_level(ids, np.concatenate(levels) if levels else np.empty(0, np.int32), export.customer_ids,
                          export.values)


def tiers_table(summary: pb.HierarchySummary, layers, value_signal: str) -> None:
    word = value_word(value_signal)
    print(f"{counted(summary.total_customers, 'customer')} in {summary.run or 'no run yet'}")
    tiers = {t.tier.tier_id: t for t in summary.tiers}
    print_table(["level", "tier", "customers", "% of customers", f"% of {word}", "% of summed composite",
                 "composite range"],
                [[tiers[layer.tier_id].tier.level, layer.display_name, f"{layer.customers:,}",
                  percent(layer.customer_share), percent(layer.value_share), percent(layer.composite_share),
                  f"{number(tiers[layer.tier_id].min_composite)}–{number(tiers[layer.tier_id].max_composite)}"]
                 for layer in layers], right=[0, 2, 3, 4, 5, 6])
    if value_signal and all(math.isnan(layer.value_share) for layer in layers) and layers:
        print(f"(no customer has {value_signal}: choose the money signal with --value-signal)")
    elif value_signal and value_signal != word:
        print(f"({word}: the current values of {value_signal} in the registry)")
    print("% of summed composite: the tier's share of all customers' 0-100 composite scores added up, not of "
          "money; per dimension: `cvh tiers --json`")


def pyramid(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        summary = cvh.get_hierarchy_summary()
        sums = value_sums(cvh, summary.run, args.value_signal) if summary.total_customers else None
    if not summary.total_customers:
        print("cvh pyramid: no customers in the hierarchy yet; import some and run scoring (see `cvh demo`)",
              file=sys.stderr)
        return 1
    out = Path(args.out)
    if args.tiers_only:
        pyramid_file(summary, tier_layers(summary, sums), out, args.title, args.value_signal)
    else:
        with connect(args) as cvh:
            chart = customers_first(cvh, tier_layers(summary, sums))
        from clients.org_chart import draw_org_chart  # matplotlib loads only for pictures

        draw_org_chart(chart, out, title=args.title or "Customers first",
                       subtitle=f"{counted(summary.total_customers, 'customer')}, {summary.run}",
                       value_signal=args.value_signal)
    print_json({"out": str(out), "tiers": len(summary.tiers)}) if args.json else print(f"wrote {out}")
    return 0


def customers_first(cvh, layers):
    """The inverted org chart's figures: the front line (owners) per tier, CSMs, CEMs and the CCO."""
    from clients.org_chart import OrgChart, front_line, people_words

    org = [m.person for m in cvh.get_organization_team().members if m.role == "chief_customer_officer"]
    return OrgChart(layers, front_line(layers, cvh.list_portfolios("owner")), [
        ("Customer success managers", people_words(cvh.list_portfolios("customer_success_manager"))),
        ("Customer experience managers", people_words(cvh.list_portfolios("customer_experience_manager"))),
        ("Chief customer officer", ", ".join(org) or "none named (`cvh org team chief_customer_officer=ID`)")])


def pyramid_file(summary: pb.HierarchySummary, layers, out: Path, title: str = "",
                 value_signal: str = "annual_revenue") -> None:
    from clients import pyramid as drawing  # matplotlib loads only for pictures

    drawing.draw_pyramid(layers, out, title=title or "Customer value hierarchy",
                         subtitle=f"{counted(summary.total_customers, 'customer')}, {summary.run}",
                         value_signal=value_signal)


def picture_file(text: str) -> str:
    """An argparse type for where a pyramid goes: a .png or .svg name."""
    try:
        check_suffix(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def book(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        answer = cvh.get_book_of_business(args.person, args.role)
    if args.json:
        print_json(message_dict(answer))
        return 0
    print_book(answer)
    return 0


def _who(contact: pb.TeamContact) -> str:
    """"Ana Lima <ana@example.com>", or the person id alone when the registry has no display name."""
    return f"{contact.display_name} <{contact.person}>" if contact.display_name else contact.person


def print_book(answer: pb.BookOfBusiness, indent: str = "") -> None:
    in_role = f" as {answer.role}" if answer.role else ""
    print(f"{indent}{answer.person}{in_role}: {counted(answer.total.customers, 'customer')}"
          + (f", {answer.load:.0%} of a capacity of {answer.capacity:,}" if answer.capacity else "")
          + f" ({answer.run or 'no run yet'})")
    print_book_rows([(t.tier.display_name or "no tier", t.figures) for t in answer.tiers] + [("total", answer.total)],
                    indent, answer.previous_run)


def print_book_rows(rows: list[tuple[str, pb.BookFigures]], indent: str = "", previous_run: str = "") -> None:
    """One line per tier; "since previous run" is "–" when the run has none to compare with."""
    print_table(["tier", "customers", f"since {previous_run or 'previous run'}", "value",
                 "revenue", "at risk", "bad profit"],
                [[name, f"{f.customers:,}",
                  f"{f.customers - f.previous_run_customers:+,}" if previous_run else "–", number(f.composite_value),
                  number(f.revenue), f"{f.at_risk:,}", f"{f.bad_profit:,} of {f.bad_profit_known:,} known"]
                 for name, f in rows], indent=indent)


def portfolios(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        answer = cvh.list_portfolios(args.role)
    if args.json:
        print_json(message_dict(answer))
        return 0
    if not answer.portfolios:
        print(f"no customer's team has a {args.role}")
        return 0
    print(f"{args.role}: {counted(len(answer.portfolios), 'person', 'people')} serve "
          f"{counted(answer.total.customers, 'customer')}; {answer.overloaded:,} above capacity")
    print_table(["person", "customers", "capacity", "load", "value", "revenue", "at risk", "bad profit"],
                [[p.person, f"{p.total.customers:,}", f"{p.capacity:,}" if p.capacity else "-",
                  f"{p.load:.0%}" + (" OVERLOADED" if p.load > 1 else "") if p.capacity else "-",
                  number(p.total.composite_value), number(p.total.revenue), f"{p.total.at_risk:,}",
                  f"{p.total.bad_profit:,}"] for p in answer.portfolios])
    return 0


def value_signal_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--value-signal", default="annual_revenue", metavar="SIGNAL",
                         help="the money signal whose share each tier holds (default annual_revenue; '' for none)")


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser("health", parents=[client], help="is the suite serving?",
                                  description="Ask the gRPC health service; exits 0 when SERVING, 1 otherwise.")
    command.add_argument("--service", default="", metavar="NAME",
                         help='one service, e.g. cvh.hierarchy.v1.HierarchyService (default: the whole server)')
    command.set_defaults(run=health)

    command = commands.add_parser(
        "priority", parents=[client], help="who is this customer and how much may the front line do?",
        description="Each customer's tier, value, reasons, service targets and front-line authority, "
                    "from the hierarchy's in-memory snapshot. Exits 1 when a customer is not registered.")
    command.add_argument("customers", nargs="+", metavar="ID", help="customer ids (or customers/ID names)")
    command.set_defaults(run=priority)

    command = commands.add_parser(
        "rank", parents=[client], help="order competing customers: who do we delight first?",
        description="Orders customers by tier, then stakeholder role precedence, then value, and says which "
                    "rule decided each pair.")
    command.add_argument("customers", nargs="+", metavar="ID", help="two or more customer ids")
    command.set_defaults(run=rank)

    command = commands.add_parser(
        "bad-profits", parents=[client], help="customers whose profit is at risk of being bad profit",
        description="The customers the served run's bad-profit rule flagged (by default: profitability in the "
                    "run's top quartile and a detractor NPS), highest revenue first: profit earned at the "
                    "expense of the relationship. Repair the relationship before selling to them.")
    command.add_argument("--tier", default="", metavar="TIER", help="only customers served at this tier id")
    command.add_argument("--owner", default="", metavar="OWNER", help="only customers with this owner")
    command.add_argument("--limit", type=whole_number(0, None, "all"), default=50, metavar="N",
                         help="at most N customers (default 50; 0: all)")
    command.set_defaults(run=bad_profits)

    command = commands.add_parser("tree", parents=[client], help="a customer's account tree and roll-up",
                                  description="Ancestors, the customer, its children and the subtree's roll-up.")
    command.add_argument("customer", metavar="ID")
    command.add_argument("--max-children", type=whole_number(0, 1000, "100"), default=0, metavar="N",
                         help="children shown, up to 1,000 (default 100)")
    command.set_defaults(run=tree)

    command = commands.add_parser(
        "tiers", parents=[client], help="the hierarchy's tiers: shares of customers and of revenue",
        description="For the run the hierarchy serves: customers per tier, each tier's share of the customers, "
                    "of the money a value signal measures (--value-signal, default annual_revenue: the "
                    "registry's current values, summed over the tier's customers) and of the summed 0-100 "
                    "composite scores (a share of scores, not of money).")
    value_signal_option(command)
    command.set_defaults(run=tiers)

    command = commands.add_parser(
        "pyramid", parents=[client], help="draw the hierarchy customers first (PNG or SVG)",
        description="Draw the hierarchy as an inverted org chart: customers on top, one box per tier with its "
                    "customers and share of the money a value signal measures (--value-signal, default "
                    "annual_revenue); the front line (the owners) beneath each tier with how many customers "
                    "each serves; then the customer success and experience managers and the chief customer "
                    "officer who support them. --tiers-only draws the tier pyramid alone: one layer per tier, "
                    "bars to scale, layer widths following the square root of the customers.")
    command.add_argument("--out", "-o", required=True, type=picture_file, metavar="FILE",
                         help="output file: .png or .svg")
    command.add_argument("--title", default="", help="title above the picture")
    command.add_argument("--tiers-only", action="store_true", help="the tier pyramid alone, without the people")
    value_signal_option(command)
    command.set_defaults(run=pyramid)

    command = commands.add_parser(
        "book", parents=[client], help="a person's book of business",
        description="The customers a person serves (in their effective teams: own members, or inherited from "
                    "an ancestor account), per tier: how many, the change since the previous run, summed "
                    "composite value, revenue (the model's outcome money signal, annual_revenue by default), at-risk and bad-profit counts, and the load "
                    "against the person's capacity.")
    command.add_argument("person", metavar="PERSON", help="the person's id, e.g. ana@example.com")
    command.add_argument("--role", default="", metavar="ROLE",
                         help="only customers served in this team role, e.g. customer_success_manager "
                              "(default: any role)")
    command.set_defaults(run=book)

    command = commands.add_parser(
        "portfolios", parents=[client], help="every person of a role: books of business and load",
        description="Every person holding a team role, most customers first, with their book's figures and "
                    "load against capacity (set with `cvh people set`), so a manager sees who is overloaded. "
                    "A customer served by two people counts for each of them, once in the total.")
    command.add_argument("--role", required=True, metavar="ROLE", help="the team role, e.g. customer_success_manager")
    command.set_defaults(run=portfolios)
