"""Simulated experiments with a known truth, decided by the real core and counted by the real runtime.

Each batch is what a fleet of routers does between two snapshot refreshes: every request is decided by
`core.decide.decide` from one `ExperimentState` built by `build_experiment_state` (the routers' own
builder: allocation, caps, floors, ramps, burn-in, segments, shadow arms), counted by the runtime's
`TrialBuffer` (trials, sampled and expected counts, the holdout split), and answered with an outcome
drawn from the truth. The batch's counts and outcomes are then added to the statistics, as the store's
scripts add them, and the next batch decides from a state rebuilt on them. Nothing here is a second
implementation of a rule: only the world (the truth, the traffic) and the sums are the simulation's.

The exposure log is kept as arrays (arm, propensity, reward, counted, reason) for the estimators that
read it (`report`'s IPW and SNIPS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from mabrouter.calibration.world import Traffic, Truth, World
from mabrouter.core.decide import Decision, decide
from mabrouter.core.evidence import guardrail_breaches
from mabrouter.core.model import (
    ArmStats,
    Controls,
    ExperimentSpec,
    MetricStats,
    Reason,
)
from mabrouter.core.snapshot import ExperimentState, Snapshot, build_experiment_state
from mabrouter.runtime.trials import TrialBuffer
from mabrouter.store.records import TrialCounts

FloatArray = npt.NDArray[np.float64]


@dataclass(slots=True)
class Books:
    """The statistics as the store would hold them, built from the runtime's counts and the outcomes."""

    stats: list[ArmStats]
    segment_stats: dict[str, list[ArmStats]] = field(default_factory=dict)
    discounted: list[ArmStats] | None = None
    holdout: float = 0.0
    bandit: float = 0.0
    holdout_cells: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Log:
    """The exposure log of a run, one row per decision."""

    arm: npt.NDArray[np.int64]
    propensity: FloatArray
    reward: FloatArray
    counted: npt.NDArray[np.bool_]
    reason: npt.NDArray[np.str_]
    segment: npt.NDArray[np.str_]


@dataclass(frozen=True, slots=True)
class Run:
    spec: ExperimentSpec
    truth: Truth
    final: ExperimentState
    holdout_split: tuple[float, float]  # (holdout, bandit) decisions among exposed units
    holdout_cells: Mapping[int, float]  # the same per holdout cell of their units
    log: Log
    killed: Mapping[str, int]  # arm -> batch at which the guardrail killed it
    kill_evidence: Mapping[str, tuple[int, int]]  # arm -> (its metric n, the control's) when killed


# Called after every batch with (batch index, the state the next batch decides from).
Checkpoint = Callable[[int, ExperimentState], None]


def _add_outcome(stats: ArmStats, reward: float, metric: tuple[str, float] | None) -> ArmStats:
    metrics = stats.metrics
    if metric is not None:
        name, value = metric
        seen = metrics.get(name, MetricStats())
        metrics = {
            **metrics,
            name: MetricStats(seen.n + 1, seen.total + value, seen.total_sq + value * value),
        }
    return replace(
        stats,
        reward_count=stats.reward_count + 1,
        reward_sum=stats.reward_sum + reward,
        reward_sq_sum=stats.reward_sq_sum + reward * reward,
        metrics=metrics,
    )


def _add_counts(books: Books, spec: ExperimentSpec, counts: TrialCounts) -> None:
    """What the trial-flush script adds: trials, sampled and expected per arm, segment trials, split."""
    for index, arm in enumerate(spec.arms):
        before = books.stats[index]
        books.stats[index] = replace(
            before,
            trials=before.trials + counts.trials.get(arm.name, 0.0),
            sampled=before.sampled + int(counts.sampled.get(arm.name, 0.0)),
            expected_trials=before.expected_trials + counts.expected.get(arm.name, 0.0),
        )
        if books.discounted is not None:
            seen = books.discounted[index]
            books.discounted[index] = replace(seen, trials=seen.trials + counts.trials.get(arm.name, 0.0))
    for (segment, name), trials in counts.segment_trials.items():
        found = spec.arm_index(name)
        own = books.segment_stats.setdefault(segment, [ArmStats() for _ in spec.arms])
        if found is not None:
            own[found] = replace(own[index], trials=own[index].trials + trials)
    books.holdout += counts.holdout
    books.bandit += counts.bandit
    for cell, n in counts.holdout_cells.items():
        books.holdout_cells[cell] = books.holdout_cells.get(cell, 0.0) + n


def _decay(books: Books, factor: float) -> None:
    """Forward decay's effect on what the posteriors read: every sum scaled by 2^(-1 / half-life)."""
    if books.discounted is None:
        return
    books.discounted = [
        replace(
            s,
            trials=s.trials * factor,
            reward_count=s.reward_count * factor,
            reward_sum=s.reward_sum * factor,
            reward_sq_sum=s.reward_sq_sum * factor,
        )
        for s in books.discounted
    ]


