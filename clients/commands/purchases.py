"""From orders to purchase signals: cvh purchases summarize (and its holdout check of the lifetime-value models)."""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clients import tabular
from clients.commands.common import connect, png_file, point_in_time
from clients.commands.registry import record_observations
from clients.output import counted, fail, number, print_json, print_table, progress
from cvh.registry.v1 import registry_service_pb2 as registry_pb

if TYPE_CHECKING:
    from clients import purchases

BATCH = 5_000  # customers per RecordSignals call (the registry takes up to 10,000)
PREFIX = re.compile(r"[a-z][a-z0-9_]{0,40}")
MAX_FUTURE_US = 5 * 60 * 1_000_000  # the registry's allowance for clock skew
UNITS = ("days", "weeks", "months")
SIGNALS = ("frequency", "recency", "age", "spend")


def summarize(args: argparse.Namespace) -> int:
    from clients import purchases  # NumPy, Arrow and the engine load only for this command

    if args.out and args.holdout_from is None:
        return fail("--out draws the holdout check: give --holdout-from too", 2)
    if not PREFIX.fullmatch(args.prefix):
        return fail(f"--prefix {args.prefix!r}: a signal name's start, [a-z][a-z0-9_]* (default purchase_)", 2)
    orders = purchases.read_orders(args.orders, args.format, args.customer_column, args.time_column,
                                   args.amount_column)
    if not len(orders):
        return fail(f"{args.orders}: no valid order" + _rejections(orders.rejected), 1)
    as_of = args.as_of if args.as_of is not None else int(orders.time_us.max())
    summary = purchases.summarize(orders, as_of, args.unit)
    check = None
    if args.holdout_from is not None:
        if args.holdout_from >= as_of:
            return fail("--holdout-from must be before --as-of (the latest order by default)", 2)
        check = purchases.holdout(orders, args.holdout_from, as_of, args.unit)
        if args.out and check.deciles:
            purchases.draw_holdout(check, Path(args.out))
    recorded = None
    if not args.dry_run:
        if as_of > time.time_ns() // 1000 + MAX_FUTURE_US:
            return fail("--as-of is in the future: the registry refuses observations from the future; "
                        "use --dry-run to look ahead", 2)
        recorded = _record_summary(args, summary)
    result = summary.describe() | {"rejected_orders": orders.rejected,
                                   "signals": [args.prefix + s for s in SIGNALS]}
    if recorded is not None:
        result |= recorded
    if check is not None:
        result["holdout"] = check.to_dict() | {"out": args.out if args.out and check.deciles else ""}
    if args.json:
        print_json(_no_nan(result))
    else:
        _print(args, result, check)
    return 1 if recorded and recorded["rejected_customers"] else 0


def _record_summary(args: argparse.Namespace, summary: purchases.Summary) -> dict:
    """The four numbers as signals, observed at the as-of time, through RecordSignals in batches."""
    names = [args.prefix + s for s in SIGNALS]
    observed = tabular._timestamp(summary.as_of_us)
    columns = [a.tolist() for a in (summary.frequency, summary.recency, summary.age, summary.spend)]
    ids = summary.customer_ids.tolist()
    current = historical = 0
    rejected = []
    with connect(args) as cvh, progress(len(summary), "recording purchase signals", unit=" customers",
                                        enabled=not args.json) as bar:
        for start in range(0, len(ids), BATCH):
            batch = []
            for i in range(start, min(start + BATCH, len(ids))):
                signals = {name: registry_pb.SignalValue(value=column[i], observe_time=observed)
                           for name, column in zip(names, columns) if not math.isnan(column[i])}
                batch.append((i + 1, ids[i], registry_pb.SignalObservations(customer=f"customers/{ids[i]}",
                                                                           signals=signals)))
            response, refused = record_observations(cvh, batch)
            current, historical = current + response.current, historical + response.historical
            rejected += refused
            bar.update(len(batch))
    return {"current": current, "historical": historical, "rejected_customers": len(rejected),
            "rejected_examples": [f"{r.customer_id}: {r.reason}" for r in rejected[:5]]}


