"""What a load test counts, how worker counts merge, and the statistics computed from them.

Pure: no I/O, no clock. A :class:`Tally` is plain picklable data, so each worker process fills its own and
the parent merges them (latency histograms travel separately, HDR-encoded).

Sample-ratio mismatch (SRM), the method
---------------------------------------
A RouteResponse carries only the served arm's propensity, so the policy's full share vector at each
decision is not observed; the check estimates it per short SRM bucket t (0.05 s: the policy moves fast
early on, and coarser buckets make the check raise false alarms). Among the SAMPLED decisions of bucket t:

- ``share_t(a)`` is the median propensity the router reported for arm a in that bucket;
- arms not served in t split what the served arms leave (1 - the sum of their medians) in proportion to
  their last known medians; the shares are normalised to sum to 1;
- arms with ``share_t(a) < 0.01`` are left out of bucket t, with the decisions that served them: a tiny
  share's logged propensity is a Monte Carlo estimate smoothed away from 0 (the router adds half a draw),
  far above its true share, and would raise an alarm on every long run;
- ``n_t`` counts the decisions served to the remaining arms, ``E(a) += n_t * share_t(a) / sum(shares)``
  and ``O(a) +=`` how often a was served in t.

Then ``chi2 = sum_a (O(a) - E(a))^2 / E(a)`` with ``k - 1`` degrees of freedom (k arms with E(a) > 0).
This is an approximation (the policy can change within a bucket; propensities are Monte Carlo
estimates); pooling buckets with different shares makes the statistic conservative. In simulations of a
3-arm Beta-Bernoulli Thompson policy (30 to 1,000 decisions/s, snapshots every 50-200 ms, 4,000-draw
propensities) it rejected at the 5% level in 2-5% of faithful runs and never at 0.1%. Only SAMPLED
decisions count (STICKY, FORCED, KILLED... are not random draws of the policy).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mabrouter.loadtest.latency import LatencyBuckets

SRM_BUCKET_SECONDS: Final = 0.05
SRM_METHOD: Final = (
    "chi-square of observed SAMPLED arm counts against expected = sum over 0.05 s buckets t of "
    "n_t * share_t(arm), where share_t(arm) is the median propensity the router reported for that arm "
    "in bucket t; arms not served in t split the remaining 1 - sum(medians) by their last known share; "
    "arms below a 0.01 share (and the decisions serving them) are left out of the bucket; shares "
    "normalised to 1. Approximate: the policy can change within a bucket and propensities are Monte "
    "Carlo estimates."
)
SRM_MIN_EXPECTED: Final = 5.0
SRM_MIN_SHARE: Final = 0.01


@dataclass(slots=True)
class Tally:
    """Counts of one worker (or, after :meth:`merge`, of all of them). Buckets are time slices of the run."""

    bucket_seconds: float
    srm_bucket_seconds: float = SRM_BUCKET_SECONDS
    decisions: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    arm_counts: dict[int, Counter[str]] = field(default_factory=dict)
    regret: dict[int, float] = field(default_factory=dict)
    # SRM bucket -> arm -> propensity -> how many SAMPLED decisions reported it (few distinct values each)
    propensities: dict[int, dict[str, Counter[float]]] = field(default_factory=dict)
    unmodeled: Counter[str] = field(default_factory=Counter)
    outcomes_sent: int = 0
    outcomes_duplicate: int = 0
    outcome_errors: Counter[str] = field(default_factory=Counter)
    outcomes_flushed_at_end: int = 0
    skipped: int = 0  # open loop: sends skipped because the in-flight limit was reached
    max_latency_us: int = 0
    max_dispatch_lag_us: int = 0
    latency: LatencyBuckets = field(default_factory=LatencyBuckets)  # per bucket, for latency over time

    def bucket_of(self, t: float) -> int:
        return max(0, int(t / self.bucket_seconds))

    def record_decision(
        self, t: float, arm: str, reason: str, propensity: float, regret: float | None
    ) -> None:
        bucket = self.bucket_of(t)
        self.decisions += 1
        self.reasons[reason] += 1
        self.arm_counts.setdefault(bucket, Counter())[arm] += 1
        if regret is None:
            self.unmodeled[arm] += 1
        else:
            self.regret[bucket] = self.regret.get(bucket, 0.0) + regret
        if reason == "SAMPLED":
            srm_bucket = max(0, int(t / self.srm_bucket_seconds))
            self.propensities.setdefault(srm_bucket, {}).setdefault(arm, Counter())[propensity] += 1

    def record_latency(self, t: float, latency_us: int) -> None:
        """A successful Route call sent at `t` (seconds into the run) took `latency_us`."""
        self.latency.record(self.bucket_of(t), latency_us)

    def merge(self, other: Tally) -> None:
        if (other.bucket_seconds, other.srm_bucket_seconds) != (self.bucket_seconds, self.srm_bucket_seconds):
            raise ValueError("cannot merge tallies with different bucket sizes")
        self.decisions += other.decisions
        self.errors.update(other.errors)
        self.reasons.update(other.reasons)
        for bucket, counts in other.arm_counts.items():
            self.arm_counts.setdefault(bucket, Counter()).update(counts)
        for bucket, value in other.regret.items():
            self.regret[bucket] = self.regret.get(bucket, 0.0) + value
        for bucket, arms in other.propensities.items():
            mine = self.propensities.setdefault(bucket, {})
            for arm, values in arms.items():
                mine.setdefault(arm, Counter()).update(values)
        self.unmodeled.update(other.unmodeled)
        self.outcomes_sent += other.outcomes_sent
        self.outcomes_duplicate += other.outcomes_duplicate
        self.outcome_errors.update(other.outcome_errors)
        self.outcomes_flushed_at_end += other.outcomes_flushed_at_end
        self.skipped += other.skipped
        self.max_latency_us = max(self.max_latency_us, other.max_latency_us)
        self.max_dispatch_lag_us = max(self.max_dispatch_lag_us, other.max_dispatch_lag_us)
        self.latency.merge(other.latency)


def arms_seen(tally: Tally, known: Sequence[str] = ()) -> list[str]:
    """The environment's arms in order, then any other arm the router served, sorted."""
    served = {arm for counts in tally.arm_counts.values() for arm in counts}
    return [*known, *sorted(served - set(known))]


