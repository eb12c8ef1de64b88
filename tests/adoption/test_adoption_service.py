"""AdoptionService over real gRPC on SQLite and PostgreSQL: value hierarchy versions (validation naming every
bad field, activation, diff) and telemetry in (kept as daily aggregates, rejected by position, a batch id
counted once, each message all or nothing), with the registry in the same process and in another one."""

from __future__ import annotations

import contextlib
import time

import grpc
import numpy as np
import pytest
import sqlalchemy as sa

from cvh.adoption.v1 import adoption_service_pb2 as pb
from cvh.adoption.v1 import adoption_service_pb2_grpc as pb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from services.adoption import store
from services.adoption.telemetry import user_hashes as store_hashes
from services.common import db
from services.common.config import ServerConfig
from tests.conftest import ServerThread, _empty_tables
from tests.grpc_helpers import raises_status
from wire.columns import telemetry_chunk

Code = grpc.StatusCode
N, Rule, Children = pb.ValueNode, pb.ProcedureRule, pb.ChildrenRule
DAY_US = 86_400 * 1_000_000
RETENTION_DAYS = 90
CUSTOMERS = ["acme", "beta", "gamma", "delta"]  # delta never sends telemetry


def value_map(note: str = "first") -> pb.ValueMapVersion:
    """1 strategy, 1 initiative, 2 use cases, 3 procedures; given children before parents (the service
    stores parents first)."""
    return pb.ValueMapVersion(change_note=note, nodes=[
        N(key="make-report", level=4, display_name="Make a report", parent_key="reporting", owning_function=5,
          procedure_rule=Rule(event_names=["report.created"], min_count=3, min_active_days=2, window_days=30)),
        N(key="grow", level=1, display_name="Grow revenue", owning_function=1, definition="what they pursue"),
        N(key="expand", level=2, display_name="Expand", parent_key="grow", owning_function=2,
          children_rule=Children(kind=pb.CHILDREN_RULE_KIND_AT_LEAST, min_children=1)),
        N(key="reporting", level=3, display_name="Reporting", parent_key="expand", owning_function=3,
          children_rule=Children(kind=pb.CHILDREN_RULE_KIND_WEIGHTED_SHARE, min_weighted_share=0.5)),
        N(key="share-report", level=4, display_name="Share a report", parent_key="reporting", owning_function=5,
          weight=2, procedure_rule=Rule(event_names=["report.shared"], min_distinct_users=2, window_days=30)),
        N(key="pricing", level=3, display_name="Pricing", parent_key="expand", owning_function=4),
        N(key="set-price", level=4, display_name="Set a price", parent_key="pricing", owning_function=5,
          procedure_rule=Rule(event_names=["price.set"], min_count=1, window_days=7)),
    ])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory):
    """(server, database url): registry and adoption in one process, three registered customers."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('adoption') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = ServerThread(ServerConfig(services=("registry", "adoption"), listen="127.0.0.1:0", database_url=url,
                                       telemetry_retention_days=RETENTION_DAYS))
    with grpc.insecure_channel(server.target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        for customer in CUSTOMERS:
            registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(customer_id=customer)))
    yield server, url
    server.stop()


@pytest.fixture(scope="module")
def adoption(served):
    with grpc.insecure_channel(served[0].target) as channel:
        yield pb_grpc.AdoptionServiceStub(channel)


@pytest.fixture(scope="module")
def engine(served):
    engine = db.create_engine(served[1])
    yield engine
    engine.dispose()


# -- the value hierarchy ----------------------------------------------------------------------------------------

def test_before_any_version_there_is_no_active_one(adoption):
    with raises_status(Code.FAILED_PRECONDITION, reason="NO_ACTIVE_VALUE_MAP"):
        adoption.GetValueMapVersion(pb.GetValueMapVersionRequest())


def test_a_version_is_stored_parents_first_active_with_its_author_and_counts(adoption):
    created = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map()))
    assert created.active and created.version >= 1 and created.name == f"valueMapVersions/{created.version}"
    assert list(created.level_counts) == [1, 1, 2, 3] and created.author == "anonymous"
    assert created.create_time.seconds > 0 and created.change_note == "first"
    assert [n.level for n in created.nodes] == sorted(n.level for n in created.nodes)
    assert {n.key for n in created.nodes} == {n.key for n in value_map().nodes}
    pricing = next(n for n in created.nodes if n.key == "pricing")
    assert pricing.children_rule.kind == pb.CHILDREN_RULE_KIND_ALL  # unspecified is stored as ALL
    assert adoption.GetValueMapVersion(pb.GetValueMapVersionRequest()) == created
    assert adoption.GetValueMapVersion(pb.GetValueMapVersionRequest(name=str(created.version))) == created


def test_validation_names_every_bad_field_by_path(adoption):
    bad = value_map()
    nodes = {n.key: n for n in bad.nodes}
    nodes["set-price"].parent_key = "nowhere"  # unknown parent
    nodes["share-report"].parent_key = "expand"  # a procedure under an initiative
    nodes["make-report"].procedure_rule.min_active_days = 31  # more active days than its 30-day window
    nodes["expand"].children_rule.min_children = 3  # at least 3 of its 2 children
    nodes["grow"].key = "reporting"  # a duplicate key (and "expand" loses its parent)
    bad.nodes.add(key="lonely", level=3, display_name="No procedures", parent_key="expand", owning_function=3)
    bad.nodes.add(key="old", level=4, display_name="Old", parent_key="lonely", owning_function=5,
                  procedure_rule=Rule(event_names=["Bad Name"], min_count=1, window_days=RETENTION_DAYS + 1))
    bad.nodes.add(key="always", level=4, display_name="Always", parent_key="lonely", owning_function=5,
                  procedure_rule=Rule(event_names=["x"], window_days=7))  # holds without any event
    with raises_status(Code.INVALID_ARGUMENT, reason="INVALID_VALUE_MAP") as seen:
        adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=bad))
    at = {n.key: i for i, n in reversed(list(enumerate(bad.nodes)))}
    expected = {f"value_map.nodes[{at['set-price']}].parent_key", f"value_map.nodes[{at['share-report']}].parent_key",
                f"value_map.nodes[{at['make-report']}].procedure_rule.min_active_days",
                "value_map.nodes[3].key",  # the second "reporting"
                f"value_map.nodes[{at['old']}].procedure_rule.event_names[0]",
                f"value_map.nodes[{at['old']}].procedure_rule.window_days",
                f"value_map.nodes[{at['always']}].procedure_rule"}
    assert expected <= set(seen.fields), sorted(expected - set(seen.fields))
    assert "duplicate key 'reporting'" in seen.message or len(seen.fields) > 3


def test_rules_that_can_never_hold_are_refused(adoption):
    bad = value_map()
    nodes = {n.key: n for n in bad.nodes}
    nodes["expand"].children_rule.min_children = 3
    nodes["reporting"].children_rule.min_weighted_share = 1.5
    del bad.nodes[[n.key for n in bad.nodes].index("set-price")]  # "pricing" loses its only procedure
    with raises_status(Code.INVALID_ARGUMENT, reason="INVALID_VALUE_MAP") as seen:
        adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=bad))
    at = {n.key: i for i, n in enumerate(bad.nodes)}
    assert set(seen.fields) == {f"value_map.nodes[{at['expand']}].children_rule.min_children",
                                f"value_map.nodes[{at['reporting']}].children_rule.min_weighted_share",
                                f"value_map.nodes[{at['pricing']}]"}


def test_validate_only_stores_nothing_and_skip_activation_keeps_the_active_version(adoption):
    before = list(adoption.ListValueMapVersions(pb.ListValueMapVersionsRequest()).value_maps)
    checked = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map(),
                                                                             validate_only=True))
    assert checked.version == 0 and list(checked.level_counts) == [1, 1, 2, 3]
    assert list(adoption.ListValueMapVersions(pb.ListValueMapVersionsRequest()).value_maps) == before
    active = adoption.GetValueMapVersion(pb.GetValueMapVersionRequest())
    second = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map("second"),
                                                                            skip_activation=True))
    assert not second.active and second.version == active.version + 1
    assert adoption.GetValueMapVersion(pb.GetValueMapVersionRequest()).version == active.version
    switched = adoption.ActivateValueMapVersion(pb.ActivateValueMapVersionRequest(name=second.name))
    assert switched.active and adoption.GetValueMapVersion(pb.GetValueMapVersionRequest()).version == second.version
    listed = adoption.ListValueMapVersions(pb.ListValueMapVersionsRequest(page_size=1))
    assert [v.version for v in listed.value_maps] == [second.version] and not listed.value_maps[0].nodes
    assert listed.next_page_token
    assert [v.active for v in adoption.ListValueMapVersions(pb.ListValueMapVersionsRequest()).value_maps].count(True) == 1


def test_diff_lists_added_removed_and_changed_nodes(adoption):
    base = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map()))
    changed = value_map("third")
    nodes = {n.key: n for n in changed.nodes}
    nodes["make-report"].procedure_rule.window_days = 14
    nodes["share-report"].display_name = "Share reports"
    del changed.nodes[[n.key for n in changed.nodes].index("set-price")]
    nodes["pricing"].key = "pricing-v2"
    changed.nodes.add(key="set-price-v2", level=4, display_name="Set a price", parent_key="pricing-v2",
                      owning_function=5, procedure_rule=Rule(event_names=["price.set"], min_count=2, window_days=7))
    target = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=changed))
    diff = adoption.DiffValueMapVersions(pb.DiffValueMapVersionsRequest(base=base.name, target=str(target.version)))
    assert [n.key for n in diff.added] == ["pricing-v2", "set-price-v2"]
    assert [n.key for n in diff.removed] == ["pricing", "set-price"]
    assert {c.key: list(c.changed_fields) for c in diff.changed} == {
        "make-report": ["procedure_rule.window_days"], "share-report": ["display_name"]}
    same = adoption.DiffValueMapVersions(pb.DiffValueMapVersionsRequest(base=base.name, target=base.name))
    assert not (same.added or same.removed or same.changed)


def test_names_that_are_not_versions_or_do_not_exist(adoption):
    with raises_status(Code.INVALID_ARGUMENT, field="name", reason="INVALID_VALUE_MAP_VERSION_NAME"):
        adoption.GetValueMapVersion(pb.GetValueMapVersionRequest(name="valueMapVersions/x"))
    with raises_status(Code.NOT_FOUND, reason="VALUE_MAP_VERSION_NOT_FOUND"):
        adoption.ActivateValueMapVersion(pb.ActivateValueMapVersionRequest(name="valueMapVersions/999999"))
    with raises_status(Code.INVALID_ARGUMENT, field="target", reason="INVALID_VALUE_MAP_VERSION_NAME"):
        adoption.DiffValueMapVersions(pb.DiffValueMapVersionsRequest(base="1", target="0"))


# -- telemetry ----------------------------------------------------------------------------------------------

def now_us() -> int:
    return time.time_ns() // 1000


def stored_rows(engine, customer: str, users: bool = False) -> list[tuple[str, int, int]]:
    """(event name, days ago, events or user hash) of ``customer``'s daily (or user) rows in the stored chunks."""
    today = now_us() // DAY_US
    with engine.connect() as conn:
        key = store.customer_keys(conn, [customer]).get(customer)
        names = dict(conn.execute(sa.text("SELECT event_id, name FROM adoption_event_names")).all())
        chunks = conn.execute(sa.text("SELECT day, daily_rows, daily, users FROM adoption_chunks")).all()
    found = []
    for chunk in chunks:
        keys, events, days, counts, user_keys, user_events, hashes, user_days = store.decode_chunk(*chunk)
        if users:
            keys, events, days, counts = user_keys, user_events, user_days, hashes
        found += [(names[e], today - d, c) for k, e, d, c in zip(keys.tolist(), events.tolist(), days.tolist(),
                                                                 counts.tolist()) if k == key]
    return found


