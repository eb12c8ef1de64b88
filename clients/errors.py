"""Errors from the suite as one exception type: the gRPC code, the reason and every bad field."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class CvhError(Exception):
    """A call the suite answered with an error status.

    ``reason`` is the server's machine-readable cause (``google.rpc.ErrorInfo``,
    e.g. ``ETAG_MISMATCH``); ``violations`` name each bad request field
    (``google.rpc.BadRequest``).
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "CvhError":
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        message = error.details() if callable(getattr(error, "details", None)) else str(error)
        found = cls(code or grpc.StatusCode.UNKNOWN, message or "")
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                found.reason, found.metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                found.violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        return found

    def describe(self) -> str:
        """The message plus one line per bad field: what a command line prints."""
        lines = [str(self)]
        lines += [f"  {v.field}: {v.description}" for v in self.violations
                  if f"{v.field}: {v.description}" not in self.message]
        return "\n".join(lines)
