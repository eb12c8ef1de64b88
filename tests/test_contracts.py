"""The contracts as foreign clients meet them: buf lint, documented reflection, documented error reasons,
one way to name things, and online scoring that refuses signals its model does not read.

One suite on SQLite serves the module: what is checked here is the same on PostgreSQL (names are parsed
and reasons derived before any query).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import scoring_engine
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from tests.conftest import start_server
from tests.grpc_helpers import details_of, documented_reasons, raises_status, rpc_comments

ROOT = Path(__file__).resolve().parent.parent
Code = grpc.StatusCode
SIGNALS = list(scoring_engine.default_model().signal_names)
SCORING = "cvh.scoring.v1.ScoringService/"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A suite with 300 customers and one completed run of the default model."""
    server = start_server(f"sqlite:///{tmp_path_factory.mktemp('contracts') / 'cvh.db'}")
    try:
        with grpc.insecure_channel(server.target) as channel:
            registry, scoring = rpb_grpc.RegistryServiceStub(channel), pb_grpc.ScoringServiceStub(channel)
            values = np.random.default_rng(3).lognormal(2.0, 1.0, size=(300, len(SIGNALS)))
            block = rpb.CustomerColumns(customer_ids=[f"c{i:03d}" for i in range(300)], signal_names=SIGNALS)
            block.signal_values.CopyFrom(common_pb2.Float64Matrix(rows=300, columns=len(SIGNALS),
                                                                  data=values.astype("<f8").tobytes()))
            assert registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=block)])).rejected == 0
            run = scoring.StartScoringRun(pb.StartScoringRunRequest())
            *_, last = scoring.WatchScoringRun(pb.WatchScoringRunRequest(name=run.name), timeout=120)
            assert last.state == pb.RUN_STATE_COMPLETED
        yield server
    finally:
        server.stop()


@pytest.fixture
def channel(suite):
    with grpc.insecure_channel(suite.target) as ch:
        yield ch


