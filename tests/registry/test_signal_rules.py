"""The registry's signal rules on every write path: at most 64 signals per customer, no stamps beyond clock
skew, re-sent observations add no history; and answers that fit a default client. SQLite and PostgreSQL."""

from __future__ import annotations

import time

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from services.registry.customers import MAX_LABELS, MAX_SIGNALS, MAX_TEXT
from services.registry.servicer import MAX_BATCH_GET
from tests.grpc_helpers import raises_status
from wire.channel_options import MAX_MESSAGE_BYTES

Code = grpc.StatusCode
OBSERVED = 1_700_000_000


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds))


def signals(names, value: float = 1.0, at: float | None = OBSERVED) -> dict[str, pb.SignalValue]:
    return {n: pb.SignalValue(value=value, observe_time=stamp(at)) if at is not None else pb.SignalValue(value=value)
            for n in names}


def names(first: int, count: int) -> list[str]:
    return [f"s{i:03d}" for i in range(first, first + count)]


def record(registry, *entries) -> pb.RecordSignalsResponse:
    return registry.RecordSignals(pb.RecordSignalsRequest(observations=[
        pb.SignalObservations(customer=f"customers/{cid}", signals=sig) for cid, sig in entries]))


def get(registry, customer_id: str) -> pb.Customer:
    return registry.GetCustomer(pb.GetCustomerRequest(name=f"customers/{customer_id}"))


def history(registry, customer_id: str) -> list[tuple[str, float, bool]]:
    answer = registry.ListSignalHistory(pb.ListSignalHistoryRequest(customer=f"customers/{customer_id}"))
    return sorted((o.signal, o.value.value, o.current) for o in answer.observations)


def block(ids: list[str], signal_names: list[str], values: np.ndarray, at: float | None = None) -> pb.ImportCustomersRequest:
    cols = pb.CustomerColumns(customer_ids=ids, signal_names=signal_names, signal_values=common_pb2.Float64Matrix(
        rows=len(ids), columns=len(signal_names), data=np.asarray(values, "<f8").tobytes()))
    if at is not None:
        cols.observe_time.CopyFrom(stamp(at))
    return pb.ImportCustomersRequest(columns=cols)


# -- at most 64 signals per customer, on every write path ---------------------------------------------------

def test_record_signals_counts_other_entries_and_stored_signals_against_the_cap(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="acme", signals=signals(names(0, 60)))))
    with raises_status(Code.INVALID_ARGUMENT, field="observations[0].signals", reason="TOO_MANY_SIGNALS") as seen:
        record(registry, ("acme", signals(names(60, 5))))  # 65 with the 60 stored
    assert "65 signals" in seen.message
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="beta")))
    with raises_status(Code.INVALID_ARGUMENT, field="observations[2].signals", reason="TOO_MANY_SIGNALS"):
        # Two entries of 40 for one customer: 80 (the trial gave a customer 192 this way).
        record(registry, ("beta", signals(names(0, 40))), ("acme", signals(names(0, 1), 2.0)),
               ("beta", signals(names(40, 40))))
    assert len(get(registry, "acme").signals) == 60 and get(registry, "acme").signals["s000"].value == 1.0
    assert not get(registry, "beta").signals  # nothing of the refused request was written
    assert record(registry, ("acme", signals(names(58, 6), 3.0))).current == 6  # exactly 64
    assert len(get(registry, "acme").signals) == 64


def test_imports_refuse_rows_that_pass_the_cap(registry):
    summary = registry.ImportCustomers(iter([
        block([f"wide{i}" for i in range(3)], names(0, 65), np.ones((3, 65))),  # columns: 2,500 names went in
        pb.ImportCustomersRequest(customers=[pb.Customer(customer_id="acme", signals=signals(names(0, 60)))]),
    ]))
    assert (summary.created, summary.rejected) == (1, 3)
    assert {e.field for e in summary.errors} == {"columns.signal_names"}
    assert "at most 64" in summary.errors[0].reason

    summary = registry.ImportCustomers(iter([
        pb.ImportCustomersRequest(customers=[pb.Customer(customer_id="acme", signals=signals(names(60, 10)))]),
        block(["acme", "beta"], names(100, 4), np.ones((2, 4))),  # acme: 64, beta: 4
    ]))
    assert (summary.created, summary.updated, summary.rejected) == (1, 1, 1)
    assert [(e.position, e.customer_id, e.field) for e in summary.errors] == [(0, "acme", "signals")]
    assert "70 signals" in summary.errors[0].reason
    assert len(get(registry, "acme").signals) == 64


