"""Customer and signal files read into registry messages: columns, rejections with lines, chunking,
positions back to lines, the rejects file, and one import through a real server."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timedelta, timezone

import grpc
import numpy as np
import pytest

from clients.tabular import (
    MAX_ROWS_PER_MESSAGE,
    CustomerFile,
    InputError,
    RejectedRow,
    SignalFile,
    customer_column,
    file_format,
    role_value,
    signal_request,
    write_rejects,
)
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as registry_pb
from cvh.registry.v1 import registry_service_pb2_grpc as registry_grpc
from wire.columns import from_matrix

ROLES = common_pb2.StakeholderRole


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def columns_of(source: CustomerFile) -> list[registry_pb.CustomerColumns]:
    return list(source.chunks())


def signals_of(columns: registry_pb.CustomerColumns) -> dict[str, np.ndarray]:
    values = from_matrix(columns.signal_values)
    return {name: values[:, j] for j, name in enumerate(columns.signal_names)}


CSV = (
    "customer_id,Display_Name,parent_id,role,owner,annual_revenue,nps\n"   # line 1
    "acme,Acme Corp,,buyer,ana@example.com,1200000,40\n"                   # 2
    "acme-eu,\"Acme, Europe\",acme,STAKEHOLDER_ROLE_END_USER,,,12.5\n"    # 3
    "\n"                                                                   # 4: blank, skipped
    "beta,Beta,,Gatekeeper,bob,3.5e2,\n"                                   # 5
    "gamma,Gamma,acme,,,, \n"                                              # 6
)


def test_csv_rows_become_packed_columns(tmp_path):
    source = CustomerFile(write(tmp_path, "customers.csv", CSV))
    [columns] = columns_of(source)
    assert list(columns.customer_ids) == ["acme", "acme-eu", "beta", "gamma"]
    assert list(columns.display_names) == ["Acme Corp", "Acme, Europe", "Beta", "Gamma"]
    assert list(columns.parent_ids) == ["", "acme", "", "acme"]
    assert list(columns.owners) == ["ana@example.com", "", "bob", ""]
    assert list(columns.stakeholder_roles) == [ROLES.Value("STAKEHOLDER_ROLE_BUYER"),
                                               ROLES.Value("STAKEHOLDER_ROLE_END_USER"),
                                               ROLES.Value("STAKEHOLDER_ROLE_GATEKEEPER"), 0]
    values = signals_of(columns)
    assert list(values) == ["annual_revenue", "nps"]
    np.testing.assert_array_equal(values["annual_revenue"], [1_200_000, np.nan, 350, np.nan])
    np.testing.assert_array_equal(values["nps"], [40, 12.5, np.nan, np.nan])
    assert not columns.HasField("observe_time")
    assert source.rejected == []
    assert [source.line_of(p) for p in range(4)] == [2, 3, 5, 6]
    assert source.bytes_read == source.total_bytes and source.rows_read == 4


def test_only_an_empty_cell_means_not_observed_every_other_non_finite_cell_is_rejected(tmp_path):
    """One rule, the registry's: empty (JSON null) is "not observed"; NaN, inf and 1e400 are refused."""
    csv_text = ("customer_id,nps,annual_revenue\n"
                "empty,,1\n" "blank, ,2\n" "nan,NaN,3\n" "inf,-inf,4\n" "huge,1e400,5\n" "ok,1e300,6\n")
    jsonl = "\n".join(['{"customer_id": "null", "nps": null, "annual_revenue": 1}',
                       '{"customer_id": "nan", "nps": NaN, "annual_revenue": 2}',
                       '{"customer_id": "huge", "nps": 1e400, "annual_revenue": 3}',
                       '{"customer_id": "text", "nps": "NaN", "annual_revenue": 4}']) + "\n"
    for name, text, kept, rejected in (("c.csv", csv_text, ["empty", "blank", "ok"], {"nan", "inf", "huge"}),
                                       ("c.jsonl", jsonl, ["null"], {"nan", "huge", "text"})):
        source = CustomerFile(write(tmp_path, name, text))
        [columns] = columns_of(source)
        assert list(columns.customer_ids) == kept
        assert np.isnan(signals_of(columns).get("nps", [np.nan])[0]), "empty or null: not observed"
        assert {r.customer_id for r in source.rejected} == rejected
        assert all(r.field == "nps" and "not a finite number" in r.reason and "empty" in r.reason
                   for r in source.rejected)
    signal_file = write(tmp_path, "s.csv", "customer_id,signal,value\na,nps,NaN\nb,nps,1e400\nc,nps,7\n")
    signals = SignalFile(signal_file)
    assert [len(batch) for batch in signals.batches()] == [1]
    assert [(r.customer_id, r.field) for r in signals.rejected] == [("a", "value"), ("b", "value")]


