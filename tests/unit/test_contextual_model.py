"""The contextual model in the pure core: posteriors from sums, the per-request race, the allocation.

Issue 16's pure-core checks: the posterior update equals a direct least-squares solution; draws have the
posterior's mean and covariance; propensities match served frequencies in bins of x (chi-square).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from mabrouter.core.allocation import constrained_allocation, exact_projection
from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.evidence import chi_square_p_value
from mabrouter.core.features import FeatureEncoder
from mabrouter.core.linear import LinearSums, linear_posterior
from mabrouter.core.linear_policy import MIN_PROBABILITY
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    BetaPrior,
    ContextualSpec,
    ExperimentSpec,
    NumericFeature,
    Reason,
    RewardKind,
)
from mabrouter.core.normal_race import win_probabilities
from mabrouter.core.snapshot import Snapshot, build_experiment_state

_erf = np.frompyfunc(math.erf, 1, 1)


def _cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)).astype(np.float64))


def reference_race(means: np.ndarray, sds: np.ndarray) -> np.ndarray:
    """P(best) by the trapezoid rule over every arm's own fine grid (4,001 points over +/-10 sd each),
    merged: slow, and the truth to ~1e-6 whatever the arms' scales."""
    grid = np.unique(
        np.concatenate([m + s * np.linspace(-10, 10, 4_001) for m, s in zip(means, sds, strict=True)])
    )
    cdfs = np.array([_cdf((grid - m) / s) for m, s in zip(means, sds, strict=True)])
    result = []
    for k in range(len(means)):
        density = np.exp(-0.5 * ((grid - means[k]) / sds[k]) ** 2) / (sds[k] * math.sqrt(2 * math.pi))
        others = np.prod(np.delete(cdfs, k, axis=0), axis=0)
        result.append(np.trapezoid(density * others, grid))
    return np.array(result)


def random_sums(rng: np.random.Generator, n: int, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.column_stack([np.ones(n), rng.normal(size=(n, coefficients.shape[0] - 1))])
    rewards = vectors @ coefficients + rng.normal(0.0, 0.5, n)
    return vectors, rewards


# --- the posterior -----------------------------------------------------------------------------------


def test_posterior_mean_equals_the_ridge_least_squares_solution() -> None:
    rng = np.random.default_rng(1)
    vectors, rewards = random_sums(rng, 400, np.array([0.3, -1.0, 2.0, 0.5]))
    posterior = linear_posterior(LinearSums.of(vectors, rewards), 2.0, RewardKind.GAUSSIAN)
    # ridge = least squares on the data stacked over sqrt(lambda) I with zero targets
    stacked = np.vstack([vectors, math.sqrt(2.0) * np.eye(4)])
    targets = np.concatenate([rewards, np.zeros(4)])
    expected, *_ = np.linalg.lstsq(stacked, targets, rcond=None)
    np.testing.assert_allclose(posterior.mean, expected, rtol=1e-10, atol=1e-12)


def test_sums_added_by_many_writers_in_any_order_give_the_same_posterior() -> None:
    rng = np.random.default_rng(2)
    vectors, rewards = random_sums(rng, 300, np.array([1.0, 0.5, -0.5]))
    whole = LinearSums.of(vectors, rewards)
    parts = [LinearSums.of(vectors[i::3], rewards[i::3]) for i in (2, 0, 1)]
    summed = LinearSums(sum(p.xx for p in parts), sum(p.rx for p in parts), sum(p.rr for p in parts))
    a = linear_posterior(whole, 1.0, RewardKind.GAUSSIAN)
    b = linear_posterior(summed, 1.0, RewardKind.GAUSSIAN)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9)
    np.testing.assert_allclose(a.covariance, b.covariance, rtol=1e-9)
    assert whole.decisions == 300.0


def test_noise_estimate_tracks_the_residual_variance() -> None:
    rng = np.random.default_rng(3)
    vectors, rewards = random_sums(rng, 20_000, np.array([0.0, 1.0, -1.0]))  # noise sd 0.5
    posterior = linear_posterior(LinearSums.of(vectors, rewards), 1.0, RewardKind.GAUSSIAN)
    assert posterior.noise_variance == pytest.approx(0.25, rel=0.05)
    # more data, tighter coefficients: the covariance is the noise over the precision
    assert np.all(np.sqrt(np.diag(posterior.covariance)) < 0.01)


