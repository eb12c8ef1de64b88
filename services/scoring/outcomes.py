"""Outcome reports: what happened between two runs of a model to the customers of each tier of the first.

Each run stored, with every result, its outcome signals' values and bad-profit flag (scoring_engine.outcomes),
so a report compares the values of each run's own time. The cohort of a tier is the customers the start run
scored in it; a customer the end run did not score (churned or deleted) is lost. The runs are joined on
customer id with Arrow's hash join (pyarrow.compute.index_in) and every figure is a NumPy group-by
(np.bincount over the start tier), so a report costs no Python per customer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Connection, Row

import scoring_engine
from cvh.common.v1 import common_pb2
from cvh.scoring.v1 import scoring_service_pb2 as pb
from scoring_engine import outcomes
from scoring_engine.model import OUTCOME_ROLES, NpsScale
from services.registry.customers import set_timestamp
from services.scoring import store

# Roles whose lines are a SignalOutcome field of TierOutcome named as the role (money has lines of its own).
SIGNAL_ROLES = tuple(role for role in OUTCOME_ROLES if role != "money")


@dataclass
class RunColumns:
    """A run's results as columns, in rank order."""

    run: Row
    model: scoring_engine.ValueModel
    tiers: list[common_pb2.TierRef]
    ids: pa.Array
    levels: np.ndarray  # int32, 1 = top
    signals: list[str]  # outcome signals stored (columns of values); none for runs made before
    values: np.ndarray | None  # float64 (rows, signals); None: the run stored no outcome values
    bad_profit: np.ndarray  # bool

    def role_values(self, role: str) -> tuple[np.ndarray | None, str]:
        """The role's values per row, or None and why not."""
        name = f"models/{self.run.model_id}/versions/{self.run.model_version}"
        spec = self.model.outcomes
        signal = spec.signal_by_role.get(role) if spec is not None else None
        if not signal:
            return None, f"no {role} signal: {name} names none"
        if self.values is None or signal not in self.signals:
            return None, f"no {role} values: runs/{self.run.run_id} stored none (made before runs stored outcomes)"
        column = self.values[:, self.signals.index(signal)]
        return column, ""

    @property
    def nps_scale(self) -> NpsScale:
        return self.model.outcomes.nps_scale if self.model.outcomes is not None else NpsScale.UNSPECIFIED


def load_run(conn: Connection, run: Row, model: scoring_engine.ValueModel,
             tiers: list[common_pb2.TierRef]) -> RunColumns:
    blobs, levels, value_parts, flag_parts = store.read_outcome_columns(conn, run.run_id)
    signals = store.outcome_signals(run)
    ids = _ids_of(blobs)
    values, flags = None, np.zeros(len(levels), bool)
    if run.outcome_signals_json is not None and all(v is not None for v in value_parts):
        # Row-major blocks one after the other are the row-major whole.
        values = np.concatenate(value_parts).reshape(len(levels), len(signals)) if value_parts else \
            np.empty((0, len(signals)))
        flags = np.concatenate(flag_parts).astype(bool) if flag_parts else flags
    return RunColumns(run, model, tiers, ids, levels, signals, values, flags)


def _ids_of(blobs: list[bytes]) -> pa.Array:
    """The ids of "\\n"-joined blobs as one Arrow array (split in Arrow, no Python string per id)."""
    if not blobs:
        return pa.array([], pa.large_binary())
    return pc.list_flatten(pc.split_pattern(pa.array(blobs, pa.large_binary()), pattern=b"\n"))


