"""cvh demo: the whole flow on a synthetic customer base, in one command."""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from clients.client import CvhClient, customer_id
from clients.commands.common import connect, server
from clients.commands.hierarchy import print_priority, pyramid_file, tiers_table
from clients.commands.scoring import follow_run
from clients.errors import CvhError
from clients.output import print_json, progress


def demo(args: argparse.Namespace) -> int:
    if not args.json:
        return _demo(args)
    with contextlib.redirect_stdout(io.StringIO()):  # --json: only the summary object is printed
        code = _demo(args)
    print_json(args.summary)
    return code


def _demo(args: argparse.Namespace) -> int:
    from clients import synthetic

    with _suite(args) as cvh:
        base = synthetic.generate_base(args.customers, seed=args.seed)
        print(f"1. generated {args.customers:,} synthetic customers: skewed revenue, correlated signals, "
              "account trees, every stakeholder role")
        with progress(args.customers, "   importing", unit=" customers", enabled=not args.json) as bar:
            imported = synthetic.import_base(cvh, base, on_progress=lambda done: bar.update(done - bar.n))
        print(f"2. imported them through ImportCustomers: {imported.created:,} created, "
              f"{imported.updated:,} updated, {imported.rejected:,} rejected")
        run = follow_run(cvh, cvh.start_run(), enabled=not args.json)
        if run.failure_reason:
            print(f"   the run failed: {run.failure_reason}")
            return 1
        print(f"3. scored them with the default model: {run.name}, {run.customers_total:,} customers in "
              f"{run.export_seconds + run.scoring_seconds + run.store_seconds:.1f} s")
        cvh.wait_for_snapshot(run.name)
        summary = cvh.get_hierarchy_summary()
        print("4. the hierarchy now serves it from memory:\n")
        tiers_table(summary)
        examples = _examples(cvh, run.name)
        print(f"\n5. what support sees for {len(examples)} customers (`cvh priority ID`):\n")
        for n, priority in enumerate(cvh.batch_get_priority(examples)):
            if n:
                print()
            print_priority(priority)
        if args.pyramid:
            pyramid_file(summary, Path(args.pyramid))
            print(f"\n6. drew the pyramid into {args.pyramid}")
        args.summary = {"customers": args.customers, "imported": imported.created + imported.updated,
                        "run": run.name, "examples": examples,
                        "tiers": {t.tier.tier_id: t.customers for t in summary.tiers}}
        print("\nNext: `cvh tiers`, `cvh rank ID ID`, `cvh tree ID`, `cvh pyramid --out pyramid.png`, "
              "`cvh run start --wait` after changing signals, `cvh run moves`.")
    return 0


def _examples(cvh: CvhClient, run: str) -> list[str]:
    """The top customer, the first child account that inherits a better tier, and a median customer."""
    results = cvh.run_results(run)
    ids = results.customer_ids
    chosen = [ids[0], ids[len(ids) // 2]]
    for member in cvh.list_tier_members(results.tiers[-1].tier_id, page_size=200):
        priority = cvh.get_priority(member.customer)
        if priority.effective_tier.level and priority.effective_tier.level < priority.own_tier.level:
            chosen.insert(1, customer_id(member.customer))
            break
    return chosen


@contextlib.contextmanager
def _suite(args: argparse.Namespace):
    """A client to the suite at --server; with --embedded (or nothing listening at the default address and no
    --server given), a suite started in this process on a temporary SQLite database."""
    if not args.embedded:
        cvh = connect(args)
        try:
            cvh.health(timeout=3)
            print(f"using the suite at {server(args)}")
            with cvh:
                yield cvh
            return
        except CvhError:
            cvh.close()
            if args.server:  # asked for this suite: say it is not there rather than start another
                raise
    from services.common.config import ServerConfig
    from services.common.embedded import EmbeddedSuite

    with tempfile.TemporaryDirectory(prefix="cvh-demo-") as folder:
        print(f"no suite at {server(args)}: starting one in this process on a temporary database "
              "(run `cvh serve` in another terminal to keep one)")
        config = ServerConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{Path(folder) / 'demo.db'}",
                              log_level="WARNING")
        with EmbeddedSuite(config) as suite, CvhClient(suite.target, timeout=args.timeout) as cvh:
            yield cvh


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "demo", parents=[client], help="see the whole flow on a synthetic customer base",
        description="Generates a realistic synthetic customer base, imports it, runs scoring and shows the "
                    "tiers and what support sees for a few customers. Uses the suite at --server, or starts "
                    "one in this process when nothing listens there.")
    command.add_argument("--customers", "-n", type=int, default=10_000, metavar="N",
                         help="customers to generate (default 10,000)")
    command.add_argument("--seed", type=int, default=7, help="random seed: the same seed gives the same base")
    command.add_argument("--embedded", action="store_true",
                         help="always start a suite in this process (temporary database)")
    command.add_argument("--pyramid", metavar="FILE", help="also draw the pyramid into FILE (.png or .svg)")
    command.set_defaults(run=demo)
