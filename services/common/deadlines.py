"""A call's deadline, for work that runs on a worker thread and cannot be cancelled from outside.

grpc.aio cancels a handler's task when its caller's deadline passes or the
caller cancels: streams then stop at their next ``await`` (see streams.py,
which also closes the generator and so its transaction). A worker thread
started with ``asyncio.to_thread`` runs on regardless, so long loops there
check a :class:`Deadline` between steps and give up, rolling back their
transaction, once nobody waits for the answer any more.
"""

from __future__ import annotations

import math
import time

import grpc

from services.common.errors import ServiceError


class Deadline:
    """When the caller stops waiting (``at`` in time.monotonic(); None: no deadline)."""

    def __init__(self, remaining: float | None) -> None:
        valid = remaining is not None and math.isfinite(remaining)
        self.at = time.monotonic() + remaining if valid else None

    @classmethod
    def of(cls, context) -> "Deadline":
        """The deadline of the call ``context`` serves."""
        return cls(context.time_remaining())

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def check(self, doing: str) -> None:
        """Raise DEADLINE_EXCEEDED when the deadline has passed (``doing`` says where it was)."""
        if self.expired():
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"the call's deadline passed while {doing}; stopped", "DEADLINE_PASSED")
