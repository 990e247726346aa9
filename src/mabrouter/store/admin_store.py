"""What operators do to Redis (through the CLI): apply experiments, list them, read their state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis

from mabrouter.store import keys, scripts


@dataclass(frozen=True, slots=True)
class StoredExperiment:
    name: str
    doc_json: str
    version: int
    updated_ms: int
    stats: Mapping[str, str]


class AdminStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._apply_config = client.register_script(scripts.APPLY_CONFIG)

    @classmethod
    def from_url(cls, url: str) -> AdminStore:
        return cls(
            redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=5.0)
        )

    def close(self) -> None:
        self._redis.close()

    def apply(self, name: str, doc_json: str, now_ms: int) -> int:
        """Store a validated document; return its new version (strictly greater than any before)."""
        version = int(self._apply_config(keys=[keys.config(name)], args=[doc_json, now_ms]))
        # Listed after the config exists, so a router never lists a name it cannot load.
        self._redis.sadd(keys.EXPERIMENTS, name)
        return version

    def names(self) -> list[str]:
        return sorted(str(name) for name in self._redis.smembers(keys.EXPERIMENTS))

    def get(self, name: str) -> StoredExperiment | None:
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.config(name))
            pipe.hgetall(keys.stats(name))
            config, stats = pipe.execute()
        if not config:
            return None
        return StoredExperiment(
            name=name,
            doc_json=config.get("doc", ""),
            version=int(config.get("version", 0)),
            updated_ms=int(config.get("updated_ms", 0)),
            stats=stats,
        )
