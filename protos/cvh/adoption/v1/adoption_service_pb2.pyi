import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_LEVEL_UNSPECIFIED: _ClassVar[NodeLevel]
    NODE_LEVEL_STRATEGY: _ClassVar[NodeLevel]
    NODE_LEVEL_INITIATIVE: _ClassVar[NodeLevel]
    NODE_LEVEL_USE_CASE: _ClassVar[NodeLevel]
    NODE_LEVEL_PROCEDURE: _ClassVar[NodeLevel]

class OwningFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OWNING_FUNCTION_UNSPECIFIED: _ClassVar[OwningFunction]
    OWNING_FUNCTION_MARKETING: _ClassVar[OwningFunction]
    OWNING_FUNCTION_SALES: _ClassVar[OwningFunction]
    OWNING_FUNCTION_CUSTOMER_SUCCESS: _ClassVar[OwningFunction]
    OWNING_FUNCTION_CS_OPERATIONS: _ClassVar[OwningFunction]
    OWNING_FUNCTION_PRODUCT: _ClassVar[OwningFunction]

class ChildrenRuleKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHILDREN_RULE_KIND_UNSPECIFIED: _ClassVar[ChildrenRuleKind]
    CHILDREN_RULE_KIND_ALL: _ClassVar[ChildrenRuleKind]
    CHILDREN_RULE_KIND_AT_LEAST: _ClassVar[ChildrenRuleKind]
    CHILDREN_RULE_KIND_WEIGHTED_SHARE: _ClassVar[ChildrenRuleKind]

class TelemetryRejectionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TELEMETRY_REJECTION_REASON_UNSPECIFIED: _ClassVar[TelemetryRejectionReason]
    TELEMETRY_REJECTION_REASON_UNKNOWN_CUSTOMER: _ClassVar[TelemetryRejectionReason]
    TELEMETRY_REJECTION_REASON_BAD_EVENT_NAME: _ClassVar[TelemetryRejectionReason]
    TELEMETRY_REJECTION_REASON_FUTURE_TIME: _ClassVar[TelemetryRejectionReason]
    TELEMETRY_REJECTION_REASON_BEYOND_RETENTION: _ClassVar[TelemetryRejectionReason]
    TELEMETRY_REJECTION_REASON_BAD_COUNT: _ClassVar[TelemetryRejectionReason]

class Achievement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACHIEVEMENT_UNSPECIFIED: _ClassVar[Achievement]
    ACHIEVEMENT_ACHIEVED: _ClassVar[Achievement]
    ACHIEVEMENT_NOT_ACHIEVED: _ClassVar[Achievement]
NODE_LEVEL_UNSPECIFIED: NodeLevel
NODE_LEVEL_STRATEGY: NodeLevel
NODE_LEVEL_INITIATIVE: NodeLevel
NODE_LEVEL_USE_CASE: NodeLevel
NODE_LEVEL_PROCEDURE: NodeLevel
OWNING_FUNCTION_UNSPECIFIED: OwningFunction
OWNING_FUNCTION_MARKETING: OwningFunction
OWNING_FUNCTION_SALES: OwningFunction
OWNING_FUNCTION_CUSTOMER_SUCCESS: OwningFunction
OWNING_FUNCTION_CS_OPERATIONS: OwningFunction
OWNING_FUNCTION_PRODUCT: OwningFunction
CHILDREN_RULE_KIND_UNSPECIFIED: ChildrenRuleKind
CHILDREN_RULE_KIND_ALL: ChildrenRuleKind
CHILDREN_RULE_KIND_AT_LEAST: ChildrenRuleKind
CHILDREN_RULE_KIND_WEIGHTED_SHARE: ChildrenRuleKind
TELEMETRY_REJECTION_REASON_UNSPECIFIED: TelemetryRejectionReason
TELEMETRY_REJECTION_REASON_UNKNOWN_CUSTOMER: TelemetryRejectionReason
TELEMETRY_REJECTION_REASON_BAD_EVENT_NAME: TelemetryRejectionReason
TELEMETRY_REJECTION_REASON_FUTURE_TIME: TelemetryRejectionReason
TELEMETRY_REJECTION_REASON_BEYOND_RETENTION: TelemetryRejectionReason
TELEMETRY_REJECTION_REASON_BAD_COUNT: TelemetryRejectionReason
ACHIEVEMENT_UNSPECIFIED: Achievement
ACHIEVEMENT_ACHIEVED: Achievement
ACHIEVEMENT_NOT_ACHIEVED: Achievement

