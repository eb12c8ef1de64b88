import datetime

from cvh.common.v1 import common_pb2 as _common_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Customer(_message.Message):
    __slots__ = ("name", "customer_id", "display_name", "parent", "stakeholder_role", "owner", "labels", "signals", "create_time", "update_time", "etag", "lifecycle_stage", "lifecycle_stage_time", "team", "effective_team")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SignalValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SignalValue, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_TIME_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TEAM_FIELD_NUMBER: _ClassVar[int]
    name: str
    customer_id: str
    display_name: str
    parent: str
    stakeholder_role: _common_pb2.StakeholderRole
    owner: str
    labels: _containers.ScalarMap[str, str]
    signals: _containers.MessageMap[str, SignalValue]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    lifecycle_stage: _common_pb2.LifecycleStage
    lifecycle_stage_time: _timestamp_pb2.Timestamp
    team: _containers.RepeatedCompositeFieldContainer[TeamMember]
    effective_team: _containers.RepeatedCompositeFieldContainer[TeamMember]
    def __init__(self, name: _Optional[str] = ..., customer_id: _Optional[str] = ..., display_name: _Optional[str] = ..., parent: _Optional[str] = ..., stakeholder_role: _Optional[_Union[_common_pb2.StakeholderRole, str]] = ..., owner: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., signals: _Optional[_Mapping[str, SignalValue]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., lifecycle_stage: _Optional[_Union[_common_pb2.LifecycleStage, str]] = ..., lifecycle_stage_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., team: _Optional[_Iterable[_Union[TeamMember, _Mapping]]] = ..., effective_team: _Optional[_Iterable[_Union[TeamMember, _Mapping]]] = ...) -> None: ...

class TeamMember(_message.Message):
    __slots__ = ("role", "person", "display_name", "start_time", "inherited_from")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    INHERITED_FROM_FIELD_NUMBER: _ClassVar[int]
    role: str
    person: str
    display_name: str
    start_time: _timestamp_pb2.Timestamp
    inherited_from: str
    def __init__(self, role: _Optional[str] = ..., person: _Optional[str] = ..., display_name: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., inherited_from: _Optional[str] = ...) -> None: ...

class TeamColumn(_message.Message):
    __slots__ = ("role", "persons")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERSONS_FIELD_NUMBER: _ClassVar[int]
    role: str
    persons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, role: _Optional[str] = ..., persons: _Optional[_Iterable[str]] = ...) -> None: ...

