"""Server bootstrap: one grpc.aio server with the chosen services, health, reflection and metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server
from sqlalchemy.engine import Engine

from cvh.adoption.v1 import adoption_service_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2
from cvh.registry.v1 import registry_service_pb2
from cvh.scoring.v1 import scoring_service_pb2
from services.common import addresses, db, reflection
from services.common.addresses import AddressInUse
from services.common.auth import AuthInterceptor, TokenTable
from services.common.config import ConfigError, ServerConfig, check_before_start
from services.common.interceptors import ConcurrencyLimit, ServiceInterceptor, StreamLimits
from services.common.peers import Peer
from wire.channel_options import server_channel_options
from wire.channels import Tls

log = logging.getLogger("cvh.server")

SERVICE_DESCRIPTORS = {
    "registry": registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    "scoring": scoring_service_pb2.DESCRIPTOR.services_by_name["ScoringService"],
    "hierarchy": hierarchy_service_pb2.DESCRIPTOR.services_by_name["HierarchyService"],
    "adoption": adoption_service_pb2.DESCRIPTOR.services_by_name["AdoptionService"],
}


@dataclass
class Suite:
    """A built server: start it, then stop it gracefully."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    engine: Engine
    service_names: list[str]
    # Servicers with background work (start_background / stop_background), e.g. the snapshot loader.
    background: list = field(default_factory=list)
    # The plaintext health-only server (ServerConfig.health_listen) and its port.
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    # Servicers with streams that wait for events (begin_shutdown ends them at once).
    watchers: list = field(default_factory=list)
    # Services that are NOT_SERVING until their event is set (the hierarchy: its first snapshot is loaded).
    readiness: dict[str, asyncio.Event] = field(default_factory=dict)
    _ready_task: asyncio.Task | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.health_server:
            await self.health_server.start()
        for servicer in self.background:
            await servicer.start_background()
        for name in self.service_names:
            if name not in self.readiness:
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ready_task = asyncio.get_running_loop().create_task(self._serving_when_ready())
        if not self.readiness:
            await self._ready_task

    async def _serving_when_ready(self) -> None:
        """Each waiting service SERVING once ready; "" once all are (after a shutdown began, set is a no-op)."""
        async def serving(name: str, ready: asyncio.Event) -> None:
            await ready.wait()
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await asyncio.gather(*(serving(name, ready) for name, ready in self.readiness.items()))
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def reload(self) -> None:
        """SIGHUP: read again what may change without a restart (the tokens file)."""
        for part in self.background:
            if hasattr(part, "reload"):
                part.reload()

    async def stop(self, grace: float) -> None:
        """Refuse new calls (health NOT_SERVING), let in-flight ones finish within ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        if self._ready_task:
            self._ready_task.cancel()
        for servicer in self.watchers:
            servicer.begin_shutdown()
        for servicer in self.background:
            await servicer.stop_background()
        await self.server.stop(grace)
        if self.health_server:
            await self.health_server.stop(0)
        self.engine.dispose()


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Message size and keepalive: the pair of the clients' options (wire/channel_options.py)."""
    options = server_channel_options(config.max_message_bytes)
    if config.max_connection_age_seconds:
        options += [("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_seconds * 1000))]
    return options


def create_server(config: ServerConfig) -> Suite:
    """Build (not start) a server for ``config.services``; binds now, so ``port`` is known. An address
    already served is refused (:class:`AddressInUse`) before the database is touched."""
    check_before_start(config)
    if not config.share_port:
        addresses.ensure_free(config.listen)
    if config.health_listen:
        addresses.ensure_free(config.health_listen, "--health-listen")
    interceptors = [ServiceInterceptor(),
                    StreamLimits(config.max_bulk_streams, config.max_watchers, config.stream_stall_seconds)]
    if config.max_concurrent_rpcs:
        interceptors.append(ConcurrencyLimit(config.max_concurrent_rpcs))
    if config.tokens_file:
        interceptors.insert(0, AuthInterceptor(TokenTable.load(config.tokens_file)))
    engine = db.create_engine(config.database_url, config.database_pool_size)
    if config.migrate:
        db.upgrade(engine)
    elif problem := db.schema_problem(engine):
        raise ConfigError(f"{problem} (this server does not migrate: --no-migrate / CVH_MIGRATE=0)")
    server = grpc.aio.server(interceptors=interceptors,
                             options=[*server_options(config), addresses.grpc_option(config.share_port)])
    names, servicers = [], {}
    for service in config.services:
        servicers[service] = _add_service(service, server, engine, config)
        names.append(SERVICE_DESCRIPTORS[service].full_name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server, names)
    port = bind(server, config.listen, server_credentials(config) if config.tls_cert_file else None)
    # Services reach each other through their targets; in one process, through this very port.
    host = config.listen.rsplit(":", 1)[0]
    own = f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]', '::') else host}:{port}"
    registry, scoring = peer(config.registry_target or own, config), peer(config.scoring_target or own, config)
    # A registry served here is read directly (no gRPC to this very port, no serializing): online scoring's
    # signals, a run's export, the hierarchy's account base.
    local_registry = None if config.registry_target else servicers.get("registry")
    if "scoring" in servicers:
        servicers["scoring"].runs.registry = registry
        servicers["scoring"].local_registry = servicers["scoring"].runs.local_registry = local_registry
    if "hierarchy" in servicers:
        servicers["hierarchy"].registry, servicers["hierarchy"].scoring = registry, scoring
        servicers["hierarchy"].local_registry = local_registry
        # Live re-scores asked of the scoring servicer of this process directly (no gRPC, no scorer token).
        servicers["hierarchy"].local_scoring = None if config.scoring_target else servicers.get("scoring")
    if "adoption" in servicers:
        servicers["adoption"].registry, servicers["adoption"].local_registry = registry, local_registry
        # Value tiers: the hierarchy servicer here, else one at CVH_HIERARCHY_TARGET, else none.
        servicers["adoption"].local_hierarchy = None if config.hierarchy_target else servicers.get("hierarchy")
        servicers["adoption"].hierarchy = peer(config.hierarchy_target, config) if config.hierarchy_target else None
    # Background work: servicers' (the snapshot loader, the run sweeper) and the tokens file's watcher.
    background = [s for s in [*servicers.values(), *interceptors] if hasattr(s, "start_background")]
    suite = Suite(server, port, health_servicer, engine, names, background,
                  watchers=[s for s in servicers.values() if hasattr(s, "begin_shutdown")],
                  readiness={SERVICE_DESCRIPTORS[n].full_name: s.ready for n, s in servicers.items()
                             if hasattr(s, "ready")})
    if config.health_listen:
        suite.health_server, suite.health_port = health_only_server(config.health_listen, health_servicer)
    return suite


def health_only_server(listen: str, health_servicer: health.aio.HealthServicer) -> tuple[grpc.aio.Server, int]:
    """A plaintext server answering only grpc.health.v1 from the main server's health servicer: what
    Kubernetes' native gRPC probes can reach while the main port serves TLS. It reveals nothing but status."""
    server = grpc.aio.server(options=[addresses.grpc_option(share_port=False)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, bind(server, listen, None, "--health-listen")


def bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None,
         flag: str = "--listen") -> int:
    """Add ``listen`` to ``server``; the port bound. gRPC reports a failed bind as a RuntimeError (older
    versions: port 0); both become :class:`AddressInUse` naming the address."""
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise addresses.bind_refused(listen, flag)
    return port


def peer(target: str, config: ServerConfig) -> Peer:
    """How this server reaches another service at ``target``."""
    tls = None
    if config.peer_tls_ca_file:
        tls = Tls(config.peer_tls_ca_file, config.tls_cert_file or None, config.tls_key_file or None,
                  config.peer_tls_server_name or None)
    return Peer(target, tls, config.peer_token or None)


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    key, chain = Path(config.tls_key_file).read_bytes(), Path(config.tls_cert_file).read_bytes()
    client_ca = Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _add_service(service: str, server: grpc.aio.Server, engine: Engine, config: ServerConfig):
    if service == "registry":
        from services.registry.servicer import add_to_server
        return add_to_server(server, engine, config.feed_retention_seconds)
    if service == "scoring":
        from services.scoring.servicer import add_to_server
        return add_to_server(server, engine)
    if service == "adoption":
        from services.adoption.servicer import add_to_server
        return add_to_server(server, engine, config.telemetry_retention_days)
    from services.hierarchy.servicer import add_to_server
    return add_to_server(server, engine, config.snapshot_dir)


async def serve(config: ServerConfig, on_started=None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; SIGHUP reloads the tokens file. ``on_started(suite)``
    is called once the server serves (services/common/workers.py uses it to start the next worker process)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its handler is set: starting up, SIGHUP must not kill
    suite = create_server(config)
    await suite.start()
    # What start-up made lives as long as the process: keep it out of the collector's full passes, which
    # otherwise walk it again and again while an import allocates its rows (a 1M import: 43k -> 62k rows/s).
    gc.freeze()
    if on_started is not None:
        on_started(suite)
    if config.metrics_port:
        start_http_server(config.metrics_port)
    log.info("serving", extra={"services": config.services, "listen": config.listen, "port": suite.port,
                               "database": db.redacted_url(config.database_url), "metrics_port": config.metrics_port})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, suite.reload)
    await stopping.wait()
    log.info("shutting down", extra={"grace_seconds": config.grace_seconds})
    await suite.stop(config.grace_seconds)


def exit_code(start: Callable[[], int | None], command: str) -> int:
    """Run ``start`` (serving until stopped) as a command: its exit code, 0 when it returns none; a refused
    configuration (2) or an address that cannot be bound, e.g. one already served (1), is told on stderr with
    what to do."""
    try:
        return start() or 0
    except ConfigError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    except AddressInUse as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{command}: {error}; choose another address with --listen HOST:PORT", file=sys.stderr)
        return 1
