"""Value models: what a company tunes, as immutable dataclasses with a proto3-JSON form.

A model's JSON form is the proto3 JSON of ``cvh.scoring.v1.ValueModel`` with the
proto's field names (``snake_case``; parsers also accept the ``lowerCamelCase``
JSON names) and enums as their full names (numbers are accepted too). Fields
left at their default may be omitted, as proto3 JSON does. Unknown keys are
errors. :meth:`ValueModel.from_dict` collects every violation and raises one
:class:`ModelValidationError` whose ``violations`` name each bad field by path,
e.g. ``dimensions[1].weights[0].signal``.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any, NamedTuple

__all__ = [
    "BadProfitRule", "Band", "DERIVED_SIGNALS", "DimensionSpec", "Direction", "FieldViolation", "LifetimeValueSpec",
    "MissingPolicy", "ModelValidationError", "Normalization", "NpsScale", "OutcomeSpec", "SignalSpec", "SignalWeight",
    "TierSpec", "TimeUnit", "Transform",
    "ValueDimension", "ValueModel", "default_model",
    "MAX_SIGNALS", "MAX_DIMENSIONS", "MAX_TIERS", "MAX_BANDS",
]

MAX_SIGNALS = 256
MAX_DIMENSIONS = 4
MAX_TIERS = 16
MAX_BANDS = 64
MAX_DESCRIPTION = 4096
MAX_CHANGE_NOTE = 1024
MAX_DISPLAY_NAME = 256

MODEL_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
TIER_ID = MODEL_ID
SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Signals a lifetime-value block derives, in this order, from the run's fitted BG/NBD and Gamma-Gamma models.
DERIVED_SIGNALS = ("predicted_ltv", "p_alive", "expected_purchases")
MAX_HORIZON_MONTHS = 1200
DEFAULT_HORIZON_MONTHS = 12
DEFAULT_MONTHLY_DISCOUNT_RATE = 0.01


# --------------------------------------------------------------------------- enums
class Transform(enum.IntEnum):
    """How a raw value is transformed before normalisation (``cvh.scoring.v1.Transform``)."""

    UNSPECIFIED = 0  # same as IDENTITY
    IDENTITY = 1
    LOG1P = 2  # log(1 + max(x, 0))
    CLIP = 3  # min(max(x, clip_min), clip_max)


class Direction(enum.IntEnum):
    """Whether more of a signal is better (``cvh.scoring.v1.Direction``)."""

    UNSPECIFIED = 0  # same as HIGHER_IS_BETTER
    HIGHER_IS_BETTER = 1
    LOWER_IS_BETTER = 2


class Normalization(enum.IntEnum):
    """How a transformed value is mapped onto 0..1 (``cvh.scoring.v1.Normalization``)."""

    UNSPECIFIED = 0  # same as MIN_MAX
    MIN_MAX = 1
    Z_SCORE = 2
    PERCENTILE = 3
    BANDS = 4


class MissingPolicy(enum.IntEnum):
    """What a dimension does with missing signals (``cvh.scoring.v1.MissingPolicy``)."""

    UNSPECIFIED = 0  # same as RENORMALIZE
    RENORMALIZE = 1
    FIXED_VALUE = 2
    MIN_COVERAGE = 3


class ValueDimension(enum.IntEnum):
    """The four value dimensions (``cvh.common.v1.ValueDimension``)."""

    UNSPECIFIED = 0
    PROFITABILITY = 1
    STRATEGIC_GROWTH = 2
    REPUTATION = 3
    FEEDBACK = 4


class TimeUnit(enum.IntEnum):
    """The unit of the purchase signals' times (``cvh.scoring.v1.TimeUnit``)."""

    UNSPECIFIED = 0  # same as DAYS
    DAYS = 1
    WEEKS = 2
    MONTHS = 3


class NpsScale(enum.IntEnum):
    """What the outcome block's NPS signal holds (``cvh.scoring.v1.NpsScale``)."""

    UNSPECIFIED = 0  # same as ACCOUNT
    ACCOUNT = 1  # the account's Net Promoter Score, -100..100
    RESPONDENT = 2  # one respondent's 0..10 answer


# Time units per month of the CLV horizon: a month is 30 days, as lifetimes' CLV counts it.
_UNITS_PER_MONTH = {TimeUnit.UNSPECIFIED: 30.0, TimeUnit.DAYS: 30.0, TimeUnit.WEEKS: 30.0 / 7.0, TimeUnit.MONTHS: 1.0}


_ENUM_PREFIX = {
    TimeUnit: "TIME_UNIT_",
    Transform: "TRANSFORM_",
    Direction: "DIRECTION_",
    Normalization: "NORMALIZATION_",
    MissingPolicy: "MISSING_POLICY_",
    NpsScale: "NPS_SCALE_",
    ValueDimension: "VALUE_DIMENSION_",
}


def enum_json_name(value: enum.IntEnum) -> str:
    """The proto enum value name, e.g. ``TRANSFORM_LOG1P``."""
    return _ENUM_PREFIX[type(value)] + value.name


