"""Prometheus metrics. Hot-path counters are cached children (one dict lookup + inc per decision);
everything derived from the snapshot is read at scrape time by a collector, costing Route nothing.

Conventions (Prometheus's): what only grows is a counter named `_total`, no `_created` series are
exposed (metric_families.WithoutCreated), and every name, type and label is listed in docs/metrics.md,
which tests/integration/test_metrics_contract.py holds against a real router's /metrics."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.metric_families import (
    BuildInfoCollector,
    WithoutCreated,
    posterior_sd,
)

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """`registry`: where the metrics are exposed (a new one by default). The metric objects live in
        a registry of their own, exposed through WithoutCreated."""
        self.registry = registry or CollectorRegistry()
        r = self._own = CollectorRegistry()
        self.registry.register(WithoutCreated(r))
        self.registry.register(BuildInfoCollector())
        self.decisions = Counter(
            "mabrouter_decisions", "Decisions made", ["experiment", "arm", "reason"], registry=r
        )
        self.route_latency = Histogram(
            "mabrouter_route_latency_seconds",
            "Route handling time in the server",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outcome_latency = Histogram(
            "mabrouter_report_outcome_latency_seconds",
            "ReportOutcome(s) handling time in the server",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "mabrouter_outcomes", "Outcomes by result", ["experiment", "result"], registry=r
        )
        # A Gauge, not a Counter: rewards may be negative (minimising latency or cost), and a Counter
        # refuses a negative increment with an exception.
        self.rewards = Gauge(
            "mabrouter_reward_sum",
            "Sum of applied rewards (may decrease: rewards can be negative)",
            ["experiment", "arm"],
            registry=r,
        )
        self.redis_errors = Counter(
            "mabrouter_redis_errors", "Failed Redis operations", ["operation"], registry=r
        )
        self.dropped = Counter(
            "mabrouter_buffer_dropped",
            "Entries dropped because a bounded buffer was full",
            ["buffer"],
            registry=r,
        )
        self.guardian_actions = Counter(
            "mabrouter_guardian_actions",
            "Automatic kills and ramp steps this replica won",
            ["experiment", "arm", "action"],
            registry=r,
        )
        self.bad_requests = Counter(
            "mabrouter_bad_requests",
            "Calls refused as malformed (INVALID_ARGUMENT), by method and kind of problem",
            ["method", "kind"],
            registry=r,
        )
        self.telemetry_errors = Counter(
            "mabrouter_telemetry_errors",
            "Exceptions raised by metrics or tracing code, swallowed so the call still answers",
            ["part"],
            registry=r,
        )
        self.rpc_errors = Counter(
            "mabrouter_rpc_errors",
            "Router calls that ended with a gRPC status other than OK, by method and status code name",
            ["method", "code"],
            registry=r,
        )
        self.build_failures = Counter(
            "mabrouter_state_build_failures",
            "Refreshes that could not build an experiment's state from Redis (its last good state is kept)",
            ["experiment"],
            registry=r,
        )
        self._increments: dict[tuple[Counter | Gauge, tuple[str, ...]], Callable[[float], None]] = {}
        self._metrics_failed = False

    def add_process_metrics(self) -> None:
        """process_* (CPU, memory, file descriptors, start time) and python_* (version, garbage
        collector), read from /proc and the interpreter at scrape time. For a router that is a process
        of its own (`mabrouter serve`): inside an application (mabrouter.embedded) they would describe,
        a second time, a process the application's own metrics already describe."""
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def _inc(self, counter: Counter | Gauge, *labels: str) -> Callable[[float], None]:
        """The `inc` of `counter`'s child for `labels`, cached: `labels()` costs a lock and a lookup."""
        key = (counter, labels)
        inc = self._increments.get(key)
        if inc is None:
            inc = self._increments[key] = counter.labels(*labels).inc
        return inc

    def add(self, counter: Counter | Gauge, *labels: str, amount: float = 1.0) -> None:
        """`counter{labels} += amount`, never raising: a metrics failure says nothing about the decision
        or the outcome it counts, which are already made or applied (see telemetry_failed)."""
        try:
            self._inc(counter, *labels)(amount)
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a call
            self.telemetry_failed(exc)

    def telemetry_failed(self, error: Exception) -> None:
        """Count (mabrouter_telemetry_errors{part="metrics"}) and log once a metric that raised."""
        with contextlib.suppress(Exception):  # the metrics library itself may be what fails: the log says so
            self.telemetry_errors.labels("metrics").inc()
        if self._metrics_failed:
            log.debug("a metric raised %r again", error)
            return
        self._metrics_failed = True
        log.error("a metric raised %r; calls go on without it (logged once, counted)", error, exc_info=error)

    def count_decision(self, experiment: str, arm: str, reason: str) -> None:
        self.add(self.decisions, experiment, arm, reason)

    def count_decisions(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """count_decision for many at once, by (experiment, arm, reason): one locked increment per series
        instead of one per decision."""
        for labels, count in counts.items():
            self.add(self.decisions, *labels, amount=count)

    def count_outcome(self, experiment: str, result: str) -> None:
        """mabrouter_outcomes{experiment, result} += 1 (names from verified ids)."""
        self.add(self.outcomes, experiment, result)

    def add_reward(self, experiment: str, arm: str, reward: float) -> None:
        self.add(self.rewards, experiment, arm, amount=reward)


class SnapshotCollector(Collector):
    """Gauges read from the live snapshot at scrape time."""

    def __init__(
        self,
        holder: SnapshotHolder,
        invalid_documents: Callable[[], int],
        unattributed: Callable[[], int],
        pending_writes: Callable[[], dict[str, int]],
    ) -> None:
        """`invalid_documents`, `unattributed`: totals since the process started (counters)."""
        self._holder = holder
        self._invalid_documents = invalid_documents
        self._unattributed = unattributed
        self._pending_writes = pending_writes

    def collect(self) -> Iterator[Metric]:
        snapshot = self._holder.current
        age = GaugeMetricFamily("mabrouter_snapshot_age_seconds", "Seconds since the last successful refresh")
        loaded = GaugeMetricFamily("mabrouter_snapshot_loaded", "1 once a snapshot is loaded")
        loaded.add_metric([], 0.0 if snapshot is None else 1.0)
        if snapshot is not None:
            age.add_metric([], time.monotonic() - snapshot.loaded_at)
        version = GaugeMetricFamily(
            "mabrouter_config_version", "Config version in use", labels=["experiment"]
        )
        mean = GaugeMetricFamily(
            "mabrouter_arm_posterior_mean", "Posterior mean reward", labels=["experiment", "arm"]
        )
        spread = GaugeMetricFamily(
            "mabrouter_arm_posterior_sd",
            "Posterior standard deviation of the mean reward (mean +/- 1.96 sd: an approximate 95% "
            "interval; mabrouter status gives the exact percentiles); absent while it is infinite",
            labels=["experiment", "arm"],
        )
        share = GaugeMetricFamily(
            "mabrouter_arm_share", "Current traffic share of the policy", labels=["experiment", "arm"]
        )
        trials = GaugeMetricFamily(
            "mabrouter_arm_trials", "Trials in Redis at the last refresh", labels=["experiment", "arm"]
        )
        killed = GaugeMetricFamily(
            "mabrouter_killed", "1 when killed (arm '' = whole experiment)", labels=["experiment", "arm"]
        )
        global_kill = snapshot is not None and snapshot.global_controls.killed
        for name, state in snapshot.experiments.items() if snapshot else ():
            version.add_metric([name], float(state.version))
            means, sds = state.posteriors.mean(), posterior_sd(state.posteriors)
            killed.add_metric([name, ""], 1.0 if state.controls.killed or global_kill else 0.0)
            for i, arm in enumerate(state.spec.arms):
                mean.add_metric([name, arm.name], float(means[i]))
                if math.isfinite(sds[i]):
                    spread.add_metric([name, arm.name], float(sds[i]))
                share.add_metric([name, arm.name], float(state.shares[i]))
                trials.add_metric([name, arm.name], float(state.stats[i].trials))
                killed.add_metric([name, arm.name], 1.0 if arm.name in state.controls.killed_arms else 0.0)
        degraded = GaugeMetricFamily(
            "mabrouter_experiment_degraded",
            "1 while what Redis holds for the experiment cannot be used: it is served from its last good "
            "state under its current kill switches (or refused, if it never had one)",
            labels=["experiment"],
        )
        for name in snapshot.errors if snapshot else ():
            degraded.add_metric([name], 1.0)
        # Counters although read from elsewhere: both only grow while the process runs (a reset means a
        # restart, which rate() and increase() handle), so they are exposed as `_total`.
        invalid = CounterMetricFamily(
            "mabrouter_invalid_documents",
            "Problems with stored data that kept a last good state, each counted once (document, "
            "statistics, switches)",
        )
        invalid.add_metric([], float(self._invalid_documents()))
        unattributed = CounterMetricFamily(
            "mabrouter_unattributed_edits", "Edits made in Redis without the CLI, noticed by this process"
        )
        unattributed.add_metric([], float(self._unattributed()))
        pending = GaugeMetricFamily(
            "mabrouter_pending_writes", "Buffered writes not yet in Redis", labels=["buffer"]
        )
        for buffer, count in self._pending_writes().items():
            pending.add_metric([buffer], float(count))
        yield from (age, loaded, version, mean, spread, share, trials, killed, degraded)
        yield from (invalid, unattributed, pending)
