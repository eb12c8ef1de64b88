"""Columnar chunks to NumPy arrays and back.

Bulk data crosses the wire as packed little-endian arrays (``Float64Matrix``,
``ColumnarChunk`` and the byte columns of run results), thousands of customers
per message. These helpers are the one place that packs and unpacks them; the
readers accumulate a stream of chunks and concatenate once at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cvh.adoption.v1 import adoption_service_pb2
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2
from cvh.scoring.v1 import scoring_service_pb2


def to_matrix(values: np.ndarray) -> common_pb2.Float64Matrix:
    """A rows x columns float64 array as a packed matrix."""
    values = np.asarray(values, dtype="<f8")
    if values.ndim != 2:
        raise ValueError(f"expected a 2-d array, got shape {values.shape}")
    return common_pb2.Float64Matrix(rows=values.shape[0], columns=values.shape[1],
                                    data=np.ascontiguousarray(values).tobytes())


def from_matrix(matrix: common_pb2.Float64Matrix) -> np.ndarray:
    """A packed matrix as a read-only rows x columns float64 array (no copy)."""
    return np.frombuffer(matrix.data, "<f8").reshape(matrix.rows, matrix.columns)


def to_chunk(customer_ids: Sequence[str], column_names: Sequence[str], values: np.ndarray) -> common_pb2.ColumnarChunk:
    return common_pb2.ColumnarChunk(customer_ids=list(customer_ids), column_names=list(column_names),
                                    values=to_matrix(values))


def customer_columns(customer_ids: Sequence[str], signal_names: Sequence[str] = (), values: np.ndarray | None = None,
                     *, display_names: Sequence[str] = (), parent_ids: Sequence[str] = (),
                     roles: np.ndarray | Sequence[int] = (), owners: Sequence[str] = (),
                     stages: np.ndarray | Sequence[int] = (),
                     team: dict[str, Sequence[str]] | None = None) -> registry_service_pb2.CustomerColumns:
    """One message of a columnar import; NaN values mean "not observed"; ``team``: per role, each row's persons
    joined by ";" ("" for none)."""
    if values is None or not len(signal_names):
        values = np.empty((len(customer_ids) if len(signal_names) else 0, len(signal_names)))
    return registry_service_pb2.CustomerColumns(
        customer_ids=list(customer_ids), display_names=list(display_names), parent_ids=list(parent_ids),
        stakeholder_roles=np.asarray(roles, np.uint8).tobytes(), owners=list(owners),
        signal_names=list(signal_names), signal_values=to_matrix(values),
        lifecycle_stages=np.asarray(stages, np.uint8).tobytes(),
        team_columns=[registry_service_pb2.TeamColumn(role=role, persons=list(persons))
                      for role, persons in (team or {}).items()])


def telemetry_chunk(customer_ids: Sequence[str], event_names: Sequence[str], customer_indices: np.ndarray,
                    event_indices: np.ndarray, event_times_us: np.ndarray, counts: np.ndarray | None = None,
                    user_ids: Sequence[str] = (), user_indices: np.ndarray | None = None, batch_id: str = ""
                    ) -> adoption_service_pb2.RecordTelemetryRequest:
    """One RecordTelemetry message: the tables once, each event's columns packed (positions into the tables,
    times in microseconds since the epoch; counts None for 1 each; user_indices -1 for no user)."""
    return adoption_service_pb2.RecordTelemetryRequest(
        batch_id=batch_id, customer_ids=list(customer_ids), event_names=list(event_names),
        customer_indices=np.asarray(customer_indices, "<u4").tobytes(),
        event_indices=np.asarray(event_indices, "<u4").tobytes(),
        event_times=np.asarray(event_times_us, "<i8").tobytes(),
        counts=np.asarray(counts, "<u4").tobytes() if counts is not None else b"",
        user_ids=list(user_ids), user_indices=np.asarray(user_indices, "<i4").tobytes() if user_indices is not None
        else b"")


def _concat(parts: list[np.ndarray], dtype, width: int | None = None) -> np.ndarray:
    if parts:
        return np.concatenate(parts)
    return np.empty((0, width) if width is not None else 0, dtype=dtype)


@dataclass
class SignalExport:
    """The registry's signal matrix: one row per customer, in customer_id order."""

    signal_names: list[str]
    customer_ids: list[str] = field(default_factory=list)
    values: np.ndarray | None = None
    parent_ids: list[str] = field(default_factory=list)
    roles: np.ndarray | None = None
    owners: list[str] = field(default_factory=list)
    stages: np.ndarray | None = None  # LifecycleStage values, uint8
    # Each customer's own current team: role -> one cell per row, the members' person ids joined by ";".
    team: dict[str, list[str]] = field(default_factory=dict)
    total_customers: int = 0
    # The registry's change-feed sequence the export is consistent with (watch the feed from there).
    sequence: int = 0