def test_coefficient_draws_have_the_posterior_mean_and_covariance() -> None:
    rng = np.random.default_rng(4)
    vectors, rewards = random_sums(rng, 60, np.array([0.2, 0.8, -0.3]))
    posterior = linear_posterior(LinearSums.of(vectors, rewards), 1.0, RewardKind.GAUSSIAN)
    np.testing.assert_allclose(posterior.factor @ posterior.factor.T, posterior.covariance, rtol=1e-9)
    draws = posterior.draw(np.random.default_rng(5), 200_000)
    scale = np.sqrt(np.diag(posterior.covariance))
    assert np.all(np.abs(draws.mean(axis=0) - posterior.mean) < 0.02 * scale)
    np.testing.assert_allclose(np.cov(draws.T), posterior.covariance, rtol=0.03, atol=1e-3 * scale.max() ** 2)


def test_score_of_a_request_is_the_normal_its_coefficient_draws_give() -> None:
    """Per request each arm's score x . theta is N(x . mu, x^T Sigma x): the policy computes exactly
    that, and one drawn score per arm (the shadow policy's draw) has that mean and variance."""
    state = crossing_state(rng=np.random.default_rng(6), decisions=300)
    policy = state.contextual
    assert policy is not None
    vector = policy.encoder.vector({"x": 0.7})
    means, sds = policy.scores(vector)
    for arm, (mean, sd) in enumerate(zip(means, sds, strict=True)):
        scores = policy.posteriors[arm].draw(np.random.default_rng(arm), 100_000) @ vector
        assert scores.mean() == pytest.approx(mean, abs=0.02 * sd)
        assert scores.std() == pytest.approx(sd, rel=0.02)
    predicted, predicted_sd = policy.posteriors[0].predict(vector[None, :])
    assert predicted[0] == pytest.approx(means[0])
    assert predicted_sd[0] == pytest.approx(sds[0])


@pytest.mark.parametrize(
    "sums",
    [
        LinearSums(np.array([[1.0, 5.0], [5.0, 1.0]]) * 100, np.zeros(2)),  # not positive semi-definite
        LinearSums(np.array([[1.0, np.nan], [np.nan, 1.0]]), np.zeros(2)),
        LinearSums(np.eye(2), np.array([1e308, 1e308])),
    ],
)
def test_sums_that_cannot_be_a_posterior_are_refused_with_a_reason(sums: LinearSums) -> None:
    with pytest.raises(ValueError, match=r"sums|definite|finite"):
        linear_posterior(sums, 1.0, RewardKind.BERNOULLI)


# --- the race of normals -----------------------------------------------------------------------------


def test_win_probabilities_match_a_fine_reference_integral() -> None:
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(60):
        k = int(rng.integers(3, 7))
        # hostile mixes: scales from 1e-3 to 10, means from near-equal to far apart
        means = rng.normal(0.0, 1.0, k) * rng.choice([0.01, 0.1, 1.0])
        sds = np.exp(rng.normal(-2.0, 1.5, k))
        p = win_probabilities(means, sds)
        assert p.sum() == pytest.approx(1.0)
        worst = max(worst, float(np.abs(p - reference_race(means, sds)).max()))
    assert worst < 0.004


def test_two_arms_are_exact_and_the_floor_is_kept() -> None:
    p = win_probabilities(np.array([0.2, 0.1]), np.array([0.05, 0.05]))
    assert p[0] == pytest.approx(0.5 * math.erfc(-0.1 / 0.1), rel=1e-12)
    floored = win_probabilities(np.array([10.0, 0.0, 0.0]), np.array([0.01, 0.01, 0.01]), floor=1e-3)
    assert floored.min() == pytest.approx(1e-3)
    assert floored.sum() == pytest.approx(1.0)