def daily_rows(engine, customer: str) -> dict[tuple[str, int], int]:
    """(event name, days ago) -> events kept for ``customer``, summed over the chunks."""
    found: dict[tuple[str, int], int] = {}
    for name, days_ago, events in stored_rows(engine, customer):
        found[name, days_ago] = found.get((name, days_ago), 0) + events
    return found


def test_events_land_as_daily_aggregates_and_the_rest_is_rejected_by_position(adoption, engine):
    now = now_us()
    customers = ["acme", "ghost", "beta", "bad id!"]
    names = ["report.created", "Not A Name", "report.shared"]
    #            acme today x3 (two events)   acme 1 day ago   ghost    bad name  future    too old          bad count
    customer = [0, 0, 0, 2, 1, 0, 0, 2, 0, 3]
    event = [0, 0, 0, 2, 0, 1, 0, 0, 0, 0]
    times = [now, now - 1, now - DAY_US, now - 3 * DAY_US, now, now, now + 3600_000_000,
             now - RETENTION_DAYS * DAY_US, now, now]
    counts = [2, 1, 5, 1, 1, 1, 1, 1, 0, 1]
    answer = adoption.RecordTelemetry(iter([telemetry_chunk(customers, names, customer, event, times, counts)]))
    assert (answer.messages, answer.events_received, answer.events_kept, answer.events_rejected) == (1, 10, 4, 6)
    R = pb.TelemetryRejectionReason
    assert [(r.message_index, r.position, R.Name(r.reason)) for r in answer.rejections] == [
        (0, 4, "TELEMETRY_REJECTION_REASON_UNKNOWN_CUSTOMER"), (0, 5, "TELEMETRY_REJECTION_REASON_BAD_EVENT_NAME"),
        (0, 6, "TELEMETRY_REJECTION_REASON_FUTURE_TIME"), (0, 7, "TELEMETRY_REJECTION_REASON_BEYOND_RETENTION"),
        (0, 8, "TELEMETRY_REJECTION_REASON_BAD_COUNT"), (0, 9, "TELEMETRY_REJECTION_REASON_UNKNOWN_CUSTOMER")]
    assert {R.Name(c.reason): c.events for c in answer.rejection_counts}["TELEMETRY_REJECTION_REASON_UNKNOWN_CUSTOMER"] == 2
    assert answer.daily_rows_written == 3
    acme = daily_rows(engine, "acme")
    assert acme[("report.created", 0)] == 3 and acme[("report.created", 1)] == 5
    assert daily_rows(engine, "beta")[("report.shared", 3)] == 1
    assert daily_rows(engine, "ghost") == {}


