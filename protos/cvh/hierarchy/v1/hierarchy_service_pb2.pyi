import datetime

from cvh.common.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InheritanceRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INHERITANCE_RULE_UNSPECIFIED: _ClassVar[InheritanceRule]
    INHERITANCE_RULE_OWN: _ClassVar[InheritanceRule]
    INHERITANCE_RULE_TOP_PARENT: _ClassVar[InheritanceRule]
    INHERITANCE_RULE_PARENT_MINUS_ONE: _ClassVar[InheritanceRule]

class GoodwillPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GOODWILL_PERIOD_UNSPECIFIED: _ClassVar[GoodwillPeriod]
    GOODWILL_PERIOD_MONTHLY: _ClassVar[GoodwillPeriod]
    GOODWILL_PERIOD_QUARTERLY: _ClassVar[GoodwillPeriod]
    GOODWILL_PERIOD_YEARLY: _ClassVar[GoodwillPeriod]

class RankRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANK_RULE_UNSPECIFIED: _ClassVar[RankRule]
    RANK_RULE_TIER: _ClassVar[RankRule]
    RANK_RULE_ROLE_PRECEDENCE: _ClassVar[RankRule]
    RANK_RULE_SCORE: _ClassVar[RankRule]
    RANK_RULE_TIE: _ClassVar[RankRule]

class DecisionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_KIND_UNSPECIFIED: _ClassVar[DecisionKind]
    DECISION_KIND_GOODWILL_CREDIT: _ClassVar[DecisionKind]
    DECISION_KIND_FEE_WAIVER: _ClassVar[DecisionKind]
    DECISION_KIND_OFFER: _ClassVar[DecisionKind]
    DECISION_KIND_ESCALATION: _ClassVar[DecisionKind]

class DecisionOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_OUTCOME_UNSPECIFIED: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_WITHIN_AUTHORITY: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_NEEDS_ESCALATION: _ClassVar[DecisionOutcome]
INHERITANCE_RULE_UNSPECIFIED: InheritanceRule
INHERITANCE_RULE_OWN: InheritanceRule
INHERITANCE_RULE_TOP_PARENT: InheritanceRule
INHERITANCE_RULE_PARENT_MINUS_ONE: InheritanceRule
GOODWILL_PERIOD_UNSPECIFIED: GoodwillPeriod
GOODWILL_PERIOD_MONTHLY: GoodwillPeriod
GOODWILL_PERIOD_QUARTERLY: GoodwillPeriod
GOODWILL_PERIOD_YEARLY: GoodwillPeriod
RANK_RULE_UNSPECIFIED: RankRule
RANK_RULE_TIER: RankRule
RANK_RULE_ROLE_PRECEDENCE: RankRule
RANK_RULE_SCORE: RankRule
RANK_RULE_TIE: RankRule
DECISION_KIND_UNSPECIFIED: DecisionKind
DECISION_KIND_GOODWILL_CREDIT: DecisionKind
DECISION_KIND_FEE_WAIVER: DecisionKind
DECISION_KIND_OFFER: DecisionKind
DECISION_KIND_ESCALATION: DecisionKind
DECISION_OUTCOME_UNSPECIFIED: DecisionOutcome
DECISION_OUTCOME_WITHIN_AUTHORITY: DecisionOutcome
DECISION_OUTCOME_NEEDS_ESCALATION: DecisionOutcome

class SlaTargets(_message.Message):
    __slots__ = ("first_response", "resolution")
    FIRST_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    first_response: _duration_pb2.Duration
    resolution: _duration_pb2.Duration
    def __init__(self, first_response: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resolution: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class FrontLineAuthority(_message.Message):
    __slots__ = ("goodwill_credit_limit_minor", "currency", "may_waive_fees", "offers")
    GOODWILL_CREDIT_LIMIT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAY_WAIVE_FEES_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    goodwill_credit_limit_minor: int
    currency: str
    may_waive_fees: bool
    offers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, goodwill_credit_limit_minor: _Optional[int] = ..., currency: _Optional[str] = ..., may_waive_fees: _Optional[bool] = ..., offers: _Optional[_Iterable[str]] = ...) -> None: ...