# --------------------------------------------------------------------------- errors
class FieldViolation(NamedTuple):
    """One bad field: its path in the model's JSON form and what is wrong with it."""

    field: str
    description: str


class ModelValidationError(ValueError):
    """A value model is invalid.

    ``violations`` (public, stable) lists every problem found as
    :class:`FieldViolation` ``(field, description)`` pairs, in document order;
    the gRPC layer turns it into a ``google.rpc.BadRequest``.
    """

    def __init__(self, violations: list[FieldViolation]):
        self.violations = [FieldViolation(*v) for v in violations]
        super().__init__("invalid value model: " + "; ".join(f"{v.field}: {v.description}" for v in self.violations))


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class Band:
    """One step of a BANDS normalisation: transformed values >= lower_bound score ``score``."""

    lower_bound: float
    score: float


@dataclass(frozen=True)
class SignalSpec:
    """A signal the model reads and how it is normalised onto 0..1.

    ``fixed_min``/``fixed_max`` and band bounds are in the transformed space
    (after log1p or clip).
    """

    name: str
    transform: Transform = Transform.UNSPECIFIED
    clip_min: float | None = None
    clip_max: float | None = None
    direction: Direction = Direction.UNSPECIFIED
    normalization: Normalization = Normalization.UNSPECIFIED
    fixed_min: float | None = None
    fixed_max: float | None = None
    bands: tuple[Band, ...] = ()

    @property
    def effective_transform(self) -> Transform:
        return Transform.IDENTITY if self.transform == Transform.UNSPECIFIED else self.transform

    @property
    def effective_normalization(self) -> Normalization:
        return Normalization.MIN_MAX if self.normalization == Normalization.UNSPECIFIED else self.normalization

    @property
    def lower_is_better(self) -> bool:
        return self.direction == Direction.LOWER_IS_BETTER


@dataclass(frozen=True)
class SignalWeight:
    """A signal's relative weight within a dimension."""

    signal: str
    weight: float


@dataclass(frozen=True)
class DimensionSpec:
    """How one value dimension is computed from weighted signals."""

    dimension: ValueDimension
    weights: tuple[SignalWeight, ...]
    missing_policy: MissingPolicy = MissingPolicy.UNSPECIFIED
    missing_value: float = 0.0
    min_coverage: float = 0.0
    composite_weight: float = 0.0

    @property
    def effective_missing_policy(self) -> MissingPolicy:
        return MissingPolicy.RENORMALIZE if self.missing_policy == MissingPolicy.UNSPECIFIED else self.missing_policy


@dataclass(frozen=True)
class TierSpec:
    """A level of the hierarchy; tiers are listed best first, the last one is the floor."""

    tier_id: str
    display_name: str = ""
    min_composite: float | None = None
    population_percent: float | None = None


@dataclass(frozen=True)
class LifetimeValueSpec:
    """Where a model's predicted lifetime value comes from (``cvh.scoring.v1.LifetimeValueSpec``).

    The four ``*_signal`` fields name registry signals holding, per customer, the repeat purchases, the time
    of the last one since the first, the time since the first and the mean spend per repeat purchase, in
    ``time_unit``. A run fits BG/NBD and Gamma-Gamma on them and derives DERIVED_SIGNALS; CLV is summed over
    ``horizon_months`` months (0: 12) of 30 days, each discounted by ``monthly_discount_rate`` (None: 0.01).
    """

    frequency_signal: str = ""
    recency_signal: str = ""
    age_signal: str = ""
    spend_signal: str = ""
    time_unit: TimeUnit = TimeUnit.UNSPECIFIED
    horizon_months: int = 0
    monthly_discount_rate: float | None = None

    @property
    def input_signals(self) -> tuple[str, str, str, str]:
        """(frequency, recency, age, spend) signal names."""
        return self.frequency_signal, self.recency_signal, self.age_signal, self.spend_signal

    @property
    def units_per_month(self) -> float:
        return _UNITS_PER_MONTH[self.time_unit]

    @property
    def effective_horizon_months(self) -> int:
        return self.horizon_months or DEFAULT_HORIZON_MONTHS

    @property
    def effective_discount_rate(self) -> float:
        rate = self.monthly_discount_rate
        return DEFAULT_MONTHLY_DISCOUNT_RATE if rate is None else rate


# Short names of the value dimensions, as a bad-profit rule names one ("profitability").
DIMENSION_IDS = {"profitability": ValueDimension.PROFITABILITY, "strategic_growth": ValueDimension.STRATEGIC_GROWTH,
                 "reputation": ValueDimension.REPUTATION, "feedback": ValueDimension.FEEDBACK}
DEFAULT_TOP_SHARE = 0.25


