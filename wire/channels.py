"""Channels to the suite: TLS, bearer tokens, retries of UNAVAILABLE and keepalive, set up once."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from cvh.hierarchy.v1 import hierarchy_service_pb2
from cvh.registry.v1 import registry_service_pb2
from cvh.scoring.v1 import scoring_service_pb2
from wire.channel_options import CLIENT_CHANNEL_OPTIONS

DEFAULT_SERVER = "127.0.0.1:50051"


def _unary_methods() -> list[dict[str, str]]:
    services = [module.DESCRIPTOR.services_by_name[name] for module, name in (
        (registry_service_pb2, "RegistryService"), (scoring_service_pb2, "ScoringService"),
        (hierarchy_service_pb2, "HierarchyService"), (health_pb2, "Health"))]
    return [{"service": service.full_name, "method": method.name} for service in services
            for method in service.methods if not (method.client_streaming or method.server_streaming)]


# Unary calls retry UNAVAILABLE (server restarting, database briefly away) with backoff. The servers
# answer UNAVAILABLE only when nothing was written, so a retried write is not applied twice. Streams are
# not retried: a retried stream whose server went away was seen to hang (grpcio 1.85), and the callers
# of watch streams reconnect by themselves.
SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": _unary_methods(),
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "2s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})


def channel_options(load_balancing: str = "") -> list[tuple[str, object]]:
    """Options for a channel to the suite; ``round_robin`` spreads calls over every address of a
    headless Service (see deploy/README.md)."""
    config = json.loads(SERVICE_CONFIG)
    if load_balancing:
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    # Message sizes and keepalive are the pair of the servers' (wire/channel_options.py).
    return [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1), *CLIENT_CHANNEL_OPTIONS]


@dataclass(frozen=True)
class Tls:
    """TLS settings: the CA that signed the server's certificate (None: the system's roots), and a
    client certificate and key for mutual TLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Name to verify the server certificate against, when it differs from the target's host.
    server_name: str | None = None

    @classmethod
    def from_env(cls) -> "Tls | None":
        """CVH_TLS_CA / CVH_TLS_CLIENT_CERT / CVH_TLS_CLIENT_KEY; None when CVH_TLS is unset and no CA is given."""
        env = os.environ
        if not (env.get("CVH_TLS") in ("1", "true", "yes") or env.get("CVH_TLS_CA")):
            return None
        return cls(env.get("CVH_TLS_CA") or None, env.get("CVH_TLS_CLIENT_CERT") or None,
                   env.get("CVH_TLS_CLIENT_KEY") or None, env.get("CVH_TLS_SERVER_NAME") or None)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path):
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


def open_channel(target: str = DEFAULT_SERVER, *, tls: Tls | None = None, token: str | None = None,
                 load_balancing: str = "") -> grpc.Channel:
    """A channel to ``target`` (``host:port`` or ``dns:///name:port``) that sends ``token`` as a bearer
    token on every call."""
    options = channel_options(load_balancing)
    if tls is not None:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(target, tls.credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if token:
        channel = grpc.intercept_channel(channel, BearerToken(token))
    return channel


def open_aio_channel(target: str, *, tls: Tls | None = None, token: str | None = None) -> grpc.aio.Channel:
    """The asyncio twin of :func:`open_channel`, for services calling each other."""
    options = channel_options()
    interceptors = aio_bearer_token(token) if token else None
    if tls is not None:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.aio.secure_channel(target, tls.credentials(), options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def _with_token(details, metadata: tuple):
    """Call details with the authorization header added (details are a namedtuple-like object)."""
    return _Details(details.method, details.timeout, [*(details.metadata or ()), *metadata],
                    details.credentials, getattr(details, "wait_for_ready", None),
                    getattr(details, "compression", None))


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call. Metadata rather than call credentials, so it
    also works over plaintext on loopback."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _call(self, continuation, details, request):
        return continuation(_with_token(details, self._metadata), request)

    intercept_unary_unary = intercept_unary_stream = _call
    intercept_stream_unary = intercept_stream_stream = _call


class _AioBearerToken:
    """:class:`BearerToken` for grpc.aio channels. A grpc.aio channel files each interceptor under the
    first call kind it implements, so each kind gets its own class (see :func:`aio_bearer_token`)."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    async def _call(self, continuation, details, request):
        return await continuation(_with_aio_token(details, self._metadata), request)


class _AioUnaryUnary(_AioBearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioBearerToken._call


class _AioUnaryStream(_AioBearerToken, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioBearerToken._call


class _AioStreamUnary(_AioBearerToken, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AioBearerToken._call


class _AioStreamStream(_AioBearerToken, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AioBearerToken._call


def aio_bearer_token(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding ``authorization: Bearer <token>`` to every kind of call on a grpc.aio channel."""
    return [kind(token) for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]


def _with_aio_token(details, metadata: tuple):
    merged = grpc.aio.Metadata(*(details.metadata or ()), *metadata)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, merged, details.credentials,
                                      details.wait_for_ready)
