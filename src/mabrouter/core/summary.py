"""Per-arm summaries for `mabrouter status`: posterior mean, 95% credible interval, P(best), share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mabrouter.core.model import ArmStats, ExperimentSpec, RewardKind
from mabrouter.core.posterior import posteriors_for
from mabrouter.core.thompson import win_probabilities

SUMMARY_DRAWS = 20_000


@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    trials: int
    reward_count: int
    reward_sum: float
    mean: float
    ci_low: float
    ci_high: float
    p_best: float
    share: float

    def as_json(self, reward: RewardKind) -> dict[str, object]:
        total_key = "successes" if reward is RewardKind.BERNOULLI else "reward_sum"
        return {
            "arm": self.arm,
            "trials": self.trials,
            "outcomes": self.reward_count,
            total_key: self.reward_sum,
            "mean": self.mean,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_best": self.p_best,
            "share": self.share,
        }


def summarize(
    spec: ExperimentSpec, stats: tuple[ArmStats, ...], shares: np.ndarray, rng: np.random.Generator
) -> list[ArmSummary]:
    """`shares` is the policy's current allocation (it differs from P(best) once arms are killed)."""
    posteriors = posteriors_for(spec, stats)
    draws = posteriors.draw(rng, SUMMARY_DRAWS)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    p_best = win_probabilities(posteriors, tuple(range(len(spec.arms))), rng, SUMMARY_DRAWS)
    means = posteriors.mean()
    return [
        ArmSummary(
            arm=arm.name,
            trials=s.trials,
            reward_count=s.reward_count,
            reward_sum=s.reward_sum,
            mean=float(means[i]),
            ci_low=float(low[i]),
            ci_high=float(high[i]),
            p_best=float(p_best[i]),
            share=float(shares[i]),
        )
        for i, (arm, s) in enumerate(zip(spec.arms, stats, strict=True))
    ]
