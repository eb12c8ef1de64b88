"""One snapshot per run for every worker process of the machine: built once, written as files, memory-mapped by all.

``cvh serve --workers N`` (services/common/workers.py) gives its workers one private directory
(``ServerConfig.snapshot_dir``). When a run completes, each worker takes the run's lock (``fcntl.flock`` on
``<run>.lock``); the first builds the snapshot as a single process would and writes it, with the run's results, into
``<run>/`` (one ``.npy`` file per array, and ``meta.pickle`` for the small parts: tiers, owner names, teams, the feed
sequence its accounts hold); it then maps the files and drops what it built. The others, taking the lock after it,
find the directory and map the same files. Every worker replays the change feed from the recorded sequence, as it
would after building.

Mapped copy-on-write (``np.load(mmap_mode="c")``): pages are the page cache's, shared by every process; a live patch
writes a private copy of only the pages it touches. Row arrays are written with spare rows (an eighth more): the
customers created between runs are appended into them (services/hierarchy/live.py ``_grown``) without a private copy
of the whole array; only once that room is used up is an array copied, privately, with room again. What a worker
derives after a patch (rank order, effective teams) it holds privately.

A run's directory is written under a temporary name and renamed whole, so a reader never maps half of one. The
builder removes directories of runs older than the previous one: a worker still serving one keeps its mapping (an
unlinked file stays valid on Linux until unmapped).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from services.hierarchy.ids import IdIndex, arrow, columnar
from services.hierarchy.snapshot import RunResults, Snapshot

# Arrays of one value per row: written with spare rows for the customers created between runs.
ROW_FIELDS = ("parent", "depth", "roles", "owner_codes", "rollup_values", "own_level", "effective_level", "composite",
              "percentile", "rank", "dimension_scores", "live_time_us", "team_cells", "stages", "bad_profit",
              "previous_level", "previous_composite", "run_money", "revenue")
# Other arrays of a snapshot, written as they are.
PLAIN_FIELDS = ("child_order", "child_start", "run_composites")
# Derived once per snapshot (cached properties), written so no worker derives them again.
DERIVED_FIELDS = ("rank_order", "effective_cells", "bad_profit_order")
RESULT_FIELDS = ("dimension_scores", "composite", "tier_levels", "ranks", "percentiles", "previous_levels",
                 "bad_profit", "run_money", "previous_composite")
RUN_ID = re.compile(r"(?:runs/)?([0-9]+)")
META = "meta.pickle"


def spare_rows(n: int) -> int:
    """Rows of room written after ``n`` rows: an eighth more, at least 1024."""
    return max(n // 8, 1024)


def run_directory(directory: str | Path, run: str) -> Path:
    """Where ``run``'s snapshot is (or will be) written."""
    match = RUN_ID.fullmatch(run)
    if not match:
        raise ValueError(f"not a run name: {run!r}")
    return Path(directory) / f"run-{int(match.group(1)):020d}"


