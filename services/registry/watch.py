"""One poll of the change feed per process, fanned out in memory to every WatchCustomerChanges.

The poller reads the feed's counter every POLL_SECONDS (what other processes and replicas wrote), and at
once after a write of this process; when it moved, it reads the new changes with their customers once, and
every follower takes the same messages from memory. A follower further behind than memory holds (a
restart, a first load) reads its own way from the database up to the poller's head, then joins the others.
Polling rather than PostgreSQL's LISTEN/NOTIFY: one code path for both databases (SQLite has no NOTIFY),
no dedicated connection per process, and an idle poll is one primary-key read four times a second, only
while someone watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from sqlalchemy.engine import Engine

from cvh.registry.v1 import registry_service_pb2 as pb
from services.common.db import read_transaction
from services.common.errors import shutting_down
from services.common.fanout import PollFanOut
from services.registry import feed
from services.registry.signals import SignalCatalog

log = logging.getLogger("cvh.registry.watch")

# How often the feed is polled for what other processes wrote (this process's writes wake the poller at once).
POLL_SECONDS = 0.25
# Changes one poll reads at most (more wait for the next poll, made at once).
POLL_LIMIT = 4 * feed.MAX_BATCH
# Changes kept in memory for followers a little behind.
KEPT_CHANGES = 100_000


class FeedWatch(PollFanOut):
    def __init__(self, engine: Engine, catalog: SignalCatalog) -> None:
        super().__init__()
        self.engine, self.catalog = engine, catalog
        self.followers = 0
        # The last sequence the poller read, and what it read, oldest first: batches that follow each other.
        self.head: int | None = None
        self.recent: list[feed.Batch] = []
        self.polls = 0
        self._written = asyncio.Event()

    def written(self) -> None:
        """A write of this process committed: poll now (called on the event loop)."""
        self._written.set()

    async def changes(self, after: int) -> AsyncIterator[pb.WatchCustomerChangesResponse]:
        """The changes after sequence ``after``, then each as it commits."""
        await asyncio.to_thread(self._check, after)
        self.followers += 1
        self._ensure_poller()
        try:
            while self.head is None:
                await self._next_poll()
            cursor = after
            while True:
                if cursor >= self.head:  # beyond it only when it started ahead of the poller
                    await self._next_poll()
                    continue
                start = next((i for i, batch in enumerate(self.recent) if batch.after == cursor), None)
                if start is not None and cursor < self.head:
                    for batch in self.recent[start:]:  # a copy: the poller may add batches meanwhile
                        for message in batch.messages:
                            yield message
                        cursor = batch.last
                    continue
                # Behind what memory holds (or between its batches): from the database, up to the poller's head.
                batch = await asyncio.to_thread(feed.read, self.engine, self.catalog, cursor, self.head, feed.MAX_BATCH)
                for message in batch.messages:
                    yield message
                cursor = batch.last
                if self.stopping:
                    raise shutting_down()
        finally:
            self.followers -= 1

    def _check(self, after: int) -> None:
        with read_transaction(self.engine) as conn:
            feed.check_resumable(after, feed.state(conn))

    async def _poll_while_watched(self) -> None:
        more = True  # the first poll at once: followers wait for its head
        while self.followers and not self.stopping:
            if not more:
                try:
                    await asyncio.wait_for(self._written.wait(), POLL_SECONDS)
                except TimeoutError:
                    pass
            self._written.clear()
            try:
                state, batch = await asyncio.to_thread(self._poll, self.head)
                more = self._keep(state, batch)
            except Exception:  # a lost database: followers wait, the next poll tries again
                log.warning("polling the change feed failed", exc_info=True)
                more = False
            self._wake()
        self.head, self.recent = None, []  # nobody watches: the next poller starts afresh

    def _poll(self, head: int | None) -> tuple[feed.FeedState, feed.Batch | None]:
        """The feed's counters and what it gained after ``head`` (blocking)."""
        self.polls += 1
        with read_transaction(self.engine) as conn:
            state = feed.state(conn)
        if head is None or head < state.compacted or state.last <= head:
            return state, None
        return state, feed.read(self.engine, self.catalog, head, None, POLL_LIMIT)

    def _keep(self, state: feed.FeedState, batch: feed.Batch | None) -> bool:
        """Keep what a poll read (on the event loop, where followers read it); whether more is waiting."""
        if self.head is None or self.head < state.compacted:  # first poll, or fell behind the retention
            self.head, self.recent = state.last, []
            return False
        if batch is None:
            return False
        self.recent.append(batch)
        while len(self.recent) > 1 and batch.last - self.recent[0].last > KEPT_CHANGES:
            self.recent.pop(0)
        self.head = batch.last
        return batch.last < state.last