def test_jsonl_rows_with_signal_objects_nulls_and_numeric_ids(tmp_path):
    lines = [
        {"customer_id": "acme", "role": "impact group", "signals": {"nps": 7, "annual_revenue": None}},
        {"customer_id": 42, "parent_id": "acme", "owner": "ana", "nps": "8.5", "beta_programs": 2},
        {"Customer_ID": "c3", "display_name": "Three"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    for name in ("customers.jsonl", "customers.ndjson"):
        [columns] = columns_of(CustomerFile(write(tmp_path, name, text)))
        assert list(columns.customer_ids) == ["acme", "42", "c3"]
        assert list(columns.parent_ids) == ["", "acme", ""]
        assert list(columns.owners) == ["", "ana", ""]
        assert list(columns.display_names) == ["", "", "Three"]
        assert list(columns.stakeholder_roles) == [ROLES.Value("STAKEHOLDER_ROLE_IMPACT_GROUP"), 0, 0]
        values = signals_of(columns)
        assert set(values) == {"nps", "beta_programs"}, "a signal nobody observed is not sent"
        np.testing.assert_array_equal(values["nps"], [7, 8.5, np.nan])
        np.testing.assert_array_equal(values["beta_programs"], [np.nan, 2, np.nan])


def test_a_file_without_signals_sends_an_empty_matrix(tmp_path):
    [columns] = columns_of(CustomerFile(write(tmp_path, "c.csv", "customer_id,parent_id\na,\nb,a\n")))
    assert list(columns.customer_ids) == ["a", "b"] and list(columns.parent_ids) == ["", "a"]
    assert list(columns.signal_names) == []
    # The registry accepts rows x 0 only as 0 x 0.
    assert (columns.signal_values.rows, columns.signal_values.columns) == (0, 0)
    assert columns.stakeholder_roles == b"" and list(columns.display_names) == []


def test_an_explicit_format_wins_over_the_suffix(tmp_path):
    path = write(tmp_path, "customers.txt", '{"customer_id": "a", "nps": 1}\n')
    with pytest.raises(InputError, match="--format"):
        CustomerFile(path)
    [columns] = columns_of(CustomerFile(path, "jsonl"))
    assert list(columns.customer_ids) == ["a"]
    assert file_format("x.CSV") == "csv" and file_format("x.ndjson") == "jsonl"
    with pytest.raises(InputError):
        file_format("x.csv", "xml")


def test_rows_that_cannot_be_sent_are_rejected_with_line_id_field_and_reason(tmp_path):
    future = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = (
        "customer_id,display_name,parent_id,role,owner,observe_time,nps\n"  # 1
        "ok1,,,,,,1\n"                                                      # 2
        ",no id,,buyer,,,2\n"                                               # 3
        "bad-number,,,buyer,,,lots\n"                                       # 4
        "bad-role,,,emperor,,,3\n"                                          # 5
        "\"multi\nline\",x,,,,,4\n"                                         # 6-7: id with a line break
        "short,,\n"                                                         # 8
        "infinite,,,,,,inf\n"                                               # 9
        "bad time,,,,,yesterday,5\n"                                        # 10: space in id comes first
        "late,,,,,yesterday,5\n"                                            # 11
        f"future,,,,,{future},5\n"                                          # 12
        "self,,self,,,,5\n"                                                 # 13
        f"long,{'x' * 257},,,,,5\n"                                         # 14
        "ok2,,ok1,,,,6\n"                                                   # 15
    )
    source = CustomerFile(write(tmp_path, "c.csv", text))
    [columns] = columns_of(source)
    assert list(columns.customer_ids) == ["ok1", "ok2"]
    assert [source.line_of(0), source.line_of(1)] == [2, 15]
    got = {(r.line, r.customer_id, r.field) for r in source.rejected}
    assert got == {
        (3, "", "customer_id"), (4, "bad-number", "nps"), (5, "bad-role", "role"), (6, "multi\nline", "customer_id"),
        (8, "short", "row"), (9, "infinite", "nps"), (10, "bad time", "customer_id"), (11, "late", "observe_time"),
        (12, "future", "observe_time"), (13, "self", "parent_id"), (14, "long", "display_name"),
    }
    reasons = {r.line: r.reason for r in source.rejected}
    assert reasons[3] == "required"
    assert "'lots' is not a number" in reasons[4]
    assert "unknown role 'emperor'" in reasons[5] and "buyer" in reasons[5]
    assert "3 cells, the header has 7" in reasons[8]
    assert "finite" in reasons[9] and "RFC 3339" in reasons[11] and "future" in reasons[12]
    raw = {r.line: r.raw for r in source.rejected}
    assert raw[6] == '"multi\nline",x,,,,,4' and raw[4] == "bad-number,,,buyer,,,lots"


def test_unreadable_json_lines_and_bad_bytes_are_rejected_not_fatal(tmp_path):
    text = (b'{"customer_id": "a", "nps": 1}\n'
            b'{"customer_id": "b", "nps": \n'
            b'[1, 2]\n'
            b'{"customer_id": "c\xff", "nps": 1}\n'
            b'{"customer_id": "d", "Bad Signal": 1}\n'
            b'{"customer_id": "e", "nps": true}\n'
            b'{"customer_id": "f", "signals": [1]}\n'
            b'{"customer_id": "g", "nps": 2}\n')
    source = CustomerFile(write(tmp_path, "c.jsonl", text))
    [columns] = columns_of(source)
    assert list(columns.customer_ids) == ["a", "g"]
    rejected = {r.line: (r.customer_id, r.field, r.reason) for r in source.rejected}
    assert set(rejected) == {2, 3, 4, 5, 6, 7}
    assert rejected[2][1] == "row" and "not JSON" in rejected[2][2]
    assert "not a JSON object" in rejected[3][2]
    assert "UTF-8" in rejected[4][2]
    assert rejected[5][:2] == ("d", "Bad Signal")
    assert rejected[6][:2] == ("e", "nps")
    assert rejected[7][:2] == ("f", "signals")


@pytest.mark.parametrize("header, message", [
    ("display_name,nps", "no customer_id column"),
    ("customer_id,nps,NPS", "NPS"),
    ("customer_id,nps,nps", "appears twice"),
    ("customer_id,Annual Revenue", "'Annual Revenue' is neither"),
    ("customer_id,team.CSM", "a team role is"),
    ("customer_id,team.csm,TEAM.csm", "appears twice"),
    ("", "empty"),
])
def test_a_header_it_cannot_use_stops_before_anything_is_sent(tmp_path, header, message):
    path = write(tmp_path, "c.csv", f"{header}\nx,1,2\n" if header else "")
    with pytest.raises(InputError, match=message):
        CustomerFile(path)


def test_unnamed_trailing_columns_are_ignored_while_empty_and_a_bom_is_skipped(tmp_path):
    path = write(tmp_path, "c.csv", "\ufeffcustomer_id,nps,\r\na,1,\r\nb,2,surprise\r\n")
    source = CustomerFile(path)
    [columns] = columns_of(source)
    assert list(columns.customer_ids) == ["a"]
    assert [(r.line, r.field) for r in source.rejected] == [(3, "row")]
    assert source.rejected[0].raw == "b,2,surprise"


def customers_csv(tmp_path, n: int, name: str = "many.csv"):
    with open(tmp_path / name, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "nps"])
        writer.writerows([f"c{i}", i % 100] for i in range(n))
    return tmp_path / name


def test_messages_hold_at_most_chunk_rows_rows(tmp_path):
    source = CustomerFile(customers_csv(tmp_path, 7), chunk_rows=3)
    sizes = [len(c.customer_ids) for c in source.chunks()]
    assert sizes == [3, 3, 1]
    assert source.rows_sent == 7 and source.line_of(6) == 8

    big = CustomerFile(customers_csv(tmp_path, MAX_ROWS_PER_MESSAGE + 1, "big.csv"))
    chunks = list(big.chunks())
    assert [len(c.customer_ids) for c in chunks] == [MAX_ROWS_PER_MESSAGE, 1]
    assert chunks[0].signal_values.rows == MAX_ROWS_PER_MESSAGE
    assert list(chunks[1].customer_ids) == [f"c{MAX_ROWS_PER_MESSAGE}"]
    assert big.line_of(MAX_ROWS_PER_MESSAGE) == MAX_ROWS_PER_MESSAGE + 2
    for bad in (0, MAX_ROWS_PER_MESSAGE + 1):
        with pytest.raises(InputError, match="chunk_rows"):
            CustomerFile(customers_csv(tmp_path, 1, "one.csv"), chunk_rows=bad)


def test_a_repeated_customer_starts_a_new_message_so_the_later_row_wins(tmp_path):
    path = write(tmp_path, "c.csv", "customer_id,nps\na,1\nb,2\na,3\nc,4\n")
    source = CustomerFile(path)
    chunks = columns_of(source)
    assert [list(c.customer_ids) for c in chunks] == [["a", "b"], ["a", "c"]]
    assert [source.line_of(p) for p in range(4)] == [2, 3, 4, 5]


def test_rows_observed_at_other_times_ride_in_the_same_message_with_their_own_times(tmp_path):
    text = ("customer_id,observe_time,nps\n"
            "a,2026-01-01T00:00:00Z,1\n"      # 2
            "b,2026-01-02T00:00:00+00:00,2\n"  # 3: a time of its own
            "c,2026-01-01T00:00:00Z,3\n"      # 4
            "d,2026-01-05,\n"                 # 5: no signal, so its time does not matter
            "e,,5\n")                         # 6: observed now
    source = CustomerFile(write(tmp_path, "c.csv", text))
    [request] = list(source.requests(all_or_nothing=True))
    assert request.all_or_nothing
    assert [c.customer_id for c in request.customers] == ["b", "e"]
    b = request.customers[0].signals["nps"]
    assert b.value == 2 and b.observe_time.ToDatetime(timezone.utc) == datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert not request.customers[1].signals["nps"].HasField("observe_time")
    assert list(request.columns.customer_ids) == ["a", "c", "d"]
    assert request.columns.observe_time.ToDatetime(timezone.utc) == datetime(2026, 1, 1, tzinfo=timezone.utc)
    # Positions: the customers list first, then the columns (the registry's order).
    assert [source.line_of(p) for p in range(5)] == [3, 6, 2, 4, 5]

    # chunks() sends columns only: one message per time instead.
    split = CustomerFile(write(tmp_path, "c.csv", text))
    messages = list(split.chunks())
    assert [list(m.customer_ids) for m in messages] == [["a", "c", "d"], ["b"], ["e"]]
    assert [split.line_of(p) for p in range(5)] == [2, 4, 5, 3, 6]


@pytest.mark.parametrize("registry_field, column", [
    ("parent", "parent_id"), ("columns.parent_ids", "parent_id"), ("stakeholder_role", "role"),
    ("signals[nps].value", "nps"), ("signals[nps].observe_time", "observe_time"), ("display_name", "display_name"),
    ("columns.signal_names[Bad]", "Bad"), ("customer_id", "customer_id")])
def test_registry_fields_are_named_by_the_files_column(registry_field, column):
    assert customer_column(registry_field) == column


def test_positions_map_back_to_lines_and_server_errors_become_rejected_rows(tmp_path):
    text = "customer_id,parent_id,nps\n" + "".join(
        f"c{i},{'' if i != 5 else 'nobody'},{'x' if i == 2 else i}\n\n" for i in range(8))
    source = CustomerFile(write(tmp_path, "c.csv", text), chunk_rows=3)
    list(source.chunks())
    # Row i is on line 2 + 2i; c2 (line 6) was rejected here, so positions skip it.
    assert [source.line_of(p) for p in range(source.rows_sent)] == [2, 4, 8, 10, 12, 14, 16]
    errors = [registry_pb.RowError(position=4, customer_id="c5", field="parent", reason="never arrived"),
              registry_pb.RowError(position=99, customer_id="zz", field="customer_id", reason="?")]
    rejected = source.server_rejections(errors)
    assert rejected[0] == RejectedRow(12, "c5", "parent_id", "never arrived", "c5,nobody,5"), \
        "the rejects name the file's column, not the registry's field"
    assert rejected[1].line == 0 and rejected[1].raw == ""
    assert source.bytes_read == source.total_bytes, "reading the raw rows again leaves the progress alone"


def test_write_rejects_writes_every_row_by_line_with_its_raw_text(tmp_path):
    rejects = [RejectedRow(9, "b", "nps", "'x' is not a number", 'b,"quoted, comma",x'),
               RejectedRow(3, "", "customer_id", "required", ",a\nb"),
               RejectedRow(0, "zz", "parent", "unknown")]
    out = tmp_path / "rejects.csv"
    write_rejects(out, rejects)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "customer_id", "field", "reason", "row"]
    assert rows[1:] == [["0", "zz", "parent", "unknown", ""],
                        ["3", "", "customer_id", "required", ",a\nb"],
                        ["9", "b", "nps", "'x' is not a number", 'b,"quoted, comma",x']]


