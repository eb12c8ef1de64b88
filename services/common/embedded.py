"""A suite served from a background thread of the calling process: for tests, `cvh demo` and notebooks."""

from __future__ import annotations

import asyncio
import threading

from services.common.config import ServerConfig
from services.common.server import Suite, create_server


class EmbeddedSuite:
    """Builds and starts a Suite on its own event loop in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, config: ServerConfig, start_timeout: float = 60) -> None:
        self.loop = asyncio.new_event_loop()
        self.suite: Suite | None = None
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.suite = self.loop.run_until_complete(self._start(config))
            except BaseException as error:  # re-raised in the caller's thread below
                failure.append(error)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="cvh-embedded-suite", daemon=True)
        self.thread.start()
        if not ready.wait(start_timeout):
            raise TimeoutError(f"the embedded suite did not start within {start_timeout:.0f} s")
        if failure:
            raise failure[0]
        self.target = f"127.0.0.1:{self.suite.port}"

    @staticmethod
    async def _start(config: ServerConfig) -> Suite:
        suite = create_server(config)
        await suite.start()
        return suite

    async def _stop(self, grace: float) -> None:
        """As asyncio.run ends `cvh serve`: stop the server, then let every leftover task unwind."""
        await self.suite.stop(grace)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self, grace: float = 0) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def __enter__(self) -> "EmbeddedSuite":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
