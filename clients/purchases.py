"""From orders to the four numbers of the lifetime-value models, and the holdout check of the models.

An order file (CSV, JSON Lines or Parquet: a file or a folder of part files) holds one order per row with a
customer id, a time and an amount. Orders are read into Arrow columns and summarised with NumPy group-bys
(a sort by customer and period, then segment sums), never a Python loop per order.

Per customer, as of a date and in a time unit, as ``lifetimes.utils.summary_data_from_transaction_data``
counts them: orders in the same period (day, week from Monday, calendar month) are one purchase whose
amount is their sum; ``frequency`` = purchase periods - 1 (repeat purchases); ``recency`` = last purchase
period - first; ``age`` = the as-of period - first; ``spend`` = mean amount of the repeat purchases (none
for a customer without one). Orders after the as-of day are left out.

The holdout check (``holdout``) summarises the orders before a date (the calibration period, ending the
period before it), fits BG/NBD and Gamma-Gamma on them, predicts each customer's purchases over the rest
(to the as-of date) and compares with the purchases made there, per decile of predicted purchases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clients import parquet, tabular
from scoring_engine import lifetime_value as lv

US_PER_DAY = 86_400_000_000
MONDAY = 4  # 1970-01-05, the first Monday after the epoch, is day 4


@dataclass(frozen=True)
class Orders:
    """Valid orders as arrays: customer code (index into ``customers``), time (µs since the epoch, UTC), amount;
    and how many rows were left out, by reason."""

    customers: np.ndarray  # str, distinct ids
    code: np.ndarray  # int64
    time_us: np.ndarray  # int64
    amount: np.ndarray  # float64
    rejected: dict[str, int]

    def __len__(self) -> int:
        return self.code.shape[0]


@dataclass(frozen=True)
class Summary:
    """Per customer (ids ascending) the four numbers, in ``unit``, as of ``as_of_us``."""

    customer_ids: np.ndarray
    frequency: np.ndarray
    recency: np.ndarray
    age: np.ndarray
    spend: np.ndarray  # NaN without repeat purchases
    unit: str
    as_of_us: int
    orders: int

    def __len__(self) -> int:
        return self.customer_ids.shape[0]

    def describe(self) -> dict:
        repeat = self.frequency > 0
        return {"customers": len(self), "orders": self.orders, "unit": self.unit,
                "as_of": iso(self.as_of_us), "with_repeat_purchases": int(repeat.sum()),
                "mean_frequency": _mean(self.frequency), "mean_recency": _mean(self.recency),
                "mean_age": _mean(self.age), "mean_spend": _mean(self.spend[repeat]),
                "age_zero": int((self.age == 0).sum())}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- reading ---------------------------------------------------------------------------------------------------

def read_orders(path: str | Path, fmt: str | None = None, customer_column: str = "customer_id",
                time_column: str = "time", amount_column: str = "amount") -> Orders:
    """The valid orders of a file; rows without a customer id, a time or an amount >= 0 are counted as rejected.
    A missing column or an unreadable file is an ``InputError``."""
    fmt = tabular.file_format(path, fmt)
    wanted = [customer_column, time_column, amount_column]
    try:
        table = _read_table(path, fmt, wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, parquet.ParquetError) as error:
        raise tabular.InputError(f"cannot read the orders in {path}: {error}") from None
    missing = [name for name in wanted if name not in table.column_names]
    if missing:
        raise tabular.InputError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(table.column_names)}); "
                                 "name the columns with --customer-column, --time-column, --amount-column")
    ids = pc.cast(table[customer_column], pa.string()) if table[customer_column].type != pa.string() \
        else table[customer_column]
    # Ids are checked and sorted once each, as a dictionary of the distinct ones.
    encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(ids)).combine_chunks()
    distinct = encoded.dictionary
    id_ok = pc.fill_null(pc.match_substring_regex(distinct, r"^[A-Za-z0-9._:-]{1,128}$"), False).to_numpy(
        zero_copy_only=False)
    code = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    good_id = (code >= 0) & id_ok[np.maximum(code, 0)]
    time_us = _times(table[time_column], time_column)
    amount = pc.cast(table[amount_column], pa.float64()).to_numpy(zero_copy_only=False)
    has_time = ~np.isnan(time_us)
    good_amount = np.isfinite(amount) & (amount >= 0)
    rejected = {"customer id missing or not an id ([A-Za-z0-9._:-], 1 to 128)": int((~good_id).sum()),
                "time missing": int((good_id & ~has_time).sum()),
                "amount missing, negative or not a number": int((good_id & has_time & ~good_amount).sum())}
    keep = good_id & has_time & good_amount
    # Codes in ascending id order: a summary then lists customers in id order.
    order = pc.array_sort_indices(distinct).to_numpy(zero_copy_only=False)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    customers = np.asarray(distinct.take(pa.array(order)).to_pylist(), dtype=str)
    return Orders(customers, rank[code[keep]], time_us[keep].astype(np.int64), amount[keep],
                  {k: v for k, v in rejected.items() if v})


def _read_table(path, fmt: str, wanted: list[str]) -> pa.Table:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        files = parquet.parquet_files(path)
        names = set(pq.read_schema(files[0]).names)
        return pa.concat_tables(pq.read_table(f, columns=[c for c in wanted if c in names]) for f in files)
    if fmt == "csv":
        import pyarrow.csv as pcsv

        header = pcsv.open_csv(path).schema.names
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            include_columns=[c for c in wanted if c in header],
            column_types={wanted[0]: pa.string(), wanted[1]: pa.string()}))
    import pyarrow.json as pjson

    return pjson.read_json(path)


def _times(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """µs since the epoch (UTC; a time without offset is UTC) as float64, NaN where missing."""
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        if pa.types.is_timestamp(kind) and kind.tz is not None:
            column = pc.cast(column, pa.timestamp("us", tz="UTC"))
        values = pc.cast(pc.cast(column, pa.timestamp("us")), pa.int64())
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    try:  # the usual forms, vectorised: a date, or a time in UTC ("...Z") or without offset
        naive = pc.replace_substring_regex(text, r"(?i)(z|\+00:?00)$", "")
        values = pc.cast(pc.cast(naive, pa.timestamp("us")), pa.int64())
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Other offsets: each distinct text parsed once.
    encoded = pc.dictionary_encode(text).combine_chunks()
    parsed = []
    for value in encoded.dictionary.to_pylist():
        try:
            parsed.append(float(tabular._parse_time(value, name)))
        except tabular.BadRow as error:
            raise tabular.InputError(f"{name}: {error.reason}") from None
    lookup = np.array(parsed + [np.nan])
    indices = encoded.indices.fill_null(len(parsed)).to_numpy(zero_copy_only=False)
    return lookup[indices]


# -- summarising -------------------------------------------------------------------------------------------------

def periods(time_us: np.ndarray, unit: str) -> np.ndarray:
    """The period (day, week from Monday, calendar month) of each time, as a whole number."""
    days = np.floor_divide(time_us, US_PER_DAY)
    if unit == "days":
        return days
    if unit == "weeks":
        return np.floor_divide(days - MONDAY, 7)
    return days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def summarize(orders: Orders, as_of_us: int, unit: str, since_us: int | None = None) -> Summary:
    """The four numbers per customer from the orders to the end of ``as_of_us``'s day (and from ``since_us``, if
    given): a date as of which to count means the whole day."""
    keep = orders.time_us < (as_of_us // US_PER_DAY + 1) * US_PER_DAY
    if since_us is not None:
        keep &= orders.time_us >= since_us
    code, period, amount = orders.code[keep], periods(orders.time_us[keep], unit), orders.amount[keep]
    n_orders = int(code.shape[0])
    if not n_orders:
        empty = np.zeros(0)
        return Summary(np.zeros(0, dtype=str), empty, empty, empty, empty, unit, as_of_us, 0)
    order = np.lexsort((period, code))
    code, period, amount = code[order], period[order], amount[order]
    # One purchase per customer and period, its amount the sum of the period's orders.
    starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (period[1:] != period[:-1])])
    p_code, p_period, p_amount = code[starts], period[starts], np.add.reduceat(amount, starts)
    first_of = np.flatnonzero(np.r_[True, p_code[1:] != p_code[:-1]])
    last_of = np.r_[first_of[1:], p_code.shape[0]] - 1
    count = (last_of - first_of + 1).astype(np.float64)
    first = p_period[first_of]
    frequency = count - 1
    repeat_total = np.add.reduceat(p_amount, first_of) - p_amount[first_of]
    with np.errstate(invalid="ignore", divide="ignore"):
        spend = np.where(frequency > 0, repeat_total / frequency, np.nan)
    as_of_period = periods(np.array([as_of_us]), unit)[0]
    return Summary(orders.customers[p_code[first_of]], frequency, (p_period[last_of] - first).astype(np.float64),
                   (as_of_period - first).astype(np.float64), spend, unit, as_of_us, n_orders)


# -- the holdout check --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HoldoutCheck:
    """Predicted against actual purchases in the holdout period, per decile of predicted purchases (1 = lowest)."""

    holdout_from_us: int
    as_of_us: int
    duration: float  # the holdout's length in the unit
    customers: int  # customers of the calibration period the models could use
    population: lv.PopulationFit
    deciles: list[dict]

    def to_dict(self) -> dict:
        return {"holdout_from": iso(self.holdout_from_us), "as_of": iso(self.as_of_us), "duration": self.duration,
                "customers": self.customers, "missing_reason": self.population.missing_reason,
                "fit": None if self.population.fit is None else self.population.fit.to_dict(),
                "deciles": self.deciles}


def holdout(orders: Orders, holdout_from_us: int, as_of_us: int, unit: str) -> HoldoutCheck:
    """Fits on the orders before ``holdout_from_us`` and compares predicted with actual purchases after it."""
    cal_end_period = periods(np.array([holdout_from_us]), unit)[0] - 1
    before = orders.time_us < holdout_from_us
    calibration = summarize(Orders(orders.customers, orders.code[before], orders.time_us[before],
                                   orders.amount[before], {}), holdout_from_us, unit)
    # Ages count to the end of the calibration period (the period before holdout_from).
    age = calibration.age - 1
    duration = float(periods(np.array([as_of_us]), unit)[0] - cal_end_period)
    population = lv.fit_population(calibration.frequency, calibration.recency, age, calibration.spend)
    usable = lv.usable_rows(calibration.frequency, calibration.recency, age, calibration.spend)
    if not population.usable or duration <= 0:
        reason = population.missing_reason or "the holdout period is empty: --holdout-from must be before --as-of"
        return HoldoutCheck(holdout_from_us, as_of_us, duration, int(usable.sum()),
                            lv.PopulationFit(population.fit, reason, population.customers, population.excluded), [])
    rows = np.flatnonzero(usable)
    x = calibration.frequency[rows]
    predicted = lv.predict(population.fit, x, calibration.recency[rows], age[rows],
                           np.where(x > 0, calibration.spend[rows], np.nan), steps=1, step=duration).expected_purchases
    actual = _holdout_purchases(orders, calibration.customer_ids[rows], holdout_from_us, as_of_us, unit)
    deciles = []
    for k, members in enumerate(np.array_split(np.argsort(predicted, kind="stable"), 10), start=1):
        if members.size:
            deciles.append({"decile": k, "customers": int(members.size),
                            "predicted_mean": float(predicted[members].mean()),
                            "actual_mean": float(actual[members].mean()),
                            "predicted_total": float(predicted[members].sum()),
                            "actual_total": float(actual[members].sum())})
    return HoldoutCheck(holdout_from_us, as_of_us, duration, int(rows.size), population, deciles)


def _holdout_purchases(orders: Orders, ids: np.ndarray, holdout_from_us: int, as_of_us: int, unit: str) -> np.ndarray:
    """Purchases (distinct periods) of each of ``ids`` from ``holdout_from_us`` to ``as_of_us``."""
    after = summarize(orders, as_of_us, unit, since_us=holdout_from_us)
    counts = np.zeros(ids.shape[0])
    if len(after):
        at = np.minimum(np.searchsorted(after.customer_ids, ids), len(after) - 1)
        found = after.customer_ids[at] == ids
        counts[found] = after.frequency[at[found]] + 1
    return counts


def draw_holdout(check: HoldoutCheck, out: str | Path, title: str = "") -> None:
    """Mean predicted and actual purchases per decile, as a PNG (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    k = np.array([d["decile"] for d in check.deciles])
    width = 0.4
    axes.bar(k - width / 2, [d["predicted_mean"] for d in check.deciles], width, label="predicted (BG/NBD)",
             color="#3e7cb1")
    axes.bar(k + width / 2, [d["actual_mean"] for d in check.deciles], width, label="actual", color="#f0a202")
    axes.set_xticks(k)
    axes.set_xlabel("decile of predicted purchases (1 = fewest)")
    axes.set_ylabel("purchases per customer in the holdout")
    axes.set_title(title or f"Holdout {iso(check.holdout_from_us)[:10]} to {iso(check.as_of_us)[:10]}: "
                            f"{check.customers:,} customers")
    axes.legend(frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(out, format="png")
