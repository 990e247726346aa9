"""Background tasks: refresh the snapshot and flush trial counts, forever, surviving any Redis error."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.runtime.trials import TrialFlusher
from mabrouter.store.router_store import RouterStore

log = logging.getLogger(__name__)


class Refresher:
    def __init__(self, store: RouterStore, holder: SnapshotHolder, builder: SnapshotBuilder) -> None:
        self._store = store
        self._holder = holder
        self._builder = builder
        self.first_load = asyncio.Event()
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
        self.first_load.set()
        return True

    async def run(self, interval_seconds: float) -> None:
        while True:
            await self.refresh_once()
            await asyncio.sleep(interval_seconds)


async def run_flusher(flusher: TrialFlusher, interval_seconds: float) -> None:
    while True:
        await asyncio.sleep(interval_seconds)
        await flusher.flush()
