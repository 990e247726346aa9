"""Route latency per time bucket of a load test, for the latency-over-time panel.

The run's own percentiles come from the HDR histograms (driver). Over time, each bucket keeps its
latencies rounded to 3 significant digits (the histograms' precision: within 0.5%), as value -> count:
a few hundred distinct values per bucket, plain picklable data that worker processes merge by adding.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

SIGNIFICANT_DIGITS: Final = 3
BUCKET_PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


def rounded_us(latency_us: int) -> int:
    """`latency_us` to 3 significant digits (1234 -> 1230, 56789 -> 56800); at least 1."""
    if latency_us < 10**SIGNIFICANT_DIGITS:
        return max(1, latency_us)
    step = int(10 ** (len(str(latency_us)) - SIGNIFICANT_DIGITS))  # whole digits: no float rounding
    return (latency_us + step // 2) // step * step


def percentile(counts: Mapping[int, int], q: float) -> int:
    """The nearest-rank q-th percentile of a multiset given as value -> count: the smallest value with at
    least q% of the values at or below it (the HDR histogram's definition)."""
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("percentile of an empty multiset")
    rank = max(1, math.ceil(q / 100.0 * total))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    raise AssertionError("unreachable: the ranks add up to the total")


@dataclass(slots=True)
class LatencyBuckets:
    """Route latencies (microseconds) of successful calls, per time bucket of the run."""

    counts: dict[int, Counter[int]] = field(default_factory=dict)
    maxima: dict[int, int] = field(default_factory=dict)  # exact: rounding may raise a value by 0.5%

    def record(self, bucket: int, latency_us: int) -> None:
        self.counts.setdefault(bucket, Counter())[rounded_us(latency_us)] += 1
        self.maxima[bucket] = max(self.maxima.get(bucket, 0), latency_us)

    def merge(self, other: LatencyBuckets) -> None:
        for bucket, values in other.counts.items():
            self.counts.setdefault(bucket, Counter()).update(values)
        for bucket, highest in other.maxima.items():
            self.maxima[bucket] = max(self.maxima.get(bucket, 0), highest)

    def summary(self, bucket: int) -> dict[str, int | None]:
        """count, p50, p90, p99 and max of one bucket (None: no successful call in it). As for the whole
        run, no percentile is reported above the exact maximum."""
        values = self.counts.get(bucket, Counter())
        count = sum(values.values())
        highest = self.maxima.get(bucket)
        found: dict[str, int | None] = {"count": count}
        for name, q in BUCKET_PERCENTILES:
            found[name] = min(percentile(values, q), highest or 0) if count else None
        found["max"] = highest if count else None
        return found
