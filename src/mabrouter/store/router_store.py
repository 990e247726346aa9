"""What a running router needs from Redis: read everything, add trial counts, record outcomes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError, RedisError

from mabrouter.store import keys, scripts
from mabrouter.store.connect import async_client, async_pubsub_client, follow_sentinel_master
from mabrouter.store.errors import STORE_ERRORS
from mabrouter.store.records import (
    Discount,
    GuardedChange,
    OutcomeWrite,
    RawExperiment,
    RawState,
    Refused,
    StickyWrite,
    discount_args,
    outcome_args,
    script_result,
)

__all__ = [  # the records are part of this module's interface
    "Discount",
    "GuardedChange",
    "OutcomeWrite",
    "RawExperiment",
    "RawState",
    "Refused",
    "RouterStore",
    "StickyWrite",
]

BATCH_MARKER_TTL_SECONDS = 3600
# Outcomes per RECORD_OUTCOMES call and log entries per APPEND_LOG call: one script runs atomically, so
# a bound keeps any single call from holding Redis for long (a few ms at most).
OUTCOMES_PER_CALL = 250
LOG_ENTRIES_PER_CALL = 500

ScriptCall = tuple[str, list[str], list[Any]]  # (script text, keys, args)


class RouterStore:
    def __init__(
        self, client: aioredis.Redis | AsyncRedisCluster, pubsub_client: aioredis.Redis | None = None
    ) -> None:
        self._redis: Any = client  # redis-py's cluster and single clients share no typed protocol
        self._pubsub_client = pubsub_client
        self._cluster = isinstance(client, AsyncRedisCluster)
        self._scripts = {
            text: client.register_script(text)
            for text in (
                scripts.GUARDED_CHANGE,
                scripts.REBASE_DISCOUNT,
                scripts.RECORD_OUTCOMES,
                scripts.APPEND_LOG,
                scripts.APPLY_TRIALS,
                scripts.RECORD_UNATTRIBUTED,
                scripts.STICKY_GET_OR_SET,
            )
        }

    async def _run(self, pipe: Any, text: str, script_keys: list[str], args: list[Any]) -> None:
        """Queue a script on a pipeline: EVALSHA (loading it on NOSCRIPT), or EVAL on a cluster, where a
        failover can leave a new primary without the script cache."""
        if self._cluster:
            pipe.eval(text, len(script_keys), *script_keys, *args)
        else:
            await self._scripts[text](keys=script_keys, args=args, client=pipe)

    async def _run_all(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run scripts in one pipeline and return their replies, in one round trip.

        EVALSHA without redis-py's SCRIPT EXISTS check before every pipeline (a second round trip): a
        call that finds the script missing fails with NOSCRIPT without running, so only those calls are
        rerun after loading it. On a cluster, EVAL with the source, as _run does."""
        if not calls:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for text, script_keys, args in calls:
                if self._cluster:
                    pipe.eval(text, len(script_keys), *script_keys, *args)
                else:
                    pipe.evalsha(self._scripts[text].sha, len(script_keys), *script_keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=self._cluster)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for text in {calls[i][0] for i in missing}:
                await self._redis.script_load(text)
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in missing:
                    text, script_keys, args = calls[i]
                    pipe.evalsha(self._scripts[text].sha, len(script_keys), *script_keys, *args)
                for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    @classmethod
    def from_url(cls, url: str) -> RouterStore:
        options: dict[str, Any] = {
            "decode_responses": True,
            # Invalid UTF-8 written into a hash by hand reads as U+FFFD, which validation then refuses
            # field by field; "strict" failed the whole refresh pipeline, every experiment with it.
            "encoding_errors": "replace",
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
        }
        client = async_client(url, **options)
        pubsub = (
            async_pubsub_client(url, cluster=client, **options)
            if isinstance(client, AsyncRedisCluster)
            else None
        )
        return cls(client, pubsub)

    async def close(self) -> None:
        await self._redis.aclose()
        if self._pubsub_client is not None:
            await self._pubsub_client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except STORE_ERRORS:
            return False

    async def load_all(self) -> RawState:
        """Everything a snapshot needs, in two round trips (names, then one pipeline).

        Through Sentinel, it first asks Sentinel for the master: refreshing is the router's heartbeat,
        so a failover moves reads and writes to the new master within one refresh interval."""
        await follow_sentinel_master(self._redis)
        names = sorted(str(name) for name in await self._redis.smembers(keys.EXPERIMENTS))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.control(keys.GLOBAL_SCOPE))
            for name in names:
                pipe.hgetall(keys.config(name))
                pipe.hgetall(keys.stats(name))
                pipe.hgetall(keys.control(name))
            replies = await pipe.execute()
        experiments = [
            RawExperiment(name, replies[1 + 3 * i], replies[2 + 3 * i], replies[3 + 3 * i])
            for i, name in enumerate(names)
            if replies[1 + 3 * i]  # listed but no config yet: being created
        ]
        return RawState(experiments, replies[0])

    async def record_unattributed(self, scope: str, target: str, before: str, after: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            args = ["", int(time.time() * 1000), target, before, after]
            await self._run(pipe, scripts.RECORD_UNATTRIBUTED, [keys.audited(scope), keys.audit(scope)], args)
            await pipe.execute()

    async def watch_changes(
        self, stop: asyncio.Event, on_change: Callable[[str], None], on_subscribed: Callable[[], None]
    ) -> None:
        """Call on_change(scope) for every change notice, until `stop` is set or the connection fails.

        Pub/sub is at-most-once: callers keep polling too, and resync fully after every (re)subscribe.
        """
        pubsub = (self._pubsub_client or self._redis).pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(keys.CHANGES_CHANNEL)
            on_subscribed()
            while not stop.is_set():
                message = await pubsub.get_message(timeout=0.5)
                if message is not None and message.get("type") == "message":
                    on_change(str(message["data"]))
        finally:
            await pubsub.aclose()

    async def apply_increments(
        self,
        batch_id: str,
        increments: Mapping[str, Mapping[str, float]],
        discounts: Mapping[str, Discount] | None = None,
    ) -> dict[str, Refused]:
        """Add to stats fields per experiment (trials, expected trials, splits); idempotent per batch id.

        Discounted fields (`<arm>:d:<stat>`) arrive scaled to the epoch in `discounts[experiment]`. Each
        experiment's increments are applied entirely or not at all: returns the refused experiments."""
        calls: list[ScriptCall] = []
        for experiment, fields in increments.items():
            discount = (discounts or {}).get(experiment)
            args: list[str | int | float] = [BATCH_MARKER_TTL_SECONDS, *discount_args(discount)]
            for field, increment in fields.items():
                args += [field, repr(increment), "1" if f":{keys.DISCOUNTED}" in field else "0"]
            calls.append(
                (scripts.APPLY_TRIALS, [keys.stats(experiment), keys.batch_seen(experiment, batch_id)], args)
            )
        refused: dict[str, Refused] = {}
        for experiment, reply in zip(increments, await self._run_all(calls), strict=True):
            if isinstance(result := script_result(reply), Refused):
                refused[experiment] = result
        return refused

    async def record_outcomes(
        self, outcomes: Sequence[OutcomeWrite], log_maxlen: int = 0, now_ms: int = 0
    ) -> list[bool | Refused]:
        """Apply outcomes atomically and idempotently: True where applied, False where a duplicate, a
        Refused where the stored statistics cannot absorb it (nothing written, not even its seen marker).

        One RECORD_OUTCOMES call per experiment (and per OUTCOMES_PER_CALL outcomes), all in one
        pipeline. With `log_maxlen` > 0, each applied outcome is also appended to its experiment's
        outcomes log (ts = `now_ms`) by the same script."""
        groups: dict[str, list[int]] = {}
        for index, outcome in enumerate(outcomes):
            groups.setdefault(outcome.experiment, []).append(index)
        calls: list[ScriptCall] = []
        slots: list[list[int]] = []
        for experiment, indices in groups.items():
            stats_key, log_key = keys.stats(experiment), keys.outcomes_log(experiment)
            for start in range(0, len(indices), OUTCOMES_PER_CALL):
                chunk = indices[start : start + OUTCOMES_PER_CALL]
                items = json.dumps(
                    [outcome_args(outcomes[i]) for i in chunk], ensure_ascii=False, separators=(",", ":")
                )
                seen = [keys.outcome_seen(experiment, outcomes[i].nonce) for i in chunk]
                calls.append(
                    (scripts.RECORD_OUTCOMES, [stats_key, log_key, *seen], [log_maxlen, now_ms, items])
                )
                slots.append(chunk)
        results: list[bool | Refused] = [False] * len(outcomes)
        for chunk, reply in zip(slots, await self._run_all(calls), strict=True):
            for i, item in zip(chunk, reply, strict=True):
                results[i] = script_result(item)
        return results

    async def sticky_arm(self, experiment: str, salt: str, unit_id: str, timeout: float) -> str | None:
        """The arm a unit was assigned, or None. Raises on a slow or unreachable Redis."""
        value = await asyncio.wait_for(self._redis.get(keys.sticky(experiment, salt, unit_id)), timeout)
        return None if value is None else str(value)

    async def assign_sticky(self, assignments: Sequence[StickyWrite]) -> list[str]:
        """Store first assignments (first writer wins); return the arm each unit actually has."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in assignments:
                await self._run(
                    pipe,
                    scripts.STICKY_GET_OR_SET,
                    [keys.sticky(item.experiment, item.salt, item.unit_id)],
                    [item.arm, item.ttl_seconds, item.replaces],
                )
            replies = await pipe.execute()
        return [str(reply) for reply in replies]

    async def append_log_entries(self, entries: Sequence[tuple[str, str]], maxlen: int) -> None:
        """XADD each (stream key, JSON array of field, value...), in order per stream, with an approximate
        cap: one APPEND_LOG call per stream (and per LOG_ENTRIES_PER_CALL entries), all in one pipeline."""
        streams: dict[str, list[str]] = {}
        for stream, encoded in entries:
            streams.setdefault(stream, []).append(encoded)
        calls: list[ScriptCall] = [
            (scripts.APPEND_LOG, [stream], [maxlen, f"[{','.join(items[i : i + LOG_ENTRIES_PER_CALL])}]"])
            for stream, items in streams.items()
            for i in range(0, len(items), LOG_ENTRIES_PER_CALL)
        ]
        await self._run_all(calls)

    async def guarded_change(self, experiment: str, change: GuardedChange) -> bool:
        """Apply a router-initiated switch change if the switch is as judged; True when this call won."""
        args: list[Any] = [
            change.field,
            change.value,
            int(time.time() * 1000),
            change.actor,
            change.action,
            change.reason,
            keys.AUDIT_MAXLEN,
            keys.CHANGES_CHANNEL,
            f"{experiment}/{change.field}",
            experiment,
            "unless" if change.unless else "if",
            change.expected,
        ]
        for field, value in change.also:
            args += [field, value]
        script_keys = [
            keys.config(experiment),
            keys.control(experiment),
            keys.audit(experiment),
            keys.audited(experiment),
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._run(pipe, scripts.GUARDED_CHANGE, script_keys, args)
            (reply,) = await pipe.execute()
        return bool(int(reply[0]))

    async def rebase_discount(self, experiment: str, new_epoch_ms: int, half_life_ms: float) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._run(
                pipe, scripts.REBASE_DISCOUNT, [keys.stats(experiment)], [new_epoch_ms, repr(half_life_ms)]
            )
            (reply,) = await pipe.execute()
        return bool(reply)