def _state(spec: ExperimentSpec, books: Books, controls: Controls) -> ExperimentState:
    return build_experiment_state(
        spec,
        1,
        tuple(books.stats),
        controls,
        segments={name: tuple(stats) for name, stats in books.segment_stats.items()},
        posterior_stats=tuple(books.discounted) if books.discounted is not None else None,
    )


def simulate(
    spec: ExperimentSpec,
    truth: Truth,
    traffic: Traffic,
    seed: int,
    *,
    trials: TrialBuffer | None = None,
    checkpoint: Checkpoint | None = None,
) -> Run:
    """One run. `trials`: the buffer that counts decisions (a deliberately broken one shows that the
    checks catch it); `checkpoint`: sees the state after every batch (an operator peeking)."""
    world = World(spec, truth, traffic, seed)
    buffer = trials if trials is not None else TrialBuffer()
    books = Books(
        [ArmStats() for _ in spec.arms],
        discounted=[ArmStats() for _ in spec.arms] if traffic.half_life_batches else None,
    )
    decay = 2.0 ** (-1.0 / traffic.half_life_batches) if traffic.half_life_batches else 1.0
    controls = Controls()
    killed: dict[str, int] = {}
    evidence: dict[str, tuple[int, int]] = {}
    rows: list[tuple[int, float, float, bool, str, str]] = []
    decider = np.random.default_rng(seed + 1_000_003)  # the router's own generator
    state = _state(spec, books, controls)
    for batch in range(traffic.batches):
        snapshot = Snapshot({spec.name: state}, loaded_at=0.0)
        outcomes: list[tuple[Decision, str]] = []
        for number in range(traffic.batch_size):
            request = world.request(batch * traffic.batch_size + number)
            decision = decide(request, snapshot, decider)
            buffer.record(spec.name, decision, state, request.unit_id)
            if spec.sticky_ttl_seconds and decision.reason is Reason.SAMPLED:
                world.sticky[request.unit_id] = decision.arm  # what StickyAssignments.remember keeps
            segment = (
                str(request.attributes.get(spec.segment_attribute, "")) if spec.segment_attribute else ""
            )
            outcomes.append((decision, segment))
        _decay(books, decay)
        _add_counts(books, spec, buffer.drain(0).get(spec.name, TrialCounts()))
        for decision, segment in outcomes:
            index = spec.arm_index(decision.arm)
            assert index is not None  # decisions name the experiment's arms
            reward = world.reward(index, segment)
            rows.append(
                (index, decision.propensity, reward, decision.counted, decision.reason.name, decision.segment)
            )
            if not decision.counted:
                continue  # decision 0005: only the policy's own decisions update the posteriors
            books.stats[index] = _add_outcome(books.stats[index], reward, world.metric_value(index))
            if books.discounted is not None:
                books.discounted[index] = _add_outcome(books.discounted[index], reward, None)
            if decision.segment:
                own = books.segment_stats.setdefault(decision.segment, [ArmStats() for _ in spec.arms])
                own[index] = _add_outcome(own[index], reward, None)
        controls = _next_controls(
            spec,
            books,
            controls,
            traffic=traffic,
            batch=batch,
            killed=killed,
            evidence=evidence,
            rng=world.rng,
        )
        state = _state(spec, books, controls)
        if checkpoint is not None:
            checkpoint(batch, state)
    log = Log(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.float64),
        np.array([r[2] for r in rows], dtype=np.float64),
        np.array([r[3] for r in rows], dtype=np.bool_),
        np.array([r[4] for r in rows], dtype=np.str_),
        np.array([r[5] for r in rows], dtype=np.str_),
    )
    split = (books.holdout, books.bandit)
    return Run(spec, truth, state, split, books.holdout_cells, log, killed, evidence)


def _next_controls(  # noqa: PLR0913 - the guardian's and the ramp's inputs, between two batches
    spec: ExperimentSpec,
    books: Books,
    controls: Controls,
    *,
    traffic: Traffic,
    batch: int,
    killed: dict[str, int],
    evidence: dict[str, tuple[int, int]],
    rng: np.random.Generator,
) -> Controls:
    """The switches the next batch decides under: ramp steps moved on schedule, guardrail kills."""
    steps = {arm: 1 for arm, at in traffic.ramp_advance.items() if batch + 1 >= at}
    if steps != dict(controls.ramp_steps):
        controls = replace(controls, ramp_steps=steps)
    if not traffic.guardian or not spec.guardrails:
        return controls
    control = spec.arm_index(spec.control)
    live = tuple(i for i, arm in enumerate(spec.arms) if arm.name not in controls.killed_arms)
    breaches = guardrail_breaches(spec, tuple(books.stats), live, rng)
    new = {b.arm for b in breaches} - controls.killed_arms
    metric = spec.guardrails[0].metric
    for arm in new:
        index = spec.arm_index(arm)
        assert index is not None
        assert control is not None
        killed[arm] = batch
        evidence[arm] = (
            books.stats[index].metrics.get(metric, MetricStats()).n,
            books.stats[control].metrics.get(metric, MetricStats()).n,
        )
    return replace(controls, killed_arms=controls.killed_arms | new) if new else controls
