"""The reduced calibration suite (issue 17): every estimate operators read, held against the truth of
simulated experiments driven through the real decision core and trial counting. Seeded: each check
gives the same answer on every run. The tolerances are 3 standard errors (measures.Z_BAND); the tests
that break an estimator on purpose show they are tight enough to notice. The full suite, with the
numbers docs/statistics.md quotes: benchmarks/bench_calibration.py."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mabrouter.calibration.broken import LossyHoldout, PooledAllocation, detection
from mabrouter.calibration.healthy import HealthyReport, healthy
from mabrouter.calibration.measures import ReliabilityBin
from mabrouter.calibration.scenarios import SCENARIOS, Size
from mabrouter.calibration.simulate import Log
from mabrouter.calibration.watching import guardrail
from mabrouter.core.evidence import holdout_split_check, sample_ratio_check

SIZE = Size(seeds=30, batches=10, batch_size=150)
# Scenarios whose pooled posterior describes one truth (not a mixture of segments that differ).
POSTERIOR_SCENARIOS = [name for name, s in SCENARIOS.items() if not s.segment_truths]


@functools.cache
def report(name: str) -> HealthyReport:
    return healthy(name, SIZE)


def within(bins: list[ReliabilityBin]) -> list[str]:
    """The bins whose observed frequency calibrated predictions would hardly give."""
    return [
        f"[{b.low}, {b.high}): predicted {b.mean_predicted:.3f}, observed {b.observed:.3f} (n={b.n})"
        for b in bins
        if not b.consistent
    ]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_sample_ratio_check_is_quiet_on_healthy_experiments(name: str) -> None:
    found = report(name)
    assert found.srm_alarms.hits == 0, found.srm_alarms
    assert found.srm_pooled_p > 0.001, found.srm_pooled_p
    if found.holdout_alarms is not None:
        assert found.holdout_alarms.hits == 0, found.holdout_alarms


def test_the_sample_ratio_check_catches_segments_counted_against_the_pooled_allocation() -> None:
    """Issue 17's bug, put back on purpose: the healthy check above would fail on it."""
    broken = healthy("segments", SIZE, buffer=PooledAllocation)
    assert broken.srm_alarms.value > 0.5, broken.srm_alarms
    assert broken.srm_pooled_p < 1e-9


def test_the_holdout_split_check_catches_a_replica_that_loses_holdout_decisions() -> None:
    _, holdout = detection("holdout", SIZE, lambda: LossyHoldout(every=3))
    assert holdout is not None
    assert holdout.value > 0.5, holdout


@pytest.mark.parametrize("name", POSTERIOR_SCENARIOS)
def test_credible_intervals_cover_the_true_means_at_their_nominal_rate(name: str) -> None:
    coverage = report(name).coverage
    assert coverage is not None
    if name == "discounting":
        # Forgetting shrinks the evidence, so in a world that does not drift the intervals are wider
        # than they need to be: at least nominal is what discounting promises here.
        assert coverage.within or coverage.value > coverage.nominal, coverage
    else:
        assert coverage.within, coverage


@pytest.mark.parametrize("name", POSTERIOR_SCENARIOS)
def test_p_best_and_the_chance_to_beat_the_control_are_calibrated(name: str) -> None:
    found = report(name)
    assert found.p_best is not None
    assert found.p_beats_control is not None
    assert within(found.p_best) == []
    assert within(found.p_beats_control) == []
    assert found.lift_coverage is not None
    assert found.lift_coverage.within, found.lift_coverage


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ipw_and_snips_are_unbiased_for_each_arms_true_mean(name: str) -> None:
    found = report(name)
    assert found.ips, "no arm was estimated"
    biased = {
        f"{kind} {arm}": round(b.z, 2)
        for kind, estimates in (("ips", found.ips), ("snips", found.snips))
        for arm, b in estimates.items()
        if not b.unbiased
    }
    assert biased == {}


def test_ipw_over_sticky_repeats_would_be_biased() -> None:
    """Weighing a sticky unit's repeats by the arm's share now (what the report did): the check fails."""

    def every_counted_row(log: Log) -> np.typing.NDArray[np.bool_]:
        return log.counted

    broken = healthy("sticky", SIZE, ipw_selection=every_counted_row)
    assert any(not b.unbiased for b in broken.ips.values()), broken.ips


@pytest.mark.parametrize(
    ("kind", "regressed"), [("error_rate", (0.05, 0.15, 0.05)), ("latency_cap", (200.0, 290.0, 200.0))]
)
def test_guardrails_kill_a_regressed_arm_only_after_min_samples_and_spare_healthy_ones(
    kind: str, regressed: tuple[float, ...]
) -> None:
    healthy_arm = tuple(regressed[0] for _ in regressed)
    spared = guardrail(kind, healthy_arm, SIZE)
    assert spared.kills.hits == 0, spared
    caught = guardrail(kind, regressed, SIZE)
    assert caught.kills.hits >= 0.8 * caught.eligible > 0, caught
    assert caught.min_samples_respected, caught


def test_an_absolute_guardrail_does_not_wait_for_the_control() -> None:
    """README: a max_value guardrail compares the arm with a fixed limit, so only the arm needs
    min_samples; a max_increase one needs them on the control too."""
    absolute = guardrail("latency_cap", (200.0, 400.0, 200.0), SIZE)
    arm_n, control_n = absolute.smallest_evidence
    assert arm_n >= 300
    assert control_n < 300  # killed before the control had min_samples: it does not need them
    relative = guardrail("error_rate", (0.05, 0.3, 0.05), SIZE)
    assert min(relative.smallest_evidence) >= 300


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.8e308), min_size=2, max_size=6),
    st.lists(st.floats(min_value=0.0, max_value=1.8e308), min_size=2, max_size=6),
    st.dictionaries(st.integers(0, 99), st.floats(min_value=0.0, max_value=1.8e308), max_size=12),
)
@example([0.0, 0.0], [0.0, 0.0], {0: 5e-324})  # the split's expected count underflowed to 0: it raised
def test_the_checks_never_raise_on_counts_edited_by_hand(
    observed: list[float], expected: list[float], cells: dict[int, float]
) -> None:
    """Counts as stored: the decoder lets through any finite, non-negative number (1e308 included); a
    check answers or says nothing (None), and its JSON stays valid."""
    n = min(len(observed), len(expected))
    for check in (sample_ratio_check(observed[:n], expected[:n]), holdout_split_check(cells, 10.0)):
        if check is not None:
            assert 0.0 <= check.p_value <= 1.0
            json.dumps(check.statistic if math.isfinite(check.statistic) else None, allow_nan=False)
