"""use_case_adoption in the default model's feedback and innovation dimension: read when a base carries it,
left out (not imputed as 0) when no customer does, so a base without a value hierarchy scores as before; and
the peers' Jaccard kernel against its NumPy reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

import scoring_engine as se
from scoring_engine import adoption_peers
from scoring_engine import reference as R
from scoring_engine.model import ValueModel


def without_adoption() -> ValueModel:
    """The default model as it was before it read use_case_adoption."""
    document = json.loads(se.default_model().to_json())
    document["signals"] = [s for s in document["signals"] if s["name"] != "use_case_adoption"]
    for dimension in document["dimensions"]:
        dimension["weights"] = [w for w in dimension["weights"] if w["signal"] != "use_case_adoption"]
    return ValueModel.from_json(json.dumps(document))


def base(n: int = 3000, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.lognormal(1.0, 1.0, size=(n, len(se.default_model().signals)))
    X[rng.random(X.shape) < 0.15] = np.nan
    return X


def test_a_base_without_a_value_hierarchy_scores_as_before():
    model, before = se.default_model(), without_adoption()
    names = list(model.signal_names)
    X = base()
    X[:, names.index("use_case_adoption")] = np.nan  # no customer carries it
    old_columns = [names.index(s) for s in before.signal_names]
    now = se.score(se.fit(model, X), X, with_rank=True)
    then = se.score(se.fit(before, X[:, old_columns]), X[:, old_columns], with_rank=True)
    np.testing.assert_array_equal(now.dimensions, then.dimensions)
    np.testing.assert_array_equal(now.composite, then.composite)
    np.testing.assert_array_equal(now.tier, then.tier)
    reference = R.score_reference(R.fit_reference(model, X), X)
    np.testing.assert_allclose(reference.dimensions, now.dimensions, rtol=1e-12, atol=1e-9)
    frozen = se.fit(model, X).with_tier_thresholds(now.tier_thresholds)
    explained = se.explain(frozen, X[0])
    left_out = next(s for s in explained.signals if s.signal == "use_case_adoption")
    assert not left_out.imputed and left_out.weight_share == 0.0


def test_where_it_is_carried_more_use_cases_achieved_score_higher_in_feedback():
    model = se.default_model()
    names = list(model.signal_names)
    X = base()
    X[:, :] = X[0]  # the same customer again and again, but for its adoption
    adoption = np.linspace(0.0, 1.0, len(X))
    X[:, names.index("use_case_adoption")] = adoption
    fitted = se.fit(model, X)
    feedback = se.score(fitted, X).dimensions[:, [d.dimension for d in model.dimensions].index(
        se.ValueDimension.FEEDBACK)]
    assert np.all(np.diff(feedback) > 0)
    reference = R.score_reference(R.fit_reference(model, X), X)
    np.testing.assert_allclose(reference.dimensions, se.score(fitted, X).dimensions, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("n, items", [(0, 5), (1, 1), (7, 64), (5000, 130)])
def test_jaccard_kernel_matches_the_reference(n, items):
    rng = np.random.default_rng(n + items)
    achieved = rng.random((n, items)) < 0.3
    achieved[:1] = False  # an empty set, against an empty and a non-empty target
    for target in (np.zeros(items, bool), rng.random(items) < 0.4):
        got = adoption_peers.jaccard(adoption_peers.bitsets(achieved), adoption_peers.bitsets(target[None, :])[0])
        np.testing.assert_array_equal(got, R.jaccard_reference(achieved, target))