@dataclass(frozen=True)
class BadProfitRule:
    """When a run flags a customer's profit as bad profit (``cvh.scoring.v1.BadProfitRule``): its score on
    ``dimension_id`` ("": profitability) is in the run's top ``top_share`` (0: 0.25) and ``signal``'s value is
    <= ``at_most`` (a detractor) or >= ``at_least`` (e.g. complaints); neither set means at_most 0."""

    dimension_id: str = ""
    top_share: float = 0.0
    signal: str = ""
    at_most: float | None = None
    at_least: float | None = None

    @property
    def effective_dimension(self) -> ValueDimension:
        return DIMENSION_IDS[self.dimension_id or "profitability"]

    @property
    def effective_top_share(self) -> float:
        return self.top_share or DEFAULT_TOP_SHARE

    @property
    def bound(self) -> tuple[str, float]:
        """("at_most" or "at_least", the bound)."""
        if self.at_least is not None:
            return "at_least", self.at_least
        return "at_most", 0.0 if self.at_most is None else self.at_most


# Roles of the outcome block's signals, in the order a run stores their values.
OUTCOME_ROLES = ("money", "nps", "csat", "referenceability", "referrals", "adoption")


@dataclass(frozen=True)
class OutcomeSpec:
    """The signals outcome reports read (``cvh.scoring.v1.OutcomeSpec``); an empty name: none. A run stores
    their values, the customer's lifecycle stage and the bad-profit flag with each result."""

    money_signal: str = ""
    nps_signal: str = ""
    nps_scale: NpsScale = NpsScale.UNSPECIFIED
    csat_signal: str = ""
    referenceability_signal: str = ""
    referrals_signal: str = ""
    adoption_signal: str = ""
    bad_profit: BadProfitRule | None = None

    @property
    def signal_by_role(self) -> dict[str, str]:
        """Role (OUTCOME_ROLES) -> signal name, for the roles named."""
        return {role: getattr(self, role + "_signal") for role in OUTCOME_ROLES if getattr(self, role + "_signal")}

    @property
    def stored_signals(self) -> tuple[str, ...]:
        """Signals whose values a run stores: the roles' and the bad-profit rule's, each once."""
        names = list(self.signal_by_role.values())
        if self.bad_profit is not None:
            names.append(self.bad_profit.signal or self.nps_signal)
        return tuple(n for n in dict.fromkeys(names) if n)


@dataclass(frozen=True)
class ValueModel:
    """A versioned value model. Construct with :meth:`from_dict` / :meth:`from_json`.

    Direct construction validates too and raises :class:`ModelValidationError`.
    ``name``, ``version``, ``change_note``, ``creator``, ``create_time`` and
    ``active`` are the service's bookkeeping fields of the proto message; they
    are carried through unchanged and play no part in scoring.
    """

    model_id: str
    description: str = ""
    signals: tuple[SignalSpec, ...] = ()
    dimensions: tuple[DimensionSpec, ...] = ()
    tiers: tuple[TierSpec, ...] = ()
    hysteresis_points: float = 0.0
    lifetime_value: LifetimeValueSpec | None = None
    outcomes: OutcomeSpec | None = None
    name: str = ""
    version: int = 0
    change_note: str = ""
    creator: str = ""
    create_time: str = ""
    active: bool = False

    def __post_init__(self):
        for attr in ("signals", "dimensions", "tiers"):
            if not isinstance(getattr(self, attr), tuple):
                object.__setattr__(self, attr, tuple(getattr(self, attr)))
        violations = _semantic_violations(self)
        if violations:
            raise ModelValidationError(violations)

    # -- derived facts ----------------------------------------------------
    @cached_property
    def signal_names(self) -> tuple[str, ...]:
        """Names of the signals, in model order: the default column order of a matrix."""
        return tuple(s.name for s in self.signals)

    @cached_property
    def signal_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.signal_names)}

    @cached_property
    def input_signal_names(self) -> tuple[str, ...]:
        """What a run reads from the registry: the model's signals, then the lifetime-value block's inputs."""
        extra = self.lifetime_value.input_signals if self.lifetime_value is not None else ()
        return self.signal_names + tuple(n for n in dict.fromkeys(extra) if n not in self.signal_index)

    @cached_property
    def exported_signal_names(self) -> tuple[str, ...]:
        """What a run exports: input_signal_names, then the outcome block's signals the model does not read."""
        extra = self.outcomes.stored_signals if self.outcomes is not None else ()
        inputs = set(self.input_signal_names)
        return self.input_signal_names + tuple(n for n in extra if n not in inputs)

    @cached_property
    def tier_ids(self) -> tuple[str, ...]:
        return tuple(t.tier_id for t in self.tiers)

    @property
    def tiers_by_share(self) -> bool:
        """Whether the tiers are population shares (cutoffs then come from a scored population)."""
        return len(self.tiers) > 1 and self.tiers[0].population_percent is not None

    # -- JSON ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> ValueModel:
        """Parse and validate the proto3-JSON dict of a model; raises ModelValidationError."""
        violations: list[FieldViolation] = []
        values = _parse_message(document, "", _MODEL_SCHEMA, violations)
        if values is None:
            raise ModelValidationError(violations)
        model = _build(values)
        bad_paths = [v.field for v in violations]
        for v in _semantic_violations(model):
            if not any(_covers(bad, v.field) for bad in bad_paths):
                violations.append(v)
        if violations:
            violations.sort(key=lambda v: _path_key(v.field))
            raise ModelValidationError(violations)
        return model

    @classmethod
    def from_json(cls, text: str | bytes) -> ValueModel:
        """Parse a JSON document (see :meth:`from_dict`)."""
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise ModelValidationError([FieldViolation("", f"not valid JSON: {error}")]) from None
        return cls.from_dict(document)

    def to_dict(self) -> dict[str, Any]:
        """The proto3-JSON dict (snake_case names, enum names, defaults omitted)."""
        return _emit(self, _MODEL_SCHEMA)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def default_model() -> ValueModel:
    """The model shipped with the package (``default_model.json``): four dimensions, five tiers."""
    text = resources.files(__package__).joinpath("default_model.json").read_text(encoding="utf-8")
    return ValueModel.from_json(text)


