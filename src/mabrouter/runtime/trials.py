"""Counts trials on the request path and flushes them to Redis in idempotent batches."""

from __future__ import annotations

import logging
from collections import defaultdict

from redis.exceptions import RedisError

from mabrouter.store.router_store import RouterStore

log = logging.getLogger(__name__)


class TrialBuffer:
    """Per-(experiment, arm) counters. `add` is a dict increment: cheap enough for every Route."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, experiment: str, arm: str) -> None:
        key = (experiment, arm)
        self._counts[key] = self._counts.get(key, 0) + 1

    def drain(self) -> dict[tuple[str, str], int]:
        counts, self._counts = self._counts, {}
        return counts

    def pending(self) -> int:
        return sum(self._counts.values())


class TrialFlusher:
    """Moves drained counts to Redis. A failed batch is retried with the same id, so it counts once."""

    def __init__(self, buffer: TrialBuffer, store: RouterStore, process_prefix: str) -> None:
        self._buffer = buffer
        self._store = store
        self._prefix = process_prefix
        self._sequence = 0
        self._unsent: dict[tuple[str, str], int] | None = None
        self._unsent_id = ""

    async def flush(self) -> None:
        if self._unsent is None:
            counts = self._buffer.drain()
            if not counts:
                return
            self._sequence += 1
            self._unsent, self._unsent_id = counts, f"{self._prefix}-{self._sequence}"
        grouped: dict[str, dict[str, int]] = defaultdict(dict)
        for (experiment, arm), count in self._unsent.items():
            grouped[experiment][arm] = count
        try:
            await self._store.apply_trials(self._unsent_id, grouped)
        except (RedisError, OSError) as exc:
            log.warning("trial flush %s failed, will retry: %s", self._unsent_id, exc)
            return
        self._unsent = None

    def unsent(self) -> int:
        return sum(self._unsent.values()) if self._unsent else 0
