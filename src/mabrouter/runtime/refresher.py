"""Background work: refresh the snapshot and flush trial counts, surviving any Redis error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.store.router_store import RouterStore

log = logging.getLogger(__name__)


class Refresher:
    def __init__(self, store: RouterStore, holder: SnapshotHolder, builder: SnapshotBuilder) -> None:
        self._store = store
        self._holder = holder
        self._builder = builder
        self._failing = False

    async def refresh_once(self) -> bool:
        try:
            raw = await self._store.load_all()
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("snapshot refresh failed, serving the last snapshot: %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("snapshot refresh recovered")
            self._failing = False
        self._holder.current = self._builder.build(raw, self._holder.current, time.monotonic())
        return True


async def every(interval_seconds: float, stop: asyncio.Event, work: Callable[[], Awaitable[object]]) -> None:
    """Run `work` every interval until `stop` is set.

    Stopping is cooperative rather than by Task.cancel(): redis-py can swallow a CancelledError raised
    inside a pipeline, which left a cancelled task running forever. Each `work` call is bounded by the
    Redis socket timeouts, so shutdown waits at most one of them.
    """
    while not stop.is_set():
        await work()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_seconds)
