"""Scoring on Dask against one process: fit and score a base read from Parquet.

Run as ``python -m benchmarks.distributed`` (``--help`` for the flags). It writes ``--customers`` x the
default model's 16 signals (``benchmarks.scoring.generate``: 5 % missing) as Parquet part files of
``--partition-rows`` rows, then measures, each from the Parquet files:

* ``in_process_s``: read every part into one matrix, ``scoring_engine.fit``, ``scoring_engine.score`` with
  ranks (Numba on every core);
* ``dask_local_s``: ``dd.read_parquet``, ``scoring_engine.distributed.fit`` and ``.score`` with ranks on a
  LocalCluster of ``--workers`` processes (1 Dask thread each, Numba threads = cores / workers), the
  results persisted on the workers; with ``--write-results``, the results are instead written by the
  workers as run-result Parquet (``clients.batch.score_base``, what ``cvh batch score`` does) into a
  temporary folder, so that nothing of the whole base is collected; ``cluster_start_s`` (not included) is
  the cluster's start with every worker's kernels loaded;
* ``dask_peak_worker_mib``: the largest peak resident memory of a worker process (its own ``VmHWM``:
  ``ru_maxrss`` would also count the benchmark's process, which a worker is forked from before it starts
  Python afresh, and Linux carries the larger peak over), also printed as
  ``dask_<customers>_peak_worker_mib`` (``dask_50m_peak_worker_mib`` for ``--customers 50m``);
* ``max_composite_difference`` between the two, against the stated bound (1e-9 points);
* ``in_process_cpu_s`` and ``dask_cpu_s``: CPU seconds (user + system) of the same work, in this process
  alone, and in the worker processes plus this one (which runs the LocalCluster's scheduler); on a machine
  shared with other work they compare better than the wall-clock times.

``--customers`` takes counts such as ``2000000``, ``2_000_000``, ``2m`` or ``50M``. ``--skip-in-process``
measures Dask alone (50,000,000 customers do not fit one process next to the cluster on a small machine).

The issue's targets: ``dask_local_10m_s / in_process_10m_s <= 1.5`` at 10,000,000 customers and
``dask_50m_peak_worker_mib <= 4,096`` (fit and score 50,000,000 customers from Parquet, results written out:
``--customers 50m --write-results --skip-in-process``). With ``--json`` the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import scoring_engine as se
from benchmarks.scoring import generate


def customer_count(text: str) -> int:
    """``2000000``, ``2_000_000``, ``2m``, ``50M``, ``1.5m`` or ``20k`` as a count of customers."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        count = float(text[:-1] if scale > 1 else text.replace("_", "")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of customers (e.g. 2000000 or 50m)") from None
    if count < 1 or count != int(count):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole count of customers")
    return int(count)


def count_label(customers: int) -> str:
    """50m for 50,000,000; 20k for 20,000; else the number itself."""
    for unit, size in (("m", 1_000_000), ("k", 1_000)):
        if customers % size == 0:
            return f"{customers // size}{unit}"
    return str(customers)