class ProcedureRule(_message.Message):
    __slots__ = ("event_names", "min_count", "min_active_days", "min_distinct_users", "window_days")
    EVENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_ACTIVE_DAYS_FIELD_NUMBER: _ClassVar[int]
    MIN_DISTINCT_USERS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    event_names: _containers.RepeatedScalarFieldContainer[str]
    min_count: int
    min_active_days: int
    min_distinct_users: int
    window_days: int
    def __init__(self, event_names: _Optional[_Iterable[str]] = ..., min_count: _Optional[int] = ..., min_active_days: _Optional[int] = ..., min_distinct_users: _Optional[int] = ..., window_days: _Optional[int] = ...) -> None: ...

class ChildrenRule(_message.Message):
    __slots__ = ("kind", "min_children", "min_weighted_share")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MIN_CHILDREN_FIELD_NUMBER: _ClassVar[int]
    MIN_WEIGHTED_SHARE_FIELD_NUMBER: _ClassVar[int]
    kind: ChildrenRuleKind
    min_children: int
    min_weighted_share: float
    def __init__(self, kind: _Optional[_Union[ChildrenRuleKind, str]] = ..., min_children: _Optional[int] = ..., min_weighted_share: _Optional[float] = ...) -> None: ...

class ValueNode(_message.Message):
    __slots__ = ("key", "level", "display_name", "definition", "parent_key", "owning_function", "weight", "procedure_rule", "children_rule")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    OWNING_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROCEDURE_RULE_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_RULE_FIELD_NUMBER: _ClassVar[int]
    key: str
    level: NodeLevel
    display_name: str
    definition: str
    parent_key: str
    owning_function: OwningFunction
    weight: float
    procedure_rule: ProcedureRule
    children_rule: ChildrenRule
    def __init__(self, key: _Optional[str] = ..., level: _Optional[_Union[NodeLevel, str]] = ..., display_name: _Optional[str] = ..., definition: _Optional[str] = ..., parent_key: _Optional[str] = ..., owning_function: _Optional[_Union[OwningFunction, str]] = ..., weight: _Optional[float] = ..., procedure_rule: _Optional[_Union[ProcedureRule, _Mapping]] = ..., children_rule: _Optional[_Union[ChildrenRule, _Mapping]] = ...) -> None: ...

