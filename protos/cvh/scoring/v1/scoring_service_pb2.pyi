import datetime

from cvh.common.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFORM_UNSPECIFIED: _ClassVar[Transform]
    TRANSFORM_IDENTITY: _ClassVar[Transform]
    TRANSFORM_LOG1P: _ClassVar[Transform]
    TRANSFORM_CLIP: _ClassVar[Transform]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_HIGHER_IS_BETTER: _ClassVar[Direction]
    DIRECTION_LOWER_IS_BETTER: _ClassVar[Direction]

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    NORMALIZATION_MIN_MAX: _ClassVar[Normalization]
    NORMALIZATION_Z_SCORE: _ClassVar[Normalization]
    NORMALIZATION_PERCENTILE: _ClassVar[Normalization]
    NORMALIZATION_BANDS: _ClassVar[Normalization]

class MissingPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSING_POLICY_UNSPECIFIED: _ClassVar[MissingPolicy]
    MISSING_POLICY_RENORMALIZE: _ClassVar[MissingPolicy]
    MISSING_POLICY_FIXED_VALUE: _ClassVar[MissingPolicy]
    MISSING_POLICY_MIN_COVERAGE: _ClassVar[MissingPolicy]

class NpsScale(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NPS_SCALE_UNSPECIFIED: _ClassVar[NpsScale]
    NPS_SCALE_ACCOUNT: _ClassVar[NpsScale]
    NPS_SCALE_RESPONDENT: _ClassVar[NpsScale]

class TimeUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_UNIT_UNSPECIFIED: _ClassVar[TimeUnit]
    TIME_UNIT_DAYS: _ClassVar[TimeUnit]
    TIME_UNIT_WEEKS: _ClassVar[TimeUnit]
    TIME_UNIT_MONTHS: _ClassVar[TimeUnit]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_PENDING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]
TRANSFORM_UNSPECIFIED: Transform
TRANSFORM_IDENTITY: Transform
TRANSFORM_LOG1P: Transform
TRANSFORM_CLIP: Transform
DIRECTION_UNSPECIFIED: Direction
DIRECTION_HIGHER_IS_BETTER: Direction
DIRECTION_LOWER_IS_BETTER: Direction
NORMALIZATION_UNSPECIFIED: Normalization
NORMALIZATION_MIN_MAX: Normalization
NORMALIZATION_Z_SCORE: Normalization
NORMALIZATION_PERCENTILE: Normalization
NORMALIZATION_BANDS: Normalization
MISSING_POLICY_UNSPECIFIED: MissingPolicy
MISSING_POLICY_RENORMALIZE: MissingPolicy
MISSING_POLICY_FIXED_VALUE: MissingPolicy
MISSING_POLICY_MIN_COVERAGE: MissingPolicy
NPS_SCALE_UNSPECIFIED: NpsScale
NPS_SCALE_ACCOUNT: NpsScale
NPS_SCALE_RESPONDENT: NpsScale
TIME_UNIT_UNSPECIFIED: TimeUnit
TIME_UNIT_DAYS: TimeUnit
TIME_UNIT_WEEKS: TimeUnit
TIME_UNIT_MONTHS: TimeUnit
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_PENDING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState

class Band(_message.Message):
    __slots__ = ("lower_bound", "score")
    LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    lower_bound: float
    score: float
    def __init__(self, lower_bound: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class SignalSpec(_message.Message):
    __slots__ = ("name", "transform", "clip_min", "clip_max", "direction", "normalization", "fixed_min", "fixed_max", "bands")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    CLIP_MIN_FIELD_NUMBER: _ClassVar[int]
    CLIP_MAX_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    FIXED_MIN_FIELD_NUMBER: _ClassVar[int]
    FIXED_MAX_FIELD_NUMBER: _ClassVar[int]
    BANDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    transform: Transform
    clip_min: float
    clip_max: float
    direction: Direction
    normalization: Normalization
    fixed_min: float
    fixed_max: float
    bands: _containers.RepeatedCompositeFieldContainer[Band]
    def __init__(self, name: _Optional[str] = ..., transform: _Optional[_Union[Transform, str]] = ..., clip_min: _Optional[float] = ..., clip_max: _Optional[float] = ..., direction: _Optional[_Union[Direction, str]] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., fixed_min: _Optional[float] = ..., fixed_max: _Optional[float] = ..., bands: _Optional[_Iterable[_Union[Band, _Mapping]]] = ...) -> None: ...

class SignalWeight(_message.Message):
    __slots__ = ("signal", "weight")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    signal: str
    weight: float
    def __init__(self, signal: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class DimensionSpec(_message.Message):
    __slots__ = ("dimension", "weights", "missing_policy", "missing_value", "min_coverage", "composite_weight")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_POLICY_FIELD_NUMBER: _ClassVar[int]
    MISSING_VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    dimension: _common_pb2.ValueDimension
    weights: _containers.RepeatedCompositeFieldContainer[SignalWeight]
    missing_policy: MissingPolicy
    missing_value: float
    min_coverage: float
    composite_weight: float
    def __init__(self, dimension: _Optional[_Union[_common_pb2.ValueDimension, str]] = ..., weights: _Optional[_Iterable[_Union[SignalWeight, _Mapping]]] = ..., missing_policy: _Optional[_Union[MissingPolicy, str]] = ..., missing_value: _Optional[float] = ..., min_coverage: _Optional[float] = ..., composite_weight: _Optional[float] = ...) -> None: ...

class TierSpec(_message.Message):
    __slots__ = ("tier_id", "display_name", "min_composite", "population_percent")
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    POPULATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    tier_id: str
    display_name: str
    min_composite: float
    population_percent: float
    def __init__(self, tier_id: _Optional[str] = ..., display_name: _Optional[str] = ..., min_composite: _Optional[float] = ..., population_percent: _Optional[float] = ...) -> None: ...

class ValueModel(_message.Message):
    __slots__ = ("name", "model_id", "version", "description", "signals", "dimensions", "tiers", "hysteresis_points", "change_note", "creator", "create_time", "active", "lifetime_value", "outcomes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    HYSTERESIS_POINTS_FIELD_NUMBER: _ClassVar[int]
    CHANGE_NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_id: str
    version: int
    description: str
    signals: _containers.RepeatedCompositeFieldContainer[SignalSpec]
    dimensions: _containers.RepeatedCompositeFieldContainer[DimensionSpec]
    tiers: _containers.RepeatedCompositeFieldContainer[TierSpec]
    hysteresis_points: float
    change_note: str
    creator: str
    create_time: _timestamp_pb2.Timestamp
    active: bool
    lifetime_value: LifetimeValueSpec
    outcomes: OutcomeSpec
    def __init__(self, name: _Optional[str] = ..., model_id: _Optional[str] = ..., version: _Optional[int] = ..., description: _Optional[str] = ..., signals: _Optional[_Iterable[_Union[SignalSpec, _Mapping]]] = ..., dimensions: _Optional[_Iterable[_Union[DimensionSpec, _Mapping]]] = ..., tiers: _Optional[_Iterable[_Union[TierSpec, _Mapping]]] = ..., hysteresis_points: _Optional[float] = ..., change_note: _Optional[str] = ..., creator: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active: _Optional[bool] = ..., lifetime_value: _Optional[_Union[LifetimeValueSpec, _Mapping]] = ..., outcomes: _Optional[_Union[OutcomeSpec, _Mapping]] = ...) -> None: ...

class OutcomeSpec(_message.Message):
    __slots__ = ("money_signal", "nps_signal", "csat_signal", "referenceability_signal", "referrals_signal", "adoption_signal", "bad_profit", "nps_scale")
    MONEY_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    NPS_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    CSAT_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REFERENCEABILITY_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REFERRALS_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ADOPTION_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_FIELD_NUMBER: _ClassVar[int]
    NPS_SCALE_FIELD_NUMBER: _ClassVar[int]
    money_signal: str
    nps_signal: str
    csat_signal: str
    referenceability_signal: str
    referrals_signal: str
    adoption_signal: str
    bad_profit: BadProfitRule
    nps_scale: NpsScale
    def __init__(self, money_signal: _Optional[str] = ..., nps_signal: _Optional[str] = ..., csat_signal: _Optional[str] = ..., referenceability_signal: _Optional[str] = ..., referrals_signal: _Optional[str] = ..., adoption_signal: _Optional[str] = ..., bad_profit: _Optional[_Union[BadProfitRule, _Mapping]] = ..., nps_scale: _Optional[_Union[NpsScale, str]] = ...) -> None: ...

class BadProfitRule(_message.Message):
    __slots__ = ("dimension_id", "top_share", "signal", "at_most", "at_least")
    DIMENSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_SHARE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    AT_MOST_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    dimension_id: str
    top_share: float
    signal: str
    at_most: float
    at_least: float
    def __init__(self, dimension_id: _Optional[str] = ..., top_share: _Optional[float] = ..., signal: _Optional[str] = ..., at_most: _Optional[float] = ..., at_least: _Optional[float] = ...) -> None: ...

class LifetimeValueSpec(_message.Message):
    __slots__ = ("frequency_signal", "recency_signal", "age_signal", "spend_signal", "time_unit", "horizon_months", "monthly_discount_rate")
    FREQUENCY_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    RECENCY_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    AGE_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SPEND_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIT_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MONTHS_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_DISCOUNT_RATE_FIELD_NUMBER: _ClassVar[int]
    frequency_signal: str
    recency_signal: str
    age_signal: str
    spend_signal: str
    time_unit: TimeUnit
    horizon_months: int
    monthly_discount_rate: float
    def __init__(self, frequency_signal: _Optional[str] = ..., recency_signal: _Optional[str] = ..., age_signal: _Optional[str] = ..., spend_signal: _Optional[str] = ..., time_unit: _Optional[_Union[TimeUnit, str]] = ..., horizon_months: _Optional[int] = ..., monthly_discount_rate: _Optional[float] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ValueModel
    def __init__(self, model: _Optional[_Union[ValueModel, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("model_id", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ValueModel]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[ValueModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ActivateModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class TierCount(_message.Message):
    __slots__ = ("tier", "customers")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.TierRef
    customers: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., customers: _Optional[int] = ...) -> None: ...

class ScoringRun(_message.Message):
    __slots__ = ("name", "model", "state", "customers_done", "customers_total", "percent_done", "tier_counts", "failure_reason", "create_time", "start_time", "end_time", "export_seconds", "scoring_seconds", "store_seconds", "previous_run", "churned_left_out", "lifetime_value", "export_sequence", "outcome_signals", "history_indexed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_DONE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PERCENT_DONE_FIELD_NUMBER: _ClassVar[int]
    TIER_COUNTS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPORT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STORE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RUN_FIELD_NUMBER: _ClassVar[int]
    CHURNED_LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_INDEXED_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    state: RunState
    customers_done: int
    customers_total: int
    percent_done: float
    tier_counts: _containers.RepeatedCompositeFieldContainer[TierCount]
    failure_reason: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    export_seconds: float
    scoring_seconds: float
    store_seconds: float
    previous_run: str
    churned_left_out: int
    lifetime_value: LifetimeValueFit
    export_sequence: int
    outcome_signals: _containers.RepeatedScalarFieldContainer[str]
    history_indexed: bool
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., customers_done: _Optional[int] = ..., customers_total: _Optional[int] = ..., percent_done: _Optional[float] = ..., tier_counts: _Optional[_Iterable[_Union[TierCount, _Mapping]]] = ..., failure_reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., export_seconds: _Optional[float] = ..., scoring_seconds: _Optional[float] = ..., store_seconds: _Optional[float] = ..., previous_run: _Optional[str] = ..., churned_left_out: _Optional[int] = ..., lifetime_value: _Optional[_Union[LifetimeValueFit, _Mapping]] = ..., export_sequence: _Optional[int] = ..., outcome_signals: _Optional[_Iterable[str]] = ..., history_indexed: _Optional[bool] = ...) -> None: ...

class FittedParameter(_message.Message):
    __slots__ = ("name", "value", "standard_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    standard_error: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., standard_error: _Optional[float] = ...) -> None: ...

class FitConvergence(_message.Message):
    __slots__ = ("converged", "iterations", "evaluations", "log_likelihood", "gradient_norm", "message")
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    converged: bool
    iterations: int
    evaluations: int
    log_likelihood: float
    gradient_norm: float
    message: str
    def __init__(self, converged: _Optional[bool] = ..., iterations: _Optional[int] = ..., evaluations: _Optional[int] = ..., log_likelihood: _Optional[float] = ..., gradient_norm: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class FittedLifetimeModel(_message.Message):
    __slots__ = ("parameters", "convergence", "customers")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CONVERGENCE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[FittedParameter]
    convergence: FitConvergence
    customers: int
    def __init__(self, parameters: _Optional[_Iterable[_Union[FittedParameter, _Mapping]]] = ..., convergence: _Optional[_Union[FitConvergence, _Mapping]] = ..., customers: _Optional[int] = ...) -> None: ...

class LifetimeValueFit(_message.Message):
    __slots__ = ("bgnbd", "gamma_gamma", "missing_reason", "customers", "customers_excluded")
    BGNBD_FIELD_NUMBER: _ClassVar[int]
    GAMMA_GAMMA_FIELD_NUMBER: _ClassVar[int]
    MISSING_REASON_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    bgnbd: FittedLifetimeModel
    gamma_gamma: FittedLifetimeModel
    missing_reason: str
    customers: int
    customers_excluded: int
    def __init__(self, bgnbd: _Optional[_Union[FittedLifetimeModel, _Mapping]] = ..., gamma_gamma: _Optional[_Union[FittedLifetimeModel, _Mapping]] = ..., missing_reason: _Optional[str] = ..., customers: _Optional[int] = ..., customers_excluded: _Optional[int] = ...) -> None: ...

class StartScoringRunRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetScoringRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListScoringRunsRequest(_message.Message):
    __slots__ = ("model_id", "state", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    state: RunState
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListScoringRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[ScoringRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[ScoringRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchScoringRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchRunsRequest(_message.Message):
    __slots__ = ("model_id", "include_current")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CURRENT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    include_current: bool
    def __init__(self, model_id: _Optional[str] = ..., include_current: _Optional[bool] = ...) -> None: ...

class CancelScoringRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StreamRunResultsRequest(_message.Message):
    __slots__ = ("run", "chunk_size")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    run: str
    chunk_size: int
    def __init__(self, run: _Optional[str] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class RunResultsChunk(_message.Message):
    __slots__ = ("run", "dimension_scores", "composite", "tier_levels", "ranks", "percentiles", "previous_tier_levels", "tiers", "total_customers", "outcome_values", "outcome_signals", "lifecycle_stages", "bad_profit")
    RUN_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    TIER_LEVELS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    PERCENTILES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TIER_LEVELS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_VALUES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGES_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_FIELD_NUMBER: _ClassVar[int]
    run: str
    dimension_scores: _common_pb2.ColumnarChunk
    composite: bytes
    tier_levels: bytes
    ranks: bytes
    percentiles: bytes
    previous_tier_levels: bytes
    tiers: _containers.RepeatedCompositeFieldContainer[_common_pb2.TierRef]
    total_customers: int
    outcome_values: _common_pb2.Float64Matrix
    outcome_signals: _containers.RepeatedScalarFieldContainer[str]
    lifecycle_stages: bytes
    bad_profit: bytes
    def __init__(self, run: _Optional[str] = ..., dimension_scores: _Optional[_Union[_common_pb2.ColumnarChunk, _Mapping]] = ..., composite: _Optional[bytes] = ..., tier_levels: _Optional[bytes] = ..., ranks: _Optional[bytes] = ..., percentiles: _Optional[bytes] = ..., previous_tier_levels: _Optional[bytes] = ..., tiers: _Optional[_Iterable[_Union[_common_pb2.TierRef, _Mapping]]] = ..., total_customers: _Optional[int] = ..., outcome_values: _Optional[_Union[_common_pb2.Float64Matrix, _Mapping]] = ..., outcome_signals: _Optional[_Iterable[str]] = ..., lifecycle_stages: _Optional[bytes] = ..., bad_profit: _Optional[bytes] = ...) -> None: ...

class ImportRunResultsRequest(_message.Message):
    __slots__ = ("model", "dimension_scores", "composite", "tier_ids", "ranks", "percentiles", "fitted_model")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    TIER_IDS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    PERCENTILES_FIELD_NUMBER: _ClassVar[int]
    FITTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    dimension_scores: _common_pb2.ColumnarChunk
    composite: bytes
    tier_ids: _containers.RepeatedScalarFieldContainer[str]
    ranks: bytes
    percentiles: bytes
    fitted_model: bytes
    def __init__(self, model: _Optional[str] = ..., dimension_scores: _Optional[_Union[_common_pb2.ColumnarChunk, _Mapping]] = ..., composite: _Optional[bytes] = ..., tier_ids: _Optional[_Iterable[str]] = ..., ranks: _Optional[bytes] = ..., percentiles: _Optional[bytes] = ..., fitted_model: _Optional[bytes] = ...) -> None: ...

class ListRunResultsRequest(_message.Message):
    __slots__ = ("run", "tier_id", "page_size", "page_token")
    RUN_FIELD_NUMBER: _ClassVar[int]
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run: str
    tier_id: str
    page_size: int
    page_token: str
    def __init__(self, run: _Optional[str] = ..., tier_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class CustomerResult(_message.Message):
    __slots__ = ("customer", "dimension_scores", "composite", "tier", "rank", "percentile", "previous_tier", "outcome_values", "lifecycle_stage", "bad_profit")
    class OutcomeValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TIER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_VALUES_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_FIELD_NUMBER: _ClassVar[int]
    customer: str
    dimension_scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.DimensionScore]
    composite: float
    tier: _common_pb2.TierRef
    rank: int
    percentile: float
    previous_tier: _common_pb2.TierRef
    outcome_values: _containers.ScalarMap[str, float]
    lifecycle_stage: _common_pb2.LifecycleStage
    bad_profit: bool
    def __init__(self, customer: _Optional[str] = ..., dimension_scores: _Optional[_Iterable[_Union[_common_pb2.DimensionScore, _Mapping]]] = ..., composite: _Optional[float] = ..., tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., rank: _Optional[int] = ..., percentile: _Optional[float] = ..., previous_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., outcome_values: _Optional[_Mapping[str, float]] = ..., lifecycle_stage: _Optional[_Union[_common_pb2.LifecycleStage, str]] = ..., bad_profit: _Optional[bool] = ...) -> None: ...

class ListRunResultsResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CustomerResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[CustomerResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTierMovementRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class TierMove(_message.Message):
    __slots__ = ("from_tier", "to_tier", "customers")
    FROM_TIER_FIELD_NUMBER: _ClassVar[int]
    TO_TIER_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    from_tier: _common_pb2.TierRef
    to_tier: _common_pb2.TierRef
    customers: int
    def __init__(self, from_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., to_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., customers: _Optional[int] = ...) -> None: ...

class TierMovement(_message.Message):
    __slots__ = ("run", "previous_run", "moves")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RUN_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    run: str
    previous_run: str
    moves: _containers.RepeatedCompositeFieldContainer[TierMove]
    def __init__(self, run: _Optional[str] = ..., previous_run: _Optional[str] = ..., moves: _Optional[_Iterable[_Union[TierMove, _Mapping]]] = ...) -> None: ...

class SignalContribution(_message.Message):
    __slots__ = ("signal", "dimension", "raw_value", "normalized", "dimension_points", "composite_points")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    RAW_VALUE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_POINTS_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_POINTS_FIELD_NUMBER: _ClassVar[int]
    signal: str
    dimension: _common_pb2.ValueDimension
    raw_value: float
    normalized: float
    dimension_points: float
    composite_points: float
    def __init__(self, signal: _Optional[str] = ..., dimension: _Optional[_Union[_common_pb2.ValueDimension, str]] = ..., raw_value: _Optional[float] = ..., normalized: _Optional[float] = ..., dimension_points: _Optional[float] = ..., composite_points: _Optional[float] = ...) -> None: ...

class CustomerScore(_message.Message):
    __slots__ = ("customer", "model", "run", "dimension_scores", "composite", "tier", "contributions", "derived_signals")
    class DerivedSignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    DERIVED_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    customer: str
    model: str
    run: str
    dimension_scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.DimensionScore]
    composite: float
    tier: _common_pb2.TierRef
    contributions: _containers.RepeatedCompositeFieldContainer[SignalContribution]
    derived_signals: _containers.ScalarMap[str, float]
    def __init__(self, customer: _Optional[str] = ..., model: _Optional[str] = ..., run: _Optional[str] = ..., dimension_scores: _Optional[_Iterable[_Union[_common_pb2.DimensionScore, _Mapping]]] = ..., composite: _Optional[float] = ..., tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., contributions: _Optional[_Iterable[_Union[SignalContribution, _Mapping]]] = ..., derived_signals: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreCustomerRequest(_message.Message):
    __slots__ = ("customer", "model")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    customer: str
    model: str
    def __init__(self, customer: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ScoreSignalsRequest(_message.Message):
    __slots__ = ("signals", "model")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    signals: _containers.ScalarMap[str, float]
    model: str
    def __init__(self, signals: _Optional[_Mapping[str, float]] = ..., model: _Optional[str] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("model", "signals", "run", "previous_tier_levels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TIER_LEVELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    signals: _common_pb2.ColumnarChunk
    run: str
    previous_tier_levels: bytes
    def __init__(self, model: _Optional[str] = ..., signals: _Optional[_Union[_common_pb2.ColumnarChunk, _Mapping]] = ..., run: _Optional[str] = ..., previous_tier_levels: _Optional[bytes] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("dimension_scores", "composite", "tier_levels", "derived_signals", "run")
    DIMENSION_SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    TIER_LEVELS_FIELD_NUMBER: _ClassVar[int]
    DERIVED_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    dimension_scores: _common_pb2.ColumnarChunk
    composite: bytes
    tier_levels: bytes
    derived_signals: _common_pb2.ColumnarChunk
    run: str
    def __init__(self, dimension_scores: _Optional[_Union[_common_pb2.ColumnarChunk, _Mapping]] = ..., composite: _Optional[bytes] = ..., tier_levels: _Optional[bytes] = ..., derived_signals: _Optional[_Union[_common_pb2.ColumnarChunk, _Mapping]] = ..., run: _Optional[str] = ...) -> None: ...

class GetOutcomeReportRequest(_message.Message):
    __slots__ = ("from_run", "to_run", "model", "last_runs")
    FROM_RUN_FIELD_NUMBER: _ClassVar[int]
    TO_RUN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAST_RUNS_FIELD_NUMBER: _ClassVar[int]
    from_run: str
    to_run: str
    model: str
    last_runs: int
    def __init__(self, from_run: _Optional[str] = ..., to_run: _Optional[str] = ..., model: _Optional[str] = ..., last_runs: _Optional[int] = ...) -> None: ...

class SignalOutcome(_message.Message):
    __slots__ = ("mean_start", "mean_end", "change", "sum_start", "sum_end", "customers_start", "customers_end")
    MEAN_START_FIELD_NUMBER: _ClassVar[int]
    MEAN_END_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    SUM_START_FIELD_NUMBER: _ClassVar[int]
    SUM_END_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_START_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_END_FIELD_NUMBER: _ClassVar[int]
    mean_start: float
    mean_end: float
    change: float
    sum_start: float
    sum_end: float
    customers_start: int
    customers_end: int
    def __init__(self, mean_start: _Optional[float] = ..., mean_end: _Optional[float] = ..., change: _Optional[float] = ..., sum_start: _Optional[float] = ..., sum_end: _Optional[float] = ..., customers_start: _Optional[int] = ..., customers_end: _Optional[int] = ...) -> None: ...

class TierOutcome(_message.Message):
    __slots__ = ("tier", "customers", "customers_retained", "customers_lost", "logo_retention", "money_start", "money_end", "money_lost", "gross_revenue_retention", "net_revenue_retention", "nps", "promoter_share_start", "promoter_share_end", "detractor_share_start", "detractor_share_end", "csat", "referenceability", "referrals", "adoption", "moved_up", "moved_down", "stayed", "bad_profit_customers", "bad_profit_money", "bad_profit_money_share")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_RETAINED_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_LOST_FIELD_NUMBER: _ClassVar[int]
    LOGO_RETENTION_FIELD_NUMBER: _ClassVar[int]
    MONEY_START_FIELD_NUMBER: _ClassVar[int]
    MONEY_END_FIELD_NUMBER: _ClassVar[int]
    MONEY_LOST_FIELD_NUMBER: _ClassVar[int]
    GROSS_REVENUE_RETENTION_FIELD_NUMBER: _ClassVar[int]
    NET_REVENUE_RETENTION_FIELD_NUMBER: _ClassVar[int]
    NPS_FIELD_NUMBER: _ClassVar[int]
    PROMOTER_SHARE_START_FIELD_NUMBER: _ClassVar[int]
    PROMOTER_SHARE_END_FIELD_NUMBER: _ClassVar[int]
    DETRACTOR_SHARE_START_FIELD_NUMBER: _ClassVar[int]
    DETRACTOR_SHARE_END_FIELD_NUMBER: _ClassVar[int]
    CSAT_FIELD_NUMBER: _ClassVar[int]
    REFERENCEABILITY_FIELD_NUMBER: _ClassVar[int]
    REFERRALS_FIELD_NUMBER: _ClassVar[int]
    ADOPTION_FIELD_NUMBER: _ClassVar[int]
    MOVED_UP_FIELD_NUMBER: _ClassVar[int]
    MOVED_DOWN_FIELD_NUMBER: _ClassVar[int]
    STAYED_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_MONEY_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_MONEY_SHARE_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.TierRef
    customers: int
    customers_retained: int
    customers_lost: int
    logo_retention: float
    money_start: float
    money_end: float
    money_lost: float
    gross_revenue_retention: float
    net_revenue_retention: float
    nps: SignalOutcome
    promoter_share_start: float
    promoter_share_end: float
    detractor_share_start: float
    detractor_share_end: float
    csat: SignalOutcome
    referenceability: SignalOutcome
    referrals: SignalOutcome
    adoption: SignalOutcome
    moved_up: int
    moved_down: int
    stayed: int
    bad_profit_customers: int
    bad_profit_money: float
    bad_profit_money_share: float
    def __init__(self, tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., customers: _Optional[int] = ..., customers_retained: _Optional[int] = ..., customers_lost: _Optional[int] = ..., logo_retention: _Optional[float] = ..., money_start: _Optional[float] = ..., money_end: _Optional[float] = ..., money_lost: _Optional[float] = ..., gross_revenue_retention: _Optional[float] = ..., net_revenue_retention: _Optional[float] = ..., nps: _Optional[_Union[SignalOutcome, _Mapping]] = ..., promoter_share_start: _Optional[float] = ..., promoter_share_end: _Optional[float] = ..., detractor_share_start: _Optional[float] = ..., detractor_share_end: _Optional[float] = ..., csat: _Optional[_Union[SignalOutcome, _Mapping]] = ..., referenceability: _Optional[_Union[SignalOutcome, _Mapping]] = ..., referrals: _Optional[_Union[SignalOutcome, _Mapping]] = ..., adoption: _Optional[_Union[SignalOutcome, _Mapping]] = ..., moved_up: _Optional[int] = ..., moved_down: _Optional[int] = ..., stayed: _Optional[int] = ..., bad_profit_customers: _Optional[int] = ..., bad_profit_money: _Optional[float] = ..., bad_profit_money_share: _Optional[float] = ...) -> None: ...

class OutcomePeriod(_message.Message):
    __slots__ = ("from_run", "to_run", "from_model", "to_model", "from_time", "to_time", "tiers", "total", "customers_gained", "money_gained", "notes")
    FROM_RUN_FIELD_NUMBER: _ClassVar[int]
    TO_RUN_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_MODEL_FIELD_NUMBER: _ClassVar[int]
    FROM_TIME_FIELD_NUMBER: _ClassVar[int]
    TO_TIME_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_GAINED_FIELD_NUMBER: _ClassVar[int]
    MONEY_GAINED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    from_run: str
    to_run: str
    from_model: str
    to_model: str
    from_time: _timestamp_pb2.Timestamp
    to_time: _timestamp_pb2.Timestamp
    tiers: _containers.RepeatedCompositeFieldContainer[TierOutcome]
    total: TierOutcome
    customers_gained: int
    money_gained: float
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_run: _Optional[str] = ..., to_run: _Optional[str] = ..., from_model: _Optional[str] = ..., to_model: _Optional[str] = ..., from_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., to_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[TierOutcome, _Mapping]]] = ..., total: _Optional[_Union[TierOutcome, _Mapping]] = ..., customers_gained: _Optional[int] = ..., money_gained: _Optional[float] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class OutcomeReport(_message.Message):
    __slots__ = ("periods",)
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    periods: _containers.RepeatedCompositeFieldContainer[OutcomePeriod]
    def __init__(self, periods: _Optional[_Iterable[_Union[OutcomePeriod, _Mapping]]] = ...) -> None: ...

class GetCustomerHistoryRequest(_message.Message):
    __slots__ = ("customer", "model", "last_runs")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAST_RUNS_FIELD_NUMBER: _ClassVar[int]
    customer: str
    model: str
    last_runs: int
    def __init__(self, customer: _Optional[str] = ..., model: _Optional[str] = ..., last_runs: _Optional[int] = ...) -> None: ...

class CustomerRunResult(_message.Message):
    __slots__ = ("run", "model", "end_time", "result")
    RUN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    run: str
    model: str
    end_time: _timestamp_pb2.Timestamp
    result: CustomerResult
    def __init__(self, run: _Optional[str] = ..., model: _Optional[str] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[CustomerResult, _Mapping]] = ...) -> None: ...

class CustomerHistory(_message.Message):
    __slots__ = ("customer", "model", "runs")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    customer: str
    model: str
    runs: _containers.RepeatedCompositeFieldContainer[CustomerRunResult]
    def __init__(self, customer: _Optional[str] = ..., model: _Optional[str] = ..., runs: _Optional[_Iterable[_Union[CustomerRunResult, _Mapping]]] = ...) -> None: ...