@contextlib.contextmanager
def run_lock(directory: str | Path, run: str) -> Iterator[Path]:
    """Hold ``run``'s lock (blocking: call from a thread) and give its directory: present when another worker built
    it, else to be written by this one (``store``) before the lock is let go."""
    path = run_directory(directory, run)
    with open(path.with_suffix(".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def store(path: Path, snap: Snapshot, results: RunResults, inheritance_rule: int) -> None:
    """Write ``snap`` (freshly built: nothing added or deleted since) and the run's ``results`` into ``path``."""
    if snap.ids._added or snap.ids.deleted:
        raise ValueError("only a freshly built snapshot is written")
    building = path.with_name(f"{path.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    n = snap.size
    _write(building / "ids.offsets.npy", snap.ids.offsets)
    _write(building / "ids.data.npy", snap.ids.data)
    _write(building / "ids.table.npy", snap.ids.table)
    for name in ROW_FIELDS:
        _write(building / f"{name}.npy", getattr(snap, name), spare_rows(n))
    for name in PLAIN_FIELDS + DERIVED_FIELDS:
        _write(building / f"{name}.npy", getattr(snap, name))
    for j, scores in enumerate(snap.sorted_dimension_scores):
        _write(building / f"sorted_dimension_scores.{j}.npy", scores)
    for name in ("customer_ids", "previous_ids"):
        offsets, data = columnar(getattr(results, name))
        _write(building / f"results.{name}.offsets.npy", offsets)
        _write(building / f"results.{name}.data.npy", data)
    for name in RESULT_FIELDS:
        column = getattr(results, name)
        _write(building / f"results.{name}.npy", np.asarray(column) if column is not None else np.empty(0))
    meta = {
        "size": n, "run": snap.run, "score_time_us": snap.score_time_us, "load_time": snap.load_time,
        "tiers": [t.SerializeToString() for t in snap.tiers], "dimensions": snap.dimensions,
        "sequence": snap.sequence, "teams": snap.teams, "owner_names": snap.owner_names,
        "money_signal": snap.money_signal, "previous_run": snap.previous_run,
        "previous_time_us": snap.previous_time_us, "broken": snap.broken, "inheritance_rule": inheritance_rule,
        "sorted_dimensions": len(snap.sorted_dimension_scores),
        "results": {"run": results.run, "score_time_us": results.score_time_us,
                    "tiers": [t.SerializeToString() for t in results.tiers], "dimensions": list(results.dimensions),
                    "previous_run": results.previous_run, "previous_time_us": results.previous_time_us},
    }
    with open(building / META, "wb") as out:
        pickle.dump(meta, out, protocol=pickle.HIGHEST_PROTOCOL)
    os.rename(building, path)  # whole, or not at all


def load(path: Path) -> tuple[Snapshot, RunResults, int]:
    """The snapshot and results written in ``path``, mapped copy-on-write; and the inheritance rule it was built
    with."""
    from cvh.common.v1 import common_pb2

    with open(path / META, "rb") as source:
        meta = pickle.load(source)
    n = meta["size"]

    def mapped(name: str, rows: int | None = None) -> np.ndarray:
        array = np.load(path / f"{name}.npy", mmap_mode="c")
        return array[:rows] if rows is not None else array

    def tiers(texts: list[bytes]) -> tuple:
        return tuple(common_pb2.TierRef.FromString(t) for t in texts)

    ids = IdIndex(mapped("ids.offsets"), mapped("ids.data"), mapped("ids.table"))
    rows = {name: mapped(name, n) for name in ROW_FIELDS}
    snap = Snapshot(
        meta["run"], meta["score_time_us"], meta["load_time"], tiers(meta["tiers"]), tuple(meta["dimensions"]), ids,
        rows["parent"], rows["depth"], rows["roles"], rows["owner_codes"], rows["rollup_values"], rows["own_level"],
        rows["effective_level"], rows["composite"], rows["percentile"], rows["rank"], rows["dimension_scores"],
        tuple(mapped(f"sorted_dimension_scores.{j}") for j in range(meta["sorted_dimensions"])), meta["sequence"],
        mapped("child_order"), mapped("child_start"), run_composites=mapped("run_composites"),
        live_time_us=rows["live_time_us"], teams=meta["teams"], team_cells=rows["team_cells"],
        stages=rows["stages"], bad_profit=rows["bad_profit"], previous_level=rows["previous_level"],
        previous_composite=rows["previous_composite"], previous_run=meta["previous_run"],
        previous_time_us=meta["previous_time_us"], run_money=rows["run_money"], revenue=rows["revenue"],
        money_signal=meta["money_signal"], owner_names=meta["owner_names"])
    for name in DERIVED_FIELDS:
        snap.__dict__[name] = mapped(name)
    snap.__dict__["broken"] = meta["broken"]
    about = meta["results"]
    results = RunResults(
        about["run"], about["score_time_us"], list(tiers(about["tiers"])), about["dimensions"],
        arrow(mapped("results.customer_ids.offsets"), mapped("results.customer_ids.data")),
        *(mapped(f"results.{name}") for name in ("dimension_scores", "composite", "tier_levels", "ranks",
                                                 "percentiles")),
        previous_levels=mapped("results.previous_levels"), bad_profit=mapped("results.bad_profit"),
        run_money=mapped("results.run_money"), previous_run=about["previous_run"],
        previous_time_us=about["previous_time_us"],
        previous_ids=arrow(mapped("results.previous_ids.offsets"), mapped("results.previous_ids.data")),
        previous_composite=mapped("results.previous_composite"))
    return snap, results, meta["inheritance_rule"]


def remove_older(directory: str | Path, run: str) -> None:
    """Remove the directories (and locks) of runs before the one before ``run``: no worker loads them again."""
    keep = int(RUN_ID.fullmatch(run).group(1))
    found = sorted((int(p.name.split("-")[1].split(".")[0]), p) for p in Path(directory).glob("run-*")
                   if p.name.split("-")[1].split(".")[0].isdigit())
    runs = sorted({number for number, _ in found if number < keep})
    for number, entry in found:
        if runs and number < runs[-1]:  # older than the newest run before this one
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def mapped_bytes(snap: Snapshot) -> int:
    """Bytes of ``snap``'s arrays that are file mappings (for tests and benchmarks)."""
    total = 0
    for value in [snap.ids.offsets, snap.ids.data, snap.ids.table, *(getattr(snap, n) for n in ROW_FIELDS)]:
        if isinstance(value, np.memmap):
            total += value.nbytes
    return total


# -- the parts ----------------------------------------------------------------------------------------

def _write(path: Path, array: np.ndarray, spare: int = 0) -> None:
    """``array`` as a .npy file, with ``spare`` zeroed rows after it (left a hole in the file: no disk, no write)."""
    array = np.ascontiguousarray(array)
    header = np.lib.format.header_data_from_array_1_0(array)
    header["shape"] = (len(array) + spare, *array.shape[1:]) if array.ndim else array.shape
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        start = out.tell()
        out.write(array.reshape(-1).view(np.uint8))
        out.truncate(start + int(np.prod(header["shape"], dtype=np.int64)) * array.itemsize)
