"""Service errors and their mapping onto gRPC statuses with rich details (AIP-193).

Servicers raise :class:`ServiceError`; the error interceptor turns it into a
status with one ``google.rpc.ErrorInfo`` and, for bad input, one
``google.rpc.BadRequest`` naming every bad field. Nothing else maps errors.

``ErrorInfo.reason`` says what went wrong, not the status code again: it is
derived here from what the error is about, so servicers rarely name one.
``not_found("customers/x")`` is CUSTOMER_NOT_FOUND (from the collection);
a bad ``page_size`` is INVALID_PAGE_SIZE (from the request field at fault).
The reasons a caller can meet are listed in each RPC's comment in protos/
(tests/test_contracts.py checks that every reason raised is listed there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "cvh"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    # ErrorInfo.reason for this violation; empty: derived from the field (see reason_for_field).
    reason: str = ""

    @property
    def cause(self) -> str:
        return self.reason or reason_for_field(self.field)


def reason_for_field(field_path: str) -> str:
    """INVALID_ and the request field at fault: ``page_size`` -> INVALID_PAGE_SIZE,
    ``customer.signals[nps].value`` -> INVALID_CUSTOMER, ``rows[3].parent`` -> INVALID_ROWS."""
    top = re.split(r"[.\[]", field_path, maxsplit=1)[0]
    return "INVALID_" + (re.sub(r"[^A-Za-z0-9]+", "_", top).strip("_").upper() or "REQUEST")


def reason_for_resource(resource_name: str) -> str:
    """What a resource name names, as a reason prefix: customers/x -> CUSTOMER, models/m -> MODEL,
    models/m/versions/3 -> MODEL_VERSION, runs/7 -> RUN (text after the name is ignored)."""
    parts = resource_name.split(maxsplit=1)[0].split("/") if resource_name.strip() else []
    collections = [c[:-3] + "y" if c.endswith("ies") else c.removesuffix("s") for c in parts[0::2] if c]
    return "_".join(collections).upper() or "RESOURCE"


@dataclass
class ServiceError(Exception):
    """An expected failure that the caller can act on."""

    code: grpc.StatusCode
    message: str
    reason: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def invalid(cls, violations: list[FieldViolation], what: str = "request") -> "ServiceError":
        """INVALID_ARGUMENT listing every violation."""
        return Violations(violations).error(what)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def to_status(self) -> grpc.Status:
        """The status with its details, kept within what every client accepts as trailers (8 KiB): field
        names and descriptions that quote a caller's oversized input are shortened, and violations beyond
        the budget are left out (the message counts them)."""
        metadata = {key: clip(value, MAX_FIELD_CHARS) for key, value in self.metadata.items()}
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata)
        details = [_pack(info)]
        if self.violations:
            bad_request = error_details_pb2.BadRequest()
            budget = MAX_DETAILS_BYTES - info.ByteSize()
            for v in self.violations:
                item = error_details_pb2.BadRequest.FieldViolation(
                    field=clip(v.field, MAX_FIELD_CHARS), description=clip(v.description, MAX_DESCRIPTION_CHARS))
                budget -= item.ByteSize() + 4
                if budget < 0 and bad_request.field_violations:
                    break
                bad_request.field_violations.append(item)
            details.append(_pack(bad_request))
        message = clip_message(self.message)
        status = status_pb2.Status(code=self.code.value[0], message=message, details=details)
        return rpc_status.to_status(status)


# Status trailers (grpc-message, percent-encoded, and grpc-status-details-bin, base64 of the status with the
# message once more) must stay below the 8 KiB clients accept by default, or the caller sees
# RESOURCE_EXHAUSTED instead of the error. These bounds keep them near 6 KiB at most.
MAX_MESSAGE_ENCODED_BYTES = 1024
MAX_DETAILS_BYTES = 3072
MAX_FIELD_CHARS = 160
MAX_DESCRIPTION_CHARS = 400


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def clip_message(message: str) -> str:
    """``message`` cut so that its percent-encoded form (grpc-message) fits MAX_MESSAGE_ENCODED_BYTES."""
    used, end = 0, 0
    for end, char in enumerate(message):
        size = 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "surrogatepass"))
        if used + size > MAX_MESSAGE_ENCODED_BYTES - 9:  # room for the ellipsis
            return message[:end] + "\u2026"
        used += size
    return message


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class Violations:
    """Collects every bad field of a request, then raises them together."""

    MAX_REPORTED = 100

    def __init__(self, items: list[FieldViolation] | None = None) -> None:
        self.items: list[FieldViolation] = list(items or [])

    def add(self, field_path: str, description: str, reason: str = "") -> None:
        self.items.append(FieldViolation(field_path, description, reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str = "request") -> None:
        if self.items:
            raise self.error(what)

    def error(self, what: str = "request") -> ServiceError:
        """INVALID_ARGUMENT with every violation. Its reason: the violations' own when they share one,
        else INVALID_ and ``what`` (INVALID_MODEL, INVALID_CUSTOMER, INVALID_REQUEST)."""
        shown = self.items[: self.MAX_REPORTED]
        summary = "; ".join(f"{v.field}: {v.description}" for v in shown[:3])
        more = f" (and {len(self.items) - 3} more)" if len(self.items) > 3 else ""
        causes = {v.cause for v in self.items}
        reason = causes.pop() if len(causes) == 1 else reason_for_field(what)
        return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {what}: {summary}{more}", reason, shown)


def invalid_argument(field_path: str, description: str, reason: str = "") -> ServiceError:
    """One bad field; the reason is derived from the field unless given."""
    violation = FieldViolation(field_path, description, reason)
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field_path}: {description}", violation.cause,
                        [violation])


def not_found(resource_name: str) -> ServiceError:
    """``resource_name`` (possibly followed by words) does not exist: CUSTOMER_NOT_FOUND, MODEL_NOT_FOUND ..."""
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"{resource_name} does not exist",
                        f"{reason_for_resource(resource_name)}_NOT_FOUND", metadata={"resource": resource_name})


def already_exists(resource_name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"{resource_name} already exists",
                        f"{reason_for_resource(resource_name)}_ALREADY_EXISTS", metadata={"resource": resource_name})


def aborted(message: str, reason: str = "ETAG_MISMATCH") -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, message, reason)


def failed_precondition(message: str, reason: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, reason)


def unavailable(message: str, reason: str = "BACKEND_UNAVAILABLE") -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message, reason)


def resource_exhausted(message: str, reason: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason)


def reader_stalled(seconds: float) -> ServiceError:
    """How a bulk stream whose reader stopped taking messages ends (its snapshot was already released)."""
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the stream was not read for {seconds:g} s and was ended to free its database snapshot; "
                        "read it again, faster", "READER_STALLED")


def shutting_down() -> ServiceError:
    """How a server that is stopping ends a long-lived stream: the client reconnects (to another replica)."""
    return unavailable("the server is shutting down; watch again to reach another replica", "SHUTTING_DOWN")


# Codes a client library turns back into the reason string.
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
