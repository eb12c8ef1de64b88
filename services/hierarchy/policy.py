"""Tier policies: what each tier gets from the front line. A default ships; new versions come by RPC."""

from __future__ import annotations

import re

from google.protobuf import duration_pb2

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from services.common.errors import ServiceError, Violations
from services.common.validation import check_text

# A tier policy: tiers (as many as a value model may have), offers per tier, characters per text.
MAX_POLICY_TIERS = 16
MAX_POLICY_OFFERS = 16
MAX_POLICY_TEXT = 256
MAX_CHANGE_NOTE = 1024
# SLA targets are positive and at most a year: a target beyond that is a typo, and it keeps every Duration
# far inside what JSON can show (google.protobuf.Duration's JSON form stops at 10,000 years).
MAX_SLA_SECONDS = 365 * 24 * 3600
MAX_ROUTING_PRIORITY = 1000
CURRENCY = re.compile(r"[A-Z]{3}")
# The escalation path of a customer, in order: (level, the team role it is served by).
ESCALATION_LEVELS = (("front_line", "owner"), ("customer_success_manager", "customer_success_manager"),
                     ("customer_experience_manager", "customer_experience_manager"),
                     ("chief_customer_officer", "chief_customer_officer"))

DEFAULT_ROLE_PRECEDENCE = [
    common_pb2.STAKEHOLDER_ROLE_IMPACT_GROUP, common_pb2.STAKEHOLDER_ROLE_END_USER, common_pb2.STAKEHOLDER_ROLE_BUYER,
    common_pb2.STAKEHOLDER_ROLE_GATEKEEPER, common_pb2.STAKEHOLDER_ROLE_PARTNER, common_pb2.STAKEHOLDER_ROLE_DONOR,
    common_pb2.STAKEHOLDER_ROLE_INTERNAL,
]


def _hours(h: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(h * 3600))


def _tier(tier_id, name, first_response_h, resolution_h, routing, credit_eur, waive, offers, team, owner_first=True):
    return pb.TierServicePolicy(
        tier_id=tier_id, display_name=name,
        sla=pb.SlaTargets(first_response=_hours(first_response_h), resolution=_hours(resolution_h)),
        routing_priority=routing,
        authority=pb.FrontLineAuthority(goodwill_credit_limit_minor=credit_eur * 100, currency="EUR",
                                        may_waive_fees=waive, offers=offers),
        escalation=pb.EscalationPath(owner_first=owner_first, team=team))


def default_policy() -> pb.TierPolicy:
    """Version 0: the policy served until someone sets one. Tier ids follow the default model's tiers."""
    return pb.TierPolicy(
        version=0,
        tiers=[
            _tier("strategic", "Strategic", 0.5, 8, 1, 5000, True,
                  ["executive sponsor call", "free upgrade to the next plan for three months"], "strategic-accounts"),
            _tier("key", "Key", 1, 24, 2, 1000, True, ["free upgrade to the next plan for one month"], "key-accounts"),
            _tier("growth", "Growth", 4, 48, 3, 250, True, ["extended trial of an add-on"], "growth-desk"),
            _tier("core", "Core", 8, 72, 4, 50, False, ["service credit for the outage period"], "support-tier-2"),
            _tier("standard", "Standard", 24, 120, 5, 0, False, [], "support-tier-1", owner_first=False),
        ],
        default_tier=_tier("", "Unscored", 24, 120, 5, 0, False, [], "support-tier-1", owner_first=False),
        role_precedence=DEFAULT_ROLE_PRECEDENCE,
        inheritance_rule=pb.INHERITANCE_RULE_PARENT_MINUS_ONE,
        change_note="shipped default policy")


def check_policy(policy: pb.TierPolicy) -> None:
    """INVALID_ARGUMENT naming every field of ``policy`` that is missing, out of range or contradicts another."""
    violations = Violations()
    roles = list(policy.role_precedence)
    expected = set(common_pb2.StakeholderRole.values()) - {common_pb2.STAKEHOLDER_ROLE_UNSPECIFIED}
    if sorted(roles) != sorted(expected):
        violations.add("policy.role_precedence", "must list every stakeholder role except UNSPECIFIED exactly once")
    if policy.inheritance_rule not in pb.InheritanceRule.values():
        violations.add("policy.inheritance_rule", f"unknown rule {policy.inheritance_rule}")
    elif policy.inheritance_rule == pb.INHERITANCE_RULE_UNSPECIFIED:
        violations.add("policy.inheritance_rule", "required: OWN, TOP_PARENT or PARENT_MINUS_ONE")
    if not 1 <= len(policy.tiers) <= MAX_POLICY_TIERS:
        violations.add("policy.tiers", f"1 to {MAX_POLICY_TIERS} tiers, got {len(policy.tiers)}")
    seen = set()
    for i, tier in enumerate(policy.tiers[:MAX_POLICY_TIERS]):
        if not tier.tier_id or tier.tier_id in seen:
            violations.add(f"policy.tiers[{i}].tier_id", "required and unique")
        seen.add(tier.tier_id)
        _check_tier(tier, f"policy.tiers[{i}]", violations)
    if policy.HasField("default_tier"):
        _check_tier(policy.default_tier, "policy.default_tier", violations)
    else:
        violations.add("policy.default_tier", "required: the policy of unscored customers and of tiers without "
                                              "an entry")
    check_text(policy.change_note, "policy.change_note", MAX_CHANGE_NOTE, violations)
    _check_involvement(policy, violations)
    if policy.goodwill_period not in pb.GoodwillPeriod.values():
        violations.add("policy.goodwill_period", f"unknown period {policy.goodwill_period}: MONTHLY (the default), "
                                                 f"QUARTERLY or YEARLY")
    violations.raise_if_any("policy")


