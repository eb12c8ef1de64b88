"""The front line's decisions: cvh decide, cvh authority."""

from __future__ import annotations

import argparse
import decimal

from clients.commands.common import connect, point_in_time
from clients.output import MINOR_UNITS, fail, message_dict, money, print_json, print_table
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb

KINDS = {"credit": pb.DECISION_KIND_GOODWILL_CREDIT, "waiver": pb.DECISION_KIND_FEE_WAIVER,
         "offer": pb.DECISION_KIND_OFFER, "escalation": pb.DECISION_KIND_ESCALATION}


def amount(text: str) -> decimal.Decimal:
    """An argparse type: a positive amount in major units with at most two decimals ("12.50")."""
    try:
        value = decimal.Decimal(text.replace(",", ""))
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount: give major units, e.g. 12.50") from None
    if not value.is_finite() or value <= 0 or (value * MINOR_UNITS) % 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive amount with at most two decimals, e.g. 12.50")
    return value


def decide(args: argparse.Namespace) -> int:
    kind = KINDS[args.kind]
    if (kind == pb.DECISION_KIND_GOODWILL_CREDIT) != (args.amount is not None):
        return fail("decide: --amount goes with a credit, and a credit needs it (e.g. --amount 12.50 --currency "
                    "EUR)", 2)
    if (kind == pb.DECISION_KIND_OFFER) != bool(args.offer):
        return fail("decide: --offer goes with an offer, and an offer needs it (one of the tier's offers: see "
                    "`cvh priority ID`)", 2)
    request = pb.RecordServiceDecisionRequest(customer=args.customer, kind=kind, person=args.by, reason=args.reason,
                                              offer=args.offer or "", currency=args.currency.upper())
    if args.amount is not None:
        request.amount_minor = int(args.amount * MINOR_UNITS)
    with connect(args) as cvh:
        decision = cvh.record_service_decision(request)
    if args.json:
        print_json(message_dict(decision))
        return 0
    print(f"{decision.name}: {args.kind} for {decision.customer} (tier {decision.tier_id or 'none'}) by "
          f"{decision.person}")
    if decision.outcome == pb.DECISION_OUTCOME_WITHIN_AUTHORITY:
        print("  within the front line's authority")
    else:
        step = decision.escalation_contact
        contact = f"{step.contact} ({step.level})" if step.contact else "the tier's escalation path"
        print(f"  needs escalation: {decision.escalation_note}; hand it to {contact}")
    if decision.kind == pb.DECISION_KIND_GOODWILL_CREDIT:
        print(f"  goodwill left this period: {money(decision.goodwill_remaining_minor, decision.currency)}")
    return 0


def authority(args: argparse.Namespace) -> int:
    if bool(args.start) != bool(args.end):
        return fail("authority: give --from and --to together (or --period TIME)", 2)
    if args.start and args.period is not None:
        return fail("authority: give --period, or --from and --to, not both", 2)
    with connect(args) as cvh:
        usage = cvh.get_authority_usage(args.tier, args.person, args.period,
                                        (args.start, args.end) if args.start else None)
    if args.json:
        print_json(message_dict(usage))
        return 0
    start, end = (usage.period_start.ToDatetime(), usage.period_end.ToDatetime())
    print(f"front-line decisions from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
          + (f", tier {args.tier}" if args.tier else "") + (f", by {args.person}" if args.person else ""))
    print_usage(usage)
    return 0


def print_usage(usage: pb.AuthorityUsage, indent: str = "") -> None:
    """Per tier, then per person, then the total: decisions, within authority, escalations and their rate,
    goodwill granted and waivers or offers made."""
    rows = [[f"tier {f.key or '(none)'}", *_figures(f)] for f in usage.tiers]
    rows += [[f.key, *_figures(f)] for f in usage.persons]
    rows.append(["total", *_figures(usage.total)])
    print_table(["who", "decisions", "within authority", "escalations", "escalation rate", "goodwill granted",
                 "waivers and offers"], rows, right=[1, 2, 3, 4, 5, 6], indent=indent)


def _figures(f: pb.AuthorityUsageFigures) -> list[str]:
    return [f"{f.decisions:,}", f"{f.within_authority:,}", f"{f.escalations:,}", f"{f.escalation_rate:.0%}",
            money(f.goodwill_granted_minor), f"{f.waivers_and_offers:,}"]


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "decide", parents=[client], help="record a front-line decision for a customer",
        description="Record what the front line decided for a customer: a goodwill credit, a fee waiver, one of "
                    "the tier's offers, or an escalation. A decision beyond the tier's authority (or the goodwill "
                    "left this period) is recorded all the same and answered as needing escalation, with whom to "
                    "hand it to. Needs a token of role frontline (or admin) where tokens are required.",
        epilog="example: cvh decide acme-001 credit --amount 25.00 --currency EUR --by ana@example.com "
               "--reason 'late delivery'")
    command.add_argument("customer", metavar="CUSTOMER", help="the customer's id")
    command.add_argument("kind", choices=list(KINDS), help="what was decided")
    command.add_argument("--by", required=True, metavar="PERSON", help="who decided, e.g. ana@example.com")
    command.add_argument("--reason", required=True, metavar="TEXT", help="why, in words")
    command.add_argument("--amount", type=amount, default=None, metavar="AMOUNT",
                         help="a credit's amount in major units, e.g. 25.00")
    command.add_argument("--currency", default="", metavar="CODE",
                         help="a credit's ISO 4217 currency, the tier's (see `cvh priority ID`), e.g. EUR")
    command.add_argument("--offer", default="", metavar="TEXT", help="the offer made: one of the tier's offers")
    command.set_defaults(run=decide)

    command = commands.add_parser(
        "authority", parents=[client], help="how the front line used its authority",
        description="Front-line decisions per tier and per person: how many, how many within authority, "
                    "escalations and the escalation rate (escalations / decisions: escalation should be the "
                    "exception), goodwill credit granted and waivers or offers made. The current goodwill "
                    "period by default (the tier policy's goodwill_period, UTC calendar).")
    command.add_argument("--tier", default="", metavar="TIER_ID", help="only decisions of customers in this tier")
    command.add_argument("--person", default="", metavar="PERSON", help="only decisions by this person")
    command.add_argument("--period", type=point_in_time, default=None, metavar="TIME",
                         help="the goodwill period holding this date or time (default: the current one)")
    command.add_argument("--from", dest="start", type=point_in_time, default=None, metavar="TIME",
                         help="instead of a period: decisions from this date or time ...")
    command.add_argument("--to", dest="end", type=point_in_time, default=None, metavar="TIME",
                         help="... until this one (exclusive)")
    command.set_defaults(run=authority)
