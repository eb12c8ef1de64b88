from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueDimension(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_DIMENSION_UNSPECIFIED: _ClassVar[ValueDimension]
    VALUE_DIMENSION_PROFITABILITY: _ClassVar[ValueDimension]
    VALUE_DIMENSION_STRATEGIC_GROWTH: _ClassVar[ValueDimension]
    VALUE_DIMENSION_REPUTATION: _ClassVar[ValueDimension]
    VALUE_DIMENSION_FEEDBACK: _ClassVar[ValueDimension]

class StakeholderRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAKEHOLDER_ROLE_UNSPECIFIED: _ClassVar[StakeholderRole]
    STAKEHOLDER_ROLE_IMPACT_GROUP: _ClassVar[StakeholderRole]
    STAKEHOLDER_ROLE_END_USER: _ClassVar[StakeholderRole]
    STAKEHOLDER_ROLE_BUYER: _ClassVar[StakeholderRole]
    STAKEHOLDER_ROLE_GATEKEEPER: _ClassVar[StakeholderRole]
    STAKEHOLDER_ROLE_PARTNER: _ClassVar[StakeholderRole]
    STAKEHOLDER_ROLE_DONOR: _ClassVar[StakeholderRole]
    STAKEHOLDER_ROLE_INTERNAL: _ClassVar[StakeholderRole]

class LifecycleStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIFECYCLE_STAGE_UNSPECIFIED: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_PROSPECT: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_ONBOARDING: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_ACTIVE: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_AT_RISK: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_CHURNED: _ClassVar[LifecycleStage]
VALUE_DIMENSION_UNSPECIFIED: ValueDimension
VALUE_DIMENSION_PROFITABILITY: ValueDimension
VALUE_DIMENSION_STRATEGIC_GROWTH: ValueDimension
VALUE_DIMENSION_REPUTATION: ValueDimension
VALUE_DIMENSION_FEEDBACK: ValueDimension
STAKEHOLDER_ROLE_UNSPECIFIED: StakeholderRole
STAKEHOLDER_ROLE_IMPACT_GROUP: StakeholderRole
STAKEHOLDER_ROLE_END_USER: StakeholderRole
STAKEHOLDER_ROLE_BUYER: StakeholderRole
STAKEHOLDER_ROLE_GATEKEEPER: StakeholderRole
STAKEHOLDER_ROLE_PARTNER: StakeholderRole
STAKEHOLDER_ROLE_DONOR: StakeholderRole
STAKEHOLDER_ROLE_INTERNAL: StakeholderRole
LIFECYCLE_STAGE_UNSPECIFIED: LifecycleStage
LIFECYCLE_STAGE_PROSPECT: LifecycleStage
LIFECYCLE_STAGE_ONBOARDING: LifecycleStage
LIFECYCLE_STAGE_ACTIVE: LifecycleStage
LIFECYCLE_STAGE_AT_RISK: LifecycleStage
LIFECYCLE_STAGE_CHURNED: LifecycleStage

class TierRef(_message.Message):
    __slots__ = ("tier_id", "level", "display_name")
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    tier_id: str
    level: int
    display_name: str
    def __init__(self, tier_id: _Optional[str] = ..., level: _Optional[int] = ..., display_name: _Optional[str] = ...) -> None: ...

class DimensionScore(_message.Message):
    __slots__ = ("dimension", "score")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    dimension: ValueDimension
    score: float
    def __init__(self, dimension: _Optional[_Union[ValueDimension, str]] = ..., score: _Optional[float] = ...) -> None: ...

class Float64Matrix(_message.Message):
    __slots__ = ("rows", "columns", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    columns: int
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., columns: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ColumnarChunk(_message.Message):
    __slots__ = ("customer_ids", "column_names", "values")
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    COLUMN_NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    column_names: _containers.RepeatedScalarFieldContainer[str]
    values: Float64Matrix
    def __init__(self, customer_ids: _Optional[_Iterable[str]] = ..., column_names: _Optional[_Iterable[str]] = ..., values: _Optional[_Union[Float64Matrix, _Mapping]] = ...) -> None: ...
