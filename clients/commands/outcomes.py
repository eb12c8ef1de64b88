"""Outcomes and histories: cvh outcomes, cvh history."""

from __future__ import annotations

import argparse

from clients.commands.common import connect, png_file, whole_number
from clients.output import fail, message_dict, print_json, print_table


def outcomes_report(args: argparse.Namespace) -> int:
    if bool(args.from_run) != bool(args.to_run):
        return fail("outcomes: give --from and --to together (or --last N)", 2)
    if args.from_run and args.last:
        return fail("outcomes: give --from and --to, or --last N, not both", 2)
    last = 0 if args.from_run else (args.last or 2)
    with connect(args) as cvh:
        report = cvh.get_outcome_report(args.from_run, args.to_run, "" if args.from_run else args.model, last)
        usages = decision_usages(cvh, report)
    if args.out:
        from clients import outcomes as drawing  # matplotlib loads only for pictures

        drawing.draw(report, args.out)
    if args.json:
        print_json({**message_dict(report), "decisions": [message_dict(u) if u else None for u in usages]})
        return 0
    print_report(report, usages=usages)
    if args.out:
        print(f"picture written to {args.out}")
    return 0


def print_report(report, indent: str = "", usages: list | None = None) -> None:
    """An outcome report's table per period, with its notes and, given ``usages`` (decision_usages), the
    front line's decisions of the period (what `cvh outcomes` prints)."""
    from clients import outcomes as table
    from clients.commands.decisions import print_usage

    for n, period in enumerate(report.periods):
        print(indent + table.title(period))
        print_table(table.HEADERS, table.rows(period), right=list(range(1, len(table.HEADERS))), indent=indent)
        for note in period.notes:
            print(f"{indent}  note: {note}")
        usage = usages[n] if usages else None
        if usage is not None and usage.total.decisions:
            print(f"\n{indent}  the front line's decisions between the two runs, by the tier at decision "
                  "(`cvh authority`):")
            print_usage(usage, indent + "  ")
        print()


def decision_usages(cvh, report) -> list:
    """GetAuthorityUsage over each period of ``report`` (from its first run's end to its second's); None where
    the hierarchy cannot answer (a deployment without it, or a token without the right)."""
    from clients.errors import CvhError

    usages = []
    for period in report.periods:
        between = (period.from_time.ToMicroseconds(), period.to_time.ToMicroseconds())
        try:
            usages.append(cvh.get_authority_usage(between_us=between) if between[0] < between[1] else None)
        except CvhError:
            usages.append(None)
    return usages


def customer_history(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        history = cvh.get_customer_history(args.customer, args.model, args.last)
    if args.json:
        print_json(message_dict(history))
        return 0
    print(f"{history.customer} in the last {len(history.runs)} completed runs of {history.model}, newest first")
    headers = ["run", "model", "ended", "composite", "tier", "previous", "rank", "percentile", "stage", "bad profit",
               "outcome values"]
    rows = []
    for entry in history.runs:
        ended = entry.end_time.ToDatetime().strftime("%Y-%m-%d %H:%M")
        if not entry.HasField("result"):
            rows.append([entry.run, entry.model.split("/versions/")[-1], ended, "not scored", "", "", "", "", "", "",
                         ""])
            continue
        r = entry.result
        stage = _stage_word(r.lifecycle_stage)
        values = ", ".join(f"{k} {v:g}" for k, v in sorted(r.outcome_values.items()))
        rows.append([entry.run, entry.model.split("/versions/")[-1], ended,
                     f"{r.composite:.1f}" if r.HasField("composite") else "–", r.tier.tier_id,
                     r.previous_tier.tier_id or "–", f"{r.rank:,}", f"{r.percentile:.1f}", stage,
                     "yes" if r.bad_profit else "", values])
    print_table(headers, rows, right=[3, 6, 7])
    return 0


def _stage_word(stage: int) -> str:
    from wire.enums import STAGE_NAMES

    return STAGE_NAMES.get(stage, str(stage)).replace("_", " ") if stage else "–"


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "outcomes", parents=[client], help="retention, revenue retention, satisfaction, advocacy, adoption and bad "
                                           "profits per tier between runs",
        description="Compare two completed runs of a model per tier of the first: logo retention (customers the "
                    "second run still scored), gross and net revenue retention from the model's money signal, "
                    "customers and money lost and gained, mean NPS with promoter and detractor shares, "
                    "referenceability, referrals, adoption, tier moves and the customers the second run flagged "
                    "as bad profit with their share of money. Each run compares with the values it stored. "
                    "Without --from/--to: the last N runs (default 2) of --model, one period per consecutive pair.")
    command.add_argument("--model", default="", help="model id (default: default); with --last")
    command.add_argument("--from", dest="from_run", default="", metavar="RUN", help="start run: runs/N or N")
    command.add_argument("--to", dest="to_run", default="", metavar="RUN", help="end run: runs/N or N")
    command.add_argument("--last", type=whole_number(2, 20), default=0, metavar="N",
                         help="the model's last N completed runs, 2 to 20 (default 2)")
    command.add_argument("--out", type=png_file, metavar="FILE.png",
                         help="also draw the report: a panel per outcome, a line per tier across the runs")
    command.set_defaults(run=outcomes_report)

    command = commands.add_parser(
        "history", parents=[client], help="one customer's results across a model's runs",
        description="A customer's composite, tier, previous tier, rank, percentile, lifecycle stage, outcome "
                    "values and bad-profit flag in each of a model's last N completed runs, newest first, as each "
                    "run stored them. The effective tier (inherited along the account tree) is "
                    "`cvh priority`'s.")
    command.add_argument("customer", metavar="ID", help="customer id or customers/ID")
    command.add_argument("--model", default="", help="model id (default: default)")
    command.add_argument("--last", type=whole_number(1, 100), default=0, metavar="N",
                         help="the last N completed runs, 1 to 100 (default 20)")
    command.set_defaults(run=customer_history)
