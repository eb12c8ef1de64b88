"""Server interceptors: error mapping, metrics and logging, written once for every service."""

from __future__ import annotations

import inspect
import logging
import time

import grpc
from prometheus_client import Counter, Histogram
from sqlalchemy import exc as sa_exc

from services.common.errors import ServiceError, resource_exhausted, unavailable
from services.common.streams import StreamTerms, stream_terms

log = logging.getLogger("cvh.rpc")

RPC_COUNT = Counter("cvh_rpc_total", "RPCs handled, by method and status code", ["method", "code"])
RPC_LATENCY = Histogram("cvh_rpc_latency_seconds", "Time to handle an RPC, by method", ["method"],
                        buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))


def wrap_handler(handler: grpc.RpcMethodHandler, wrap_unary, wrap_streaming) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped: ``wrap_unary`` for single responses,
    ``wrap_streaming`` (which must return an async generator function) for response streams."""
    kinds = ((handler.unary_unary, grpc.unary_unary_rpc_method_handler, wrap_unary),
             (handler.unary_stream, grpc.unary_stream_rpc_method_handler, wrap_streaming),
             (handler.stream_unary, grpc.stream_unary_rpc_method_handler, wrap_unary),
             (handler.stream_stream, grpc.stream_stream_rpc_method_handler, wrap_streaming))
    for behavior, make, wrap in kinds:
        if behavior:
            return make(wrap(behavior), handler.request_deserializer, handler.response_serializer)
    raise ValueError("handler without behaviour")


def _lost_to_a_concurrent_write(error: Exception) -> bool:
    """Whether PostgreSQL rolled the transaction back because of a concurrent one: a serialization failure or
    a deadlock (SQLSTATE class 40), or a unique or foreign key violation (23505, 23503), which the registry's
    tree lock leaves only to writers that skip it (a replica of an older release, SQL by hand)."""
    state = _sqlstate(error)
    return isinstance(error, sa_exc.DBAPIError) and (state.startswith("40") or state in ("23505", "23503"))


def _sqlstate(error: Exception) -> str:
    """PostgreSQL's SQLSTATE of a driver error wrapped by SQLAlchemy; empty for anything else."""
    return str(getattr(getattr(error, "orig", None), "sqlstate", None) or "")


def _as_service_error(error: Exception) -> ServiceError | None:
    """The caller-facing form of an expected failure; None for a bug."""
    if isinstance(error, ServiceError):
        return error
    if _lost_to_a_concurrent_write(error):
        return ServiceError(grpc.StatusCode.ABORTED, "this write conflicted with a concurrent one and was rolled "
                            "back (for an import: this message; the ones before it are committed); retry it",
                            "CONCURRENT_WRITE")
    if isinstance(error, sa_exc.TimeoutError):  # every pooled connection stayed busy for the pool's timeout
        return unavailable("every database connection of this server is busy; retry later", "DATABASE_BUSY")
    if _sqlstate(error) == "55P03":  # lock_timeout: another writer held the lock this write waited for
        return unavailable("this write waited too long for another writer's lock (a long import?); nothing "
                           "was written, retry later", "DATABASE_BUSY")
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError) or (
            isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated):
        return unavailable("the database is unavailable; retry later")
    return None


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Maps ServiceError (and lost databases) to statuses with details; counts and times every RPC."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_handler(handler, lambda b: self._unary(b, method), lambda b: self._streaming(b, method))

    def _unary(self, behavior, method):
        async def wrapper(request, context):
            started = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, context)
            except Exception as error:
                status = _status_for(error, method)
                if status is None:
                    raise
                code = status.code.name
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                _observe(method, code, started, context)
        return wrapper

    def _streaming(self, behavior, method):
        async def wrapper(request, context):
            started = time.perf_counter()
            code = "OK"
            try:
                responses = behavior(request, context)
                if inspect.isawaitable(responses):  # a handler that sends with context.write (health's Watch)
                    await responses
                    return
                async for response in responses:
                    yield response
            except Exception as error:
                status = _status_for(error, method)
                if status is None:
                    raise
                code = status.code.name
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                _observe(method, code, started, context)
        return wrapper


