"""Parquet in and out through pyarrow, streamed: memory bounded by one row group.

``write_parts`` writes record batches into ``DIR/part-00000.parquet``, ``part-00001.parquet``, ... of at
most ``part_rows`` rows each (one ``ParquetWriter`` per part file, one row group per ``group_rows``).
``export_batches`` and ``run_result_batches`` turn the registry's ``ExportSignalMatrix`` stream and the
scoring service's ``StreamRunResults`` stream into record batches as the messages arrive.
``ParquetRows`` reads a file or a folder of part files row group by row group, as dictionaries that
``clients.tabular`` checks with the rules of JSON Lines (null: not observed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cvh.common.v1 import common_pb2
from wire import enums
from wire.columns import from_matrix, to_matrix

PART_ROWS = 1_000_000   # rows per part file
GROUP_ROWS = 65_536     # rows per row group: what a reader or writer holds at a time
# Columns "team.<role>" hold a customer's own members in a role, person ids joined by ";" (null: none).
TEAM_PREFIX = "team."


def stage_names(stages: bytes) -> list[str]:
    """A column of LifecycleStage bytes as the names a customer file takes ("churned")."""
    return [enums.STAGE_NAMES.get(stage, "") for stage in stages]


class ParquetError(ValueError):
    """A Parquet file or folder that cannot be read: names the file and what is wrong."""


def float_column(values: np.ndarray) -> pa.Array:
    """float64 with nulls where the value is NaN (not observed / no score)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    return pa.array(values, mask=np.isnan(values), type=pa.float64())


def export_schema(signal_names: Sequence[str], team_roles: Sequence[str] = ()) -> pa.Schema:
    """The columns of ``cvh export``: the customer fields an import reads, a ``team.<role>`` per team role,
    then one float64 per signal."""
    return pa.schema([("customer_id", pa.string()), ("parent_id", pa.string()), ("role", pa.string()),
                      ("owner", pa.string()), ("lifecycle_stage", pa.string())]
                     + [(TEAM_PREFIX + role, pa.string()) for role in team_roles]
                     + [(name, pa.float64()) for name in signal_names])