def test_list_pages_fit_a_default_client_when_customers_are_large(registry):
    """300 customers with 64 signals and 32 long labels each are about 4.5 MB: more than a client with gRPC's
    default 4 MiB limit reads in one answer, which ListCustomers(page_size=1000) gave before."""
    labels = {f"label_{i:02d}": "v" * 256 for i in range(32)}
    big = [pb.Customer(customer_id=f"big{i:04d}", display_name="d" * 256, owner="o" * 256, labels=labels,
                       signals=signals([f"signal_with_a_long_name_{j:02d}" for j in range(64)]))
           for i in range(300)]
    registry.ImportCustomers(iter([pb.ImportCustomersRequest(customers=big[:150]),
                                   pb.ImportCustomersRequest(customers=big[150:])]))
    seen, pages, token = [], 0, ""
    while True:  # through a channel with gRPC's default 4 MiB receive limit
        page = registry.ListCustomers(pb.ListCustomersRequest(page_size=1000, page_token=token))
        assert page.ByteSize() <= 3 * 1024 * 1024
        seen += [c.customer_id for c in page.customers]
        pages, token = pages + 1, page.next_page_token
        if not token:
            break
    assert seen == [c.customer_id for c in big] and pages == 2


def test_a_batch_of_the_largest_customers_fits_a_message():
    """What keeps BatchGetCustomers within the message cap (it has no pages): every field of a customer is capped
    (teams aside: the server refuses an answer they would take past the cap, tests/registry/test_teams.py)."""
    wide = "\U0001F600" * MAX_TEXT  # 4 bytes a character
    moment = timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999)
    largest = pb.Customer(
        name="customers/" + "x" * 128, customer_id="x" * 128, display_name=wide, parent="customers/" + "y" * 128,
        owner=wide, etag='W/"999999999999999999"', create_time=moment, update_time=moment,
        labels={f"k{i:02d}".ljust(63, "k"): wide for i in range(MAX_LABELS)},
        signals={f"s{i:02d}".ljust(63, "s"): pb.SignalValue(value=1.5, observe_time=moment) for i in range(MAX_SIGNALS)})
    answer = MAX_BATCH_GET * (largest.ByteSize() + 8)
    assert answer < MAX_MESSAGE_BYTES, answer


# -- observation times: no further ahead than clock skew; the import says what became current -----------

def test_stamps_beyond_clock_skew_are_refused_naming_the_field(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="acme")))
    with raises_status(Code.INVALID_ARGUMENT, field="observations[0].signals[nps].observe_time") as seen:
        record(registry, ("acme", signals(["nps"], 10.0, at=time.time() + 23 * 3600)))
    assert "5 minutes" in seen.message
    summary = registry.ImportCustomers(iter([block(["acme"], ["nps"], [[10.0]], at=time.time() + 3600)]))
    assert [(e.field, e.customer_id) for e in summary.errors] == [("columns.observe_time", "acme")]
    assert not get(registry, "acme").signals
    # Within clock skew: accepted.
    assert record(registry, ("acme", signals(["nps"], 5.0, at=time.time() + 60))).current == 1


def test_import_summary_says_which_observations_became_current(registry):
    record_at = OBSERVED + 100
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
        customer_id="acme", signals=signals(["nps", "arr"], 10.0, at=record_at))))
    summary = registry.ImportCustomers(iter([block(["acme", "beta"], ["nps", "arr"],
                                                   [[20.0, 10.0], [1.0, np.nan]], at=OBSERVED)]))
    # acme: nps is older than the stored one (history only), arr equals it but is older (history); beta: new.
    assert (summary.created, summary.updated) == (1, 1)
    assert (summary.signals_current, summary.signals_historical, summary.signals_unchanged) == (1, 2, 0)
    assert get(registry, "acme").signals["nps"].value == 10.0


# -- re-sent observations without a time add nothing ----------------------------------------------------------

def test_resending_an_import_without_times_adds_no_history(registry):
    rows = [pb.Customer(customer_id="acme", signals=signals(["nps", "arr"], 7.0, at=None))]
    first = None
    for attempt in range(3):
        summary = registry.ImportCustomers(iter([
            pb.ImportCustomersRequest(customers=rows),
            block(["beta", "gamma"], ["nps"], [[1.0], [2.0]])]))
        first = first or get(registry, "acme").signals["nps"].observe_time
        if attempt:
            assert (summary.signals_current, summary.signals_historical, summary.signals_unchanged) == (0, 0, 4)
    assert history(registry, "acme") == [("arr", 7.0, True), ("nps", 7.0, True)]
    assert history(registry, "gamma") == [("nps", 2.0, True)]
    assert get(registry, "acme").signals["nps"].observe_time == first  # the first observation stays current

    changed = record(registry, ("acme", signals(["nps"], 8.0, at=None)), ("beta", signals(["nps"], 1.0, at=None)))
    assert (changed.current, changed.historical, changed.unchanged) == (1, 0, 1)
    assert history(registry, "acme") == [("arr", 7.0, True), ("nps", 7.0, False), ("nps", 8.0, True)]
