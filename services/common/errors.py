"""Service errors and their mapping onto gRPC statuses with rich details (AIP-193).

Servicers raise :class:`ServiceError`; the error interceptor turns it into a
status with one ``google.rpc.ErrorInfo`` and, for bad input, one
``google.rpc.BadRequest`` naming every bad field. Nothing else maps errors.
"""

from __future__ import annotations

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
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        details = [_pack(info)]
        if self.violations:
            bad_request = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ])
            details.append(_pack(bad_request))
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        return rpc_status.to_status(status)


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class Violations:
    """Collects every bad field of a request, then raises them together."""

    MAX_REPORTED = 100

    def __init__(self, items: list[FieldViolation] | None = None) -> None:
        self.items: list[FieldViolation] = list(items or [])

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str = "request") -> None:
        if self.items:
            raise self.error(what)

    def error(self, what: str = "request") -> ServiceError:
        shown = self.items[: self.MAX_REPORTED]
        summary = "; ".join(f"{v.field}: {v.description}" for v in shown[:3])
        more = f" (and {len(self.items) - 3} more)" if len(self.items) > 3 else ""
        return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {what}: {summary}{more}",
                            "INVALID_ARGUMENT", shown)


def invalid_argument(field_path: str, description: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field_path}: {description}", "INVALID_ARGUMENT",
                        [FieldViolation(field_path, description)])


def not_found(resource_name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"{resource_name} does not exist", "NOT_FOUND",
                        metadata={"resource": resource_name})


def already_exists(resource_name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"{resource_name} already exists", "ALREADY_EXISTS",
                        metadata={"resource": resource_name})


def aborted(message: str, reason: str = "ETAG_MISMATCH") -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, message, reason)


def failed_precondition(message: str, reason: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, reason)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message, "BACKEND_UNAVAILABLE")


# Codes a client library turns back into the reason string.
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
