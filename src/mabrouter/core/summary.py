"""Per-arm summaries for `mabrouter status`: posterior mean, 95% credible interval, P(best), share, and
the comparison a product owner reads: lift against the control arm and the probability of beating it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mabrouter.core.evidence import (
    Breach,
    Divergence,
    SampleRatioCheck,
    divergences,
    guardrail_breaches,
    holdout_split_check,
    sample_ratio_check,
)
from mabrouter.core.model import RewardKind
from mabrouter.core.posterior import FloatArray
from mabrouter.core.snapshot import ExperimentState
from mabrouter.core.thompson import win_probabilities

SUMMARY_DRAWS = 20_000


@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    trials: float
    reward_count: float
    reward_sum: float
    mean: float
    ci_low: float
    ci_high: float
    p_best: float
    share: float
    lift: ControlComparison | None = None  # None for the control arm itself

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
            "lift_vs_control": self.lift.lift if self.lift else None,
            "lift_ci_low": self.lift.ci_low if self.lift else None,
            "lift_ci_high": self.lift.ci_high if self.lift else None,
            "p_beats_control": self.lift.p_beats_control if self.lift else None,
        }


@dataclass(frozen=True, slots=True)
class ControlComparison:
    """An arm against the control, from joint posterior draws: the relative lift of the mean
    ((arm - control) / control) with its 95% credible interval, and P(arm > control). The lift is None
    (the interval too) when the control's mean can be zero or negative (a gaussian reward around 0):
    a relative difference means nothing there, while P(arm > control) still does."""

    lift: float | None
    ci_low: float | None
    ci_high: float | None
    p_beats_control: float


def compare_with_control(arm: FloatArray, control: FloatArray) -> ControlComparison:
    """`arm` and `control`: draws of the two means, paired (drawn together)."""
    p_beats = float(np.mean(arm > control))
    if not np.all(control > 0):
        return ControlComparison(None, None, None, p_beats)
    low, high = np.percentile(arm / control - 1.0, [2.5, 97.5])
    return ControlComparison(float(np.mean(arm) / np.mean(control) - 1.0), float(low), float(high), p_beats)


def summarize(state: ExperimentState, rng: np.random.Generator) -> list[ArmSummary]:
    """Per-arm summaries of the state routers decide from: its posteriors (discounted, when the
    experiment has a half-life) and its allocation (which differs from P(best) once arms are killed,
    capped or floored). Trials and sums are the raw counts."""
    posteriors = state.posteriors
    draws = posteriors.draw(rng, SUMMARY_DRAWS)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    p_best = win_probabilities(posteriors, tuple(range(len(state.spec.arms))), rng, SUMMARY_DRAWS)
    means = posteriors.mean()
    control = state.control_index
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
            share=float(state.shares[i]),
            lift=None if i == control else compare_with_control(draws[:, i], draws[:, control]),
        )
        for i, (arm, s) in enumerate(zip(state.spec.arms, state.stats, strict=True))
    ]


def segment_shares(state: ExperimentState) -> dict[str, dict[str, float]]:
    """Segments deciding on their own posteriors: segment -> arm -> share of sampled traffic."""
    names = [arm.name for arm in state.spec.arms]
    return {
        segment: {name: float(share) for name, share in zip(names, policy.shares, strict=True)}
        for segment, policy in sorted(state.segments.items())
    }


@dataclass(frozen=True, slots=True)
class EvidenceSummary:
    """What an experiment's own numbers say about it: sample ratios, divergence, guardrails."""

    arm_srm: SampleRatioCheck | None
    holdout_srm: SampleRatioCheck | None
    divergences: list[Divergence]
    breaches: list[Breach]

    def as_json(self) -> dict[str, object]:
        def srm(check: SampleRatioCheck | None) -> dict[str, object] | None:
            if check is None:
                return None
            return {
                # JSON has no Infinity: a statistic too large for a float (hand-edited counts) is null.
                "chi2": check.statistic if math.isfinite(check.statistic) else None,
                "df": check.degrees_of_freedom,
                "p_value": check.p_value,
                "mismatch": check.mismatch,
            }

        return {
            "srm": srm(self.arm_srm),
            "holdout_srm": srm(self.holdout_srm),
            "divergences": [
                {
                    "arm": d.arm,
                    "expected": d.expected,
                    "tolerance": d.tolerance,
                    "ci_low": d.ci_low,
                    "ci_high": d.ci_high,
                }
                for d in self.divergences
            ],
            "guardrail_breaches": [
                {"arm": b.arm, "metric": b.metric, "probability": b.probability, "evidence": b.evidence}
                for b in self.breaches
            ],
        }


def evidence(
    state: ExperimentState, holdout_cells: Mapping[int, float], rng: np.random.Generator
) -> EvidenceSummary:
    """Sample-ratio checks: sampled decisions per arm against the counts the allocations expected, and
    the holdout's share of exposed decisions, per cell of units (`holdout_cells`: cell -> decisions)."""
    spec, stats = state.spec, state.stats
    arm_srm = sample_ratio_check([float(s.sampled) for s in stats], [s.expected_trials for s in stats])
    holdout_srm = None
    if spec.holdout_percent > 0:
        holdout_srm = holdout_split_check(holdout_cells, spec.holdout_percent)
    live = tuple(range(len(spec.arms)))
    return EvidenceSummary(
        arm_srm,
        holdout_srm,
        divergences(spec, state.posteriors, rng),
        guardrail_breaches(spec, stats, live, rng),
    )
