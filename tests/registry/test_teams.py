"""Customer teams in the registry, over real gRPC on SQLite and PostgreSQL: roles set, replaced and cleared with
their history kept, inheritance down the account tree, the owner field as the role "owner", import (rows and
columns), export and the change feed carrying teams, the organisation's team, people and bad input named by field
or row. One suite per database for the module; each test uses its own ids."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2, timestamp_pb2

from clients.cli import main
from cvh.registry.v1 import registry_service_pb2 as pb
from cvh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from services.common import db
from services.registry import teams
from tests.conftest import _empty_tables, start_server
from tests.grpc_helpers import raises_status

Code = grpc.StatusCode
CSM, AE, EXEC = "customer_success_manager", "account_executive", "executive_sponsor"
JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('teams') / 'cvh.db'}"
    url = request.getfixturevalue("postgres_database")
    _empty_tables(url)
    return url


@pytest.fixture(scope="module")
def suite(database) -> Iterator:
    server = start_server(database, services=("registry",))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registry(suite) -> Iterator[pb_grpc.RegistryServiceStub]:
    with grpc.insecure_channel(suite.target) as channel:
        yield pb_grpc.RegistryServiceStub(channel)


def member(role: str, person: str = "", **extra) -> pb.TeamMember:
    return pb.TeamMember(role=role, person=person, **extra)


def set_team(registry, customer_id: str, *members: pb.TeamMember) -> pb.Customer:
    return registry.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=pb.Customer(name=customer_id, team=members), update_mask=field_mask_pb2.FieldMask(paths=["team"])))


def team(customer: pb.Customer, effective: bool = False) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for seat in customer.effective_team if effective else customer.team:
        found.setdefault(seat.role, []).append(seat.person + (f"<{seat.inherited_from}" if seat.inherited_from else ""))
    return found


def get(registry, customer_id: str) -> pb.Customer:
    return registry.GetCustomer(pb.GetCustomerRequest(name=customer_id))


def history(registry, customer_id: str, role: str = "") -> list[tuple[str, str, bool]]:
    answer = registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer=customer_id, role=role))
    return [(m.role, m.person, m.current) for m in answer.memberships]


def test_roles_are_set_replaced_and_cleared_one_by_one_and_history_keeps_who_served_when(registry):
    started = timestamp_pb2.Timestamp(seconds=JAN_1)
    created = registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-a", team=[
        member(CSM, "ana@x.com", display_name="Ana", start_time=started), member(AE, "bo@x.com")])))
    assert team(created) == {AE: ["bo@x.com"], CSM: ["ana@x.com"]}
    assert [m.display_name for m in created.team if m.role == CSM] == ["Ana"]
    assert [m.start_time.seconds for m in created.team if m.role == CSM] == [JAN_1]
    # Naming one role replaces its members and leaves the others; a member who stays keeps their start.
    changed = set_team(registry, "tm-a", member(CSM, "ana@x.com"), member(CSM, "cy@x.com"))
    assert team(changed) == {AE: ["bo@x.com"], CSM: ["ana@x.com", "cy@x.com"]}
    assert [m.start_time.seconds for m in changed.team if m.person == "ana@x.com"] == [JAN_1]
    changed = set_team(registry, "tm-a", member(CSM, "cy@x.com"), member(AE))  # AE cleared
    assert team(changed) == {CSM: ["cy@x.com"]}
    assert sorted(history(registry, "tm-a")) == sorted([
        (CSM, "cy@x.com", True), (CSM, "ana@x.com", False), (AE, "bo@x.com", False)])
    past = registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer="tm-a", role=CSM)).memberships
    ana = [m for m in past if m.person == "ana@x.com"][0]
    assert ana.start_time.seconds == JAN_1 and ana.HasField("end_time") and ana.display_name == "Ana"
    assert history(registry, "tm-a", AE) == [(AE, "bo@x.com", False)]
    page = registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer="tm-a", page_size=2))
    rest = registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer="tm-a", page_size=2,
                                                              page_token=page.next_page_token))
    assert len(page.memberships) + len(rest.memberships) == 3 and not rest.next_page_token


def test_a_child_inherits_each_role_from_its_nearest_ancestor_unless_it_sets_its_own(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-top", team=[
        member(EXEC, "eve@x.com"), member(CSM, "sam@x.com"), member(AE, "al@x.com")])))
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
        customer_id="tm-mid", parent="tm-top", team=[member(CSM, "mo@x.com")])))
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
        customer_id="tm-leaf", parent="tm-mid", team=[member(AE, "lee@x.com")])))
    leaf = get(registry, "tm-leaf")
    assert team(leaf) == {AE: ["lee@x.com"]}
    assert team(leaf, effective=True) == {AE: ["lee@x.com"], CSM: ["mo@x.com<customers/tm-mid"],
                                          EXEC: ["eve@x.com<customers/tm-top"]}
    # The middle account drops its CSM: the leaf now inherits the top's.
    set_team(registry, "tm-mid", member(CSM))
    batch = registry.BatchGetCustomers(pb.BatchGetCustomersRequest(names=["tm-leaf", "tm-top"]))
    assert team(batch.customers[0], effective=True)[CSM] == ["sam@x.com<customers/tm-top"]
    assert team(batch.customers[1], effective=True) == team(batch.customers[1])
    listed = registry.ListCustomers(pb.ListCustomersRequest(parent="tm-mid")).customers
    assert team(listed[0]) == {AE: ["lee@x.com"]} and not listed[0].effective_team


def test_the_owner_field_and_the_role_owner_are_one(registry):
    created = registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-o",
                                                                                    owner="olga@x.com")))
    assert team(created) == {"owner": ["olga@x.com"]}
    changed = set_team(registry, "tm-o", member("owner", "pat@x.com"), member("owner", "olga@x.com"))
    assert changed.owner == "olga@x.com"  # a member who stays comes first
    # Writes that name neither the owner nor the role keep both owners.
    mask = field_mask_pb2.FieldMask(paths=["display_name"])
    renamed = registry.UpdateCustomer(pb.UpdateCustomerRequest(customer=pb.Customer(name="tm-o", display_name="O"),
                                                               update_mask=mask))
    assert team(renamed) == {"owner": ["olga@x.com", "pat@x.com"]}
    assert team(set_team(registry, "tm-o", member(CSM, "cy@x.com"))) == {CSM: ["cy@x.com"],
                                                                         "owner": ["olga@x.com", "pat@x.com"]}
    assert team(set_team(registry, "tm-o", member(CSM))) == {"owner": ["olga@x.com", "pat@x.com"]}
    changed = set_team(registry, "tm-o", member("owner", "pat@x.com"))
    assert changed.owner == "pat@x.com" and team(changed) == {"owner": ["pat@x.com"]}
    changed = registry.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=pb.Customer(name="tm-o", owner="quinn@x.com"), update_mask=field_mask_pb2.FieldMask(paths=["owner"])))
    assert team(changed) == {"owner": ["quinn@x.com"]}
    changed = registry.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=pb.Customer(name="tm-o"), update_mask=field_mask_pb2.FieldMask(paths=["owner"])))
    assert changed.owner == "" and not changed.team
    owned = registry.ListCustomers(pb.ListCustomersRequest(owner="pat@x.com")).customers
    assert "tm-o" not in {c.customer_id for c in owned}
    assert history(registry, "tm-o", "owner") == [("owner", "quinn@x.com", False), ("owner", "pat@x.com", False),
                                                  ("owner", "olga@x.com", False)]


def test_imports_set_teams_by_rows_and_by_columns_and_name_bad_rows(registry):
    rows = pb.ImportCustomersRequest(customers=[
        pb.Customer(customer_id="tm-i1", team=[member(CSM, "ana@x.com")]),
        pb.Customer(customer_id="tm-i2", team=[member("Bad Role", "ana@x.com")])])
    block = pb.CustomerColumns(customer_ids=["tm-i3", "tm-i4", "tm-i5", "tm-i6"], owners=["o@x.com"] * 4,
                               team_columns=[pb.TeamColumn(role=CSM, persons=["ana@x.com;bo@x.com", "", "a\tb", "x"]),
                                             pb.TeamColumn(role="owner", persons=["", "kim@x.com", "", ";".join(
                                                 f"p{i}@x.com" for i in range(17))])])
    rows.columns.CopyFrom(block)
    summary = registry.ImportCustomers(iter([rows]))
    assert (summary.created, summary.rejected) == (3, 3)
    assert {(e.position, e.field) for e in summary.errors} == {
        (1, "team[0].role"), (4, f"team.{CSM}"), (5, "team.owner")}
    assert team(get(registry, "tm-i1")) == {CSM: ["ana@x.com"]}
    i3, i4 = get(registry, "tm-i3"), get(registry, "tm-i4")
    assert team(i3) == {CSM: ["ana@x.com", "bo@x.com"]} and i3.owner == ""  # the owner column wins over owners
    assert team(i4) == {"owner": ["kim@x.com"]} and i4.owner == "kim@x.com"
    # Re-importing without team columns changes no role but the owner (the owners column); an empty cell clears.
    again = pb.CustomerColumns(customer_ids=["tm-i3", "tm-i4"], owners=["", "kim@x.com"],
                               team_columns=[pb.TeamColumn(role=AE, persons=["", "al@x.com"])])
    registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=again)]))
    assert team(get(registry, "tm-i3")) == {CSM: ["ana@x.com", "bo@x.com"]}
    assert team(get(registry, "tm-i4")) == {AE: ["al@x.com"], "owner": ["kim@x.com"]}
    assert len(history(registry, "tm-i4", "owner")) == 1
    bad_block = pb.CustomerColumns(customer_ids=["tm-i7"], team_columns=[pb.TeamColumn(role=CSM, persons=[])])
    summary = registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=bad_block)]))
    assert summary.rejected == 1 and summary.errors[0].field == "columns.team_columns[0].persons"


def team_rows(url: str, customer_ids: list[str]) -> list[tuple[str, str, bool]]:
    """The registry_team_members rows of ``customer_ids`` as stored: (customer, person, current)."""
    engine = db.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT customer_id, person_id, end_time_us IS NULL FROM registry_team_members "
                            "WHERE customer_id IN :ids ORDER BY pk").bindparams(sa.bindparam("ids", expanding=True))
            return [(c, p, bool(current)) for c, p, current in conn.execute(query, {"ids": customer_ids})]
    finally:
        engine.dispose()


def test_an_import_of_owners_writes_no_team_rows_and_history_still_says_who_owned_when(registry, database):
    ids = ["tm-w1", "tm-w2", "tm-w3"]
    block = pb.CustomerColumns(customer_ids=ids, owners=["olga@x.com", "olga@x.com", "pat@x.com"])
    assert registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=block)])).created == 3
    assert team_rows(database, ids) == []  # the owners are on the customers' rows
    assert team(get(registry, "tm-w3")) == {"owner": ["pat@x.com"]}
    people = {p.person_id for p in registry.ListPeople(pb.ListPeopleRequest(page_size=1000)).people}
    assert {"olga@x.com", "pat@x.com"} <= people
    (olga,) = registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer="tm-w1")).memberships
    assert (olga.person, olga.current) == ("olga@x.com", True)
    # A new owner: one row keeps who owned the customer until when; the customer that kept its owner has none.
    again = pb.CustomerColumns(customer_ids=["tm-w1", "tm-w2"], owners=["quinn@x.com", "olga@x.com"])
    registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=again)]))
    assert team_rows(database, ids) == [("tm-w1", "olga@x.com", False)]
    quinn, before = registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer="tm-w1", role="owner")).memberships
    assert (quinn.person, quinn.current, before.person, before.current) == ("quinn@x.com", True, "olga@x.com", False)
    assert before.start_time == olga.start_time and before.end_time == quinn.start_time
    assert get(registry, "tm-w1").owner == "quinn@x.com" and team(get(registry, "tm-w2")) == {"owner": ["olga@x.com"]}


def test_export_and_the_change_feed_carry_each_customers_own_team(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
        customer_id="tm-e", owner="olga@x.com", team=[member(CSM, "ana@x.com"), member(CSM, "bo@x.com")])))
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-e2", parent="tm-e")))
    cells: dict[tuple[str, str], str] = {}
    sequence = 0
    for message in registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=["nps"], chunk_size=7)):
        sequence = sequence or message.sequence
        for column in message.team:
            assert len(column.persons) == len(message.chunk.customer_ids)
            cells.update(((i, column.role), p) for i, p in zip(message.chunk.customer_ids, column.persons) if p)
    assert cells[("tm-e", CSM)] == "ana@x.com;bo@x.com" and cells[("tm-e", "owner")] == "olga@x.com"
    assert not [key for key in cells if key[0] == "tm-e2"]  # inheritance is not exported
    set_team(registry, "tm-e", member(CSM, "cy@x.com"))
    feed = registry.WatchCustomerChanges(pb.WatchCustomerChangesRequest(after_sequence=sequence), timeout=10)
    message = next(feed)
    feed.cancel()
    columns = {c.role: dict(zip(message.chunk.customer_ids, c.persons)) for c in message.team}
    assert columns[CSM]["tm-e"] == "cy@x.com" and columns["owner"]["tm-e"] == "olga@x.com"


def test_deleting_a_customer_forgets_its_team(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-d",
                                                                          team=[member(CSM, "ana@x.com")])))
    registry.DeleteCustomer(pb.DeleteCustomerRequest(name="tm-d"))
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-d")))
    assert history(registry, "tm-d") == []


def test_bad_teams_are_refused_naming_the_field_and_change_nothing(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-b",
                                                                          team=[member(CSM, "ana@x.com")])))
    with raises_status(Code.INVALID_ARGUMENT, field="customer.team[0].role", reason="INVALID_CUSTOMER"):
        set_team(registry, "tm-b", member("CSM", "bo@x.com"))
    with raises_status(Code.INVALID_ARGUMENT, field="customer.team[1].person"):
        set_team(registry, "tm-b", member(CSM, "bo@x.com"), member(CSM, "no\nline"))
    with raises_status(Code.INVALID_ARGUMENT, field="customer.team"):
        set_team(registry, "tm-b", *[member(CSM, f"p{i}@x.com") for i in range(17)])
    with raises_status(Code.INVALID_ARGUMENT, field="customer.team"):
        set_team(registry, "tm-b", *[member(f"role_{i}", "p@x.com") for i in range(17)])
    with raises_status(Code.INVALID_ARGUMENT, field="customer.team[0].start_time"):
        set_team(registry, "tm-b", member(CSM, "bo@x.com", start_time=timestamp_pb2.Timestamp(seconds=2**40)))
    with raises_status(Code.INVALID_ARGUMENT, field="customer.owner"):
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-b2", owner="a;b")))
    with raises_status(Code.INVALID_ARGUMENT, field="role", reason="INVALID_ROLE"):
        registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer="tm-b", role="No"))
    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        registry.ListTeamHistory(pb.ListTeamHistoryRequest(customer="tm-nobody"))
    assert team(get(registry, "tm-b")) == {CSM: ["ana@x.com"]} and len(history(registry, "tm-b")) == 1


def test_the_organisations_team_is_set_by_role_and_kept(registry):
    with raises_status(Code.INVALID_ARGUMENT, field="members[0].role", reason="INVALID_MEMBERS"):
        registry.UpdateOrganizationTeam(pb.UpdateOrganizationTeamRequest(members=[member("Chief", "c@x.com")]))
    answer = registry.UpdateOrganizationTeam(pb.UpdateOrganizationTeamRequest(members=[
        member("chief_customer_officer", "cco@x.com", display_name="Chris"), member("vp_success", "v@x.com")]))
    assert [(m.role, m.person, m.display_name) for m in answer.members] == [
        ("chief_customer_officer", "cco@x.com", "Chris"), ("vp_success", "v@x.com", "")]
    registry.UpdateOrganizationTeam(pb.UpdateOrganizationTeamRequest(members=[member("vp_success")]))
    answer = registry.GetOrganizationTeam(pb.GetOrganizationTeamRequest())
    assert [(m.role, m.person) for m in answer.members] == [("chief_customer_officer", "cco@x.com")]


def test_people_have_a_display_name_and_a_capacity(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="tm-p",
                                                                          team=[member(CSM, "pia@x.com")])))
    person = registry.UpdatePerson(pb.UpdatePersonRequest(
        person=pb.Person(person_id="pia@x.com", display_name="Pia", capacity=12)))
    assert (person.display_name, person.capacity) == ("Pia", 12)
    person = registry.UpdatePerson(pb.UpdatePersonRequest(person=pb.Person(person_id="pia@x.com", capacity=15),
                                                          update_mask=field_mask_pb2.FieldMask(paths=["capacity"])))
    assert (person.display_name, person.capacity) == ("Pia", 15)
    assert [m.display_name for m in get(registry, "tm-p").team] == ["Pia"]
    with raises_status(Code.INVALID_ARGUMENT, field="person.capacity", reason="INVALID_PERSON"):
        registry.UpdatePerson(pb.UpdatePersonRequest(person=pb.Person(person_id="pia@x.com", capacity=-1)))
    with raises_status(Code.INVALID_ARGUMENT, field="update_mask"):
        registry.UpdatePerson(pb.UpdatePersonRequest(person=pb.Person(person_id="pia@x.com"),
                                                     update_mask=field_mask_pb2.FieldMask(paths=["email"])))
    people, token = [], ""
    while True:
        page = registry.ListPeople(pb.ListPeopleRequest(page_size=3, page_token=token))
        people += page.people
        token = page.next_page_token
        if not token:
            break
    ids = [p.person_id for p in people]
    assert ids == sorted(ids) and "pia@x.com" in ids and "ana@x.com" in ids


def cvh(suite, *args: str) -> tuple[int, str, str]:
    """``cvh ARGS --server ...`` run in this process (as the `cvh` script runs main): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*args, "--server", suite.target])
        except SystemExit as usage:  # argparse refused the arguments
            code = usage.code
    return code, out.getvalue(), err.getvalue()


