"""A Locust ``User`` that calls gRPC services and reports every call as a Locust request.

- **Host**: ``grpc://host:port`` (plaintext), ``grpcs://host:port`` (TLS), or any gRPC target such as
  ``dns:///cvh-hierarchy:50051`` (with ``--cvh-load-balancing round_robin`` to spread calls over every
  address).
- **Options** (Locust custom arguments, also read from the environment, sent by a master to its
  workers): ``--cvh-token`` (``CVH_TOKEN``), ``--cvh-tls-ca`` (``CVH_TLS_CA``), ``--cvh-timeout``.
- **One channel per user**: each simulated user opens its own connection, as independent callers do.
  Channels do not retry: every failure counts once.
- **gevent**: Locust runs users as greenlets; gRPC's blocking calls cooperate with them once
  ``grpc.experimental.gevent.init_gevent()`` has run in the process. It runs at Locust's ``init`` event,
  which fires in every process after ``--processes`` forked (grpc's core must not be set up before a
  fork), and at the latest before the first channel.
- **Reporting**: a client interceptor times each call (a response stream until its last message) and
  fires ``environment.events.request`` with ``request_type="grpc"``, the method name (``GetPriority``),
  the time in milliseconds, the response size in bytes and the ``grpc.RpcError`` of a failed call. The
  call then raises as usual; tasks made with :func:`rpc_task` end quietly on it (it is already counted).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import grpc
from locust import User, constant, events, task

from wire.channel_options import CLIENT_CHANNEL_OPTIONS

REQUEST_TYPE = "grpc"
DEFAULT_TIMEOUT_S = 10.0

_gevent_ready = False


def init_gevent() -> None:
    """Let gRPC's blocking calls yield to other greenlets (once per process, before any channel)."""
    global _gevent_ready
    if not _gevent_ready:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _gevent_ready = True


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    init_gevent()


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--cvh-token", default="", env_var="CVH_TOKEN", metavar="TOKEN", is_secret=True,
                        help="bearer token sent with every call (env CVH_TOKEN)")
    parser.add_argument("--cvh-tls-ca", default="", env_var="CVH_TLS_CA", metavar="PEM",
                        help="CA that signed the server's certificate, for grpcs:// hosts (env CVH_TLS_CA; "
                             "default: the system's roots)")
    parser.add_argument("--cvh-tls-server-name", default="", env_var="CVH_TLS_SERVER_NAME", metavar="NAME",
                        help="name to verify the server certificate against, when it differs from the host")
    parser.add_argument("--cvh-load-balancing", default="", metavar="POLICY",
                        help="gRPC load-balancing policy of each user's channel, e.g. round_robin with a "
                             "dns:/// host (default: pick_first)")
    parser.add_argument("--cvh-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"deadline of each call (default {DEFAULT_TIMEOUT_S:g})")


def parse_host(host: str) -> tuple[str, bool]:
    """``grpc://h:p`` -> (``h:p``, plaintext); ``grpcs://h:p`` -> (``h:p``, TLS); a gRPC target as is."""
    if not host:
        raise ValueError("no host: pass --host grpc://HOST:PORT")
    for scheme, tls in (("grpc://", False), ("grpcs://", True)):
        if host.startswith(scheme):
            return host[len(scheme):].rstrip("/"), tls
    if "://" in host and not host.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        raise ValueError(f"unsupported host {host!r}: use grpc://HOST:PORT or grpcs://HOST:PORT")
    return host, False


def method_name(method: str | bytes) -> str:
    """``/cvh.hierarchy.v1.HierarchyService/GetPriority`` -> ``GetPriority``."""
    if isinstance(method, bytes):
        method = method.decode()
    return method.rsplit("/", 1)[-1]


class _Details(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, timeout: float | None, metadata) -> None:
        self.method, self.timeout, self.metadata = details.method, timeout, metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Fires Locust's request event for every call; adds the bearer token and the default deadline."""

    def __init__(self, environment, token: str = "", timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.request_event = environment.events.request
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self._names: dict[str, str] = {}

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if not self.metadata and (details.timeout is not None or self.timeout is None):
            return details
        metadata = (*(details.metadata or ()), *self.metadata) if self.metadata else details.metadata
        return _Details(details, details.timeout if details.timeout is not None else self.timeout, metadata)

    def _fire(self, method, started: float, length: int, exception: BaseException | None) -> None:
        name = self._names.get(method)
        if name is None:
            name = self._names[method] = method_name(method)
        self.request_event.fire(request_type=REQUEST_TYPE, name=name,
                                response_time=(time.perf_counter() - started) * 1000.0,
                                response_length=length, exception=exception, context={})

    def _unary_response(self, continuation, details, request_or_iterator):
        started = time.perf_counter()
        outcome = continuation(self._details(details), request_or_iterator)
        exception = outcome.exception()
        self._fire(details.method, started, 0 if exception else outcome.result().ByteSize(), exception)
        return outcome  # the stub's .result() raises the error of a failed call

    def _stream_response(self, continuation, details, request_or_iterator):
        started = time.perf_counter()
        responses = []
        try:
            responses.extend(continuation(self._details(details), request_or_iterator))
        except grpc.RpcError as error:
            self._fire(details.method, started, 0, error)
            raise
        self._fire(details.method, started, sum(r.ByteSize() for r in responses), None)
        return iter(responses)

    intercept_unary_unary = intercept_stream_unary = _unary_response
    intercept_unary_stream = intercept_stream_stream = _stream_response


def rpc_task(function=None, *, weight: int = 1):
    """A Locust task whose failed gRPC calls, already counted by the interceptor, end it quietly
    instead of logging a traceback per failure. ``@rpc_task`` or ``@rpc_task(weight=3)``."""
    def decorate(body):
        @functools.wraps(body)
        def run(user, *args, **kwargs):
            try:
                return body(user, *args, **kwargs)
            except grpc.RpcError:
                return None
        return task(weight)(run)
    return decorate(function) if function is not None else decorate


def open_channel(host: str, options=None) -> grpc.Channel:
    """A channel to ``host`` (see :func:`parse_host`) with the TLS and balancing of the parsed Locust
    ``options``; no retries, so every failure counts once. It reports nothing to Locust by itself."""
    init_gevent()
    target, tls = parse_host(host)
    channel_options = [*CLIENT_CHANNEL_OPTIONS, ("grpc.enable_retries", 0)]
    balancing = getattr(options, "cvh_load_balancing", "")
    if balancing:
        channel_options.append(("grpc.service_config", json.dumps({"loadBalancingConfig": [{balancing: {}}]})))
    ca = getattr(options, "cvh_tls_ca", "")
    if not (tls or ca):
        return grpc.insecure_channel(target, channel_options)
    server_name = getattr(options, "cvh_tls_server_name", "")
    if server_name:
        channel_options.append(("grpc.ssl_target_name_override", server_name))
    root = Path(ca).read_bytes() if ca else None  # None: the system's roots
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root), channel_options)


def token_metadata(options) -> tuple[tuple[str, str], ...]:
    token = getattr(options, "cvh_token", "")
    return (("authorization", f"Bearer {token}"),) if token else ()


class GrpcUser(User):
    """A user with its own channel to ``host``; subclasses make their stubs in :meth:`make_stubs`.
    Calls made through ``self.channel`` are reported to Locust."""

    abstract = True
    # A closed loop: each user calls again as soon as it is answered. Subclasses may set a think time.
    wait_time = constant(0)

    def __init__(self, environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        self.raw_channel = open_channel(self.host or environment.host or "", options)
        interceptor = LocustInterceptor(environment, getattr(options, "cvh_token", ""),
                                        getattr(options, "cvh_timeout", DEFAULT_TIMEOUT_S))
        self.channel = grpc.intercept_channel(self.raw_channel, interceptor)
        self.make_stubs(self.channel)

    def make_stubs(self, channel: grpc.Channel) -> None:
        """Create the stubs this user calls (override)."""

    def on_stop(self) -> None:
        self.raw_channel.close()
