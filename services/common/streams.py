"""Driving blocking generators (database cursors) from async handlers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator

_END = object()


async def in_threads(generator: Generator) -> AsyncIterator:
    """Yield each item of ``generator``, produced on a worker thread, and always close it.

    The generator usually holds a database transaction. Steps and the final
    close share a lock, so a caller cancelled mid-step (a client hanging up, a
    server stopping) still closes the generator, and so ends its transaction,
    once that step is done.
    """
    lock = threading.Lock()

    def step():
        with lock:
            return next(generator, _END)

    def close():
        with lock:
            generator.close()

    try:
        while (item := await asyncio.to_thread(step)) is not _END:
            yield item
    finally:
        await asyncio.shield(asyncio.to_thread(close))
