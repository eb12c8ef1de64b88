"""Driving blocking generators (database cursors) from async handlers, and what a bulk stream's reader owes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator
from contextvars import ContextVar
from dataclasses import dataclass

from services.common.errors import reader_stalled

_END = object()


@dataclass
class StreamTerms:
    """What a bulk stream's reader is held to; set for each call by interceptors.StreamLimits."""

    # A reader that takes no message for this long loses the stream's snapshot (and database connection).
    stall_seconds: float
    # Gives the stream's place among the bulk streams back (idempotent).
    release: Callable[[], None]


stream_terms: ContextVar[StreamTerms | None] = ContextVar("stream_terms", default=None)


async def in_threads(generator: Generator) -> AsyncIterator:
    """Yield each item of ``generator``, produced on a worker thread, and always close it.

    The generator usually holds a database transaction. Steps and the final
    close share a lock, so a caller cancelled mid-step (a client hanging up, a
    server stopping) still closes the generator, and so ends its transaction,
    once that step is done.

    Under a bulk stream's terms, a reader that leaves a message untaken for ``stall_seconds`` (gRPC's write
    waits on the reader's flow-control window) has the generator closed at once, giving its connection and
    its place back even while the write still waits; the stream then ends with DEADLINE_EXCEEDED.
    """
    terms = stream_terms.get()
    lock = threading.Lock()
    stalled = False
    ending: asyncio.Future | None = None

    def step():
        with lock:
            return next(generator, _END)

    def close():
        with lock:
            generator.close()

    async def end() -> None:
        await asyncio.to_thread(close)
        if terms is not None:
            terms.release()

    def stall() -> None:
        nonlocal stalled, ending
        stalled = True
        ending = asyncio.ensure_future(end())

    timer = None
    try:
        while (item := await asyncio.to_thread(step)) is not _END:
            if terms is not None:
                timer = asyncio.get_running_loop().call_later(terms.stall_seconds, stall)
            yield item
            if timer is not None:
                timer.cancel()
            if stalled:
                raise reader_stalled(terms.stall_seconds)
    finally:
        if timer is not None:
            timer.cancel()
        await asyncio.shield(ending or end())