def test_a_batch_id_sent_again_is_not_counted_twice(adoption, engine):
    now = now_us() - 10 * DAY_US  # a day no other test writes
    message = telemetry_chunk(["gamma"], ["page.viewed"], [0, 0], [0, 0], [now, now + 1], [4, 3],
                              batch_id="export-2026-12-01:0001")
    first = adoption.RecordTelemetry(iter([message]))
    again = adoption.RecordTelemetry(iter([message, message]))
    assert (first.messages, first.duplicate_messages, first.events_kept) == (1, 0, 2)
    assert (again.messages, again.duplicate_messages, again.events_kept, again.events_received) == (2, 2, 0, 0)
    assert daily_rows(engine, "gamma")[("page.viewed", 10)] == 7
    message.batch_id = ""  # without a batch id, a re-sent message counts again
    adoption.RecordTelemetry(iter([message]))
    assert daily_rows(engine, "gamma")[("page.viewed", 10)] == 14


def test_a_malformed_message_fails_alone_after_the_ones_before_it_committed(adoption, engine):
    now = now_us() - 20 * DAY_US
    good = telemetry_chunk(["beta"], ["export.done"], [0], [0], [now], batch_id="atomic-good")
    broken = telemetry_chunk(["beta"], ["export.done"], [0, 0], [0, 1], [now, now], batch_id="atomic-broken")
    with raises_status(Code.INVALID_ARGUMENT, field="event_indices", reason="INVALID_TELEMETRY") as seen:
        adoption.RecordTelemetry(iter([good, broken]))
    assert "message 1" in seen.message
    assert daily_rows(engine, "beta")[("export.done", 20)] == 1
    with engine.connect() as conn:
        kept = {row[0] for row in conn.execute(sa.text("SELECT batch_id FROM adoption_batches"))}
    assert "atomic-good" in kept and "atomic-broken" not in kept
    uneven = telemetry_chunk(["beta"], ["export.done"], [0, 0], [0], [now, now])
    with raises_status(Code.INVALID_ARGUMENT, field="event_indices", reason="INVALID_TELEMETRY"):
        adoption.RecordTelemetry(iter([uneven]))