class SignalExportReader:
    """Accumulates ``ExportSignalMatrix`` messages; ``add`` each, then ``result()``."""

    def __init__(self, signal_names: Sequence[str]) -> None:
        self.export = SignalExport(list(signal_names))
        self._values: list[np.ndarray] = []
        self._roles: list[np.ndarray] = []
        self._stages: list[np.ndarray] = []

    def add(self, message: registry_service_pb2.ExportSignalMatrixResponse) -> int:
        """Takes one message; returns the customers read so far."""
        export = self.export
        export.total_customers = export.total_customers or message.total_customers
        export.sequence = export.sequence or message.sequence
        before = len(export.customer_ids)
        export.customer_ids.extend(message.chunk.customer_ids)
        for column in message.team:  # a role first seen here is empty for the rows before
            export.team.setdefault(column.role, [""] * before).extend(column.persons)
        for cells in export.team.values():  # a role this message lacks is empty for its rows
            cells.extend([""] * (len(export.customer_ids) - len(cells)))
        export.parent_ids.extend(message.parent_ids)
        export.owners.extend(message.owners)
        self._values.append(from_matrix(message.chunk.values))
        self._roles.append(np.frombuffer(message.stakeholder_roles, np.uint8))
        self._stages.append(np.frombuffer(message.lifecycle_stages, np.uint8))
        return len(export.customer_ids)

    def result(self) -> SignalExport:
        self.export.values = _concat(self._values, np.float64, len(self.export.signal_names))
        self.export.roles = _concat(self._roles, np.uint8)
        self.export.stages = _concat(self._stages, np.uint8)
        return self.export


def _grown(array: np.ndarray, filled: int, size: int) -> np.ndarray:
    """``array`` with room for ``size`` rows, its first ``filled`` kept."""
    grown = np.empty((size, *array.shape[1:]), array.dtype)
    grown[:filled] = array[:filled]
    return grown


@dataclass
class SignalMatrix:
    """A ``signals_only`` export: ids (an Arrow large_string array), the matrix and lifecycle stages."""

    signal_names: list[str]
    customer_ids: pa.Array
    values: np.ndarray  # float64 (rows, signals)
    stages: np.ndarray  # LifecycleStage values, uint8
    sequence: int = 0


class SignalMatrixReader:
    """Accumulates ``signals_only`` ``ExportSignalMatrix`` messages in a memory proportional to the base and no
    more: ids as Arrow strings (about 20 bytes per 12-character id, against about 70 as Python strings), values
    and stages written into arrays sized by the first message's total_customers (grown when more come)."""

    def __init__(self, signal_names: Sequence[str]) -> None:
        self.signal_names = list(signal_names)
        self.total_customers = 0
        self.sequence = 0
        self._ids: list[pa.Array] = []
        self._values = np.empty((0, len(self.signal_names)))
        self._stages = np.empty(0, np.uint8)
        self.rows = 0

    def add(self, message: registry_service_pb2.ExportSignalMatrixResponse) -> int:
        """Takes one message; returns the customers read so far."""
        return self.add_columns(message.chunk.customer_ids, from_matrix(message.chunk.values),
                                message.lifecycle_stages, message.total_customers, message.sequence)

    def add_columns(self, customer_ids: Sequence[str], values: np.ndarray, lifecycle_stages: bytes,
                    total_customers: int = 0, sequence: int = 0) -> int:
        """Takes one chunk as columns (a registry in this process hands them over without messages); returns
        the customers read so far."""
        self.total_customers = self.total_customers or total_customers
        self.sequence = self.sequence or sequence
        rows, stop = len(values), self.rows + len(values)
        if stop > len(self._values):  # the first message, or more than total_customers said
            size = max(stop, self.total_customers, 2 * len(self._values))
            self._values = _grown(self._values, self.rows, size)
            self._stages = _grown(self._stages, self.rows, size)
        self._values[self.rows:stop] = values
        stages = np.frombuffer(lifecycle_stages, np.uint8)
        self._stages[self.rows:stop] = stages if len(stages) == rows else 0
        self._ids.append(pa.array(customer_ids, pa.large_string()))
        self.rows = stop
        return stop

    def result(self) -> SignalMatrix:
        ids = pa.concat_arrays(self._ids) if self._ids else pa.array([], pa.large_string())
        self._ids = []
        return SignalMatrix(self.signal_names, ids, self._values[:self.rows], self._stages[:self.rows],
                            self.sequence)