def write_base(folder: Path, customers: int, partition_rows: int, names: list[str]) -> int:
    """The base as part files of ``partition_rows`` (generated one partition at a time) with a numeric
    customer_id; returns the parts."""
    parts = 0
    for start in range(0, customers, partition_rows):
        n = min(partition_rows, customers - start)
        X = generate(n, seed=parts)
        table = pa.table({"customer_id": np.arange(start, start + n, dtype=np.int64),
                          **{name: pa.array(X[:, j], mask=np.isnan(X[:, j])) for j, name in enumerate(names)}})
        pq.write_table(table, folder / f"part-{parts:05d}.parquet", row_group_size=partition_rows)
        parts += 1
    return parts


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_resident_kib() -> int:
    """This process's own peak resident memory in KiB (Linux ``VmHWM``; elsewhere ``ru_maxrss``)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def in_process(folder: Path, model: se.ValueModel) -> tuple[float, se.ScoreResult]:
    start = time.perf_counter()
    table = pq.read_table(folder)
    X = np.empty((table.num_rows, len(model.signal_names)))
    for j, name in enumerate(model.signal_names):
        X[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    del table
    result = se.score(se.fit(model, X), X, with_rank=True)
    return time.perf_counter() - start, result


def on_dask(folder: Path, model: se.ValueModel, client) -> tuple[float, object]:
    import dask
    import dask.dataframe as dd

    from scoring_engine import distributed

    start = time.perf_counter()
    frame = dd.read_parquet(folder)
    fitted = distributed.fit(model, frame)
    scores = distributed.score(fitted, frame, with_rank=True, hold_dimensions=True)  # kept: scored once
    persisted = dask.persist(scores.composite, scores.tier, scores.rank, scores.percentile, scores.dimensions)
    from distributed import wait
    wait(persisted)
    return time.perf_counter() - start, (scores, persisted)


def written(folder: Path, client, model: se.ValueModel) -> tuple[float, Path]:
    """Fit, score and write the results as ``cvh batch score`` does; returns (seconds, results folder)."""
    from clients import batch

    output = folder.with_name(folder.name + "-results")
    start = time.perf_counter()
    batch.score_base(client, model, str(folder), str(output))
    return time.perf_counter() - start, output


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=customer_count, default=10_000_000,
                        help="customers, e.g. 10000000, 10m or 50m (default 10m)")
    parser.add_argument("--partition-rows", type=customer_count, default=1_000_000, help="rows per Parquet part "
                        "and Dask partition (default 1,000,000: 128 MB of signals)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--write-results", action="store_true",
                        help="results written as run-result Parquet by the workers (cvh batch score) rather than "
                             "persisted on them")
    parser.add_argument("--skip-in-process", action="store_true", help="measure Dask alone")
    parser.add_argument("--no-progress", action="store_true", help="accepted for symmetry; prints no bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    from scoring_engine import distributed

    model = se.default_model()
    se.warm_up()
    folder = Path(tempfile.mkdtemp(prefix="cvh-bench-dask-"))
    output = None
    in_process_s = in_process_cpu_s = difference = None
    try:
        start = time.perf_counter()
        parts = write_base(folder, args.customers, args.partition_rows, list(model.signal_names))
        write_s = time.perf_counter() - start
        print(f"{args.customers:,} customers in {parts} Parquet parts written in {write_s:.1f} s")

        alone = None
        if not args.skip_in_process:
            cpu = cpu_seconds()
            in_process_s, alone = in_process(folder, model)
            in_process_cpu_s = cpu_seconds() - cpu
            print(f"in process: read, fit, score and rank in {in_process_s:.2f} s ({in_process_cpu_s:.1f} CPU s)")

        start = time.perf_counter()
        client = distributed.scoring_client(n_workers=args.workers)
        cluster_start_s = time.perf_counter() - start
        try:
            workers_cpu = sum(client.run(cpu_seconds).values())
            cpu = cpu_seconds()
            if args.write_results:
                dask_s, output = written(folder, client, model)
            else:
                dask_s, (_scores, persisted) = on_dask(folder, model, client)  # held until the end
            dask_cpu_s = sum(client.run(cpu_seconds).values()) - workers_cpu + cpu_seconds() - cpu
            if alone is None:
                composite = None
            elif args.write_results:
                composite = pq.read_table(output, columns=["composite"]).column(0).to_numpy(zero_copy_only=False)
            else:
                composite = persisted[0].compute()
            peaks = client.run(peak_resident_kib)
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()
        if alone is not None:
            difference = float(np.nanmax(np.abs(composite - alone.composite))) if composite.size else 0.0
        peak_mib = max(peaks.values()) / 1024
        what = "fit, score and write" if args.write_results else "fit and score (persisted)"
        print(f"dask LocalCluster of {args.workers}: {what} in {dask_s:.2f} s ({dask_cpu_s:.1f} CPU s; cluster start {cluster_start_s:.1f} s, "
              f"not counted); peak worker {peak_mib:,.0f} MiB ({peak_mib * 1e6 / args.customers:,.1f} MiB per "
              "million customers)")
        if alone is not None:
            print(f"ratio {dask_s / in_process_s:.2f} (target <= 1.5); largest composite difference "
                  f"{difference:.1e} (bound {distributed.COMPOSITE_ATOL:g})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if output is not None:
            shutil.rmtree(output, ignore_errors=True)
    summary = {
        "customers": args.customers, "partitions": parts, "workers": args.workers, "write_parquet_s": write_s,
        "results_written": args.write_results, "in_process_s": in_process_s, "dask_local_s": dask_s,
        "ratio": dask_s / in_process_s if in_process_s else None,
        "in_process_cpu_s": in_process_cpu_s, "dask_cpu_s": dask_cpu_s, "load_average": os.getloadavg(),
        "cluster_start_s": cluster_start_s, "dask_peak_worker_mib": peak_mib,
        f"dask_{count_label(args.customers)}_peak_worker_mib": peak_mib,
        "max_composite_difference": difference, "composite_bound": distributed.COMPOSITE_ATOL,
    }
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
