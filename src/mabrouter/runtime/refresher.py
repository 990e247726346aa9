"""Background work: refresh the snapshot (on a timer and on change notices) and flush trial counts.

Every loop survives any store failure: the router keeps serving its last snapshot.

A change notice also takes a fast path first: the notified experiments' switches and the global ones are
read alone (one round trip) and applied over the served snapshot, then the full refresh follows. A kill
is then a handful of event-loop steps from the notice instead of the ~dozen of a full refresh (names,
every hash, a rebuild on a worker thread). That matters in-process: each step waits for the GIL again,
and caller threads running pure Python hold it up to the switch interval (5 ms) at a time, often more
under load (4 such threads: kills took 12-301 ms at the median and 2.1 s at worst before this path).
Reads are numbered so an older read never replaces what a newer one installed: a full refresh that read
before the fast path gets the newer switches applied over its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from mabrouter.core.snapshot import Snapshot
from mabrouter.errors import StoreUnavailableError
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.store.ports import SnapshotSource
from mabrouter.store.records import StoredSwitches

log = logging.getLogger(__name__)
MAX_RECONNECT_BACKOFF_SECONDS = 5.0


class Refresher:
    def __init__(self, store: SnapshotSource, holder: SnapshotHolder, builder: SnapshotBuilder) -> None:
        self._store = store
        self._holder = holder
        self._builder = builder
        self._failing = False
        self.last_success: float | None = None
        self._reads = itertools.count(1)  # every read of the store, numbered in the order it started
        self._installed = 0  # the newest read the served snapshot reflects
        self._newest_switches: tuple[int, StoredSwitches] | None = None
        self._notified: set[str] = set()  # scopes noticed, not yet read by the fast path
        self._fast_path: asyncio.Task[None] | None = None
        self._fast_path_failing = False

    async def refresh_once(self) -> bool:
        read = next(self._reads)
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
        snapshot = await asyncio.to_thread(self._builder.build, raw, self._holder.current, now)
        newest = self._newest_switches
        if newest is not None and newest[0] > read:  # switches read after this refresh's read
            snapshot = self._builder.with_switches(snapshot, newest[1])
        self._install(snapshot, max(read, newest[0] if newest is not None else 0))
        self.last_success = now
        await self._record_unattributed()
        return True

    def notice(self, scope: str) -> None:
        """A change notice for `scope` (an experiment, or the global switches): apply its switches
        through the fast path, soon, on this loop (notices arriving meanwhile are read together)."""
        self._notified.add(scope)
        if self._fast_path is None or self._fast_path.done():
            self._fast_path = asyncio.get_running_loop().create_task(self._apply_notified())

    async def settle(self) -> None:
        """Wait for a fast path in flight (at shutdown, before the store closes)."""
        if self._fast_path is not None:
            await asyncio.gather(self._fast_path, return_exceptions=True)

    async def _apply_notified(self) -> None:
        while self._notified:
            scopes, self._notified = self._notified, set()
            try:
                await self.apply_switches(sorted(scopes))  # the global scope is never an experiment
            except Exception as exc:  # noqa: BLE001 - the full refresh the notice woke applies them anyway
                if not self._fast_path_failing:
                    log.warning("could not apply switches ahead of the refresh (%r); the refresh will", exc)
                self._fast_path_failing = True
            else:
                self._fast_path_failing = False

    async def apply_switches(self, experiments: list[str]) -> None:
        """Read the switches of `experiments` (those served; the others need a full build) and the global
        ones, and apply them over the served snapshot unless a newer read was installed meanwhile."""
        current = self._holder.current
        if current is None:
            return
        read = next(self._reads)
        stored = await self._store.load_switches([n for n in experiments if n in current.experiments])
        if self._newest_switches is None or read > self._newest_switches[0]:
            self._newest_switches = (read, stored)
        current = self._holder.current
        if current is not None and read > self._installed:
            self._install(self._builder.with_switches(current, stored), read)

    def _install(self, snapshot: Snapshot, read: int) -> None:
        self._holder.current = snapshot
        self._installed = max(self._installed, read)

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


async def watch_changes(
    store: SnapshotSource, stop: asyncio.Event, wake: asyncio.Event, refresher: Refresher
) -> None:
    """Wake the refresher on every change notice, and apply its switches first through the fast path;
    resubscribe (and resync) after any failure."""
    backoff = 0.1
    while not stop.is_set():
        try:

            def subscribed() -> None:
                nonlocal backoff
                backoff = 0.1  # a working subscription resets the backoff, however it ends later
                wake.set()

            def changed(scope: str) -> None:
                wake.set()
                refresher.notice(scope)

            await store.watch_changes(stop, on_change=changed, on_subscribed=subscribed)
        except Exception as exc:  # noqa: BLE001 - the change feed is an optimisation: never let it stop the router
            level = logging.DEBUG if isinstance(exc, StoreUnavailableError) else logging.WARNING
            log.log(level, "change feed lost (%r); polling continues, resubscribing in %.1fs", exc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, MAX_RECONNECT_BACKOFF_SECONDS)
