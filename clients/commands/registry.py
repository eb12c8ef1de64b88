"""Customers in: cvh import, cvh signals record."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from clients import tabular
from clients.commands.common import connect
from clients.errors import CvhError
from clients.output import print_json, progress
from cvh.registry.v1 import registry_service_pb2 as registry_pb


def import_customers(args: argparse.Namespace) -> int:
    source = tabular.CustomerFile(args.file, args.format, args.chunk_rows)
    with connect(args) as cvh, progress(source.total_bytes, f"importing {Path(args.file).name}", unit="B",
                                        enabled=not args.json) as bar:
        def requests():
            for request in source.requests(args.all_or_nothing):
                bar.update(source.bytes_read - bar.n)
                bar.set_postfix_str(f"{source.rows_sent:,} rows")
                yield request
        summary = cvh.import_customers(requests())
        bar.update(source.total_bytes - bar.n)
    rejects = source.rejected + source.server_rejections(summary.errors)
    rejected = len(source.rejected) + summary.rejected
    rejects_file = Path(args.rejects or f"{args.file}.rejects.csv")
    if rejects:
        tabular.write_rejects(rejects_file, rejects)
    result = {"created": summary.created, "updated": summary.updated, "rejected": rejected,
              "rejected_here": len(source.rejected), "rejected_by_server": summary.rejected,
              "batches_committed": summary.batches_committed, "rejects_file": str(rejects_file) if rejects else ""}
    result.update(signals_current=summary.signals_current, signals_historical=summary.signals_historical,
                  signals_unchanged=summary.signals_unchanged)
    if args.json:
        print_json(result)
    else:
        print(f"{summary.created:,} created, {summary.updated:,} updated, {rejected:,} rejected "
              f"({summary.batches_committed:,} batches committed)")
        for row in sorted(rejects, key=lambda r: r.line)[:5]:
            print(f"  line {row.line}: {row.customer_id or '(no id)'}: {row.field}: {row.reason}")
        if rejects:
            more = f" (the registry lists its first {len(summary.errors):,})" if summary.rejected > len(summary.errors) else ""
            print(f"rejected rows and reasons: {rejects_file}{more}")
        print(f"observations: {summary.signals_current:,} became current, {summary.signals_historical:,} went to "
              f"history only (older than the current value), {summary.signals_unchanged:,} unchanged")
    return 1 if rejected else 0


def record_signals(args: argparse.Namespace) -> int:
    source = tabular.SignalFile(args.file, args.format)
    current = historical = 0
    refused: list[tabular.RejectedRow] = []
    with connect(args) as cvh, progress(source.total_bytes, f"recording {Path(args.file).name}", unit="B",
                                        enabled=not args.json) as bar:
        for batch in source.batches():
            recorded, rejected = _record(cvh, batch)
            current, historical = current + recorded.current, historical + recorded.historical
            refused += rejected
            bar.update(source.bytes_read - bar.n)
    rejects = source.rejected + refused
    rejects_file = Path(args.rejects or f"{args.file}.rejects.csv")
    if rejects:
        tabular.write_rejects(rejects_file, rejects)
    if args.json:
        print_json({"current": current, "historical": historical, "rejected": len(rejects),
                    "rejects_file": str(rejects_file) if rejects else ""})
    else:
        print(f"{current:,} observations became current, {historical:,} went to history, {len(rejects):,} rejected")
        if rejects:
            print(f"rejected rows and reasons: {rejects_file}")
    return 1 if rejects else 0


def _record(cvh, batch) -> tuple[registry_pb.RecordSignalsResponse, list[tabular.RejectedRow]]:
    """Records a batch; a request refused for some rows (bad value, unknown customer) is sent again
    without them, so one bad row does not cost its whole batch."""
    rejected = []
    while batch:
        try:
            return cvh.record_signals([observation for _, _, observation in batch]), rejected
        except CvhError as error:
            bad = _refused_rows(error, batch)
            if not bad:
                raise
            for index, (field, reason) in bad.items():
                line, raw, observation = batch[index]
                rejected.append(tabular.RejectedRow(line, observation.customer.removeprefix("customers/"), field,
                                                    reason, raw))
            batch = [row for index, row in enumerate(batch) if index not in bad]
    return registry_pb.RecordSignalsResponse(), rejected


def _refused_rows(error: CvhError, batch) -> dict[int, tuple[str, str]]:
    """Positions in ``batch`` of the rows an error names, with (field, reason)."""
    if error.code == grpc.StatusCode.NOT_FOUND:
        missing = error.metadata.get("resource", "")
        return {i: ("customer_id", "no such customer") for i, row in enumerate(batch) if row[2].customer == missing}
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        bad = {}
        for violation in error.violations:
            head = violation.field.split(".", 1)[0]
            if head.startswith("observations[") and head.endswith("]"):
                index = int(head[len("observations["):-1])
                if index < len(batch):
                    bad[index] = (violation.field.split(".", 1)[-1], violation.description)
        return bad
    return {}


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "import", parents=[client], help="import customers from CSV or JSON Lines",
        description="Upsert customers from a CSV or JSON Lines file (columns: customer_id, display_name, "
                    "parent_id, role, owner, observe_time, and one column per signal; see clients/tabular.py). "
                    "Re-importing is safe. Rejected rows are written with their line and reason to --rejects; "
                    "the command exits 1 when any row was rejected.")
    command.add_argument("file", metavar="FILE", help="a .csv, .jsonl or .ndjson file")
    command.add_argument("--format", choices=["csv", "jsonl"], help="file format (default: from the suffix)")
    command.add_argument("--rejects", metavar="FILE", help="where rejected rows go (default FILE.rejects.csv)")
    command.add_argument("--chunk-rows", type=int, default=tabular.MAX_ROWS_PER_MESSAGE, metavar="N",
                         help="customers per message, each committed on its own (default 10,000)")
    command.add_argument("--all-or-nothing", action="store_true",
                         help="write every row in one transaction at the end, or nothing if any row is bad")
    command.set_defaults(run=import_customers)

    signals = commands.add_parser("signals", help="record signal observations",
                                  description="Signal observations: the latest by observe_time is current.")
    actions = signals.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser(
        "record", parents=[client], help="record observations from CSV or JSON Lines",
        description="Record observations from a file with columns customer_id, signal, value and an optional "
                    "observe_time (RFC 3339; default now). Rows naming unknown customers or bad values are "
                    "written to --rejects; the command exits 1 when any row was rejected.")
    command.add_argument("file", metavar="FILE")
    command.add_argument("--format", choices=["csv", "jsonl"], help="file format (default: from the suffix)")
    command.add_argument("--rejects", metavar="FILE", help="where rejected rows go (default FILE.rejects.csv)")
    command.set_defaults(run=record_signals)
