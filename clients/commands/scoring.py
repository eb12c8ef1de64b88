"""Models and runs: cvh models create|list|show|activate, cvh run start|show|list|moves."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from google.protobuf import json_format

import scoring_engine
from clients import parquet
from clients.client import CvhClient, model_name
from clients.commands.common import connect, enum_word, existing_file, export_target, positive_int
from clients.output import (counted, counted_stream, fail, message_dict, percent, print_json, print_table,
                            progress)
from cvh.scoring.v1 import scoring_service_pb2 as pb

# What a model file holds: the model's own fields, not the service's bookkeeping.
MODEL_FILE_FIELDS = ("model_id", "description", "signals", "dimensions", "tiers", "hysteresis_points", "lifetime_value",
                     "outcomes")


def read_model_file(path: str) -> pb.ValueModel:
    """A model from a JSON file (the form `cvh models show` prints and scoring_engine/default_model.json uses)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return json_format.ParseDict(data, pb.ValueModel())
    except (OSError, ValueError, json_format.ParseError) as error:
        raise SystemExit(f"cvh: cannot read the model in {path}: {error}") from None


def engine_model(model: pb.ValueModel) -> scoring_engine.ValueModel:
    """The engine's form of a model message (its describing fields only)."""
    data = message_dict(model)
    try:
        return scoring_engine.ValueModel.from_dict({key: data[key] for key in MODEL_FILE_FIELDS if key in data})
    except scoring_engine.ModelValidationError as error:
        raise SystemExit(f"cvh: the model is not valid: {error}") from None


def models_create(args: argparse.Namespace) -> int:
    model = read_model_file(args.file)
    if args.model_id:
        model.model_id = args.model_id
    model.change_note = args.note or model.change_note
    with connect(args) as cvh:
        created = cvh.create_model(model)
    print_json(message_dict(created)) if args.json else print(
        f"created {created.name}" + (" (active)" if created.active else f"; activate it with "
                                     f"`cvh models activate {created.name}`"))
    return 0