def export_batches(messages: Iterable, signal_names: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """``ExportSignalMatrixResponse`` messages as record batches of :func:`export_schema`."""
    for message in messages:
        # Every chunk has a column per team role of the base (the same ones): one schema for the export.
        schema = export_schema(signal_names, [column.role for column in message.team])
        values = from_matrix(message.chunk.values)
        roles = np.frombuffer(message.stakeholder_roles, np.uint8)
        columns = [pa.array(list(message.chunk.customer_ids), pa.string()),
                   pa.array(list(message.parent_ids), pa.string()),
                   pa.array([enums.ROLE_NAMES.get(int(r), "") for r in roles], pa.string()),
                   pa.array(list(message.owners), pa.string()),
                   pa.array(stage_names(message.lifecycle_stages), pa.string())]
        columns += [pa.array([persons or None for persons in column.persons], pa.string()) for column in message.team]
        columns += [float_column(values[:, j]) for j in range(values.shape[1])]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def run_results_schema(dimension_names: Sequence[str]) -> pa.Schema:
    return pa.schema([("customer_id", pa.string())] + [(name, pa.float64()) for name in dimension_names]
                     + [("composite", pa.float64()), ("tier_id", pa.string()), ("tier_level", pa.int32()),
                        ("rank", pa.int64()), ("percentile", pa.float64()), ("previous_tier_level", pa.int32())])


def run_result_batches(chunks: Iterable) -> Iterator[pa.RecordBatch]:
    """``RunResultsChunk`` messages as record batches: ids, one column per dimension (null where missing),
    composite (null: no score), tier id and level (1 = top), rank, percentile, previous tier level (0: none)."""
    schema, tier_ids = None, []
    for chunk in chunks:
        if chunk.tiers:
            tier_ids = [t.tier_id for t in chunk.tiers]
            schema = run_results_schema(list(chunk.dimension_scores.column_names))
        dims = from_matrix(chunk.dimension_scores.values)
        levels = np.frombuffer(chunk.tier_levels, "<i4")
        columns = [pa.array(list(chunk.dimension_scores.customer_ids), pa.string())]
        columns += [float_column(dims[:, j]) for j in range(dims.shape[1])]
        columns += [float_column(np.frombuffer(chunk.composite, "<f8")),
                    pa.array([tier_ids[level - 1] if 0 < level <= len(tier_ids) else "" for level in levels],
                             pa.string()),
                    pa.array(levels, pa.int32()), pa.array(np.frombuffer(chunk.ranks, "<i8"), pa.int64()),
                    float_column(np.frombuffer(chunk.percentiles, "<f8")),
                    pa.array(np.frombuffer(chunk.previous_tier_levels, "<i4"), pa.int32())]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def write_parts(folder: str | Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema | None = None,
                part_rows: int = PART_ROWS, group_rows: int = GROUP_ROWS) -> list[Path]:
    """Writes ``batches`` as part files of at most ``part_rows`` rows into ``folder`` (created; part files
    already there are replaced); returns the files written. At most one row group is held in memory."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    written: list[Path] = []
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = part_used = 0

    def flush() -> None:
        nonlocal writer, pending, pending_rows, part_used
        if not pending_rows:
            return
        if writer is None:
            written.append(folder / f"part-{len(written):05d}.parquet")
            writer = pq.ParquetWriter(written[-1], pending[0].schema, compression="zstd")
        writer.write_table(pa.Table.from_batches(pending), row_group_size=group_rows)
        part_used += pending_rows
        pending, pending_rows = [], 0
        if part_used >= part_rows:
            writer.close()
            writer, part_used = None, 0

    try:
        for batch in batches:
            schema = batch.schema
            start = 0
            while start < batch.num_rows:  # cut batches at row-group and part boundaries
                room = min(group_rows - pending_rows, part_rows - part_used - pending_rows)
                piece = batch.slice(start, room)
                pending.append(piece)
                pending_rows += piece.num_rows
                start += piece.num_rows
                if pending_rows >= group_rows or part_used + pending_rows >= part_rows:
                    flush()
        flush()
        if not written and schema is not None:  # an empty export is still a readable dataset
            written.append(folder / "part-00000.parquet")
            pq.write_table(schema.empty_table(), written[-1])
    finally:
        if writer is not None:
            writer.close()
    return written


def parquet_files(path: str | Path) -> list[Path]:
    """The Parquet files of ``path``: the file itself, or a folder's ``*.parquet`` in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if not files:
            raise ParquetError(f"{path}: the folder holds no .parquet files")
        return files
    return [path]


def _cell(value):
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # rejected by the number rules with the value named, as in CSV
    return value


class ParquetRows:
    """The rows of a Parquet file or folder as dictionaries, one row group at a time.

    ``total_bytes`` is the files' size; ``bytes_read`` advances by each row group's compressed size.
    A file that is not Parquet, or whose columns differ from the first file's, raises ParquetError
    naming it when the object is made, before any row is read; a row group that cannot be decoded
    raises it when reached.
    """

    def __init__(self, path: str | Path) -> None:
        self.files = parquet_files(path)
        self.total_bytes = sum(f.stat().st_size for f in self.files)
        self.bytes_read = 0
        self.columns = self._open(self.files[0]).schema_arrow.names
        for file in self.files[1:]:  # every footer read before any row is: a bad part stops nothing half-way
            self._check(file, self._open(file))

    def _check(self, file: Path, reader: pq.ParquetFile) -> None:
        if reader.schema_arrow.names != self.columns:
            raise ParquetError(f"{file}: its columns {reader.schema_arrow.names} differ from those of "
                               f"{self.files[0].name} {self.columns}")

    @staticmethod
    def _open(file: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as error:
            raise ParquetError(f"{file}: not a readable Parquet file ({error})") from None

    def __iter__(self) -> Iterator[dict]:
        self.bytes_read = 0
        for file in self.files:
            reader = self._open(file)
            self._check(file, reader)
            for group in range(reader.num_row_groups):
                try:
                    table = reader.read_row_group(group)
                except (pa.ArrowException, OSError) as error:
                    raise ParquetError(f"{file}: row group {group} cannot be read ({error})") from None
                group_bytes = sum(column.total_compressed_size for column in
                                  (reader.metadata.row_group(group).column(i) for i in range(table.num_columns)))
                self.bytes_read = min(self.total_bytes, self.bytes_read + group_bytes)
                for row in table.to_pylist():
                    yield {key: _cell(value) for key, value in row.items()}

    @staticmethod
    def raw(row: dict) -> str:
        """A row's text for a rejects file: its JSON."""
        return json.dumps(row, default=str)


def write_text_rows(path: str | Path, fmt: str, batches: Iterable[pa.RecordBatch]) -> int:
    """Writes ``batches`` as one CSV (empty cell: null) or JSON Lines (``null``) file; returns the rows."""
    import csv

    rows = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = None
        for batch in batches:
            if fmt == "csv" and writer is None:
                writer = csv.writer(out)
                writer.writerow(batch.schema.names)
            for row in batch.to_pylist():
                if fmt == "csv":
                    writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v)
                                     for v in row.values()])
                else:
                    out.write(json.dumps(row) + "\n")
            rows += batch.num_rows
    return rows


def write_export(path: str | Path, fmt: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema | None = None
                 ) -> tuple[int, list[Path]]:
    """``batches`` as Parquet part files in the folder ``path``, or as one CSV / JSON Lines file ``path``:
    (rows, files written)."""
    if fmt == "parquet":
        counted = _Counted(batches)
        files = write_parts(path, counted, schema)
        return counted.rows, files
    return write_text_rows(path, fmt, batches), [Path(path)]


class _Counted:
    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self.batches, self.rows = batches, 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self.batches:
            self.rows += batch.num_rows
            yield batch


# -- run results in (cvh run import) ----------------------------------------------------------------------------

