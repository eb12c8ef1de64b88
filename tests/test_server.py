"""The served suite as outsiders see it: reflection, health, a stub-less client, the CLI process, schema."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from clients.server_process import ServerProcess, free_port
from cvh.hierarchy.v1 import hierarchy_service_pb2, hierarchy_service_pb2_grpc
from services.common import db
from services.common.config import ConfigError, ServerConfig, check_before_start
from services.registry.tables import metadata as registry_metadata
from services.hierarchy.tables import metadata as hierarchy_metadata
from services.scoring.tables import metadata as scoring_metadata

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ["cvh.registry.v1.RegistryService", "cvh.scoring.v1.ScoringService", "cvh.hierarchy.v1.HierarchyService"]


class GenericClient:
    """Calls any method by name with dicts, learning every type from server reflection alone."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def _method(self, full_method: str):
        service_name, method_name = full_method.rsplit("/", 1)
        method = self.pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        return method, request_class, response_class

    def call(self, full_method: str, requests):
        method, request_class, response_class = self._method(full_method)
        path = "/" + full_method
        kind = {(False, False): self.channel.unary_unary, (False, True): self.channel.unary_stream,
                (True, False): self.channel.stream_unary, (True, True): self.channel.stream_stream}[
            (method.client_streaming, method.server_streaming)]
        rpc = kind(path, request_serializer=lambda m: m.SerializeToString(),
                   response_deserializer=response_class.FromString)
        build = lambda d: json_format.ParseDict(d, request_class())  # noqa: E731
        argument = (build(d) for d in requests) if method.client_streaming else build(requests)
        answer = rpc(argument, timeout=30)
        to_dict = lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)  # noqa: E731
        return [to_dict(m) for m in answer] if method.server_streaming else to_dict(answer)


def becomes_serving(channel: grpc.Channel, service: str = "", timeout: float = 10) -> bool:
    """Whether health turns SERVING for ``service`` within ``timeout`` (the hierarchy turns SERVING only once it
    knows its snapshot: loaded, or no completed run to load)."""
    statuses = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=timeout)
    try:
        return any(answer.status == health_pb2.HealthCheckResponse.SERVING for answer in statuses)
    finally:
        statuses.cancel()


def test_generic_client_discovers_checks_and_uses_the_registry(channel):
    client = GenericClient(channel)
    assert set(SERVICES) <= set(client.database.get_services())
    for service in ["", *SERVICES]:
        assert becomes_serving(channel, service)

    registry = "cvh.registry.v1.RegistryService/"
    created = client.call(registry + "CreateCustomer", {"customer": {
        "customer_id": "acme", "display_name": "Acme", "stakeholder_role": "STAKEHOLDER_ROLE_BUYER",
        "signals": {"annual_revenue": {"value": 125000.0}}}})
    assert created["name"] == "customers/acme"
    summary = client.call(registry + "ImportCustomers", [
        {"customers": [{"customer_id": "unit", "parent": "customers/group", "signals": {"nps": {"value": 40}}}]},
        {"customers": [{"customer_id": "group"}]}])
    assert summary["created"] == "2"  # int64 is a string in proto JSON
    listed = client.call(registry + "ListCustomers", {"page_size": 10})
    assert [c["customer_id"] for c in listed["customers"]] == ["acme", "group", "unit"]
    chunks = client.call(registry + "ExportSignalMatrix", {"signal_names": ["annual_revenue", "nps"]})
    values = chunks[0]["chunk"]["values"]
    matrix = np.frombuffer(base64.b64decode(values["data"]), "<f8").reshape(values["rows"], values["columns"])
    row = {customer_id: i for i, customer_id in enumerate(chunks[0]["chunk"]["customer_ids"])}
    assert matrix[row["acme"], 0] == 125000.0 and matrix[row["unit"], 1] == 40.0


def test_generated_stubs_are_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_migrations_match_the_tables(database_url):
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), [registry_metadata, scoring_metadata, hierarchy_metadata])
    engine.dispose()
    assert differences == []



def test_cvh_serve_process_serves_exports_metrics_and_stops_on_sigterm(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "CVH_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "serve", "registry", "--listen", f"127.0.0.1:{port}",
         "--metrics-port", str(metrics_port)], env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(
                service="cvh.registry.v1.RegistryService")).status == health_pb2.HealthCheckResponse.SERVING
            GenericClient(channel).call("cvh.registry.v1.RegistryService/CreateCustomer",
                                        {"customer": {"customer_id": "acme"}})
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'cvh_rpc_total{code="OK",method="/cvh.registry.v1.RegistryService/CreateCustomer"} 1.0' in metrics
        assert (tmp_path / "cvh.db").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log = process.stderr.read()
        assert '"message": "shutting down"' in log
    finally:
        if process.poll() is None:
            process.kill()