def models_list(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        models = list(cvh.list_models(args.model_id))
    if args.json:
        print_json([message_dict(m) for m in models])
        return 0
    print_table(["version", "active", "tiers", "created", "note"],
                [[m.name, "yes" if m.active else "", len(m.tiers),
                  m.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M"), m.change_note] for m in models],
                right=[2])
    return 0


def models_show(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        model = cvh.get_model(args.name)
    data = message_dict(model)
    if not args.full:
        data = {key: data[key] for key in MODEL_FILE_FIELDS if key in data}
    print(json.dumps(data, indent=None if args.json else 2))
    return 0


def models_activate(args: argparse.Namespace) -> int:
    name = f"{args.name}/versions/{args.version}" if args.version is not None else args.name
    with connect(args) as cvh:
        model = cvh.activate_model(name)
    print_json(message_dict(model)) if args.json else print(f"{model.name} is now the active version")
    return 0


def run_start(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        run = cvh.start_run(args.model)
        if args.wait:
            run = follow_run(cvh, run, enabled=not args.json)
    if args.json:
        print_json(message_dict(run))
    else:
        print_run(run)
    return 0 if run.state in (pb.RUN_STATE_COMPLETED, pb.RUN_STATE_RUNNING, pb.RUN_STATE_PENDING) else 1


def follow_run(cvh: CvhClient, run: pb.ScoringRun, enabled: bool = True) -> pb.ScoringRun:
    """Waits for the run to end, drawing its progress."""
    with progress(100, f"scoring {run.name}", unit="%", enabled=enabled) as bar:
        bar.unit_scale = False

        def show(update: pb.ScoringRun) -> None:
            bar.update(update.percent_done - bar.n)
            bar.set_postfix_str(f"{update.customers_done:,}/{counted(update.customers_total, 'customer')}")
        return cvh.wait_for_run(run.name, on_progress=show)


def print_run(run: pb.ScoringRun) -> None:
    state = enum_word(pb.RunState, run.state)
    print(f"{run.name} of {run.model}: {state}"
          + (f" ({run.percent_done:.0f} %)" if run.state == pb.RUN_STATE_RUNNING else ""))
    if run.failure_reason:
        print(f"  why: {run.failure_reason}")
    if run.state == pb.RUN_STATE_COMPLETED:
        seconds = run.export_seconds + run.scoring_seconds + run.store_seconds
        print(f"  {counted(run.customers_total, 'customer')} in {seconds:.1f} s"
              f" (export {run.export_seconds:.1f} s, scoring {run.scoring_seconds:.1f} s, "
              f"store {run.store_seconds:.1f} s)")
        if run.churned_left_out:
            print(f"  {counted(run.churned_left_out, 'churned customer')} left out (not scored)")
        if run.outcome_signals:
            print(f"  outcome values stored: {', '.join(run.outcome_signals)} (see `cvh outcomes`, `cvh history`)")
        total = max(run.customers_total, 1)
        print_table(["tier", "customers", "share"],
                    [[c.tier.display_name or c.tier.tier_id, f"{c.customers:,}", percent(c.customers / total)]
                     for c in run.tier_counts], right=[1, 2])
    if run.HasField("lifetime_value"):
        print_lifetime_value(run.lifetime_value)


def print_lifetime_value(fit: pb.LifetimeValueFit) -> None:
    """The run's BG/NBD and Gamma-Gamma parameters, how their fits ended, and why derived signals are missing."""
    excluded = f", {fit.customers_excluded:,} of them unusable" if fit.customers_excluded else ""
    print(f"  lifetime value: {counted(fit.customers, 'customer')} with purchase signals{excluded}")
    if fit.missing_reason:
        print(f"  derived signals missing for this run: {fit.missing_reason}")
    rows = []
    for label, model in (("BG/NBD", fit.bgnbd), ("Gamma-Gamma", fit.gamma_gamma)):
        c = model.convergence
        for i, p in enumerate(model.parameters):
            error = f"{p.standard_error:.4g}" if p.HasField("standard_error") else "–"
            fit_words = (f"{'converged' if c.converged else 'NOT converged'}, {c.iterations} iterations, "
                         f"log-likelihood {c.log_likelihood:,.1f}, |gradient| {c.gradient_norm:.1e}, "
                         f"{counted(model.customers, 'customer')}") if i == 0 else ""
            rows.append([label if i == 0 else "", p.name, f"{p.value:.6g}", error, fit_words])
    if rows:
        print_table(["model", "parameter", "value", "std. error", "fit"], rows, right=[2, 3], indent="  ")


def run_show(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        run = cvh.get_run(args.run_name) if args.run_name else latest_run(cvh)
    print_json(message_dict(run)) if args.json else print_run(run)
    return 0


def latest_run(cvh: CvhClient, state: int = 0) -> pb.ScoringRun:
    for run in cvh.list_runs(state=state, page_size=1):
        return run
    raise SystemExit("cvh: no scoring run yet; start one with `cvh run start --wait`")


def run_list(args: argparse.Namespace) -> int:
    state = pb.RunState.Value(f"RUN_STATE_{args.state.upper()}") if args.state else 0
    with connect(args) as cvh:
        runs = list(itertools.islice(cvh.list_runs(args.model_id, state, page_size=args.limit), args.limit))
    if args.json:
        print_json([message_dict(r) for r in runs])
        return 0
    print_table(["run", "model", "state", "customers", "started", "seconds"],
                [[r.name, r.model, enum_word(pb.RunState, r.state), f"{r.customers_total:,}",
                  r.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                  f"{r.export_seconds + r.scoring_seconds + r.store_seconds:.1f}"] for r in runs], right=[3, 5])
    return 0


def run_moves(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        run = args.run_name or latest_run(cvh, pb.RUN_STATE_COMPLETED).name
        movement = cvh.get_tier_movement(run)
    if args.json:
        print_json(message_dict(movement))
        return 0
    if not movement.previous_run:
        print(f"{movement.run} is the model's first run: no tier moves to show")
        return 0
    print(f"tier moves from {movement.previous_run} to {movement.run}")
    print_table(["from", "to", "customers"],
                [[m.from_tier.display_name or m.from_tier.tier_id or "(new)", m.to_tier.display_name or m.to_tier.tier_id,
                  f"{m.customers:,}"] for m in movement.moves], right=[2])
    return 0


def run_export(args: argparse.Namespace) -> int:
    """cvh run export: a completed run's results, streamed into Parquet parts, CSV or JSON Lines."""
    with connect(args) as cvh:
        run = cvh.get_run(args.run_name)
        stream = cvh.stream_run_results(run.name)
        with progress(None, f"exporting {run.name}", unit=" customers", enabled=not args.json) as bar:
            chunks = counted_stream(stream, bar, lambda chunk: len(chunk.dimension_scores.customer_ids))
            rows, files = parquet.write_export(args.path, args.format, parquet.run_result_batches(chunks))
    result = {"run": run.name, "customers": rows, "format": args.format, "files": [str(f) for f in files]}
    if args.json:
        print_json(result)
    else:
        print(f"{run.name}: {rows:,} results written to {args.path} ({counted(len(files), 'file')})")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """cvh run import: run results (cvh batch score, cvh run export) streamed to ImportRunResults."""
    parts = parquet.RunResultParts(args.path)
    batch_info = json.loads(parts.sidecar(parquet.BATCH_FILE) or b"{}")
    model = args.model or batch_info.get("model", "")
    if not model:
        return fail(f"run import: {args.path} does not say which model version scored it (it holds no "
                    f"{parquet.BATCH_FILE}); name it with --model default/versions/N", 2)
    fitted = None if args.without_fitted else parts.sidecar(parquet.FITTED_FILE)
    with connect(args) as cvh:
        with progress(parts.rows, f"importing {args.path}", unit=" customers", enabled=not args.json) as bar:
            requests = parquet.run_import_requests(parts, model_name(model), fitted, on_rows=bar.update)
            run = cvh.import_run_results(requests)
    if args.json:
        print_json(message_dict(run))
    else:
        print_run(run)
        if not fitted:
            print("  imported without fitted statistics: online scoring keeps using the model's latest run "
                  "that has them")
    return 0


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    models = commands.add_parser("models", help="value models: create, list, show, activate",
                                 description="Value models are versioned: creating one with an existing "
                                             "model_id adds a version; runs use the active version.")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser("create", parents=[client], help="create a model (or a new version) from JSON",
                                 description="FILE is the model as JSON, in the form `cvh models show` prints "
                                             "(see scoring_engine/default_model.json).")
    command.add_argument("file", type=existing_file, metavar="FILE")
    command.add_argument("--model-id", default="", help="use this model_id instead of the file's")
    command.add_argument("--note", default="", help="change note kept with the version")
    command.set_defaults(run=models_create)
    command = actions.add_parser("list", parents=[client], help="list models and their versions")
    command.add_argument("--model-id", default="", help="only versions of this model")
    command.set_defaults(run=models_list)
    command = actions.add_parser("show", parents=[client], help="print a model as JSON (a model file)")
    command.add_argument("name", nargs="?", default="default",
                         help="model id, models/ID or models/ID/versions/N (default: default's active version)")
    command.add_argument("--full", action="store_true", help="include version, creator and times")
    command.set_defaults(run=models_show)
    command = actions.add_parser("activate", parents=[client], help="make a version the one runs use")
    command.add_argument("name", help="the version: ID/versions/N or models/ID/versions/N, or the model id "
                                      "followed by VERSION")
    command.add_argument("version", nargs="?", type=positive_int, metavar="VERSION",
                         help="version number (with a model id)")
    command.set_defaults(run=models_activate)

    runs = commands.add_parser("run", help="scoring runs: start, show, list, moves, export, import",
                               description="A run scores every customer of the registry with a model and "
                                           "places them into tiers; the hierarchy serves the latest one.")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser("start", parents=[client], help="start a run")
    command.add_argument("--model", default="", help="model id or version (default: default's active version)")
    command.add_argument("--wait", action="store_true", help="show progress until the run ends; exit 1 if it fails")
    command.set_defaults(run=run_start)
    command = actions.add_parser("show", parents=[client], help="a run's state, timings and tier counts")
    command.add_argument("run_name", nargs="?", default="", metavar="RUN",
                         help="runs/N or N (default: the latest run)")
    command.set_defaults(run=run_show)
    command = actions.add_parser("list", parents=[client], help="recent runs, newest first")
    command.add_argument("--model-id", default="", help="only runs of this model")
    command.add_argument("--state", choices=["pending", "running", "completed", "failed", "cancelled"])
    command.add_argument("--limit", type=positive_int, default=20, metavar="N", help="at most N runs (default 20)")
    command.set_defaults(run=run_list)
    command = actions.add_parser("moves", parents=[client], help="how many customers moved between tiers")
    command.add_argument("run_name", nargs="?", default="", metavar="RUN",
                         help="runs/N or N (default: the latest completed run)")
    command.set_defaults(run=run_moves)
    command = actions.add_parser(
        "export", parents=[client], help="write a run's results to Parquet, CSV or JSON Lines",
        description="Write a completed run's results in rank order: customer_id, one score per dimension, "
                    "composite (empty / null when none), tier_id, tier_level (1 = top), rank, percentile and "
                    "previous_tier_level (0: not in the previous run). Parquet goes to a folder of part files "
                    "(1,000,000 rows each), streamed: memory stays bounded by one row group.")
    command.add_argument("run_name", metavar="RUN", help="runs/N or N")
    export_target(command)
    command.set_defaults(run=run_export)
    command = actions.add_parser(
        "import", parents=[client], help="make results scored elsewhere (cvh batch score) a completed run",
        description="Stream run results (the Parquet folder `cvh batch score` or `cvh run export` writes) to "
                    "the scoring service, which checks them whole and stores them as a completed run of the "
                    "model version: one result per registered customer (ids unknown, repeated or missing are "
                    "refused by row), scores within 0..100, ranks 1..N, tiers of the model. Nothing is written "
                    "unless all of it is right. The hierarchy then serves it like any completed run. The fitted "
                    "statistics (_fitted_model.npz, written by cvh batch score) go with it when present.")
    command.add_argument("path", metavar="PATH", help="the results: a folder (or URL) of Parquet part files")
    command.add_argument("--model", default="",
                         help="the model version that scored them: default/versions/3, models/default/versions/3 "
                              "or default (its active version); default: the one cvh batch score recorded")
    command.add_argument("--without-fitted", action="store_true",
                         help="do not send the fitted statistics (online scoring then keeps the previous run's)")
    command.set_defaults(run=run_import)
