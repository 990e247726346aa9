"""Counts decisions on the request path and flushes them to Redis in idempotent batches.

Per arm it counts trials (policy decisions served) and expected trials: for every sampled decision, the
share each arm had under the allocation in force. Their comparison is the sample-ratio-mismatch check.
It also counts the holdout split (holdout vs bandit decisions among exposed units).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from mabrouter.core.discount import weight
from mabrouter.core.snapshot import ExperimentState
from mabrouter.store.errors import STORE_ERRORS
from mabrouter.store.keys import (
    DISCOUNTED,
    EXPECTED,
    SAMPLED,
    SEGMENT_PREFIX,
    SPLIT_BANDIT,
    TRIALS,
    stat_field,
)
from mabrouter.store.router_store import Discount, Refused, RouterStore

log = logging.getLogger(__name__)

Increments = dict[str, dict[str, float]]  # experiment -> stats field -> increment


class TrialBuffer:
    """`add` is two dict increments: cheap enough for every Route."""

    __slots__ = ("_allocations", "_counts", "_discounts", "_sampled", "_splits")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        # Decisions sampled under each allocation (keyed by the state object that holds it).
        self._allocations: dict[int, tuple[ExperimentState, int]] = {}
        self._splits: dict[tuple[str, str], int] = {}
        self._sampled: dict[tuple[str, str], int] = {}
        # experiment -> (epoch ms, half-life s) for experiments with discounting
        self._discounts: dict[str, tuple[int, float]] = {}

    def add(
        self, experiment: str, arm: str, sampled_from: ExperimentState | None = None, segment: str = ""
    ) -> None:
        """A trial of `arm` (in `segment`, if any); `sampled_from`: the state whose allocation sampled it."""
        key = (experiment, arm)
        self._counts[key] = self._counts.get(key, 0) + 1
        if sampled_from is not None and sampled_from.spec.half_life_seconds:
            self._discounts[experiment] = (
                sampled_from.discount_epoch_ms,
                sampled_from.spec.half_life_seconds,
            )
        if segment:
            segment_key = (experiment, f"{SEGMENT_PREFIX}{segment}|{arm}")
            self._counts[segment_key] = self._counts.get(segment_key, 0) + 1
        self.add_split(experiment, SPLIT_BANDIT)
        if sampled_from is not None:
            self._sampled[key] = self._sampled.get(key, 0) + 1
            entry = self._allocations.get(id(sampled_from))
            self._allocations[id(sampled_from)] = (sampled_from, entry[1] + 1 if entry else 1)

    def add_split(self, experiment: str, side: str) -> None:
        key = (experiment, side)
        self._splits[key] = self._splits.get(key, 0) + 1

    def drain(self, now_ms: int) -> tuple[Increments, dict[str, Discount]]:
        """The increments to write, and per discounted experiment the epoch they are scaled to."""
        discounts_in, self._discounts = self._discounts, {}
        counts, self._counts = self._counts, {}
        allocations, self._allocations = self._allocations, {}
        splits, self._splits = self._splits, {}
        sampled, self._sampled = self._sampled, {}
        increments: Increments = defaultdict(dict)
        for (experiment, arm), count in counts.items():
            increments[experiment][stat_field(arm, TRIALS)] = float(count)
        for (experiment, arm), count in sampled.items():
            increments[experiment][stat_field(arm, SAMPLED)] = float(count)
        for state, decisions in allocations.values():
            fields = increments[state.spec.name]
            for index, arm_spec in enumerate(state.spec.arms):
                share = float(state.shares[index])
                if share > 0:
                    field = stat_field(arm_spec.name, EXPECTED)
                    fields[field] = fields.get(field, 0.0) + decisions * share
        for (experiment, side), count in splits.items():
            increments[experiment][side] = float(count)
        discounts: dict[str, Discount] = {}
        for experiment, (known_epoch, half_life) in discounts_in.items():
            epoch = known_epoch or now_ms  # the first writer proposes the epoch; Redis keeps the first one
            scale = weight(now_ms, epoch, half_life)
            fields = increments[experiment]
            for field, trials in list(fields.items()):
                if field.endswith(f":{TRIALS}") and not field.startswith((SEGMENT_PREFIX, "_")):
                    fields[field.replace(f":{TRIALS}", f":{DISCOUNTED}{TRIALS}")] = trials * scale
            discounts[experiment] = (epoch, half_life * 1000.0)
        return dict(increments), discounts

    def pending(self) -> int:
        """Decisions not yet written (segment copies of the same trials are not counted twice)."""
        return sum(n for (_, arm), n in self._counts.items() if not arm.startswith(SEGMENT_PREFIX))


class TrialFlusher:
    """Moves drained counts to Redis. A failed batch is retried with the same id, so it counts once.

    `on_error` is called for every failed attempt (for the redis-errors metric); the log says only
    when flushing starts failing and when it recovers, not once per retry of an outage.

    A stored field that cannot absorb an experiment's increments (an operator wrote "abc" or 1e308 into
    it): the script refuses that experiment's increments whole (nothing written, no batch marker) and
    applies the other experiments' as usual; the refused ones are dropped, not retried. Retrying would
    resend them every flush for as long as nobody repairs the field, forever if nobody does, holding the
    batch and every later count behind it. Dropping loses only that experiment's trial counts while its
    statistics are unreadable (the routers cannot use them until the repair anyway), and keeps its
    counters consistent with each other (trials, sampled and expected move together or not at all).
    Each refused experiment counts as an error (`on_error`) and is logged when its refusals start and
    when they stop."""

    def __init__(
        self,
        buffer: TrialBuffer,
        store: RouterStore,
        process_prefix: str,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._buffer = buffer
        self._store = store
        self._prefix = process_prefix
        self._on_error = on_error
        self._failing = False
        self._refused: set[str] = set()  # experiments whose last flush was refused (logged once)
        self._sequence = 0
        self._unsent: Increments | None = None
        self._unsent_id = ""
        self._discounts: dict[str, Discount] = {}

    async def flush(self) -> None:
        if self._unsent is None:
            increments, discounts = self._buffer.drain(int(time.time() * 1000))
            if not increments:
                return
            self._sequence += 1
            self._unsent, self._unsent_id, self._discounts = (
                increments,
                f"{self._prefix}-{self._sequence}",
                discounts,
            )
        try:
            refused = await self._store.apply_increments(self._unsent_id, self._unsent, self._discounts)
        except STORE_ERRORS as exc:
            self._on_error()
            if not self._failing:
                log.warning("trial flush %s failed, retrying until Redis answers: %s", self._unsent_id, exc)
            else:
                log.debug("trial flush %s failed again: %s", self._unsent_id, exc)
            self._failing = True
            return
        if self._failing:
            log.info("trial flush recovered (%s written)", self._unsent_id)
            self._failing = False
        self._note_refusals(self._unsent, refused)
        self._unsent = None

    def _note_refusals(self, sent: Increments, refused: Mapping[str, Refused]) -> None:
        for experiment, why in refused.items():
            self._on_error()
            if experiment not in self._refused:
                log.warning(
                    "trial counts of experiment %r dropped: stats field %r holds %r (%s); "
                    "they are dropped at every flush until the field is repaired or deleted",
                    experiment,
                    why.field,
                    why.stored,
                    "not a finite number" if why.reason == "unreadable" else why.reason,
                )
        for experiment in self._refused - refused.keys():
            if experiment in sent:
                log.info("trial counts of experiment %r are written again", experiment)
        self._refused = (self._refused - sent.keys()) | refused.keys()

    def unsent(self) -> int:
        if not self._unsent:
            return 0
        return int(
            sum(
                v
                for fields in self._unsent.values()
                for k, v in fields.items()
                if k.endswith(f":{TRIALS}") and not k.startswith(SEGMENT_PREFIX)
            )
        )