def test_the_command_line_sets_shows_exports_and_imports_teams(suite, registry, tmp_path):
    path = tmp_path / "teams.csv"
    path.write_text(f"customer_id,parent_id,owner,TEAM.{CSM},team.{AE}\n"
                    f"tm-c1,,olga@x.com,ana@x.com;bo@x.com,al@x.com\n"
                    f"tm-c2,tm-c1,,,\n"
                    f"tm-c3,,,a\x01b,\n")
    code, out, _ = cvh(suite, "import", str(path))
    assert code == 1 and f"team.{CSM}" in (tmp_path / "teams.csv.rejects.csv").read_text()
    assert team(get(registry, "tm-c1")) == {AE: ["al@x.com"], CSM: ["ana@x.com", "bo@x.com"], "owner": ["olga@x.com"]}
    code, out, err = cvh(suite, "customers", "team", "tm-c2", f"{EXEC}=eve@x.com", f"{AE}=")
    assert code == 0, err
    lines = {tuple(line.split()[:2]): line for line in out.splitlines()[1:]}
    assert "inherited from tm-c1" in lines[(CSM, "ana@x.com")] and "since" in lines[(EXEC, "eve@x.com")]
    assert "inherited from tm-c1" in lines[(AE, "al@x.com")]  # tm-c2 had no AE of its own: clearing it changes nothing
    code, out, _ = cvh(suite, "customers", "get", "tm-c2")
    assert code == 0 and "inherited from tm-c1" in out and "eve@x.com" in out
    code, out, _ = cvh(suite, "customers", "team", "tm-c2", "--history")
    assert code == 0 and "eve@x.com" in out and "(current)" in out
    assert cvh(suite, "customers", "team", "tm-c2", "nobody")[0] == 2  # not ROLE=PERSON: a usage error
    code, out, _ = cvh(suite, "org", "team", "chief_customer_officer=cco@x.com")
    assert code == 0 and "chief_customer_officer" in out and "cco@x.com" in out
    code, out, _ = cvh(suite, "people", "set", "ana@x.com", "--name", "Ana", "--capacity", "12")
    assert code == 0 and "capacity 12" in out
    # Round trip: export, clear the team, import the export: the team is back.
    exported = tmp_path / "export"
    assert cvh(suite, "export", str(exported), "--signals", "nps")[0] == 0
    assert cvh(suite, "export", "--format", "csv", str(tmp_path / "all.csv"), "--signals", "nps")[0] == 0
    header = (tmp_path / "all.csv").read_text().splitlines()[0].split(",")
    assert {f"team.{CSM}", f"team.{AE}", f"team.{EXEC}", "team.owner"} <= set(header)
    before = {i: team(get(registry, i)) for i in ("tm-c1", "tm-c2")}
    set_team(registry, "tm-c1", member(CSM), member(AE, "zed@x.com"))
    code, _, err = cvh(suite, "import", str(exported))
    assert code == 0, err
    assert {i: team(get(registry, i)) for i in ("tm-c1", "tm-c2")} == before


