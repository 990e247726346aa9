"""Background work: refresh the snapshot (on a timer and on change notices) and flush trial counts.

Every loop survives any store failure: the router keeps serving its last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from mabrouter.errors import StoreUnavailableError
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.store.ports import SnapshotSource

log = logging.getLogger(__name__)
MAX_RECONNECT_BACKOFF_SECONDS = 5.0


class Refresher:
    def __init__(self, store: SnapshotSource, holder: SnapshotHolder, builder: SnapshotBuilder) -> None:
        self._store = store
        self._holder = holder
        self._builder = builder
        self._failing = False
        self.last_success: float | None = None

    async def refresh_once(self) -> bool:
        try:
            raw = await self._store.load_all()
        except StoreUnavailableError as exc:
            if not self._failing:
                log.warning("snapshot refresh failed, serving the last snapshot: %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("snapshot refresh recovered")
            self._failing = False
        now = time.monotonic()
        # Rebuilding many experiments (Monte Carlo propensities, samplers) takes tens of ms: off the event
        # loop, Route waits at most a GIL switch interval instead of the whole rebuild.
        self._holder.current = await asyncio.to_thread(self._builder.build, raw, self._holder.current, now)
        self.last_success = now
        await self._record_unattributed()
        return True

    async def _record_unattributed(self) -> None:
        for edit in self._builder.take_unattributed():
            try:
                await self._store.record_unattributed(edit)
            except StoreUnavailableError as exc:
                log.warning(
                    "could not write the audit entry for an unattributed edit of %s: %s", edit.target, exc
                )


async def every(
    interval_seconds: float,
    stop: asyncio.Event,
    work: Callable[[], Awaitable[object]],
    wake: asyncio.Event | None = None,
) -> None:
    """Run `work` every interval (or as soon as `wake` is set) until `stop` is set.

    Stopping is cooperative rather than by Task.cancel(): redis-py can swallow a CancelledError raised
    inside a pipeline, which left a cancelled task running forever. Each `work` call is bounded by the
    Redis socket timeouts, so shutdown waits at most one of them. Whoever sets `stop` sets `wake` too.

    A failing `work` never ends the loop: an exception that escaped it would end the task silently (no
    one awaits it until shutdown), and with it refreshing or flushing for the life of the process. The
    first failure is logged with its traceback, repeats only at DEBUG, and the recovery once.
    """
    trigger = wake or stop
    name = getattr(work, "__qualname__", repr(work))
    failing = False
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            await work()
        except Exception:
            if not failing:
                log.exception("background task %s failed; it keeps running", name)
            else:
                log.debug("background task %s failed again", name, exc_info=True)
            failing = True
        else:
            if failing:
                log.info("background task %s recovered", name)
            failing = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(trigger.wait(), interval_seconds)


async def watch_changes(store: SnapshotSource, stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Wake the refresher on every change notice; resubscribe (and resync) after any failure."""
    backoff = 0.1
    while not stop.is_set():
        try:

            def subscribed() -> None:
                nonlocal backoff
                backoff = 0.1  # a working subscription resets the backoff, however it ends later
                wake.set()

            await store.watch_changes(stop, on_change=lambda _scope: wake.set(), on_subscribed=subscribed)
        except Exception as exc:  # noqa: BLE001 - the change feed is an optimisation: never let it stop the router
            level = logging.DEBUG if isinstance(exc, StoreUnavailableError) else logging.WARNING
            log.log(level, "change feed lost (%r); polling continues, resubscribing in %.1fs", exc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, MAX_RECONNECT_BACKOFF_SECONDS)
