"""Server reflection that serves the contracts with their documentation.

The generated stubs register descriptors without source comments, so reflection
from the default pool shows tools (grpcurl describe, Postman, a Node.js client)
no documentation. Here reflection answers from a pool built from
``cvh/descriptor_set.binpb`` (written by tools/gen_protos.py with protoc's
--include_source_info), plus google.rpc's error details (so clients decode
every error's details), health and reflection. Its files keep their source
info, and methods and fields are found by name (``describe Service.Method``).

Both reflection protocols are served: ``grpc.reflection.v1alpha`` from
grpcio-reflection, and ``grpc.reflection.v1``, from grpcio-reflection when it
has it, else by the same servicer, since v1 is v1alpha renamed (identical
messages, so identical bytes on the wire).
"""

from __future__ import annotations

import functools
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def _v1_of(alpha: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, made from the v1alpha file by renaming its package."""
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(alpha)
    v1.name, v1.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    renamed = lambda name: name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")  # noqa: E731
    for message in v1.message_type:
        for message_field in message.field:
            if message_field.type_name:
                message_field.type_name = renamed(message_field.type_name)
    for method in v1.service[0].method:
        method.input_type, method.output_type = renamed(method.input_type), renamed(method.output_type)
    return v1


class DocumentedFile:
    """A file descriptor as reflection sends it: the FileDescriptorProto it was built from, comments
    included (a runtime descriptor's CopyToProto leaves its source info out)."""

    def __init__(self, file, protos: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self.file, self.protos = file, protos
        self.name = file.name

    @property
    def dependencies(self) -> list[DocumentedFile]:
        return [DocumentedFile(d, self.protos) for d in self.file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802 (as the descriptor's)
        proto.CopyFrom(self.protos[self.name])


class DocumentedPool:
    """What grpcio-reflection asks of a descriptor pool, answered with documented files. Its
    FindFileContainingSymbol also finds methods and fields ("cvh.registry.v1.RegistryService.GetCustomer",
    what ``grpcurl describe`` asks for), which the protobuf runtime's pool does not (NOT_FOUND)."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.protos = {file.name: file for file in files}
        for file in files:
            self.pool.Add(file)

    def __getattr__(self, name: str):
        return getattr(self.pool, name)

    def FindFileByName(self, name: str) -> DocumentedFile:  # noqa: N802 (the pool's own names)
        return DocumentedFile(self.pool.FindFileByName(name), self.protos)

    def FindFileContainingSymbol(self, symbol: str) -> DocumentedFile:  # noqa: N802
        return DocumentedFile(self._file_containing(symbol), self.protos)

    def _file_containing(self, symbol: str):
        try:
            return self.pool.FindFileContainingSymbol(symbol)
        except KeyError:
            parent, _, member = symbol.rpartition(".")
            for find, members in ((self.pool.FindServiceByName, "methods_by_name"),
                                  (self.pool.FindMessageTypeByName, "fields_by_name")):
                try:
                    found = find(parent)
                except KeyError:
                    continue
                if member in getattr(found, members):
                    return found.file
            raise


@functools.cache
def documented_pool() -> DocumentedPool:
    """Every cvh file with its comments (and the files they import), google.rpc's error details, health, and
    both reflection versions."""
    contracts = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("cvh").joinpath("descriptor_set.binpb").read_bytes())
    files = {file.name: file for file in contracts.file}
    # The error details every error carries (so clients decode them), health and reflection itself.
    for module in (error_details_pb2, status_pb2, health_pb2, reflection_pb2):
        _add_with_imports(module.DESCRIPTOR, files)
    v1 = _v1_of(files[reflection_pb2.DESCRIPTOR.name])
    files[v1.name] = v1
    return DocumentedPool(list(files.values()))


def _add_with_imports(file, files: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
    """``file`` (a runtime file descriptor) and the files it imports, each after its imports."""
    if file.name in files:
        return
    for dependency in file.dependencies:
        _add_with_imports(dependency, files)
    files[file.name] = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)


def enable(server: grpc.aio.Server, service_names: list[str]) -> None:
    """Serve reflection (v1 and v1alpha) of ``service_names``, the health service and reflection itself."""
    names = [*service_names, health.SERVICE_NAME, *SERVICE_NAMES]
    pool = documented_pool()
    reflection.enable_server_reflection(names, server, pool=pool)
    try:  # a grpcio-reflection that serves v1 itself (1.85 does not)
        from grpc_reflection.v1 import reflection as reflection_v1  # type: ignore[import-not-found]
    except ImportError:
        reflection_v1 = None
    if reflection_v1 is not None:
        reflection_v1.enable_server_reflection(names, server, pool=pool)
        return
    handler = grpc.stream_stream_rpc_method_handler(
        reflection.aio.ReflectionServicer(names, pool=pool).ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),))