def serve_refused(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`cvh serve ARGS` expected to refuse at once; the old code served on (the timeout then fails the test)."""
    return subprocess.run([sys.executable, "-m", "clients.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_a_second_cvh_serve_on_a_served_address_is_refused_and_the_first_keeps_serving(tmp_path):
    """Issue 13: a second server on a served address (another folder, another database) exits 1 naming the
    address, without a traceback and before touching its database; --health-listen the same."""
    health_port = free_port()
    (tmp_path / "first").mkdir()
    first = ServerProcess(tmp_path / "first", extra_args=("--health-listen", f"127.0.0.1:{health_port}"))
    try:
        first.wait_serving(timeout=120)
        other = tmp_path / "other"
        other.mkdir()
        for args, address, flag in (
                (("--listen", first.target), first.target, "--listen"),
                (("--listen", first.target, "--workers", "2"), first.target, "--listen"),
                (("--listen", "127.0.0.1:0", "--health-listen", f"127.0.0.1:{health_port}"),
                 f"127.0.0.1:{health_port}", "--health-listen")):
            refused = serve_refused(*args, "--database-url", f"sqlite:///{other / 'cvh.db'}", cwd=other)
            assert refused.returncode == 1, (args, refused.stderr[-2000:])
            assert f"cvh serve: {address} is already in use" in refused.stderr and flag in refused.stderr
            assert "Traceback" not in refused.stderr
            assert not (other / "cvh.db").exists()  # refused before its database was created
        for port in (first.target, f"127.0.0.1:{health_port}"):  # new connections all reach the first
            for _ in range(5):
                with grpc.insecure_channel(port, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert first.process.poll() is None
    finally:
        first.stop()


def test_sqlite_is_in_wal_mode(tmp_path):
    engine = db.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "postgres://u@h/db"])
def test_postgres_urls_use_psycopg3(url):
    assert sa.engine.make_url(db.normalize_url(url)).drivername == "postgresql+psycopg"


def test_health_only_port_answers_health_and_nothing_else(tmp_path):
    """--health-listen: a plaintext port for native probes that serves the main server's health statuses only."""
    from services.common.embedded import EmbeddedSuite

    server = EmbeddedSuite(ServerConfig(listen="127.0.0.1:0", health_listen="127.0.0.1:0",
                                        database_url=f"sqlite:///{tmp_path / 'cvh.db'}"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.suite.health_port}") as channel:
            assert becomes_serving(channel, "cvh.hierarchy.v1.HierarchyService")
            with pytest.raises(grpc.RpcError) as other:
                hierarchy_service_pb2_grpc.HierarchyServiceStub(channel).GetSnapshotInfo(
                    hierarchy_service_pb2.GetSnapshotInfoRequest(), timeout=5)
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()


def test_shutdown_ends_watch_streams_at_once(tmp_path):
    """Watch streams wait for events for ever: on stop they end with UNAVAILABLE instead of holding the
    server for its whole grace."""
    import threading
    import time

    from clients.client import CvhClient
    from clients.errors import CvhError
    from services.common.embedded import EmbeddedSuite

    server = EmbeddedSuite(ServerConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'cvh.db'}"))
    codes = []
    with CvhClient(server.target) as cvh:
        streams = [cvh.watch_runs(), cvh.watch_priority_changes()]

        def follow(stream):
            try:
                list(stream)
            except CvhError as error:
                codes.append(error.code)
        readers = [threading.Thread(target=follow, args=(s,), daemon=True) for s in streams]
        for reader in readers:
            reader.start()
        time.sleep(0.5)  # both calls reach the server and wait
        started = time.monotonic()
        server.stop(grace=20)
        stopped = time.monotonic() - started
        for reader in readers:
            reader.join(10)
    assert stopped < 5, f"stop took {stopped:.1f} s of its 20 s grace"
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 2


def test_a_server_that_does_not_migrate_refuses_a_schema_behind_its_code(tmp_path):
    """--no-migrate (a migration job owns the schema): a missing or older schema stops the start with what to
    do; the current one, or a newer one (a newer release migrated first), serves."""
    url = f"sqlite:///{tmp_path / 'cvh.db'}"
    engine = db.create_engine(url)
    assert "no cvh schema" in db.schema_problem(engine)
    db.upgrade(engine, "0003_hierarchy")
    problem = db.schema_problem(engine)
    assert "at 0003_hierarchy, this server needs 0009_run_export_sequence" in problem and "cvh db upgrade" in problem

    refused = subprocess.run([sys.executable, "-m", "clients.cli", "serve", "--no-migrate", "--listen",
                              "127.0.0.1:0", "--database-url", url], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "run `cvh db upgrade`" in refused.stderr, refused.stderr
    with engine.connect() as conn:  # nothing was migrated by the refused server
        assert MigrationContext.configure(conn).get_current_revision() == "0003_hierarchy"

    db.upgrade(engine)
    assert db.schema_problem(engine) is None
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_from_a_newer_release'"))
    assert db.schema_problem(engine) is None
    engine.dispose()


def test_sighup_reloads_the_tokens_file_in_every_worker_and_stops_none(tmp_path):
    """`cvh serve --workers 2`: SIGHUP to the parent reaches both workers, which read the tokens file again (a
    change the file's size, time and inode do not show, so only the signal tells) and go on serving."""
    import json
    import time

    from cvh.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
    from services.common.auth import digest

    def tokens_file(revoked: str, kept: str) -> str:
        return json.dumps({"tokens": [{"name": "ops", "sha256": digest(kept), "roles": ["reader"]},
                                      {"name": "etl", "sha256": digest(revoked), "roles": ["reader"]}]})
    path = tmp_path / "tokens.json"
    path.write_text(tokens_file(revoked="token-old", kept="token-ops"))
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "serve", "registry", "--listen", f"127.0.0.1:{port}",
             "--workers", "2", "--tokens-file", str(path), "--log-level", "INFO"],
            env={**os.environ, "CVH_DATA_DIR": str(tmp_path)}, stdout=log, stderr=log, cwd=ROOT)

    def wait_for(what, condition, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, f"the server exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not {what}:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.1)

    def answers(token: str) -> set[grpc.StatusCode]:
        """The code a GetCustomer with ``token`` gets over 8 new connections (spread over both workers)."""
        codes = set()
        for _ in range(8):
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                try:
                    registry_service_pb2_grpc.RegistryServiceStub(ch).GetCustomer(
                        registry_service_pb2.GetCustomerRequest(name="customers/nobody"), timeout=10,
                        metadata=(("authorization", f"Bearer {token}"),))
                except grpc.RpcError as error:
                    codes.add(error.code())
        return codes
    try:
        wait_for("serving from two workers", lambda: log_path.read_text().count('"message": "serving"') == 2)
        assert answers("token-old") == {grpc.StatusCode.NOT_FOUND}
        before = os.stat(path)
        with open(path, "r+") as rewrite:  # in place: same inode, same size
            rewrite.write(tokens_file(revoked="token-new", kept="token-ops"))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        process.send_signal(signal.SIGHUP)
        wait_for("reloaded by both workers", lambda: log_path.read_text().count('"message": "tokens reloaded"') == 2,
                 timeout=10)
        assert answers("token-old") == {grpc.StatusCode.UNAUTHENTICATED}
        assert answers("token-new") == answers("token-ops") == {grpc.StatusCode.NOT_FOUND}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("settings, named", [
    ({"listen": "nonsense"}, "listen"),
    ({"listen": "127.0.0.1:99999"}, "listen"),
    ({"health_listen": ":8081"}, "health_listen"),
])
def test_an_address_that_cannot_work_is_refused_naming_the_setting(settings, named):
    with pytest.raises(ConfigError, match=named):
        ServerConfig(**settings)


@pytest.mark.parametrize("settings, named", [
    ({"tls_cert_file": "/no/such/cert.pem", "tls_key_file": "/no/such/key.pem"}, "CVH_TLS_CERT"),
    ({"tokens_file": "/no/such/tokens.json"}, "--tokens-file"),
    ({"peer_tls_ca_file": "/no/such/ca.pem"}, "CVH_PEER_TLS_CA"),
])
def test_a_missing_file_is_refused_before_start_naming_the_setting(settings, named):
    with pytest.raises(ConfigError, match=named):
        check_before_start(ServerConfig(**settings))


def test_bad_settings_from_flags_and_environment_exit_2_without_a_traceback(tmp_path):
    cases = [(["--listen", "nonsense"], {}, "--listen"),
             (["--listen", "127.0.0.1:0"], {"CVH_MAX_WATCHERS": "abc"}, "CVH_MAX_WATCHERS"),
             (["--listen", "127.0.0.1:0"], {"CVH_TLS_CERT": str(tmp_path / "missing.pem")}, "CVH_TLS_CERT")]
    for flags, env, named in cases:
        result = subprocess.run([sys.executable, "-m", "clients.cli", "serve", *flags,
                                 "--database-url", f"sqlite:///{tmp_path / 'cvh.db'}"],
                                env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (flags, env, result.stderr)
        assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "cvh.db").exists(), "a refused configuration touches no database"
