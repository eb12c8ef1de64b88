"""Who may call what: bearer tokens mapped to roles, checked once per call by one interceptor.

Tokens are configured as SHA-256 digests (a leaked config file does not leak
tokens), compared in constant time, and never logged. Roles:

- ``reader``: look-ups (priority, customers, runs, results);
- ``scorer``: scoring calls (and everything a reader may do);
- ``writer``: registry writes (and everything a reader may do);
- ``admin``: models, runs and policies, and everything else.

Health checks and reflection need no token, so probes and tools can find the server.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.errors import ServiceError
from services.common.interceptors import wrap_handler

READER, SCORER, WRITER, ADMIN = "reader", "scorer", "writer", "admin"
ROLES = (READER, SCORER, WRITER, ADMIN)
# A role may do what the roles it includes may do.
INCLUDES = {READER: {READER}, SCORER: {READER, SCORER}, WRITER: {READER, WRITER}, ADMIN: set(ROLES)}

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")

_REGISTRY = "/cvh.registry.v1.RegistryService/"
_SCORING = "/cvh.scoring.v1.ScoringService/"
_HIERARCHY = "/cvh.hierarchy.v1.HierarchyService/"

# The role each RPC needs. A test checks that every RPC of every service is listed.
REQUIRED_ROLE = {
    **{_REGISTRY + m: READER for m in (
        "GetCustomer", "BatchGetCustomers", "ListCustomers", "ListSignalHistory", "ExportSignalMatrix")},
    **{_REGISTRY + m: WRITER for m in (
        "CreateCustomer", "UpdateCustomer", "DeleteCustomer", "ImportCustomers", "RecordSignals")},
    **{_SCORING + m: READER for m in (
        "GetModel", "ListModels", "GetScoringRun", "ListScoringRuns", "WatchScoringRun", "WatchRuns",
        "StreamRunResults", "ListRunResults", "GetTierMovement")},
    **{_SCORING + m: SCORER for m in ("ScoreCustomer", "ScoreSignals", "ScoreBatch")},
    **{_SCORING + m: ADMIN for m in ("CreateModel", "ActivateModel", "StartScoringRun", "CancelScoringRun")},
    **{_HIERARCHY + m: READER for m in (
        "GetPriority", "BatchGetPriority", "RankCustomers", "ListTierMembers", "GetHierarchySummary",
        "GetAccountTree", "GetTierPolicy", "WatchPriorityChanges", "GetSnapshotInfo")},
    _HIERARCHY + "SetTierPolicy": ADMIN,
}

# The caller of the RPC being handled, for audit logs and "creator" fields.
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("current_caller", default="anonymous")

audit_log = logging.getLogger("cvh.audit")


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]


class TokenTable:
    """Token digests to principals. Empty means authentication is off."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._by_digest = principals

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    @classmethod
    def load(cls, path: str | Path) -> "TokenTable":
        """Read ``{"tokens": [{"name": ..., "sha256": ..., "roles": [...]}]}``."""
        document = json.loads(Path(path).read_text())
        principals = {}
        for i, entry in enumerate(document.get("tokens", [])):
            roles = frozenset(entry.get("roles", []))
            unknown = roles - set(ROLES)
            if unknown or not roles:
                raise ValueError(f"{path}: tokens[{i}].roles must name some of {', '.join(ROLES)}")
            digest = entry["sha256"].lower()
            if len(digest) != 64:
                raise ValueError(f"{path}: tokens[{i}].sha256 must be a hex SHA-256 digest of the token")
            principals[digest] = Principal(entry["name"], roles)
        return cls(principals)

    @classmethod
    def from_tokens(cls, tokens: dict[str, tuple[str, set[str]]]) -> "TokenTable":
        """From plain tokens: {token: (name, roles)} (for tests and tools)."""
        return cls({digest(t): Principal(name, frozenset(roles)) for t, (name, roles) in tokens.items()})

    def identify(self, token: str) -> Principal | None:
        presented = digest(token)
        found = None
        for known, principal in self._by_digest.items():  # constant time: no early exit
            if hmac.compare_digest(known, presented):
                found = principal
        return found


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def may_call(principal: Principal, method: str) -> bool:
    needed = REQUIRED_ROLE.get(method, ADMIN)
    return any(needed in INCLUDES[role] for role in principal.roles)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a known bearer token, PERMISSION_DENIED without the RPC's role."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        principal = self.tokens.identify(token) if scheme.lower() == "bearer" and token else None
        if principal is None:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED,
                            "a valid bearer token is required: send metadata 'authorization: Bearer <token>'",
                            "TOKEN_REQUIRED")
        if not may_call(principal, method):
            needed = REQUIRED_ROLE.get(method, ADMIN)
            return _refusal(grpc.StatusCode.PERMISSION_DENIED,
                            f"{principal.name} may not call {method}: it needs the {needed} role",
                            "ROLE_REQUIRED")
        handler = await continuation(handler_call_details)
        return _as_caller(handler, principal.name, method) if handler else None


def _refusal(code: grpc.StatusCode, message: str, reason: str) -> grpc.RpcMethodHandler:
    status = ServiceError(code, message, reason).to_status()

    async def refuse(request, context):
        await context.abort(status.code, status.details, status.trailing_metadata)

    # The request is never parsed: a refused caller costs no deserialisation.
    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=None, response_serializer=None)


def _as_caller(handler: grpc.RpcMethodHandler, name: str, method: str) -> grpc.RpcMethodHandler:
    """Run the handler with ``current_caller`` set, and audit writes (who, what, when, outcome)."""
    writes = REQUIRED_ROLE.get(method) in (WRITER, ADMIN)

    def unary(behavior):
        async def wrapper(request, context):
            current_caller.set(name)
            try:
                return await behavior(request, context)
            finally:
                if writes:
                    audit_log.info("write", extra={"caller": name, "method": method,
                                                   "code": getattr(context.code(), "name", None) or "OK"})
        return wrapper

    def streaming(behavior):
        async def wrapper(request, context):
            current_caller.set(name)
            async for response in behavior(request, context):
                yield response
        return wrapper

    return wrap_handler(handler, unary, streaming)
