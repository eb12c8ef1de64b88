"""ImportRunResults: results scored elsewhere (a Dask cluster) checked as a whole, then stored as a completed run.

Messages are checked as they arrive and kept as arrays; the checks that need the whole import (every
registered customer once, ranks 1..N once each, the fitted statistics) run when the stream ends. Any
violation refuses the whole import: nothing is written. Bad rows are named by message and row
("messages[2].tier_ids[17]") and, in the description, by their row across the import, which is the row of
the Parquet files the client read.
"""

from __future__ import annotations

import numpy as np

import scoring_engine
from cvh.scoring.v1 import scoring_service_pb2 as pb
from services.common.errors import ServiceError, Violations, invalid_argument
from wire.columns import from_matrix

MAX_ROWS = 65_536                 # rows per message
MAX_FITTED_BYTES = 512 * 2**20    # the fitted statistics' archive, all pieces together
MAX_LISTED = Violations.MAX_REPORTED


class ImportViolations(Violations):
    """Violations that keep the first MAX_LISTED and count the rest (an import may hold millions of bad rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def add(self, field_path: str, description: str, reason: str = "") -> None:
        self.total += 1
        if len(self.items) < MAX_LISTED:
            super().add(field_path, description, reason)

    def error(self, what: str = "request") -> ServiceError:
        error = super().error(what)
        if self.total > len(self.items):
            error.message = f"{error.message}; {self.total:,} violations in all, the first {len(self.items)} listed"
        return error


class RunImport:
    """One ImportRunResults stream: ``add`` each message, then ``finish`` with the registered customer ids."""

    def __init__(self, model_id: str, version: int, model: scoring_engine.ValueModel) -> None:
        self.model_id, self.version, self.model = model_id, version, model
        self.dimension_names = [scoring_engine.model.enum_json_name(d.dimension) for d in model.dimensions]
        self.levels = {t.tier_id: level for level, t in enumerate(model.tiers, start=1)}
        self.violations = ImportViolations()
        self.ids: list[str] = []
        self.starts: list[int] = []  # first row of each message across the import
        self.columns: dict[str, list[np.ndarray]] = {"dimensions": [], "composite": [], "tier": [], "rank": [],
                                                     "percentile": []}
        self.fitted_pieces: list[bytes] = []
        self.fitted_bytes = 0

    # -- per message --------------------------------------------------------------------------------------

    def add(self, message: pb.ImportRunResultsRequest) -> None:
        index, first_row = len(self.starts), len(self.ids)
        at = f"messages[{index}]."
        chunk = message.dimension_scores
        rows = len(chunk.customer_ids)
        self.starts.append(first_row)
        self._add_fitted(message.fitted_model)
        shape = self._shape_violations(message, rows, at)
        if shape:
            for field_path, description, reason in shape:
                self.violations.add(at + field_path, description, reason)
            rows = 0  # the message's rows cannot be read: it counts as none
        if not rows:
            return
        self.ids.extend(chunk.customer_ids)
        dims = from_matrix(chunk.values)
        composite = np.frombuffer(message.composite, "<f8")
        ranks = np.frombuffer(message.ranks, "<i8")
        percentiles = np.frombuffer(message.percentiles, "<f8")
        tiers = np.array([self.levels.get(t, 0) for t in message.tier_ids], dtype=np.int32)

        def out_of_range(values: np.ndarray) -> np.ndarray:
            return ~(np.isnan(values) | ((values >= 0) & (values <= 100)))

        for row, column in np.argwhere(out_of_range(dims))[:MAX_LISTED].tolist():
            self._bad_row(at + f"dimension_scores.values[{row}][{self.dimension_names[column]}]", first_row + row,
                          f"must be within 0..100 or NaN (missing), got {dims[row, column]}",
                          "INVALID_DIMENSION_SCORES")
        for name, values in (("composite", composite), ("percentiles", percentiles)):
            for row in np.flatnonzero(out_of_range(values))[:MAX_LISTED].tolist():
                self._bad_row(at + f"{name}[{row}]", first_row + row,
                              f"must be within 0..100 or NaN (none), got {values[row]}", f"INVALID_{name.upper()}")
        for row in np.flatnonzero(ranks < 1)[:MAX_LISTED].tolist():
            self._bad_row(at + f"ranks[{row}]", first_row + row, f"ranks start at 1, got {ranks[row]}",
                          "INVALID_RANKS")
        for row in np.flatnonzero(tiers == 0)[:MAX_LISTED].tolist():
            self._bad_row(at + f"tier_ids[{row}]", first_row + row,
                          f"{message.tier_ids[row][:80]!r} is not a tier of models/{self.model_id}/versions/"
                          f"{self.version} ({', '.join(self.levels)})", "INVALID_TIER_IDS")
        self.columns["dimensions"].append(dims)
        self.columns["composite"].append(composite)
        self.columns["tier"].append(tiers - 1)
        self.columns["rank"].append(ranks)
        self.columns["percentile"].append(percentiles)

    def _shape_violations(self, message, rows: int, at: str) -> list[tuple[str, str, str]]:
        """What makes a message's columns unreadable: (field, description, reason) each."""
        chunk, found = message.dimension_scores, []
        if rows > MAX_ROWS:
            found.append(("dimension_scores.customer_ids", f"at most {MAX_ROWS:,} rows per message, got {rows:,}",
                          "INVALID_DIMENSION_SCORES"))
        if rows and list(chunk.column_names) != self.dimension_names:
            found.append(("dimension_scores.column_names",
                          f"must be the model's dimensions in its order: {', '.join(self.dimension_names)}",
                          "INVALID_DIMENSION_SCORES"))
        values = chunk.values
        width = len(self.dimension_names)
        if rows and (values.rows, values.columns, len(values.data)) != (rows, width, 8 * rows * width):
            found.append(("dimension_scores.values", f"must be {rows} x {width} float64 values (rows x dimensions)",
                          "INVALID_DIMENSION_SCORES"))
        for name, size in (("composite", 8), ("ranks", 8), ("percentiles", 8)):
            if len(getattr(message, name)) != size * rows:
                got = len(getattr(message, name))
                found.append((name, f"must hold {rows} values of {size} bytes, one per row, got {got} bytes",
                              f"INVALID_{name.upper()}"))
        if len(message.tier_ids) != rows:
            found.append(("tier_ids", f"must hold one tier_id per row ({rows}), got {len(message.tier_ids)}",
                          "INVALID_TIER_IDS"))
        return found

    def _bad_row(self, field_path: str, row: int, description: str, reason: str) -> None:
        self.violations.add(field_path, f"row {row:,}: {description}", reason)

    def _add_fitted(self, piece: bytes) -> None:
        if not piece:
            return
        self.fitted_bytes += len(piece)
        if self.fitted_bytes > MAX_FITTED_BYTES:
            raise invalid_argument("fitted_model", f"the fitted statistics may take at most {MAX_FITTED_BYTES:,} "
                                                   "bytes; nothing was written", "IMPORT_TOO_LARGE")
        self.fitted_pieces.append(piece)

    # -- the whole import ---------------------------------------------------------------------------------

    def finish(self, registered: list[str], churned: list[str] = ()) -> tuple[scoring_engine.ScoreResult, bytes | None]:
        """The import as scores in import order and the fitted archive, or INVALID_ARGUMENT naming every
        violation (the first MAX_LISTED). ``registered``: the customers a run scores; ``churned``: those it leaves
        out."""
        self._check_customers(registered, churned)
        n = len(self.ids)
        ranks = _concat(self.columns["rank"], np.int64)
        seen = np.bincount(ranks[(ranks >= 1) & (ranks <= n)], minlength=n + 1)[1:]
        for row in np.flatnonzero(ranks > n)[:MAX_LISTED].tolist():
            self._named(row, "ranks", f"rank {ranks[row]:,} beyond the {n:,} results", "INVALID_RANKS")
        if (seen != 1).any() and not (ranks > n).any():
            twice = np.flatnonzero(seen > 1)[:3] + 1
            self.violations.add("ranks", f"each rank from 1 to {n:,} must be given once; "
                                f"{int((seen == 0).sum()):,} missing, repeated: {', '.join(map(str, twice))}",
                                "INVALID_RANKS")
        fitted = self._fitted()
        self.violations.raise_if_any("results")
        result = scoring_engine.ScoreResult(
            _concat(self.columns["dimensions"], np.float64, len(self.dimension_names)),
            _concat(self.columns["composite"], np.float64), _concat(self.columns["tier"], np.int32),
            np.asarray(fitted.tier_thresholds if fitted else [], dtype=np.float64), tuple(self.dimension_names),
            self.model.tier_ids, ranks, _concat(self.columns["percentile"], np.float64))
        return result, fitted.to_bytes() if fitted else None

    def _named(self, row: int, field: str, description: str, reason: str) -> None:
        """A violation at ``row`` across the import, named by its message and row within it."""
        message = int(np.searchsorted(self.starts, row, side="right")) - 1
        path = "dimension_scores.customer_ids" if field == "customer_ids" else field
        self._bad_row(f"messages[{message}].{path}[{row - self.starts[message]}]", row, description, reason)

    def _check_customers(self, registered: list[str], churned: list[str] = ()) -> None:
        """Each registered customer exactly once: unknown, churned, repeated and missing ids named."""
        ids = np.array(self.ids) if self.ids else np.array([], dtype=str)
        known = np.sort(np.array(registered)) if registered else np.array([], dtype=str)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        repeated = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1
        run_start = np.maximum.accumulate(np.where(np.concatenate(([True], ordered[1:] != ordered[:-1])),
                                                   np.arange(ids.size), 0)) if ids.size else order
        for k in repeated[:MAX_LISTED].tolist():
            self._named(int(order[k]), "customer_ids", f"{str(ordered[k])!r} is given again (first at row "
                        f"{int(order[run_start[k]]):,})", "DUPLICATE_CUSTOMER")
        at = np.minimum(np.searchsorted(known, ids), max(known.size - 1, 0))
        unknown = np.flatnonzero(known[at] != ids) if known.size else np.arange(ids.size)
        gone = set(churned)
        for row in unknown[:MAX_LISTED].tolist():
            if ids[row] in gone:
                self._named(row, "customer_ids", f"{str(ids[row])!r} is churned: runs leave churned customers out "
                            "(`cvh batch score` drops them when the base has a lifecycle_stage column)",
                            "CHURNED_CUSTOMER")
            else:
                self._named(row, "customer_ids", f"{str(ids[row])[:130]!r} is not a registered customer",
                            "UNKNOWN_CUSTOMER")
        at = np.minimum(np.searchsorted(ordered, known), max(ordered.size - 1, 0))
        missing = np.flatnonzero(ordered[at] != known) if ordered.size else np.arange(known.size)
        for k in missing[:MAX_LISTED].tolist():
            self.violations.add("dimension_scores.customer_ids", f"registered customer {str(known[k])!r} has no result",
                                "MISSING_CUSTOMER")
        self.violations.total += max(0, missing.size - MAX_LISTED)  # counted, not listed

    def _fitted(self) -> scoring_engine.FittedModel | None:
        if not self.fitted_pieces:
            return None
        try:
            fitted = scoring_engine.FittedModel.from_bytes(b"".join(self.fitted_pieces))
        except scoring_engine.ScoringError as error:
            self.violations.add("fitted_model", f"not fitted statistics of scoring_engine: {error}",
                                "INVALID_FITTED_MODEL")
            return None
        if _describing(fitted.model) != _describing(self.model):
            self.violations.add("fitted_model", f"fitted for another model than models/{self.model_id}/versions/"
                                f"{self.version} (its signals, dimensions, tiers or hysteresis differ)",
                                "INVALID_FITTED_MODEL")
            return None
        if fitted.tier_thresholds is None:
            self.violations.add("fitted_model", "holds no tier cut-offs (FittedModel.with_tier_thresholds)",
                                "INVALID_FITTED_MODEL")
            return None
        return fitted


def _describing(model: scoring_engine.ValueModel) -> dict:
    """What scores depend on: the model without its description."""
    spec = model.to_dict()
    spec.pop("description", None)
    return spec


def _concat(parts: list[np.ndarray], dtype, width: int | None = None) -> np.ndarray:
    if parts:
        return np.concatenate(parts).astype(dtype, copy=False)
    return np.empty((0, width) if width is not None else 0, dtype=dtype)