def test_users_are_kept_as_distinct_users_per_customer_event_and_day(adoption, engine):
    now = now_us()
    message = telemetry_chunk(["acme"], ["dashboard.opened"], [0] * 4, [0] * 4,
                              [now - 5 * DAY_US, now - 2 * DAY_US, now, now], user_ids=["ana", "bob"],
                              user_indices=[0, 0, 1, -1])
    answer = adoption.RecordTelemetry(iter([message]))
    assert answer.events_kept == 4
    ana, bob = store_hashes(["ana", "bob"])
    seen = sorted((days_ago, user) for name, days_ago, user in stored_rows(engine, "acme", users=True)
                  if name == "dashboard.opened")
    assert seen == sorted([(5, ana), (2, ana), (0, bob)])


def test_pruning_forgets_what_the_retention_no_longer_covers(engine):
    with db.write_transaction(engine) as conn:
        first_day = conn.execute(sa.text("SELECT min(day) FROM adoption_chunks")).scalar()
        assert first_day is not None
        store.prune(conn, first_day + 1, 0)
        assert conn.execute(sa.text("SELECT min(day) FROM adoption_chunks")).scalar() > first_day
        conn.rollback()  # the other tests' rows stay


def test_a_registry_in_another_process_is_asked_and_its_absence_is_unavailable(tmp_path):
    url = f"sqlite:///{tmp_path / 'cvh.db'}"
    registry = ServerThread(ServerConfig(services=("registry",), listen="127.0.0.1:0", database_url=url))
    adoption = ServerThread(ServerConfig(services=("adoption",), listen="127.0.0.1:0", database_url=url,
                                         registry_target=registry.target))
    try:
        with grpc.insecure_channel(registry.target) as channel:
            rpb_grpc.RegistryServiceStub(channel).CreateCustomer(
                rpb.CreateCustomerRequest(customer=rpb.Customer(customer_id="remote-1")))
        message = telemetry_chunk(["remote-1", "remote-2"], ["login"], [0, 1], [0, 0], [now_us()] * 2)
        with grpc.insecure_channel(adoption.target) as channel:
            stub = pb_grpc.AdoptionServiceStub(channel)
            with raises_status(Code.FAILED_PRECONDITION, reason="NOT_EVALUATED_YET"):  # no version active
                stub.GetNodeAdoption(pb.GetNodeAdoptionRequest())
            answer = stub.RecordTelemetry(iter([message]))
            assert [(r.position, r.reason) for r in answer.rejections] == [
                (1, pb.TELEMETRY_REJECTION_REASON_UNKNOWN_CUSTOMER)]
            registry_listen = registry.target
            registry.stop()
            registry = None
            # remote-1 is known now; remote-2 must be asked for, and nobody answers
            with raises_status(Code.UNAVAILABLE, reason="REGISTRY_UNAVAILABLE"):
                stub.RecordTelemetry(iter([message]))
            answer = stub.RecordTelemetry(iter([telemetry_chunk(["remote-1"], ["login"], [0], [0], [now_us()])]))
            assert answer.events_kept == 1
            registry = ServerThread(ServerConfig(services=("registry",), listen=registry_listen, database_url=url))
            # Adoption signals go to the registry through RecordSignals.
            login = value_map("remote")
            login.nodes[0].procedure_rule.event_names[:] = ["login"]
            login.nodes[0].procedure_rule.min_active_days = 1
            stub.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=login))
            assert signals_of(registry.target, "remote-1", ("use_case_adoption",)) == {"use_case_adoption": 0.0}
    finally:
        adoption.stop()
        if registry is not None:
            registry.stop()


