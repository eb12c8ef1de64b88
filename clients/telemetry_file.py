"""Telemetry files (CSV, JSON Lines, Parquet) read as RecordTelemetry messages, column by column.

Events come in volume (millions per file), so the file is read with Arrow's streaming readers and each
message is made from whole columns: customer ids and event names dictionary-encoded into the message's
tables and positions, times as microseconds. No Python object is made per event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from clients.parquet import ParquetError, parquet_files
from clients.tabular import InputError, file_format
from cvh.adoption.v1 import adoption_service_pb2 as pb
from wire.columns import telemetry_chunk

MAX_EVENTS_PER_MESSAGE = 100_000  # RecordTelemetryRequest's cap
REQUIRED = ("customer_id", "event", "time")
OPTIONAL = ("count", "user_id")
TELEMETRY_FILE_RULES = """\
Columns (a header row in CSV, keys in JSON Lines, column names in Parquet):
  customer_id  the registry's customer id (required)
  event        the event name, e.g. report.created (required)
  time         when it happened: RFC 3339 text (2026-12-01T09:30:00Z), a Parquet timestamp, or whole
               microseconds since 1970-01-01 UTC (required)
  count        how many times it happened (optional, default 1)
  user_id      who did it (optional): for rules on distinct users
Other columns are ignored. Rows with an empty customer_id, event or time are not sent (counted as
rejected here)."""


class TelemetryFile:
    """A telemetry file read as RecordTelemetryRequest messages of at most ``chunk_events`` events.

    The header is checked when the object is made (InputError). ``bytes_read``, ``events_sent`` and
    ``rejected_here`` advance as messages are yielded; ``line_of(message_index, position)`` is the line of an
    event the service reports (in CSV, its data row + 1 for the header; in Parquet, its row).
    """

    def __init__(self, path: str | Path, fmt: str | None = None, chunk_events: int = MAX_EVENTS_PER_MESSAGE,
                 batch_ids: bool = True) -> None:
        self.path, self.format = Path(path), file_format(path, fmt)
        self.chunk_events, self.batch_ids = chunk_events, batch_ids
        self.files = self._files()
        self.total_bytes = sum(f.stat().st_size for f in self.files)
        self.bytes_read = 0
        self.events_sent = 0
        self.rejected_here: list[int] = []  # lines not sent
        # Line of the first data row: CSV's header takes line 1.
        self._first_line = 2 if self.format == "csv" else 1
        self._message_rows: list[np.ndarray] = []  # per message, the file rows of its events
        names = self._schema_names()
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise InputError(f"{self.path}: no column {', '.join(missing)}; found {', '.join(names) or 'none'}\n"
                             + TELEMETRY_FILE_RULES)

    def _files(self) -> list[Path]:
        if self.format != "parquet":
            return [self.path]
        try:
            return parquet_files(self.path)
        except ParquetError as error:
            raise InputError(str(error)) from None

    def _schema_names(self) -> list[str]:
        try:
            if self.format == "parquet":
                return pq.ParquetFile(self.files[0]).schema_arrow.names
            first = next(self._batches(), None)
            return first.schema.names if first is not None else []
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{self.path}: cannot read it as {self.format} ({error})") from None

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """The file's record batches, advancing ``bytes_read``."""
        if self.format == "parquet":
            done = 0
            for file in self.files:
                reader = pq.ParquetFile(file)
                for group in range(reader.num_row_groups):
                    yield from reader.read_row_group(group).to_batches()
                    self.bytes_read = done + file.stat().st_size * (group + 1) // reader.num_row_groups
                done += file.stat().st_size
            return
        with open(self.path, "rb") as raw:
            # Empty cells are empty: no user, or a row not sent (no customer, event or time).
            reader = (pa_csv.open_csv(raw, convert_options=pa_csv.ConvertOptions(strings_can_be_null=True))
                      if self.format == "csv"
                      else pa_json.open_json(raw, read_options=pa_json.ReadOptions(block_size=1 << 22)))
            for batch in reader:
                self.bytes_read = min(raw.tell(), self.total_bytes)
                yield batch

    def requests(self) -> Iterator[pb.RecordTelemetryRequest]:
        first_row = self._first_line
        try:
            for batch in self._batches():
                for start in range(0, batch.num_rows, self.chunk_events):
                    piece = batch.slice(start, self.chunk_events)
                    message = self._message(piece, first_row + start)
                    if message is not None:
                        yield message
                first_row += batch.num_rows
        except pa.ArrowException as error:
            raise InputError(f"{self.path}: cannot read it as {self.format} ({error})") from None

    def _message(self, piece: pa.RecordBatch, first_row: int) -> pb.RecordTelemetryRequest | None:
        rows = np.arange(first_row, first_row + piece.num_rows)
        columns = {name: piece.column(name) for name in (*REQUIRED, *OPTIONAL) if name in piece.schema.names}
        times = event_times_us(columns["time"], self.path)
        present = ~(np.asarray(pc.is_null(columns["customer_id"])) | np.asarray(pc.is_null(columns["event"]))
                    | np.isnan(times))
        if not present.all():
            self.rejected_here += rows[~present].tolist()
            keep = pa.array(present)
            columns = {name: pc.filter(column, keep) for name, column in columns.items()}
            times, rows = times[present], rows[present]
        if not len(rows):
            return None
        customer_ids, customer_indices = _encoded(columns["customer_id"])
        event_names, event_indices = _encoded(columns["event"])
        counts = None
        if "count" in columns:
            counts = np.asarray(pc.fill_null(pc.cast(columns["count"], pa.int64(), safe=False), 1))
            counts = np.clip(counts, 0, 2**32 - 1)  # out of range: the service rejects 0 and too many by position
        user_ids, user_indices = [], None
        if "user_id" in columns and columns["user_id"].null_count < len(columns["user_id"]):
            user_ids, user_indices = _encoded(columns["user_id"])
        message = telemetry_chunk(customer_ids, event_names, customer_indices, event_indices,
                                  times.astype(np.int64), counts, user_ids, user_indices)
        if self.batch_ids:
            # The message's own content names it: a file sent again (or sent on after an interruption, or
            # grown at its end) gives the same batch ids for the same events, which the service skips.
            message.batch_id = hashlib.blake2b(message.SerializeToString(), digest_size=16).hexdigest()
        self._message_rows.append(rows)
        self.events_sent += len(rows)
        return message

    def line_of(self, message_index: int, position: int) -> int:
        return int(self._message_rows[message_index][position])


def _encoded(column: pa.Array) -> tuple[list[str], np.ndarray]:
    """A text column as its distinct values and each row's position among them (null: -1)."""
    encoded = pc.dictionary_encode(pc.cast(column, pa.string()))
    indices = np.asarray(pc.fill_null(encoded.indices, -1), dtype=np.int64)
    return encoded.dictionary.to_pylist(), indices


def event_times_us(column: pa.Array, path: Path) -> np.ndarray:
    """The time column as float64 microseconds since the epoch (NaN where empty): timestamps as they are
    (naive ones read as UTC), whole numbers as microseconds, text as RFC 3339."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            column = pc.cast(column, pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid as error:
            raise InputError(f"{path}: column time: not RFC 3339 times ({error})") from None
        kind = column.type
    if pa.types.is_timestamp(kind):
        micros = pc.cast(pc.cast(column, pa.timestamp("us", tz=kind.tz)), pa.int64())
    elif pa.types.is_integer(kind):
        micros = pc.cast(column, pa.int64())
    else:
        raise InputError(f"{path}: column time holds {kind}: give RFC 3339 text, timestamps or whole "
                         "microseconds since 1970-01-01 UTC")
    return np.asarray(pc.fill_null(pc.cast(micros, pa.float64()), np.nan))
