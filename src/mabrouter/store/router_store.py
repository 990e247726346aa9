"""What a running router needs from Redis: read everything, add trial counts, record outcomes.

`RouterStore` implements the router's ports (store/ports.py): it turns their domain terms into keys,
fields and scripts, and every Redis failure into StoreUnavailableError (store/errors.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from mabrouter.store import keys, scripts
from mabrouter.store.connect import async_client, async_pubsub_client, follow_sentinel_master
from mabrouter.store.controls_codec import arm_kill, ramp_advance, ramp_start
from mabrouter.store.errors import STORE_ERRORS, translated
from mabrouter.store.records import (
    Discount,
    GuardedChange,
    OutcomeWrite,
    RawState,
    Refused,
    StoredSwitches,
    TrialCounts,
    UnattributedEdit,
    discount_args,
    outcome_args,
    script_result,
)
from mabrouter.store.script_runner import ScriptCall, ScriptRunner
from mabrouter.store.snapshot_reads import SnapshotReads, read_switches
from mabrouter.store.stats_codec import trial_increments
from mabrouter.store.sticky_redis import StickyRedis

log = logging.getLogger(__name__)

BATCH_MARKER_TTL_SECONDS = 3600
# Outcomes per RECORD_OUTCOMES call and log entries per APPEND_LOG call: one script runs atomically, so
# a bound keeps any single call from holding Redis for long (a few ms at most).
OUTCOMES_PER_CALL = 250
LOG_ENTRIES_PER_CALL = 500


class RouterStore(StickyRedis):
    def __init__(
        self, client: aioredis.Redis | AsyncRedisCluster, pubsub_client: aioredis.Redis | None = None
    ) -> None:
        self._redis: Any = client  # redis-py's cluster and single clients share no typed protocol
        self._pubsub_client = pubsub_client
        self._reads = SnapshotReads()
        self._scripts = ScriptRunner(
            client,
            (
                scripts.GUARDED_CHANGE,
                scripts.REBASE_DISCOUNT,
                scripts.RECORD_OUTCOMES,
                scripts.APPEND_LOG,
                scripts.APPLY_TRIALS,
                scripts.RECORD_UNATTRIBUTED,
                scripts.STICKY_GET_OR_SET,
            ),
        )

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
        with translated:
            client = async_client(url, **options)
            pubsub = (
                async_pubsub_client(url, cluster=client, **options)
                if isinstance(client, AsyncRedisCluster)
                else None
            )
        return cls(client, pubsub)

    async def close(self) -> None:
        with translated:
            await self._redis.aclose()
            if self._pubsub_client is not None:
                await self._pubsub_client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except STORE_ERRORS:
            return False

    async def load_all(self) -> RawState:
        """Everything a snapshot needs, in two round trips (names, then one pipeline): snapshot_reads.py.

        Through Sentinel, it first asks Sentinel for the master: refreshing is the router's heartbeat,
        so a failover moves reads and writes to the new master within one refresh interval."""
        with translated:
            await follow_sentinel_master(self._redis)
            return await self._reads.everything(self._redis)

    async def load_switches(self, experiments: Sequence[str]) -> StoredSwitches:
        """The control hashes of `experiments` and the global one: the change notice's fast path
        (runtime/refresher.py), one pipeline however many slots they live in."""
        with translated:
            return await read_switches(self._redis, experiments)

    async def record_unattributed(self, edit: UnattributedEdit) -> None:
        with translated:
            async with self._redis.pipeline(transaction=False) as pipe:
                args = ["", int(time.time() * 1000), edit.target, edit.before, edit.after]
                script_keys = [keys.audited(edit.scope), keys.audit(edit.scope)]
                await self._scripts.queue(pipe, scripts.RECORD_UNATTRIBUTED, script_keys, args)
                await pipe.execute()

    async def watch_changes(
        self, stop: asyncio.Event, on_change: Callable[[str], None], on_subscribed: Callable[[], None]
    ) -> None:
        """Call on_change(scope) for every change notice, until `stop` is set or the connection fails.

        Pub/sub is at-most-once: callers keep polling too, and resync fully after every (re)subscribe.
        """
        with translated:
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

    async def add_trials(self, batch_id: str, batch: Mapping[str, TrialCounts]) -> dict[str, Refused]:
        """Add each experiment's trial counters (stats_codec.trial_increments); see apply_increments."""
        increments = {experiment: trial_increments(counts) for experiment, counts in batch.items()}
        discounts = {
            experiment: (counts.discount[0], counts.discount[1])
            for experiment, counts in batch.items()
            if counts.discount is not None
        }
        return await self.apply_increments(batch_id, increments, discounts)

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
        with translated:
            replies = await self._scripts.run_all(calls)
        refused: dict[str, Refused] = {}
        for experiment, reply in zip(increments, replies, strict=True):
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
        with translated:
            replies = await self._scripts.run_all(calls)
        results: list[bool | Refused] = [False] * len(outcomes)
        for chunk, reply in zip(slots, replies, strict=True):
            for i, item in zip(chunk, reply, strict=True):
                results[i] = script_result(item)
        return results

    async def append_decisions(self, entries: Sequence[tuple[str, str]], maxlen: int) -> dict[str, str]:
        """XADD each (experiment, JSON array of field, value...) to the experiment's decision log, in
        order, with an approximate cap: one APPEND_LOG call per experiment (and per
        LOG_ENTRIES_PER_CALL entries), all in one pipeline. Returns the experiments whose log key is of
        another type, with what it holds: their entries were not written, every other one was."""
        streams: dict[str, list[str]] = {}
        for experiment, encoded in entries:
            streams.setdefault(experiment, []).append(encoded)
        owners = [
            experiment
            for experiment, items in streams.items()
            for _ in range(0, len(items), LOG_ENTRIES_PER_CALL)
        ]
        calls: list[ScriptCall] = [
            (
                scripts.APPEND_LOG,
                [keys.decisions_log(experiment)],
                [maxlen, f"[{','.join(items[i : i + LOG_ENTRIES_PER_CALL])}]"],
            )
            for experiment, items in streams.items()
            for i in range(0, len(items), LOG_ENTRIES_PER_CALL)
        ]
        with translated:
            replies = await self._scripts.run_all(calls)
        return {
            owner: f"{reply[1]} is a {reply[2]}, not a stream"
            for owner, reply in zip(owners, replies, strict=True)
            if isinstance(reply, list)
        }

    async def kill_arm(self, experiment: str, arm: str, evidence: str, *, over_unkill: bool) -> bool:
        return await self._guarded_change(experiment, arm_kill(arm, evidence, over_unkill=over_unkill))

    async def start_ramp(self, experiment: str, arm: str, now_ms: int, reason: str) -> bool:
        return await self._guarded_change(experiment, ramp_start(arm, now_ms, reason))

    async def advance_ramp(self, experiment: str, arm: str, step: int, now_ms: int, reason: str) -> bool:
        return await self._guarded_change(experiment, ramp_advance(arm, step, now_ms, reason))

    async def _guarded_change(self, experiment: str, change: GuardedChange) -> bool:
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
        with translated:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._scripts.queue(pipe, scripts.GUARDED_CHANGE, script_keys, args)
                (reply,) = await pipe.execute()
        if int(reply[0]) and reply[2]:
            log.error("%s changed %s without its audit entry: %s", change.actor, experiment, reply[2])
        return bool(int(reply[0]))

    async def rebase_discount(self, experiment: str, new_epoch_ms: int, half_life_ms: float) -> bool:
        with translated:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._scripts.queue(
                    pipe,
                    scripts.REBASE_DISCOUNT,
                    [keys.stats(experiment)],
                    [new_epoch_ms, repr(half_life_ms)],
                )
                (reply,) = await pipe.execute()
        return bool(reply)
