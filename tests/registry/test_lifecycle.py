"""Lifecycle stages in the registry, over real gRPC on SQLite and PostgreSQL: the stage a customer is in and since
when, the history of stages it entered, import/update/export/feed carrying it, and scoring runs leaving the churned
out. One suite per database for the module; each test uses its own ids."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from cvh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as spb
from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
from tests.clients.test_cli import cvh_here
from tests.conftest import _empty_tables, start_server
from tests.grpc_helpers import raises_status

Code = grpc.StatusCode
PROSPECT, ACTIVE, AT_RISK, CHURNED = (common_pb2.LIFECYCLE_STAGE_PROSPECT, common_pb2.LIFECYCLE_STAGE_ACTIVE,
                                      common_pb2.LIFECYCLE_STAGE_AT_RISK, common_pb2.LIFECYCLE_STAGE_CHURNED)
JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suite(request, tmp_path_factory) -> Iterator:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('lifecycle') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = start_server(url, services=("registry", "scoring"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registry(suite) -> Iterator[pb_grpc.RegistryServiceStub]:
    with grpc.insecure_channel(suite.target) as channel:
        yield pb_grpc.RegistryServiceStub(channel)


def stage_of(registry, customer_id: str) -> tuple[int, int]:
    customer = registry.GetCustomer(pb.GetCustomerRequest(name=customer_id))
    return customer.lifecycle_stage, customer.lifecycle_stage_time.seconds


def history(registry, customer_id: str) -> list[tuple[int, int, bool]]:
    answer = registry.ListLifecycleHistory(pb.ListLifecycleHistoryRequest(customer=customer_id))
    return [(c.stage, c.enter_time.seconds, c.current) for c in answer.changes]


def move(registry, customer_id: str, stage: int, seconds: int | None = None, **extra) -> pb.Customer:
    customer = pb.Customer(name=customer_id, lifecycle_stage=stage, **extra)
    if seconds is not None:
        customer.lifecycle_stage_time.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds))
    return registry.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=customer, update_mask=field_mask_pb2.FieldMask(paths=["lifecycle_stage"])))


def test_a_new_customer_is_active_since_its_creation_and_each_stage_change_is_kept(registry):
    created = registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="lc-new")))
    assert created.lifecycle_stage == ACTIVE and created.lifecycle_stage_time == created.create_time
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(
        customer_id="lc-a", lifecycle_stage=ACTIVE, lifecycle_stage_time=timestamp_pb2.Timestamp(seconds=JAN_1))))
    move(registry, "lc-a", AT_RISK, JAN_1 + 100)
    move(registry, "lc-a", AT_RISK, JAN_1 + 150)  # the stage it is in: nothing entered, the time stays
    with raises_status(Code.INVALID_ARGUMENT, field="customer.lifecycle_stage_time"):
        move(registry, "lc-a", CHURNED, JAN_1 + 50)  # before it entered its current stage
    move(registry, "lc-a", CHURNED, JAN_1 + 86_400)
    assert stage_of(registry, "lc-a") == (CHURNED, JAN_1 + 86_400)
    assert history(registry, "lc-a") == [(CHURNED, JAN_1 + 86_400, True), (AT_RISK, JAN_1 + 100, False),
                                         (ACTIVE, JAN_1, False)]
    page = registry.ListLifecycleHistory(pb.ListLifecycleHistoryRequest(customer="customers/lc-a", page_size=2))
    rest = registry.ListLifecycleHistory(pb.ListLifecycleHistoryRequest(customer="lc-a", page_size=2,
                                                                        page_token=page.next_page_token))
    assert [c.stage for c in page.changes] + [c.stage for c in rest.changes] == [CHURNED, AT_RISK, ACTIVE]
    assert not rest.next_page_token


def test_other_updates_and_a_whole_replacement_without_a_stage_keep_it(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="lc-b",
                                                                          lifecycle_stage=PROSPECT)))
    registry.UpdateCustomer(pb.UpdateCustomerRequest(customer=pb.Customer(name="lc-b", display_name="B"),
                                                     update_mask=field_mask_pb2.FieldMask(paths=["*"])))
    assert stage_of(registry, "lc-b")[0] == PROSPECT
    assert len(history(registry, "lc-b")) == 1


def test_bad_stages_and_times_are_refused_naming_the_field_and_change_nothing(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="lc-c")))
    with raises_status(Code.INVALID_ARGUMENT, field="customer.lifecycle_stage"):
        move(registry, "lc-c", common_pb2.LIFECYCLE_STAGE_UNSPECIFIED)
    with raises_status(Code.INVALID_ARGUMENT, field="customer.lifecycle_stage"):
        move(registry, "lc-c", 42)
    with raises_status(Code.INVALID_ARGUMENT, field="customer.lifecycle_stage_time"):
        move(registry, "lc-c", CHURNED, int(time.time()) + 3600)
    with raises_status(Code.INVALID_ARGUMENT, field="customer.lifecycle_stage"):
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="lc-c2", lifecycle_stage=9)))
    with raises_status(Code.INVALID_ARGUMENT, field="lifecycle_stage", reason="INVALID_LIFECYCLE_STAGE"):
        registry.ListCustomers(pb.ListCustomersRequest(lifecycle_stage=77))
    with raises_status(Code.NOT_FOUND, reason="CUSTOMER_NOT_FOUND"):
        registry.ListLifecycleHistory(pb.ListLifecycleHistoryRequest(customer="lc-nobody"))
    assert stage_of(registry, "lc-c")[0] == ACTIVE and len(history(registry, "lc-c")) == 1


def columns(ids: list[str], stages: list[int] | None = None, times_us: list[int] | None = None):
    block = pb.CustomerColumns(customer_ids=ids, owners=["ana"] * len(ids))
    if stages is not None:
        block.lifecycle_stages = bytes(stages)
    if times_us is not None:
        block.lifecycle_stage_times_us.extend(times_us)
    return pb.ImportCustomersRequest(columns=block)


def test_an_import_sets_stages_keeps_them_when_silent_and_rejects_bad_ones_by_position(registry):
    ids = ["lc-i1", "lc-i2", "lc-i3", "lc-i4"]
    summary = registry.ImportCustomers(iter([columns(ids, [CHURNED, 0, AT_RISK, 99],
                                                     [JAN_1 * 10**6, 0, 0, 0])]))
    assert (summary.created, summary.rejected) == (3, 1)
    assert (summary.errors[0].position, summary.errors[0].field) == (3, "lifecycle_stage")
    assert stage_of(registry, "lc-i1") == (CHURNED, JAN_1)
    assert stage_of(registry, "lc-i2")[0] == ACTIVE
    # Re-importing the same customers without stages changes none and adds no history.
    registry.ImportCustomers(iter([columns(ids[:3])]))
    assert [stage_of(registry, i)[0] for i in ids[:3]] == [CHURNED, ACTIVE, AT_RISK]
    assert len(history(registry, "lc-i1")) == 1
    # A row of the customers list does the same.
    registry.ImportCustomers(iter([pb.ImportCustomersRequest(customers=[
        pb.Customer(customer_id="lc-i2", lifecycle_stage=PROSPECT)])]))
    assert [c[0] for c in history(registry, "lc-i2")] == [PROSPECT, ACTIVE]
    listed = registry.ListCustomers(pb.ListCustomersRequest(lifecycle_stage=CHURNED, page_size=1000))
    assert "lc-i1" in {c.customer_id for c in listed.customers}
    assert {c.lifecycle_stage for c in listed.customers} == {CHURNED}


def test_export_and_the_change_feed_carry_the_stage(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="lc-e", lifecycle_stage=AT_RISK)))
    stages = {}
    for message in registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=["nps"])):
        stages.update(zip(message.chunk.customer_ids, message.lifecycle_stages))
        sequence = message.sequence or locals().get("sequence", 0)
    assert stages["lc-e"] == AT_RISK
    move(registry, "lc-e", CHURNED)
    feed = registry.WatchCustomerChanges(pb.WatchCustomerChangesRequest(after_sequence=sequence), timeout=10)
    message = next(feed)
    feed.cancel()
    assert dict(zip(message.chunk.customer_ids, message.lifecycle_stages))["lc-e"] == CHURNED


def test_deleting_a_customer_forgets_its_stages(registry):
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="lc-d")))
    move(registry, "lc-d", CHURNED)
    registry.DeleteCustomer(pb.DeleteCustomerRequest(name="lc-d"))
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="lc-d")))
    assert [c[0] for c in history(registry, "lc-d")] == [ACTIVE]


def test_a_scoring_run_leaves_the_churned_out_and_says_how_many(suite, registry):
    ids = [f"lc-run-{i}" for i in range(40)]
    block = pb.CustomerColumns(customer_ids=ids, signal_names=["annual_revenue", "nps"],
                               lifecycle_stages=bytes([CHURNED if i % 4 == 0 else ACTIVE for i in range(40)]))
    values = np.column_stack([np.arange(40.0) * 1000 + 1, np.linspace(-50, 80, 40)])
    block.signal_values.CopyFrom(common_pb2.Float64Matrix(rows=40, columns=2, data=values.astype("<f8").tobytes()))
    registry.ImportCustomers(iter([pb.ImportCustomersRequest(columns=block)]))
    churned = {c.customer_id for c in registry.ListCustomers(
        pb.ListCustomersRequest(lifecycle_stage=CHURNED, page_size=1000)).customers}
    total = len(list(registry.ExportSignalMatrix(pb.ExportSignalMatrixRequest(signal_names=["nps"])))[0]
                .chunk.customer_ids)
    with grpc.insecure_channel(suite.target) as channel:
        scoring = spb_grpc.ScoringServiceStub(channel)
        run = scoring.StartScoringRun(spb.StartScoringRunRequest())
        run = list(scoring.WatchScoringRun(spb.WatchScoringRunRequest(name=run.name), timeout=120))[-1]
        assert run.state == spb.RUN_STATE_COMPLETED, run.failure_reason
        scored = {i for chunk in scoring.StreamRunResults(spb.StreamRunResultsRequest(run=run.name))
                  for i in chunk.dimension_scores.customer_ids}
    assert run.churned_left_out == len(churned) and run.customers_total == total - len(churned)
    assert not scored & churned and {i for i in ids if i not in churned} <= scored


def test_the_command_line_moves_a_customer_and_shows_its_stages(suite, registry, tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("customer_id,lifecycle_stage,lifecycle_stage_time,annual_revenue\n"
                    "lc-cli-1,Churned,2026-01-01,10\nlc-cli-2,,,20\nlc-cli-3,gone,,30\n")

    def cvh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return cvh_here(suite, *args, check=check)  # as the script runs them, without an interpreter each

    imported = cvh("import", str(path), check=False)
    assert imported.returncode == 1 and "lifecycle_stage" in (tmp_path / "customers.csv.rejects.csv").read_text()
    assert stage_of(registry, "lc-cli-1") == (CHURNED, JAN_1)
    entered = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    cvh("customers", "lifecycle", "lc-cli-2", "at-risk", "--entered", entered)
    shown = cvh("customers", "lifecycle", "lc-cli-2").stdout
    assert "at_risk" in shown.replace(" ", "_").lower() and entered[:10] in shown
    assert "lc-cli-1" in cvh("customers", "list", "--stage", "churned", "--limit", "0").stdout
    wrong = cvh("customers", "lifecycle", "lc-cli-2", "--entered", "2026-02-01", check=False)
    assert wrong.returncode == 2 and "STAGE" in wrong.stderr and "Traceback" not in wrong.stderr
