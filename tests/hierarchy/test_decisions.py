"""Front-line decisions over real gRPC on SQLite and PostgreSQL: within the tier's authority or answered
NEEDS_ESCALATION with the right contact (never refused), the goodwill budget of the period used and shown in
GetPriority, the usage figures per tier and person by hand, budgets read back at start, and bad input named."""

from __future__ import annotations

import pytest
from grpc import StatusCode as Code

from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from services.common import db
from services.hierarchy import decisions
from services.registry.customers import now_us
from tests.grpc_helpers import raises_status
from tests.hierarchy.test_live_accounts import eventually, found, priority
from tests.hierarchy.test_teams import members

CREDIT, WAIVER, OFFER, ESCALATION = (pb.DECISION_KIND_GOODWILL_CREDIT, pb.DECISION_KIND_FEE_WAIVER,
                                     pb.DECISION_KIND_OFFER, pb.DECISION_KIND_ESCALATION)


def decide(hierarchy, kind, person="ana@x", amount=0, currency="", offer="", customer="acme"):
    return hierarchy.RecordServiceDecision(pb.RecordServiceDecisionRequest(
        customer=customer, kind=kind, amount_minor=amount, currency=currency, offer=offer, person=person,
        reason="the customer called about an outage"))


def test_decisions_within_and_beyond_authority_and_their_figures(channel, database_url):
    registry, hierarchy = rpb_grpc.RegistryServiceStub(channel), pb_grpc.HierarchyServiceStub(channel)
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="acme", team=members(owner="ana@x", customer_success_manager="cs@x"))))
    policy = hierarchy.GetTierPolicy(pb.GetTierPolicyRequest())
    policy.ClearField("warnings")
    authority = policy.default_tier.authority  # acme has no tier: the default tier's policy is its
    authority.goodwill_credit_limit_minor, authority.currency, authority.may_waive_fees = 10_000, "EUR", False
    authority.offers[:] = ["one month free"]
    policy.default_tier.escalation.team = "desk@x"
    hierarchy.SetTierPolicy(pb.SetTierPolicyRequest(policy=policy))
    eventually(lambda: found(hierarchy, "acme") and priority(hierarchy, "acme").goodwill_remaining_minor,
               lambda left: left == 10_000, "the whole budget")

    first = decide(hierarchy, CREDIT, amount=6_000, currency="EUR")
    assert (first.outcome, first.goodwill_remaining_minor) == (pb.DECISION_OUTCOME_WITHIN_AUTHORITY, 4_000)
    assert first.name.startswith("serviceDecisions/") and not first.escalation_contact.contact
    beyond = decide(hierarchy, CREDIT, amount=5_000, currency="EUR")
    assert beyond.outcome == pb.DECISION_OUTCOME_NEEDS_ESCALATION and "4,000" in beyond.escalation_note
    assert (beyond.escalation_contact.level, beyond.escalation_contact.contact) == ("customer_success_manager",
                                                                                    "cs@x")
    assert beyond.goodwill_remaining_minor == 4_000  # a credit beyond authority uses none of the budget
    assert priority(hierarchy, "acme").goodwill_remaining_minor == 4_000
    assert decide(hierarchy, WAIVER).outcome == pb.DECISION_OUTCOME_NEEDS_ESCALATION
    assert decide(hierarchy, OFFER, offer="one month free").outcome == pb.DECISION_OUTCOME_WITHIN_AUTHORITY
    assert decide(hierarchy, ESCALATION).outcome == pb.DECISION_OUTCOME_NEEDS_ESCALATION
    # The CSM's own credit beyond the budget goes past them: no CEM, so the tier's static team.
    theirs = decide(hierarchy, CREDIT, person="cs@x", amount=4_001, currency="EUR")
    assert (theirs.escalation_contact.level, theirs.escalation_contact.contact,
            theirs.escalation_contact.fallback) == ("customer_experience_manager", "desk@x", True)

    usage = hierarchy.GetAuthorityUsage(pb.GetAuthorityUsageRequest())
    by_hand = pb.AuthorityUsageFigures(decisions=6, within_authority=2, escalations=4, escalation_rate=4 / 6,
                                       goodwill_granted_minor=6_000, waivers_and_offers=1)
    assert usage.total == by_hand
    by_hand.key = ""  # acme's tier: none (the default tier)
    assert list(usage.tiers) == [by_hand]
    assert [(p.key, p.decisions, p.escalations, p.escalation_rate) for p in usage.persons] == [
        ("ana@x", 5, 3, 3 / 5), ("cs@x", 1, 1, 1.0)]
    assert hierarchy.GetAuthorityUsage(pb.GetAuthorityUsageRequest(person="cs@x")).total.decisions == 1
    last_year = pb.GetAuthorityUsageRequest()
    last_year.period.FromMicroseconds(now_us() - 400 * 86_400 * 1_000_000)
    assert hierarchy.GetAuthorityUsage(last_year).total.decisions == 0
    # Any time range: the last hour holds all six; the hour before none.
    hour = 3_600 * 1_000_000
    recent, earlier = pb.GetAuthorityUsageRequest(), pb.GetAuthorityUsageRequest()
    recent.start_time.FromMicroseconds(now_us() - hour)
    recent.end_time.FromMicroseconds(now_us() + 1)
    earlier.start_time.FromMicroseconds(now_us() - 2 * hour)
    earlier.end_time.FromMicroseconds(now_us() - hour)
    assert hierarchy.GetAuthorityUsage(recent).total == usage.total
    assert hierarchy.GetAuthorityUsage(earlier).total.decisions == 0
    assert hierarchy.GetAuthorityUsage(recent).period_start == recent.start_time

    # Budgets are read back from the table at start.
    engine = db.create_engine(database_url)
    with engine.connect() as conn:
        budgets = decisions.Budgets(pb.GOODWILL_PERIOD_UNSPECIFIED)
        budgets.load(conn, now_us())
    engine.dispose()
    assert budgets.granted == {"acme": 6_000} and budgets.remaining("acme", 10_000) == 4_000

    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        decide(hierarchy, WAIVER, customer="nobody")
    for request, field in BAD:
        with raises_status(Code.INVALID_ARGUMENT, field=field):
            if isinstance(request, pb.GetAuthorityUsageRequest):
                hierarchy.GetAuthorityUsage(request)
            else:
                hierarchy.RecordServiceDecision(request)


