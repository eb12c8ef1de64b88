"""cvh batch score: a Parquet base scored on a Dask cluster with the engine's own kernels.

The base is what ``cvh export --format parquet`` writes (customer_id, then a column per signal, null where not
observed; other columns are ignored), from a local folder or an object-store URL that fsspec can open. It is
fitted and scored as a run would be (``scoring_engine.distributed``: fit statistics merged up a tree, exact
share-tier cut-offs and ranks), optionally with tier hysteresis against a previous run's results, and the
results are written by the workers as run-result Parquet parts: the columns and file names of
``cvh run export``, one part per partition of the base, rows in the base's order (not rank order), plus the
fitted statistics (``_fitted_model.npz``) and what was scored with what (``_cvh_batch.json``), which Parquet
readers skip. ``cvh run import`` makes such a folder a run of the suite.

Needs the ``dask`` extra (``pip install 'cvh[dask]'``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import scoring_engine
from clients import parquet
from clients.parquet import ParquetError

PREVIOUS_COLUMN = "previous_tier_level"    # level in the previous results: 1 = top, 0 = none
PREVIOUS_INDEX = "_cvh_previous_tier"      # the same as scoring_engine.distributed takes it: 0 = top, -1 = none
ROW_COLUMN = "_cvh_row"


class BatchUnavailable(RuntimeError):
    """The dask extra is not installed."""


def dask_modules():
    """(dask.dataframe, distributed, scoring_engine.distributed), or BatchUnavailable saying how to install them."""
    try:
        import dask.dataframe as dd
        import distributed

        from scoring_engine import distributed as engine_on_dask
    except ImportError as error:
        raise BatchUnavailable(f"batch scoring needs the dask extra ({error.name} is not installed): "
                               "pip install 'cvh[dask]'") from None
    return dd, distributed, engine_on_dask


@dataclass
class BatchSummary:
    customers: int
    partitions: int
    tier_counts: dict[str, int]
    missing_signals: list[str]
    seconds: dict[str, float]
    files: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_base(dd, path: str, model: scoring_engine.ValueModel):
    """The base as a dask dataframe of customer_id and the model's signal columns it has."""
    try:
        frame = dd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ParquetError(f"{path}: cannot be read as Parquet ({error})") from None
    if "customer_id" not in frame.columns:
        raise ParquetError(f"{path}: no customer_id column (the layout of `cvh export --format parquet` is needed)")
    wanted = ["customer_id"] + [name for name in model.signal_names if name in frame.columns]
    if "lifecycle_stage" not in frame.columns:
        return frame[wanted]
    # As a run does, churned customers are not scored. Per partition, so that the partitions stay the files'
    # (a filter expression would be pushed into the read, which may then merge them).
    return frame[wanted + ["lifecycle_stage"]].map_partitions(_without_churned, wanted, meta=frame[wanted]._meta)


def _without_churned(part, wanted: list[str]):
    return part.loc[part["lifecycle_stage"].fillna("").str.lower() != "churned", wanted]


def with_previous(dd, frame, path: str, n_tiers: int):
    """``frame`` with each customer's tier level in a previous run's results (0: none), partitions and row order
    kept: the previous results are joined by broadcast (never fewer base partitions than theirs), then each
    partition is put back in its own order."""
    try:
        previous = dd.read_parquet(path, columns=["customer_id", "tier_level"])
    except (OSError, ValueError, KeyError, pa.ArrowException) as error:
        raise ParquetError(f"{path}: cannot be read as run results with customer_id and tier_level "
                           f"({error})") from None
    previous = previous.rename(columns={"tier_level": PREVIOUS_COLUMN}).drop_duplicates("customer_id")
    if previous.npartitions > frame.npartitions:
        previous = previous.repartition(npartitions=frame.npartitions)
    numbered = frame.map_partitions(lambda part: part.assign(**{ROW_COLUMN: np.arange(len(part))}))
    joined = numbered.merge(previous, how="left", on="customer_id", broadcast=True)
    if joined.npartitions != frame.npartitions:  # dask chose another plan: the order could not be kept
        raise RuntimeError("the join with the previous results changed the base's partitions")

    def restore(part):
        part = part.sort_values(ROW_COLUMN, kind="stable").drop(columns=[ROW_COLUMN])
        level = part[PREVIOUS_COLUMN].astype("float64").fillna(0)
        level[(level < 1) | (level > n_tiers)] = 0  # levels the model no longer has count as none
        return part.assign(**{PREVIOUS_COLUMN: level.astype("int32"), PREVIOUS_INDEX: level.astype("int32") - 1})
    return joined.map_partitions(restore)