def _status_for(error: Exception, method: str) -> grpc.Status | None:
    """The status to answer with; None when the handler already aborted."""
    if isinstance(error, grpc.aio.AbortError):
        return None
    expected = _as_service_error(error)
    if expected is None:
        log.exception("unexpected error in %s", method)
        expected = ServiceError(grpc.StatusCode.INTERNAL,
                                f"internal error in {method}; the server log has details", "INTERNAL")
    elif (expected.code == grpc.StatusCode.UNAVAILABLE and expected.reason != "SHUTTING_DOWN"
          or expected.reason == "CONCURRENT_WRITE"):  # the database error itself goes to the log
        log.warning("%s: %s (%s)", method, expected.message, error)
    return expected.to_status()


def _observe(method: str, code: str, started: float, context) -> None:
    if code == "OK" and context.code() not in (None, grpc.StatusCode.OK):
        code = getattr(context.code(), "name", str(context.code()))
    elapsed = time.perf_counter() - started
    RPC_COUNT.labels(method, code).inc()
    RPC_LATENCY.labels(method).observe(elapsed)
    log.debug("rpc", extra={"method": method, "code": code, "ms": round(elapsed * 1000, 3)})


class ConcurrencyLimit(grpc.aio.ServerInterceptor):
    """At most ``limit`` calls of the services at once; more get RESOURCE_EXHAUSTED at once, not a queue.

    grpc.aio's own ``maximum_concurrent_rpcs`` miscounts (its counter is decremented for calls it refused
    too and drifts below zero, after which it limits nothing: grpc/grpc#41531), so the count is kept here:
    one event loop runs every handler, so a plain integer suffices. Health checks and reflection are not
    counted, so probes still answer when the services are saturated.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith("/cvh."):
            return handler
        return wrap_handler(handler, self._unary, self._streaming)

    async def _enter(self, context) -> None:
        """Count the call in, or refuse it when the server is at its limit."""
        if self.active >= self.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the server is at its limit of {self.limit} concurrent calls; retry later")
        self.active += 1

    def _unary(self, behavior):
        async def wrapper(request, context):
            await self._enter(context)
            try:
                return await behavior(request, context)
            finally:
                self.active -= 1
        return wrapper

    def _streaming(self, behavior):
        async def wrapper(request, context):
            await self._enter(context)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                self.active -= 1
        return wrapper


BULK_STREAMS = frozenset({"/cvh.registry.v1.RegistryService/ExportSignalMatrix",
                          "/cvh.scoring.v1.ScoringService/StreamRunResults"})
WATCHES = frozenset({"/cvh.scoring.v1.ScoringService/WatchRuns", "/cvh.scoring.v1.ScoringService/WatchScoringRun",
                     "/cvh.hierarchy.v1.HierarchyService/WatchPriorityChanges",
                     "/cvh.registry.v1.RegistryService/WatchCustomerChanges"})


class StreamLimits(grpc.aio.ServerInterceptor):
    """Caps on long streams, so that they cannot take what short calls need.

    Bulk streams each hold a database connection for their whole snapshot: at most ``max_bulk`` at once
    (kept below the pool's size, the rest is the short calls' reserve), and each is held to ``stall_seconds``
    (services/common/streams.py). Watches hold no connection but memory and a share of each change's fan-out:
    at most ``max_watchers``. Beyond either cap: RESOURCE_EXHAUSTED at once, with the cap in the message.
    Counted on the one event loop, like ConcurrencyLimit.
    """

    def __init__(self, max_bulk: int, max_watchers: int, stall_seconds: float) -> None:
        self.max_bulk, self.max_watchers, self.stall_seconds = max_bulk, max_watchers, stall_seconds
        self.bulk = 0
        self.watchers = 0

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in BULK_STREAMS | WATCHES:
            return handler
        return wrap_handler(handler, lambda behavior: behavior,
                            self._bulk if method in BULK_STREAMS else self._watch)

    def _bulk(self, behavior):
        async def wrapper(request, context):
            if self.bulk >= self.max_bulk:
                raise resource_exhausted(
                    f"the server is at its limit of {self.max_bulk} concurrent bulk streams (ExportSignalMatrix, "
                    "StreamRunResults); retry later", "TOO_MANY_BULK_STREAMS")
            self.bulk += 1
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self.bulk -= 1
            stream_terms.set(StreamTerms(self.stall_seconds, release))  # this call's task only
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                release()
        return wrapper

    def _watch(self, behavior):
        async def wrapper(request, context):
            if self.watchers >= self.max_watchers:
                raise resource_exhausted(
                    f"the server is at its limit of {self.max_watchers} open watches (WatchRuns, WatchScoringRun, "
                    "WatchPriorityChanges, WatchCustomerChanges); retry later", "TOO_MANY_WATCHERS")
            self.watchers += 1
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                self.watchers -= 1
        return wrapper
