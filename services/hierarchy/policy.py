"""Tier policies: what each tier gets from the front line. A default ships; new versions come by RPC."""

from __future__ import annotations

from google.protobuf import duration_pb2

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb

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