# --------------------------------------------------------------------------- parsing
# field name -> (kind, argument). Kinds: str, double, opt_double, enum, int, bool, list (of message schema)
_BAND_SCHEMA = {"lower_bound": ("double", None), "score": ("double", None)}
_SIGNAL_SCHEMA = {
    "name": ("str", None),
    "transform": ("enum", Transform),
    "clip_min": ("opt_double", None),
    "clip_max": ("opt_double", None),
    "direction": ("enum", Direction),
    "normalization": ("enum", Normalization),
    "fixed_min": ("opt_double", None),
    "fixed_max": ("opt_double", None),
    "bands": ("list", (_BAND_SCHEMA, Band)),
}
_WEIGHT_SCHEMA = {"signal": ("str", None), "weight": ("double", None)}
_DIMENSION_SCHEMA = {
    "dimension": ("enum", ValueDimension),
    "weights": ("list", (_WEIGHT_SCHEMA, SignalWeight)),
    "missing_policy": ("enum", MissingPolicy),
    "missing_value": ("double", None),
    "min_coverage": ("double", None),
    "composite_weight": ("double", None),
}
_TIER_SCHEMA = {
    "tier_id": ("str", None),
    "display_name": ("str", None),
    "min_composite": ("opt_double", None),
    "population_percent": ("opt_double", None),
}
_LIFETIME_VALUE_SCHEMA = {
    "frequency_signal": ("str", None),
    "recency_signal": ("str", None),
    "age_signal": ("str", None),
    "spend_signal": ("str", None),
    "time_unit": ("enum", TimeUnit),
    "horizon_months": ("int", None),
    "monthly_discount_rate": ("opt_double", None),
}
_BAD_PROFIT_SCHEMA = {
    "dimension_id": ("str", None),
    "top_share": ("double", None),
    "signal": ("str", None),
    "at_most": ("opt_double", None),
    "at_least": ("opt_double", None),
}
_OUTCOME_SCHEMA = {
    "money_signal": ("str", None),
    "nps_signal": ("str", None),
    "csat_signal": ("str", None),
    "referenceability_signal": ("str", None),
    "referrals_signal": ("str", None),
    "adoption_signal": ("str", None),
    "bad_profit": ("message", (_BAD_PROFIT_SCHEMA, BadProfitRule)),
    "nps_scale": ("enum", NpsScale),
}
_MODEL_SCHEMA = {
    "name": ("str", None),
    "model_id": ("str", None),
    "version": ("int", None),
    "description": ("str", None),
    "signals": ("list", (_SIGNAL_SCHEMA, SignalSpec)),
    "dimensions": ("list", (_DIMENSION_SCHEMA, DimensionSpec)),
    "tiers": ("list", (_TIER_SCHEMA, TierSpec)),
    "hysteresis_points": ("double", None),
    "lifetime_value": ("message", (_LIFETIME_VALUE_SCHEMA, LifetimeValueSpec)),
    "outcomes": ("message", (_OUTCOME_SCHEMA, OutcomeSpec)),
    "change_note": ("str", None),
    "creator": ("str", None),
    "create_time": ("str", None),
    "active": ("bool", None),
}
_FIELD_ORDER = {name: i for schema in (_MODEL_SCHEMA, _SIGNAL_SCHEMA, _BAND_SCHEMA, _DIMENSION_SCHEMA, _WEIGHT_SCHEMA,
                                       _TIER_SCHEMA, _LIFETIME_VALUE_SCHEMA, _OUTCOME_SCHEMA, _BAD_PROFIT_SCHEMA)
               for i, name in enumerate(schema)}
