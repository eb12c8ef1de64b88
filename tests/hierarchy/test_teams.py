"""GetPriority names the people who serve a customer, over real gRPC on SQLite and PostgreSQL: its effective
team (own members by role, the rest inherited from the nearest ancestor that has them) and the escalation path
derived from it, kept live through the registry's change feed; the tier policy says from which tier each level
is involved."""

from __future__ import annotations

from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.hierarchy.test_live_accounts import eventually, found, priority
from tests.scoring.test_scoring_service import run_to_end, seed


def members(**roles: str) -> list[rpb.TeamMember]:
    return [rpb.TeamMember(role=role, person=person) for role, persons in roles.items()
            for person in persons.split(";")]


def team_of(answer: pb.Priority) -> list[tuple[str, str, str]]:
    return [(m.role, m.person, m.inherited_from) for m in answer.team]


def path_of(answer: pb.Priority) -> list[tuple[str, str, bool]]:
    return [(s.level, s.contact, s.fallback) for s in answer.escalation]


def test_the_effective_team_and_escalation_path_come_back_live(channel):
    registry, scoring = rpb_grpc.RegistryServiceStub(channel), spb_grpc.ScoringServiceStub(channel)
    hierarchy = pb_grpc.HierarchyServiceStub(channel)
    seed(registry, 100)
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="acme", team=members(owner="ana@x", customer_success_manager="cs1@x;cs2@x"))))
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="acme-eu", parent="customers/acme", team=members(owner="bob@x"))))
    registry.UpdateOrganizationTeam(rpb.UpdateOrganizationTeamRequest(members=members(
        chief_customer_officer="cco@x")))
    run = run_to_end(scoring)
    wait_for_snapshot(hierarchy, run.name)

    child = priority(hierarchy, "acme-eu")
    assert team_of(child) == [("customer_success_manager", "cs1@x", "customers/acme"),
                              ("customer_success_manager", "cs2@x", "customers/acme"), ("owner", "bob@x", "")]
    static = child.policy.escalation.team
    assert static  # the tier's static contact: the fallback of a level nobody holds
    expected = [("front_line", "bob@x", False), ("customer_success_manager", "cs1@x", False),
                ("customer_experience_manager", static, True), ("chief_customer_officer", "cco@x", False)]
    eventually(lambda: path_of(priority(hierarchy, "acme-eu")), lambda got: got == expected, "escalation path")
    cco = priority(hierarchy, "acme-eu").escalation[3].persons[0]
    assert (cco.role, cco.inherited_from) == ("chief_customer_officer", "organization")
    # Display names as the registry holds them, for the customer's team and the organisation's alike.
    for person, name in (("cs1@x", "Chiara Silva"), ("cco@x", "Ines Okafor")):
        registry.UpdatePerson(rpb.UpdatePersonRequest(person=rpb.Person(person_id=person, display_name=name),
                                                      update_mask={"paths": ["display_name"]}))
    eventually(lambda: {p.person: p.display_name for s in priority(hierarchy, "acme-eu").escalation
                        for p in s.persons},
               lambda got: got.get("cs1@x") == "Chiara Silva" and got.get("cco@x") == "Ines Okafor"
               and got.get("bob@x") == "", "display names")
    assert {m.person: m.display_name for m in priority(hierarchy, "acme-eu").team}["cs1@x"] == "Chiara Silva"

    # A change of the parent's team reaches the child through the feed; the child's own owner stays.
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(
        customer=rpb.Customer(name="customers/acme", team=members(customer_success_manager="cs3@x",
                                                                  customer_experience_manager="cem@x")),
        update_mask={"paths": ["team"]}))
    expected[1:3] = [("customer_success_manager", "cs3@x", False), ("customer_experience_manager", "cem@x", False)]
    eventually(lambda: path_of(priority(hierarchy, "acme-eu")), lambda got: got == expected, "after the change")
    # A customer created after the run has its team at once.
    registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
        customer_id="acme-us", parent="customers/acme-eu",
        team=members(customer_success_manager="cs9@x", account_executive="ae@x"))))
    eventually(lambda: found(hierarchy, "acme-us") and team_of(priority(hierarchy, "acme-us")), lambda got: got == [
        ("account_executive", "ae@x", ""), ("customer_experience_manager", "cem@x", "customers/acme"),
        ("customer_success_manager", "cs9@x", ""), ("owner", "bob@x", "customers/acme-eu")], "new customer's team")

    # The policy involves the CCO for the top tier only: a customer below it skips that level.
    level = priority(hierarchy, "acme-eu").effective_tier.level
    policy = hierarchy.GetTierPolicy(pb.GetTierPolicyRequest())
    policy.ClearField("warnings")
    policy.escalation_involvement.add(level="chief_customer_officer", lowest_tier_level=1)
    hierarchy.SetTierPolicy(pb.SetTierPolicyRequest(policy=policy))
    levels = [s.level for s in priority(hierarchy, "acme-eu").escalation]
    assert levels == ["front_line", "customer_success_manager", "customer_experience_manager",
                      *(["chief_customer_officer"] if level == 1 else [])]
