"""One poll per process, fanned out in memory to every watcher of a stream.

The registry's change feed and the scoring runs both serve many long-lived watch streams. Rather than
each stream reading the database, one poller task reads while anyone watches, and every watcher waits
for the next poll and takes its share of what it read from memory.
"""

from __future__ import annotations

import asyncio

from services.common.errors import shutting_down


class PollFanOut:
    """The waiting half: watchers call :meth:`_next_poll`; a subclass's :meth:`_poll_while_watched` reads
    and calls :meth:`_wake` after each poll; :meth:`stop` ends every watch with UNAVAILABLE at once."""

    def __init__(self) -> None:
        self.stopping = False
        self._polled = asyncio.Event()
        self._poller: asyncio.Task | None = None

    def stop(self) -> None:
        """Ends every watch with UNAVAILABLE (shutting down), at once."""
        self.stopping = True
        self._wake()

    async def _next_poll(self) -> None:
        if not self.stopping:
            await self._polled.wait()
        if self.stopping:
            raise shutting_down()

    def _wake(self) -> None:
        """Releases every watcher waiting for a poll (a new event for the next one)."""
        self._polled.set()
        self._polled = asyncio.Event()

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_while_watched())

    async def _poll_while_watched(self) -> None:
        raise NotImplementedError