def _no_nan(data):
    """JSON has no NaN: a standard error the Hessian could not give becomes null."""
    if isinstance(data, dict):
        return {k: _no_nan(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_no_nan(v) for v in data]
    return None if isinstance(data, float) and not math.isfinite(data) else data


def _rejections(rejected: dict[str, int]) -> str:
    return "".join(f"; {count:,} rows: {reason}" for reason, count in rejected.items())


def _print(args: argparse.Namespace, result: dict, check: purchases.HoldoutCheck | None) -> None:
    unit = result["unit"]
    print(f"{counted(result['customers'], 'customer')} from {counted(result['orders'], 'order')} as of "
          f"{result['as_of']} (in {unit}); {result['with_repeat_purchases']:,} with repeat purchases")
    print_table(["signal", "mean"], [[result["signals"][0], number(result["mean_frequency"], 2)],
                                     [result["signals"][1], number(result["mean_recency"], 1)],
                                     [result["signals"][2], number(result["mean_age"], 1)],
                                     [result["signals"][3] + " (repeat buyers)", number(result["mean_spend"], 2)]],
                right=[1], indent="  ")
    if result["rejected_orders"]:
        print("rejected orders" + _rejections(result["rejected_orders"]).replace(";", "\n ", 1).replace(";", "\n "))
    if result["age_zero"]:
        print(f"  {counted(result['age_zero'], 'customer')} first bought in the as-of {unit[:-1]}: age 0, which the "
              "models cannot use (their derived signals stay missing)")
    if "current" in result:
        print(f"recorded: {result['current']:,} became current, {result['historical']:,} went to history, "
              f"{counted(result['rejected_customers'], 'customer')} rejected")
        for example in result["rejected_examples"]:
            print(f"  {example}")
        if result["rejected_customers"]:
            print("  customers must exist in the registry first (`cvh import`)")
    else:
        print("dry run: nothing recorded")
    if check is not None:
        _print_holdout(check, unit, args.out)


def _print_holdout(check: purchases.HoldoutCheck, unit: str, out: str) -> None:
    from clients import purchases

    print(f"holdout check: fitted on the orders before {purchases.iso(check.holdout_from_us)[:10]}, "
          f"predicting the {check.duration:g} {unit} to {purchases.iso(check.as_of_us)[:10]}")
    if not check.deciles:
        print(f"  no check: {check.population.missing_reason}")
        return
    params = check.population.fit
    print("  BG/NBD " + ", ".join(f"{k} {v:.4g}" for k, v in params.bgnbd.params.items())
          + "; Gamma-Gamma " + ", ".join(f"{k} {v:.4g}" for k, v in params.gamma_gamma.params.items()))
    rows = [[d["decile"], f"{d['customers']:,}", f"{d['predicted_mean']:.3f}", f"{d['actual_mean']:.3f}",
             _ratio(d["actual_total"], d["predicted_total"])] for d in check.deciles]
    predicted = sum(d["predicted_total"] for d in check.deciles)
    actual = sum(d["actual_total"] for d in check.deciles)
    rows.append(["all", f"{check.customers:,}", f"{predicted / check.customers:.3f}",
                 f"{actual / check.customers:.3f}", _ratio(actual, predicted)])
    print_table(["decile", "customers", "predicted", "actual", "actual/predicted"], rows, right=[0, 1, 2, 3, 4],
                indent="  ")
    print("  purchases per customer in the holdout, by decile of predicted purchases (1 = fewest)")
    if out:
        print(f"  picture: {out}")


def _ratio(actual: float, predicted: float) -> str:
    return f"{actual / predicted:.2f}" if predicted > 0 else "–"


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    group = commands.add_parser("purchases", help="orders to purchase signals for predicted lifetime value",
                                description="Turn an order file into the four purchase signals the lifetime-value "
                                            "block of a value model reads (see README, Predicted lifetime value).")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser(
        "summarize", parents=[client], help="per customer: repeat purchases, recency, age and mean spend",
        description="Read ORDERS (CSV, JSON Lines or Parquet; one order per row with a customer id, a time and an "
                    "amount) and compute per customer, as of --as-of and in --unit, as the lifetimes package does: "
                    "frequency (purchase periods - 1; orders in one day, week or month are one purchase), recency "
                    "(first to last purchase), age (first purchase to --as-of) and spend (mean amount of the repeat "
                    "purchases). They are recorded as the signals PREFIXfrequency, PREFIXrecency, PREFIXage and "
                    "PREFIXspend (default purchase_*, as the default model reads them), observed at --as-of; "
                    "customers must exist in the registry. With --holdout-from, the models are also fitted on the "
                    "orders before that date and their predicted purchases compared with the actual ones after "
                    "it, per decile (a table, and a PNG with --out).")
    command.add_argument("orders", metavar="ORDERS", help="order file, or a folder of Parquet part files")
    command.add_argument("--format", choices=["csv", "jsonl", "parquet"], help="file format (default: from the suffix)")
    command.add_argument("--customer-column", default="customer_id", metavar="NAME",
                         help="column of the customer id (default customer_id)")
    command.add_argument("--time-column", default="time", metavar="NAME",
                         help="column of the order time: a date or an RFC 3339 time, no offset meaning UTC "
                              "(default time)")
    command.add_argument("--amount-column", default="amount", metavar="NAME",
                         help="column of the order's amount, a number >= 0 (default amount)")
    command.add_argument("--as-of", type=point_in_time, metavar="TIME",
                         help="the day the numbers hold on (default: the latest order's time); later orders are "
                              "left out")
    command.add_argument("--unit", choices=UNITS, default="days",
                         help="unit of recency and age, and the purchase period (default days; the model's "
                              "lifetime_value.time_unit must match)")
    command.add_argument("--prefix", default="purchase_", help="start of the signal names (default purchase_)")
    command.add_argument("--holdout-from", type=point_in_time, metavar="DATE",
                         help="also check the models: fit on the orders before DATE, compare predicted and actual "
                              "purchases from DATE to --as-of per decile")
    command.add_argument("--out", type=png_file, metavar="FILE.png", help="draw the holdout check as a PNG")
    command.add_argument("--dry-run", action="store_true", help="print the summary without recording anything")
    command.set_defaults(run=summarize)
