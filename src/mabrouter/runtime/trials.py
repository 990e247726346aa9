"""Counts decisions on the request path and flushes them to the store in idempotent batches.

Per arm it counts trials (policy decisions served) and expected trials: for every sampled decision, the
share each arm had under the allocation in force. Their comparison is the sample-ratio-mismatch check.
It also counts the holdout split (holdout vs bandit decisions among exposed units).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy as np

from mabrouter.core.decide import Decision
from mabrouter.core.discount import weight
from mabrouter.core.hashing import bucket_of, holdout_cell
from mabrouter.core.model import Reason
from mabrouter.core.posterior import FloatArray
from mabrouter.core.snapshot import ExperimentState
from mabrouter.errors import StoreUnavailableError
from mabrouter.store.ports import TrialStore
from mabrouter.store.records import Refused, TrialCounts

log = logging.getLogger(__name__)

Batch = dict[str, TrialCounts]  # experiment -> its counts
# Feature vectors of contextual decisions are folded into their x x^T sum this many at a time: one
# matrix product per fold instead of an outer product per decision, and memory bounded through an outage.
FOLD_ROWS = 64


class _OuterSum:
    """The sum of x x^T over the vectors added (the trial flush's part of a contextual model)."""

    __slots__ = ("rows", "total")

    def __init__(self) -> None:
        self.rows: list[FloatArray] = []
        self.total: FloatArray | None = None

    def add(self, vector: FloatArray) -> None:
        self.rows.append(vector)
        if len(self.rows) >= FOLD_ROWS:
            self.fold()

    def fold(self) -> FloatArray:
        if self.rows:
            stacked = np.stack(self.rows)
            product = stacked.T @ stacked
            self.total = product if self.total is None else self.total + product
            self.rows = []
        assert self.total is not None  # at least one vector was added
        return self.total


class _Tally:
    """Decisions sampled under one allocation: counted in place (a tuple rebuilt per decision cost more
    than the rest of `add`)."""

    __slots__ = ("decisions", "experiment", "names", "shares")

    def __init__(self, experiment: str, names: tuple[str, ...], shares: FloatArray) -> None:
        self.experiment = experiment
        self.names = names
        self.shares = shares  # kept alive here, so its id() cannot be reused while it is a key
        self.decisions = 0


class TrialBuffer:
    """`add` is a few dict increments: cheap enough for every Route."""

    __slots__ = (
        "_allocations",
        "_bandit",
        "_cells",
        "_counts",
        "_discounts",
        "_holdout",
        "_linear",
        "_sampled",
        "_segments",
        "_shares",
    )

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}  # (experiment, arm)
        self._segments: dict[tuple[str, str, str], int] = {}  # (experiment, segment, arm)
        # Decisions sampled under each allocation, keyed by the id() of its shares array (kept alive by
        # the entry, so the id cannot be reused meanwhile): experiment, arms, shares, decisions.
        self._allocations: dict[int, _Tally] = {}
        self._bandit: dict[str, int] = {}
        self._holdout: dict[str, int] = {}
        self._cells: dict[tuple[str, int], int] = {}  # (experiment, holdout cell) -> exposed decisions
        self._sampled: dict[tuple[str, str], int] = {}
        # experiment -> (epoch ms, half-life s) for experiments with discounting
        self._discounts: dict[str, tuple[int, float]] = {}
        # Contextual experiments: (experiment, model signature, arm) -> x x^T of its decisions, and
        # (experiment, arm names) -> the sum of the allocations its sampled decisions were drawn from.
        self._linear: dict[tuple[str, str, str], _OuterSum] = {}
        self._shares: dict[tuple[str, tuple[str, ...]], FloatArray] = {}

    def add(
        self, experiment: str, arm: str, sampled_from: ExperimentState | None = None, segment: str = ""
    ) -> None:
        """A trial of `arm` (in `segment`, if any); `sampled_from`: the state it was sampled from, whose
        allocation for `segment` (the segment's own or the pooled one) is what the draw used."""
        key = (experiment, arm)
        self._counts[key] = self._counts.get(key, 0) + 1
        if sampled_from is not None and sampled_from.spec.half_life_seconds:
            self._discounts[experiment] = (
                sampled_from.discount_epoch_ms,
                sampled_from.spec.half_life_seconds,
            )
        if segment:
            segment_key = (experiment, segment, arm)
            self._segments[segment_key] = self._segments.get(segment_key, 0) + 1
        self._bandit[experiment] = self._bandit.get(experiment, 0) + 1
        if sampled_from is not None:
            self._sampled[key] = self._sampled.get(key, 0) + 1
        # A contextual decision was drawn from its own allocation, which record() adds up instead.
        if sampled_from is not None and sampled_from.contextual is None:
            shares = sampled_from.allocation(segment)
            tally = self._allocations.get(id(shares))
            if tally is None:
                names = tuple(arm_spec.name for arm_spec in sampled_from.spec.arms)
                tally = self._allocations[id(shares)] = _Tally(experiment, names, shares)
            tally.decisions += 1

    def record(self, experiment: str, decision: Decision, state: ExperimentState, unit_id: str) -> None:
        """Count one decision made from `state` for `unit_id`: a trial when the policy made it (with its
        allocation when it was sampled), a holdout decision toward the split, nothing for an imposed
        answer. An experiment with a holdout also counts its exposed decisions by the unit's cell."""
        if decision.counted:
            sampled_from = state if decision.reason is Reason.SAMPLED else None
            self.add(experiment, decision.arm, sampled_from, decision.segment)
            if decision.context is not None:
                self._add_context(experiment, decision, state, sampled=sampled_from is not None)
        elif decision.reason is Reason.HOLDOUT:
            self.add_holdout(experiment)
        else:
            return
        spec = state.spec
        if spec.holdout_percent > 0:
            key = (experiment, holdout_cell(bucket_of(spec.holdout_salt, unit_id)))
            self._cells[key] = self._cells.get(key, 0) + 1

    def _add_context(
        self, experiment: str, decision: Decision, state: ExperimentState, *, sampled: bool
    ) -> None:
        """A contextual decision: its x x^T for the model's sums and, when sampled, the whole allocation
        it was drawn from for the sample-ratio check (each decision has its own)."""
        context = decision.context
        assert context is not None
        key = (experiment, context.signature, decision.arm)
        found = self._linear.get(key)
        if found is None:
            found = self._linear[key] = _OuterSum()
        found.add(context.vector)
        if sampled:
            names = tuple(arm.name for arm in state.spec.arms)
            total = self._shares.get((experiment, names))
            if total is None:
                self._shares[experiment, names] = context.shares.copy()
            else:
                total += context.shares

    def add_holdout(self, experiment: str) -> None:
        """A decision that served the holdout (not a trial: it only counts toward the split)."""
        self._holdout[experiment] = self._holdout.get(experiment, 0) + 1

    def drain(self, now_ms: int) -> Batch:
        """The counts to write, per experiment; a discounted experiment's carry the weight at now_ms."""
        discounts, self._discounts = self._discounts, {}
        counts, self._counts = self._counts, {}
        segments, self._segments = self._segments, {}
        allocations, self._allocations = self._allocations, {}
        bandit, self._bandit = self._bandit, {}
        holdout, self._holdout = self._holdout, {}
        cells, self._cells = self._cells, {}
        sampled, self._sampled = self._sampled, {}
        batch: Batch = {}

        def of(experiment: str) -> TrialCounts:
            found = batch.get(experiment)
            if found is None:
                found = batch[experiment] = TrialCounts()
            return found

        for (experiment, arm), count in counts.items():
            of(experiment).trials[arm] = float(count)
        for (experiment, segment, arm), count in segments.items():
            of(experiment).segment_trials[segment, arm] = float(count)
        for (experiment, arm), count in sampled.items():
            of(experiment).sampled[arm] = float(count)
        for tally in allocations.values():
            expected = of(tally.experiment).expected
            for name, share in zip(tally.names, tally.shares.tolist(), strict=True):
                if share > 0:
                    expected[name] = expected.get(name, 0.0) + tally.decisions * share
        self._drain_contextual(of)
        for experiment, count in bandit.items():
            of(experiment).bandit = float(count)
        for experiment, count in holdout.items():
            of(experiment).holdout = float(count)
        for (experiment, cell), count in cells.items():
            of(experiment).holdout_cells[cell] = float(count)
        for experiment, (known_epoch, half_life) in discounts.items():
            epoch = known_epoch or now_ms  # the first writer proposes the epoch; the store keeps the first
            of(experiment).discount = (epoch, half_life * 1000.0, weight(now_ms, epoch, half_life))
        return batch

    def _drain_contextual(self, of: Callable[[str], TrialCounts]) -> None:
        linear, self._linear = self._linear, {}
        contextual_shares, self._shares = self._shares, {}
        for (experiment, names), total in contextual_shares.items():
            expected = of(experiment).expected
            for name, share in zip(names, total.tolist(), strict=True):
                if share > 0:
                    expected[name] = expected.get(name, 0.0) + share
        for (experiment, model, arm), outer in linear.items():
            of(experiment).contextual[model, arm] = outer.fold()

    def pending(self) -> int:
        """Decisions not yet written (segment copies of the same trials are not counted twice)."""
        return sum(self._counts.values())


class TrialFlusher:
    """Moves drained counts to the store. A failed batch is retried with the same id, so it counts once.

    `on_error` is called for every failed attempt (for the redis-errors metric); the log says only
    when flushing starts failing and when it recovers, not once per retry of an outage.

    A stored field that cannot absorb an experiment's increments (an operator wrote "abc" or 1e308 into
    it): the store refuses that experiment's counts whole (nothing written, no batch marker) and
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
        store: TrialStore,
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
        self._unsent: Batch | None = None
        self._unsent_id = ""

    async def flush(self) -> None:
        if self._unsent is None:
            batch = self._buffer.drain(int(time.time() * 1000))
            if not batch:
                return
            self._sequence += 1
            self._unsent, self._unsent_id = batch, f"{self._prefix}-{self._sequence}"
        try:
            refused = await self._store.add_trials(self._unsent_id, self._unsent)
        except StoreUnavailableError as exc:
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

    def _note_refusals(self, sent: Batch, refused: Mapping[str, Refused]) -> None:
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
        return int(sum(n for counts in self._unsent.values() for n in counts.trials.values()))
