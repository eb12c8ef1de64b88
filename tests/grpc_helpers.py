"""Assertions on gRPC errors and their rich details, shared by the service tests."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class ErrorSeen:
    code: grpc.StatusCode | None = None
    message: str = ""
    reason: str = ""
    fields: list[str] = field(default_factory=list)


def details_of(error: grpc.RpcError) -> ErrorSeen:
    seen = ErrorSeen(error.code(), error.details() or "")
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            seen.reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            seen.fields = [v.field for v in bad.field_violations]
    return seen


@contextmanager
def raises_status(code: grpc.StatusCode, *, field: str | None = None, reason: str | None = None):
    """Expect an RPC to fail with ``code``; when given, a BadRequest naming ``field`` and the ErrorInfo ``reason``."""
    seen = ErrorSeen()
    with pytest.raises(grpc.RpcError) as caught:
        yield seen
    found = details_of(caught.value)
    seen.__dict__.update(found.__dict__)
    assert found.code == code, f"expected {code}, got {found.code}: {found.message}"
    if field is not None:
        assert field in found.fields, f"no violation for {field!r} in {found.fields}"
    if reason is not None:
        assert found.reason == reason, f"expected reason {reason}, got {found.reason}"
