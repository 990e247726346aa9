"""Runs Lua scripts for the router store: EVALSHA on one server, EVAL on a cluster, one round trip each.

On a cluster the source goes with every call (EVAL): a failover can leave a new primary without the
script cache, and a per-node SCRIPT LOAD dance would cost more than the bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError, RedisError

ScriptCall = tuple[str, list[str], list[Any]]  # (script text, keys, args)


class ScriptRunner:
    def __init__(self, client: aioredis.Redis | AsyncRedisCluster, texts: Iterable[str]) -> None:
        self._redis: Any = client  # redis-py's cluster and single clients share no typed protocol
        self._cluster = isinstance(client, AsyncRedisCluster)
        self._scripts = {text: client.register_script(text) for text in texts}

    async def queue(self, pipe: Any, text: str, script_keys: list[str], args: list[Any]) -> None:
        """Queue a script on a pipeline: EVALSHA (loading it on NOSCRIPT), or EVAL on a cluster."""
        if self._cluster:
            pipe.eval(text, len(script_keys), *script_keys, *args)
        else:
            await self._scripts[text](keys=script_keys, args=args, client=pipe)

    async def run_all(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run scripts in one pipeline and return their replies, in one round trip.

        EVALSHA without redis-py's SCRIPT EXISTS check before every pipeline (a second round trip): a
        call that finds the script missing fails with NOSCRIPT without running, so only those calls are
        rerun after loading it. A call that fails otherwise raises its error, after every call ran."""
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