class ValueMapVersion(_message.Message):
    __slots__ = ("name", "version", "nodes", "change_note", "author", "create_time", "active", "level_counts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CHANGE_NOTE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    nodes: _containers.RepeatedCompositeFieldContainer[ValueNode]
    change_note: str
    author: str
    create_time: _timestamp_pb2.Timestamp
    active: bool
    level_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[ValueNode, _Mapping]]] = ..., change_note: _Optional[str] = ..., author: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active: _Optional[bool] = ..., level_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class CreateValueMapVersionRequest(_message.Message):
    __slots__ = ("value_map", "skip_activation", "validate_only")
    VALUE_MAP_FIELD_NUMBER: _ClassVar[int]
    SKIP_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    value_map: ValueMapVersion
    skip_activation: bool
    validate_only: bool
    def __init__(self, value_map: _Optional[_Union[ValueMapVersion, _Mapping]] = ..., skip_activation: _Optional[bool] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class GetValueMapVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListValueMapVersionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListValueMapVersionsResponse(_message.Message):
    __slots__ = ("value_maps", "next_page_token")
    VALUE_MAPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    value_maps: _containers.RepeatedCompositeFieldContainer[ValueMapVersion]
    next_page_token: str
    def __init__(self, value_maps: _Optional[_Iterable[_Union[ValueMapVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ActivateValueMapVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DiffValueMapVersionsRequest(_message.Message):
    __slots__ = ("base", "target")
    BASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    base: str
    target: str
    def __init__(self, base: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ChangedNode(_message.Message):
    __slots__ = ("key", "before", "after", "changed_fields")
    KEY_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    before: ValueNode
    after: ValueNode
    changed_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., before: _Optional[_Union[ValueNode, _Mapping]] = ..., after: _Optional[_Union[ValueNode, _Mapping]] = ..., changed_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class ValueMapDiff(_message.Message):
    __slots__ = ("base", "target", "added", "removed", "changed")
    BASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    base: str
    target: str
    added: _containers.RepeatedCompositeFieldContainer[ValueNode]
    removed: _containers.RepeatedCompositeFieldContainer[ValueNode]
    changed: _containers.RepeatedCompositeFieldContainer[ChangedNode]
    def __init__(self, base: _Optional[str] = ..., target: _Optional[str] = ..., added: _Optional[_Iterable[_Union[ValueNode, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[ValueNode, _Mapping]]] = ..., changed: _Optional[_Iterable[_Union[ChangedNode, _Mapping]]] = ...) -> None: ...

class RecordTelemetryRequest(_message.Message):
    __slots__ = ("batch_id", "customer_ids", "event_names", "customer_indices", "event_indices", "event_times", "counts", "user_ids", "user_indices")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_INDICES_FIELD_NUMBER: _ClassVar[int]
    EVENT_INDICES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIMES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    USER_INDICES_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    event_names: _containers.RepeatedScalarFieldContainer[str]
    customer_indices: bytes
    event_indices: bytes
    event_times: bytes
    counts: bytes
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    user_indices: bytes
    def __init__(self, batch_id: _Optional[str] = ..., customer_ids: _Optional[_Iterable[str]] = ..., event_names: _Optional[_Iterable[str]] = ..., customer_indices: _Optional[bytes] = ..., event_indices: _Optional[bytes] = ..., event_times: _Optional[bytes] = ..., counts: _Optional[bytes] = ..., user_ids: _Optional[_Iterable[str]] = ..., user_indices: _Optional[bytes] = ...) -> None: ...

class TelemetryRejection(_message.Message):
    __slots__ = ("message_index", "position", "reason")
    MESSAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    message_index: int
    position: int
    reason: TelemetryRejectionReason
    def __init__(self, message_index: _Optional[int] = ..., position: _Optional[int] = ..., reason: _Optional[_Union[TelemetryRejectionReason, str]] = ...) -> None: ...

class RejectionCount(_message.Message):
    __slots__ = ("reason", "events")
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    reason: TelemetryRejectionReason
    events: int
    def __init__(self, reason: _Optional[_Union[TelemetryRejectionReason, str]] = ..., events: _Optional[int] = ...) -> None: ...

class RecordTelemetryResponse(_message.Message):
    __slots__ = ("messages", "duplicate_messages", "events_received", "events_kept", "events_rejected", "rejection_counts", "rejections", "daily_rows_written")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_KEPT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    DAILY_ROWS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    messages: int
    duplicate_messages: int
    events_received: int
    events_kept: int
    events_rejected: int
    rejection_counts: _containers.RepeatedCompositeFieldContainer[RejectionCount]
    rejections: _containers.RepeatedCompositeFieldContainer[TelemetryRejection]
    daily_rows_written: int
    def __init__(self, messages: _Optional[int] = ..., duplicate_messages: _Optional[int] = ..., events_received: _Optional[int] = ..., events_kept: _Optional[int] = ..., events_rejected: _Optional[int] = ..., rejection_counts: _Optional[_Iterable[_Union[RejectionCount, _Mapping]]] = ..., rejections: _Optional[_Iterable[_Union[TelemetryRejection, _Mapping]]] = ..., daily_rows_written: _Optional[int] = ...) -> None: ...

class GetCustomerAdoptionRequest(_message.Message):
    __slots__ = ("customer", "value_map_version")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    customer: str
    value_map_version: str
    def __init__(self, customer: _Optional[str] = ..., value_map_version: _Optional[str] = ...) -> None: ...

class NodeAdoption(_message.Message):
    __slots__ = ("key", "level", "display_name", "parent_key", "achieved", "progress", "last_active_day", "events", "active_days", "distinct_users", "why_not", "missing_procedures", "first_achieved_day", "days_to_value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_DAY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DAYS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_USERS_FIELD_NUMBER: _ClassVar[int]
    WHY_NOT_FIELD_NUMBER: _ClassVar[int]
    MISSING_PROCEDURES_FIELD_NUMBER: _ClassVar[int]
    FIRST_ACHIEVED_DAY_FIELD_NUMBER: _ClassVar[int]
    DAYS_TO_VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    level: NodeLevel
    display_name: str
    parent_key: str
    achieved: bool
    progress: float
    last_active_day: str
    events: int
    active_days: int
    distinct_users: int
    why_not: _containers.RepeatedScalarFieldContainer[str]
    missing_procedures: _containers.RepeatedScalarFieldContainer[str]
    first_achieved_day: str
    days_to_value: int
    def __init__(self, key: _Optional[str] = ..., level: _Optional[_Union[NodeLevel, str]] = ..., display_name: _Optional[str] = ..., parent_key: _Optional[str] = ..., achieved: _Optional[bool] = ..., progress: _Optional[float] = ..., last_active_day: _Optional[str] = ..., events: _Optional[int] = ..., active_days: _Optional[int] = ..., distinct_users: _Optional[int] = ..., why_not: _Optional[_Iterable[str]] = ..., missing_procedures: _Optional[_Iterable[str]] = ..., first_achieved_day: _Optional[str] = ..., days_to_value: _Optional[int] = ...) -> None: ...

class CustomerAdoption(_message.Message):
    __slots__ = ("customer", "value_map_version", "evaluated_day", "nodes", "achieved_counts")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_DAY_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_COUNTS_FIELD_NUMBER: _ClassVar[int]
    customer: str
    value_map_version: str
    evaluated_day: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeAdoption]
    achieved_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, customer: _Optional[str] = ..., value_map_version: _Optional[str] = ..., evaluated_day: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeAdoption, _Mapping]]] = ..., achieved_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class GetNodeAdoptionRequest(_message.Message):
    __slots__ = ("node_key", "tier_id")
    NODE_KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    node_key: str
    tier_id: str
    def __init__(self, node_key: _Optional[str] = ..., tier_id: _Optional[str] = ...) -> None: ...

class TierAdoption(_message.Message):
    __slots__ = ("tier_id", "display_name", "customers", "customers_achieved", "share")
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_ACHIEVED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    tier_id: str
    display_name: str
    customers: int
    customers_achieved: int
    share: float
    def __init__(self, tier_id: _Optional[str] = ..., display_name: _Optional[str] = ..., customers: _Optional[int] = ..., customers_achieved: _Optional[int] = ..., share: _Optional[float] = ...) -> None: ...

class NodeShare(_message.Message):
    __slots__ = ("key", "level", "display_name", "parent_key", "customers_achieved", "share", "previous_share", "tiers", "median_days_to_value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_ACHIEVED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SHARE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_DAYS_TO_VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    level: NodeLevel
    display_name: str
    parent_key: str
    customers_achieved: int
    share: float
    previous_share: float
    tiers: _containers.RepeatedCompositeFieldContainer[TierAdoption]
    median_days_to_value: float
    def __init__(self, key: _Optional[str] = ..., level: _Optional[_Union[NodeLevel, str]] = ..., display_name: _Optional[str] = ..., parent_key: _Optional[str] = ..., customers_achieved: _Optional[int] = ..., share: _Optional[float] = ..., previous_share: _Optional[float] = ..., tiers: _Optional[_Iterable[_Union[TierAdoption, _Mapping]]] = ..., median_days_to_value: _Optional[float] = ...) -> None: ...

class NodeAdoptionReport(_message.Message):
    __slots__ = ("value_map_version", "evaluate_time", "customers_evaluated", "nodes")
    VALUE_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    value_map_version: str
    evaluate_time: _timestamp_pb2.Timestamp
    customers_evaluated: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeShare]
    def __init__(self, value_map_version: _Optional[str] = ..., evaluate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., customers_evaluated: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeShare, _Mapping]]] = ...) -> None: ...

class ListNodeCustomersRequest(_message.Message):
    __slots__ = ("node_key", "achievement", "tier_id", "owner", "account", "page_size", "page_token")
    NODE_KEY_FIELD_NUMBER: _ClassVar[int]
    ACHIEVEMENT_FIELD_NUMBER: _ClassVar[int]
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    node_key: str
    achievement: Achievement
    tier_id: str
    owner: str
    account: str
    page_size: int
    page_token: str
    def __init__(self, node_key: _Optional[str] = ..., achievement: _Optional[_Union[Achievement, str]] = ..., tier_id: _Optional[str] = ..., owner: _Optional[str] = ..., account: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class NodeCustomer(_message.Message):
    __slots__ = ("customer", "tier_id", "owner", "achieved", "first_achieved_day", "procedures_achieved_share")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_FIELD_NUMBER: _ClassVar[int]
    FIRST_ACHIEVED_DAY_FIELD_NUMBER: _ClassVar[int]
    PROCEDURES_ACHIEVED_SHARE_FIELD_NUMBER: _ClassVar[int]
    customer: str
    tier_id: str
    owner: str
    achieved: bool
    first_achieved_day: str
    procedures_achieved_share: float
    def __init__(self, customer: _Optional[str] = ..., tier_id: _Optional[str] = ..., owner: _Optional[str] = ..., achieved: _Optional[bool] = ..., first_achieved_day: _Optional[str] = ..., procedures_achieved_share: _Optional[float] = ...) -> None: ...

class ListNodeCustomersResponse(_message.Message):
    __slots__ = ("customers", "next_page_token", "total_size", "value_map_version")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[NodeCustomer]
    next_page_token: str
    total_size: int
    value_map_version: str
    def __init__(self, customers: _Optional[_Iterable[_Union[NodeCustomer, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ..., value_map_version: _Optional[str] = ...) -> None: ...

class RecommendUseCasesRequest(_message.Message):
    __slots__ = ("customer", "limit", "peers")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    customer: str
    limit: int
    peers: int
    def __init__(self, customer: _Optional[str] = ..., limit: _Optional[int] = ..., peers: _Optional[int] = ...) -> None: ...

class UseCaseRecommendation(_message.Message):
    __slots__ = ("key", "display_name", "parent_key", "peer_share", "base_share", "lift")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    PEER_SHARE_FIELD_NUMBER: _ClassVar[int]
    BASE_SHARE_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    key: str
    display_name: str
    parent_key: str
    peer_share: float
    base_share: float
    lift: float
    def __init__(self, key: _Optional[str] = ..., display_name: _Optional[str] = ..., parent_key: _Optional[str] = ..., peer_share: _Optional[float] = ..., base_share: _Optional[float] = ..., lift: _Optional[float] = ...) -> None: ...

class RecommendUseCasesResponse(_message.Message):
    __slots__ = ("customer", "value_map_version", "tier_id", "peers", "mean_similarity", "use_cases")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    USE_CASES_FIELD_NUMBER: _ClassVar[int]
    customer: str
    value_map_version: str
    tier_id: str
    peers: int
    mean_similarity: float
    use_cases: _containers.RepeatedCompositeFieldContainer[UseCaseRecommendation]
    def __init__(self, customer: _Optional[str] = ..., value_map_version: _Optional[str] = ..., tier_id: _Optional[str] = ..., peers: _Optional[int] = ..., mean_similarity: _Optional[float] = ..., use_cases: _Optional[_Iterable[_Union[UseCaseRecommendation, _Mapping]]] = ...) -> None: ...
