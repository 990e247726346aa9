"""Sticky assignment: a unit keeps the arm it first got, across requests and replicas.

Route never waits on Redis for a unit this replica has already seen (a bounded local LRU answers).
For a unit it has not seen, it asks Redis once with a short timeout; when Redis is slow or down, a
circuit breaker skips the lookup and the unit gets a deterministic hash-seeded draw instead, so its
arm is still stable. New assignments are written in the background with an atomic get-or-set: the
first replica to assign a unit wins and the others adopt its arm.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from mabrouter.core.decide import Decision, RouteInput
from mabrouter.core.model import Reason
from mabrouter.core.snapshot import ExperimentState
from mabrouter.errors import StoreUnavailableError
from mabrouter.store.ports import StickyStore
from mabrouter.store.records import StickyWrite

log = logging.getLogger(__name__)

_Key = tuple[str, str, str]  # experiment, salt, unit id


class StickyAssignments:
    def __init__(
        self,
        store: StickyStore,
        max_entries: int = 100_000,
        lookup_timeout: float = 0.02,
        breaker_seconds: float = 1.0,
        max_pending: int = 100_000,
    ) -> None:
        self._store = store
        self._max_entries = max_entries
        self._lookup_timeout = lookup_timeout
        self._breaker_seconds = breaker_seconds
        self._max_pending = max_pending
        self._cache: OrderedDict[_Key, tuple[str, float]] = OrderedDict()
        self._pending: dict[_Key, StickyWrite] = {}
        self._breaker_open_until = 0.0
        self.dropped_writes = 0
        self._unstorable_reported: set[str] = set()

    def _cached(self, key: _Key) -> str | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        arm, expires_at = entry
        if expires_at < time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return arm

    def _cache_put(self, key: _Key, arm: str, ttl_seconds: int) -> None:
        self._cache[key] = (arm, time.monotonic() + ttl_seconds)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    async def resolve(self, request: RouteInput, state: ExperimentState | None) -> RouteInput:
        """The request with the unit's sticky arm filled in (or marked for a hash-seeded draw)."""
        if state is None or not state.spec.sticky_ttl_seconds:
            return request
        key = (request.experiment, state.spec.hash_salt, request.unit_id)
        arm = self._cached(key)
        if arm is not None:
            return request._replace(sticky_arm=arm)
        if time.monotonic() < self._breaker_open_until:
            return request._replace(hash_seeded=True)
        try:
            arm = await self._store.sticky_arm(*key, timeout=self._lookup_timeout)
        except StoreUnavailableError as exc:
            log.warning(
                "sticky lookups paused for %.1fs, using hash-seeded draws: %s", self._breaker_seconds, exc
            )
            self._breaker_open_until = time.monotonic() + self._breaker_seconds
            return request._replace(hash_seeded=True)
        if arm is None:
            return request
        self._cache_put(key, arm, state.spec.sticky_ttl_seconds)
        return request._replace(sticky_arm=arm)

    def remember(self, request: RouteInput, decision: Decision, state: ExperimentState | None) -> None:
        """Record a first assignment made by sampling (locally now, in Redis at the next flush)."""
        if state is None or not state.spec.sticky_ttl_seconds or decision.reason is not Reason.SAMPLED:
            return
        ttl = state.spec.sticky_ttl_seconds
        key = (request.experiment, state.spec.hash_salt, request.unit_id)
        self._cache_put(key, decision.arm, ttl)
        if len(self._pending) >= self._max_pending:
            self.dropped_writes += 1
            return
        # A sticky arm that was set but not served was killed: this assignment replaces it.
        replaces = request.sticky_arm or ""
        self._pending[key] = StickyWrite(*key, arm=decision.arm, ttl_seconds=ttl, replaces=replaces)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch = list(self._pending.values())
        try:
            arms = await self._store.assign_sticky(batch)
        except StoreUnavailableError as exc:
            log.debug("sticky assignments not written yet (%s); will retry", exc)
            return
        for item, arm in zip(batch, arms, strict=True):
            key = (item.experiment, item.salt, item.unit_id)
            if self._pending.get(key) is item:
                del self._pending[key]
            if arm is None:  # the unit's key holds another type: it keeps this replica's arm, unstored
                self._unstorable(item.experiment)
            elif arm != item.arm:  # another replica assigned this unit first: adopt its arm
                self._cache_put(key, arm, item.ttl_seconds)

    def _unstorable(self, experiment: str) -> None:
        if experiment not in self._unstorable_reported:
            self._unstorable_reported.add(experiment)
            log.error(
                "a sticky assignment of %s cannot be stored: the unit's key holds another type (written by "
                "hand); that unit is not sticky across replicas until the key is deleted",
                experiment,
            )