def timeline(tally: Tally, buckets: int, arms: Sequence[str]) -> list[dict[str, Any]]:
    """Per bucket: decisions, traffic share per arm (sums to 1 when there were decisions), regret, and the
    Route latency of its successful calls (count, p50, p90, p99, max in us; None without calls)."""
    last = max([buckets - 1, *tally.arm_counts, *tally.regret, *tally.latency.counts])
    rows, cumulative = [], 0.0
    for bucket in range(last + 1):
        counts = tally.arm_counts.get(bucket, Counter())
        total = sum(counts.values())
        regret = tally.regret.get(bucket, 0.0)
        cumulative += regret
        rows.append(
            {
                "start": round(bucket * tally.bucket_seconds, 6),
                "end": round((bucket + 1) * tally.bucket_seconds, 6),
                "decisions": total,
                "counts": {arm: counts[arm] for arm in arms},
                "shares": {arm: counts[arm] / total for arm in arms} if total else {},
                "regret": round(regret, 9),
                "cumulative_regret": round(cumulative, 9),
                "latency_us": tally.latency.summary(bucket),
            }
        )
    return rows


def cumulative_regret(regrets: Iterable[float]) -> list[float]:
    """Running sum of per-decision (or per-bucket) regrets: non-decreasing when every regret is >= 0."""
    total, out = 0.0, []
    for value in regrets:
        total += value
        out.append(total)
    return out


def weighted_median(values: Mapping[float, int]) -> float:
    """The lower median of a multiset given as value -> count."""
    total = sum(values.values())
    if total <= 0:
        raise ValueError("median of an empty multiset")
    seen = 0
    for value in sorted(values):
        seen += values[value]
        if 2 * seen >= total:
            return value
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class SrmResult:
    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float | None
    df: int
    p_value: float | None
    warning: str | None
    excluded: int = 0  # SAMPLED decisions left out: they served an arm below the share floor

    def as_json(self) -> dict[str, Any]:
        return {
            "method": SRM_METHOD,
            "observed": self.observed,
            "expected": {arm: round(value, 3) for arm, value in self.expected.items()},
            "chi2": self.chi2,
            "df": self.df,
            "p_value": self.p_value,
            "warning": self.warning,
            "excluded_decisions": self.excluded,
        }