class SignalValue(_message.Message):
    __slots__ = ("value", "observe_time")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_TIME_FIELD_NUMBER: _ClassVar[int]
    value: float
    observe_time: _timestamp_pb2.Timestamp
    def __init__(self, value: _Optional[float] = ..., observe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCustomerRequest(_message.Message):
    __slots__ = ("customer",)
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    customer: Customer
    def __init__(self, customer: _Optional[_Union[Customer, _Mapping]] = ...) -> None: ...

class GetCustomerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BatchGetCustomersRequest(_message.Message):
    __slots__ = ("names", "allow_missing")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class BatchGetCustomersResponse(_message.Message):
    __slots__ = ("customers",)
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[Customer]
    def __init__(self, customers: _Optional[_Iterable[_Union[Customer, _Mapping]]] = ...) -> None: ...

class UpdateCustomerRequest(_message.Message):
    __slots__ = ("customer", "update_mask")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    customer: Customer
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, customer: _Optional[_Union[Customer, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteCustomerRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class ListCustomersRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "parent", "stakeholder_role", "owner", "label", "lifecycle_stage")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    parent: str
    stakeholder_role: _common_pb2.StakeholderRole
    owner: str
    label: str
    lifecycle_stage: _common_pb2.LifecycleStage
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., parent: _Optional[str] = ..., stakeholder_role: _Optional[_Union[_common_pb2.StakeholderRole, str]] = ..., owner: _Optional[str] = ..., label: _Optional[str] = ..., lifecycle_stage: _Optional[_Union[_common_pb2.LifecycleStage, str]] = ...) -> None: ...

class ListCustomersResponse(_message.Message):
    __slots__ = ("customers", "next_page_token")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[Customer]
    next_page_token: str
    def __init__(self, customers: _Optional[_Iterable[_Union[Customer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ImportCustomersRequest(_message.Message):
    __slots__ = ("customers", "all_or_nothing", "columns")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    ALL_OR_NOTHING_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[Customer]
    all_or_nothing: bool
    columns: CustomerColumns
    def __init__(self, customers: _Optional[_Iterable[_Union[Customer, _Mapping]]] = ..., all_or_nothing: _Optional[bool] = ..., columns: _Optional[_Union[CustomerColumns, _Mapping]] = ...) -> None: ...

class CustomerColumns(_message.Message):
    __slots__ = ("customer_ids", "display_names", "parent_ids", "stakeholder_roles", "owners", "signal_names", "signal_values", "observe_time", "lifecycle_stages", "lifecycle_stage_times_us", "team_columns")
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAMES_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLES_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAMES_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_VALUES_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_TIME_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGES_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_TIMES_US_FIELD_NUMBER: _ClassVar[int]
    TEAM_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    display_names: _containers.RepeatedScalarFieldContainer[str]
    parent_ids: _containers.RepeatedScalarFieldContainer[str]
    stakeholder_roles: bytes
    owners: _containers.RepeatedScalarFieldContainer[str]
    signal_names: _containers.RepeatedScalarFieldContainer[str]
    signal_values: _common_pb2.Float64Matrix
    observe_time: _timestamp_pb2.Timestamp
    lifecycle_stages: bytes
    lifecycle_stage_times_us: _containers.RepeatedScalarFieldContainer[int]
    team_columns: _containers.RepeatedCompositeFieldContainer[TeamColumn]
    def __init__(self, customer_ids: _Optional[_Iterable[str]] = ..., display_names: _Optional[_Iterable[str]] = ..., parent_ids: _Optional[_Iterable[str]] = ..., stakeholder_roles: _Optional[bytes] = ..., owners: _Optional[_Iterable[str]] = ..., signal_names: _Optional[_Iterable[str]] = ..., signal_values: _Optional[_Union[_common_pb2.Float64Matrix, _Mapping]] = ..., observe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lifecycle_stages: _Optional[bytes] = ..., lifecycle_stage_times_us: _Optional[_Iterable[int]] = ..., team_columns: _Optional[_Iterable[_Union[TeamColumn, _Mapping]]] = ...) -> None: ...

class RowError(_message.Message):
    __slots__ = ("position", "customer_id", "field", "reason")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    position: int
    customer_id: str
    field: str
    reason: str
    def __init__(self, position: _Optional[int] = ..., customer_id: _Optional[str] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ImportCustomersResponse(_message.Message):
    __slots__ = ("created", "updated", "rejected", "errors", "batches_committed", "signals_current", "signals_historical", "signals_unchanged")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_HISTORICAL_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    created: int
    updated: int
    rejected: int
    errors: _containers.RepeatedCompositeFieldContainer[RowError]
    batches_committed: int
    signals_current: int
    signals_historical: int
    signals_unchanged: int
    def __init__(self, created: _Optional[int] = ..., updated: _Optional[int] = ..., rejected: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[RowError, _Mapping]]] = ..., batches_committed: _Optional[int] = ..., signals_current: _Optional[int] = ..., signals_historical: _Optional[int] = ..., signals_unchanged: _Optional[int] = ...) -> None: ...

class SignalObservations(_message.Message):
    __slots__ = ("customer", "signals")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SignalValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SignalValue, _Mapping]] = ...) -> None: ...
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    customer: str
    signals: _containers.MessageMap[str, SignalValue]
    def __init__(self, customer: _Optional[str] = ..., signals: _Optional[_Mapping[str, SignalValue]] = ...) -> None: ...

class RecordSignalsRequest(_message.Message):
    __slots__ = ("observations",)
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[SignalObservations]
    def __init__(self, observations: _Optional[_Iterable[_Union[SignalObservations, _Mapping]]] = ...) -> None: ...

class RecordSignalsResponse(_message.Message):
    __slots__ = ("current", "historical", "unchanged")
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    HISTORICAL_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    current: int
    historical: int
    unchanged: int
    def __init__(self, current: _Optional[int] = ..., historical: _Optional[int] = ..., unchanged: _Optional[int] = ...) -> None: ...

class ListSignalHistoryRequest(_message.Message):
    __slots__ = ("customer", "signal", "page_size", "page_token")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer: str
    signal: str
    page_size: int
    page_token: str
    def __init__(self, customer: _Optional[str] = ..., signal: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SignalObservation(_message.Message):
    __slots__ = ("signal", "value", "current")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    signal: str
    value: SignalValue
    current: bool
    def __init__(self, signal: _Optional[str] = ..., value: _Optional[_Union[SignalValue, _Mapping]] = ..., current: _Optional[bool] = ...) -> None: ...

class ListSignalHistoryResponse(_message.Message):
    __slots__ = ("observations", "next_page_token")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[SignalObservation]
    next_page_token: str
    def __init__(self, observations: _Optional[_Iterable[_Union[SignalObservation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListLifecycleHistoryRequest(_message.Message):
    __slots__ = ("customer", "page_size", "page_token")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer: str
    page_size: int
    page_token: str
    def __init__(self, customer: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class LifecycleChange(_message.Message):
    __slots__ = ("stage", "enter_time", "current")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ENTER_TIME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    stage: _common_pb2.LifecycleStage
    enter_time: _timestamp_pb2.Timestamp
    current: bool
    def __init__(self, stage: _Optional[_Union[_common_pb2.LifecycleStage, str]] = ..., enter_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current: _Optional[bool] = ...) -> None: ...

class ListLifecycleHistoryResponse(_message.Message):
    __slots__ = ("changes", "next_page_token")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[LifecycleChange]
    next_page_token: str
    def __init__(self, changes: _Optional[_Iterable[_Union[LifecycleChange, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListTeamHistoryRequest(_message.Message):
    __slots__ = ("customer", "role", "page_size", "page_token")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer: str
    role: str
    page_size: int
    page_token: str
    def __init__(self, customer: _Optional[str] = ..., role: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class TeamMembership(_message.Message):
    __slots__ = ("role", "person", "display_name", "start_time", "end_time", "current")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    person: str
    display_name: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    current: bool
    def __init__(self, role: _Optional[str] = ..., person: _Optional[str] = ..., display_name: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current: _Optional[bool] = ...) -> None: ...

class ListTeamHistoryResponse(_message.Message):
    __slots__ = ("memberships", "next_page_token")
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    memberships: _containers.RepeatedCompositeFieldContainer[TeamMembership]
    next_page_token: str
    def __init__(self, memberships: _Optional[_Iterable[_Union[TeamMembership, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetOrganizationTeamRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OrganizationTeam(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[TeamMember]
    def __init__(self, members: _Optional[_Iterable[_Union[TeamMember, _Mapping]]] = ...) -> None: ...

class UpdateOrganizationTeamRequest(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[TeamMember]
    def __init__(self, members: _Optional[_Iterable[_Union[TeamMember, _Mapping]]] = ...) -> None: ...

class Person(_message.Message):
    __slots__ = ("person_id", "display_name", "capacity", "update_time")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    display_name: str
    capacity: int
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, person_id: _Optional[str] = ..., display_name: _Optional[str] = ..., capacity: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpdatePersonRequest(_message.Message):
    __slots__ = ("person", "update_mask")
    PERSON_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    person: Person
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ListPeopleRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPeopleResponse(_message.Message):
    __slots__ = ("people", "next_page_token")
    PEOPLE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    people: _containers.RepeatedCompositeFieldContainer[Person]
    next_page_token: str
    def __init__(self, people: _Optional[_Iterable[_Union[Person, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportSignalMatrixRequest(_message.Message):
    __slots__ = ("signal_names", "chunk_size", "signals_only")
    SIGNAL_NAMES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_ONLY_FIELD_NUMBER: _ClassVar[int]
    signal_names: _containers.RepeatedScalarFieldContainer[str]
    chunk_size: int
    signals_only: bool
    def __init__(self, signal_names: _Optional[_Iterable[str]] = ..., chunk_size: _Optional[int] = ..., signals_only: _Optional[bool] = ...) -> None: ...

class ExportSignalMatrixResponse(_message.Message):
    __slots__ = ("chunk", "parent_ids", "stakeholder_roles", "owners", "total_customers", "sequence", "lifecycle_stages", "team")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLES_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGES_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.ColumnarChunk
    parent_ids: _containers.RepeatedScalarFieldContainer[str]
    stakeholder_roles: bytes
    owners: _containers.RepeatedScalarFieldContainer[str]
    total_customers: int
    sequence: int
    lifecycle_stages: bytes
    team: _containers.RepeatedCompositeFieldContainer[TeamColumn]
    def __init__(self, chunk: _Optional[_Union[_common_pb2.ColumnarChunk, _Mapping]] = ..., parent_ids: _Optional[_Iterable[str]] = ..., stakeholder_roles: _Optional[bytes] = ..., owners: _Optional[_Iterable[str]] = ..., total_customers: _Optional[int] = ..., sequence: _Optional[int] = ..., lifecycle_stages: _Optional[bytes] = ..., team: _Optional[_Iterable[_Union[TeamColumn, _Mapping]]] = ...) -> None: ...

class WatchCustomerChangesRequest(_message.Message):
    __slots__ = ("after_sequence",)
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    def __init__(self, after_sequence: _Optional[int] = ...) -> None: ...

class WatchCustomerChangesResponse(_message.Message):
    __slots__ = ("sequences", "last_sequence", "deleted", "chunk", "display_names", "parent_ids", "stakeholder_roles", "owners", "head_sequence", "lifecycle_stages", "team")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAMES_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLES_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGES_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    last_sequence: int
    deleted: bytes
    chunk: _common_pb2.ColumnarChunk
    display_names: _containers.RepeatedScalarFieldContainer[str]
    parent_ids: _containers.RepeatedScalarFieldContainer[str]
    stakeholder_roles: bytes
    owners: _containers.RepeatedScalarFieldContainer[str]
    head_sequence: int
    lifecycle_stages: bytes
    team: _containers.RepeatedCompositeFieldContainer[TeamColumn]
    def __init__(self, sequences: _Optional[_Iterable[int]] = ..., last_sequence: _Optional[int] = ..., deleted: _Optional[bytes] = ..., chunk: _Optional[_Union[_common_pb2.ColumnarChunk, _Mapping]] = ..., display_names: _Optional[_Iterable[str]] = ..., parent_ids: _Optional[_Iterable[str]] = ..., stakeholder_roles: _Optional[bytes] = ..., owners: _Optional[_Iterable[str]] = ..., head_sequence: _Optional[int] = ..., lifecycle_stages: _Optional[bytes] = ..., team: _Optional[_Iterable[_Union[TeamColumn, _Mapping]]] = ...) -> None: ...
