"""The report's estimators: pure functions of numpy arrays (no I/O, no store, no drawing).

The bandit's decisions against the holdout's, inverse-propensity-weighted arm values from the logged
decisions, and what a decision without an outcome is worth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mabrouter.core.model import RewardKind

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Z95 = 1.959963984540054
DIFFERENCE_DRAWS = 20_000


def per_decision_reward(reward: FloatArray, kind: RewardKind) -> FloatArray:
    """Bernoulli: a decision without an outcome earned 0 (conversion style: callers may report only
    successes). Gaussian: it carries no information and stays NaN (callers drop it)."""
    return np.nan_to_num(reward, nan=0.0) if kind is RewardKind.BERNOULLI else reward


@dataclass(frozen=True, slots=True, eq=False)
class HoldoutComparison:
    holdout_n: int
    holdout_mean: float
    bandit_n: int
    bandit_mean: float
    difference: float  # bandit - holdout
    ci_low: float
    ci_high: float
    p_bandit_better: float
    method: str
    draws: FloatArray  # posterior draws of the difference (for the chart)


def holdout_difference(
    holdout: FloatArray, bandit: FloatArray, kind: RewardKind, rng: np.random.Generator
) -> HoldoutComparison | None:
    """Mean outcome per decision of the bandit's decisions minus the holdout's, with a 95% interval.

    Bernoulli: Beta(1 + successes, 1 + failures) posterior per group, difference by Monte Carlo.
    Gaussian: normal approximation, (mean_b - mean_h) +/- 1.96 * sqrt(var_b / n_b + var_h / n_h).
    """
    holdout, bandit = holdout[np.isfinite(holdout)], bandit[np.isfinite(bandit)]
    n_h, n_b = int(holdout.size), int(bandit.size)
    if n_h < 2 or n_b < 2:
        return None
    mean_h, mean_b = float(holdout.mean()), float(bandit.mean())
    difference = mean_b - mean_h
    if kind is RewardKind.BERNOULLI:
        s_h, s_b = float(holdout.sum()), float(bandit.sum())
        draws = rng.beta(1 + s_b, 1 + n_b - s_b, DIFFERENCE_DRAWS) - rng.beta(
            1 + s_h, 1 + n_h - s_h, DIFFERENCE_DRAWS
        )
        low, high = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
        better = float(np.mean(draws > 0))
        method = "Beta(1 + successes, 1 + failures) posterior per group; difference by Monte Carlo"
    else:
        se = math.sqrt(float(holdout.var(ddof=1)) / n_h + float(bandit.var(ddof=1)) / n_b) or 1e-12
        low, high = difference - Z95 * se, difference + Z95 * se
        better = 0.5 * math.erfc(-difference / se / math.sqrt(2.0))
        draws = rng.normal(difference, se, DIFFERENCE_DRAWS)
        method = "normal approximation: difference +/- 1.96 * sqrt(var_b/n_b + var_h/n_h)"
    return HoldoutComparison(n_h, mean_h, n_b, mean_b, difference, low, high, better, method, draws)


@dataclass(frozen=True, slots=True)
class IpwEstimate:
    arm: str
    served: int  # counted decisions that served this arm
    naive_mean: float  # mean reward of those (NaN when none)
    ips: float
    ips_se: float
    snips: float
    snips_se: float
    max_weight: float  # the largest 1/propensity among them: huge weights mean a noisy estimate


def ipw_rows(reason: npt.NDArray[np.str_]) -> BoolArray:
    """The decisions IPW may weigh: those sampling drew (reason SAMPLED), whose logged propensity is
    the probability the arm was drawn with. A sticky unit's repeat (STICKY) serves the arm it was
    first assigned and logs that arm's share now, which is not the probability of its assignment:
    weighing repeats by it overstated an arm's value by ~65x in the calibration suite (sticky
    scenario, docs/statistics.md). The first assignment of every unit is a SAMPLED row."""
    return np.asarray(reason == "SAMPLED", dtype=np.bool_)


def ipw_estimates(
    arms: tuple[str, ...], arm: IntArray, propensity: FloatArray, reward: FloatArray
) -> tuple[list[IpwEstimate], int]:
    """Each arm's value from logged decisions: IPS = mean_i 1[a_i = a] r_i / p_i over all decisions, and
    the self-normalised SNIPS = sum(w r) / sum(w) with w = 1[a_i = a] / p_i (delta-method standard error).
    Decisions with a non-positive or missing propensity, or no reward, are dropped; returns their count."""
    valid = np.isfinite(propensity) & (propensity > 0) & np.isfinite(reward)
    arm, propensity, reward = arm[valid], propensity[valid], reward[valid]
    n = int(arm.size)
    found = []
    for index, name in enumerate(arms):
        hit = arm == index
        weights = np.where(hit, 1.0 / np.where(hit, propensity, 1.0), 0.0)
        terms = weights * reward
        ips = float(terms.mean()) if n else math.nan
        ips_se = float(terms.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
        total = float(weights.sum())
        snips = float(terms.sum()) / total if total > 0 else math.nan
        snips_se = (
            math.sqrt(float(np.sum(weights**2 * (reward - snips) ** 2))) / total if total > 0 else math.nan
        )
        served = int(hit.sum())
        found.append(
            IpwEstimate(
                name,
                served,
                float(reward[hit].mean()) if served else math.nan,
                ips,
                ips_se,
                snips,
                snips_se,
                float(weights.max()) if served else math.nan,
            )
        )
    return found, int((~valid).sum())
