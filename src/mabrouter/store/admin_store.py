"""What operators do to Redis (through the CLI): apply experiments, flip switches, read state and logs.

`AdminStore` implements the OperatorStore port (store/ports.py). Every change goes through a Lua script
that bumps the version, writes the audit entry and publishes the change notice atomically with the
change itself. Every Redis failure leaves as StoreUnavailableError (store/errors.py).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from mabrouter.store import keys, lifecycle_scripts, scripts
from mabrouter.store.connect import sync_client
from mabrouter.store.errors import STORE_ERRORS, translated
from mabrouter.store.experiment_decoder import is_archived
from mabrouter.store.records import AuditEntry, Change, StoredExperiment
from mabrouter.store.snapshot_reads import FAMILIES, hash_reply

# Log entries counted per script call: the script builds each entry (~2.5 us) and holds Redis meanwhile.
COUNT_PAGE = 1000


class AdminStore:
    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self._redis: Any = client  # redis-py's cluster and single clients share no typed protocol
        self._apply_config = client.register_script(scripts.APPLY_CONFIG)
        self._change_control = client.register_script(scripts.CHANGE_CONTROL)
        self._delete_definition = client.register_script(lifecycle_scripts.DELETE_DEFINITION)
        # Run with EVALSHA_RO (read-only: a user with read access to the log may run it, on a replica too).
        self._count_sha = hashlib.sha1(lifecycle_scripts.COUNT_ENTRIES.encode()).hexdigest()  # noqa: S324
        self._count_in_redis = True
        # Problems that did not stop a change (an audit entry that could not be written), for the CLI.
        self.warnings: list[str] = []

    @classmethod
    def from_url(cls, url: str) -> AdminStore:
        # Invalid UTF-8 written by hand reads as U+FFFD instead of failing the whole reply: validation
        # then names the field.
        with translated:  # a cluster client connects as it is made
            client = sync_client(
                url,
                decode_responses=True,
                encoding_errors="replace",
                socket_timeout=5.0,
                socket_connect_timeout=5.0,
            )
        return cls(client)

    def close(self) -> None:
        with translated:
            self._redis.close()

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except STORE_ERRORS:
            return False

    @staticmethod
    def _audit_args(change: Change, target: str, scope: str) -> list[str | int]:
        return [
            change.now_ms,
            change.actor,
            change.action,
            change.reason,
            keys.AUDIT_MAXLEN,
            keys.CHANGES_CHANNEL,
            target,
            scope,
        ]

    def apply(self, name: str, doc_json: str, change: Change) -> int:
        """Store a validated document; return its new version (strictly greater than any before)."""
        with translated:
            version, unaudited = self._apply_config(
                keys=[keys.config(name), keys.config(name), keys.audit(name), keys.audited(name)],
                args=["", doc_json, *self._audit_args(change, f"{name}/doc", name)],
            )
            self._unaudited(f"{name}/doc", unaudited)
            # Listed after the config exists, so a router never lists a name it cannot load. The script's
            # change notice went out before the listing (the set lives in another cluster slot, outside
            # the script): notify again, or routers would find a new experiment only at their next poll.
            self._redis.sadd(keys.EXPERIMENTS, name)
            self._redis.publish(keys.CHANGES_CHANNEL, name)
        return int(version)

    def _unaudited(self, target: str, why: object) -> None:
        if why:
            self.warnings.append(
                f"{target} was changed, but its audit entry could not be written: {why} "
                "(delete that key with redis-cli DEL; the audit log restarts from the next change)"
            )

    def set_kill(
        self, experiment: str | None, arm: str | None, killed: bool, change: Change
    ) -> tuple[int | None, bool]:
        """Kill or unkill an experiment, one of its arms, or (experiment None) every experiment; return
        the new version (None when the stored one is not a number) and whether it was killed before.

        Unkilling an arm writes 0 rather than deleting the field: a recorded operator decision, after
        which guardrails judge the arm only on evidence gathered since (docs/decisions/0013)."""
        scope = keys.GLOBAL_SCOPE if experiment is None else experiment
        field = keys.kill_arm_field(arm) if arm else keys.KILL
        version, before = self._set_control(scope, field, "1" if killed else ("0" if arm else ""), change)
        return version, before == "1"

    def set_rollout(self, experiment: str, percent: float, change: Change) -> tuple[int | None, str]:
        """Set the percent of units exposed; return the new version and the rollout stored before."""
        return self._set_control(experiment, keys.ROLLOUT, f"{percent:g}", change)

    def set_archived(self, experiment: str, archived: bool, change: Change) -> tuple[int | None, str]:
        """Archive (store the time) or unarchive (delete the field); the new version and the value before.
        Only the lifecycle field changes: statistics, logs and switches stay as they are."""
        value = str(change.now_ms) if archived else ""
        return self._set_control(experiment, keys.ARCHIVED, value, change)

    def _set_control(self, scope: str, field: str, value: str, change: Change) -> tuple[int | None, str]:
        """Set (or with value '' delete) one switch; return (new version, previous value). The version is
        None when the stored one is not a number (edited by hand): the switch is written anyway."""
        version_key = keys.control(scope) if scope == keys.GLOBAL_SCOPE else keys.config(scope)
        target = scope if field == keys.KILL else f"{scope}/{field}"
        with translated:
            version, before, unaudited = self._change_control(
                keys=[version_key, keys.control(scope), keys.audit(scope), keys.audited(scope)],
                args=[field, value, *self._audit_args(change, target, scope)],
            )
        self._unaudited(target, unaudited)
        return (int(version) if str(version).isdigit() else None), str(before)

    def key_families(self, experiment: str) -> dict[str, int]:
        """How many keys of each family the experiment has, found by SCAN: family pattern -> count."""
        return dict(Counter(keys.family_of(experiment, key) for key in self._scan(experiment)))

    def delete(self, experiment: str, change: Change) -> int | None:
        """Remove every key of an archived experiment and unlist it; the number of keys removed, or None
        when it is not archived (then nothing of its definition is removed).

        In three steps, each safe to stop after (a rerun finishes the job): first the keys outside its
        definition (logs, audit, sticky units, seen and batch markers: there may be millions, unlinked in
        chunks); then config, statistics and switches in one script, so it is never half defined, and
        only if still archived as checked; last the listing, with the audit entry in the global audit log
        (its own is gone). An experiment listed without a config (an interrupted delete) is finished."""
        definition = [keys.config(experiment), keys.stats(experiment), keys.control(experiment)]
        with translated, self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.config(experiment))
            pipe.hget(keys.control(experiment), keys.ARCHIVED)
            has_config, archived = pipe.execute()
        checked = str(archived or "")
        if has_config and not is_archived({keys.ARCHIVED: checked}):
            return None
        expected = checked if has_config else ""
        removed = self._unlink(experiment, skip=frozenset(definition))
        with translated:
            deleted = int(self._delete_definition(keys=definition, args=[expected]))
        if deleted < 0:
            return None
        # Keys a router wrote meanwhile (a flush of what it buffered before the archive) go too.
        removed += deleted + self._unlink(experiment, skip=frozenset())
        self._unlist(experiment, f"archived ({checked})", f"deleted ({removed} keys)", change)
        return removed

    def _scan(self, experiment: str) -> list[str]:
        with translated:
            return [str(key) for key in self._redis.scan_iter(keys.experiment_pattern(experiment), 1000)]

    def _unlink(self, experiment: str, skip: frozenset[str], chunk: int = 1000) -> int:
        """UNLINK (memory freed off Redis's main thread) every key of the experiment but `skip`."""
        found = [key for key in self._scan(experiment) if key not in skip]
        with translated:
            for start in range(0, len(found), chunk):
                self._redis.unlink(*found[start : start + chunk])
        return len(found)

    def _unlist(self, experiment: str, before: str, after: str, change: Change) -> None:
        """Unlist a deleted experiment, audited in the global log, with a change notice: one transaction
        on a single Redis. On a cluster the set and the global log live in other slots than each other,
        where no transaction can span them: the same commands, in this order, as one pipeline."""
        entry = {
            "ts_ms": change.now_ms,
            "actor": change.actor,
            "action": change.action,
            "target": experiment,
            "before": before,
            "after": after,
            "reason": change.reason,
            "version": "",
        }
        transaction = not isinstance(self._redis, RedisCluster)
        with translated, self._redis.pipeline(transaction=transaction) as pipe:
            pipe.srem(keys.EXPERIMENTS, experiment)
            pipe.xadd(keys.audit(keys.GLOBAL_SCOPE), entry, maxlen=keys.AUDIT_MAXLEN, approximate=True)
            pipe.publish(keys.CHANGES_CHANNEL, experiment)
            pipe.execute()

    def count_decisions(self, experiment: str, since_ms: int, limit: int) -> int:
        """Entries of the decision log written at or after `since_ms` (its ids are the write times),
        counted up to `limit`, a page at a time."""
        stream, start, total = keys.decisions_log(experiment), stream_id_at(since_ms), 0
        while total < limit:
            page = min(COUNT_PAGE, limit - total)
            with translated:
                count, last = self._count_page(stream, start, page)
            total += count
            if count < page:
                break
            start = "(" + last  # exclusive: continue after the last entry counted
        return total

    def _count_page(self, stream: str, start: str, page: int) -> tuple[int, str]:
        """(entries, last id) of one page, counted in Redis by a read-only script (only two values cross
        the network: 15-20x faster than reading the entries), or read here when the user may not run
        it: the documented least-privilege operator may read logs, not run EVALSHA_RO."""
        if self._count_in_redis:
            try:
                try:
                    count, last = self._redis.evalsha_ro(self._count_sha, 1, stream, start, page)
                except redis.exceptions.NoScriptError:
                    self._redis.script_load(lifecycle_scripts.COUNT_ENTRIES)
                    count, last = self._redis.evalsha_ro(self._count_sha, 1, stream, start, page)
                return int(count), str(last)
            except redis.exceptions.NoPermissionError:
                self._count_in_redis = False
        entries = self._redis.xrange(stream, min=start, count=page) or []
        return len(entries), str(entries[-1][0]) if entries else ""

    def names(self) -> list[str]:
        with translated:
            return sorted(str(name) for name in self._redis.smembers(keys.EXPERIMENTS))

    def get(self, name: str) -> StoredExperiment | None:
        """The experiment's hashes, None when it has no document. A hash Redis refuses to read (a key of
        another type, written by hand) is listed in `unreadable`: a kill must still be writable, and
        status must say why it cannot show the experiment (store/snapshot_reads.py for routers)."""
        with translated, self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.config(name))
            pipe.hgetall(keys.stats(name))
            pipe.hgetall(keys.control(name))
            replies = pipe.execute(raise_on_error=False)
            (config, _), (stats, _), (control, _) = read = [hash_reply(reply) for reply in replies]
        unreadable = {family: why for family, (_, why) in zip(FAMILIES, read, strict=True) if why}
        if not config and not unreadable:
            return None
        return StoredExperiment(name, _text_map(config), _text_map(stats), _text_map(control), unreadable)

    def global_control(self) -> Mapping[str, str]:
        with translated:
            return _text_map(self._redis.hgetall(keys.control(keys.GLOBAL_SCOPE)))

    def read_decisions(self, experiment: str, since_ms: int) -> Iterator[dict[str, str]]:
        return self._read_log(keys.decisions_log(experiment), since_ms)

    def read_outcomes(self, experiment: str, since_ms: int) -> Iterator[dict[str, str]]:
        return self._read_log(keys.outcomes_log(experiment), since_ms)

    def _read_log(self, stream: str, since_ms: int, page: int = 10_000) -> Iterator[dict[str, str]]:
        """Every entry of a log stream from `since_ms` on, oldest first, read in pages."""
        start = stream_id_at(since_ms)
        while True:
            with translated:
                entries = self._redis.xrange(stream, min=start, count=page) or []
            for entry_id, fields in entries:
                yield {"id": str(entry_id), **_text_map(fields or {})}
            if len(entries) < page:
                return
            last = str(entries[-1][0])
            start = "(" + last  # exclusive: continue after the last entry read

    def audit(
        self, experiments: Sequence[str], count: int, *, global_switches: bool = False
    ) -> list[AuditEntry]:
        """The newest `count` entries of these experiments (and of the global switches), oldest first."""
        scopes = [keys.GLOBAL_SCOPE, *experiments] if global_switches else list(experiments)
        entries: list[AuditEntry] = []
        with translated:
            for scope in scopes:
                for entry_id, fields in self._redis.xrevrange(keys.audit(scope), count=count) or []:
                    entries.append(AuditEntry(scope, str(entry_id), _text_map(fields or {})))
        entries.sort(key=lambda entry: tuple(int(part) for part in entry.entry_id.split("-")))
        return entries[-count:]


def _text_map(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """The client decodes responses; this only narrows redis-py's loose types."""
    return {str(key): str(value) for key, value in raw.items()}


def stream_id_at(ms: int) -> str:
    """The smallest stream entry id at or after a wall-clock time in milliseconds."""
    return f"{ms}-0"