def test_columns_that_do_not_fit_are_invalid_and_name_the_field(adoption):
    now = now_us()
    cases = {
        "customer_indices": telemetry_chunk(["acme"], ["a"], [1], [0], [now]),
        "customer_ids": pb.RecordTelemetryRequest(event_names=["a"], customer_indices=b"\0" * 4,
                                                  event_indices=b"\0" * 4, event_times=np.int64(now).tobytes()),
        "event_times": pb.RecordTelemetryRequest(customer_ids=["acme"], event_names=["a"], customer_indices=b"\0" * 4,
                                                 event_indices=b"\0" * 4, event_times=b"\0" * 7),
        "user_indices": telemetry_chunk(["acme"], ["a"], [0], [0], [now], user_ids=["u"], user_indices=[1]),
        "batch_id": telemetry_chunk(["acme"], ["a"], [0], [0], [now], batch_id="no spaces"),
    }
    for field, message in cases.items():
        with raises_status(Code.INVALID_ARGUMENT, field=field, reason="INVALID_TELEMETRY"):
            adoption.RecordTelemetry(iter([message]))
    assert adoption.RecordTelemetry(iter([])) == pb.RecordTelemetryResponse()


# -- achievement --------------------------------------------------------------------------------------------

def test_a_customers_adoption_says_what_is_achieved_and_why_not_and_follows_new_events(adoption):
    version = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map("adoption"),
                                                                             skip_activation=True)).name
    ask = pb.GetCustomerAdoptionRequest(customer="customers/acme", value_map_version=version)
    tree = adoption.GetCustomerAdoption(ask)
    assert tree.customer == "customers/acme" and tree.value_map_version == version
    nodes = {n.key: n for n in tree.nodes}
    # make-report: 3 events today and 5 yesterday (the telemetry test above) on 2 days: achieved.
    report = nodes["make-report"]
    assert (report.achieved, report.events, report.active_days, report.progress) == (True, 8, 2, 1.0)
    assert report.last_active_day == tree.evaluated_day and not report.why_not
    assert list(nodes["share-report"].why_not) == ["0 of 2 distinct users in the last 30 days"]
    assert nodes["share-report"].last_active_day == ""
    reporting = nodes["reporting"]  # weighted share: make-report weighs 1 of 3
    assert not reporting.achieved and reporting.progress == pytest.approx((1 / 3) / 0.5)
    assert list(reporting.why_not) == ["achieved children weigh 33 % of all, 50 % needed"]
    assert list(reporting.missing_procedures) == ["share-report"]
    assert list(nodes["set-price"].why_not) == ["0 of 1 events in the last 7 days"]
    assert list(nodes["expand"].why_not) == ["0 of 2 children achieved, 1 needed"]
    assert list(nodes["grow"].missing_procedures) == ["share-report", "set-price"]
    assert list(tree.achieved_counts) == [0, 0, 0, 1]
    # One event completes set-price, and with it pricing, expand (at least 1) and grow: shown at once.
    adoption.RecordTelemetry(iter([telemetry_chunk(["acme"], ["price.set"], [0], [0], [now_us()])]))
    tree = adoption.GetCustomerAdoption(ask)
    assert list(tree.achieved_counts) == [1, 1, 1, 2]
    assert {n.key for n in tree.nodes if n.achieved} == {"grow", "expand", "pricing", "set-price", "make-report"}


