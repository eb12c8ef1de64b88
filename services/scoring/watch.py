"""One poll of the runs table per process, fanned out in memory to every WatchRuns and WatchScoringRun.

Each watcher used to read the table itself every second: 500 idle watchers cost half a core, and slowed a
run 25-fold. Now a single poller reads, once per interval or as soon as a local run changes, what any
watcher needs (the runs completed since those its followers last took, and the runs watched one by one),
and every watcher takes its share from memory. The poller runs only while someone watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine, Row

from cvh.scoring.v1 import scoring_service_pb2 as pb
from services.common.db import read_transaction
from services.common.fanout import PollFanOut
from services.scoring import store

log = logging.getLogger("cvh.scoring.watch")

# How often runs are polled for what other replicas changed (local changes wake the poller at once).
POLL_SECONDS = 1.0


@dataclass(eq=False)
class _Follower:
    """A WatchRuns call: it has seen the completed runs (of ``model_id``, when given) up to run ``after``."""

    after: int
    model_id: str

    def wants(self, run_id: int, run: pb.ScoringRun) -> bool:
        return run_id > self.after and (not self.model_id or run.model.startswith(f"models/{self.model_id}/"))


class RunWatch(PollFanOut):
    def __init__(self, engine: Engine, executor, to_proto: Callable[[Connection, Row], pb.ScoringRun]) -> None:
        super().__init__()
        self.engine, self.executor, self.to_proto = engine, executor, to_proto
        self.followers: set[_Follower] = set()
        # Completed runs read by polls, kept until every follower that wants them has taken them.
        self.completed: dict[int, pb.ScoringRun] = {}
        # WatchScoringRun: watchers per run id, and each run as last read.
        self.watched: dict[int, int] = {}
        self.states: dict[int, pb.ScoringRun] = {}
        self.polls = 0

    async def completed_runs(self, after: int, model_id: str) -> AsyncIterator[list[pb.ScoringRun]]:
        """Runs completed after run ``after`` (of ``model_id``, when given), in batches as polls find them."""
        follower = _Follower(after, model_id)
        self.followers.add(follower)
        self._ensure_poller()
        try:
            while True:
                await self._next_poll()
                found = [run for run_id, run in sorted(self.completed.items()) if follower.wants(run_id, run)]
                if found:
                    follower.after = int(found[-1].name.split("/")[1])
                    yield found
        finally:
            self.followers.discard(follower)

    async def run_states(self, run_id: int) -> AsyncIterator[pb.ScoringRun]:
        """Run ``run_id`` as each poll reads it."""
        self.watched[run_id] = self.watched.get(run_id, 0) + 1
        self._ensure_poller()
        try:
            while True:
                await self._next_poll()
                if (run := self.states.get(run_id)) is not None:
                    yield run
        finally:
            self.watched[run_id] -= 1
            if not self.watched[run_id]:
                del self.watched[run_id]
                self.states.pop(run_id, None)

    async def _poll_while_watched(self) -> None:
        changed = self.executor.changed
        while (self.followers or self.watched) and not self.stopping:
            try:
                await asyncio.wait_for(changed.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            changed = self.executor.changed  # changes from now on wake the next wait
            try:
                found, states = await asyncio.to_thread(self._read, self._cursors(), list(self.watched))
                self._keep(found, states)
            except Exception:  # a lost database: watchers wait, the next poll tries again
                log.warning("polling runs for watchers failed", exc_info=True)
            self._wake()

    def _cursors(self) -> dict[str, int]:
        """Per model filter ("" for every model), the run after which its followers still wait for some."""
        cursors: dict[str, int] = {}
        for follower in self.followers:
            cursors[follower.model_id] = min(follower.after, cursors.get(follower.model_id, follower.after))
        return cursors

    def _read(self, cursors: dict[str, int], run_ids: list[int]) -> tuple[dict, dict]:
        """One read for every watcher (blocking): the completed runs each group of followers waits for (one
        statement per model filter in use, as each follower used to make), and runs ``run_ids``."""
        self.polls += 1
        with read_transaction(self.engine) as conn:
            found = {run.run_id: self.to_proto(conn, run) for model_id, after in cursors.items()
                     for run in store.completed_since(conn, after, model_id)}
            states = {run.run_id: self.to_proto(conn, run) for run in store.get_runs(conn, run_ids)}
        return found, states

    def _keep(self, found: dict, states: dict) -> None:
        """What a poll read, kept until every watcher has taken it (on the event loop, as watchers read it)."""
        self.completed.update(found)
        self.completed = {run_id: run for run_id, run in self.completed.items()
                          if any(f.wants(run_id, run) for f in self.followers)}
        self.states.update(states)