def _write_part(part, dims, composite, tier, rank, percentile, path: str, schema: pa.Schema, tier_ids: tuple,
                has_previous: bool) -> int:
    """One partition's results as a run-result part file; returns its rows."""
    fs, file = parquet.filesystem(path)
    levels = np.asarray(tier, dtype=np.int32) + 1
    previous = part[PREVIOUS_COLUMN].to_numpy(np.int32) if has_previous else np.zeros(len(part), np.int32)
    columns = [pa.array(part["customer_id"].astype(str).tolist(), pa.string())]
    columns += [parquet.float_column(dims[:, j]) for j in range(dims.shape[1])]
    columns += [parquet.float_column(composite), pa.array([tier_ids[t - 1] for t in levels.tolist()], pa.string()),
                pa.array(levels, pa.int32()), pa.array(np.asarray(rank, np.int64), pa.int64()),
                parquet.float_column(percentile), pa.array(previous, pa.int32())]
    with fs.open(file, "wb") as out:
        pq.write_table(pa.Table.from_arrays(columns, schema=schema), out, compression="zstd",
                       row_group_size=parquet.GROUP_ROWS)
    return len(part)


def _blocks(array) -> list:
    """A dask array's row blocks as delayed objects (2-D arrays have one column block)."""
    blocks = array.to_delayed()
    return list(blocks[:, 0] if blocks.ndim == 2 else blocks)


def score_base(client, model: scoring_engine.ValueModel, base: str, output: str, previous: str | None = None,
               show: Callable[[list, str], None] | None = None, model_name: str = "") -> BatchSummary:
    """Fits and scores ``base`` on ``client``'s cluster (a ``distributed.Client`` with ScoringWorker registered,
    as ``scoring_engine.distributed.scoring_client`` makes it) and writes the results into ``output``."""
    import dask
    import dask.array as da

    dd, _, engine_on_dask = dask_modules()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    frame = read_base(dd, base, model)
    missing = [name for name in model.signal_names if name not in frame.columns]
    if previous:
        frame = with_previous(dd, frame, previous, len(model.tiers))
    out_fs, out_root = parquet.filesystem(output)
    out_fs.makedirs(out_root, exist_ok=True)
    for old in out_fs.glob(out_root.rstrip("/") + "/part-*.parquet"):
        out_fs.rm(old)

    def show_phase(futures: list, label: str) -> None:
        if show:
            show(futures, label)

    with engine_on_dask.showing_progress(show_phase):
        fitted = engine_on_dask.fit(model, frame)
        seconds["fit"] = time.perf_counter() - started
        scores = engine_on_dask.score(fitted, frame, previous_tiers=PREVIOUS_INDEX if previous else None,
                                      with_rank=True)
        seconds["score"] = time.perf_counter() - started - seconds["fit"]
    schema = parquet.run_results_schema(scores.dimension_names)
    write = dask.delayed(_write_part, pure=True)
    root = output.rstrip("/")
    writes = [write(part, d, c, t, r, p, f"{root}/part-{i:05d}.parquet", schema, scores.tier_ids, bool(previous))
              for i, (part, d, c, t, r, p) in enumerate(zip(
                  frame.to_delayed(), _blocks(scores.dimensions), _blocks(scores.composite), _blocks(scores.tier),
                  _blocks(scores.rank), _blocks(scores.percentile)))]
    futures = client.compute(writes)
    show_phase(futures, "write")
    rows = sum(client.gather(futures))
    tiers = da.bincount(scores.tier, minlength=len(scores.tier_ids)).compute()
    seconds["write"] = time.perf_counter() - started - seconds["fit"] - seconds["score"]
    fitted = fitted.with_tier_thresholds(scores.tier_thresholds)
    with out_fs.open(f"{out_root.rstrip('/')}/{parquet.FITTED_FILE}", "wb") as out:
        out.write(fitted.to_bytes())
    summary = BatchSummary(rows, frame.npartitions, dict(zip(scores.tier_ids, map(int, tiers))), missing,
                           {k: round(v, 3) for k, v in seconds.items()}, len(writes))
    with out_fs.open(f"{out_root.rstrip('/')}/{parquet.BATCH_FILE}", "w") as out:
        json.dump({"model": model_name, "model_id": model.model_id, "base": base, "previous": previous or "",
                   **summary.as_dict()}, out, indent=2)
    return summary

