"""What a run stores for outcome reports (a model's ``outcomes`` block, ``model.OutcomeSpec``): the outcome
signals' values, and the bad-profit flag of its rule (``model.BadProfitRule``); and how an NPS value counts."""

from __future__ import annotations

import numpy as np

from scoring_engine.model import NpsScale, ValueModel

__all__ = ["bad_profit_flags", "detractors", "outcome_columns", "promoters"]

# Account NPS (-100..100): an account at or above this is a promoter account, at or below the detractor bound a
# detractor account (at least as many detractors as promoters among its respondents).
ACCOUNT_PROMOTER_AT_LEAST = 50.0
ACCOUNT_DETRACTOR_AT_MOST = 0.0


def outcome_columns(model: ValueModel, matrix: np.ndarray, names: list[str]) -> tuple[list[str], np.ndarray]:
    """(the model's stored outcome signals, their values: rows x signals, NaN where missing or not exported)."""
    signals = list(model.outcomes.stored_signals) if model.outcomes is not None else []
    values = np.full((matrix.shape[0], len(signals)), np.nan)
    index = {name: i for i, name in enumerate(names)}
    for k, name in enumerate(signals):
        if name in index:
            values[:, k] = matrix[:, index[name]]
    return signals, values


def bad_profit_flags(model: ValueModel, dimension_scores: np.ndarray, signals: list[str],
                     values: np.ndarray) -> np.ndarray:
    """1 where the model's bad-profit rule flags the row, else 0 (uint8). The top share is counted among the rows
    with a score on the rule's dimension, ties at the cut included; a missing score or value never flags."""
    rows = dimension_scores.shape[0]
    flags = np.zeros(rows, np.uint8)
    rule = model.outcomes.bad_profit if model.outcomes is not None else None
    if rule is None or rows == 0:
        return flags
    column = [d.dimension for d in model.dimensions].index(rule.effective_dimension)
    scores = dimension_scores[:, column]
    scored = scores[~np.isnan(scores)]
    if scored.size == 0:
        return flags
    top = max(1, int(np.ceil(rule.effective_top_share * scored.size - 1e-9)))
    cut = np.partition(scored, scored.size - top)[scored.size - top]
    value = values[:, signals.index(rule.signal or model.outcomes.nps_signal)]
    kind, bound = rule.bound
    matches = value <= bound if kind == "at_most" else value >= bound  # NaN compares False
    flags[(scores >= cut) & matches] = 1
    return flags


def promoters(values: np.ndarray, scale: NpsScale) -> np.ndarray:
    """Whether each NPS value is a promoter (account scale: >= 50; respondent scale: 9-10); NaN: False."""
    return values >= (9.0 if scale == NpsScale.RESPONDENT else ACCOUNT_PROMOTER_AT_LEAST)


def detractors(values: np.ndarray, scale: NpsScale) -> np.ndarray:
    """Whether each NPS value is a detractor (account scale: <= 0; respondent scale: 0-6); NaN: False."""
    return values <= (6.0 if scale == NpsScale.RESPONDENT else ACCOUNT_DETRACTOR_AT_MOST)