RESULT_COLUMNS = ("customer_id", "composite", "tier_id", "tier_level", "rank", "percentile", "previous_tier_level")
RESULT_REQUIRED = ("customer_id", "composite", "tier_id", "rank", "percentile")
FITTED_FILE = "_fitted_model.npz"   # a folder's fitted statistics (cvh batch score); "_": Parquet readers skip it
BATCH_FILE = "_cvh_batch.json"      # what cvh batch score scored with (model name, timings)
FITTED_PIECE = 16 * 2**20           # bytes of fitted statistics per message


def filesystem(path: str):
    """(fsspec filesystem, path within it) of a local path or an object-store URL (s3://, gs://, ... when
    the matching fsspec package is installed, e.g. s3fs)."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(str(path))
    except (ImportError, ValueError) as error:
        raise ParquetError(f"{path}: cannot open its storage ({error})") from None


class RunResultParts:
    """A folder of run results as ``cvh run export --format parquet`` and ``cvh batch score`` write them.

    Every part's footer is read when the object is made: a file that is not Parquet, a part whose columns
    differ from the first's, or a missing column raises ParquetError naming the file before any row is sent.
    Dimension columns are those that are not one of ``RESULT_COLUMNS``, in file order.
    """

    def __init__(self, path: str) -> None:
        self.fs, root = filesystem(path)
        self.root = root.rstrip("/")
        if self.fs.isdir(self.root):
            self.files = sorted(f for f in self.fs.glob(self.root + "/*.parquet") if not f.rsplit("/", 1)[-1]
                                .startswith(("_", ".")))
            if not self.files:
                raise ParquetError(f"{path}: the folder holds no .parquet files")
        elif self.fs.exists(self.root):
            self.files = [self.root]
        else:
            raise ParquetError(f"{path}: no such file or folder")
        self.rows, self.columns = 0, None
        for file in self.files:
            metadata = self._open(file).metadata
            names = metadata.schema.to_arrow_schema().names
            if self.columns is None:
                self.columns = names
                missing = [c for c in RESULT_REQUIRED if c not in names]
                if missing:
                    raise ParquetError(f"{file}: not run results: no column {', '.join(missing)} (the columns of "
                                       "`cvh run export` and `cvh batch score` are needed)")
            elif names != self.columns:
                raise ParquetError(f"{file}: its columns {names} differ from those of {self.files[0]} {self.columns}")
            self.rows += metadata.num_rows
        self.dimension_names = [c for c in self.columns if c not in RESULT_COLUMNS]

    def _open(self, file: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.fs.open(file, "rb"))
        except (pa.ArrowException, OSError) as error:
            raise ParquetError(f"{file}: not a readable Parquet file ({error})") from None

    def sidecar(self, name: str) -> bytes | None:
        """A file the folder holds beside its parts (FITTED_FILE, BATCH_FILE), or None."""
        path = f"{self.root}/{name}"
        return self.fs.cat_file(path) if self.fs.isdir(self.root) and self.fs.exists(path) else None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Row groups in file order (at most GROUP_ROWS rows each when written by this suite)."""
        for file in self.files:
            reader = self._open(file)
            for group in range(reader.num_row_groups):
                try:
                    table = reader.read_row_group(group, columns=["customer_id", *self.dimension_names,
                                                                  "composite", "tier_id", "rank", "percentile"])
                except (pa.ArrowException, OSError) as error:
                    raise ParquetError(f"{file}: row group {group} cannot be read ({error})") from None
                for batch in table.to_batches(max_chunksize=GROUP_ROWS):
                    yield batch


def _floats(column: pa.Array) -> np.ndarray:
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN


def run_import_requests(parts: RunResultParts, model: str, fitted: bytes | None,
                        on_rows: Callable[[int], None] | None = None) -> Iterator:
    """ImportRunResults messages: one per row group of ``parts``, then the fitted statistics in pieces.
    Nulls: no score (NaN), no rank (0) and no tier (""), which the server refuses by row."""
    from cvh.scoring.v1 import scoring_service_pb2 as spb

    first = True
    for batch in parts.batches():
        columns = dict(zip(batch.schema.names, batch.columns))
        dims = np.column_stack([_floats(columns[n]) for n in parts.dimension_names]) if parts.dimension_names \
            else np.empty((batch.num_rows, 0))
        message = spb.ImportRunResultsRequest(
            model=model if first else "",
            dimension_scores=common_pb2.ColumnarChunk(
                customer_ids=[c or "" for c in columns["customer_id"].to_pylist()],
                column_names=parts.dimension_names, values=to_matrix(dims)),
            composite=_floats(columns["composite"]).astype("<f8").tobytes(),
            tier_ids=[t or "" for t in columns["tier_id"].to_pylist()],
            ranks=columns["rank"].fill_null(0).cast(pa.int64()).to_numpy().astype("<i8").tobytes(),
            percentiles=_floats(columns["percentile"]).astype("<f8").tobytes())
        first = False
        yield message
        if on_rows:
            on_rows(batch.num_rows)
    fitted = fitted or b""
    for start in range(0, len(fitted), FITTED_PIECE):
        yield spb.ImportRunResultsRequest(model=model if first else "", fitted_model=fitted[start:start + FITTED_PIECE])
        first = False
    if first:  # no rows, no statistics: one message still names the model
        yield spb.ImportRunResultsRequest(model=model)