def test_a_batch_answer_that_teams_would_take_past_a_message_is_refused(registry, monkeypatch):
    from services.registry import servicer  # the suite runs in this process

    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
        customer_id="tm-big", team=[member(f"role_{i}", f"person{j}@x.com") for i in range(4) for j in range(16)])))
    monkeypatch.setattr(servicer, "MAX_ANSWER_BYTES", 4000)
    with raises_status(Code.RESOURCE_EXHAUSTED, reason="ANSWER_TOO_LARGE"):
        registry.BatchGetCustomers(pb.BatchGetCustomersRequest(names=["tm-big"]))


def test_an_export_chunk_whose_teams_are_too_large_is_cut_into_smaller_ones(registry, monkeypatch):
    from services.registry import store  # the suite runs in this process

    monkeypatch.setattr(store, "MAX_TEAM_CHARS", 40)
    ids, counts = [], []
    for message in registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=["nps"])):
        ids += message.chunk.customer_ids
        counts.append(len(message.chunk.customer_ids))
        assert all(len(column.persons) == counts[-1] for column in message.team)
        assert sum(len(p) for column in message.team for p in column.persons) <= 40 or counts[-1] == 1
    assert len(counts) > 1 and len(ids) == len(set(ids))
    first = next(registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=["nps"])))
    assert len(ids) == first.total_customers


