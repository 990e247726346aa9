"""The router's reads of everything a snapshot is built from, and of the switches alone.

Anyone can write any key by hand, including a key of the wrong type (a string where a hash belongs).
Redis then refuses that one read (WRONGTYPE), and a pipeline that raised on it failed the whole refresh:
every experiment's kill switches went unread because of one other key. So each hash is read on its own
terms: a refused one is reported as unreadable, by family, and the snapshot builder keeps that
experiment's last good state (and its last good switches when its control hash is the unreadable one),
while everything else is read and obeyed. A list of experiments of the wrong type keeps the names last
read. Only failures to reach Redis fail the read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from mabrouter.store import keys
from mabrouter.store.records import RawExperiment, RawState, StoredSwitches

log = logging.getLogger(__name__)

FAMILIES = ("config", "stats", "control")


def hash_reply(reply: object) -> tuple[Mapping[Any, Any], str]:
    """A hash as read, or {} and why Redis refused to read it."""
    if isinstance(reply, ResponseError):
        return {}, str(reply)[:200]
    if isinstance(reply, BaseException):  # not a refusal: let the caller's translation report it
        raise reply
    return reply if isinstance(reply, Mapping) else {}, ""


class SnapshotReads:
    """Reads for one router; remembers the experiment names last read, the fallback for a bad list."""

    def __init__(self) -> None:
        self._names: list[str] | None = None
        self._bad_names = False

    async def names(self, client: Any) -> list[str]:
        try:
            names = sorted(str(name) for name in await client.smembers(keys.EXPERIMENTS))
        except ResponseError as exc:
            if self._names is None:
                raise
            if not self._bad_names:  # Redis's reason is the whole story: no traceback
                log.error("cannot read %s (%s): keeping the experiments last listed", keys.EXPERIMENTS, exc)  # noqa: TRY400
            self._bad_names = True
            return self._names
        if self._bad_names:
            log.info("%s is readable again", keys.EXPERIMENTS)
        self._names, self._bad_names = names, False
        return names

    async def everything(self, client: Any) -> RawState:
        """Every listed experiment's config, stats and control hashes and the global switches, in one
        pipeline after the names."""
        names = await self.names(client)
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.control(keys.GLOBAL_SCOPE))
            for name in names:
                pipe.hgetall(keys.config(name))
                pipe.hgetall(keys.stats(name))
                pipe.hgetall(keys.control(name))
            replies = await pipe.execute(raise_on_error=False)
        global_control, global_problem = hash_reply(replies[0])
        experiments = []
        for index, name in enumerate(names):
            read = [hash_reply(reply) for reply in replies[1 + 3 * index : 4 + 3 * index]]
            unreadable = {
                family: problem for family, (_, problem) in zip(FAMILIES, read, strict=True) if problem
            }
            (config, _), (stats, _), (control, _) = read
            if config or unreadable:  # listed but no config yet: being created
                experiments.append(RawExperiment(name, config, stats, control, unreadable))
        return RawState(experiments, global_control, global_problem)


async def read_switches(client: Any, experiments: Sequence[str]) -> StoredSwitches:
    """The control hashes of `experiments` (those readable) and the global one (None if unreadable)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.control(keys.GLOBAL_SCOPE))
        for name in experiments:
            pipe.hgetall(keys.control(name))
        replies = await pipe.execute(raise_on_error=False)
    global_control, global_problem = hash_reply(replies[0])
    controls = {}
    for name, reply in zip(experiments, replies[1:], strict=True):
        control, problem = hash_reply(reply)
        if not problem:
            controls[name] = control
    return StoredSwitches(controls, None if global_problem else global_control)
