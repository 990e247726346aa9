"""What a running router needs from Redis: read everything, add trial counts, record outcomes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mabrouter.store import keys, scripts

BATCH_MARKER_TTL_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class RawExperiment:
    """An experiment as stored, not yet validated: the router validates before trusting it."""

    name: str
    config: Mapping[str, str]
    stats: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class OutcomeWrite:
    experiment: str
    arm: str
    nonce: str
    reward: float
    counted: bool
    ttl_seconds: int


class RouterStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._record_outcome = client.register_script(scripts.RECORD_OUTCOME)
        self._apply_trials = client.register_script(scripts.APPLY_TRIALS)

    @classmethod
    def from_url(cls, url: str) -> RouterStore:
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=5,
        )
        return cls(client)

    async def close(self) -> None:
        await self._redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def load_all(self) -> list[RawExperiment]:
        names = sorted(str(name) for name in await self._redis.smembers(keys.EXPERIMENTS))
        if not names:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.config(name))
                pipe.hgetall(keys.stats(name))
            replies = await pipe.execute()
        return [
            RawExperiment(name, replies[2 * i], replies[2 * i + 1])
            for i, name in enumerate(names)
            if replies[2 * i]  # listed but no config yet: being created
        ]

    async def apply_trials(self, batch_id: str, trials: Mapping[str, Mapping[str, int]]) -> None:
        """Add trial counts per experiment and arm; idempotent per (experiment, batch_id)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for experiment, per_arm in trials.items():
                args: list[str | int] = [BATCH_MARKER_TTL_SECONDS]
                for arm, count in per_arm.items():
                    args += [arm, count]
                await self._apply_trials(
                    keys=[keys.stats(experiment), keys.batch_seen(experiment, batch_id)],
                    args=args,
                    client=pipe,
                )
            await pipe.execute()

    async def record_outcomes(self, outcomes: Sequence[OutcomeWrite]) -> list[bool]:
        """Apply outcomes atomically and idempotently; True where applied, False where a duplicate."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for outcome in outcomes:
                await self._record_outcome(
                    keys=[
                        keys.stats(outcome.experiment),
                        keys.outcome_seen(outcome.experiment, outcome.nonce),
                    ],
                    args=[
                        outcome.arm,
                        repr(outcome.reward),
                        repr(outcome.reward * outcome.reward),
                        outcome.ttl_seconds,
                        "1" if outcome.counted else "0",
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        return [bool(reply) for reply in replies]
