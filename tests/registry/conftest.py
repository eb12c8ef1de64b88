"""The registry served alone (no scoring, no hierarchy polling it): quicker to start, and the database work
seen on its engine is the registry's own."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from cvh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from services.common import db
from tests.conftest import ServerThread, _empty_tables, start_server


@pytest.fixture
def registry_server(database_url) -> Iterator[ServerThread]:
    server = start_server(database_url, services=("registry",))
    yield server
    server.stop()


@pytest.fixture
def registry(registry_server) -> Iterator[pb_grpc.RegistryServiceStub]:
    """A stub over a channel with gRPC's default limits (4 MiB answers at most)."""
    with grpc.insecure_channel(registry_server.target) as channel:
        yield pb_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def registry_with_engine(request, tmp_path_factory) -> Iterator[tuple]:
    """(stub, engine): one registry per database for a whole test module; each test uses its own ids."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'cvh.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        _empty_tables(url)
    server = start_server(url, services=("registry",))
    engine = db.create_engine(url)
    with grpc.insecure_channel(server.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield pb_grpc.RegistryServiceStub(channel), engine
    engine.dispose()
    server.stop()
