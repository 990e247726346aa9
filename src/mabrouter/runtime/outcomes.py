"""ReportOutcome(s): verify each decision id, validate the reward, apply all valid ones in one round trip.

"Acknowledged" means durable: applied in Redis (as durable as its AOF/replication makes it), or, when
Redis is unreachable and a spool directory is configured, fsync'd to the local spool, which is replayed
into Redis (exactly once, by nonce) when it returns. Without a spool, an outcome that cannot reach
Redis gets UNAVAILABLE and the caller retries (safe: retries are deduplicated).

Every refusal that depends only on the request (decision id, reward and metric values, the weight a
discounted outcome would carry) is made before anything is sent or spooled, so the spool never
acknowledges what the live path refuses. Only Redis can tell that a stored field cannot absorb an outcome
(an operator wrote "abc" or 1e308 into it): live, that outcome gets FAILED_PRECONDITION with nothing
written, to be retried after the repair; from the spool, where it was already acknowledged, it is
dropped, counted (result "rejected") and logged in full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from mabrouter.core import decision_id
from mabrouter.core.discount import weight
from mabrouter.core.features import decode_context
from mabrouter.core.outcome import guardrail_metrics, validate_outcome
from mabrouter.core.snapshot import ExperimentState
from mabrouter.errors import (
    InvalidDecisionIdError,
    InvalidRequestError,
    MabrouterError,
    NoSnapshotError,
    SpoolFullError,
    StoreUnavailableError,
    UnabsorbableOutcomeError,
)
from mabrouter.runtime.exposure import ExposureLog
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.runtime.signer import DecisionVerifier
from mabrouter.store.ports import OutcomeLedger, Spool
from mabrouter.store.records import OutcomeWrite, Refused

log = logging.getLogger(__name__)

MAX_BATCH = 1000
# At most one warning per experiment per this many seconds about outcomes its statistics refuse.
REFUSAL_LOG_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Accepted:
    experiment: str
    arm: str
    duplicate: bool
    trace: str = ""  # the decision span's ids, for a span link


OutcomeResult = Accepted | MabrouterError
# (decision id, reward, guardrail metrics)
Outcome = tuple[str, float, Mapping[str, float]]


def _discount(state: ExperimentState, now_ms: int, reward: float) -> tuple[int, float, float] | None:
    """(epoch, half-life ms, weight now) for an experiment with a half-life (forward decay)."""
    half_life = state.spec.half_life_seconds
    if not half_life:
        return None
    epoch = state.discount_epoch_ms or now_ms  # the first writer proposes the epoch
    try:
        scale = weight(now_ms, epoch, half_life)
    except OverflowError:
        scale = math.inf
    # The weight doubles every half-life until a guardian moves the epoch forward (every 64 half-lives,
    # core/discount.py); one that makes even this reward's weighted square overflow means no router ran
    # a guardian for hundreds of half-lives. Refused here, before anything is sent or spooled, with a
    # status that says to retry: the next guardian round rebases the epoch.
    if not math.isfinite(reward * reward * scale):
        raise StoreUnavailableError(
            f"experiment {state.spec.name!r}: its discount epoch is too old to weight this outcome "
            "(no router has moved it forward yet); retry in a few seconds"
        )
    return epoch, half_life * 1000.0, scale


def _check_context(token: decision_id.DecisionToken) -> None:
    """A contextual decision's vector must decode before its outcome is sent or spooled. The id is
    signed, so one that does not was written by no router of this version (or with a leaked secret)."""
    if token.context:
        try:
            decode_context(token.context)
        except ValueError as exc:
            raise InvalidDecisionIdError(f"decision_id context cannot be used: {exc}") from exc


def refusal_error(write: OutcomeWrite, refused: Refused) -> MabrouterError:
    """What the caller is told about an outcome the store refused; names the experiment, arm and field."""
    where = f"experiment {write.experiment!r}, arm {write.arm!r}"
    if refused.reason == "input":
        return InvalidRequestError(f"outcome not applied ({where}): {refused.field} {refused.stored!r}")
    if refused.reason == "type":
        problem = f"Redis key {refused.field!r} is a {refused.stored}, not what the statistics need"
    elif refused.reason == "overflow":
        problem = (
            f"stats field {refused.field!r} holds {refused.stored!r}, and adding this outcome to it "
            "would not give a finite number"
        )
    else:
        problem = f"stats field {refused.field!r} holds {refused.stored!r}, which is not a finite number"
    return UnabsorbableOutcomeError(
        f"outcome not applied ({where}): {problem}. Nothing was recorded: repair the field (or delete it, "
        "which restarts it from 0) and retry the outcome"
    )


class OutcomeRecorder:
    def __init__(
        self,
        store: OutcomeLedger,
        holder: SnapshotHolder,
        ids: DecisionVerifier,
        *,
        exposure: ExposureLog,
        metrics: RouterMetrics,
        spool: Spool | None = None,
    ) -> None:
        self._store = store
        self._holder = holder
        self._ids = ids
        self._exposure = exposure
        self._metrics = metrics
        self._spool = spool
        self._refusal_logged: dict[str, float] = {}  # experiment -> monotonic time of the last warning

    async def record(self, outcomes: Sequence[Outcome]) -> list[OutcomeResult]:
        """One result per outcome, in order. Raises only when nothing can be applied."""
        snapshot = self._holder.current
        if snapshot is None:
            raise NoSnapshotError(
                "no configuration loaded yet (is Redis reachable?); retry the outcome later"
            )
        now_ms = int(time.time() * 1000)
        results: list[OutcomeResult] = []
        accepted: list[tuple[int, decision_id.DecisionToken, OutcomeWrite]] = []
        for raw_id, reward, metrics in outcomes:
            try:
                token = self._ids.verify(raw_id, now_ms)
                validate_outcome(token, reward, snapshot)
                _check_context(token)
                watched = guardrail_metrics(token, metrics, snapshot)
                discount = _discount(snapshot.experiments[token.experiment], now_ms, reward)
            except MabrouterError as exc:
                self._metrics.add(self._metrics.outcomes, "", f"refused_{exc.code.value}")
                results.append(exc)
                continue
            remaining = self._ids.seconds_left(token, now_ms)
            write = OutcomeWrite(
                token.experiment,
                token.arm,
                token.nonce,
                reward,
                token.counted,
                remaining,
                metrics=watched,
                segment=token.segment,
                discount=discount,
                context=token.context,
            )
            accepted.append((len(results), token, write))
            results.append(Accepted(token.experiment, token.arm, duplicate=False, trace=token.trace))
        if accepted:
            writes = [write for _, _, write in accepted]
            try:
                # The script also appends each applied outcome to the outcomes log, atomically.
                applied = await self._store.record_outcomes(writes, self._exposure.maxlen, now_ms)
            except StoreUnavailableError as exc:
                self._metrics.add(self._metrics.redis_errors, "record_outcomes")
                await self._spool_or_raise(writes, exc)
                return results  # spooled: acknowledged, applied when Redis returns
            count_outcome, add_reward = self._metrics.count_outcome, self._metrics.add_reward
            for (slot, token, write), result in zip(accepted, applied, strict=True):
                if isinstance(result, Refused):
                    results[slot] = self._refused(write, result)
                    continue
                results[slot] = Accepted(write.experiment, write.arm, duplicate=not result, trace=token.trace)
                count_outcome(write.experiment, "applied" if result else "duplicate")
                if result:
                    add_reward(write.experiment, write.arm, write.reward)
        return results

    def _refused(self, write: OutcomeWrite, refused: Refused) -> MabrouterError:
        error = refusal_error(write, refused)
        self._metrics.count_outcome(write.experiment, "rejected")
        now = time.monotonic()
        last = self._refusal_logged.get(write.experiment)
        if last is None or now - last >= REFUSAL_LOG_INTERVAL_SECONDS:
            # Throttled: every outcome for the arm is refused until an operator repairs the field.
            self._refusal_logged[write.experiment] = now
            log.warning("%s (logged once a minute per experiment; counted as result=rejected)", error)
        return error

    async def _spool_or_raise(self, writes: list[OutcomeWrite], cause: StoreUnavailableError) -> None:
        if self._spool is None:
            raise StoreUnavailableError(f"outcome not recorded ({cause}); retry it") from cause
        try:
            # fsync takes milliseconds (more on a busy disk): off the event loop, so Route never waits for
            # it. The spool is thread-safe; the call is acknowledged only after the fsync returns.
            await asyncio.to_thread(self._spool.append, writes)
        except (SpoolFullError, OSError) as exc:
            self._metrics.add(self._metrics.dropped, "outcome_spool", amount=len(writes))
            raise StoreUnavailableError(
                f"outcome not recorded: Redis is unavailable and {exc}; retry it"
            ) from exc
        self._metrics.add(self._metrics.outcomes, "", "spooled", amount=len(writes))

    def spooled(self) -> int:
        return len(self._spool) if self._spool is not None else 0

    async def replay_spool(self, batch: int = 100) -> None:
        """Apply spooled outcomes to Redis (exactly once, by nonce); stop at the first Redis error.

        Each applied outcome's log entry is written by the same script call as its statistics, as on the
        live path: a crash mid-replay cannot leave an outcome counted but missing from the log.
        Encoding a batch and parsing its replies holds the event loop (~5 ms per 100 outcomes, ~20 ms
        per 500, measured), and Route waits for whatever batch is in hand, hence small batches.
        """
        if self._spool is None:
            return
        count_outcome, add_reward = self._metrics.count_outcome, self._metrics.add_reward
        while len(self._spool):
            writes = self._spool.peek(batch)
            try:
                results = await self._store.record_outcomes(
                    writes, self._exposure.maxlen, int(time.time() * 1000)
                )
            except StoreUnavailableError:
                return  # still down: the next flush round retries
            refused: list[tuple[OutcomeWrite, Refused]] = []
            for write, result in zip(writes, results, strict=True):
                if isinstance(result, Refused):
                    refused.append((write, result))
                    count_outcome(write.experiment, "rejected")
                    continue
                count_outcome(write.experiment, "applied" if result else "duplicate")
                if result:
                    add_reward(write.experiment, write.arm, write.reward)
            if refused:
                _log_dropped(refused)
            # Persisting the progress fsyncs: off the event loop, so Route never waits on the disk.
            await asyncio.to_thread(self._spool.drop, len(writes))


def _log_dropped(refused: list[tuple[OutcomeWrite, Refused]]) -> None:
    """Spooled outcomes the store refused were acknowledged while Redis was down, so no caller retries
    them, and keeping them would block the spool behind them until an operator repairs the field: they
    are dropped, and logged with everything needed to apply them again by hand (one line per batch)."""
    write, first = refused[0]
    log.error(
        "%d acknowledged outcome(s) from the spool dropped, the statistics refused them; the first: %s; "
        "the outcomes: %s",
        len(refused),
        refusal_error(write, first),
        json.dumps([asdict(item) for item, _ in refused], separators=(",", ":")),
    )