def test_role_names_in_any_spelling():
    buyer = ROLES.Value("STAKEHOLDER_ROLE_BUYER")
    assert {role_value(t) for t in ("buyer", "BUYER", " Buyer ", "stakeholder_role_buyer")} == {buyer}
    assert role_value("end-user") == role_value("End User") == ROLES.Value("STAKEHOLDER_ROLE_END_USER")
    assert role_value("") == 0
    for bad in ("unspecified", "STAKEHOLDER_ROLE_UNSPECIFIED", "king"):
        with pytest.raises(ValueError, match="unknown role"):
            role_value(bad)


# -- signal files ----------------------------------------------------------------------------------------


def test_signal_csv_rows_become_record_signals_batches(tmp_path):
    text = ("customer_id,signal,value,observe_time\n"  # 1
            "acme,nps,40,2026-01-01T00:00:00Z\n"        # 2
            "acme,nps,42,\n"                            # 3: same customer and signal again: its own entry
            "beta,annual_revenue,1e6,\n"                # 4
            "beta,Bad Name,1,\n"                        # 5
            "gamma,nps,,\n"                             # 6
            ",nps,1,\n"                                 # 7
            "delta,nps,abc,\n"                          # 8
            "eps,nps,5,last week\n"                     # 9
            "zeta,nps,7,\n")                            # 10
    source = SignalFile(write(tmp_path, "s.csv", text), batch=2)
    batches = list(source.batches())
    assert [[line for line, _, _ in batch] for batch in batches] == [[2, 3], [4, 10]]
    request = signal_request(batches[0])
    assert isinstance(request, registry_pb.RecordSignalsRequest)
    first, second = request.observations
    assert first.customer == second.customer == "customers/acme"
    assert first.signals["nps"].value == 40 and first.signals["nps"].observe_time.seconds == 1767225600
    assert second.signals["nps"].value == 42 and not second.signals["nps"].HasField("observe_time")
    assert batches[1][0][1] == "beta,annual_revenue,1e6,"
    assert {(r.line, r.customer_id, r.field) for r in source.rejected} == {
        (5, "beta", "signal"), (6, "gamma", "value"), (7, "", "customer_id"), (8, "delta", "value"),
        (9, "eps", "observe_time")}
    assert source.bytes_read == source.total_bytes


