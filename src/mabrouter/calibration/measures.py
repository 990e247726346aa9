"""Statistics of the statistics: how often an interval covers, whether probabilities are calibrated,
whether an estimator is biased, whether an alarm rate is its nominal level. Pure functions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mabrouter.core.evidence import chi_square_p_value

FloatArray = npt.NDArray[np.float64]

# Bands are this many standard errors wide: a correct estimator falls outside one in ~370 checks.
Z_BAND = 3.0
# The same tail for counts, one-sided: P(Z > 3).
TAIL = 0.00135


def binomial_consistent(hits: int, n: int, p: float) -> bool:
    """Whether `hits` of `n` is an ordinary outcome of a true rate `p`: neither exact binomial tail
    below TAIL. Exact, because the normal band is wrong for the rare events that matter here (an
    alarm rate of 0.001, a P(best) of 0.002)."""
    if n == 0:
        return True
    p = min(max(p, 0.0), 1.0)

    def pmf(k: int) -> float:
        if p in {0.0, 1.0}:
            return 1.0 if k == round(p * n) else 0.0
        log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        return math.exp(log + k * math.log(p) + (n - k) * math.log1p(-p))

    at_most = sum(pmf(k) for k in range(hits + 1))
    at_least = 1.0 - at_most + pmf(hits)
    return min(at_most, at_least) >= TAIL


@dataclass(frozen=True, slots=True)
class Rate:
    """`hits` of `n`, with the band a true rate of `nominal` would fall in (Z_BAND binomial SEs)."""

    hits: int
    n: int
    nominal: float

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def band(self) -> tuple[float, float]:
        spread = Z_BAND * math.sqrt(self.nominal * (1.0 - self.nominal) / self.n) if self.n else math.inf
        return max(self.nominal - spread, 0.0), min(self.nominal + spread, 1.0)

    @property
    def within(self) -> bool:
        return binomial_consistent(self.hits, self.n, self.nominal)

    def as_json(self) -> dict[str, object]:
        low, high = self.band
        return {"rate": self.value, "n": self.n, "nominal": self.nominal, "band": [low, high]}


@dataclass(frozen=True, slots=True)
class Bias:
    """Mean error of an estimate over independent runs, its standard error and z = mean / SE."""

    mean_error: float
    standard_error: float
    n: int

    @property
    def z(self) -> float:
        return self.mean_error / self.standard_error if self.standard_error > 0 else math.nan

    @property
    def unbiased(self) -> bool:
        return abs(self.z) <= Z_BAND

    def as_json(self) -> dict[str, object]:
        return {"mean_error": self.mean_error, "se": self.standard_error, "z": self.z, "n": self.n}


def bias(estimates: Sequence[float], truths: Sequence[float]) -> Bias:
    errors = np.array(estimates, dtype=np.float64) - np.array(truths, dtype=np.float64)
    errors = errors[np.isfinite(errors)]
    n = int(errors.size)
    se = float(errors.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return Bias(float(errors.mean()) if n else math.nan, se, n)


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    low: float
    high: float
    n: int
    mean_predicted: float
    observed: float  # fraction of these predictions that came true

    @property
    def band(self) -> tuple[float, float]:
        """Where `observed` falls Z_BAND-wise if the predictions are calibrated."""
        p = min(max(self.mean_predicted, 0.0), 1.0)
        spread = Z_BAND * math.sqrt(p * (1.0 - p) / self.n) if self.n else math.inf
        return max(p - spread, 0.0), min(p + spread, 1.0)

    @property
    def consistent(self) -> bool:
        """Observed as often as calibrated predictions would make it (exact binomial tails)."""
        return binomial_consistent(round(self.observed * self.n), self.n, self.mean_predicted)

    def as_json(self) -> dict[str, object]:
        return {
            "bin": [self.low, self.high],
            "n": self.n,
            "mean_predicted": self.mean_predicted,
            "observed": self.observed,
            "band": list(self.band),
        }


RELIABILITY_EDGES = (0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0)


def reliability(
    predicted: Sequence[float], happened: Sequence[bool], edges: Sequence[float] = RELIABILITY_EDGES
) -> list[ReliabilityBin]:
    """Predictions binned by value; per bin how often the predicted event happened."""
    p = np.array(predicted, dtype=np.float64)
    hit = np.array(happened, dtype=np.bool_)
    bins = []
    for index, (low, high) in enumerate(itertools.pairwise(edges)):
        last = index == len(edges) - 2
        inside = (p >= low) & ((p <= high) if last else (p < high))
        n = int(inside.sum())
        if n:
            bins.append(ReliabilityBin(low, high, n, float(p[inside].mean()), float(hit[inside].mean())))
    return bins


def calibration_p_value(bins: Sequence[ReliabilityBin]) -> float:
    """Hosmer-Lemeshow-style check: sum over bins of (observed - expected)^2 / (n p (1-p)), chi-square
    with one degree of freedom per bin. Predictions are treated as independent, which runs of several
    arms are not quite (an arm's P(best) moves the others'): read it as a screen, not a proof."""
    statistic, used = 0.0, 0
    for b in bins:
        variance = b.n * b.mean_predicted * (1.0 - b.mean_predicted)
        if variance < 1.0:
            continue  # too few expected events for the normal approximation
        statistic += (b.n * (b.observed - b.mean_predicted)) ** 2 / variance
        used += 1
    return chi_square_p_value(statistic, used) if used else math.nan


def pooled_chi_square(statistics: Sequence[float], degrees: Sequence[int]) -> float:
    """The p-value of the sum of independent chi-square statistics (chi-square with the summed
    degrees of freedom): a few runs of a healthy check are ordinary, a biased one adds up fast."""
    total, df = float(sum(statistics)), int(sum(degrees))
    return chi_square_p_value(total, df) if df else math.nan
