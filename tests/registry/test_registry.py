"""RegistryService over real gRPC, each test on SQLite and on PostgreSQL (the registry served alone: the
`registry` fixture of tests/registry/conftest.py)."""

from __future__ import annotations

import math
import threading

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from tests.grpc_helpers import raises_status
from wire.columns import SignalMatrixReader

Code = grpc.StatusCode


def at(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def customer(customer_id: str, parent: str = "", **signals: float) -> pb.Customer:
    return pb.Customer(customer_id=customer_id, display_name=customer_id.title(),
                       parent=f"customers/{parent}" if parent else "",
                       signals={k: pb.SignalValue(value=v, observe_time=at(1_700_000_000)) for k, v in signals.items()})


def create(registry, customer_id: str, parent: str = "", **fields) -> pb.Customer:
    message = customer(customer_id, parent)
    for key, value in fields.items():
        if key == "labels":
            message.labels.update(value)
        else:
            setattr(message, key, value)
    return registry.CreateCustomer(pb.CreateCustomerRequest(customer=message))


def import_batches(registry, *batches, all_or_nothing=False) -> pb.ImportCustomersResponse:
    requests = [pb.ImportCustomersRequest(customers=b, all_or_nothing=all_or_nothing) for b in batches]
    return registry.ImportCustomers(iter(requests))


def export(registry, names, chunk_size=0):
    ids, parents, roles, owners, blocks = [], [], [], [], []
    for message in registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=names, chunk_size=chunk_size)):
        chunk = message.chunk
        ids += chunk.customer_ids
        parents += message.parent_ids
        roles += list(message.stakeholder_roles)
        owners += message.owners
        blocks.append(np.frombuffer(chunk.values.data, "<f8").reshape(chunk.values.rows, chunk.values.columns))
    matrix = np.concatenate(blocks) if blocks else np.empty((0, len(names)))
    return ids, parents, roles, owners, matrix


# -- create, get, update, delete ---------------------------------------------------------------------------

def test_create_get_and_batch_get(registry):
    created = create(registry, "acme", stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER, owner="ann@example.com",
                     labels={"region": "emea"})
    assert created.name == "customers/acme" and created.etag
    assert created.create_time.seconds > 0
    got = registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme"))
    assert got == created
    assert got.labels["region"] == "emea" and got.stakeholder_role == common_pb2.STAKEHOLDER_ROLE_BUYER
    create(registry, "beta")
    batch = registry.BatchGetCustomers(pb.BatchGetCustomersRequest(names=["customers/beta", "customers/acme"]))
    assert [c.customer_id for c in batch.customers] == ["beta", "acme"]
    with raises_status(Code.NOT_FOUND):
        registry.BatchGetCustomers(pb.BatchGetCustomersRequest(names=["customers/acme", "customers/nobody"]))
    partial = registry.BatchGetCustomers(pb.BatchGetCustomersRequest(
        names=["customers/acme", "customers/nobody"], allow_missing=True))
    assert [c.customer_id for c in partial.customers] == ["acme"]


def test_create_twice_is_already_exists(registry):
    create(registry, "acme")
    with raises_status(Code.ALREADY_EXISTS, reason="CUSTOMER_ALREADY_EXISTS"):
        create(registry, "acme")


def test_get_unknown_is_not_found(registry):
    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        registry.GetCustomer(pb.GetCustomerRequest(name="customers/ghost"))


def test_update_with_mask_and_etag(registry):
    created = create(registry, "acme", owner="ann")
    change = pb.Customer(name="customers/acme", display_name="ACME Corp", owner="bob", etag=created.etag)
    updated = registry.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=change, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])))
    assert updated.display_name == "ACME Corp" and updated.owner == "ann"  # owner not in the mask
    assert updated.etag != created.etag
    with raises_status(Code.ABORTED, reason="ETAG_MISMATCH"):
        registry.UpdateCustomer(pb.UpdateCustomerRequest(
            customer=change, update_mask=field_mask_pb2.FieldMask(paths=["owner"])))
    assert registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme")).owner == "ann"