def refused(call, method: str, code: Code):
    """The error ``call()`` raised, after checking its code and that its reason is documented for ``method``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    seen = details_of(caught.value)
    assert seen.code == code, seen
    assert seen.reason in documented_reasons(method), f"{method} answered undocumented reason {seen.reason}"
    return seen, caught.value


# -- buf lint --------------------------------------------------------------------------------------------

def test_buf_lint_passes_on_the_protos():
    buf = Path(sys.executable).parent / "buf"
    assert buf.exists(), "buf is a dev dependency (buf-bin): run `make install`"
    done = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# -- reflection ------------------------------------------------------------------------------------------

def _reflect(channel, version: str, request: reflection_pb2.ServerReflectionRequest):
    """One raw reflection request on grpc.reflection.{version} (v1 and v1alpha share their messages)."""
    call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    (answer,) = list(call(iter([request]), timeout=10))
    return answer


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_serves_the_contracts_with_their_comments_and_finds_methods(channel, version):
    services = _reflect(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in services.list_services_response.service}
    assert {"cvh.registry.v1.RegistryService", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection", "grpc.health.v1.Health"} <= names

    # What `grpcurl describe cvh.registry.v1.RegistryService.GetCustomer` asks (NOT_FOUND before).
    answer = _reflect(channel, version, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="cvh.registry.v1.RegistryService.GetCustomer"))
    assert not answer.HasField("error_response"), answer.error_response
    files = {f.name: f for f in map(descriptor_pb2.FileDescriptorProto.FromString,
                                    answer.file_descriptor_response.file_descriptor_proto)}
    registry = files["cvh/registry/v1/registry_service.proto"]
    assert "cvh/common/v1/common.proto" in files  # its imports come along
    method = [m.name for m in registry.service[0].method].index("GetCustomer")
    comments = {tuple(loc.path): loc.leading_comments for loc in registry.source_code_info.location}
    assert "Returns one customer" in comments[(6, 0, 2, method)]
    assert "CUSTOMER_NOT_FOUND" in comments[(6, 0, 2, method)]

    # The details every error carries can be decoded from reflection alone.
    details = _reflect(channel, version, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="google.rpc.ErrorInfo"))
    assert not details.HasField("error_response"), details.error_response

    # A client that knows nothing of our stubs resolves the method through grpcio-reflection's database.
    if version == "v1alpha":
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        found = pool.FindMethodByName("cvh.registry.v1.RegistryService.GetCustomer")
        assert found.output_type.full_name == "cvh.registry.v1.Customer"


# -- documented error reasons ----------------------------------------------------------------------------

def test_every_rpc_comment_lists_its_errors_and_every_reason_in_the_code_is_documented():
    comments = rpc_comments()
    rpcs = [name for name in comments if "/" in name]
    assert len(rpcs) >= 36
    assert not [r for r in rpcs if "Errors:" not in comments[r]], "RPCs without an Errors: line"
    documented = set().union(*(documented_reasons(r) for r in rpcs))
    # Reasons the services name in their code (the derived ones are checked where tests meet them).
    named = set()
    for source in (ROOT / "services").rglob("*.py"):
        text = source.read_text()
        named |= set(re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"\)?\s*(?:,|\)|$)', text, re.M))
    named = {n for n in named if not n.startswith(("CVH_", "VALUE_DIMENSION_", "STAKEHOLDER_ROLE_"))}
    assert named >= {"PARENT_CYCLE", "RUN_IN_PROGRESS", "UNKNOWN_SIGNAL"}
    assert not named - documented, f"reasons raised but not documented in protos/: {sorted(named - documented)}"


def test_reasons_say_what_went_wrong(channel):
    registry = rpb_grpc.RegistryServiceStub(channel)
    seen, _ = refused(lambda: registry.GetCustomer(rpb.GetCustomerRequest(name="customers/ghost")),
                      "cvh.registry.v1.RegistryService/GetCustomer", Code.NOT_FOUND)
    assert seen.reason == "CUSTOMER_NOT_FOUND"
    seen, _ = refused(lambda: registry.GetCustomer(rpb.GetCustomerRequest(name="models/x")),
                      "cvh.registry.v1.RegistryService/GetCustomer", Code.INVALID_ARGUMENT)
    assert seen.reason == "INVALID_CUSTOMER_NAME" and seen.fields == ["name"]
    seen, _ = refused(lambda: registry.ListCustomers(rpb.ListCustomersRequest(page_size=-1)),
                      "cvh.registry.v1.RegistryService/ListCustomers", Code.INVALID_ARGUMENT)
    assert seen.reason == "INVALID_PAGE_SIZE"
    scoring = pb_grpc.ScoringServiceStub(channel)
    seen, _ = refused(lambda: scoring.GetScoringRun(pb.GetScoringRunRequest(name="runs/999")),
                      SCORING + "GetScoringRun", Code.NOT_FOUND)
    assert seen.reason == "RUN_NOT_FOUND"
    seen, _ = refused(lambda: scoring.GetModel(pb.GetModelRequest(name="models/nope")),
                      SCORING + "GetModel", Code.NOT_FOUND)
    assert seen.reason == "MODEL_NOT_FOUND"


# -- item 3: signals the model does not read -------------------------------------------------------------

def test_score_signals_refuses_names_the_model_does_not_read_and_names_the_nearest(channel):
    scoring = pb_grpc.ScoringServiceStub(channel)
    seen, error = refused(lambda: scoring.ScoreSignals(pb.ScoreSignalsRequest(signals={"anual_revenue": 1e6})),
                          SCORING + "ScoreSignals", Code.INVALID_ARGUMENT)
    assert seen.reason == "UNKNOWN_SIGNAL"
    assert seen.fields == ["signals[anual_revenue]", "signals"]
    assert "annual_revenue" in error.details()
    # One good name, one misspelt: only the misspelt one is named.
    seen, error = refused(lambda: scoring.ScoreSignals(pb.ScoreSignalsRequest(
        signals={"annual_revenue": 1e6, "gros_margin": 0.4})), SCORING + "ScoreSignals", Code.INVALID_ARGUMENT)
    assert seen.fields == ["signals[gros_margin]"] and "gross_margin" in error.details()
    # No signals at all: said so, with the names the model reads.
    seen, error = refused(lambda: scoring.ScoreSignals(pb.ScoreSignalsRequest()), SCORING + "ScoreSignals",
                          Code.INVALID_ARGUMENT)
    assert seen.reason == "NO_MODEL_SIGNALS" and "annual_revenue" in error.details()
    # Names the model reads still score.
    assert scoring.ScoreSignals(pb.ScoreSignalsRequest(signals={"annual_revenue": 1e6})).HasField("composite")


def test_score_batch_refuses_columns_the_model_does_not_read(channel):
    scoring = pb_grpc.ScoringServiceStub(channel)
    chunk = common_pb2.ColumnarChunk(customer_ids=["a"], column_names=["nps", "anual_revenue"],
                                     values=common_pb2.Float64Matrix(rows=1, columns=2,
                                                                     data=np.array([1.0, 2.0], "<f8").tobytes()))
    seen, error = refused(lambda: list(scoring.ScoreBatch(iter([pb.ScoreBatchRequest(signals=chunk)]))),
                          SCORING + "ScoreBatch", Code.INVALID_ARGUMENT)
    assert seen.reason == "UNKNOWN_SIGNAL" and seen.fields == ["signals.column_names[1]"]
    assert "annual_revenue" in error.details()


# -- item 5: one way to name things ----------------------------------------------------------------------

def test_short_names_are_accepted_wherever_they_are_unambiguous(channel):
    registry, scoring = rpb_grpc.RegistryServiceStub(channel), pb_grpc.ScoringServiceStub(channel)
    hierarchy = hpb_grpc.HierarchyServiceStub(channel)
    assert registry.GetCustomer(rpb.GetCustomerRequest(name="c001")).name == "customers/c001"
    assert hierarchy.GetPriority(hpb.GetPriorityRequest(customer="c001")).customer == "customers/c001"
    assert scoring.ScoreCustomer(pb.ScoreCustomerRequest(customer="c001")).customer == "customers/c001"
    for name in ("default", "models/default", "default/versions/1", "models/default/versions/1"):
        assert scoring.GetModel(pb.GetModelRequest(name=name)).name == "models/default/versions/1", name
    run = scoring.ListScoringRuns(pb.ListScoringRunsRequest(model_id="default")).runs[0]
    assert scoring.ListScoringRuns(pb.ListScoringRunsRequest(model_id="models/default")).runs[0] == run
    assert scoring.GetScoringRun(pb.GetScoringRunRequest(name=run.name.split("/")[1])) == run
    for name in ("default", "models/default", run.name, run.name.split("/")[1]):
        page = scoring.ListRunResults(pb.ListRunResultsRequest(run=name, page_size=1))
        assert page.results[0].rank == 1, name
    assert scoring.ActivateModel(pb.ActivateModelRequest(name="default/versions/1")).active


def test_activating_a_model_without_a_version_says_which_form_and_why(channel):
    scoring = pb_grpc.ScoringServiceStub(channel)
    seen, error = refused(lambda: scoring.ActivateModel(pb.ActivateModelRequest(name="default")),
                          SCORING + "ActivateModel", Code.INVALID_ARGUMENT)
    assert seen.reason == "MODEL_VERSION_REQUIRED" and seen.fields == ["name"]
    assert "models/default/versions/1" in error.details() and "active version" in error.details()
    seen, _ = refused(lambda: scoring.ListRunResults(pb.ListRunResultsRequest(run="runs/x")),
                      SCORING + "ListRunResults", Code.INVALID_ARGUMENT)
    assert seen.reason == "INVALID_RUN_NAME"


def test_cvh_models_activate_takes_short_names_and_says_which_form_it_needs(suite):
    def cvh(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "clients.cli", "models", "activate", *args], capture_output=True,
                              text=True, env={**os.environ, "CVH_SERVER": suite.target}, timeout=60)
    refused = cvh("default")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "models/default/versions/1" in refused.stderr and "active version" in refused.stderr
    for form in (["default", "1"], ["default/versions/1"]):
        done = cvh(*form)
        assert done.returncode == 0 and "models/default/versions/1 is now the active version" in done.stdout, done
