"""The other services a service calls: where they are and how to present itself to them."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from wire.channels import Tls, open_aio_channel


@dataclass(frozen=True)
class Peer:
    """A service reached over gRPC. With auth on, ``token`` needs the ``reader`` role (exports, runs,
    results); with TLS, ``tls`` verifies the peer and may present this server's certificate (mTLS)."""

    target: str
    tls: Tls | None = None
    token: str | None = None

    def channel(self) -> grpc.aio.Channel:
        """A new channel; open one per long-lived use and close it (``async with``)."""
        return open_aio_channel(self.target, tls=self.tls, token=self.token)

    def __str__(self) -> str:
        return self.target
