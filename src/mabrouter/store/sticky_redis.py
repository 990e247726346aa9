"""The router store's sticky assignments: one STRING per unit (keys.sticky), first writer wins.

A unit's key of another type (written by hand) costs that unit its stickiness alone: its lookup reads as
unassigned and its write is refused by the script, never the lookups and writes of every other unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from mabrouter.store import keys, scripts
from mabrouter.store.errors import translated
from mabrouter.store.records import StickyWrite
from mabrouter.store.script_runner import ScriptRunner


class StickyRedis:
    """Implements StickyStore for RouterStore, which sets the client and the script runner."""

    _redis: Any
    _scripts: ScriptRunner

    async def sticky_arm(self, experiment: str, salt: str, unit_id: str, timeout: float) -> str | None:
        """The arm a unit was assigned, or None (also when its key holds another type, written by hand:
        one unit's key must not pause everyone's lookups). Raises on a slow or unreachable Redis."""
        with translated:
            try:
                value = await asyncio.wait_for(
                    self._redis.get(keys.sticky(experiment, salt, unit_id)), timeout
                )
            except ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                return None
        return None if value is None else str(value)

    async def assign_sticky(self, assignments: Sequence[StickyWrite]) -> list[str | None]:
        """Store first assignments (first writer wins); return the arm each unit actually has, None where
        the unit's key holds another type (nothing written)."""
        with translated:
            async with self._redis.pipeline(transaction=False) as pipe:
                for item in assignments:
                    await self._scripts.queue(
                        pipe,
                        scripts.STICKY_GET_OR_SET,
                        [keys.sticky(item.experiment, item.salt, item.unit_id)],
                        [item.arm, item.ttl_seconds, item.replaces],
                    )
                replies = await pipe.execute()
        return [None if isinstance(reply, list) else str(reply) for reply in replies]