def test_concurrent_updates_with_one_etag_exactly_one_wins(registry):
    etag = create(registry, "acme").etag
    outcomes = []

    def attempt(owner):
        try:
            registry.UpdateCustomer(pb.UpdateCustomerRequest(
                customer=pb.Customer(name="customers/acme", owner=owner, etag=etag),
                update_mask=field_mask_pb2.FieldMask(paths=["owner"])))
            outcomes.append(("ok", owner))
        except grpc.RpcError as error:
            outcomes.append((error.code(), owner))

    threads = [threading.Thread(target=attempt, args=(f"owner-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [owner for result, owner in outcomes if result == "ok"]
    assert len(winners) == 1, outcomes
    assert all(result in ("ok", Code.ABORTED) for result, _ in outcomes)
    assert registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme")).owner == winners[0]


def test_update_rejects_unknown_mask_paths_and_signals(registry):
    create(registry, "acme")
    with raises_status(Code.INVALID_ARGUMENT, field="update_mask"):
        registry.UpdateCustomer(pb.UpdateCustomerRequest(
            customer=pb.Customer(name="customers/acme"), update_mask=field_mask_pb2.FieldMask(paths=["signals"])))
    with raises_status(Code.INVALID_ARGUMENT, field="update_mask"):
        registry.UpdateCustomer(pb.UpdateCustomerRequest(customer=pb.Customer(name="customers/acme")))


def test_delete_refuses_parents_with_children(registry):
    create(registry, "group")
    create(registry, "unit", parent="group")
    with raises_status(Code.FAILED_PRECONDITION, reason="HAS_CHILDREN"):
        registry.DeleteCustomer(pb.DeleteCustomerRequest(name="customers/group"))
    registry.DeleteCustomer(pb.DeleteCustomerRequest(name="customers/unit"))
    registry.DeleteCustomer(pb.DeleteCustomerRequest(name="customers/group"))
    with raises_status(Code.NOT_FOUND):
        registry.GetCustomer(pb.GetCustomerRequest(name="customers/group"))


def test_parent_must_exist_and_cycles_are_refused(registry):
    with raises_status(Code.FAILED_PRECONDITION, reason="PARENT_NOT_FOUND"):
        create(registry, "orphan", parent="nobody")
    create(registry, "a")
    create(registry, "b", parent="a")
    create(registry, "c", parent="b")
    with raises_status(Code.FAILED_PRECONDITION, reason="PARENT_CYCLE") as seen:
        registry.UpdateCustomer(pb.UpdateCustomerRequest(
            customer=pb.Customer(name="customers/a", parent="customers/c"),
            update_mask=field_mask_pb2.FieldMask(paths=["parent"])))
    assert "customers/a -> customers/c -> customers/b -> customers/a" in seen.message


def test_depth_cap(registry):
    create(registry, "level-1")
    for level in range(2, 11):
        create(registry, f"level-{level}", parent=f"level-{level - 1}")
    with raises_status(Code.FAILED_PRECONDITION, reason="TREE_TOO_DEEP"):
        create(registry, "level-11", parent="level-10")
    # Moving a two-level subtree under a deep leaf is refused too.
    create(registry, "top")
    create(registry, "below", parent="top")
    with raises_status(Code.FAILED_PRECONDITION, reason="TREE_TOO_DEEP"):
        registry.UpdateCustomer(pb.UpdateCustomerRequest(
            customer=pb.Customer(name="customers/top", parent="customers/level-9"),
            update_mask=field_mask_pb2.FieldMask(paths=["parent"])))


# -- list ----------------------------------------------------------------------------------------------

def test_list_pages_through_everyone_once(registry):
    ids = [f"c{i:03d}" for i in range(23)]
    import_batches(registry, [customer(i) for i in ids])
    seen, token, pages = [], "", 0
    while True:
        page = registry.ListCustomers(pb.ListCustomersRequest(page_size=5, page_token=token))
        seen += [c.customer_id for c in page.customers]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids and pages == 5


def test_list_filters(registry):
    create(registry, "group", owner="ann")
    create(registry, "u1", parent="group", owner="ann", stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER,
           labels={"region": "emea"})
    create(registry, "u2", parent="group", owner="bob", labels={"region": "apac"})
    create(registry, "solo", owner="bob", labels={"vip": "yes"})

    def ids(**kwargs):
        return [c.customer_id for c in registry.ListCustomers(pb.ListCustomersRequest(**kwargs)).customers]

    assert ids(parent="customers/group") == ["u1", "u2"]
    assert ids(owner="bob") == ["solo", "u2"]
    assert ids(stakeholder_role=common_pb2.STAKEHOLDER_ROLE_BUYER) == ["u1"]
    assert ids(label="region") == ["u1", "u2"]
    assert ids(label="region=apac") == ["u2"]
    assert ids(label="vip=no") == []


def test_list_bad_arguments(registry):
    with raises_status(Code.INVALID_ARGUMENT, field="page_size"):
        registry.ListCustomers(pb.ListCustomersRequest(page_size=-1))
    with raises_status(Code.INVALID_ARGUMENT, field="page_token"):
        registry.ListCustomers(pb.ListCustomersRequest(page_token="garbage!"))
    import_batches(registry, [customer(f"c{i}") for i in range(3)])
    token = registry.ListCustomers(pb.ListCustomersRequest(page_size=1)).next_page_token
    with raises_status(Code.INVALID_ARGUMENT, field="page_token"):
        registry.ListCustomers(pb.ListCustomersRequest(page_size=1, page_token=token, owner="someone"))
    huge = registry.ListCustomers(pb.ListCustomersRequest(page_size=10**9))
    assert len(huge.customers) == 3 and not huge.next_page_token


# -- import --------------------------------------------------------------------------------------------

def test_import_reports_bad_rows_and_writes_good_ones(registry):
    bad_signal = customer("bad-signal", nps=float("inf"))
    summary = import_batches(registry, [customer("good-1", nps=10), customer("bad id"), bad_signal,
                                        customer("good-2"), customer("good-1")])
    assert (summary.created, summary.updated, summary.rejected) == (2, 0, 3)
    assert [(e.position, e.field) for e in summary.errors] == [
        (1, "customer_id"), (2, "signals[nps].value"), (4, "customer_id")]
    ids = export(registry, ["nps"])[0]
    assert sorted(ids) == ["good-1", "good-2"]


def test_import_is_an_upsert_and_resending_is_safe(registry):
    batch = [customer("a", nps=10), customer("b", nps=20)]
    first = import_batches(registry, batch)
    assert (first.created, first.updated) == (2, 0)
    again = import_batches(registry, batch)
    assert (again.created, again.updated, again.rejected) == (0, 2, 0)
    history = registry.ListSignalHistory(pb.ListSignalHistoryRequest(customer="customers/a"))
    assert len(history.observations) == 1  # the same observation re-sent adds no history


def test_import_parent_may_come_later(registry):
    summary = import_batches(registry, [customer("unit", parent="group"), customer("team", parent="unit")],
                             [customer("other")], [customer("group")])
    assert (summary.created, summary.rejected) == (4, 0)
    got = registry.GetCustomer(pb.GetCustomerRequest(name="customers/team"))
    assert got.parent == "customers/unit"


def test_import_rejects_missing_parents_and_cycles(registry):
    summary = import_batches(registry, [customer("x", parent="y"), customer("y", parent="x"),
                                        customer("lost", parent="never"), customer("fine")])
    assert (summary.created, summary.rejected) == (1, 3)
    reasons = {e.customer_id: e.reason for e in summary.errors}
    assert "cycle" in reasons["x"] and "cycle" in reasons["y"]
    assert "neither in the registry nor in this import" in reasons["lost"]


def test_import_all_or_nothing(registry):
    with raises_status(Code.INVALID_ARGUMENT, field="rows[1].customer_id", reason="IMPORT_REJECTED"):
        import_batches(registry, [customer("a")], [customer("bad id")], all_or_nothing=True)
    with raises_status(Code.INVALID_ARGUMENT, reason="IMPORT_REJECTED"):
        import_batches(registry, [customer("a", parent="missing")], all_or_nothing=True)
    assert export(registry, ["nps"])[0] == []
    summary = import_batches(registry, [customer("b", parent="a")], [customer("a")], all_or_nothing=True)
    assert (summary.created, summary.rejected, summary.batches_committed) == (2, 0, 1)


def test_import_oversized_batch_keeps_committed_ones(registry):
    requests = iter([pb.ImportCustomersRequest(customers=[customer("kept")]),
                     pb.ImportCustomersRequest(customers=[customer(f"c{i}") for i in range(10_001)])])
    with raises_status(Code.INVALID_ARGUMENT, field="customers"):
        registry.ImportCustomers(requests)
    assert export(registry, ["nps"])[0] == ["kept"]


def test_client_disconnect_mid_import_keeps_committed_batches_only(registry):
    first_batch_written = threading.Event()
    release = threading.Event()

    def requests():
        yield pb.ImportCustomersRequest(customers=[customer(f"first-{i}") for i in range(50)])
        first_batch_written.wait(10)
        release.wait(10)
        yield pb.ImportCustomersRequest(customers=[customer(f"never-{i}") for i in range(50)])

    future = registry.ImportCustomers.future(requests())
    # Wait until the first batch is visible, then hang up before the second is sent.
    for _ in range(200):
        if len(export(registry, ["nps"])[0]) == 50:
            break
        threading.Event().wait(0.05)
    first_batch_written.set()
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    ids = export(registry, ["nps"])[0]
    assert sorted(ids) == sorted(f"first-{i}" for i in range(50))


# -- signals -------------------------------------------------------------------------------------------

def test_latest_observation_wins_and_history_is_kept(registry):
    create(registry, "acme")

    def record(value, seconds):
        return registry.RecordSignals(pb.RecordSignalsRequest(observations=[pb.SignalObservations(
            customer="customers/acme", signals={"nps": pb.SignalValue(value=value, observe_time=at(seconds))})]))

    assert record(10, 1_000).current == 1
    assert record(30, 3_000).current == 1
    late = record(20, 2_000)  # older than the current one: history only
    assert (late.current, late.historical) == (0, 1)
    got = registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme"))
    assert got.signals["nps"].value == 30
    history = registry.ListSignalHistory(pb.ListSignalHistoryRequest(customer="customers/acme", signal="nps"))
    assert [(o.value.value, o.current) for o in history.observations] == [(30, True), (20, False), (10, False)]
    page = registry.ListSignalHistory(pb.ListSignalHistoryRequest(customer="customers/acme", page_size=2))
    rest = registry.ListSignalHistory(pb.ListSignalHistoryRequest(customer="customers/acme", page_size=2,
                                                                  page_token=page.next_page_token))
    assert len(page.observations) == 2 and len(rest.observations) == 1 and not rest.next_page_token


def test_record_signals_is_all_or_nothing(registry):
    create(registry, "acme")
    good = pb.SignalObservations(customer="customers/acme", signals={"nps": pb.SignalValue(value=5)})
    unknown = pb.SignalObservations(customer="customers/ghost", signals={"nps": pb.SignalValue(value=5)})
    with raises_status(Code.NOT_FOUND):
        registry.RecordSignals(pb.RecordSignalsRequest(observations=[good, unknown]))
    nan = pb.SignalObservations(customer="customers/acme", signals={"nps": pb.SignalValue(value=math.nan)})
    with raises_status(Code.INVALID_ARGUMENT, field="observations[1].signals[nps].value"):
        registry.RecordSignals(pb.RecordSignalsRequest(observations=[good, nan]))
    assert "nps" not in registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme")).signals


# -- export --------------------------------------------------------------------------------------------

def test_export_signal_matrix_in_chunks(registry):
    rows = [customer(f"c{i:02d}", parent="c00" if i else "", annual_revenue=1000.0 * i, nps=i - 10.0)
            for i in range(25)]
    rows[3].signals.pop("nps")
    rows[5].owner = "ann"
    rows[7].stakeholder_role = common_pb2.STAKEHOLDER_ROLE_DONOR
    import_batches(registry, rows)
    ids, parents, roles, owners, matrix = export(registry, ["nps", "annual_revenue", "never_seen"], chunk_size=10)
    assert ids == [f"c{i:02d}" for i in range(25)]
    assert matrix.shape == (25, 3)
    assert matrix[4, 0] == -6.0 and matrix[4, 1] == 4000.0
    assert math.isnan(matrix[3, 0]) and np.isnan(matrix[:, 2]).all()
    assert parents[0] == "" and parents[1] == "c00"
    assert owners[5] == "ann" and roles[7] == common_pb2.STAKEHOLDER_ROLE_DONOR
    assert roles[0] == common_pb2.STAKEHOLDER_ROLE_END_USER


def test_a_signals_only_export_reads_what_a_run_needs_into_arrays(registry):
    rows = [customer(f"c{i:02d}", parent="c00" if i else "", annual_revenue=1000.0 * i, nps=i - 10.0)
            for i in range(25)]
    rows[3].signals.pop("nps")
    rows[5].owner = "ann"
    rows[6].lifecycle_stage = common_pb2.LIFECYCLE_STAGE_CHURNED
    import_batches(registry, rows)
    reader = SignalMatrixReader(["nps", "annual_revenue"])
    for message in registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(
            signal_names=["nps", "annual_revenue"], chunk_size=10, signals_only=True)):
        assert not message.parent_ids and not message.owners and not message.stakeholder_roles and not message.team
        reader.add(message)
    export = reader.result()
    assert export.customer_ids.to_pylist() == [f"c{i:02d}" for i in range(25)]
    assert export.values.shape == (25, 2) and export.values[4].tolist() == [-6.0, 4000.0]
    assert math.isnan(export.values[3, 0])
    assert export.stages[6] == common_pb2.LIFECYCLE_STAGE_CHURNED and reader.total_customers == 25


def test_export_of_empty_base_and_bad_arguments(registry):
    ids, *_, matrix = export(registry, ["nps"])
    assert ids == [] and matrix.shape == (0, 1)
    with raises_status(Code.INVALID_ARGUMENT, field="signal_names"):
        list(registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest()))
    with raises_status(Code.INVALID_ARGUMENT, field="signal_names[0]"):
        list(registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=["Bad Name"])))
    with raises_status(Code.INVALID_ARGUMENT, field="chunk_size"):
        list(registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=["nps"], chunk_size=-3)))