def _usage_between(start: int | None, end: int | None, period: bool = False) -> pb.GetAuthorityUsageRequest:
    request = pb.GetAuthorityUsageRequest()
    for field, at in (("start_time", start), ("end_time", end), ("period", 15 if period else None)):
        if at is not None:
            getattr(request, field).FromMicroseconds(at)
    return request


def _decision(**fields) -> pb.RecordServiceDecisionRequest:
    base = {"customer": "acme", "kind": CREDIT, "amount_minor": 100, "currency": "EUR", "person": "ana@x",
            "reason": "why"}
    return pb.RecordServiceDecisionRequest(**(base | fields))


BAD = [(_decision(kind=pb.DECISION_KIND_UNSPECIFIED), "kind"), (_decision(amount_minor=0), "amount_minor"),
       (_decision(currency="eur"), "currency"), (_decision(kind=WAIVER), "amount_minor"),
       (_decision(kind=OFFER, amount_minor=0, currency=""), "offer"), (_decision(person=""), "person"),
       (_decision(person="a;b"), "person"), (_decision(reason=""), "reason"), (_decision(customer=""), "customer"),
       (pb.GetAuthorityUsageRequest(person="a\x01"), "person"), (pb.GetAuthorityUsageRequest(tier_id="nope"), "tier_id"),
       (pb.GetAuthorityUsageRequest(tier_id="x" * 300), "tier_id"), (_usage_between(10, None), "end_time"),
       (_usage_between(None, 10), "start_time"), (_usage_between(10, 10), "end_time"),
       (_usage_between(10, 20, period=True), "period")]


@pytest.mark.parametrize("at_us,start,end", [
    (1_700_000_000_000_000, "2023-11-01", "2023-12-01"), (1_703_980_800_000_000, "2023-12-01", "2024-01-01")])
def test_monthly_periods_are_calendar_months_in_utc(at_us, start, end):
    import datetime as dt
    got = decisions.period_bounds(pb.GOODWILL_PERIOD_MONTHLY, at_us)
    assert [dt.datetime.fromtimestamp(t / 1e6, dt.UTC).date().isoformat() for t in got] == [start, end]
    quarter = decisions.period_bounds(pb.GOODWILL_PERIOD_QUARTERLY, at_us)
    assert dt.datetime.fromtimestamp(quarter[0] / 1e6, dt.UTC).month == 10
