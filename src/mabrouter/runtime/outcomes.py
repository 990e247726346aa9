"""ReportOutcome(s): verify each decision id, validate the reward, apply all valid ones in one round trip.

"Acknowledged" means applied in Redis: a caller gets OK only after the Lua script has run, so an
acknowledged outcome is as durable as the Redis deployment (AOF/replication) makes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from mabrouter.core import decision_id
from mabrouter.core.outcome import validate_outcome
from mabrouter.errors import MabrouterError, NoSnapshotError, StoreUnavailableError
from mabrouter.runtime.exposure import ExposureLog
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.store.router_store import OutcomeWrite, RouterStore

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Accepted:
    experiment: str
    arm: str
    duplicate: bool
    trace: str = ""  # the decision span's ids, for a span link


OutcomeResult = Accepted | MabrouterError


class OutcomeRecorder:
    def __init__(
        self,
        store: RouterStore,
        holder: SnapshotHolder,
        keys: Sequence[bytes],
        ttl_seconds: int,
        *,
        exposure: ExposureLog,
        metrics: RouterMetrics,
    ) -> None:
        self._store = store
        self._holder = holder
        self._keys = tuple(keys)
        self._ttl_seconds = ttl_seconds
        self._exposure = exposure
        self._metrics = metrics

    async def record(self, outcomes: Sequence[tuple[str, float]]) -> list[OutcomeResult]:
        """One result per (decision_id, reward), in order. Raises only when nothing can be applied."""
        snapshot = self._holder.current
        if snapshot is None:
            raise NoSnapshotError(
                "no configuration loaded yet (is Redis reachable?); retry the outcome later"
            )
        now_ms = int(time.time() * 1000)
        max_age_ms = self._ttl_seconds * 1000
        results: list[OutcomeResult] = []
        accepted: list[tuple[int, decision_id.DecisionToken, OutcomeWrite]] = []
        for raw_id, reward in outcomes:
            try:
                token = decision_id.decode(raw_id, self._keys, now_ms, max_age_ms)
                validate_outcome(token, reward, snapshot)
            except MabrouterError as exc:
                self._metrics.outcomes.labels("", f"refused_{exc.code.value}").inc()
                results.append(exc)
                continue
            remaining = max(1, (token.issued_ms + max_age_ms - now_ms) // 1000 + 1)
            write = OutcomeWrite(token.experiment, token.arm, token.nonce, reward, token.counted, remaining)
            accepted.append((len(results), token, write))
            results.append(Accepted(token.experiment, token.arm, duplicate=False, trace=token.trace))
        if accepted:
            try:
                applied = await self._store.record_outcomes([write for _, _, write in accepted])
            except (RedisError, OSError) as exc:
                self._metrics.redis_errors.labels("record_outcomes").inc()
                raise StoreUnavailableError(
                    f"outcome not recorded, Redis is unavailable ({exc}); retry it"
                ) from exc
            for (slot, token, write), was_applied in zip(accepted, applied, strict=True):
                results[slot] = Accepted(
                    write.experiment, write.arm, duplicate=not was_applied, trace=token.trace
                )
                self._metrics.outcomes.labels(
                    write.experiment, "applied" if was_applied else "duplicate"
                ).inc()
                if was_applied:
                    self._metrics.rewards.labels(write.experiment, write.arm).inc(write.reward)
                    self._exposure.outcome(token, write.reward, now_ms)
        return results
