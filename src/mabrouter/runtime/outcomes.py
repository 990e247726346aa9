"""ReportOutcome(s): verify each decision id, validate the reward, apply all valid ones in one round trip.

"Acknowledged" means durable: applied in Redis (as durable as its AOF/replication makes it), or, when
Redis is unreachable and a spool directory is configured, fsync'd to the local spool, which is replayed
into Redis (exactly once, by nonce) when it returns. Without a spool, an outcome that cannot reach
Redis gets UNAVAILABLE and the caller retries (safe: retries are deduplicated).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mabrouter.core import decision_id
from mabrouter.core.discount import weight
from mabrouter.core.outcome import guardrail_metrics, validate_outcome
from mabrouter.core.snapshot import ExperimentState
from mabrouter.errors import MabrouterError, NoSnapshotError, StoreUnavailableError
from mabrouter.runtime.exposure import ExposureLog
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.runtime.spool import OutcomeSpool, SpoolFullError
from mabrouter.store.errors import STORE_ERRORS
from mabrouter.store.router_store import OutcomeWrite, RouterStore

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Accepted:
    experiment: str
    arm: str
    duplicate: bool
    trace: str = ""  # the decision span's ids, for a span link


OutcomeResult = Accepted | MabrouterError
# (decision id, reward, guardrail metrics)
Outcome = tuple[str, float, Mapping[str, float]]


def _discount(state: ExperimentState, now_ms: int) -> tuple[int, float, float] | None:
    """(epoch, half-life ms, weight now) for an experiment with a half-life (forward decay)."""
    half_life = state.spec.half_life_seconds
    if not half_life:
        return None
    epoch = state.discount_epoch_ms or now_ms  # the first writer proposes the epoch
    return epoch, half_life * 1000.0, weight(now_ms, epoch, half_life)


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
        spool: OutcomeSpool | None = None,
    ) -> None:
        self._store = store
        self._holder = holder
        self._keys = tuple(keys)
        self._ttl_seconds = ttl_seconds
        self._exposure = exposure
        self._metrics = metrics
        self._spool = spool

    async def record(self, outcomes: Sequence[Outcome]) -> list[OutcomeResult]:
        """One result per outcome, in order. Raises only when nothing can be applied."""
        snapshot = self._holder.current
        if snapshot is None:
            raise NoSnapshotError(
                "no configuration loaded yet (is Redis reachable?); retry the outcome later"
            )
        now_ms = int(time.time() * 1000)
        max_age_ms = self._ttl_seconds * 1000
        results: list[OutcomeResult] = []
        accepted: list[tuple[int, decision_id.DecisionToken, OutcomeWrite]] = []
        for raw_id, reward, metrics in outcomes:
            try:
                token = decision_id.decode(raw_id, self._keys, now_ms, max_age_ms)
                validate_outcome(token, reward, snapshot)
                watched = guardrail_metrics(token, metrics, snapshot)
            except MabrouterError as exc:
                self._metrics.outcomes.labels("", f"refused_{exc.code.value}").inc()
                results.append(exc)
                continue
            remaining = max(1, (token.issued_ms + max_age_ms - now_ms) // 1000 + 1)
            write = OutcomeWrite(
                token.experiment,
                token.arm,
                token.nonce,
                reward,
                token.counted,
                remaining,
                metrics=watched,
                segment=token.segment,
                discount=_discount(snapshot.experiments[token.experiment], now_ms),
            )
            accepted.append((len(results), token, write))
            results.append(Accepted(token.experiment, token.arm, duplicate=False, trace=token.trace))
        if accepted:
            writes = [write for _, _, write in accepted]
            try:
                # The script also appends each applied outcome to the outcomes log, atomically.
                applied = await self._store.record_outcomes(writes, self._exposure.maxlen, now_ms)
            except STORE_ERRORS as exc:
                self._metrics.redis_errors.labels("record_outcomes").inc()
                await self._spool_or_raise(writes, exc)
                return results  # spooled: acknowledged, applied when Redis returns
            count_outcome, add_reward = self._metrics.count_outcome, self._metrics.add_reward
            for (slot, token, write), was_applied in zip(accepted, applied, strict=True):
                results[slot] = Accepted(
                    write.experiment, write.arm, duplicate=not was_applied, trace=token.trace
                )
                count_outcome(write.experiment, "applied" if was_applied else "duplicate")
                if was_applied:
                    add_reward(write.experiment, write.arm, write.reward)
        return results

    async def _spool_or_raise(self, writes: list[OutcomeWrite], cause: Exception) -> None:
        if self._spool is None:
            raise StoreUnavailableError(
                f"outcome not recorded, Redis is unavailable ({cause}); retry it"
            ) from cause
        try:
            # fsync takes milliseconds (more on a busy disk): off the event loop, so Route never waits for
            # it. The spool is thread-safe; the call is acknowledged only after the fsync returns.
            await asyncio.to_thread(self._spool.append, writes)
        except (SpoolFullError, OSError) as exc:
            self._metrics.dropped.labels("outcome_spool").inc(len(writes))
            raise StoreUnavailableError(
                f"outcome not recorded: Redis is unavailable and {exc}; retry it"
            ) from exc
        self._metrics.outcomes.labels("", "spooled").inc(len(writes))

    def spooled(self) -> int:
        return len(self._spool) if self._spool is not None else 0

    async def replay_spool(self, batch: int = 100) -> None:
        """Apply spooled outcomes to Redis (exactly once, by nonce); stop at the first Redis error.

        Encoding a batch and parsing its replies holds the event loop (~5 ms per 100 outcomes, ~20 ms
        per 500, measured), and Route waits for whatever batch is in hand, hence small batches.
        """
        if self._spool is None:
            return
        while len(self._spool):
            writes = self._spool.peek(batch)
            try:
                applied = await self._store.record_outcomes(writes)
            except STORE_ERRORS:
                return  # still down: the next flush round retries
            now_ms = int(time.time() * 1000)
            for write, was_applied in zip(writes, applied, strict=True):
                self._metrics.outcomes.labels(
                    write.experiment, "applied" if was_applied else "duplicate"
                ).inc()
                if was_applied:
                    self._metrics.rewards.labels(write.experiment, write.arm).inc(write.reward)
                    self._exposure.outcome_of(write, now_ms)
            # Persisting the progress fsyncs: off the event loop, so Route never waits on the disk.
            await asyncio.to_thread(self._spool.drop, len(writes))
