"""Assertions on gRPC errors and their rich details, shared by the service tests."""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources

import grpc
import pytest
from google.protobuf import descriptor_pb2
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


def documented_reasons(full_method: str) -> set[str]:
    """The ErrorInfo reasons the protos document for ``full_method`` ("cvh.registry.v1.RegistryService/GetCustomer"):
    the UPPER_SNAKE words of the RPC's comment and of its service's comment (reasons every RPC may meet), less
    status code names (a reason says more than its code; INTERNAL, a bug, has nothing more to say)."""
    service, method = full_method.rsplit("/", 1)
    comments = rpc_comments()
    words = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", comments[service] + comments[f"{service}/{method}"]))
    return words - {code.name for code in grpc.StatusCode if code != grpc.StatusCode.INTERNAL}


@functools.cache
def rpc_comments() -> dict[str, str]:
    """Leading comments of every cvh service ("pkg.Service") and RPC ("pkg.Service/Method"), from the committed
    descriptor set with source info."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("cvh").joinpath("descriptor_set.binpb").read_bytes())
    comments = {}
    for file in files.file:
        if not file.package.startswith("cvh."):
            continue
        located = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for s, service in enumerate(file.service):
            name = f"{file.package}.{service.name}"
            comments[name] = located.get((6, s), "")
            for m, method in enumerate(service.method):
                comments[f"{name}/{method.name}"] = located.get((6, s, 2, m), "")
    return comments