def test_signal_jsonl_and_header_checks(tmp_path):
    text = '{"customer_id": "a", "signal": "nps", "value": 3}\n{"customer_id": 7, "signal": "nps", "value": null}\n'
    source = SignalFile(write(tmp_path, "s.jsonl", text))
    [[(line, _, observation)]] = list(source.batches())
    assert line == 1 and observation.signals["nps"].value == 3
    assert [(r.line, r.customer_id, r.field) for r in source.rejected] == [(2, "7", "value")]
    for header in ("customer_id,value", "customer_id,signal,value,unit"):
        with pytest.raises(InputError, match="customer_id, signal, value"):
            SignalFile(write(tmp_path, "bad.csv", f"{header}\na,nps,1\n"))
    with pytest.raises(InputError, match="batch"):
        SignalFile(write(tmp_path, "s.jsonl", text), batch=10_001)


# -- through a real registry ----------------------------------------------------------------------------


def test_an_import_through_the_registry_maps_its_rejections_back_to_lines(channel, tmp_path):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["customer_id", "display_name", "parent_id", "role", "owner", "observe_time", "nps"])
    writer.writerow(["child", "Child", "top", "buyer", "ana", "", "10"])               # 2: parent comes later
    writer.writerow(["bad", "", "", "king", "", "", "1"])                             # 3: refused here
    writer.writerow(["orphan", "", "nobody", "", "", "", "2"])                        # 4: parent never comes
    writer.writerow(["top", "Top", "", "partner", "", "2026-01-01T00:00:00Z", "30"])  # 5: a time of its own
    writer.writerow(["loop", "", "loop2", "", "", "", ""])                            # 6
    writer.writerow(["loop2", "", "loop", "", "", "", ""])                            # 7: a cycle
    source = CustomerFile(write(tmp_path, "c.csv", text.getvalue()), chunk_rows=2)
    stub = registry_grpc.RegistryServiceStub(channel)
    summary = stub.ImportCustomers(source.requests(), timeout=30)

    assert (summary.created, summary.rejected) == (2, 3)
    local = [(r.line, r.field) for r in source.rejected]
    remote = source.server_rejections(summary.errors)
    assert local == [(3, "role")]
    assert {(r.line, r.customer_id, r.field) for r in remote} == {
        (4, "orphan", "parent_id"), (6, "loop", "parent_id"), (7, "loop2", "parent_id")}
    assert next(r for r in remote if r.line == 4).raw == "orphan,,nobody,,,,2"

    child = stub.GetCustomer(registry_pb.GetCustomerRequest(name="customers/child"))
    assert child.parent == "customers/top" and child.owner == "ana" and child.display_name == "Child"
    assert child.stakeholder_role == ROLES.Value("STAKEHOLDER_ROLE_BUYER") and child.signals["nps"].value == 10
    top = stub.GetCustomer(registry_pb.GetCustomerRequest(name="customers/top"))
    assert top.stakeholder_role == ROLES.Value("STAKEHOLDER_ROLE_PARTNER")
    assert top.signals["nps"].observe_time.ToDatetime(timezone.utc) == datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetCustomer(registry_pb.GetCustomerRequest(name="customers/orphan"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert not math.isnan(child.signals["nps"].value)


def test_team_columns_travel_as_team_columns_and_json_lines_naming_other_roles_as_rows(tmp_path):
    path = write(tmp_path, "t.csv", "customer_id,Team.csm,team.owner\n"
                                    "a,ana@x.com; bo@x.com,olga@x.com\nb,,\nc,a\tb,\nd,a@x.com;a@x.com,\n")
    source = CustomerFile(path)
    (block,) = columns_of(source)
    assert [(c.role, list(c.persons)) for c in block.team_columns] == [
        ("csm", ["ana@x.com;bo@x.com", ""]), ("owner", ["olga@x.com", ""])]
    assert [(r.line, r.field) for r in source.rejected] == [(4, "team.csm"), (5, "team.csm")]
    lines = [{"customer_id": "j1", "team.csm": ["ana@x.com", "bo@x.com"]}, {"customer_id": "j2", "team.csm": None},
             {"customer_id": "j3", "team.ae": "al@x.com"}, {"customer_id": "j4", "team.csm": 5}]
    path = write(tmp_path, "t.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    source = CustomerFile(path)
    (request,) = source.requests()
    assert [(c.role, list(c.persons)) for c in request.columns.team_columns] == [("csm", ["ana@x.com;bo@x.com", ""])]
    assert [(m.role, m.person) for c in request.customers for m in c.team] == [("ae", "al@x.com")]
    assert [(r.line, r.field) for r in source.rejected] == [(4, "team.csm")]
