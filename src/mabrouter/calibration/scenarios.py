"""The calibration scenarios: one experiment per policy feature (and a combination), at two sizes:
`QUICK` (seeded, in `make test`) and `FULL` (benchmarks/bench_calibration.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mabrouter.calibration.world import Traffic, Truth, truth_from_prior
from mabrouter.core.model import (
    ArmSpec,
    BetaPrior,
    ExperimentSpec,
    NormalPrior,
    RampStep,
    RewardKind,
)


@dataclass(frozen=True, slots=True)
class Size:
    seeds: int
    batches: int
    batch_size: int


QUICK = Size(seeds=40, batches=12, batch_size=150)
FULL = Size(seeds=400, batches=30, batch_size=400)


def _arms(n: int, kind: RewardKind = RewardKind.BERNOULLI) -> tuple[ArmSpec, ...]:
    prior = BetaPrior(1.0, 1.0) if kind is RewardKind.BERNOULLI else NormalPrior(0.0, 1.0, 1.0, 1.0)
    return tuple(ArmSpec(f"arm-{i}", prior) for i in range(n))


def spec_of(
    name: str, n_arms: int = 3, kind: RewardKind = RewardKind.BERNOULLI, **fields: Any
) -> ExperimentSpec:
    return replace(ExperimentSpec(name, kind, "arm-0", _arms(n_arms, kind)), **fields)


def _with_arms(spec: ExperimentSpec, changes: Mapping[str, Mapping[str, Any]]) -> ExperimentSpec:
    return replace(spec, arms=tuple(replace(arm, **changes.get(arm.name, {})) for arm in spec.arms))


@dataclass(frozen=True, slots=True)
class Scenario:
    """One policy feature (or a combination) on a world whose truth is drawn from the priors."""

    spec: ExperimentSpec
    segments: tuple[str, ...] = ()
    units: int = 0  # 0: a new unit per request
    half_life_batches: float = 0.0
    ramp_advance_at: float = 0.0  # fraction of the run after which ramping arms take their next step
    # Segments whose truth differs from the pooled one: the pooled posterior then describes a mixture,
    # so its intervals and P(best) are not checked against one arm mean.
    segment_truths: bool = False

    def traffic(self, size: Size) -> Traffic:
        ramp = {
            arm.name: max(int(size.batches * self.ramp_advance_at), 1)
            for arm in self.spec.arms
            if arm.ramp and self.ramp_advance_at
        }
        return Traffic(
            size.batches,
            size.batch_size,
            self.segments,
            self.units,
            self.half_life_batches,
            ramp_advance=ramp,
        )

    def close_truth(self) -> Truth:
        """Fixed, close arm means (segments shifted): the world the IPW checks use. Drawn from the
        prior, arms are usually far apart, Thompson starves the losers, and their propensities fall to
        the smoothing floor (~1e-4): IPS stays unbiased but its error is so heavy-tailed that no number
        of runs a test can afford shows it. Close arms keep propensities moderate within a run."""
        if self.spec.reward is RewardKind.BERNOULLI:
            means = tuple(0.10 + 0.02 * i for i in range(len(self.spec.arms)))
        else:
            means = tuple(0.1 * i for i in range(len(self.spec.arms)))
        own = {s: tuple(m + 0.02 * k for m in means) for k, s in enumerate(self.segments)}
        return Truth(means, segment_means=own if self.segment_truths else {})

    def truth(self, rng: np.random.Generator) -> Truth:
        truth = truth_from_prior(self.spec, rng)
        if not self.segment_truths:
            return truth
        own = {segment: truth_from_prior(self.spec, rng).means for segment in self.segments}
        return replace(truth, segment_means=own)


SCENARIOS: dict[str, Scenario] = {
    "plain": Scenario(spec_of("plain")),
    "gaussian": Scenario(spec_of("gaussian", kind=RewardKind.GAUSSIAN)),
    "segments": Scenario(
        spec_of("segments", segment_attribute="country", segment_min_trials=100),
        segments=("DE", "FR", "US"),
        segment_truths=True,
    ),
    "caps_floors": Scenario(
        _with_arms(spec_of("caps_floors"), {"arm-1": {"max_share": 0.2}, "arm-2": {"min_share": 0.1}})
    ),
    "burn_in": Scenario(spec_of("burn_in", burn_in_trials=150)),
    "ramp": Scenario(
        _with_arms(spec_of("ramp"), {"arm-2": {"ramp": (RampStep(0.05, 0.0), RampStep(0.5, 0.0))}}),
        ramp_advance_at=0.5,
    ),
    "holdout": Scenario(spec_of("holdout", holdout_percent=10.0)),
    # Users who come back: holdout membership is per unit, so decisions arrive in clusters.
    "holdout_returning_units": Scenario(spec_of("holdout_returning_units", holdout_percent=10.0), units=300),
    "discounting": Scenario(spec_of("discounting", half_life_seconds=60.0), half_life_batches=8.0),
    "shadow": Scenario(_with_arms(spec_of("shadow", n_arms=4), {"arm-3": {"shadow": True}})),
    "sticky": Scenario(spec_of("sticky", sticky_ttl_seconds=3600), units=300),
    "combined": Scenario(
        _with_arms(
            spec_of(
                "combined",
                n_arms=4,
                holdout_percent=10.0,
                segment_attribute="country",
                segment_min_trials=100,
            ),
            {"arm-1": {"max_share": 0.3}, "arm-2": {"min_share": 0.05}, "arm-3": {"shadow": True}},
        ),
        segments=("DE", "FR"),
    ),
}