class EscalationPath(_message.Message):
    __slots__ = ("owner_first", "team")
    OWNER_FIRST_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    owner_first: bool
    team: str
    def __init__(self, owner_first: _Optional[bool] = ..., team: _Optional[str] = ...) -> None: ...

class EscalationInvolvement(_message.Message):
    __slots__ = ("level", "lowest_tier_level")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOWEST_TIER_LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: str
    lowest_tier_level: int
    def __init__(self, level: _Optional[str] = ..., lowest_tier_level: _Optional[int] = ...) -> None: ...

class TierServicePolicy(_message.Message):
    __slots__ = ("tier_id", "display_name", "sla", "routing_priority", "authority", "escalation")
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SLA_FIELD_NUMBER: _ClassVar[int]
    ROUTING_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    tier_id: str
    display_name: str
    sla: SlaTargets
    routing_priority: int
    authority: FrontLineAuthority
    escalation: EscalationPath
    def __init__(self, tier_id: _Optional[str] = ..., display_name: _Optional[str] = ..., sla: _Optional[_Union[SlaTargets, _Mapping]] = ..., routing_priority: _Optional[int] = ..., authority: _Optional[_Union[FrontLineAuthority, _Mapping]] = ..., escalation: _Optional[_Union[EscalationPath, _Mapping]] = ...) -> None: ...

