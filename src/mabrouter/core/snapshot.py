"""The immutable picture of every experiment that decisions read, built off the request path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mabrouter.core.model import ArmStats, Controls, ExperimentSpec, GlobalControls
from mabrouter.core.posterior import Posteriors, posteriors_for
from mabrouter.core.thompson import ThompsonSampler, win_probabilities

NO_CONTROLS = Controls()
NO_GLOBAL_CONTROLS = GlobalControls()


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
    # None when only the control arm is live (every experimenting arm killed).
    sampler: ThompsonSampler | None
    control_index: int
    rollout: float
    # Per-arm payloads, frozen once so Route never copies them.
    payloads: tuple[Mapping[str, str], ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    experiments: Mapping[str, ExperimentState]
    # Monotonic seconds when the data was read from the store (the caller's clock, passed in).
    loaded_at: float
    global_controls: GlobalControls = NO_GLOBAL_CONTROLS
    errors: Mapping[str, str] = field(default_factory=dict)


def build_experiment_state(
    spec: ExperimentSpec,
    version: int,
    stats: tuple[ArmStats, ...],
    rng: np.random.Generator,
    controls: Controls = NO_CONTROLS,
) -> ExperimentState:
    control_index = spec.arm_index(spec.control)
    if control_index is None:  # the schema guarantees it; a hand-built spec may not
        raise ValueError(f"experiment {spec.name!r}: control arm {spec.control!r} is not one of its arms")
    posteriors = posteriors_for(spec, stats)
    # The control arm cannot be killed: it is what the router serves when it must not experiment.
    live = tuple(
        i for i, arm in enumerate(spec.arms) if i == control_index or arm.name not in controls.killed_arms
    )
    control_only = live == (control_index,)
    if control_only:
        shares = np.zeros(len(spec.arms), dtype=np.float64)
        shares[control_index] = 1.0
    else:
        shares = win_probabilities(posteriors, live, rng)
    return ExperimentState(
        spec=spec,
        version=version,
        stats=stats,
        controls=controls,
        posteriors=posteriors,
        live=live,
        shares=shares,
        sampler=None if control_only else ThompsonSampler(posteriors, live),
        control_index=control_index,
        rollout=spec.rollout if controls.rollout is None else controls.rollout,
        payloads=tuple(dict(arm.payload) for arm in spec.arms),
    )
