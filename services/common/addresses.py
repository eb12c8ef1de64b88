"""Listening addresses: a server never silently shares one with another server.

gRPC sets ``SO_REUSEPORT`` on Linux unless told otherwise, and the kernel then lets any process of the same
user bind an address already served: a second ``cvh serve`` (another folder, another database) would start
without error and clients would get answers from either at random. So:

- a server binds with ``grpc.so_reuseport`` 0 (:func:`grpc_option`): the kernel refuses a second bind;
- before it binds, :func:`ensure_free` tries the address with a plain socket, so the refusal is a clear
  :class:`AddressInUse` naming the address (and catches a host name, like ``localhost``, that resolves to
  several addresses of which only some are taken, where gRPC would bind the rest and carry on);
- the worker processes of one ``cvh serve --workers N`` do share the port: their parent first checks the
  address is free, then :func:`reserve` holds it with a socket bound with ``SO_REUSEPORT`` (never listening)
  until the set stops. The workers bind with ``SO_REUSEPORT`` beside it; any other server, a single one or
  another worker set's parent checking with a plain socket, is refused by the reservation.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager


class AddressInUse(OSError):
    """An address this server was asked to listen on cannot be had; the message says which and what to do."""


def grpc_option(share_port: bool) -> tuple[str, int]:
    """The gRPC server option: share the port only within one worker set."""
    return ("grpc.so_reuseport", 1 if share_port else 0)


def ensure_free(listen: str, flag: str = "--listen") -> None:
    """Raise :class:`AddressInUse` unless every address ``listen`` (HOST:PORT) resolves to can be bound now.
    Port 0 always can."""
    if _split(listen)[1] == 0:
        return
    with ExitStack() as stack:
        _bind_all(listen, flag, stack, share=False)


@contextmanager
def reserve(listen: str, flag: str = "--listen") -> Iterator[str]:
    """Hold ``listen`` for one worker set until the block ends; yields it with the port filled in (port 0 picks
    a free one). Raises :class:`AddressInUse` when the address is served or reserved already."""
    with ExitStack() as probe:  # an exclusive bind first: it fails when anything is bound there
        port = _bind_all(listen, flag, probe, share=False)
    host = listen.rpartition(":")[0]
    with ExitStack() as held:
        # Between the probe's close and this bind lies a few microseconds in which another worker set's
        # parent could probe too; a single server would still be refused by the kernel.
        _bind_all(f"{host}:{port}", flag, held, share=True)
        yield f"{host}:{port}"


def _split(listen: str) -> tuple[str | None, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        return (host if host not in ("", "0.0.0.0") else None), int(port)
    except ValueError:
        raise AddressInUse(f"cannot listen on {listen!r}: expected HOST:PORT") from None


def _bind_all(listen: str, flag: str, stack: ExitStack, share: bool) -> int:
    """Bind a socket to each address of ``listen`` (closed when ``stack`` closes); the port bound."""
    host, port = _split(listen)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise AddressInUse(f"cannot listen on {listen}: {error.strerror}; choose another address with "
                           f"{flag} HOST:PORT") from None
    for family, kind, proto, _, address in addresses:
        sock = stack.enter_context(socket.socket(family, kind, proto))
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        else:  # like gRPC's own listeners: a previous server's connections in TIME_WAIT do not block
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address[0], port, *address[2:]))
        except OSError as error:
            raise _refusal(listen, flag, error) from None
        port = sock.getsockname()[1]
    return port


def _refusal(listen: str, flag: str, error: OSError) -> AddressInUse:
    if error.errno == errno.EADDRINUSE:
        return AddressInUse(f"{listen} is already in use: another server listens there (two servers on one "
                            f"address would answer from different databases at random); stop it or choose "
                            f"another address with {flag} HOST:PORT")
    return AddressInUse(f"cannot listen on {listen}: {error.strerror}; choose another address with {flag} HOST:PORT")


def bind_refused(listen: str, flag: str = "--listen") -> AddressInUse:
    """What gRPC's failed bind (a RuntimeError, or port 0) means for the user: the address is taken."""
    return _refusal(listen, flag, OSError(errno.EADDRINUSE, "Address already in use"))
