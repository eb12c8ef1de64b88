"""Value models: JSON round trips, the default model, and every validation error with its field path."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

import scoring_engine as se
from scoring_engine.model import ValueDimension


def base() -> dict:
    """A small valid model document that the validation cases mutate."""
    return {
        "model_id": "m1",
        "signals": [
            {"name": "revenue", "transform": "TRANSFORM_LOG1P", "normalization": "NORMALIZATION_Z_SCORE"},
            {"name": "nps", "normalization": "NORMALIZATION_BANDS",
             "bands": [{"lower_bound": -100.0, "score": 0.0}, {"lower_bound": 0.0, "score": 0.5}]},
            {"name": "margin", "transform": "TRANSFORM_CLIP", "clip_min": 0.0, "clip_max": 1.0,
             "fixed_min": 0.0, "fixed_max": 1.0},
        ],
        "dimensions": [
            {"dimension": "VALUE_DIMENSION_PROFITABILITY",
             "weights": [{"signal": "revenue", "weight": 2.0}, {"signal": "margin", "weight": 1.0}],
             "composite_weight": 0.6},
            {"dimension": "VALUE_DIMENSION_REPUTATION", "weights": [{"signal": "nps", "weight": 1.0}],
             "missing_policy": "MISSING_POLICY_MIN_COVERAGE", "min_coverage": 0.5, "composite_weight": 0.4},
        ],
        "tiers": [
            {"tier_id": "gold", "display_name": "Gold", "min_composite": 70.0},
            {"tier_id": "silver", "min_composite": 40.0},
            {"tier_id": "bronze"},
        ],
        "hysteresis_points": 2.0,
    }


def violations_of(document) -> list[tuple[str, str]]:
    with pytest.raises(se.ModelValidationError) as info:
        se.ValueModel.from_dict(document)
    assert all(isinstance(v, se.FieldViolation) for v in info.value.violations)
    return [(v.field, v.description) for v in info.value.violations]


def test_base_document_is_valid_and_round_trips():
    model = se.ValueModel.from_dict(base())
    assert model.signal_names == ("revenue", "nps", "margin")
    assert model.to_dict() == base() | {"signals": model.to_dict()["signals"]}
    assert se.ValueModel.from_dict(model.to_dict()) == model
    assert se.ValueModel.from_json(model.to_json()) == model
    assert json.loads(model.to_json()) == model.to_dict()


def test_to_dict_is_proto3_json():
    document = base()
    document["signals"][0]["direction"] = "DIRECTION_UNSPECIFIED"  # a default: omitted on output
    document["dimensions"][0]["missing_value"] = 0.0
    out = se.ValueModel.from_dict(document).to_dict()
    assert "direction" not in out["signals"][0]
    assert "missing_value" not in out["dimensions"][0]
    assert out["signals"][2]["clip_min"] == 0.0  # optional fields keep an explicit zero
    assert out["tiers"][2] == {"tier_id": "bronze"}


def test_json_names_enum_numbers_and_numeric_strings_are_accepted():
    document = base()
    document["hysteresisPoints"] = document.pop("hysteresis_points")
    document["signals"][2]["clipMin"] = document["signals"][2].pop("clip_min")
    document["signals"][0]["normalization"] = 2  # Z_SCORE by number
    document["tiers"][0]["min_composite"] = "70"
    model = se.ValueModel.from_dict(document)
    assert model == se.ValueModel.from_dict(base())


def test_bookkeeping_fields_pass_through():
    document = base() | {"name": "models/m1/versions/3", "version": 3, "change_note": "why",
                         "creator": "ana", "create_time": "2025-01-01T00:00:00Z", "active": True}
    model = se.ValueModel.from_dict(document)
    assert model.version == 3 and model.active
    assert se.ValueModel.from_dict(model.to_dict()) == model


def test_default_model():
    model = se.default_model()
    assert model.model_id == "default"
    assert len(model.signals) == 17
    assert [d.dimension for d in model.dimensions] == [ValueDimension.PROFITABILITY, ValueDimension.STRATEGIC_GROWTH,
                                                       ValueDimension.REPUTATION, ValueDimension.FEEDBACK]
    assert model.tier_ids == ("strategic", "key", "growth", "core", "standard")
    assert [t.population_percent for t in model.tiers] == [1.0, 4.0, 15.0, 30.0, None]
    assert model.hysteresis_points == 2.0
    registry = {"annual_revenue", "gross_margin", "tenure_years", "predicted_ltv", "expansion_potential",
                "strategic_fit", "product_lines", "logo_value", "referenceability", "audience_reach", "nps",
                "feedback_items_90d", "beta_programs", "feature_adoption"}
    assert registry <= set(model.signal_names)
    for name in model.signal_names:
        assert name in model.description  # every signal is documented
    assert se.ValueModel.from_json(model.to_json()) == model


def test_direct_construction_validates():
    with pytest.raises(se.ModelValidationError) as info:
        se.ValueModel(model_id="Bad Id")
    fields = [v.field for v in info.value.violations]
    assert fields[:1] == ["model_id"] and "signals" in fields and "tiers" in fields


def mutate(path_and_value):
    """A copy of base() with one change: (list of keys, value); value REMOVE deletes the key."""
    keys, value = path_and_value
    document = copy.deepcopy(base())
    node = document
    for key in keys[:-1]:
        node = node[key]
    if value is REMOVE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return document


REMOVE = object()

CASES = [
    # (change, expected field path, words in the description)
    ((["model_id"], "Default"), "model_id", "[a-z0-9-]"),
    ((["model_id"], REMOVE), "model_id", "required"),
    ((["surprise"], 1), "surprise", "unknown field"),
    ((["signals", 0, "nmae"], "x"), "signals[0].nmae", "unknown field"),
    ((["signals"], []), "signals", "at least one"),
    ((["signals", 1, "name"], "revenue"), "signals[1].name", "duplicate signal \"revenue\""),
    ((["signals", 1, "name"], "NPS"), "signals[1].name", "[a-z0-9_]"),
    ((["signals", 0, "name"], 7), "signals[0].name", "must be a string"),
    ((["signals", 0, "transform"], "TRANSFORM_SQRT"), "signals[0].transform", "unknown value"),
    ((["signals", 0, "transform"], 9), "signals[0].transform", "unknown value"),
    ((["signals", 0, "direction"], "UP"), "signals[0].direction", "unknown value"),
    ((["signals", 0, "clip_min"], 1.0), "signals[0].clip_min", "only used by TRANSFORM_CLIP"),
    ((["signals", 2, "clip_min"], 5.0), "signals[2].clip_max", "greater than clip_min"),
    ((["signals", 2, "clip_min"], "NaN"), "signals[2].clip_min", "finite"),
    ((["signals", 2, "clip_max"], "x"), "signals[2].clip_max", "must be a number"),
    ((["signals", 0, "fixed_min"], 0.0), "signals[0].fixed_min", "only used by NORMALIZATION_MIN_MAX"),
    ((["signals", 2, "fixed_max"], -1.0), "signals[2].fixed_max", "greater than fixed_min"),
    ((["signals", 2, "fixed_max"], "Infinity"), "signals[2].fixed_max", "finite"),
    ((["signals", 1, "bands"], []), "signals[1].bands", "at least one band"),
    ((["signals", 1, "bands", 1, "lower_bound"], -100.0), "signals[1].bands[1].lower_bound", "ascend"),
    ((["signals", 1, "bands", 1, "score"], 1.5), "signals[1].bands[1].score", "0 to 1"),
    ((["signals", 0, "bands"], [{"lower_bound": 0, "score": 1}]), "signals[0].bands", "only used by NORMALIZATION_BANDS"),
    ((["signals", 0], "revenue"), "signals[0]", "JSON object"),
    ((["dimensions"], []), "dimensions", "at least one"),
    ((["dimensions", 0, "dimension"], REMOVE), "dimensions[0].dimension", "required"),
    ((["dimensions", 1, "dimension"], "VALUE_DIMENSION_PROFITABILITY"), "dimensions[1].dimension", "duplicate dimension"),
    ((["dimensions", 1, "weights"], []), "dimensions[1].weights", "at least one"),
    ((["dimensions", 1, "weights", 0, "signal"], "nps2"), "dimensions[1].weights[0].signal", "unknown signal \"nps2\""),
    ((["dimensions", 0, "weights", 1, "signal"], "revenue"), "dimensions[0].weights[1].signal", "weighted twice"),
    ((["dimensions", 0, "weights", 0, "weight"], -1.0), "dimensions[0].weights[0].weight", ">= 0"),
    ((["dimensions", 0, "weights", 0, "weight"], "NaN"), "dimensions[0].weights[0].weight", "finite"),
    ((["dimensions", 1, "weights", 0, "weight"], 0.0), "dimensions[1].weights", "not all be zero"),
    ((["dimensions", 0, "missing_policy"], "MISSING_POLICY_SOMETIMES"), "dimensions[0].missing_policy", "unknown value"),
    ((["dimensions", 0, "missing_value"], 0.5), "dimensions[0].missing_value", "only used by MISSING_POLICY_FIXED_VALUE"),
    ((["dimensions", 0, "missing_value"], 2.0), "dimensions[0].missing_value", "0 to 1"),
    ((["dimensions", 1, "min_coverage"], 0.0), "dimensions[1].min_coverage", "(0, 1]"),
    ((["dimensions", 1, "min_coverage"], 1.5), "dimensions[1].min_coverage", "(0, 1]"),
    ((["dimensions", 0, "min_coverage"], 0.5), "dimensions[0].min_coverage", "only used by MISSING_POLICY_MIN_COVERAGE"),
    ((["dimensions", 0, "composite_weight"], -0.1), "dimensions[0].composite_weight", ">= 0"),
    ((["tiers"], []), "tiers", "at least one"),
    ((["tiers", 1, "tier_id"], "gold"), "tiers[1].tier_id", "duplicate tier \"gold\""),
    ((["tiers", 1, "tier_id"], "Silver"), "tiers[1].tier_id", "[a-z0-9-]"),
    ((["tiers", 1, "min_composite"], 80.0), "tiers[1].min_composite", "decrease"),
    ((["tiers", 1, "min_composite"], 70.0), "tiers[1].min_composite", "decrease"),
    ((["tiers", 0, "min_composite"], 101.0), "tiers[0].min_composite", "0 to 100"),
    ((["tiers", 1, "min_composite"], REMOVE), "tiers[1]", "needs min_composite or population_percent"),
    ((["tiers", 1, "population_percent"], 5.0), "tiers[1]", "not both"),
    ((["tiers", 2, "min_composite"], 10.0), "tiers[2].min_composite", "floor"),
    ((["tiers", 2, "population_percent"], 10.0), "tiers[2].population_percent", "floor"),
    ((["hysteresis_points"], -1.0), "hysteresis_points", "0 to 100"),
    ((["hysteresis_points"], "Infinity"), "hysteresis_points", "0 to 100"),
    ((["hysteresis_points"], True), "hysteresis_points", "must be a number"),
    ((["outcomes"], {"money_signal": "Revenue"}), "outcomes.money_signal", "a signal name"),
    ((["outcomes"], {"nps_scale": "NPS_SCALE_PERCENT"}), "outcomes.nps_scale", "unknown value"),
    ((["outcomes"], {"nps_signal": "nps", "bad_profit": {"dimension_id": "loyalty"}}),
     "outcomes.bad_profit.dimension_id", "one of profitability"),
    ((["outcomes"], {"nps_signal": "nps", "bad_profit": {"dimension_id": "feedback"}}),
     "outcomes.bad_profit.dimension_id", "no VALUE_DIMENSION_FEEDBACK dimension"),
    ((["outcomes"], {"nps_signal": "nps", "bad_profit": {"top_share": 1.5}}), "outcomes.bad_profit.top_share",
     "(0, 1]"),
    ((["outcomes"], {"bad_profit": {}}), "outcomes.bad_profit.signal", "names no nps_signal"),
    ((["outcomes"], {"bad_profit": {"signal": "complaints", "at_most": 1, "at_least": 3}}),
     "outcomes.bad_profit.at_least", "not both"),
    ((["outcomes"], {"bad_profit": {"signal": "complaints", "at_least": "Infinity"}}),
     "outcomes.bad_profit.at_least", "finite"),
]


@pytest.mark.parametrize("change, field, words", CASES, ids=[c[1] + ":" + c[2] for c in CASES])
def test_each_violation_names_its_field(change, field, words):
    found = violations_of(mutate(change))
    assert any(f == field and words in d for f, d in found), found


def test_share_tiers_mixed_kinds_and_sum():
    document = base()
    document["tiers"] = [{"tier_id": "a", "population_percent": 60.0}, {"tier_id": "b", "population_percent": 50.0},
                         {"tier_id": "c"}]
    assert violations_of(document) == [("tiers", "population shares sum to 110 %, more than 100 %")]
    document["tiers"][1] = {"tier_id": "b", "min_composite": 50.0}
    found = violations_of(document)
    assert found[0][0] == "tiers[1]" and "same kind of threshold" in found[0][1]
    document["tiers"][1] = {"tier_id": "b", "population_percent": 0.0}
    assert violations_of(document)[0][0] == "tiers[1].population_percent"
    document["tiers"][1] = {"tier_id": "b", "population_percent": 40.0}
    assert se.ValueModel.from_dict(document).tiers_by_share


def test_all_composite_weights_zero():
    document = base()
    for dim in document["dimensions"]:
        dim["composite_weight"] = 0.0
    assert ("dimensions", "composite weights must not all be zero") in violations_of(document)


def test_all_violations_are_collected_in_document_order():
    document = base()
    document["model_id"] = ""
    document["signals"][1]["name"] = "revenue"
    document["dimensions"][1]["weights"][0]["signal"] = "nps2"
    document["tiers"][1]["min_composite"] = 90.0
    document["hysteresis_points"] = -2
    fields = [f for f, _ in violations_of(document)]
    assert fields == ["model_id", "signals[1].name", "dimensions[1].weights[0].signal", "tiers[1].min_composite",
                      "hysteresis_points"]


def test_not_json():
    with pytest.raises(se.ModelValidationError) as info:
        se.ValueModel.from_json("{nope")
    assert info.value.violations[0].field == ""
    assert violations_of([1, 2]) == [("", "must be a JSON object")]


def test_violation_is_a_pair():
    violation = violations_of(mutate((["model_id"], "X")))[0]
    field, description = violation
    assert field == "model_id" and description


def test_outcome_block_round_trips_and_its_signals_are_exported_in_addition():
    document = base() | {"outcomes": {"money_signal": "revenue", "nps_signal": "nps", "referrals_signal": "referrals",
                                      "bad_profit": {"signal": "complaints", "at_least": 3.0}}}
    model = se.ValueModel.from_dict(document)
    assert se.ValueModel.from_json(model.to_json()) == model
    assert model.outcomes.stored_signals == ("revenue", "nps", "referrals", "complaints")
    assert model.input_signal_names == ("revenue", "nps", "margin")  # online scoring reads no outcome signal
    assert model.exported_signal_names == ("revenue", "nps", "margin", "referrals", "complaints")
    rule = model.outcomes.bad_profit
    assert (rule.effective_dimension, rule.effective_top_share, rule.bound) == (
        ValueDimension.PROFITABILITY, 0.25, ("at_least", 3.0))
    assert se.default_model().outcomes.bad_profit.bound == ("at_most", 0.0)


def test_bad_profit_flags_match_a_plain_reading_of_the_rule():
    from scoring_engine import outcomes

    model = se.ValueModel.from_dict(base() | {"outcomes": {"nps_signal": "nps", "bad_profit": {"top_share": 0.3}}})
    rng = np.random.default_rng(5)
    scores = rng.choice([10.0, 20.0, 30.0, 40.0, np.nan], size=(200, 2))  # ties and missing scores
    nps = rng.choice([-40.0, 0.0, 10.0, np.nan], size=200)
    flags = outcomes.bad_profit_flags(model, scores, ["nps"], nps[:, None])
    scored = sorted((s for s in scores[:, 0] if s == s), reverse=True)
    cut = scored[math.ceil(0.3 * len(scored)) - 1]
    expected = [int(s == s and s >= cut and v == v and v <= 0) for s, v in zip(scores[:, 0], nps)]
    assert flags.tolist() == expected and 0 < sum(expected) < 200
    assert not outcomes.bad_profit_flags(model, np.full((3, 2), np.nan), ["nps"], np.zeros((3, 1))).any()
