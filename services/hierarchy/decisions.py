"""Front-line decisions: whether each was within the tier's authority, the goodwill budgets of the current period,
and the usage figures.

The budget: a tier's ``authority.goodwill_credit_limit_minor`` is what the front line may grant one customer per
goodwill period (TierPolicy.goodwill_period, calendar months in UTC by default) without escalating. What each
customer has been granted in the current period is kept in memory (read from the table at start and when the
policy changes, added to on each decision), so GetPriority answers the remaining budget without a query. Each
replica keeps its own: decisions recorded through another replica reach it at its next start or policy change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from services.common.errors import Violations
from services.common.validation import check_text, customer_id_from_name
from services.hierarchy.policy import CURRENCY, MAX_POLICY_TEXT
from services.hierarchy.tables import service_decisions
from services.registry.teams import person_problem

MAX_AMOUNT_MINOR = 10**12
MAX_REASON = 1024
MAX_USAGE_PERSONS = 1000
MONTHS = {pb.GOODWILL_PERIOD_UNSPECIFIED: 1, pb.GOODWILL_PERIOD_MONTHLY: 1, pb.GOODWILL_PERIOD_QUARTERLY: 3,
          pb.GOODWILL_PERIOD_YEARLY: 12}
WITHIN, ESCALATE = pb.DECISION_OUTCOME_WITHIN_AUTHORITY, pb.DECISION_OUTCOME_NEEDS_ESCALATION


def period_bounds(period: int, at_us: int) -> tuple[int, int]:
    """[start, end) of the goodwill period holding ``at_us``, microseconds since the epoch (UTC calendar)."""
    months = MONTHS.get(period, 1)
    at = dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC)
    first = (at.month - 1) // months * months  # months since January of the period's first month
    start = dt.datetime(at.year, first + 1, 1, tzinfo=dt.UTC)
    end_year, end_month = divmod(first + months, 12)
    end = dt.datetime(at.year + end_year, end_month + 1, 1, tzinfo=dt.UTC)
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


@dataclass
class Budgets:
    """Goodwill granted within authority per customer in the period [start, end)."""

    period: int
    start: int = 0
    end: int = 0
    granted: dict[str, int] = field(default_factory=dict)

    def load(self, conn: Connection, now: int) -> None:
        self.start, self.end = period_bounds(self.period, now)
        t = service_decisions.c
        query = (sa.select(t.customer_id, sa.func.sum(t.amount_minor))
                 .where(t.record_time_us >= self.start, t.record_time_us < self.end, t.outcome == WITHIN,
                        t.kind == pb.DECISION_KIND_GOODWILL_CREDIT)
                 .group_by(t.customer_id))
        self.granted = {customer_id: int(total) for customer_id, total in conn.execute(query)}

    def roll(self, now: int) -> None:
        """A new period starts with every budget whole."""
        if now >= self.end:
            self.start, self.end = period_bounds(self.period, now)
            self.granted = {}

    def remaining(self, customer_id: str, limit: int) -> int:
        return max(limit - self.granted.get(customer_id, 0), 0)


def parse_request(request: pb.RecordServiceDecisionRequest) -> str:
    """The customer id; INVALID_ARGUMENT naming every bad field."""
    violations = Violations()
    customer_id = customer_id_from_name(request.customer, "customer", violations)
    kind = request.kind
    if kind not in pb.DecisionKind.values() or kind == pb.DECISION_KIND_UNSPECIFIED:
        violations.add("kind", "required: GOODWILL_CREDIT, FEE_WAIVER, OFFER or ESCALATION")
    if kind == pb.DECISION_KIND_GOODWILL_CREDIT:
        if not 1 <= request.amount_minor <= MAX_AMOUNT_MINOR:
            violations.add("amount_minor", f"a goodwill credit needs an amount of 1 to {MAX_AMOUNT_MINOR:,} minor "
                                           f"units, got {request.amount_minor}")
        if not CURRENCY.fullmatch(request.currency):
            violations.add("currency", "a goodwill credit needs an ISO 4217 code of three capital letters (EUR)")
    elif request.amount_minor or request.currency:
        field_path = "amount_minor" if request.amount_minor else "currency"
        violations.add(field_path, "only a goodwill credit has an amount and a currency")
    if kind == pb.DECISION_KIND_OFFER and not request.offer:
        violations.add("offer", "an offer decision names the offer made")
    check_text(request.offer, "offer", MAX_POLICY_TEXT, violations)
    if problem := person_problem(request.person):
        violations.add("person", problem)
    if not request.reason:
        violations.add("reason", "required: why, in words")
    check_text(request.reason, "reason", MAX_REASON, violations)
    violations.raise_if_any()
    return customer_id


def judge(request: pb.RecordServiceDecisionRequest, tier: pb.TierServicePolicy, remaining: int) -> str:
    """Why the decision needs escalation under ``tier`` with ``remaining`` goodwill; "" when within authority."""
    authority = tier.authority
    if request.kind == pb.DECISION_KIND_ESCALATION:
        return "handed up the escalation path"
    if request.kind == pb.DECISION_KIND_FEE_WAIVER:
        return "" if authority.may_waive_fees else "the tier's front line may not waive fees"
    if request.kind == pb.DECISION_KIND_OFFER:
        return "" if request.offer in authority.offers else "not one of the tier's offers"
    if not authority.goodwill_credit_limit_minor:
        return "the tier grants the front line no goodwill credit"
    if request.currency != authority.currency:
        return f"the tier's goodwill budget is in {authority.currency}, not {request.currency}"
    if request.amount_minor > remaining:
        return (f"a credit of {request.amount_minor:,} minor units of {authority.currency} is more than the "
                f"{remaining:,} left of this period's goodwill budget")
    return ""


def escalation_contact(path, person: str) -> pb.EscalationStep:
    """The first step above the front line with a contact other than the deciding person (empty when none)."""
    for step in path:
        if step.level != "front_line" and step.contact and step.contact != person:
            return step
    return pb.EscalationStep()


def usage(conn: Connection, start: int, end: int, tier_id: str, person: str) -> pb.AuthorityUsage:
    t = service_decisions.c
    within, escalated = (t.outcome == WITHIN), (t.outcome == ESCALATE)
    figures = [sa.func.count(), sa.func.sum(sa.case((within, 1), else_=0)),
               sa.func.sum(sa.case((escalated, 1), else_=0)),
               sa.func.sum(sa.case((within & (t.kind == pb.DECISION_KIND_GOODWILL_CREDIT), t.amount_minor), else_=0)),
               sa.func.sum(sa.case((within & t.kind.in_([pb.DECISION_KIND_FEE_WAIVER, pb.DECISION_KIND_OFFER]), 1),
                                   else_=0))]
    where = [t.record_time_us >= start, t.record_time_us < end]
    if tier_id:
        where.append(t.tier_id == tier_id)
    if person:
        where.append(t.person_id == person)
    answer = pb.AuthorityUsage()
    answer.period_start.FromMicroseconds(start)
    answer.period_end.FromMicroseconds(end)
    answer.total.CopyFrom(_figures("", conn.execute(sa.select(*figures).where(*where)).one()))
    tiers = conn.execute(sa.select(t.tier_id, *figures).where(*where).group_by(t.tier_id).order_by(t.tier_id))
    answer.tiers.extend(_figures(row[0], row[1:]) for row in tiers)
    persons = conn.execute(sa.select(t.person_id, *figures).where(*where).group_by(t.person_id)
                           .order_by(sa.func.count().desc(), t.person_id).limit(MAX_USAGE_PERSONS))
    answer.persons.extend(_figures(row[0], row[1:]) for row in persons)
    return answer


def _figures(key: str, row) -> pb.AuthorityUsageFigures:
    decisions, within, escalations, granted, waivers = (int(v or 0) for v in row)
    return pb.AuthorityUsageFigures(key=key, decisions=decisions, within_authority=within, escalations=escalations,
                                    escalation_rate=escalations / decisions if decisions else 0.0,
                                    goodwill_granted_minor=granted, waivers_and_offers=waivers)