@dataclass
class RunResults:
    """A scoring run's results in rank order (rank 1 first)."""

    run: str
    tiers: list[common_pb2.TierRef]
    dimension_names: list[str]
    customer_ids: list[str]
    dimension_scores: np.ndarray  # rows x dimensions, NaN where a dimension lacked coverage
    composite: np.ndarray         # NaN for customers with no score
    tier_levels: np.ndarray       # int32, 1 = top tier
    ranks: np.ndarray             # int64, 1 = best
    percentiles: np.ndarray
    previous_tier_levels: np.ndarray  # int32, 0 = not in the previous run
    # The run's outcome signals (column names of outcome_values) and per row their stored values (NaN missing);
    # lifecycle stages (uint8, 0 for runs made before they were stored) and bad-profit flags (int8: 1 flagged,
    # 0 not, -1 unknown: a run without flags).
    outcome_signals: list[str] = field(default_factory=list)
    outcome_values: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    lifecycle_stages: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))
    bad_profit: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))


class RunResultsReader:
    """Accumulates ``StreamRunResults`` chunks; ``add`` each, then ``result()``."""

    COLUMNS = (("composite", "<f8"), ("tier_levels", "<i4"), ("ranks", "<i8"), ("percentiles", "<f8"),
               ("previous_tier_levels", "<i4"))

    def __init__(self) -> None:
        self.run, self.tiers, self.dimension_names = "", [], []
        self.customer_ids: list[str] = []
        self._dims: list[np.ndarray] = []
        self._bad_profit: list[np.ndarray] = []
        self._columns: dict[str, list[np.ndarray]] = {name: [] for name, _ in self.COLUMNS}
        self.outcome_signals: list[str] = []
        self._outcomes: list[np.ndarray] = []
        self._stages: list[np.ndarray] = []

    def add(self, chunk: scoring_service_pb2.RunResultsChunk) -> int:
        if chunk.tiers:
            self.run, self.tiers = chunk.run, list(chunk.tiers)
            self.dimension_names = list(chunk.dimension_scores.column_names)
        self.customer_ids.extend(chunk.dimension_scores.customer_ids)
        self._dims.append(from_matrix(chunk.dimension_scores.values))
        rows = len(chunk.dimension_scores.customer_ids)
        self._bad_profit.append(np.frombuffer(chunk.bad_profit, np.uint8).astype(np.int8) if chunk.bad_profit
                                else np.full(rows, -1, np.int8))
        for name, dtype in self.COLUMNS:
            self._columns[name].append(np.frombuffer(getattr(chunk, name), dtype))
        self.outcome_signals = self.outcome_signals or list(chunk.outcome_signals)
        self._outcomes.append(from_matrix(chunk.outcome_values) if chunk.outcome_signals
                              else np.full((rows, 0), np.nan))
        self._stages.append(np.frombuffer(chunk.lifecycle_stages, np.uint8) if chunk.lifecycle_stages
                            else np.zeros(rows, np.uint8))
        return len(self.customer_ids)

    def result(self) -> RunResults:
        columns = {name: _concat(self._columns[name], dtype) for name, dtype in self.COLUMNS}
        outcomes = [o for o in self._outcomes if o.shape[1] == len(self.outcome_signals)]
        return RunResults(self.run, self.tiers, self.dimension_names, self.customer_ids,
                          _concat(self._dims, np.float64, len(self.dimension_names)), **columns,
                          outcome_signals=self.outcome_signals,
                          outcome_values=_concat(outcomes, np.float64, len(self.outcome_signals)),
                          lifecycle_stages=_concat(self._stages, np.uint8),
                          bad_profit=_concat(self._bad_profit, np.int8))


@dataclass
class BatchScores:
    """Scores of a ScoreBatch call, in the order the rows were sent."""

    customer_ids: list[str]
    dimension_names: list[str]
    dimension_scores: np.ndarray
    composite: np.ndarray
    tier_levels: np.ndarray


def read_batch_scores(responses) -> BatchScores:
    ids, names, dims, composite, tiers = [], [], [], [], []
    for response in responses:
        chunk = response.dimension_scores
        names = list(chunk.column_names)
        ids.extend(chunk.customer_ids)
        dims.append(from_matrix(chunk.values))
        composite.append(np.frombuffer(response.composite, "<f8"))
        tiers.append(np.frombuffer(response.tier_levels, "<i4"))
    return BatchScores(ids, names, _concat(dims, np.float64, len(names)), _concat(composite, np.float64),
                       _concat(tiers, np.int32))
