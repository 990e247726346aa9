"""Metric families computed at scrape time (the sample-ratio checks, the build) and the exposition rule
that drops `_created` samples. Nothing here runs on a request: a scrape pays for all of it."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mabrouter.core.evidence import SampleRatioCheck, holdout_split_check, sample_ratio_check
from mabrouter.core.posterior import BetaPosteriors, FloatArray, Posteriors
from mabrouter.core.snapshot import ExperimentState, Snapshot
from mabrouter.runtime.holder import SnapshotHolder

# The holdout cells (cell -> exposed decisions) of an experiment, from the data its served state was
# built from: what `mabrouter status` reads from Redis for the same check.
HoldoutCells = Callable[[str], Mapping[int, float]]


def arm_split_check(state: ExperimentState) -> SampleRatioCheck | None:
    """The traffic-split check of core.summary.evidence (what `mabrouter status` shows as `srm`), without
    the Monte Carlo parts of evidence() a scrape does not need: sampled decisions per arm against the
    counts the allocations they were drawn from expected."""
    stats = state.stats
    return sample_ratio_check([float(s.sampled) for s in stats], [s.expected_trials for s in stats])


def sample_ratio_family(snapshot: Snapshot | None, holdout_cells: HoldoutCells) -> GaugeMetricFamily:
    """mabrouter_sample_ratio_p_value{experiment, split}: split="arms" for every experiment, "holdout"
    for one with a holdout; no series while a check has too little data to say anything."""
    family = GaugeMetricFamily(
        "mabrouter_sample_ratio_p_value",
        "p-value of the sample-ratio (chi-square) check on the statistics in Redis at the last refresh: "
        'split="arms" sampled decisions per arm against the allocations they were drawn from, '
        'split="holdout" the holdout share per cell of units; below 0.001 is a mismatch',
        labels=["experiment", "split"],
    )
    for name, state in snapshot.experiments.items() if snapshot is not None else ():
        checks = {"arms": arm_split_check(state)}
        if state.spec.holdout_percent > 0:
            checks["holdout"] = holdout_split_check(holdout_cells(name), state.spec.holdout_percent)
        for split, check in checks.items():
            if check is not None:
                family.add_metric([name, split], check.p_value)
    return family


def posterior_sd(posteriors: Posteriors) -> FloatArray:
    """Each arm's posterior standard deviation of its mean, in closed form (a scrape draws nothing):
    Beta(a, b): sqrt(ab / ((a + b)^2 (a + b + 1))); location + scale * t(df): scale * sqrt(df / (df - 2)),
    infinite for df <= 2."""
    if isinstance(posteriors, BetaPosteriors):
        a, b = posteriors.alpha, posteriors.beta
        return np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    df = posteriors.df
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(df > 2.0, df / np.maximum(df - 2.0, 1e-300), np.inf)
    return np.asarray(posteriors.scale * np.sqrt(ratio), dtype=np.float64)


class SampleRatioCollector(Collector):
    """The sample-ratio checks of the live snapshot, at scrape time (see sample_ratio_family)."""

    def __init__(self, holder: SnapshotHolder, holdout_cells: HoldoutCells) -> None:
        self._holder = holder
        self._holdout_cells = holdout_cells

    def collect(self) -> Iterator[Metric]:
        yield sample_ratio_family(self._holder.current, self._holdout_cells)

    def describe(self) -> Iterator[Metric]:
        yield sample_ratio_family(None, self._holdout_cells)


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


class BuildInfoCollector(Collector):
    """mabrouter_build_info{version, python, grpcio} 1: which build a series came from, to join on."""

    def __init__(self) -> None:
        # Read once: the versions cannot change while the process runs.
        self._labels = [_installed("mabrouter"), platform.python_version(), _installed("grpcio")]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "mabrouter_build_info",
            "Always 1; the labels say which mabrouter, Python and grpcio this process runs",
            labels=["version", "python", "grpcio"],
        )
        family.add_metric(self._labels, 1.0)
        yield family

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class WithoutCreated(Collector):
    """The metrics of `registry`, exposed without their `_created` samples.

    prometheus_client adds a `_created` gauge beside every counter and histogram; in the Prometheus text
    format it is one more series per labelled child, doubling what is scraped for a timestamp nobody
    queries. `disable_created_metrics()` would do the same, but for every registry of the process: an
    application embedding the router (mabrouter.embedded) would lose them from its own metrics too."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            kept.samples = [sample for sample in metric.samples if not sample.name.endswith("_created")]
            yield kept

    def describe(self) -> Iterator[Metric]:
        # Names, so a scrape restricted with ?name[]= still finds these metrics.
        return self.collect()
