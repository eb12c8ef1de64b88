"""The registry served alone (no scoring, no hierarchy polling it): quicker to start, and the database work
seen on its engine is the registry's own."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from cvh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, start_server


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