class _Groups:
    """Sums and counts per start tier (np.bincount); the total is the sum over the tiers."""

    def __init__(self, group: np.ndarray, tiers: int) -> None:
        self.group, self.tiers = group, tiers

    def count(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.group[mask], minlength=self.tiers)[:self.tiers]

    def sum(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if mask is None:
            return np.bincount(self.group, weights=values, minlength=self.tiers)[:self.tiers]
        return np.bincount(self.group[mask], weights=values[mask], minlength=self.tiers)[:self.tiers]


def period(start: RunColumns, end: RunColumns) -> pb.OutcomePeriod:
    """The outcomes between two runs of one model, per tier of the start run and in total."""
    answer = pb.OutcomePeriod(
        from_run=f"runs/{start.run.run_id}", to_run=f"runs/{end.run.run_id}",
        from_model=f"models/{start.run.model_id}/versions/{start.run.model_version}",
        to_model=f"models/{end.run.model_id}/versions/{end.run.model_version}")
    set_timestamp(answer.from_time, start.run.end_time_us)
    set_timestamp(answer.to_time, end.run.end_time_us)
    n_tiers = len(start.tiers)
    # Where each start customer is in the end run (-1: lost), and which end customers are new.
    at = pc.fill_null(pc.index_in(start.ids, value_set=end.ids), -1).to_numpy(zero_copy_only=False)
    retained = at >= 0
    kept = at[retained]
    gained = np.ones(len(end.ids), bool)  # end customers no start customer matched (ids are unique in a run)
    gained[kept] = False
    groups = _Groups(np.clip(start.levels - 1, 0, max(n_tiers - 1, 0)), n_tiers)
    lines = [pb.TierOutcome(tier=tier) for tier in start.tiers]
    total = pb.TierOutcome()
    notes: list[str] = []

    def at_end(values: np.ndarray) -> np.ndarray:
        """End-run values gathered onto the start rows (NaN for the lost)."""
        gathered = np.full(len(at), np.nan)
        gathered[retained] = values[kept]
        return gathered

    def put(field: str, per_tier, overall) -> None:
        for line, value in zip(lines, per_tier):
            _set(line, field, value)
        _set(total, field, overall)

    customers = groups.count(np.ones(len(at), bool))
    stayed_in = groups.count(retained)
    put("customers", customers, customers.sum())
    put("customers_retained", stayed_in, stayed_in.sum())
    put("customers_lost", customers - stayed_in, (customers - stayed_in).sum())
    put("logo_retention", _ratios(stayed_in, customers), _ratio(stayed_in.sum(), customers.sum()))
    answer.customers_gained = int(gained.sum())

    # Tier movement among the retained (a lower level is a higher tier).
    end_levels = np.zeros(len(at), np.int32)
    end_levels[retained] = end.levels[kept]
    for field, mask in (("moved_up", end_levels < start.levels), ("moved_down", end_levels > start.levels),
                        ("stayed", end_levels == start.levels)):
        counts = groups.count(retained & mask)
        put(field, counts, counts.sum())

    # Money: missing counts 0; the lost count 0 at the end.
    money0, why0 = start.role_values("money")
    money1, why1 = end.role_values("money")
    end_money = None
    if money0 is None or money1 is None:
        notes.append(why0 or why1)
    else:
        m0 = np.nan_to_num(money0)
        end_money = np.nan_to_num(money1)
        m1 = np.nan_to_num(at_end(end_money))
        sums = {"money_start": groups.sum(m0), "money_end": groups.sum(m1), "money_lost": groups.sum(m0, ~retained),
                "kept": groups.sum(np.minimum(m0, m1))}
        for field in ("money_start", "money_end", "money_lost"):
            put(field, sums[field], sums[field].sum())
        put("gross_revenue_retention", _ratios(sums["kept"], sums["money_start"]),
            _ratio(sums["kept"].sum(), sums["money_start"].sum()))
        put("net_revenue_retention", _ratios(sums["money_end"], sums["money_start"]),
            _ratio(sums["money_end"].sum(), sums["money_start"].sum()))
        answer.money_gained = float(end_money[gained].sum())

    for role in SIGNAL_ROLES:
        values0, why0 = start.role_values(role)
        values1, why1 = end.role_values(role)
        if values0 is None or values1 is None:
            notes.append(why0 or why1)
            continue
        gathered = at_end(values1)
        if np.isnan(values0).all() and np.isnan(gathered).all():
            signal = start.model.outcomes.signal_by_role[role]
            notes.append(f"no {role} values: no customer of runs/{start.run.run_id} has a value of {signal}")
            continue
        _signal_lines(groups, lines, total, role, values0, gathered)
        if role == "nps":
            _nps_shares(groups, lines, total, values0, gathered, start.nps_scale, end.nps_scale)

    # Bad profits: the end run's flags, per start tier, among the retained.
    rule = end.model.outcomes.bad_profit if end.model.outcomes is not None else None
    if rule is None:
        notes.append(f"no bad-profit rule: {answer.to_model} has none")
    else:
        flagged = np.zeros(len(at), bool)
        flagged[retained] = end.bad_profit[kept]
        counts = groups.count(flagged)
        put("bad_profit_customers", counts, counts.sum())
        if end_money is not None:
            m1 = np.nan_to_num(at_end(end_money))
            money = groups.sum(m1, flagged)
            put("bad_profit_money", money, money.sum())
            ends = np.array([line.money_end for line in lines])
            put("bad_profit_money_share", _ratios(money, ends), _ratio(money.sum(), ends.sum()))
    answer.tiers.extend(lines)
    answer.total.CopyFrom(total)
    answer.notes.extend(dict.fromkeys(n for n in notes if n))
    return answer


def _signal_lines(groups: _Groups, lines, total, field: str, start: np.ndarray, end: np.ndarray) -> None:
    """A SignalOutcome per tier and in total: means and sums over the customers with a value."""
    valid0, valid1 = ~np.isnan(start), ~np.isnan(end)
    n0, n1 = groups.count(valid0), groups.count(valid1)
    s0, s1 = groups.sum(np.nan_to_num(start), valid0), groups.sum(np.nan_to_num(end), valid1)
    for target, c0, c1, t0, t1 in [*((line, *k) for line, *k in zip(lines, n0, n1, s0, s1)),
                                   (total, n0.sum(), n1.sum(), s0.sum(), s1.sum())]:
        outcome = getattr(target, field)
        outcome.customers_start, outcome.customers_end = int(c0), int(c1)
        if c0:
            outcome.mean_start, outcome.sum_start = float(t0 / c0), float(t0)
        if c1:
            outcome.mean_end, outcome.sum_end = float(t1 / c1), float(t1)
        if c0 and c1:
            outcome.change = outcome.mean_end - outcome.mean_start


def _nps_shares(groups: _Groups, lines, total, start: np.ndarray, end: np.ndarray, scale0: NpsScale,
                scale1: NpsScale) -> None:
    for values, scale, suffix in ((start, scale0, "start"), (end, scale1, "end")):
        valid = groups.count(~np.isnan(values))
        for kind, classify in (("promoter", outcomes.promoters), ("detractor", outcomes.detractors)):
            counts = groups.count(classify(values, scale))
            field = f"{kind}_share_{suffix}"
            for line, share in zip(lines, _ratios(counts, valid)):
                _set(line, field, share)
            _set(total, field, _ratio(counts.sum(), valid.sum()))


def _ratio(numerator, denominator) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _ratios(numerators, denominators) -> list[float | None]:
    return [_ratio(a, b) for a, b in zip(numerators, denominators)]


def _set(message, field: str, value) -> None:
    if value is None:
        return
    if isinstance(value, (np.integer, int)) or message.DESCRIPTOR.fields_by_name[field].cpp_type in (1, 2, 3, 4):
        setattr(message, field, int(value))
    else:
        setattr(message, field, float(value))

