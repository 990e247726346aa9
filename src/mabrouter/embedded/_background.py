"""The in-process router's background: a private event loop in a daemon thread, running the same
RouterRuntime as `mabrouter serve` (refresh, change feed, guardian, recording and flushing), so none of
that ever runs on a caller's thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from mabrouter.app import RouterRuntime
from mabrouter.config import Settings

T = TypeVar("T")


class EmbeddedRuntime(RouterRuntime):
    """The runtime, telling threads that wait for it when its first snapshot is loaded."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(settings, engine_loop=loop)
        self.loaded = threading.Event()

    async def _refreshed(self) -> None:
        if self.holder.current is not None:
            self.loaded.set()


class LoopThread:
    """An asyncio event loop of its own, run by a daemon thread (a forgotten close() never keeps the
    interpreter from exiting; mabrouter.embedded closes open routers at exit)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run `coroutine` on the loop and wait for its result (TimeoutError after `timeout` s)."""
        return self.submit(coroutine).result(timeout)

    def is_current(self) -> bool:
        """Whether the caller is the loop's own thread (which must never wait for the loop)."""
        return threading.get_ident() == self._thread.ident

    def stop(self, timeout: float) -> bool:
        """Stop the loop and join its thread; close the loop once the thread ended. True when it did."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self.loop.close()
        return True
