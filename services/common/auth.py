"""Who may call what: bearer tokens mapped to roles, checked once per call by one interceptor.

Tokens are configured as SHA-256 digests (a leaked config file does not leak
tokens), compared in constant time, and never logged. Roles:

- ``reader``: look-ups (priority, customers, runs, results);
- ``scorer``: scoring calls (and everything a reader may do);
- ``writer``: registry writes and telemetry (and everything a reader may do);
- ``frontline``: the people who serve customers: records their service decisions (RecordServiceDecision), and
  everything a reader may do (GetPriority first);
- ``admin``: models, runs, policies and the value hierarchy, and everything else.

Health checks and reflection need no token, so probes and tools can find the server.

The tokens file is read again when it changes (its size, time or inode, looked at every few seconds) and on
SIGHUP, so a revoked token stops working without a restart. A file that cannot be read leaves the previous
tokens in force, and says so in the log. Refused calls go to the ``cvh.audit`` log with the caller's name
when the token is known.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.errors import ServiceError
from services.common.interceptors import wrap_handler

READER, SCORER, WRITER, FRONTLINE, ADMIN = "reader", "scorer", "writer", "frontline", "admin"
ROLES = (READER, SCORER, WRITER, FRONTLINE, ADMIN)
# A role may do what the roles it includes may do.
INCLUDES = {READER: {READER}, SCORER: {READER, SCORER}, WRITER: {READER, WRITER}, FRONTLINE: {READER, FRONTLINE},
            ADMIN: set(ROLES)}

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")

_REGISTRY = "/cvh.registry.v1.RegistryService/"
_SCORING = "/cvh.scoring.v1.ScoringService/"
_HIERARCHY = "/cvh.hierarchy.v1.HierarchyService/"
_ADOPTION = "/cvh.adoption.v1.AdoptionService/"

# The role each RPC needs. A test checks that every RPC of every service is listed.
REQUIRED_ROLE = {
    **{_REGISTRY + m: READER for m in (
        "GetCustomer", "BatchGetCustomers", "ListCustomers", "ListSignalHistory", "ListLifecycleHistory",
        "ListTeamHistory", "GetOrganizationTeam", "ListPeople", "ExportSignalMatrix",
        "WatchCustomerChanges")},
    **{_REGISTRY + m: WRITER for m in (
        "CreateCustomer", "UpdateCustomer", "DeleteCustomer", "ImportCustomers", "RecordSignals", "UpdatePerson")},
    _REGISTRY + "UpdateOrganizationTeam": ADMIN,
    **{_SCORING + m: READER for m in (
        "GetModel", "ListModels", "GetScoringRun", "ListScoringRuns", "WatchScoringRun", "WatchRuns",
        "StreamRunResults", "ListRunResults", "GetTierMovement", "GetOutcomeReport", "GetCustomerHistory")},
    **{_SCORING + m: SCORER for m in ("ScoreCustomer", "ScoreSignals", "ScoreBatch")},
    **{_SCORING + m: ADMIN for m in (
        "CreateModel", "ActivateModel", "StartScoringRun", "CancelScoringRun", "ImportRunResults")},
    **{_HIERARCHY + m: READER for m in (
        "GetPriority", "BatchGetPriority", "RankCustomers", "ListTierMembers", "GetHierarchySummary",
        "GetAccountTree", "GetTierPolicy", "WatchPriorityChanges", "GetSnapshotInfo", "ListBadProfits",
        "GetAuthorityUsage", "GetBookOfBusiness", "ListPortfolios")},
    _HIERARCHY + "RecordServiceDecision": FRONTLINE,
    _HIERARCHY + "SetTierPolicy": ADMIN,
    **{_ADOPTION + m: READER for m in ("GetValueMapVersion", "ListValueMapVersions", "DiffValueMapVersions",
                                       "GetCustomerAdoption", "GetNodeAdoption", "ListNodeCustomers",
                                       "RecommendUseCases")},
    _ADOPTION + "RecordTelemetry": WRITER,
    **{_ADOPTION + m: ADMIN for m in ("CreateValueMapVersion", "ActivateValueMapVersion")},
}

# The caller of the RPC being handled, for audit logs and "creator" fields.
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("current_caller", default="anonymous")

audit_log = logging.getLogger("cvh.audit")
log = logging.getLogger("cvh.auth")

# How often the tokens file is looked at for changes.
TOKENS_POLL_SECONDS = 3.0


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]


class TokenTable:
    """Token digests to principals. Empty means authentication is off."""

    def __init__(self, principals: dict[str, Principal], path: Path | None = None, stamp: tuple | None = None) -> None:
        self._by_digest = principals
        # The file it was read from, and what that file looked like then (AuthInterceptor.reload reads it again).
        self.path = path
        self.stamp = stamp

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: str | Path) -> "TokenTable":
        """Read ``{"tokens": [{"name": ..., "sha256": ..., "roles": [...]}]}``."""
        stamp = _stamp(Path(path))
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
        # The stamp from before the read: a change during it is read again at the next look.
        return cls(principals, Path(path), stamp)

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


def _stamp(path: Path) -> tuple | None:
    """What tells a changed file: inode (a file replaced, as Kubernetes updates a mounted secret), size and
    modification time; None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def bearer_token(authorization: str) -> str | None:
    """The token of an ``authorization`` value ``Bearer <token>``: the scheme in any case, then one or more
    spaces (RFC 7235 ``credentials = auth-scheme [ 1*SP token68 ]``; RFC 6750's ``"Bearer" 1*SP b64token``);
    whitespace around the value is not part of it (RFC 7230 OWS). None for any other form."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.lstrip(" ")
    return token if scheme.lower() == "bearer" and token else None


def may_call(principal: Principal, method: str) -> bool:
    needed = REQUIRED_ROLE.get(method, ADMIN)
    return any(needed in INCLUDES[role] for role in principal.roles)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a known bearer token, PERMISSION_DENIED without the RPC's role."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens
        self._watcher: asyncio.Task | None = None

    def reload(self, force: bool = True) -> bool:
        """Read the tokens file again (unless ``force`` is False and it has not changed); True when the new
        tokens are in force. A file that cannot be read keeps the tokens in force, and is logged."""
        path = self.tokens.path
        if path is None or not force and _stamp(path) == self.tokens.stamp:
            return False
        try:
            fresh = TokenTable.load(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            self.tokens.stamp = _stamp(path)  # told once per change, not at every look
            log.error("the tokens file was not reloaded; the previous tokens stay in force",
                      extra={"path": str(path), "error": f"{type(error).__name__}: {error}"})
            return False
        self.tokens = fresh
        log.info("tokens reloaded", extra={"path": str(path), "tokens": len(fresh)})
        return True

    async def start_background(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop_background(self) -> None:
        if self._watcher:
            self._watcher.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(TOKENS_POLL_SECONDS)
            self.reload(force=False)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        token = bearer_token(metadata.get("authorization", ""))
        principal = self.tokens.identify(token) if token else None
        if principal is None:
            _audit_refusal("unknown" if token else "no token", method, grpc.StatusCode.UNAUTHENTICATED)
            return _refusal(grpc.StatusCode.UNAUTHENTICATED,
                            "a valid bearer token is required: send metadata 'authorization: Bearer <token>'",
                            "TOKEN_REQUIRED")
        if not may_call(principal, method):
            needed = REQUIRED_ROLE.get(method, ADMIN)
            _audit_refusal(principal.name, method, grpc.StatusCode.PERMISSION_DENIED)
            return _refusal(grpc.StatusCode.PERMISSION_DENIED,
                            f"{principal.name} may not call {method}: it needs the {needed} role",
                            "ROLE_REQUIRED")
        handler = await continuation(handler_call_details)
        return _as_caller(handler, principal.name, method) if handler else None


def _audit_refusal(caller: str, method: str, code: grpc.StatusCode) -> None:
    """A refused call in the audit log: the caller's name when its token is known, never the token."""
    audit_log.warning("refused", extra={"caller": caller, "method": method, "code": code.name})


def _refusal(code: grpc.StatusCode, message: str, reason: str) -> grpc.RpcMethodHandler:
    status = ServiceError(code, message, reason).to_status()

    async def refuse(request, context):
        await context.abort(status.code, status.details, status.trailing_metadata)

    # The request is never parsed: a refused caller costs no deserialisation.
    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=None, response_serializer=None)


def _as_caller(handler: grpc.RpcMethodHandler, name: str, method: str) -> grpc.RpcMethodHandler:
    """Run the handler with ``current_caller`` set, and audit writes (who, what, when, outcome)."""
    writes = REQUIRED_ROLE.get(method) in (WRITER, FRONTLINE, ADMIN)

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