class TierPolicy(_message.Message):
    __slots__ = ("version", "tiers", "default_tier", "role_precedence", "inheritance_rule", "create_time", "change_note", "warnings", "escalation_involvement", "goodwill_period")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIER_FIELD_NUMBER: _ClassVar[int]
    ROLE_PRECEDENCE_FIELD_NUMBER: _ClassVar[int]
    INHERITANCE_RULE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CHANGE_NOTE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_INVOLVEMENT_FIELD_NUMBER: _ClassVar[int]
    GOODWILL_PERIOD_FIELD_NUMBER: _ClassVar[int]
    version: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierServicePolicy]
    default_tier: TierServicePolicy
    role_precedence: _containers.RepeatedScalarFieldContainer[_common_pb2.StakeholderRole]
    inheritance_rule: InheritanceRule
    create_time: _timestamp_pb2.Timestamp
    change_note: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    escalation_involvement: _containers.RepeatedCompositeFieldContainer[EscalationInvolvement]
    goodwill_period: GoodwillPeriod
    def __init__(self, version: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierServicePolicy, _Mapping]]] = ..., default_tier: _Optional[_Union[TierServicePolicy, _Mapping]] = ..., role_precedence: _Optional[_Iterable[_Union[_common_pb2.StakeholderRole, str]]] = ..., inheritance_rule: _Optional[_Union[InheritanceRule, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., change_note: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., escalation_involvement: _Optional[_Iterable[_Union[EscalationInvolvement, _Mapping]]] = ..., goodwill_period: _Optional[_Union[GoodwillPeriod, str]] = ...) -> None: ...

class GetPriorityRequest(_message.Message):
    __slots__ = ("customer", "compare_run", "compare_days_ago")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    COMPARE_RUN_FIELD_NUMBER: _ClassVar[int]
    COMPARE_DAYS_AGO_FIELD_NUMBER: _ClassVar[int]
    customer: str
    compare_run: str
    compare_days_ago: int
    def __init__(self, customer: _Optional[str] = ..., compare_run: _Optional[str] = ..., compare_days_ago: _Optional[int] = ...) -> None: ...

class PriorityTrend(_message.Message):
    __slots__ = ("compare_run", "compare_time", "previous_composite", "composite_change", "previous_tier", "tier_change", "note")
    COMPARE_RUN_FIELD_NUMBER: _ClassVar[int]
    COMPARE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TIER_FIELD_NUMBER: _ClassVar[int]
    TIER_CHANGE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    compare_run: str
    compare_time: _timestamp_pb2.Timestamp
    previous_composite: float
    composite_change: float
    previous_tier: _common_pb2.TierRef
    tier_change: int
    note: str
    def __init__(self, compare_run: _Optional[str] = ..., compare_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_composite: _Optional[float] = ..., composite_change: _Optional[float] = ..., previous_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., tier_change: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class PriorityReason(_message.Message):
    __slots__ = ("dimension", "text")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    dimension: _common_pb2.ValueDimension
    text: str
    def __init__(self, dimension: _Optional[_Union[_common_pb2.ValueDimension, str]] = ..., text: _Optional[str] = ...) -> None: ...

class Priority(_message.Message):
    __slots__ = ("customer", "scored", "own_tier", "effective_tier", "composite", "percentile", "rank", "dimension_scores", "reasons", "stakeholder_role", "owner", "policy", "run", "score_time", "policy_version", "not_found", "live", "live_time", "lifecycle_stage", "bad_profit", "trend", "team", "escalation", "goodwill_remaining_minor", "goodwill_period_start")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    OWN_TIER_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIER_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_SCORES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    SCORE_TIME_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    LIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_FIELD_NUMBER: _ClassVar[int]
    TREND_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    GOODWILL_REMAINING_MINOR_FIELD_NUMBER: _ClassVar[int]
    GOODWILL_PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    customer: str
    scored: bool
    own_tier: _common_pb2.TierRef
    effective_tier: _common_pb2.TierRef
    composite: float
    percentile: float
    rank: int
    dimension_scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.DimensionScore]
    reasons: _containers.RepeatedCompositeFieldContainer[PriorityReason]
    stakeholder_role: _common_pb2.StakeholderRole
    owner: str
    policy: TierServicePolicy
    run: str
    score_time: _timestamp_pb2.Timestamp
    policy_version: int
    not_found: bool
    live: bool
    live_time: _timestamp_pb2.Timestamp
    lifecycle_stage: _common_pb2.LifecycleStage
    bad_profit: bool
    trend: PriorityTrend
    team: _containers.RepeatedCompositeFieldContainer[TeamContact]
    escalation: _containers.RepeatedCompositeFieldContainer[EscalationStep]
    goodwill_remaining_minor: int
    goodwill_period_start: _timestamp_pb2.Timestamp
    def __init__(self, customer: _Optional[str] = ..., scored: _Optional[bool] = ..., own_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., effective_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., composite: _Optional[float] = ..., percentile: _Optional[float] = ..., rank: _Optional[int] = ..., dimension_scores: _Optional[_Iterable[_Union[_common_pb2.DimensionScore, _Mapping]]] = ..., reasons: _Optional[_Iterable[_Union[PriorityReason, _Mapping]]] = ..., stakeholder_role: _Optional[_Union[_common_pb2.StakeholderRole, str]] = ..., owner: _Optional[str] = ..., policy: _Optional[_Union[TierServicePolicy, _Mapping]] = ..., run: _Optional[str] = ..., score_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., policy_version: _Optional[int] = ..., not_found: _Optional[bool] = ..., live: _Optional[bool] = ..., live_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lifecycle_stage: _Optional[_Union[_common_pb2.LifecycleStage, str]] = ..., bad_profit: _Optional[bool] = ..., trend: _Optional[_Union[PriorityTrend, _Mapping]] = ..., team: _Optional[_Iterable[_Union[TeamContact, _Mapping]]] = ..., escalation: _Optional[_Iterable[_Union[EscalationStep, _Mapping]]] = ..., goodwill_remaining_minor: _Optional[int] = ..., goodwill_period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TeamContact(_message.Message):
    __slots__ = ("role", "person", "inherited_from", "display_name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    INHERITED_FROM_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    person: str
    inherited_from: str
    display_name: str
    def __init__(self, role: _Optional[str] = ..., person: _Optional[str] = ..., inherited_from: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class EscalationStep(_message.Message):
    __slots__ = ("level", "persons", "contact", "fallback")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    PERSONS_FIELD_NUMBER: _ClassVar[int]
    CONTACT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    level: str
    persons: _containers.RepeatedCompositeFieldContainer[TeamContact]
    contact: str
    fallback: bool
    def __init__(self, level: _Optional[str] = ..., persons: _Optional[_Iterable[_Union[TeamContact, _Mapping]]] = ..., contact: _Optional[str] = ..., fallback: _Optional[bool] = ...) -> None: ...

class BatchGetPriorityRequest(_message.Message):
    __slots__ = ("customers",)
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, customers: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchGetPriorityResponse(_message.Message):
    __slots__ = ("priorities",)
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    priorities: _containers.RepeatedCompositeFieldContainer[Priority]
    def __init__(self, priorities: _Optional[_Iterable[_Union[Priority, _Mapping]]] = ...) -> None: ...

class RankCustomersRequest(_message.Message):
    __slots__ = ("customers",)
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, customers: _Optional[_Iterable[str]] = ...) -> None: ...

class RankedCustomer(_message.Message):
    __slots__ = ("customer", "effective_tier", "stakeholder_role", "composite", "decided_by", "not_found")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIER_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLE_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    customer: str
    effective_tier: _common_pb2.TierRef
    stakeholder_role: _common_pb2.StakeholderRole
    composite: float
    decided_by: RankRule
    not_found: bool
    def __init__(self, customer: _Optional[str] = ..., effective_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., stakeholder_role: _Optional[_Union[_common_pb2.StakeholderRole, str]] = ..., composite: _Optional[float] = ..., decided_by: _Optional[_Union[RankRule, str]] = ..., not_found: _Optional[bool] = ...) -> None: ...

class RankCustomersResponse(_message.Message):
    __slots__ = ("ranked",)
    RANKED_FIELD_NUMBER: _ClassVar[int]
    ranked: _containers.RepeatedCompositeFieldContainer[RankedCustomer]
    def __init__(self, ranked: _Optional[_Iterable[_Union[RankedCustomer, _Mapping]]] = ...) -> None: ...

class ListTierMembersRequest(_message.Message):
    __slots__ = ("tier_id", "page_size", "page_token")
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tier_id: str
    page_size: int
    page_token: str
    def __init__(self, tier_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class TierMember(_message.Message):
    __slots__ = ("customer", "rank", "composite", "owner")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    customer: str
    rank: int
    composite: float
    owner: str
    def __init__(self, customer: _Optional[str] = ..., rank: _Optional[int] = ..., composite: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class ListTierMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[TierMember]
    next_page_token: str
    def __init__(self, members: _Optional[_Iterable[_Union[TierMember, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetHierarchySummaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierSummary(_message.Message):
    __slots__ = ("tier", "customers", "customer_percent", "value_percent", "min_composite", "max_composite", "composite_value_percent")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_PERCENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MIN_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_VALUE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.TierRef
    customers: int
    customer_percent: float
    value_percent: _containers.RepeatedCompositeFieldContainer[_common_pb2.DimensionScore]
    min_composite: float
    max_composite: float
    composite_value_percent: float
    def __init__(self, tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., customers: _Optional[int] = ..., customer_percent: _Optional[float] = ..., value_percent: _Optional[_Iterable[_Union[_common_pb2.DimensionScore, _Mapping]]] = ..., min_composite: _Optional[float] = ..., max_composite: _Optional[float] = ..., composite_value_percent: _Optional[float] = ...) -> None: ...

class HierarchySummary(_message.Message):
    __slots__ = ("tiers", "total_customers", "run")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierSummary]
    total_customers: int
    run: str
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierSummary, _Mapping]]] = ..., total_customers: _Optional[int] = ..., run: _Optional[str] = ...) -> None: ...

class GetAccountTreeRequest(_message.Message):
    __slots__ = ("customer", "max_children")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    MAX_CHILDREN_FIELD_NUMBER: _ClassVar[int]
    customer: str
    max_children: int
    def __init__(self, customer: _Optional[str] = ..., max_children: _Optional[int] = ...) -> None: ...

class AccountNode(_message.Message):
    __slots__ = ("customer", "tier", "composite", "stakeholder_role")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    STAKEHOLDER_ROLE_FIELD_NUMBER: _ClassVar[int]
    customer: str
    tier: _common_pb2.TierRef
    composite: float
    stakeholder_role: _common_pb2.StakeholderRole
    def __init__(self, customer: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., composite: _Optional[float] = ..., stakeholder_role: _Optional[_Union[_common_pb2.StakeholderRole, str]] = ...) -> None: ...

class SubtreeRollup(_message.Message):
    __slots__ = ("customers", "best_tier", "group_composite", "signal_sums")
    class SignalSumsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    BEST_TIER_FIELD_NUMBER: _ClassVar[int]
    GROUP_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_SUMS_FIELD_NUMBER: _ClassVar[int]
    customers: int
    best_tier: _common_pb2.TierRef
    group_composite: float
    signal_sums: _containers.ScalarMap[str, float]
    def __init__(self, customers: _Optional[int] = ..., best_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., group_composite: _Optional[float] = ..., signal_sums: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AccountTree(_message.Message):
    __slots__ = ("customer", "ancestors", "children", "children_total", "rollup")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_FIELD_NUMBER: _ClassVar[int]
    customer: AccountNode
    ancestors: _containers.RepeatedCompositeFieldContainer[AccountNode]
    children: _containers.RepeatedCompositeFieldContainer[AccountNode]
    children_total: int
    rollup: SubtreeRollup
    def __init__(self, customer: _Optional[_Union[AccountNode, _Mapping]] = ..., ancestors: _Optional[_Iterable[_Union[AccountNode, _Mapping]]] = ..., children: _Optional[_Iterable[_Union[AccountNode, _Mapping]]] = ..., children_total: _Optional[int] = ..., rollup: _Optional[_Union[SubtreeRollup, _Mapping]] = ...) -> None: ...

class SetTierPolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TierPolicy
    def __init__(self, policy: _Optional[_Union[TierPolicy, _Mapping]] = ...) -> None: ...

class GetTierPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchPriorityChangesRequest(_message.Message):
    __slots__ = ("tier_ids", "owner", "min_composite_drop", "into_tier_ids")
    TIER_IDS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MIN_COMPOSITE_DROP_FIELD_NUMBER: _ClassVar[int]
    INTO_TIER_IDS_FIELD_NUMBER: _ClassVar[int]
    tier_ids: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    min_composite_drop: float
    into_tier_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tier_ids: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ..., min_composite_drop: _Optional[float] = ..., into_tier_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListBadProfitsRequest(_message.Message):
    __slots__ = ("tier_id", "owner", "page_size", "page_token")
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tier_id: str
    owner: str
    page_size: int
    page_token: str
    def __init__(self, tier_id: _Optional[str] = ..., owner: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class BadProfitCustomer(_message.Message):
    __slots__ = ("customer", "revenue", "effective_tier", "composite", "owner")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIER_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    customer: str
    revenue: float
    effective_tier: _common_pb2.TierRef
    composite: float
    owner: str
    def __init__(self, customer: _Optional[str] = ..., revenue: _Optional[float] = ..., effective_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., composite: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class ListBadProfitsResponse(_message.Message):
    __slots__ = ("customers", "next_page_token", "total", "run")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[BadProfitCustomer]
    next_page_token: str
    total: int
    run: str
    def __init__(self, customers: _Optional[_Iterable[_Union[BadProfitCustomer, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ..., run: _Optional[str] = ...) -> None: ...

class PriorityChange(_message.Message):
    __slots__ = ("customer", "previous_tier", "new_tier", "owner", "run", "live", "previous_composite", "composite")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TIER_FIELD_NUMBER: _ClassVar[int]
    NEW_TIER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    customer: str
    previous_tier: _common_pb2.TierRef
    new_tier: _common_pb2.TierRef
    owner: str
    run: str
    live: bool
    previous_composite: float
    composite: float
    def __init__(self, customer: _Optional[str] = ..., previous_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., new_tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., owner: _Optional[str] = ..., run: _Optional[str] = ..., live: _Optional[bool] = ..., previous_composite: _Optional[float] = ..., composite: _Optional[float] = ...) -> None: ...

class GetSnapshotInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("run", "customers", "load_time", "age", "sources_reachable", "status", "feed_sequence", "live_customers")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FEED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIVE_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    run: str
    customers: int
    load_time: _timestamp_pb2.Timestamp
    age: _duration_pb2.Duration
    sources_reachable: bool
    status: str
    feed_sequence: int
    live_customers: int
    def __init__(self, run: _Optional[str] = ..., customers: _Optional[int] = ..., load_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., sources_reachable: _Optional[bool] = ..., status: _Optional[str] = ..., feed_sequence: _Optional[int] = ..., live_customers: _Optional[int] = ...) -> None: ...

class RecordServiceDecisionRequest(_message.Message):
    __slots__ = ("customer", "kind", "amount_minor", "currency", "offer", "person", "reason")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    customer: str
    kind: DecisionKind
    amount_minor: int
    currency: str
    offer: str
    person: str
    reason: str
    def __init__(self, customer: _Optional[str] = ..., kind: _Optional[_Union[DecisionKind, str]] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., offer: _Optional[str] = ..., person: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ServiceDecision(_message.Message):
    __slots__ = ("name", "customer", "kind", "amount_minor", "currency", "offer", "person", "reason", "record_time", "tier_id", "outcome", "escalation_note", "escalation_contact", "goodwill_remaining_minor", "goodwill_period_start")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECORD_TIME_FIELD_NUMBER: _ClassVar[int]
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_NOTE_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_CONTACT_FIELD_NUMBER: _ClassVar[int]
    GOODWILL_REMAINING_MINOR_FIELD_NUMBER: _ClassVar[int]
    GOODWILL_PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    name: str
    customer: str
    kind: DecisionKind
    amount_minor: int
    currency: str
    offer: str
    person: str
    reason: str
    record_time: _timestamp_pb2.Timestamp
    tier_id: str
    outcome: DecisionOutcome
    escalation_note: str
    escalation_contact: EscalationStep
    goodwill_remaining_minor: int
    goodwill_period_start: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., customer: _Optional[str] = ..., kind: _Optional[_Union[DecisionKind, str]] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., offer: _Optional[str] = ..., person: _Optional[str] = ..., reason: _Optional[str] = ..., record_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tier_id: _Optional[str] = ..., outcome: _Optional[_Union[DecisionOutcome, str]] = ..., escalation_note: _Optional[str] = ..., escalation_contact: _Optional[_Union[EscalationStep, _Mapping]] = ..., goodwill_remaining_minor: _Optional[int] = ..., goodwill_period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAuthorityUsageRequest(_message.Message):
    __slots__ = ("tier_id", "person", "period", "start_time", "end_time")
    TIER_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    tier_id: str
    person: str
    period: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, tier_id: _Optional[str] = ..., person: _Optional[str] = ..., period: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuthorityUsageFigures(_message.Message):
    __slots__ = ("key", "decisions", "within_authority", "escalations", "escalation_rate", "goodwill_granted_minor", "waivers_and_offers")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    WITHIN_AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_RATE_FIELD_NUMBER: _ClassVar[int]
    GOODWILL_GRANTED_MINOR_FIELD_NUMBER: _ClassVar[int]
    WAIVERS_AND_OFFERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    decisions: int
    within_authority: int
    escalations: int
    escalation_rate: float
    goodwill_granted_minor: int
    waivers_and_offers: int
    def __init__(self, key: _Optional[str] = ..., decisions: _Optional[int] = ..., within_authority: _Optional[int] = ..., escalations: _Optional[int] = ..., escalation_rate: _Optional[float] = ..., goodwill_granted_minor: _Optional[int] = ..., waivers_and_offers: _Optional[int] = ...) -> None: ...

class AuthorityUsage(_message.Message):
    __slots__ = ("period_start", "period_end", "total", "tiers", "persons")
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PERSONS_FIELD_NUMBER: _ClassVar[int]
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    total: AuthorityUsageFigures
    tiers: _containers.RepeatedCompositeFieldContainer[AuthorityUsageFigures]
    persons: _containers.RepeatedCompositeFieldContainer[AuthorityUsageFigures]
    def __init__(self, period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total: _Optional[_Union[AuthorityUsageFigures, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[AuthorityUsageFigures, _Mapping]]] = ..., persons: _Optional[_Iterable[_Union[AuthorityUsageFigures, _Mapping]]] = ...) -> None: ...

class GetBookOfBusinessRequest(_message.Message):
    __slots__ = ("person", "role")
    PERSON_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    person: str
    role: str
    def __init__(self, person: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class BookFigures(_message.Message):
    __slots__ = ("customers", "composite_value", "revenue", "at_risk", "bad_profit", "bad_profit_known", "previous_run_customers")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_VALUE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    AT_RISK_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_FIELD_NUMBER: _ClassVar[int]
    BAD_PROFIT_KNOWN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RUN_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    customers: int
    composite_value: float
    revenue: float
    at_risk: int
    bad_profit: int
    bad_profit_known: int
    previous_run_customers: int
    def __init__(self, customers: _Optional[int] = ..., composite_value: _Optional[float] = ..., revenue: _Optional[float] = ..., at_risk: _Optional[int] = ..., bad_profit: _Optional[int] = ..., bad_profit_known: _Optional[int] = ..., previous_run_customers: _Optional[int] = ...) -> None: ...

class BookTier(_message.Message):
    __slots__ = ("tier", "figures")
    TIER_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.TierRef
    figures: BookFigures
    def __init__(self, tier: _Optional[_Union[_common_pb2.TierRef, _Mapping]] = ..., figures: _Optional[_Union[BookFigures, _Mapping]] = ...) -> None: ...

class BookOfBusiness(_message.Message):
    __slots__ = ("person", "role", "tiers", "total", "capacity", "load", "run", "previous_run")
    PERSON_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RUN_FIELD_NUMBER: _ClassVar[int]
    person: str
    role: str
    tiers: _containers.RepeatedCompositeFieldContainer[BookTier]
    total: BookFigures
    capacity: int
    load: float
    run: str
    previous_run: str
    def __init__(self, person: _Optional[str] = ..., role: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[BookTier, _Mapping]]] = ..., total: _Optional[_Union[BookFigures, _Mapping]] = ..., capacity: _Optional[int] = ..., load: _Optional[float] = ..., run: _Optional[str] = ..., previous_run: _Optional[str] = ...) -> None: ...

class ListPortfoliosRequest(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: str
    def __init__(self, role: _Optional[str] = ...) -> None: ...

class ListPortfoliosResponse(_message.Message):
    __slots__ = ("portfolios", "total", "overloaded")
    PORTFOLIOS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    OVERLOADED_FIELD_NUMBER: _ClassVar[int]
    portfolios: _containers.RepeatedCompositeFieldContainer[BookOfBusiness]
    total: BookFigures
    overloaded: int
    def __init__(self, portfolios: _Optional[_Iterable[_Union[BookOfBusiness, _Mapping]]] = ..., total: _Optional[_Union[BookFigures, _Mapping]] = ..., overloaded: _Optional[int] = ...) -> None: ...