# -- bad input for every RPC ---------------------------------------------------------------------------

BAD_REQUESTS = [
    ("CreateCustomer", pb.CreateCustomerRequest(customer=pb.Customer(customer_id="x" * 129)), "customer.customer_id"),
    ("CreateCustomer", pb.CreateCustomerRequest(customer=pb.Customer(customer_id="a", stakeholder_role=99)),
     "customer.stakeholder_role"),
    ("CreateCustomer", pb.CreateCustomerRequest(customer=pb.Customer(customer_id="a", labels={"Bad Key": "v"})),
     "customer.labels[Bad Key]"),
    ("CreateCustomer", pb.CreateCustomerRequest(customer=pb.Customer(customer_id="a", parent="accounts/b")),
     "customer.parent"),
    ("CreateCustomer", pb.CreateCustomerRequest(customer=pb.Customer(
        customer_id="a", signals={"nps": pb.SignalValue(value=1, observe_time=at(4_000_000_000))})),
     "customer.signals[nps].observe_time"),
    ("GetCustomer", pb.GetCustomerRequest(name=""), "name"),
    ("GetCustomer", pb.GetCustomerRequest(name="customers/has space"), "name"),
    ("BatchGetCustomers", pb.BatchGetCustomersRequest(), "names"),
    ("BatchGetCustomers", pb.BatchGetCustomersRequest(names=["customers/a", "orders/nope"]), "names[1]"),
    ("UpdateCustomer", pb.UpdateCustomerRequest(customer=pb.Customer(name="customers/bad name")), "customer.name"),
    ("UpdateCustomer", pb.UpdateCustomerRequest(customer=pb.Customer(name="customers/a", etag="zzz"),
                                                update_mask=field_mask_pb2.FieldMask(paths=["owner"])),
     "customer.etag"),
    ("DeleteCustomer", pb.DeleteCustomerRequest(name="customers/"), "name"),
    ("ListCustomers", pb.ListCustomersRequest(label="=x"), "label"),
    ("ListCustomers", pb.ListCustomersRequest(stakeholder_role=42), "stakeholder_role"),
    ("RecordSignals", pb.RecordSignalsRequest(), "observations"),
    ("RecordSignals", pb.RecordSignalsRequest(observations=[pb.SignalObservations(customer="customers/a")]),
     "observations[0].signals"),
    ("ListSignalHistory", pb.ListSignalHistoryRequest(customer="customers/a", signal="NPS"), "signal"),
    ("ListSignalHistory", pb.ListSignalHistoryRequest(customer="customers/a", page_size=-5), "page_size"),
]