def sample_ratio_mismatch(
    propensities: Mapping[int, Mapping[str, Mapping[float, int]]], min_share: float = SRM_MIN_SHARE
) -> SrmResult:
    """Chi-square of observed SAMPLED arm counts against the counts the logged propensities predict.

    `propensities`: SRM bucket -> arm -> propensity -> count. See the module docstring for the method.
    """
    arms = sorted({arm for bucket in propensities.values() for arm, values in bucket.items() if values})
    observed: Counter[str] = Counter()
    expected = dict.fromkeys(arms, 0.0)
    medians = {
        bucket: {arm: weighted_median(values) for arm, values in propensities[bucket].items() if values}
        for bucket in sorted(propensities)
    }
    first: dict[str, float] = {}
    for shares in medians.values():
        for arm, share in shares.items():
            first.setdefault(arm, share)
    last: dict[str, float] = {}
    excluded = 0
    for bucket, shares in medians.items():
        counts = {arm: sum(values.values()) for arm, values in propensities[bucket].items()}
        last.update(shares)
        estimate = impute_shares(
            shares, {arm: last.get(arm, first[arm]) for arm in arms if arm not in shares}
        )
        # Arms below the floor are left out (and so are the decisions that served them): their logged
        # propensities are Monte Carlo estimates smoothed away from 0, far too high for a tiny share.
        resolvable = {arm: share for arm, share in estimate.items() if share >= min_share}
        norm = sum(resolvable.values())
        n_t = sum(counts.get(arm, 0) for arm in resolvable)
        excluded += sum(counts.values()) - n_t
        for arm, share in resolvable.items():
            observed[arm] += counts.get(arm, 0)
            expected[arm] += n_t * share / norm
    cells = [arm for arm in arms if expected[arm] > 0]
    df = len(cells) - 1
    if df < 1:
        why = f"fewer than 2 arms had a share of at least {min_share:g}: nothing to compare"
        return SrmResult(dict(observed), expected, None, max(df, 0), None, why, excluded)
    chi2 = sum((observed[arm] - expected[arm]) ** 2 / expected[arm] for arm in cells)
    small = [arm for arm in cells if expected[arm] < SRM_MIN_EXPECTED]
    warning = (
        f"expected count below {SRM_MIN_EXPECTED:g} for {', '.join(small)}: the chi-square is unreliable"
        if small
        else None
    )
    return SrmResult(dict(observed), expected, chi2, df, chi2_sf(chi2, df), warning, excluded)


def impute_shares(observed: Mapping[str, float], missing: Mapping[str, float]) -> dict[str, float]:
    """One bucket's policy shares: the observed arms' medians, and the mass they leave (1 - their sum)
    split among the `missing` arms in proportion to their last known shares; normalised to sum to 1."""
    shares = dict(observed)
    residual = max(0.0, 1.0 - sum(observed.values()))
    weight = sum(missing.values())
    for arm, last in missing.items():
        shares[arm] = residual * (last / weight if weight > 0 else 1 / len(missing))
    total = sum(shares.values())
    return {arm: share / total for arm, share in shares.items()} if total > 0 else shares


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, x/2)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if x <= 0:
        return 1.0
    return gamma_q(df / 2.0, x / 2.0)


_EPS: Final = 1e-15
_TINY: Final = 1e-300
_MAX_ITER: Final = 10_000


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a) (Numerical Recipes 6.2)."""
    if a <= 0 or x < 0:
        raise ValueError(f"gamma_q needs a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # the series for P(a, x) converges fast here
        term = total = 1.0 / a
        denominator = a
        for _ in range(_MAX_ITER):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    # the continued fraction for Q(a, x), by the modified Lentz method
    b = x + 1 - a
    c = 1 / _TINY
    d = 1 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < _EPS:
            break
    return min(1.0, math.exp(log_prefactor) * h)
