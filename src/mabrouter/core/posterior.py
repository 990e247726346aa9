"""Conjugate posteriors from sufficient statistics.

Bernoulli: Beta(alpha0 + successes, beta0 + trials - successes). Callers may report only successes
(conversion style), so failures are the trials that earned no reward; outcomes can arrive before the
trial counter is flushed, hence the clamp at zero.

Gaussian: Normal-Inverse-Gamma over (mean, variance) updated with the reported rewards only (a
decision without an outcome carries no information about a continuous reward). Its marginal
posterior on the mean is a Student-t, which is what Thompson sampling draws from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mabrouter.core.model import ArmStats, BetaPrior, ExperimentSpec, NormalPrior, RewardKind

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class BetaPosteriors:
    alpha: FloatArray
    beta: FloatArray

    def draw(self, rng: np.random.Generator, size: int) -> FloatArray:
        return rng.beta(self.alpha, self.beta, size=(size, self.alpha.shape[0]))

    def mean(self) -> FloatArray:
        return self.alpha / (self.alpha + self.beta)


@dataclass(frozen=True, slots=True)
class StudentTPosteriors:
    """Marginal posterior of each arm's mean: location + scale * t(df)."""

    location: FloatArray
    scale: FloatArray
    df: FloatArray

    def draw(self, rng: np.random.Generator, size: int) -> FloatArray:
        standard = rng.standard_t(self.df, size=(size, self.df.shape[0]))
        return self.location + self.scale * standard

    def mean(self) -> FloatArray:
        return self.location


Posteriors = BetaPosteriors | StudentTPosteriors


def beta_parameters(prior: BetaPrior, stats: ArmStats) -> tuple[float, float]:
    successes = min(max(stats.reward_sum, 0.0), float(max(stats.trials, stats.reward_count)))
    failures = max(float(stats.trials) - successes, 0.0)
    return prior.alpha + successes, prior.beta + failures


def student_t_parameters(prior: NormalPrior, stats: ArmStats) -> tuple[float, float, float]:
    """Return (location, scale, df) of the posterior marginal of the mean."""
    n = stats.reward_count
    kappa_n = prior.kappa + n
    alpha_n = prior.alpha + n / 2.0
    if n == 0:
        beta_n = prior.beta
        mean_n = prior.mean
    else:
        sample_mean = stats.reward_sum / n
        # Sum of squared deviations; clamp tiny negatives from floating-point cancellation.
        squared_deviations = max(stats.reward_sq_sum - n * sample_mean * sample_mean, 0.0)
        mean_n = (prior.kappa * prior.mean + n * sample_mean) / kappa_n
        shift = sample_mean - prior.mean
        # x * x, not x ** 2: on a float that overflows, ** raises OverflowError while * gives inf,
        # which check_usable then reports by arm.
        beta_n = prior.beta + 0.5 * squared_deviations + prior.kappa * n * shift * shift / (2.0 * kappa_n)
    scale = math.sqrt(beta_n / (alpha_n * kappa_n)) if beta_n >= 0 else math.nan
    return mean_n, scale, 2.0 * alpha_n


def check_usable(spec: ExperimentSpec, posteriors: Posteriors) -> None:
    """Raise ValueError naming the first arm whose posterior a sampler cannot draw from.

    Statistics are data in Redis that anyone may edit, and sums of extreme (finite) rewards can leave
    float range inside the formulas above. numpy would then draw NaN or fail on a non-positive
    parameter mid-decision; refusing the state here lets the router keep its last good one instead."""
    parameters: tuple[FloatArray, ...]
    if isinstance(posteriors, BetaPosteriors):
        parameters = (posteriors.alpha, posteriors.beta)
        positive = (posteriors.alpha > 0) & (posteriors.beta > 0)
    else:
        parameters = (posteriors.location, posteriors.scale, posteriors.df)
        positive = (posteriors.scale > 0) & (posteriors.df > 0)
    usable = positive & np.logical_and.reduce([np.isfinite(p) for p in parameters])
    for index in np.flatnonzero(~usable):
        values = ", ".join(f"{float(p[index])!r}" for p in parameters)
        raise ValueError(
            f"experiment {spec.name}: the statistics of arm {spec.arms[index].name!r} give an unusable "
            f"posterior ({values}); check its fields in the stats hash"
        )


def posteriors_for(spec: ExperimentSpec, stats: tuple[ArmStats, ...]) -> Posteriors:
    """Posteriors of every arm of `spec`, in arm order."""
    if spec.reward is RewardKind.BERNOULLI:
        params = [beta_parameters(_beta_prior(arm.prior), s) for arm, s in zip(spec.arms, stats, strict=True)]
        return BetaPosteriors(
            alpha=np.array([a for a, _ in params], dtype=np.float64),
            beta=np.array([b for _, b in params], dtype=np.float64),
        )
    t_params = [
        student_t_parameters(_normal_prior(arm.prior), s) for arm, s in zip(spec.arms, stats, strict=True)
    ]
    return StudentTPosteriors(
        location=np.array([p[0] for p in t_params], dtype=np.float64),
        scale=np.array([p[1] for p in t_params], dtype=np.float64),
        df=np.array([p[2] for p in t_params], dtype=np.float64),
    )


def _beta_prior(prior: BetaPrior | NormalPrior) -> BetaPrior:
    return prior if isinstance(prior, BetaPrior) else BetaPrior()


def _normal_prior(prior: BetaPrior | NormalPrior) -> NormalPrior:
    return prior if isinstance(prior, NormalPrior) else NormalPrior()