_DEFAULTS = {"str": "", "double": 0.0, "opt_double": None, "int": 0, "bool": False, "message": None}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse_double(raw: Any) -> float | None:
    """A proto3-JSON double: a number, or a string holding one ("NaN", "Infinity" included)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        try:
            return float(raw)
        except OverflowError:
            return None
    if isinstance(raw, str):
        text = raw.strip()
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if text in special:
            return special[text]
        try:
            return float(text) if text and text.lower().lstrip("+-") not in ("nan", "inf", "infinity") else None
        except ValueError:
            return None
    return None


def _parse_message(obj: Any, path: str, schema: dict, violations: list[FieldViolation]) -> dict | None:
    if not isinstance(obj, Mapping):
        violations.append(FieldViolation(path, "must be a JSON object"))
        return None
    aliases = {}
    for name in schema:
        aliases[name] = name
        aliases.setdefault(_camel(name), name)
    values: dict[str, Any] = {}
    for key, raw in obj.items():
        fname = aliases.get(key) if isinstance(key, str) else None
        fpath = _join(path, str(key))
        if fname is None:
            violations.append(FieldViolation(fpath, "unknown field"))
            continue
        fpath = _join(path, fname)
        if fname in values:
            violations.append(FieldViolation(fpath, "given twice (as its proto name and its JSON name)"))
            continue
        kind, arg = schema[fname]
        if raw is None:  # proto3 JSON: null means the default
            values[fname] = _DEFAULTS.get(kind, arg.UNSPECIFIED if kind == "enum" else ())
            continue
        if kind == "str":
            if isinstance(raw, str):
                values[fname] = raw
            else:
                violations.append(FieldViolation(fpath, "must be a string"))
        elif kind in ("double", "opt_double"):
            value = _parse_double(raw)
            if value is None:
                violations.append(FieldViolation(fpath, "must be a number"))
            else:
                values[fname] = value
        elif kind == "int":
            if isinstance(raw, str) and re.fullmatch(r"-?\d+", raw.strip()):
                raw = int(raw)
            if isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
            if isinstance(raw, int) and not isinstance(raw, bool) and -2**31 <= raw < 2**31:
                values[fname] = raw
            else:
                violations.append(FieldViolation(fpath, "must be a 32-bit integer"))
        elif kind == "bool":
            if isinstance(raw, bool):
                values[fname] = raw
            else:
                violations.append(FieldViolation(fpath, "must be true or false"))
        elif kind == "enum":
            prefix = _ENUM_PREFIX[arg]
            member = None
            if isinstance(raw, str) and raw.startswith(prefix):
                member = arg.__members__.get(raw[len(prefix):])
            elif isinstance(raw, int) and not isinstance(raw, bool):
                member = arg._value2member_map_.get(raw)
            if member is None:
                names = ", ".join(prefix + m.name for m in arg)
                violations.append(FieldViolation(fpath, f"unknown value {json.dumps(raw)}; one of {names}"))
            else:
                values[fname] = member
        elif kind == "message":
            sub_schema, sub_cls = arg
            parsed = _parse_message(raw, fpath, sub_schema, violations)
            values[fname] = _Unparsed() if parsed is None else _build_item(sub_cls, sub_schema, parsed)
        elif kind == "list":
            sub_schema, sub_cls = arg
            if not isinstance(raw, list):
                violations.append(FieldViolation(fpath, "must be a JSON array"))
                continue
            items = []
            for i, item in enumerate(raw):
                parsed = _parse_message(item, f"{fpath}[{i}]", sub_schema, violations)
                items.append(_Unparsed() if parsed is None else _build_item(sub_cls, sub_schema, parsed))
            values[fname] = tuple(items)
    return values


class _Unparsed:
    """Placeholder for a list item that was not an object (its violation is already reported)."""


def _build_item(cls, schema: dict, values: dict):
    kwargs = {}
    for name, (kind, arg) in schema.items():
        if name in values:
            kwargs[name] = values[name]
        elif kind == "enum":
            kwargs[name] = arg.UNSPECIFIED
        elif kind == "list":
            kwargs[name] = ()
        else:
            kwargs[name] = _DEFAULTS[kind]
    return cls(**kwargs)


def _build(values: dict) -> ValueModel:
    """A ValueModel from parsed values, without validating (validation happens after, collecting all)."""
    model = object.__new__(ValueModel)
    for name, (kind, arg) in _MODEL_SCHEMA.items():
        default = () if kind == "list" else _DEFAULTS[kind]
        object.__setattr__(model, name, values.get(name, default))
    return model


def _covers(bad: str, path: str) -> bool:
    return path == bad or path.startswith(bad + ".") or path.startswith(bad + "[")


def _path_key(path: str) -> list:
    """Sort key of a field path in document order (fields in proto order, list items by index)."""
    return [(0, int(p), "") if p.isdigit() else (1, _FIELD_ORDER.get(p, 99), p)
            for p in re.split(r"[.\[\]]+", path) if p != ""]


def _emit(obj: Any, schema: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, arg) in schema.items():
        value = getattr(obj, name)
        if kind == "opt_double":
            if value is not None:
                out[name] = float(value)
        elif kind == "list":
            if value:
                out[name] = [_emit(item, arg[0]) for item in value]
        elif kind == "message":
            if value is not None:
                out[name] = _emit(value, arg[0])
        elif kind == "enum":
            if value != 0:
                out[name] = enum_json_name(value)
        elif kind == "double":
            if value != 0.0:
                out[name] = float(value)
        elif value != _DEFAULTS[kind]:
            out[name] = value
    return out


# --------------------------------------------------------------------------- validation
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _semantic_violations(model: ValueModel) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    add = lambda path, text: out.append(FieldViolation(path, text))  # noqa: E731

    if not isinstance(model.model_id, str) or not MODEL_ID.fullmatch(model.model_id):
        add("model_id", "required: 1 to 63 characters of [a-z0-9-], starting with a letter, e.g. \"default\"")
    if isinstance(model.description, str) and len(model.description) > MAX_DESCRIPTION:
        add("description", f"at most {MAX_DESCRIPTION} characters")
    if isinstance(model.change_note, str) and len(model.change_note) > MAX_CHANGE_NOTE:
        add("change_note", f"at most {MAX_CHANGE_NOTE} characters")

    # signals ---------------------------------------------------------------
    if not model.signals:
        add("signals", "at least one signal is required")
    elif len(model.signals) > MAX_SIGNALS:
        add("signals", f"at most {MAX_SIGNALS} signals")
    seen: dict[str, int] = {}
    for i, s in enumerate(model.signals):
        p = f"signals[{i}]"
        if not isinstance(s, SignalSpec):
            continue
        if not SIGNAL_NAME.fullmatch(s.name):
            add(f"{p}.name", "required: 1 to 63 characters of [a-z0-9_], starting with a letter")
        elif s.name in seen:
            add(f"{p}.name", f"duplicate signal \"{s.name}\" (also signals[{seen[s.name]}])")
        else:
            seen[s.name] = i
        # transform
        if s.effective_transform == Transform.CLIP:
            if s.clip_min is None and s.clip_max is None:
                add(f"{p}.transform", "TRANSFORM_CLIP needs clip_min, clip_max or both")
        else:
            for attr in ("clip_min", "clip_max"):
                if getattr(s, attr) is not None:
                    add(f"{p}.{attr}", "only used by TRANSFORM_CLIP")
        _check_bounds(add, p, s.clip_min, s.clip_max, "clip_min", "clip_max")
        # normalisation
        norm = s.effective_normalization
        if norm != Normalization.MIN_MAX:
            for attr in ("fixed_min", "fixed_max"):
                if getattr(s, attr) is not None:
                    add(f"{p}.{attr}", "only used by NORMALIZATION_MIN_MAX")
        _check_bounds(add, p, s.fixed_min, s.fixed_max, "fixed_min", "fixed_max")
        if norm == Normalization.BANDS:
            if not s.bands:
                add(f"{p}.bands", "NORMALIZATION_BANDS needs at least one band")
            elif len(s.bands) > MAX_BANDS:
                add(f"{p}.bands", f"at most {MAX_BANDS} bands")
        elif s.bands:
            add(f"{p}.bands", "only used by NORMALIZATION_BANDS")
        previous = None
        for k, band in enumerate(s.bands):
            bp = f"{p}.bands[{k}]"
            if not isinstance(band, Band):
                continue
            if not _finite(band.lower_bound):
                add(f"{bp}.lower_bound", "must be a finite number")
            else:
                if previous is not None and not band.lower_bound > previous:
                    add(f"{bp}.lower_bound", f"bands must ascend: must be greater than {previous!r}")
                previous = band.lower_bound
            if not _finite(band.score) or not 0.0 <= band.score <= 1.0:
                add(f"{bp}.score", "must be a number from 0 to 1")

    # dimensions --------------------------------------------------------------
    known = {s.name for s in model.signals if isinstance(s, SignalSpec)}
    if not model.dimensions:
        add("dimensions", "at least one dimension is required")
    elif len(model.dimensions) > MAX_DIMENSIONS:
        add("dimensions", f"at most {MAX_DIMENSIONS} dimensions")
    seen_dims: dict[ValueDimension, int] = {}
    composite_ok = False
    composite_checked = True
    for i, d in enumerate(model.dimensions):
        p = f"dimensions[{i}]"
        if not isinstance(d, DimensionSpec):
            composite_checked = False
            continue
        if d.dimension == ValueDimension.UNSPECIFIED:
            add(f"{p}.dimension", "required: one of " + ", ".join(enum_json_name(v) for v in list(ValueDimension)[1:]))
        elif d.dimension in seen_dims:
            add(f"{p}.dimension", f"duplicate dimension {enum_json_name(d.dimension)} (also dimensions[{seen_dims[d.dimension]}])")
        else:
            seen_dims[d.dimension] = i
        if not d.weights:
            add(f"{p}.weights", "a dimension needs at least one weighted signal")
        elif len(d.weights) > MAX_SIGNALS:
            add(f"{p}.weights", f"at most {MAX_SIGNALS} weights")
        in_dim: dict[str, int] = {}
        any_positive = False
        all_checked = True
        for k, w in enumerate(d.weights):
            wp = f"{p}.weights[{k}]"
            if not isinstance(w, SignalWeight):
                all_checked = False
                continue
            if w.signal not in known:
                add(f"{wp}.signal", f"unknown signal \"{w.signal}\"" if w.signal else "required: the name of a signal of the model")
            elif w.signal in in_dim:
                add(f"{wp}.signal", f"signal \"{w.signal}\" is weighted twice (also {p}.weights[{in_dim[w.signal]}])")
            else:
                in_dim[w.signal] = k
            if not _finite(w.weight) or w.weight < 0:
                add(f"{wp}.weight", "must be a finite number >= 0")
                all_checked = False
            elif w.weight > 0:
                any_positive = True
        if d.weights and all_checked and not any_positive:
            add(f"{p}.weights", "weights must not all be zero")
        policy = d.effective_missing_policy
        if not _finite(d.missing_value) or not 0.0 <= d.missing_value <= 1.0:
            add(f"{p}.missing_value", "must be a number from 0 to 1 (a normalised value)")
        elif policy != MissingPolicy.FIXED_VALUE and d.missing_value != 0.0:
            add(f"{p}.missing_value", "only used by MISSING_POLICY_FIXED_VALUE")
        if policy == MissingPolicy.MIN_COVERAGE:
            if not _finite(d.min_coverage) or not 0.0 < d.min_coverage <= 1.0:
                add(f"{p}.min_coverage", "MISSING_POLICY_MIN_COVERAGE needs a share in (0, 1]")
        elif d.min_coverage != 0.0:
            add(f"{p}.min_coverage", "only used by MISSING_POLICY_MIN_COVERAGE")
        if not _finite(d.composite_weight) or d.composite_weight < 0:
            add(f"{p}.composite_weight", "must be a finite number >= 0")
            composite_checked = False
        elif d.composite_weight > 0:
            composite_ok = True
    if model.dimensions and composite_checked and not composite_ok:
        add("dimensions", "composite weights must not all be zero")

    # tiers -----------------------------------------------------------------
    tiers = model.tiers
    if not tiers:
        add("tiers", "at least one tier is required (the last tier is the floor)")
    elif len(tiers) > MAX_TIERS:
        add("tiers", f"at most {MAX_TIERS} tiers")
    seen_tiers: dict[str, int] = {}
    for i, t in enumerate(tiers):
        if not isinstance(t, TierSpec):
            continue
        p = f"tiers[{i}]"
        if not TIER_ID.fullmatch(t.tier_id):
            add(f"{p}.tier_id", "required: 1 to 63 characters of [a-z0-9-], starting with a letter")
        elif t.tier_id in seen_tiers:
            add(f"{p}.tier_id", f"duplicate tier \"{t.tier_id}\" (also tiers[{seen_tiers[t.tier_id]}])")
        else:
            seen_tiers[t.tier_id] = i
        if len(t.display_name) > MAX_DISPLAY_NAME:
            add(f"{p}.display_name", f"at most {MAX_DISPLAY_NAME} characters")
    body = [t for t in tiers[:-1] if isinstance(t, TierSpec)]
    if tiers and isinstance(tiers[-1], TierSpec):
        floor, fp = tiers[-1], f"tiers[{len(tiers) - 1}]"
        if floor.population_percent is not None:
            add(f"{fp}.population_percent", "the last tier is the floor: it takes everyone else and sets no share")
        if floor.min_composite is not None and floor.min_composite != 0.0:
            add(f"{fp}.min_composite", "the last tier is the floor: it takes everyone else (min_composite unset or 0)")
    if body and len(body) == len(tiers) - 1:
        first = body[0]
        by_share = first.population_percent is not None and first.min_composite is None
        kind = "population_percent" if by_share else "min_composite"
        previous_min = None
        share_sum = 0.0
        shares_ok = True
        for i, t in enumerate(body):
            p = f"tiers[{i}]"
            if t.min_composite is not None and t.population_percent is not None:
                add(p, "set min_composite or population_percent, not both")
                shares_ok = False
                continue
            if t.min_composite is None and t.population_percent is None:
                add(p, "every tier but the last needs min_composite or population_percent")
                shares_ok = False
                continue
            if (t.population_percent is not None) != by_share:
                add(p, f"all tiers but the last must use the same kind of threshold as tiers[0] ({kind})")
                shares_ok = False
                continue
            if by_share:
                if not _finite(t.population_percent) or not 0.0 < t.population_percent <= 100.0:
                    add(f"{p}.population_percent", "must be a percentage in (0, 100]")
                    shares_ok = False
                else:
                    share_sum += t.population_percent
            else:
                if not _finite(t.min_composite) or not 0.0 <= t.min_composite <= 100.0:
                    add(f"{p}.min_composite", "must be a composite value from 0 to 100")
                    continue
                if previous_min is not None and not t.min_composite < previous_min:
                    add(f"{p}.min_composite", f"thresholds must decrease down the tiers: must be below {previous_min!r}")
                previous_min = t.min_composite
        if by_share and shares_ok and share_sum > 100.0 + 1e-9:
            add("tiers", f"population shares sum to {share_sum:g} %, more than 100 %")

    if not _finite(model.hysteresis_points) or not 0.0 <= model.hysteresis_points <= 100.0:
        add("hysteresis_points", "must be a number of composite points from 0 to 100")
    if isinstance(model.lifetime_value, LifetimeValueSpec):
        _lifetime_value_violations(add, model.lifetime_value, known)
    if isinstance(model.outcomes, OutcomeSpec):
        dimensions = {d.dimension for d in model.dimensions if isinstance(d, DimensionSpec)}
        _outcome_violations(add, model.outcomes, dimensions)
    return out


def _outcome_violations(add, spec: OutcomeSpec, dimensions: set[ValueDimension]) -> None:
    """Outcome signals need not be signals the model weights: a run exports them in addition."""
    p = "outcomes"
    for role in OUTCOME_ROLES:
        name = getattr(spec, role + "_signal")
        if name and not SIGNAL_NAME.fullmatch(name):
            add(f"{p}.{role}_signal", "a signal name (1 to 63 characters of [a-z0-9_], starting with a letter), "
                                      "or empty for none")
    rule = spec.bad_profit
    if not isinstance(rule, BadProfitRule):
        return
    rp = f"{p}.bad_profit"
    if rule.dimension_id not in ("", *DIMENSION_IDS):
        add(f"{rp}.dimension_id", "one of " + ", ".join(DIMENSION_IDS) + " (empty: profitability)")
    elif rule.effective_dimension not in dimensions:
        add(f"{rp}.dimension_id", f"the model has no {enum_json_name(rule.effective_dimension)} dimension")
    if not _finite(rule.top_share) or not 0.0 <= rule.top_share <= 1.0:
        add(f"{rp}.top_share", "a share of the run in (0, 1], e.g. 0.25 for the top quartile (0: 0.25)")
    if rule.signal and not SIGNAL_NAME.fullmatch(rule.signal):
        add(f"{rp}.signal", "a signal name (1 to 63 characters of [a-z0-9_], starting with a letter)")
    elif not rule.signal and not spec.nps_signal:
        add(f"{rp}.signal", "required when the block names no nps_signal (an empty signal means the NPS signal)")
    if rule.at_most is not None and rule.at_least is not None:
        add(f"{rp}.at_least", "set at_most (e.g. a detractor's NPS) or at_least (e.g. complaints), not both")
    for attr in ("at_most", "at_least"):
        value = getattr(rule, attr)
        if value is not None and not _finite(value):
            add(f"{rp}.{attr}", "must be a finite number")


def _lifetime_value_violations(add, spec: LifetimeValueSpec, known: set[str]) -> None:
    p = "lifetime_value"
    seen: dict[str, str] = {}
    for attr, what in (("frequency_signal", "repeat purchases"), ("recency_signal", "time of the last purchase"),
                       ("age_signal", "time since the first purchase"), ("spend_signal", "mean spend per purchase")):
        name = getattr(spec, attr)
        if not SIGNAL_NAME.fullmatch(name):
            add(f"{p}.{attr}", f"required: the registry signal holding the {what} "
                               "(1 to 63 characters of [a-z0-9_], starting with a letter)")
        elif name in DERIVED_SIGNALS:
            add(f"{p}.{attr}", f"\"{name}\" is derived by this block: it cannot also feed it")
        elif name in seen:
            add(f"{p}.{attr}", f"signal \"{name}\" is given twice (also {p}.{seen[name]})")
        else:
            seen[name] = attr
    if not isinstance(spec.horizon_months, int) or not 0 <= spec.horizon_months <= MAX_HORIZON_MONTHS:
        add(f"{p}.horizon_months",
            f"months of the CLV horizon: 1 to {MAX_HORIZON_MONTHS} (0: {DEFAULT_HORIZON_MONTHS})")
    rate = spec.monthly_discount_rate
    if rate is not None and (not _finite(rate) or not 0.0 <= rate < 1.0):
        add(f"{p}.monthly_discount_rate", "a rate per month from 0 to below 1 (e.g. 0.01), or unset for 0.01")
    if not known & set(DERIVED_SIGNALS):
        add(p, "the model reads none of the signals the block derives (" + ", ".join(DERIVED_SIGNALS)
            + "): add one to signals and weight it in a dimension")


def _check_bounds(add, p: str, low, high, low_name: str, high_name: str) -> None:
    ok = True
    for value, name in ((low, low_name), (high, high_name)):
        if value is not None and not _finite(value):
            add(f"{p}.{name}", "must be a finite number")
            ok = False
    if ok and low is not None and high is not None and not low < high:
        add(f"{p}.{high_name}", f"must be greater than {low_name} ({low!r})")