@pytest.mark.parametrize("method,request_message,field", BAD_REQUESTS,
                         ids=[f"{m}-{f}" for m, _, f in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_naming_the_field(registry_with_engine, method, request_message, field):
    """One registry per database for all of these (they write nothing), not a suite per request."""
    registry, _ = registry_with_engine
    with raises_status(Code.INVALID_ARGUMENT, field=field):
        getattr(registry, method)(request_message)


# -- packed-column import --------------------------------------------------------------------------------

def columns(ids, names=(), values=None, **extra) -> pb.CustomerColumns:
    block = pb.CustomerColumns(customer_ids=ids, signal_names=list(names), **extra)
    if names:
        matrix = np.asarray(values, dtype="<f8").reshape(len(ids), len(names))
        block.signal_values.CopyFrom(common_pb2.Float64Matrix(rows=len(ids), columns=len(names),
                                                              data=matrix.tobytes()))
    block.observe_time.seconds = 1_700_000_000
    return block


def test_import_packed_columns(registry):
    block = columns(["g", "a", "b"], ["nps", "annual_revenue"], [[1, 10], [2, math.nan], [3, 30]],
                    parent_ids=["", "g", "g"], owners=["ann", "bob", ""],
                    stakeholder_roles=bytes([common_pb2.STAKEHOLDER_ROLE_BUYER, 0, common_pb2.STAKEHOLDER_ROLE_DONOR]))
    summary = registry.ImportCustomers(iter([pb.ImportCustomersRequest(customers=[customer("row-form")],
                                                                       columns=block)]))
    assert (summary.created, summary.rejected) == (4, 0)
    a = registry.GetCustomer(pb.GetCustomerRequest(name="customers/a"))
    assert a.parent == "customers/g" and a.owner == "bob" and a.stakeholder_role == common_pb2.STAKEHOLDER_ROLE_END_USER
    assert a.signals["nps"].value == 2 and "annual_revenue" not in a.signals
    assert a.signals["nps"].observe_time.seconds == 1_700_000_000
    ids, parents, roles, _, matrix = export(registry, ["annual_revenue", "nps"])
    assert ids == ["row-form", "g", "a", "b"]
    assert roles[1] == common_pb2.STAKEHOLDER_ROLE_BUYER and roles[3] == common_pb2.STAKEHOLDER_ROLE_DONOR
    assert matrix[3].tolist() == [30, 3]

    # Re-importing with newer values merges into the stored signals and keeps history.
    newer = columns(["a"], ["nps"], [[7]], parent_ids=["g"])
    newer.observe_time.seconds = 1_750_000_000
    again = registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=newer)]))
    assert (again.created, again.updated) == (0, 1)
    history = registry.ListSignalHistory(pb.ListSignalHistoryRequest(customer="customers/a", signal="nps"))
    assert [(o.value.value, o.current) for o in history.observations] == [(7, True), (2, False)]


def test_import_packed_columns_rejects_bad_rows_by_position(registry):
    block = columns(["ok-1", "bad id", "inf", "role", "ok-2"], ["nps"], [[1], [2], [math.inf], [4], [5]],
                    stakeholder_roles=bytes([1, 1, 1, 99, 1]))
    summary = registry.ImportCustomers(iter([pb.ImportCustomersRequest(customers=[customer("first")], columns=block)]))
    assert (summary.created, summary.rejected) == (3, 3)
    assert [(e.position, e.field) for e in summary.errors] == [
        (2, "customer_id"), (3, "signals[nps].value"), (4, "stakeholder_role")]


def test_import_packed_columns_of_wrong_length_reject_the_block(registry):
    block = columns(["a", "b"], ["nps"], [[1], [2]], owners=["only-one"])
    summary = registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=block)]))
    assert (summary.created, summary.rejected) == (0, 2)
    assert {e.field for e in summary.errors} == {"columns.owners"}
    short = columns(["a", "b"], ["nps"], [[1], [2]])
    short.signal_values.data = short.signal_values.data[:8]
    summary = registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=short)]))
    assert summary.rejected == 2 and summary.errors[0].field == "columns.signal_values"