def _check_involvement(policy: pb.TierPolicy, violations: Violations) -> None:
    levels = [level for level, _ in ESCALATION_LEVELS]
    if len(policy.escalation_involvement) > len(levels):
        violations.add("policy.escalation_involvement", f"at most {len(levels)} entries, one per level")
    seen = set()
    for i, entry in enumerate(policy.escalation_involvement[:len(levels)]):
        where = f"policy.escalation_involvement[{i}]"
        if entry.level not in levels or entry.level in seen:
            violations.add(f"{where}.level", f"one of {', '.join(levels)}, each once; got {entry.level[:70]!r}")
        seen.add(entry.level)
        if not 0 <= entry.lowest_tier_level <= MAX_POLICY_TIERS:
            violations.add(f"{where}.lowest_tier_level", f"0 (every tier) to {MAX_POLICY_TIERS}, "
                                                         f"got {entry.lowest_tier_level}")


def involved_levels(policy: pb.TierPolicy, tier_level: int) -> list[tuple[str, str]]:
    """The (level, role) steps of the escalation path that a customer of effective ``tier_level`` (0: none)
    involves under ``policy``."""
    lowest = {entry.level: entry.lowest_tier_level for entry in policy.escalation_involvement}
    return [(level, role) for level, role in ESCALATION_LEVELS
            if not lowest.get(level) or 0 < tier_level <= lowest[level]]


def _check_tier(tier: pb.TierServicePolicy, prefix: str, violations: Violations) -> None:
    # Every Priority answer carries its tier's policy: text and offers are bounded to keep it small.
    for name, value in (("tier_id", tier.tier_id), ("display_name", tier.display_name),
                        ("escalation.team", tier.escalation.team)):
        check_text(value, f"{prefix}.{name}", MAX_POLICY_TEXT, violations)
    if len(tier.authority.offers) > MAX_POLICY_OFFERS:
        violations.add(f"{prefix}.authority.offers", f"at most {MAX_POLICY_OFFERS} offers")
    for j, offer in enumerate(tier.authority.offers[:MAX_POLICY_OFFERS]):
        check_text(offer, f"{prefix}.authority.offers[{j}]", MAX_POLICY_TEXT, violations)
    first_response = _sla_seconds(tier.sla, "first_response", prefix, violations)
    resolution = _sla_seconds(tier.sla, "resolution", prefix, violations)
    if first_response is not None and resolution is not None and resolution < first_response:
        violations.add(f"{prefix}.sla.resolution", f"must not be shorter than first_response "
                                                   f"({resolution:g} s < {first_response:g} s)")
    if not 1 <= tier.routing_priority <= MAX_ROUTING_PRIORITY:
        violations.add(f"{prefix}.routing_priority", f"1 (served first) to {MAX_ROUTING_PRIORITY}, "
                                                     f"got {tier.routing_priority}")
    authority = tier.authority
    if authority.goodwill_credit_limit_minor < 0:
        violations.add(f"{prefix}.authority.goodwill_credit_limit_minor", "must not be negative")
    if (authority.currency or authority.goodwill_credit_limit_minor) and not CURRENCY.fullmatch(authority.currency):
        violations.add(f"{prefix}.authority.currency", "an ISO 4217 code of three capital letters (e.g. EUR); "
                                                       "required with a goodwill credit limit")


def _sla_seconds(sla: pb.SlaTargets, name: str, prefix: str, violations: Violations) -> float | None:
    """The SLA target ``name`` in seconds, or None (and a violation) unless it is a valid Duration above zero
    and at most MAX_SLA_SECONDS."""
    field = f"{prefix}.sla.{name}"
    if not sla.HasField(name):
        violations.add(field, "required: a duration above zero")
        return None
    target = getattr(sla, name)
    if not 0 <= target.nanos <= 999_999_999:
        violations.add(f"{field}.nanos", f"0 to 999,999,999, got {target.nanos}")
        return None
    seconds = target.seconds + target.nanos / 1e9
    if not 0 < seconds <= MAX_SLA_SECONDS:
        violations.add(field, f"above zero and at most a year ({MAX_SLA_SECONDS:,} s), got {seconds:g} s")
        return None
    return seconds


def policy_warnings(policy: pb.TierPolicy, served_tier_ids: list[str]) -> list[str]:
    """What in a valid ``policy`` does not fit the tiers being served (those of the model's latest completed
    run, in order; empty before any run): tiers without an entry fall back to default_tier, entries for no
    served tier are unused. A policy stored before today's checks is told to fail them."""
    try:
        check_policy(policy)
        warnings = []
    except ServiceError as error:
        warnings = [f"this policy was stored before today's checks and fails them ({error.message}); "
                    f"set a new version"]
    if not served_tier_ids:
        return [*warnings, "no completed run is served yet: tier ids are checked against the run's tiers once "
                           "one is (GetTierPolicy reports it)"]
    entries = [tier.tier_id for tier in policy.tiers]
    fallback = policy.default_tier.display_name or "default_tier"
    warnings += [f"tier {tier_id!r} of the served run has no entry: its customers get default_tier ({fallback})"
                for tier_id in served_tier_ids if tier_id not in entries]
    warnings += [f"tiers[{i}].tier_id {tier_id!r} matches no tier of the served run "
                 f"({', '.join(served_tier_ids)}): it is unused" for i, tier_id in enumerate(entries)
                 if tier_id not in served_tier_ids]
    return warnings
