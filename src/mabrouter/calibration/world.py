"""The simulated world: the truth (each arm's mean reward and guardrail metric), the traffic (segments,
returning units), and the requests and outcomes drawn from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mabrouter.core.decide import RouteInput
from mabrouter.core.model import (
    ExperimentSpec,
    NormalPrior,
    RewardKind,
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Truth:
    """What the world is: each arm's true mean reward (per segment when segments differ), and for
    gaussian rewards the noise's standard deviation; each arm's true guardrail metric."""

    means: tuple[float, ...]
    segment_means: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    noise_sd: float = 1.0
    # Guardrail metric per arm: a rate (0/1 draws) or a mean with `metric_sd` noise.
    metric: tuple[float, ...] = ()
    metric_sd: float = 1.0

    def mean(self, arm: int, segment: str) -> float:
        own = self.segment_means.get(segment)
        return own[arm] if own is not None else self.means[arm]

    def best(self) -> int:
        return int(np.argmax(self.means))


@dataclass(frozen=True, slots=True)
class Traffic:
    """The requests: `segments` values of the segment attribute, uniformly; `units`: how many distinct
    units send them (0: every request is a new unit)."""

    batches: int
    batch_size: int
    segments: tuple[str, ...] = ()
    units: int = 0
    # Experiments with a half-life: how many batches one half-life lasts.
    half_life_batches: float = 0.0
    # Apply guardrail kills between batches, judged by core.evidence.guardrail_breaches.
    guardian: bool = False
    # Arm -> the batch at which it moves to its next ramp step.
    ramp_advance: Mapping[str, int] = field(default_factory=dict)


class World:
    def __init__(self, spec: ExperimentSpec, truth: Truth, traffic: Traffic, seed: int) -> None:
        self.spec, self.truth, self.traffic = spec, truth, traffic
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.sticky: dict[str, str] = {}
        self.metric = spec.guardrails[0] if spec.guardrails else None

    def request(self, number: int) -> RouteInput:
        traffic, spec = self.traffic, self.spec
        unit = (
            f"s{self.seed}-u{int(self.rng.integers(traffic.units))}"
            if traffic.units
            else f"s{self.seed}-r{number}"
        )
        attributes = (
            {spec.segment_attribute: traffic.segments[int(self.rng.integers(len(traffic.segments)))]}
            if traffic.segments and spec.segment_attribute
            else {}
        )
        return RouteInput(spec.name, unit, attributes, sticky_arm=self.sticky.get(unit))

    def reward(self, arm: int, segment: str) -> float:
        mean = self.truth.mean(arm, segment)
        if self.spec.reward is RewardKind.BERNOULLI:
            return float(self.rng.random() < mean)
        return float(self.rng.normal(mean, self.truth.noise_sd))

    def metric_value(self, arm: int) -> tuple[str, float] | None:
        if self.metric is None or not self.truth.metric:
            return None
        level = self.truth.metric[arm]
        if self.metric.kind == "rate":
            return self.metric.metric, float(self.rng.random() < level)
        return self.metric.metric, float(self.rng.normal(level, self.truth.metric_sd))


def truth_from_prior(spec: ExperimentSpec, rng: np.random.Generator) -> Truth:
    """Each arm's true mean drawn from its own prior: the world the posteriors' probabilities are
    exact for, so credible intervals must cover at their nominal rate and P(best) must be calibrated
    whatever the adaptive allocation did (Bayesian calibration holds under any design that depends
    only on the data seen)."""
    if spec.reward is RewardKind.BERNOULLI:
        means = tuple(
            float(rng.beta(getattr(arm.prior, "alpha", 1.0), getattr(arm.prior, "beta", 1.0)))
            for arm in spec.arms
        )
        return Truth(means)
    priors = [arm.prior for arm in spec.arms]
    if not all(isinstance(p, NormalPrior) for p in priors):
        raise ValueError("a gaussian experiment needs normal priors")
    # One noise level shared by the arms keeps the world simple; each arm's posterior still learns
    # its own variance, so the draw is from each arm's prior only for its mean.
    first = priors[0]
    assert isinstance(first, NormalPrior)
    precision = float(rng.gamma(first.alpha, 1.0 / first.beta))
    means = tuple(
        float(rng.normal(p.mean, 1.0 / np.sqrt(p.kappa * precision)))
        for p in priors
        if isinstance(p, NormalPrior)
    )
    return Truth(means, noise_sd=float(1.0 / np.sqrt(precision)))
