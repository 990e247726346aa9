"""The estimators and charts behind `mabrouter report`, on synthetic data with a known truth (the page
from a real router's traffic: integration/test_report.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mabrouter.core.model import RewardKind
from mabrouter.reporting.charts import beta_pdf, bucket_width_ms, student_t_pdf
from mabrouter.reporting.estimators import holdout_difference, ipw_estimates

# --- the estimators, on synthetic data with a known truth ------------------------------------------------


def test_ipw_recovers_arm_values_that_the_naive_mean_gets_wrong() -> None:
    """Rewards and the policy both change halfway: the naive mean over-weights the phase where an arm was
    favoured; IPS and SNIPS recover the value over the whole population of decisions."""
    rng = np.random.default_rng(1)
    n = 40_000
    late = np.arange(n) >= n // 2
    propensity = np.where(late[:, None], [0.1, 0.9], [0.9, 0.1])
    rates = np.where(late[:, None], [0.2, 0.1], [0.6, 0.4])
    arm = (rng.random(n) >= propensity[:, 0]).astype(np.int64)
    reward = (rng.random(n) < rates[np.arange(n), arm]).astype(np.float64)
    served = propensity[np.arange(n), arm]
    truth = {"x": 0.4, "y": 0.25}

    estimates, dropped = ipw_estimates(("x", "y"), arm, served, reward)

    assert dropped == 0
    for estimate in estimates:
        assert abs(estimate.ips - truth[estimate.arm]) < 4 * estimate.ips_se
        assert abs(estimate.snips - truth[estimate.arm]) < 4 * estimate.snips_se
        assert abs(estimate.naive_mean - truth[estimate.arm]) > 0.1
        assert estimate.max_weight == pytest.approx(10.0)
    assert [e.served for e in estimates] == [int((arm == 0).sum()), int((arm == 1).sum())]


def test_ipw_standard_errors_match_the_spread_of_the_estimates() -> None:
    rng = np.random.default_rng(2)
    p, rates, n = np.array([0.7, 0.3]), np.array([0.3, 0.5]), 2000
    ips, ses, snips, snips_ses = [], [], [], []
    for _ in range(300):
        arm = (rng.random(n) >= p[0]).astype(np.int64)
        reward = (rng.random(n) < rates[arm]).astype(np.float64)
        estimate = ipw_estimates(("x", "y"), arm, p[arm], reward)[0][1]
        ips.append(estimate.ips)
        ses.append(estimate.ips_se)
        snips.append(estimate.snips)
        snips_ses.append(estimate.snips_se)
    assert np.mean(ips) == pytest.approx(0.5, abs=0.005)
    assert np.std(ips) == pytest.approx(np.mean(ses), rel=0.15)
    assert np.std(snips) == pytest.approx(np.mean(snips_ses), rel=0.15)


def test_ipw_drops_decisions_without_propensity_or_reward() -> None:
    arm = np.array([0, 0, 1, 1], dtype=np.int64)
    propensity = np.array([0.5, 0.0, 0.5, np.nan])
    reward = np.array([1.0, 1.0, np.nan, 0.0])
    estimates, dropped = ipw_estimates(("x", "y"), arm, propensity, reward)
    assert dropped == 3
    assert estimates[0].ips == pytest.approx(2.0)  # one decision left: 1 / 0.5
    assert estimates[1].served == 0
    assert math.isnan(estimates[1].naive_mean)


def test_holdout_difference_bernoulli_known_truth() -> None:
    rng = np.random.default_rng(3)
    held = (rng.random(20_000) < 0.10).astype(np.float64)
    bandit = (rng.random(80_000) < 0.13).astype(np.float64)
    found = holdout_difference(held, bandit, RewardKind.BERNOULLI, rng)
    assert found is not None
    assert (found.holdout_n, found.bandit_n) == (20_000, 80_000)
    assert found.difference == pytest.approx(bandit.mean() - held.mean())
    assert found.ci_low < 0.03 < found.ci_high
    assert found.ci_low > 0
    assert found.p_bandit_better > 0.99
    se = math.sqrt(0.1 * 0.9 / 20_000 + 0.13 * 0.87 / 80_000)
    assert found.ci_high - found.ci_low == pytest.approx(2 * 1.96 * se, rel=0.05)


def test_holdout_difference_intervals_cover_the_truth_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(4)
    covered = 0
    for _ in range(400):
        held = (rng.random(300) < 0.2).astype(np.float64)
        bandit = (rng.random(1200) < 0.25).astype(np.float64)
        found = holdout_difference(held, bandit, RewardKind.BERNOULLI, rng)
        assert found is not None
        covered += found.ci_low <= 0.05 <= found.ci_high
    assert 0.92 <= covered / 400 <= 0.98


def test_holdout_difference_gaussian_normal_approximation() -> None:
    rng = np.random.default_rng(5)
    held = rng.normal(1.0, 2.0, 5000)
    bandit = np.concatenate([rng.normal(1.3, 2.0, 20_000), [np.nan] * 50])  # no outcome: left out
    found = holdout_difference(held, bandit, RewardKind.GAUSSIAN, rng)
    assert found is not None
    assert found.bandit_n == 20_000
    se = math.sqrt(held.var(ddof=1) / 5000 + np.nanvar(bandit, ddof=1) / 20_000)
    assert found.ci_low == pytest.approx(found.difference - 1.96 * se, rel=1e-3)
    assert found.ci_low < 0.3 < found.ci_high
    assert found.p_bandit_better > 0.99


def test_holdout_difference_needs_both_groups() -> None:
    rng = np.random.default_rng(6)
    assert holdout_difference(np.array([]), np.ones(10), RewardKind.BERNOULLI, rng) is None
    assert holdout_difference(np.ones(10), np.array([1.0]), RewardKind.GAUSSIAN, rng) is None


def test_densities_integrate_to_one() -> None:
    x = np.linspace(1e-6, 1 - 1e-6, 200_001)
    for alpha, beta in ((1.0, 1.0), (3.0, 40.0), (120.5, 880.5)):
        density = beta_pdf(x, alpha, beta)
        assert np.trapezoid(density, x) == pytest.approx(1.0, abs=1e-3)
        assert np.trapezoid(x * density, x) == pytest.approx(alpha / (alpha + beta), abs=1e-4)
    t = np.linspace(-60, 60, 400_001)
    density = student_t_pdf(t, 2.0, 0.5, 7.0)
    assert np.trapezoid(density, t) == pytest.approx(1.0, abs=1e-4)
    assert np.trapezoid(t * density, t) == pytest.approx(2.0, abs=1e-4)


def test_buckets_are_round_and_few() -> None:
    assert bucket_width_ms(3_000) == 100
    assert bucket_width_ms(86_400_000) == 3_600_000
    assert 86_400_000 * 30 / bucket_width_ms(86_400_000 * 30) <= 40