def test_exact_projection_equals_the_bisection_everyone_else_uses() -> None:
    rng = np.random.default_rng(8)
    for _ in range(200):
        k = int(rng.integers(2, 7))
        p = rng.dirichlet(np.ones(k) * 0.5)
        floors = rng.choice([0.0, 0.05, 0.1], k)
        caps = np.maximum(rng.choice([1.0, 0.5, 0.3, 0.2], k), floors)
        live = tuple(range(k))
        np.testing.assert_allclose(
            exact_projection(p, live, floors, caps), constrained_allocation(p, live, floors, caps), atol=1e-9
        )


# --- deciding ----------------------------------------------------------------------------------------


def crossing_spec(**changes: object) -> ExperimentSpec:
    arms = (ArmSpec("small", BetaPrior()), ArmSpec("large", BetaPrior()), ArmSpec("medium", BetaPrior()))
    spec = ExperimentSpec(
        "ctx",
        RewardKind.BERNOULLI,
        "small",
        arms,
        contextual=ContextualSpec((NumericFeature("x"),), prior_precision=1.0),
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def crossing_sums(rng: np.random.Generator, decisions: int) -> tuple[LinearSums, ...]:
    """small converts 80 % below x = 0 and 20 % above, large the opposite, medium 50 % everywhere."""
    x = rng.uniform(-1.0, 1.0, decisions)
    vectors = np.column_stack([np.ones(decisions), x])
    rates = {
        "small": np.where(x < 0, 0.8, 0.2),
        "large": np.where(x < 0, 0.2, 0.8),
        "medium": np.full(decisions, 0.5),
    }
    return tuple(
        LinearSums.of(vectors, (rng.random(decisions) < rates[name]).astype(float))
        for name in ("small", "large", "medium")
    )


def crossing_state(rng: np.random.Generator, decisions: int, **changes: object):
    spec = crossing_spec(**changes)
    stats = tuple(ArmStats(trials=decisions) for _ in spec.arms)
    return build_experiment_state(spec, 1, stats, linear_sums=crossing_sums(rng, decisions))


def test_the_policy_serves_each_side_its_best_arm() -> None:
    state = crossing_state(np.random.default_rng(9), decisions=2_000)
    policy = state.contextual
    assert policy is not None
    low = policy.allocation(policy.encoder.vector({"x": -0.8}))
    high = policy.allocation(policy.encoder.vector({"x": 0.8}))
    assert low[0] > 0.95
    assert high[1] > 0.95
    assert min(low.min(), high.min()) >= MIN_PROBABILITY * 0.999


def test_allocation_is_thompsons_probability_of_being_best() -> None:
    """Against Monte Carlo Thompson sampling from the posteriors: draw every arm's coefficients, take
    the arm with the highest score at x; the frequencies are what the policy allocates."""
    state = crossing_state(np.random.default_rng(10), decisions=40)
    policy = state.contextual
    assert policy is not None
    rng = np.random.default_rng(11)
    for x in (-0.9, -0.2, 0.0, 0.3, 0.9):
        vector = policy.encoder.vector({"x": x})
        scores = np.column_stack([p.draw(rng, 100_000) @ vector for p in policy.posteriors])
        frequencies = np.bincount(scores.argmax(axis=1), minlength=3) / 100_000
        np.testing.assert_allclose(policy.allocation(vector), frequencies, atol=0.01)


def test_propensities_match_served_frequencies_in_bins_of_x() -> None:
    """Decide 30,000 requests with x uniform; in each of 6 bins of x the arms served match the sum of
    the allocations the decisions logged (chi-square), and each decision's propensity is its arm's
    share of the allocation it carries."""
    state = crossing_state(np.random.default_rng(12), decisions=60)
    snapshot = Snapshot({"ctx": state}, loaded_at=0.0)
    rng = np.random.default_rng(13)
    bins = np.linspace(-1.0, 1.0, 7)
    observed = np.zeros((6, 3))
    expected = np.zeros((6, 3))
    for i in range(30_000):
        x = float(rng.uniform(-1.0, 1.0))
        decision = decide(RouteInput("ctx", f"u{i}", {"x": x}), snapshot, rng)
        assert decision.reason is Reason.SAMPLED
        assert decision.context is not None
        arm = state.spec.arm_index(decision.arm)
        assert arm is not None
        assert decision.propensity == decision.context.shares[arm]
        row = min(int(np.searchsorted(bins, x, side="right")) - 1, 5)
        observed[row, arm] += 1
        expected[row] += decision.context.shares
    statistic = float(((observed - expected) ** 2 / expected).sum())
    p_value = chi_square_p_value(statistic, 6 * 2)
    assert p_value > 0.001, (observed, expected.round(1))
    # the bins differ: the policy really depends on x
    assert observed[0, 0] / observed[0].sum() > observed[5, 0] / observed[5].sum() + 0.1


def test_caps_floors_and_burn_in_shape_the_allocation_per_request() -> None:
    state = crossing_state(np.random.default_rng(14), decisions=2_000)
    capped_spec = crossing_spec(
        arms=(
            ArmSpec("small", BetaPrior(), max_share=0.6),
            ArmSpec("large", BetaPrior()),
            ArmSpec("medium", BetaPrior(), min_share=0.1),
        )
    )
    stats = tuple(ArmStats(trials=2_000) for _ in capped_spec.arms)
    sums = crossing_sums(np.random.default_rng(14), 2_000)
    capped = build_experiment_state(capped_spec, 1, stats, linear_sums=sums)
    assert capped.contextual is not None
    assert state.contextual is not None
    shares = capped.contextual.allocation(capped.contextual.encoder.vector({"x": -0.8}))
    assert shares[0] == pytest.approx(0.6)
    assert shares[2] >= 0.1 - 1e-9
    assert shares.sum() == pytest.approx(1.0)
    burning = build_experiment_state(crossing_spec(burn_in_trials=5_000), 1, stats, linear_sums=sums)
    assert burning.contextual is not None
    np.testing.assert_allclose(
        burning.contextual.allocation(burning.contextual.encoder.vector({"x": 0.5})), 1 / 3
    )


def test_killed_arms_get_nothing_and_sticky_repeats_carry_the_context() -> None:
    from mabrouter.core.model import Controls

    spec = crossing_spec()
    stats = tuple(ArmStats(trials=100) for _ in spec.arms)
    sums = crossing_sums(np.random.default_rng(15), 100)
    state = build_experiment_state(
        spec, 1, stats, Controls(killed_arms=frozenset({"large"})), linear_sums=sums
    )
    snapshot = Snapshot({"ctx": state}, loaded_at=0.0)
    rng = np.random.default_rng(16)
    served = {decide(RouteInput("ctx", f"u{i}", {"x": 0.9}), snapshot, rng).arm for i in range(300)}
    assert "large" not in served
    sticky = decide(RouteInput("ctx", "u1", {"x": 0.9}, sticky_arm="medium"), snapshot, rng)
    assert sticky.reason is Reason.STICKY
    assert sticky.context is not None
    assert sticky.propensity == sticky.context.shares[2]


def test_hash_seeded_decisions_are_the_same_on_every_replica() -> None:
    state = crossing_state(np.random.default_rng(17), decisions=50)
    snapshot = Snapshot({"ctx": state}, loaded_at=0.0)
    request = RouteInput("ctx", "unit-7", {"x": 0.1}, hash_seeded=True)
    arms = {decide(request, snapshot, np.random.default_rng(seed)).arm for seed in range(20)}
    assert len(arms) == 1


def test_encoder_columns_are_intercept_then_features() -> None:
    encoder = FeatureEncoder(ContextualSpec((NumericFeature("x"),)))
    assert encoder.names == ("intercept", "x")
    assert encoder.dimension == 2


def test_arms_that_cannot_win_get_the_floor_and_the_rest_race_as_before() -> None:
    """6 sd apart, an arm is left out of the quadrature: it gets exactly the floor, and the arms that
    still contend share the rest as the full race would give it."""
    means, sds = np.array([0.2, 0.5, 0.1, 0.48, 0.45]), np.full(5, 0.01)
    p = win_probabilities(means, sds, floor=1e-4)
    assert p[0] == p[2] == 1e-4
    contenders = [1, 3, 4]
    reference = reference_race(means[contenders], sds[contenders]) * (1 - 5e-4) + 1e-4
    np.testing.assert_allclose(p[contenders], reference, atol=0.004)
    assert p.sum() == pytest.approx(1.0)
