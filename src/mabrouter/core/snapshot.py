"""The immutable picture of every experiment that decisions read, built off the request path."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mabrouter.core.allocation import (
    CategoricalSampler,
    constrained_allocation,
    ramp_cap,
    thompson_allocation,
)
from mabrouter.core.features import FeatureEncoder
from mabrouter.core.linear import LinearSums, linear_posterior
from mabrouter.core.linear_policy import LinearPolicy
from mabrouter.core.model import ArmStats, Controls, ExperimentSpec, GlobalControls
from mabrouter.core.posterior import (
    BetaPosteriors,
    FloatArray,
    Posteriors,
    check_usable,
    posteriors_for,
)
from mabrouter.core.thompson import ThompsonSampler, win_probabilities

NO_CONTROLS = Controls()
NO_GLOBAL_CONTROLS = GlobalControls()


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    """A segment's own allocation, used once it has enough trials."""

    stats: tuple[ArmStats, ...]
    shares: FloatArray
    sampler: CategoricalSampler


@dataclass(frozen=True, slots=True)
class ExperimentState:
    spec: ExperimentSpec
    version: int
    stats: tuple[ArmStats, ...]
    controls: Controls
    posteriors: Posteriors
    # Arms sampling may choose: every arm not killed by an operator.
    live: tuple[int, ...]
    # Probability each arm has of being served by sampling (the policy's traffic share now).
    shares: npt.NDArray[np.float64]
    # Draws from `shares`; None when only the control arm is live (every experimenting arm killed).
    sampler: CategoricalSampler | None
    # Thompson sampling over the live and the shadow arms; None without shadow arms.
    shadow_sampler: ThompsonSampler | None
    control_index: int
    rollout: float
    # Per-arm payloads, frozen once so Route never copies them.
    payloads: tuple[Mapping[str, str], ...]
    # Segments with enough data to decide on their own posteriors (see ExperimentSpec.segment_attribute).
    segments: Mapping[str, SegmentPolicy] = field(default_factory=dict)
    # The epoch discounted statistics are scaled to (0: none yet); see core/discount.py.
    discount_epoch_ms: int = 0
    # A contextual experiment's per-request policy (None for the others); `shares` are then its
    # allocation at the typical context (every attribute missing), for display only.
    contextual: LinearPolicy | None = None

    def allocation(self, segment: str = "") -> FloatArray:
        """The shares a sampled decision in `segment` is drawn from: the segment's own once it decides
        on its own posteriors, else the whole experiment's. Its propensity and the expected counts of
        the sample-ratio check both come from here, so they describe the draw that was made."""
        policy = self.segments.get(segment) if segment else None
        return policy.shares if policy is not None else self.shares


@dataclass(frozen=True, slots=True)
class Snapshot:
    experiments: Mapping[str, ExperimentState]
    # Monotonic seconds when the data was read from the store (the caller's clock, passed in).
    loaded_at: float
    global_controls: GlobalControls = NO_GLOBAL_CONTROLS
    errors: Mapping[str, str] = field(default_factory=dict)
    # Experiments an operator archived: stored, deliberately not served (decide() answers for them).
    archived: frozenset[str] = frozenset()


def _generator_for(posteriors: Posteriors) -> np.random.Generator:
    """The generator an allocation is estimated with, seeded by the posteriors' parameters: every
    replica that loaded the same statistics computes the same shares, bit for bit, and so does
    `mabrouter status`. A hash-seeded draw (a sticky unit while the store is unreachable) then picks
    the same arm on every replica, and what operators read is what the routers sample from."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (
        (posteriors.alpha, posteriors.beta)
        if isinstance(posteriors, BetaPosteriors)
        else (posteriors.location, posteriors.scale, posteriors.df)
    ):
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def _limits(spec: ExperimentSpec, controls: Controls) -> tuple[FloatArray, FloatArray]:
    floors = np.array([arm.min_share for arm in spec.arms], dtype=np.float64)
    caps = np.array(
        [
            min(
                arm.max_share,
                ramp_cap(tuple(step.share for step in arm.ramp), controls.ramp_steps.get(arm.name, 0)),
            )
            if arm.ramp
            else arm.max_share
            for arm in spec.arms
        ],
        dtype=np.float64,
    )
    return floors, caps


def _allocation(
    spec: ExperimentSpec,
    stats: tuple[ArmStats, ...],
    posteriors: Posteriors,
    *,
    live: tuple[int, ...],
    controls: Controls,
) -> tuple[FloatArray, CategoricalSampler]:
    """The policy's shares of sampled traffic and the sampler that draws from exactly those shares.

    Without limits the shares are Thompson's allocation (each live arm's P(best), by Monte Carlo), and
    sampling draws from them rather than from fresh posterior draws: the propensity logged with every
    decision and the counts the sample-ratio check expects are then the probabilities the draw was made
    with, not an estimate of them (decision 0019)."""
    floors, caps = _limits(spec, controls)
    rng = _generator_for(posteriors)
    burning_in = spec.burn_in_trials > 0 and any(stats[i].trials < spec.burn_in_trials for i in live)
    limited = burning_in or any(floors[i] > 0 or caps[i] < 1 for i in live)
    if not limited:
        shares = win_probabilities(posteriors, live, rng)
        return shares, CategoricalSampler(shares)
    if burning_in:
        p = np.zeros(len(spec.arms), dtype=np.float64)
        p[list(live)] = 1.0 / len(live)
        shares = constrained_allocation(p, live, floors, caps)
    else:
        shares = thompson_allocation(
            lambda arms: win_probabilities(posteriors, arms, rng), live, floors, caps
        )
    return shares, CategoricalSampler(shares)


def _contextual_policy(
    spec: ExperimentSpec,
    stats: tuple[ArmStats, ...],
    sums: tuple[LinearSums, ...] | None,
    *,
    live: tuple[int, ...],
    controls: Controls,
) -> LinearPolicy:
    """The linear Thompson policy of a contextual experiment: a posterior per arm from its sums (empty
    sums for arms without any), and the limits every experiment's allocation obeys."""
    assert spec.contextual is not None
    encoder = FeatureEncoder(spec.contextual)
    sums = sums or tuple(LinearSums.empty(encoder.dimension) for _ in spec.arms)
    posteriors = []
    for arm, arm_sums in zip(spec.arms, sums, strict=True):
        try:
            posteriors.append(linear_posterior(arm_sums, spec.contextual.prior_precision, spec.reward))
        except ValueError as exc:
            raise ValueError(
                f"experiment {spec.name}: the contextual sums of arm {arm.name!r}: {exc}"
            ) from exc
    floors, caps = _limits(spec, controls)
    fixed = None
    if spec.burn_in_trials > 0 and any(stats[i].trials < spec.burn_in_trials for i in live):
        uniform = np.zeros(len(spec.arms), dtype=np.float64)
        uniform[list(live)] = 1.0 / len(live)
        fixed = constrained_allocation(uniform, live, floors, caps)
    return LinearPolicy(encoder, tuple(posteriors), live, floors=floors, caps=caps, fixed=fixed)