def test_adoption_of_a_registered_customer_without_telemetry_and_of_unknown_ones(adoption):
    tree = adoption.GetCustomerAdoption(pb.GetCustomerAdoptionRequest(customer="delta"))
    assert tree.nodes and not any(n.achieved or n.progress or n.last_active_day for n in tree.nodes)
    assert list(tree.achieved_counts) == [0, 0, 0, 0]
    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        adoption.GetCustomerAdoption(pb.GetCustomerAdoptionRequest(customer="customers/ghost"))
    with raises_status(Code.INVALID_ARGUMENT, field="customer", reason="INVALID_CUSTOMER_NAME"):
        adoption.GetCustomerAdoption(pb.GetCustomerAdoptionRequest(customer="customers/a/b"))
    with raises_status(Code.NOT_FOUND, reason="VALUE_MAP_VERSION_NOT_FOUND"):
        adoption.GetCustomerAdoption(pb.GetCustomerAdoptionRequest(customer="acme", value_map_version="999999"))


def test_the_base_is_evaluated_after_an_activation_and_agrees_with_each_customers_tree(adoption, engine):
    from services.adoption import evaluation
    from services.adoption.held import HeldTelemetry

    created = adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map("evaluated")))
    ask = pb.GetCustomerAdoptionRequest(customer="acme")
    deadline = time.monotonic() + 20
    while not (nodes := {n.key: n for n in adoption.GetCustomerAdoption(ask).nodes})["make-report"].first_achieved_day:
        assert time.monotonic() < deadline, "the activation's evaluation did not record make-report"
        time.sleep(0.05)
    today = adoption.GetCustomerAdoption(ask).evaluated_day
    assert nodes["make-report"].first_achieved_day == today and nodes["share-report"].first_achieved_day == ""
    # The batch (blocks of 2 customers, so that blocks join) finds what each customer's own tree shows.
    found = evaluation.evaluate_base(engine, created, now_us() // DAY_US, HeldTelemetry(engine),
                                     now_us() // DAY_US - RETENTION_DAYS + 1, block=2)
    trees = [adoption.GetCustomerAdoption(pb.GetCustomerAdoptionRequest(customer=c)) for c in CUSTOMERS]
    for key in found.achieved:
        assert found.achieved[key] == sum(n.achieved for tree in trees for n in tree.nodes if n.key == key), key
    assert found.customers == 3 and found.achieved["make-report"] == 1  # delta has no telemetry
    with engine.connect() as conn:  # every achievement of this test's data happened today
        first = conn.execute(sa.select(sa.func.count()).select_from(sa.table("adoption_achievements")).where(
            sa.column("first_day") == now_us() // DAY_US, sa.column("node_key").in_(list(found.achieved)))).scalar()
    assert first == sum(n.achieved for tree in trees for n in tree.nodes)


def signals_of(target: str, customer: str, names: tuple[str, ...], timeout: float = 20) -> dict[str, float]:
    """The customer's registry signals ``names``, once all are there."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        while True:
            signals = registry.GetCustomer(rpb.GetCustomerRequest(name=f"customers/{customer}")).signals
            if all(name in signals for name in names):
                return {name: signals[name].value for name in names}
            assert time.monotonic() < deadline, f"no {names} on {customer}: {dict(signals)}"
            time.sleep(0.05)


def test_adoption_reaches_the_registry_as_signals(adoption, served):
    adoption.CreateValueMapVersion(pb.CreateValueMapVersionRequest(value_map=value_map("signals")))
    # acme: make-report (not enough for reporting's weighted share) and set-price (all of pricing) achieved.
    found = signals_of(served[0].target, "acme", ("use_case_adoption", "adoption_grow"))
    assert found == {"use_case_adoption": 0.5, "adoption_grow": 0.5}
    assert signals_of(served[0].target, "gamma", ("use_case_adoption",)) == {"use_case_adoption": 0.0}


def test_node_adoption_across_the_base_now_and_at_the_evaluation_before(adoption):
    version = adoption.GetValueMapVersion(pb.GetValueMapVersionRequest()).name

    def report_after(previous_time: int = 0) -> pb.NodeAdoptionReport:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(grpc.RpcError):  # NOT_EVALUATED_YET before the first evaluation ends
                report = adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest())
                if report.value_map_version == version and report.evaluate_time.ToMicroseconds() > previous_time:
                    return report
            assert time.monotonic() < deadline, "no evaluation of the active version"
            time.sleep(0.05)
    first = report_after()
    assert first.customers_evaluated == 3  # acme, beta, gamma sent telemetry; delta did not
    shares = {n.key: n for n in first.nodes}
    assert [n.key for n in first.nodes][:1] == ["grow"] and len(first.nodes) == 7
    assert (shares["make-report"].customers_achieved, shares["make-report"].share) == (1, pytest.approx(1 / 3))
    # Activating the same version again evaluates again: the share before is told.
    adoption.ActivateValueMapVersion(pb.ActivateValueMapVersionRequest(name=version))
    second = report_after(first.evaluate_time.ToMicroseconds())
    before = {n.key: n for n in second.nodes}["make-report"]
    assert before.HasField("previous_share") and before.previous_share == pytest.approx(1 / 3)
    one = adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="make-report"))
    assert [(n.key, n.customers_achieved) for n in one.nodes] == [("make-report", 1)]
    with raises_status(Code.NOT_FOUND, reason="NODE_NOT_FOUND"):
        adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="no-such-node"))
    with raises_status(Code.INVALID_ARGUMENT, field="node_key", reason="INVALID_NODE_KEY"):
        adoption.GetNodeAdoption(pb.GetNodeAdoptionRequest(node_key="Not A Key"))
