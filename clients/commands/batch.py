"""cvh batch score: a Parquet base scored on a Dask cluster (see clients/batch.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import scoring_engine
from clients import batch
from clients.commands.common import connect, existing_file, positive_int
from clients.output import counted, print_json, print_table


def local(path: str) -> str:
    """An object-store URL as it is; a local path made absolute, so worker processes find it wherever they run."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def batch_model(args: argparse.Namespace) -> tuple[scoring_engine.ValueModel, str]:
    """(the engine's model, its version's name): from --model-file, or fetched from the scoring service."""
    from clients.commands.scoring import engine_model, read_model_file

    if args.model_file:
        return engine_model(read_model_file(args.model_file)), ""
    with connect(args) as cvh:
        model = cvh.get_model(args.model)
    return engine_model(model), model.name


def show_progress(enabled: bool):
    """Each phase's Dask progress bar (distributed.progress) on stderr, or nothing when not on a terminal."""
    def show(futures: list, label: str) -> None:
        if not enabled:
            return
        from distributed import progress

        print(f"{label}:", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # the bar writes to stdout; --json keeps stdout for itself
            progress(futures)
        print(file=sys.stderr)
    return show


def batch_score(args: argparse.Namespace) -> int:
    _, _, engine_on_dask = batch.dask_modules()
    model, model_name = batch_model(args)
    where = args.scheduler or f"a LocalCluster of {counted(args.workers, 'worker')}"
    terminal = sys.stderr.isatty() and not args.json
    if terminal:
        print(f"scoring {local(args.input)} with {model_name or args.model_file} on {where}", file=sys.stderr)
    client = engine_on_dask.scoring_client(args.scheduler, n_workers=args.workers,
                                           threads_per_worker=args.threads_per_worker)
    try:
        summary = batch.score_base(client, model, local(args.input), local(args.output),
                                   previous=local(args.previous) if args.previous else None,
                                   show=show_progress(terminal), model_name=model_name)
    except scoring_engine.NonFiniteValueError as error:  # the base's fault, not a bug: say where
        print(f"{args.prog}: {args.input} cannot be scored: {error}", file=sys.stderr)
        return 2
    finally:
        cluster = getattr(client, "cluster", None) if not args.scheduler else None
        client.close()
        if cluster is not None:
            cluster.close()
    if args.json:
        print_json({"output": local(args.output), "model": model_name, **summary.as_dict()})
        return 0
    print(f"{counted(summary.customers, 'customer')} scored into {local(args.output)} "
          f"({counted(summary.files, 'part file')}; fit {summary.seconds['fit']:.1f} s, score "
          f"{summary.seconds['score']:.1f} s, write {summary.seconds['write']:.1f} s)")
    if summary.missing_signals:
        print(f"  the base has no column for {', '.join(summary.missing_signals)}: scored as missing")
    total = max(summary.customers, 1)
    print_table(["tier", "customers", "share"], [[tier, f"{n:,}", f"{100 * n / total:.1f} %"]
                                                for tier, n in summary.tier_counts.items()], right=[1, 2])
    print(f"make it a run of the suite with `cvh run import {args.output}"
          + ("`" if model_name else " --model MODEL/versions/N` (the version the file's model is)"))
    return 0


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    group = commands.add_parser("batch", help="score a Parquet base on a Dask cluster",
                                description="Batch scoring beyond one machine: the engine's kernels run per "
                                            "partition on a Dask cluster (needs pip install 'cvh[dask]').")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser(
        "score", parents=[client], help="fit and score a Parquet base on Dask, results as run-result Parquet",
        description="Fit and score INPUT (the Parquet layout `cvh export --format parquet` writes: customer_id "
                    "and a column per signal, null where not observed) as a scoring run would, on the Dask "
                    "scheduler at --scheduler or on a LocalCluster of --workers processes, and write the results "
                    "into OUTPUT in the layout of `cvh run export` (part-NNNNN.parquet: customer_id, a score per "
                    "dimension, composite, tier_id, tier_level, rank, percentile, previous_tier_level), one part "
                    "per partition of INPUT in its row order, with the fitted statistics (_fitted_model.npz). "
                    "`cvh run import OUTPUT` makes them a run of the suite. INPUT, OUTPUT and --previous may be "
                    "object-store URLs (s3://bucket/base) when the fsspec package for them is installed (s3fs); "
                    "on a remote cluster they must be paths every worker can reach.",
        epilog="Example: cvh batch score --model default/versions/3 --scheduler tcp://dask:8786 "
               "s3://lake/cvh/base s3://lake/cvh/results-2026-12")
    command.add_argument("input", metavar="INPUT", help="the base: a folder (or URL) of Parquet files")
    command.add_argument("output", metavar="OUTPUT", help="folder (or URL) for the results; its part files "
                                                          "are replaced")
    source = command.add_mutually_exclusive_group()
    source.add_argument("--model", default="default",
                        help="model of the scoring service at --server: default, models/default or "
                             "default/versions/3 (default: default's active version)")
    source.add_argument("--model-file", type=existing_file, metavar="FILE",
                        help="score with the model in this JSON file (as `cvh models show` prints it) and "
                             "reach no server")
    command.add_argument("--scheduler", metavar="tcp://HOST:8786",
                         help="the Dask scheduler to run on (default: a LocalCluster on this machine)")
    command.add_argument("--workers", type=positive_int, default=2, metavar="N",
                         help="worker processes of the LocalCluster (default 2; ignored with --scheduler)")
    command.add_argument("--threads-per-worker", type=positive_int, default=1, metavar="N",
                         help="Dask threads per LocalCluster worker (default 1: Numba's threads use the cores)")
    command.add_argument("--previous", metavar="DIR",
                         help="a previous run's results (`cvh run export` or `cvh batch score`): tiers keep "
                              "their hysteresis against its tier_level per customer_id")
    command.set_defaults(run=batch_score)
