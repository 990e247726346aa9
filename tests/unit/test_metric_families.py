"""The metrics computed at scrape time and the exposition rules, on hand-built snapshots (no I/O): the
sample-ratio p-values are the ones `mabrouter status` computes (core.summary.evidence), the posterior
spread matches the posterior's draws, and nothing exposed carries a `_created` series."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mabrouter.core.model import ArmStats
from mabrouter.core.posterior import BetaPosteriors, StudentTPosteriors
from mabrouter.core.summary import evidence
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.metric_families import (
    SampleRatioCollector,
    WithoutCreated,
    posterior_sd,
    sample_ratio_family,
)
from mabrouter.runtime.metrics import RouterMetrics

from core_fixtures import bernoulli_spec, snapshot, state


def p_values(family_samples: list[tuple[dict[str, str], float]]) -> dict[tuple[str, str], float]:
    return {(labels["experiment"], labels["split"]): value for labels, value in family_samples}


def sampled(*counts: tuple[int, float]) -> tuple[ArmStats, ...]:
    """Arms with (sampled decisions, expected decisions)."""
    return tuple(ArmStats(trials=n, sampled=n, expected_trials=e) for n, e in counts)


def family_samples(
    cells: Mapping[str, Mapping[int, float]], *states: object
) -> list[tuple[dict[str, str], float]]:
    family = sample_ratio_family(snapshot(*states), lambda name: cells.get(name, {}))  # type: ignore[arg-type]
    return [(dict(s.labels), s.value) for s in family.samples]


def test_the_traffic_split_p_value_is_the_one_status_computes() -> None:
    balanced = state(bernoulli_spec(name="even"), sampled((100, 100.0), (104, 100.0), (96, 100.0)))
    skewed = state(bernoulli_spec(name="skewed"), sampled((160, 100.0), (70, 100.0), (70, 100.0)))
    exposed = p_values(family_samples({}, balanced, skewed))
    rng = np.random.default_rng(0)
    for name, built in (("even", balanced), ("skewed", skewed)):
        check = evidence(built, {}, rng).arm_srm
        assert check is not None
        assert exposed[name, "arms"] == pytest.approx(check.p_value, rel=1e-12)
    assert exposed["even", "arms"] > 0.5
    assert exposed["skewed", "arms"] < 1e-6
    assert ("even", "holdout") not in exposed  # no holdout, no holdout check


def test_the_holdout_split_p_value_is_the_one_status_computes() -> None:
    spec = dataclasses.replace(bernoulli_spec(name="held"), holdout_percent=10.0)
    built = state(spec, sampled((100, 100.0), (100, 100.0), (100, 100.0)))
    # 10 holdout cells (0-9) and 90 others; the holdout got about half its share.
    cells = {k: 5.0 if k < 10 else 10.0 + (k % 3) for k in range(100)}
    exposed = p_values(family_samples({"held": cells}, built))
    check = evidence(built, cells, np.random.default_rng(0)).holdout_srm
    assert check is not None
    assert exposed["held", "holdout"] == pytest.approx(check.p_value, rel=1e-12)
    assert exposed["held", "holdout"] < 0.001


def test_a_check_without_data_has_no_series() -> None:
    empty = state(bernoulli_spec(name="new"))
    spec = dataclasses.replace(bernoulli_spec(name="held"), holdout_percent=10.0)
    assert family_samples({}, empty, state(spec)) == []
    assert sample_ratio_family(None, lambda _name: {}).samples == []


def test_the_collector_reads_the_snapshot_current_at_scrape_time() -> None:
    holder = SnapshotHolder()
    registry = CollectorRegistry()
    registry.register(SampleRatioCollector(holder, lambda _name: {}))
    assert (
        registry.get_sample_value("mabrouter_sample_ratio_p_value", {"experiment": "exp", "split": "arms"})
        is None
    )
    holder.current = snapshot(state(bernoulli_spec(), sampled((100, 100.0), (100, 100.0), (100, 100.0))))
    assert (
        registry.get_sample_value("mabrouter_sample_ratio_p_value", {"experiment": "exp", "split": "arms"})
        == 1.0
    )


def test_posterior_sd_in_closed_form_matches_the_draws() -> None:
    beta = BetaPosteriors(np.array([1.0, 13.0, 250.0]), np.array([1.0, 90.0, 4000.0]))
    assert posterior_sd(beta)[0] == pytest.approx(np.sqrt(1 / 12))  # the uniform prior
    draws = beta.draw(np.random.default_rng(1), 200_000)
    assert posterior_sd(beta) == pytest.approx(draws.std(axis=0), rel=0.02)
    student = StudentTPosteriors(
        np.array([0.5, 2.0, 0.0]), np.array([0.1, 2.0, 1.0]), np.array([30.0, 10.0, 2.0])
    )
    spread = posterior_sd(student)
    assert spread[1] == pytest.approx(2.0 * np.sqrt(10 / 8))
    assert spread[2] == np.inf  # df <= 2: no finite variance (the collector leaves the series out)
    draws = student.draw(np.random.default_rng(2), 400_000)
    assert spread[0] == pytest.approx(draws[:, 0].std(), rel=0.02)


def test_without_created_drops_only_the_created_samples() -> None:
    inner = CollectorRegistry()
    Counter("things", "things counted", ["kind"], registry=inner).labels("a").inc(3)
    Histogram("wait_seconds", "waits", registry=inner).observe(0.2)
    assert "things_created" in generate_latest(inner).decode()  # what prometheus_client adds by default
    exposed = CollectorRegistry()
    exposed.register(WithoutCreated(inner))
    text = generate_latest(exposed).decode()
    assert "_created" not in text
    assert exposed.get_sample_value("things_total", {"kind": "a"}) == 3
    assert exposed.get_sample_value("wait_seconds_count") == 1
    # A scrape restricted to names (?name[]=...) still finds them.
    assert "things_total" in generate_latest(exposed.restricted_registry(["things_total"])).decode()


def test_router_metrics_expose_build_info_and_process_metrics_only_when_asked() -> None:
    metrics = RouterMetrics()
    metrics.add(metrics.rpc_errors, "Route", "NOT_FOUND")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert "mabrouter_build_info" in families
    assert families["mabrouter_rpc_errors"].type == "counter"
    assert not any(name.startswith(("process_", "python_")) for name in families)
    metrics.add_process_metrics()
    text = generate_latest(metrics.registry).decode()
    assert "process_cpu_seconds_total" in text
    assert "python_info" in text
    assert "_created" not in text
