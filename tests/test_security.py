"""Transport and identity: TLS, mutual TLS, bearer tokens and roles, refusing exposed insecure servers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cvh.adoption.v1 import adoption_service_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2
from cvh.registry.v1 import registry_service_pb2 as pb
from cvh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from cvh.scoring.v1 import scoring_service_pb2
from services.common.auth import REQUIRED_ROLE, digest
from services.common.config import ConfigError, ServerConfig, check_exposure
from tests.conftest import ServerThread
from tests.grpc_helpers import raises_status

TOKENS = {"reader-token-1": ("support-desk", ["reader"]), "writer-token-2": ("crm-sync", ["writer"]),
          "admin-token-3": ("platform", ["admin"]), "frontline-token-5": ("agent-desk", ["frontline"])}


def test_every_rpc_has_a_required_role():
    services = [pb.DESCRIPTOR.services_by_name["RegistryService"],
                scoring_service_pb2.DESCRIPTOR.services_by_name["ScoringService"],
                hierarchy_service_pb2.DESCRIPTOR.services_by_name["HierarchyService"],
                adoption_service_pb2.DESCRIPTOR.services_by_name["AdoptionService"]]
    methods = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    assert methods == set(REQUIRED_ROLE)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.com")
    paths = {}
    for name, blob in {"ca": ca.cert_pem, "cert": server.cert_chain_pems[0], "key": server.private_key_pem,
                       "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem}.items():
        paths[name] = folder / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    tokens = folder / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": name, "sha256": digest(token), "roles": roles}
                                             for token, (name, roles) in TOKENS.items()]}))
    paths["tokens"] = tokens
    return paths


@pytest.fixture
def secured(certificates, tmp_path):
    # The hierarchy follows runs through this very port: over TLS, with a reader token.
    server = ServerThread(ServerConfig(
        services=("registry", "scoring", "hierarchy"), listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'cvh.db'}", tls_cert_file=str(certificates["cert"]),
        tls_key_file=str(certificates["key"]), tokens_file=str(certificates["tokens"]),
        peer_tls_ca_file=str(certificates["ca"]), peer_token="reader-token-1"))
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates["ca"].read_bytes())
    with grpc.secure_channel(server.target, credentials) as channel:
        yield channel
    server.stop()


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def test_no_token_is_unauthenticated_but_health_is_open(secured):
    registry = pb_grpc.RegistryServiceStub(secured)
    with raises_status(grpc.StatusCode.UNAUTHENTICATED, reason="TOKEN_REQUIRED"):
        registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme"))
    with raises_status(grpc.StatusCode.UNAUTHENTICATED):
        registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme"), metadata=bearer("not-a-token"))
    # Open without a token; SERVING once the hierarchy has asked scoring (with its peer token) for a run to load.
    statuses = health_pb2_grpc.HealthStub(secured).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert any(s.status == health_pb2.HealthCheckResponse.SERVING for s in statuses)


def test_reader_reads_but_cannot_write_and_writes_are_audited(secured, caplog):
    registry = pb_grpc.RegistryServiceStub(secured)
    with caplog.at_level(logging.INFO, logger="cvh.audit"):
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="acme")),
                                metadata=bearer("writer-token-2"))
    got = registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme"), metadata=bearer("reader-token-1"))
    assert got.customer_id == "acme"
    with raises_status(grpc.StatusCode.PERMISSION_DENIED, reason="ROLE_REQUIRED") as seen:
        registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="beta")),
                                metadata=bearer("reader-token-1"))
    assert "writer" in seen.message
    # Admin may do everything, streams included.
    summary = registry.ImportCustomers(iter([pb.ImportCustomersRequest(customers=[pb.Customer(customer_id="c")])]),
                                       metadata=bearer("admin-token-3"))
    assert summary.created == 1
    audits = [r for r in caplog.records if r.name == "cvh.audit"]
    assert any(r.caller == "crm-sync" and r.method.endswith("/CreateCustomer") for r in audits)
    assert not any(token in caplog.text for token in TOKENS)


def test_the_front_line_looks_up_priority_and_records_decisions_but_writes_nothing_else(secured, caplog):
    from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
    from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
    registry, hierarchy = pb_grpc.RegistryServiceStub(secured), hpb_grpc.HierarchyServiceStub(secured)
    registry.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(customer_id="gamma")),
                            metadata=bearer("writer-token-2"))
    agent = bearer("frontline-token-5")
    with raises_status(grpc.StatusCode.PERMISSION_DENIED, reason="ROLE_REQUIRED"):
        registry.DeleteCustomer(pb.DeleteCustomerRequest(name="customers/gamma"), metadata=agent)
    decision = hpb.RecordServiceDecisionRequest(customer="gamma", kind=hpb.DECISION_KIND_FEE_WAIVER,
                                                person="agent@x", reason="late fee after an outage")
    with raises_status(grpc.StatusCode.PERMISSION_DENIED, reason="ROLE_REQUIRED") as seen:
        hierarchy.RecordServiceDecision(decision, metadata=bearer("reader-token-1"))
    assert "frontline" in seen.message
    with caplog.at_level(logging.INFO, logger="cvh.audit"):
        # The hierarchy learns of the new customer from the registry's feed: 5 s of polling was not always
        # enough on a loaded 2-core machine (the decision was then NOT_FOUND).
        # Before it first read the registry's customers it answers anyone with the default (feed_sequence 0).
        deadline = time.monotonic() + 30
        while True:
            try:
                if hierarchy.GetSnapshotInfo(hpb.GetSnapshotInfoRequest(), metadata=agent).feed_sequence > 0:
                    hierarchy.GetPriority(hpb.GetPriorityRequest(customer="gamma"), metadata=agent)
                    break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline, error
            time.sleep(0.05)
        answer = hierarchy.RecordServiceDecision(decision, metadata=agent)
    assert answer.name.startswith("serviceDecisions/")
    assert any(r.caller == "agent-desk" and r.method.endswith("/RecordServiceDecision")
               for r in caplog.records if r.name == "cvh.audit")


def test_refused_calls_are_audited_with_the_callers_name(secured, caplog):
    registry = pb_grpc.RegistryServiceStub(secured)
    with caplog.at_level(logging.INFO, logger="cvh.audit"):
        for metadata, code in [((), grpc.StatusCode.UNAUTHENTICATED),
                               (bearer("not-a-token"), grpc.StatusCode.UNAUTHENTICATED),
                               (bearer("reader-token-1"), grpc.StatusCode.PERMISSION_DENIED)]:
            with raises_status(code):
                registry.DeleteCustomer(pb.DeleteCustomerRequest(name="customers/acme"), metadata=metadata)
    refused = {(r.caller, r.code) for r in caplog.records if r.name == "cvh.audit" and r.getMessage() == "refused"
               and r.method.endswith("/DeleteCustomer")}
    assert refused == {("no token", "UNAUTHENTICATED"), ("unknown", "UNAUTHENTICATED"),
                       ("support-desk", "PERMISSION_DENIED")}
    assert not any(token in caplog.text for token in [*TOKENS, "not-a-token"])


@pytest.mark.parametrize("value", ["Bearer  reader-token-1", "bearer reader-token-1", "BEARER \x20 reader-token-1"])
def test_the_bearer_scheme_takes_any_case_and_one_or_more_spaces(secured, value):
    """RFC 7235: credentials = auth-scheme [ 1*SP token68 ], the scheme case-insensitive."""
    with raises_status(grpc.StatusCode.NOT_FOUND):  # past authentication: acme does not exist
        pb_grpc.RegistryServiceStub(secured).GetCustomer(pb.GetCustomerRequest(name="customers/acme"),
                                                         metadata=(("authorization", value),))


def test_a_revoked_token_stops_working_when_the_tokens_file_changes(tmp_path, monkeypatch):
    """The tokens file is looked at every few seconds (here 0.1 s): a revoked token is refused without a restart;
    a file that cannot be read leaves the tokens in force."""
    from services.common import auth

    monkeypatch.setattr(auth, "TOKENS_POLL_SECONDS", 0.1)
    path = tmp_path / "tokens.json"

    def write(tokens):
        path.write_text(json.dumps({"tokens": [{"name": name, "sha256": digest(token), "roles": roles}
                                               for token, (name, roles) in tokens.items()]}))
    write(TOKENS)
    server = ServerThread(ServerConfig(services=("registry",), listen="127.0.0.1:0", tokens_file=str(path),
                                       database_url=f"sqlite:///{tmp_path / 'cvh.db'}"))

    def answer(token: str) -> grpc.StatusCode:
        try:
            registry.GetCustomer(pb.GetCustomerRequest(name="customers/acme"), metadata=bearer(token), timeout=5)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def eventually(token: str, code: grpc.StatusCode) -> None:
        deadline = time.monotonic() + 5
        while answer(token) != code:
            assert time.monotonic() < deadline, f"{token} still answers {answer(token)}, not {code}"
            time.sleep(0.05)
    try:
        with grpc.insecure_channel(server.target) as channel:
            registry = pb_grpc.RegistryServiceStub(channel)
            assert answer("writer-token-2") == grpc.StatusCode.NOT_FOUND
            path.write_text('{"tokens": [')  # a half-written file: the tokens in force stay
            time.sleep(0.5)
            assert answer("writer-token-2") == grpc.StatusCode.NOT_FOUND
            write({t: v for t, v in TOKENS.items() if t != "writer-token-2"} | {"new-token-4": ("etl", ["reader"])})
            eventually("writer-token-2", grpc.StatusCode.UNAUTHENTICATED)
            assert answer("new-token-4") == answer("reader-token-1") == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate(certificates, tmp_path):
    server = ServerThread(ServerConfig(
        services=("registry",), listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'cvh.db'}",
        tls_cert_file=str(certificates["cert"]), tls_key_file=str(certificates["key"]),
        tls_client_ca_file=str(certificates["ca"])))
    try:
        ca = certificates["ca"].read_bytes()
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(server.target, anonymous) as channel:
            with raises_status(grpc.StatusCode.UNAVAILABLE):
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        known = grpc.ssl_channel_credentials(root_certificates=ca,
                                             private_key=certificates["client_key"].read_bytes(),
                                             certificate_chain=certificates["client_cert"].read_bytes())
        with grpc.secure_channel(server.target, known) as channel:
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


@pytest.mark.parametrize("listen,tls,tokens,insecure,refused", [
    ("127.0.0.1:50051", False, False, False, False),
    ("localhost:50051", False, False, False, False),
    ("[::1]:50051", False, False, False, False),
    ("0.0.0.0:50051", False, False, False, True),
    ("0.0.0.0:50051", True, False, False, True),
    ("0.0.0.0:50051", True, True, False, False),
    ("0.0.0.0:50051", False, False, True, False),
])
def test_exposed_servers_need_tls_and_tokens_or_insecure(listen, tls, tokens, insecure, refused):
    config = ServerConfig(listen=listen, tls_cert_file="c.pem" if tls else "", tls_key_file="k.pem" if tls else "",
                          tokens_file="t.json" if tokens else "", insecure=insecure)
    if refused:
        with pytest.raises(ConfigError, match="--insecure"):
            check_exposure(config)
    else:
        check_exposure(config)


def test_cli_refuses_to_expose_an_insecure_server(tmp_path):
    result = subprocess.run([sys.executable, "-m", "clients.cli", "serve", "--listen", "0.0.0.0:0"],
                            capture_output=True, text=True, timeout=60, env={"CVH_DATA_DIR": str(tmp_path),
                                                                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without TLS" in result.stderr


def test_services_call_each_other_over_tls_with_a_peer_token(certificates, tmp_path):
    """Registry apart from scoring + hierarchy, all with TLS and tokens: the run's export and the snapshot
    load reach their peers only because the servers present a reader token over verified TLS."""
    from clients.client import CvhClient
    from clients.errors import CvhError
    from wire.channels import Tls

    secure = dict(tls_cert_file=str(certificates["cert"]), tls_key_file=str(certificates["key"]),
                  tokens_file=str(certificates["tokens"]), database_url=f"sqlite:///{tmp_path / 'cvh.db'}",
                  listen="127.0.0.1:0")
    registry = ServerThread(ServerConfig(services=("registry",), **secure))
    tls = Tls(ca_file=str(certificates["ca"]))
    fronts = []
    try:
        with CvhClient(registry.target, tls=tls, token="writer-token-2") as writer:
            writer.create_customer(pb.Customer(customer_id="acme", signals={"nps": pb.SignalValue(value=9)}))
        for peer_token in ("", "reader-token-1"):
            fronts.append(ServerThread(ServerConfig(
                services=("scoring", "hierarchy"), registry_target=registry.target, peer_token=peer_token,
                peer_tls_ca_file=str(certificates["ca"]), **secure)))
            with CvhClient(fronts[-1].target, tls=tls, token="admin-token-3") as admin:
                run = admin.wait_for_run(admin.start_run().name, timeout=60)
                if not peer_token:
                    assert run.state == scoring_service_pb2.RUN_STATE_FAILED
                    assert "UNAUTHENTICATED" in run.failure_reason
                    continue
                assert run.state == scoring_service_pb2.RUN_STATE_COMPLETED, run.failure_reason
                admin.wait_for_snapshot(run.name, timeout=30)
                assert admin.get_priority("acme").scored
        with CvhClient(fronts[-1].target, tls=tls) as anonymous, pytest.raises(CvhError) as refused:
            anonymous.get_priority("acme")
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        for server in (*fronts, registry):
            server.stop()
