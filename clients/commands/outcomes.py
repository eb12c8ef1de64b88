"""Outcomes: cvh outcomes."""

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
    if args.out:
        from clients import outcomes as drawing  # matplotlib loads only for pictures

        drawing.draw(report, args.out)
    if args.json:
        print_json(message_dict(report))
        return 0
    from clients import outcomes as table

    for period in report.periods:
        print(table.title(period))
        print_table(table.HEADERS, table.rows(period), right=list(range(1, len(table.HEADERS))))
        for note in period.notes:
            print(f"  note: {note}")
        print()
    if args.out:
        print(f"picture written to {args.out}")
    return 0


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