def test_the_migration_moves_each_current_owner_onto_the_customers_row(tmp_path):
    engine = db.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    db.upgrade(engine, "0013_adoption_store")  # the revision before 0014_owner_since
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO registry_customers (customer_id, stakeholder_role, owner, revision, create_time_us, "
            "update_time_us) VALUES ('a', 2, 'olga', 1, 0, 50), ('b', 2, '', 1, 0, 50), ('c', 2, 'pat', 1, 0, 50)")
        conn.exec_driver_sql(
            "INSERT INTO registry_team_members (customer_id, role, person_id, start_time_us, end_time_us) VALUES "
            "('a', 'owner', 'ivan', 1, 10), ('a', 'owner', 'olga', 10, NULL), ('b', 'csm', 'ana', 20, NULL), "
            "('c', 'owner', 'pat', 30, NULL), ('c', 'owner', 'ron', 40, NULL)")
    db.upgrade(engine)
    with engine.connect() as conn:
        since = dict(conn.exec_driver_sql("SELECT customer_id, owner_since_us FROM registry_customers").all())
        left = [tuple(row) for row in conn.exec_driver_sql(
            "SELECT customer_id, person_id FROM registry_team_members ORDER BY pk")]
        assert since == {"a": 10, "b": 0, "c": 30}
        assert left == [("a", "ivan"), ("b", "ana"), ("c", "ron")]  # who left, other roles and further owners stay
        assert teams.history(conn, "a", "") == [("owner", "olga", 10, None), ("owner", "ivan", 1, 10)]
        assert [(s.person, s.start_us) for s in teams.teams_of(conn, ["c"])["c"]] == [("pat", 30), ("ron", 40)]
    engine.dispose()
