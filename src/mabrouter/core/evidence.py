"""Judging arms on evidence: guardrail breaches, divergence from offline expectations, sample-ratio checks.

Pure functions over statistics; randomness comes in as a generator. A decision needs evidence, not noise:
guardrails wait for a minimum sample size (on the arm, and on the control when they compare with it) and
require a posterior probability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from mabrouter.core.hashing import HOLDOUT_CELLS
from mabrouter.core.model import ArmStats, ExperimentSpec, Guardrail, MetricStats
from mabrouter.core.posterior import Posteriors

DRAWS = 4000


@dataclass(frozen=True, slots=True)
class Breach:
    arm: str
    metric: str
    probability: float
    evidence: str


@dataclass(frozen=True, slots=True)
class Divergence:
    arm: str
    expected: float
    tolerance: float
    ci_low: float
    ci_high: float


def metrics_since(current: ArmStats, baseline: ArmStats) -> ArmStats:
    """`current` with only the guardrail metrics observed after `baseline` (e.g. since an operator's
    unkill): old evidence an operator already overruled must not count again."""
    fresh = {
        name: MetricStats(
            max(now.n - then.n, 0), now.total - then.total, max(now.total_sq - then.total_sq, 0.0)
        )
        for name, now in current.metrics.items()
        for then in (baseline.metrics.get(name, MetricStats()),)
    }
    return replace(current, metrics=fresh)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _mean_and_variance_of_mean(stats: MetricStats) -> tuple[float, float]:
    mean = stats.mean
    variance = max(stats.total_sq / stats.n - mean * mean, 0.0) * stats.n / max(stats.n - 1, 1)
    return mean, variance / stats.n


def _probability_above(
    guardrail: Guardrail, arm: MetricStats, control: MetricStats | None, rng: np.random.Generator
) -> tuple[float, str]:
    """P(arm - control > max_increase), or P(arm > max_value) when no increase is set."""
    if guardrail.kind == "rate":
        arm_draws = rng.beta(1 + arm.total, 1 + max(arm.n - arm.total, 0.0), DRAWS)
        if guardrail.max_increase is not None and control is not None:
            control_draws = rng.beta(1 + control.total, 1 + max(control.n - control.total, 0.0), DRAWS)
            probability = float(np.mean(arm_draws - control_draws > guardrail.max_increase))
            evidence = f"rate {arm.mean:.4f} (n={arm.n}) vs control {control.mean:.4f} (n={control.n})"
            return probability, evidence
        threshold = guardrail.max_value if guardrail.max_value is not None else math.inf
        return float(np.mean(arm_draws > threshold)), f"rate {arm.mean:.4f} (n={arm.n})"
    mean, variance = _mean_and_variance_of_mean(arm)
    if guardrail.max_increase is not None and control is not None:
        control_mean, control_variance = _mean_and_variance_of_mean(control)
        spread = math.sqrt(variance + control_variance) or 1e-12
        probability = _normal_sf((guardrail.max_increase - (mean - control_mean)) / spread)
        return probability, f"mean {mean:.4g} (n={arm.n}) vs control {control_mean:.4g} (n={control.n})"
    threshold = guardrail.max_value if guardrail.max_value is not None else math.inf
    return _normal_sf((threshold - mean) / (math.sqrt(variance) or 1e-12)), f"mean {mean:.4g} (n={arm.n})"


def guardrail_breaches(
    spec: ExperimentSpec, stats: tuple[ArmStats, ...], live: tuple[int, ...], rng: np.random.Generator
) -> list[Breach]:
    """Live non-control arms whose guardrail metrics are credibly worse than allowed."""
    control_index = spec.arm_index(spec.control)
    breaches: list[Breach] = []
    for guardrail in spec.guardrails:
        control = stats[control_index].metrics.get(guardrail.metric) if control_index is not None else None
        needs_control = guardrail.max_increase is not None
        if needs_control and (control is None or control.n < guardrail.min_samples):
            continue
        for index in live:
            if index == control_index:
                continue
            observed = stats[index].metrics.get(guardrail.metric)
            if observed is None or observed.n < guardrail.min_samples:
                continue
            probability, evidence = _probability_above(guardrail, observed, control, rng)
            if probability >= guardrail.probability:
                limit = (
                    f"+{guardrail.max_increase} over control" if needs_control else f"> {guardrail.max_value}"
                )
                breaches.append(
                    Breach(
                        spec.arms[index].name,
                        guardrail.metric,
                        probability,
                        f"{guardrail.metric}: {evidence}; P({limit}) = {probability:.3f}"
                        f" >= {guardrail.probability}",
                    )
                )
    return breaches


def divergences(spec: ExperimentSpec, posteriors: Posteriors, rng: np.random.Generator) -> list[Divergence]:
    """Arms whose 95% credible interval lies entirely outside their expected band."""
    if not any(arm.expected for arm in spec.arms):
        return []
    draws = posteriors.draw(rng, DRAWS)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    found = []
    for index, arm in enumerate(spec.arms):
        expected = arm.expected
        if expected is None:
            continue
        if (
            high[index] < expected.mean - expected.tolerance
            or low[index] > expected.mean + expected.tolerance
        ):
            found.append(
                Divergence(arm.name, expected.mean, expected.tolerance, float(low[index]), float(high[index]))
            )
    return found


def chi_square_p_value(statistic: float, degrees_of_freedom: int) -> float:
    """Upper tail of the chi-square distribution: the regularized upper incomplete gamma Q(k/2, x/2)."""
    if degrees_of_freedom <= 0 or statistic <= 0:
        return 1.0
    a, x = degrees_of_freedom / 2.0, statistic / 2.0
    if x < a + 1.0:  # series for P, then Q = 1 - P
        term = total = 1.0 / a
        n = a
        for _ in range(500):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))
    # Lentz's continued fraction for Q
    b = x + 1.0 - a
    c = 1.0 / 1e-300
    d = 1.0 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = b + an / c
        c = c if abs(c) > 1e-300 else 1e-300
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - math.lgamma(a)) * h)


@dataclass(frozen=True, slots=True)
class SampleRatioCheck:
    statistic: float
    degrees_of_freedom: int
    p_value: float

    @property
    def mismatch(self) -> bool:
        """The loud warning threshold: p < 0.001."""
        return self.p_value < 0.001


# Cells expecting fewer decisions than this are pooled into one: chi-square's approximation needs a few
# expected counts per cell. A bandit starves losing arms, and each starved arm counted alone added a
# degree of freedom but almost no statistic, which made the check blind (calibration suite: the p-values
# of healthy runs piled up near 1 instead of being uniform).
MIN_EXPECTED_PER_CELL = 5.0


def holdout_split_check(cells: Mapping[int, float], holdout_percent: float) -> SampleRatioCheck | None:
    """Whether the holdout got its share of exposed decisions, robust to units that repeat.

    Holdout membership is decided per unit, not per decision: a user with a thousand requests lands
    them all on one side. Counted per decision, a chi-square assumes independent decisions and raises
    false alarms whenever units repeat (calibration suite, 300 users x 5 requests: 4 of 30 healthy runs
    flagged at p < 0.001). So decisions are counted per cell of units (core/hashing.holdout_cell: 1 % of
    the hash space each), and the split's chi-square is divided by the cells' dispersion (their
    Pearson statistic per degree of freedom around each side's mean, never below 1: quasi-likelihood),
    which carries the clustering. Cells straddling the holdout boundary are left out. None when there
    are fewer than two full cells on a side or nothing was counted."""
    boundary = holdout_percent  # cell k is all holdout when k + 1 <= percent, all bandit when k >= percent
    held = [n for k, n in cells.items() if k + 1 <= boundary]
    rest = [n for k, n in cells.items() if k >= boundary]
    held_cells = sum(1 for k in range(HOLDOUT_CELLS) if k + 1 <= boundary)
    rest_cells = sum(1 for k in range(HOLDOUT_CELLS) if k >= boundary)
    held_total, rest_total = sum(held), sum(rest)
    if held_cells < 2 or rest_cells < 2 or held_total + rest_total <= 0:
        return None
    # Every full cell, counted or not: a cell without decisions is an observation of zero.
    held_counts = held + [0.0] * (held_cells - len(held))
    rest_counts = rest + [0.0] * (rest_cells - len(rest))
    dispersion = 0.0
    for counts in (held_counts, rest_counts):
        mean = sum(counts) / len(counts)
        if mean > 0:
            dispersion += sum((n - mean) * (n - mean) for n in counts) / mean
    dispersion = max(dispersion / (held_cells + rest_cells - 2), 1.0)
    per_cell = (held_total + rest_total) / (held_cells + rest_cells)
    expected = (per_cell * held_cells, per_cell * rest_cells)
    if min(expected) <= 0:
        return None  # counts so small (5e-324 by hand) their share underflows to 0: nothing to judge
    statistic = sum((o - e) * (o - e) / e for o, e in zip((held_total, rest_total), expected, strict=True))
    if not math.isfinite(dispersion):
        return None  # cells a float cannot hold apart (a hand edit): nothing to judge the split by
    return _check(statistic / dispersion, 1)


def sample_ratio_check(observed: list[float], expected: list[float]) -> SampleRatioCheck | None:
    """Chi-square of observed counts against expected ones (rescaled to the same total); cells with
    fewer than MIN_EXPECTED_PER_CELL expected are pooled, and the pool is dropped if it is still short."""
    pairs = [(o, e) for o, e in zip(observed, expected, strict=True) if e > 0]
    total_observed = sum(o for o, _ in pairs)
    total_expected = sum(e for _, e in pairs)
    if total_observed <= 0 or total_expected <= 0:
        return None
    scale = total_observed / total_expected
    cells = [(o, e * scale) for o, e in pairs if e * scale >= MIN_EXPECTED_PER_CELL]
    pool = [(o, e * scale) for o, e in pairs if e * scale < MIN_EXPECTED_PER_CELL]
    pooled = (sum(o for o, _ in pool), sum(e for _, e in pool))
    if pooled[1] >= MIN_EXPECTED_PER_CELL:
        cells.append(pooled)
    if len(cells) < 2:
        return None
    # Rescale over the cells kept, so the statistic compares proportions among them.
    rescale = sum(o for o, _ in cells) / sum(e for _, e in cells)
    statistic = sum((o - e * rescale) * (o - e * rescale) / (e * rescale) for o, e in cells)
    return _check(statistic, len(cells) - 1)


def _check(statistic: float, df: int) -> SampleRatioCheck | None:
    """The check for a statistic computed from counts as stored, which a hand edit can make anything
    (1e308 decisions): products are written x * x, which overflows to inf where x ** 2 raises, an
    infinite statistic is a certain mismatch, and one that is not a number (inf - inf) says nothing."""
    if math.isnan(statistic):
        return None
    if math.isinf(statistic):
        return SampleRatioCheck(statistic, df, 0.0)
    return SampleRatioCheck(statistic, df, chi_square_p_value(statistic, df))
