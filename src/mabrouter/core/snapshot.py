"""The immutable picture of every experiment that decisions read, built off the request path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mabrouter.core.model import ArmStats, ExperimentSpec
from mabrouter.core.posterior import Posteriors, posteriors_for
from mabrouter.core.thompson import ThompsonSampler, win_probabilities


@dataclass(frozen=True, slots=True)
class ExperimentState:
    spec: ExperimentSpec
    version: int
    stats: tuple[ArmStats, ...]
    posteriors: Posteriors
    # Probability each arm has of being served by sampling (the traffic share of the policy now).
    shares: npt.NDArray[np.float64]
    sampler: ThompsonSampler
    control_index: int
    # Per-arm payloads, frozen once so Route never copies them.
    payloads: tuple[Mapping[str, str], ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    experiments: Mapping[str, ExperimentState]
    # Monotonic seconds when the data was read from the store (the caller's clock, passed in).
    loaded_at: float
    errors: Mapping[str, str] = field(default_factory=dict)


def build_experiment_state(
    spec: ExperimentSpec, version: int, stats: tuple[ArmStats, ...], rng: np.random.Generator
) -> ExperimentState:
    posteriors = posteriors_for(spec, stats)
    live = tuple(range(len(spec.arms)))
    control_index = spec.arm_index(spec.control)
    if control_index is None:  # the schema guarantees it; a hand-built spec may not
        raise ValueError(f"experiment {spec.name!r}: control arm {spec.control!r} is not one of its arms")
    return ExperimentState(
        spec=spec,
        version=version,
        stats=stats,
        posteriors=posteriors,
        shares=win_probabilities(posteriors, live, rng),
        sampler=ThompsonSampler(posteriors, live),
        control_index=control_index,
        payloads=tuple(dict(arm.payload) for arm in spec.arms),
    )
