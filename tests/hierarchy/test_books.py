"""Books of business and portfolios over real gRPC on SQLite and PostgreSQL, checked by hand: a person's
customers per effective tier (their own team's members, or inherited), value, revenue, at-risk and bad-profit
counts and the change since the previous run; every person of a role with their load against capacity, a
customer served by two people counting for each and once in the total."""

from __future__ import annotations

import numpy as np
import pytest
from grpc import StatusCode as Code

from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as spb
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from tests.grpc_helpers import raises_status
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.hierarchy.test_live_accounts import eventually, found
from tests.hierarchy.test_teams import members
from tests.scoring.test_scoring_service import SIGNALS, run_to_end, seed

CSM = "customer_success_manager"


def by_hand(rows: list[dict], previous: bool = True) -> dict:
    """tier level -> (customers, composite, revenue, at risk, bad profit, known, previous) and the total."""
    tiers: dict[int, list] = {}
    for r in rows:
        entry = tiers.setdefault(r["level"], [0, 0.0, 0.0, 0, 0, 0, 0])
        for i, v in enumerate([1, r["composite"], r["revenue"], r["at_risk"], r["bad"], r["known"],
                               r["level"] > 0 and r["previous"] == r["level"]]):
            entry[i] += v
    return tiers


def figures(f: pb.BookFigures) -> list:
    return [f.customers, pytest.approx(f.composite_value), pytest.approx(f.revenue), f.at_risk, f.bad_profit,
            f.bad_profit_known, f.previous_run_customers]


def test_books_and_portfolios_match_a_hand_computed_check(channel):
    registry, scoring = rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel)
    hierarchy = pb_grpc.HierarchyServiceStub(channel)
    ids, matrix = seed(registry, 40)
    first = run_to_end(scoring)
    run = run_to_end(scoring)  # the same data again: each customer's previous tier is its tier
    wait_for_snapshot(hierarchy, run.name)
    teams = {**{i: "ana@x" for i in ids[0:5]}, **{i: "ana@x;bob@x" for i in ids[5:10]},
             **{i: "bob@x" for i in ids[10:14]}}
    for customer_id, persons in teams.items():
        registry.UpdateCustomer(rpb.UpdateCustomerRequest(
            customer=rpb.Customer(name=f"customers/{customer_id}", team=members(**{CSM: persons}),
                                  lifecycle_stage=common_pb2.LIFECYCLE_STAGE_AT_RISK if customer_id in ids[3:7]
                                  else common_pb2.LIFECYCLE_STAGE_ACTIVE),
            update_mask={"paths": ["team", "lifecycle_stage"]}))
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(customer=rpb.Customer(
        name=f"customers/{ids[20]}", team=members(owner="ana@x")), update_mask={"paths": ["team"]}))
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="kid", parent=f"customers/{ids[12]}")))  # inherits bob as its CSM
    for person, capacity in (("ana@x", 5), ("bob@x", 20)):
        registry.UpdatePerson(rpb.UpdatePersonRequest(person=rpb.Person(person_id=person, capacity=capacity),
                                                      update_mask={"paths": ["capacity"]}))
    eventually(lambda: found(hierarchy, "kid"), bool, "the child account")

    # The oracle: each customer's effective tier and composite from GetPriority, revenue as imported, stages as
    # set, bad-profit flags as the run stored them.
    flags = {}
    for chunk in scoring.StreamRunResults(spb.StreamRunResultsRequest(run=run.name)):
        flags.update(zip(chunk.dimension_scores.customer_ids, chunk.bad_profit))
    revenue = dict(zip(ids, np.nan_to_num(matrix[:, SIGNALS.index("annual_revenue")]).tolist()))
    every = [*ids, "kid"]
    priorities = hierarchy.BatchGetPriority(pb.BatchGetPriorityRequest(customers=every)).priorities
    rows = {c: {"level": p.effective_tier.level, "composite": p.composite, "revenue": revenue.get(c, 0.0),
                "at_risk": c in ids[3:7], "bad": flags.get(c, 0) == 1, "known": c in flags,
                "previous": p.own_tier.level} for c, p in zip(every, priorities)}
    served = {"ana@x": [*ids[0:10]], "bob@x": [*ids[5:14], "kid"]}

    def check(book: pb.BookOfBusiness, customers: list[str]) -> None:
        expected = by_hand([rows[c] for c in customers])
        got = {t.tier.level: figures(t.figures) for t in book.tiers}
        assert got == {level: list(v) for level, v in expected.items()}
        assert book.total.customers == len(customers)
        assert book.total.previous_run_customers == sum(rows[c]["previous"] > 0 for c in customers)
        assert (book.run, book.previous_run) == (run.name, first.name)

    ana = hierarchy.GetBookOfBusiness(pb.GetBookOfBusinessRequest(person="ana@x", role=CSM))
    check(ana, served["ana@x"])
    assert (ana.capacity, ana.load) == (5, 2.0)
    check(hierarchy.GetBookOfBusiness(pb.GetBookOfBusinessRequest(person="ana@x")), [*served["ana@x"], ids[20]])
    check(hierarchy.GetBookOfBusiness(pb.GetBookOfBusinessRequest(person="bob@x", role=CSM)), served["bob@x"])

    portfolios = hierarchy.ListPortfolios(pb.ListPortfoliosRequest(role=CSM))
    assert [(p.person, p.total.customers, p.load) for p in portfolios.portfolios] == [
        ("ana@x", 10, 2.0), ("bob@x", 10, 0.5)]
    assert portfolios.overloaded == 1
    for book in portfolios.portfolios:
        check(book, served[book.person])
    assert portfolios.total.customers == 15  # the five both serve count once
    union = [*ids[0:14], "kid"]
    assert figures(portfolios.total)[:6] == [sum(v[i] for v in by_hand([rows[c] for c in union]).values())
                                             for i in range(6)]

    with raises_status(Code.NOT_FOUND, reason="PERSON_NOT_FOUND"):
        hierarchy.GetBookOfBusiness(pb.GetBookOfBusinessRequest(person="ana@x", role="account_executive"))
    for request, field in [(pb.GetBookOfBusinessRequest(person=""), "person"),
                           (pb.GetBookOfBusinessRequest(person="ana@x", role="Not A Role"), "role")]:
        with raises_status(Code.INVALID_ARGUMENT, field=field):
            hierarchy.GetBookOfBusiness(request)
    with raises_status(Code.INVALID_ARGUMENT, field="role"):
        hierarchy.ListPortfolios(pb.ListPortfoliosRequest(role=""))