def _segment_policies(
    spec: ExperimentSpec,
    segments: Mapping[str, tuple[ArmStats, ...]],
    live: tuple[int, ...],
    controls: Controls,
) -> dict[str, SegmentPolicy]:
    policies = {}
    for segment, stats in segments.items():
        if sum(s.trials for s in stats) < spec.segment_min_trials:
            continue  # too little data: the pooled posterior decides
        posteriors = posteriors_for(spec, stats)
        check_usable(spec, posteriors)
        shares, sampler = _allocation(spec, stats, posteriors, live=live, controls=controls)
        policies[segment] = SegmentPolicy(stats, shares, sampler)
    return policies


def build_experiment_state(  # noqa: PLR0913 - the decoded pieces of one experiment; core cannot take the store's record
    spec: ExperimentSpec,
    version: int,
    stats: tuple[ArmStats, ...],
    controls: Controls = NO_CONTROLS,
    *,
    segments: Mapping[str, tuple[ArmStats, ...]] | None = None,
    posterior_stats: tuple[ArmStats, ...] | None = None,
    discount_epoch_ms: int = 0,
    linear_sums: tuple[LinearSums, ...] | None = None,
) -> ExperimentState:
    """`posterior_stats`: what posteriors learn from, when it differs from the raw counts (discounting);
    `linear_sums`: a contextual experiment's sums per arm under its current feature signature."""
    control_index = spec.arm_index(spec.control)
    if control_index is None:  # the schema guarantees it; a hand-built spec may not
        raise ValueError(f"experiment {spec.name!r}: control arm {spec.control!r} is not one of its arms")
    posteriors = posteriors_for(spec, posterior_stats or stats)
    check_usable(spec, posteriors)
    # The control arm cannot be killed: it is what the router serves when it must not experiment.
    # Shadow arms are never served.
    live = tuple(
        i
        for i, arm in enumerate(spec.arms)
        if i == control_index or (arm.name not in controls.killed_arms and not arm.shadow)
    )
    shadows = tuple(
        i for i, arm in enumerate(spec.arms) if arm.shadow and arm.name not in controls.killed_arms
    )
    sampler: CategoricalSampler | None
    policies: dict[str, SegmentPolicy] = {}
    contextual = None
    if live == (control_index,):
        shares = np.zeros(len(spec.arms), dtype=np.float64)
        shares[control_index] = 1.0
        sampler = None
    elif spec.contextual is not None:
        contextual = _contextual_policy(spec, stats, linear_sums, live=live, controls=controls)
        shares = contextual.allocation(contextual.encoder.vector({}))
        sampler = CategoricalSampler(shares)
    else:
        shares, sampler = _allocation(spec, stats, posteriors, live=live, controls=controls)
        if spec.segment_attribute and segments:
            policies = _segment_policies(spec, segments, live, controls)
    return ExperimentState(
        spec=spec,
        version=version,
        stats=stats,
        controls=controls,
        posteriors=posteriors,
        live=live,
        shares=shares,
        sampler=sampler,
        shadow_sampler=ThompsonSampler(posteriors, tuple(sorted(live + shadows))) if shadows else None,
        control_index=control_index,
        rollout=spec.rollout if controls.rollout is None else controls.rollout,
        payloads=tuple(dict(arm.payload) for arm in spec.arms),
        segments=policies,
        discount_epoch_ms=discount_epoch_ms,
        contextual=contextual,
    )
