"""Thompson sampling core: replayable, correct posteriors, and it finds the best arm."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.model import ArmStats, BetaPrior, NormalPrior, Reason
from mabrouter.core.posterior import beta_parameters, posteriors_for, student_t_parameters
from mabrouter.core.thompson import ThompsonSampler, win_probabilities

from core_fixtures import bernoulli_spec, gaussian_spec, snapshot, state


def test_same_seed_replays_the_same_decisions() -> None:
    spec = bernoulli_spec(5)
    stats = tuple(ArmStats(trials=100, reward_count=10 * i, reward_sum=10.0 * i) for i in range(5))

    def run(seed: int) -> list[str]:
        snap = snapshot(state(spec, stats))
        rng = np.random.default_rng(seed)
        return [decide(RouteInput("exp", f"u{i}"), snap, rng).arm for i in range(500)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_conversion_style_successes_only() -> None:
    # 100 decisions, 30 rewards of 1.0 reported and nothing for the rest.
    alpha, beta = beta_parameters(BetaPrior(1, 1), ArmStats(trials=100, reward_count=30, reward_sum=30.0))
    assert (alpha, beta) == (31.0, 71.0)


def test_rewards_arriving_before_trials_are_flushed_do_not_go_negative() -> None:
    alpha, beta = beta_parameters(BetaPrior(1, 1), ArmStats(trials=2, reward_count=5, reward_sum=5.0))
    assert alpha == 6.0
    assert beta == 1.0


def test_gaussian_posterior_concentrates_on_the_sample_mean() -> None:
    rng = np.random.default_rng(3)
    rewards = rng.normal(5.0, 2.0, size=2000)
    stats = ArmStats(
        trials=2000,
        reward_count=2000,
        reward_sum=float(rewards.sum()),
        reward_sq_sum=float((rewards**2).sum()),
    )
    location, scale, df = student_t_parameters(NormalPrior(0.0, 1.0, 1.0, 1.0), stats)
    assert location == pytest.approx(rewards.mean(), abs=0.01)
    # standard error of the mean is 2/sqrt(2000) ~ 0.045
    assert 0.03 < scale < 0.06
    assert df == pytest.approx(2.0 + 2000)


def test_sampler_never_yields_a_non_live_arm() -> None:
    spec = bernoulli_spec(4)
    posteriors = posteriors_for(spec, tuple(ArmStats() for _ in spec.arms))
    sampler = ThompsonSampler(posteriors, live=(1, 3))
    rng = np.random.default_rng(0)
    assert {sampler.next_arm(rng) for _ in range(2000)} == {1, 3}


def test_win_probabilities_match_sampled_shares() -> None:
    spec = bernoulli_spec(3)
    stats = (ArmStats(200, 200, 20.0), ArmStats(200, 200, 30.0), ArmStats(200, 200, 34.0))
    st = state(spec, stats)
    assert st.shares.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(11)
    n = 40_000
    counts = Counter(st.sampler.next_arm(rng) for _ in range(n))
    observed = np.array([counts[i] for i in range(3)], dtype=float)
    expected = st.shares * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    # df = 2; the 0.1% critical value is 13.8. The propensity estimate itself has Monte Carlo error
    # (4000 draws), which inflates the statistic a little: allow up to 25.
    assert chi2 < 25, (observed, expected)


def test_three_arm_bernoulli_simulation_finds_the_best_arm() -> None:
    """Batched updates like the router's: the snapshot is rebuilt every 50 decisions."""
    true_rates = [0.10, 0.12, 0.20]
    spec = bernoulli_spec(3)
    rng = np.random.default_rng(2024)
    env = np.random.default_rng(99)
    trials = [0, 0, 0]
    wins = [0.0, 0.0, 0.0]
    last: list[int] = []
    for batch in range(60):
        st = state(spec, tuple(ArmStats(trials[i], int(wins[i]), wins[i]) for i in range(3)))
        snap = snapshot(st)
        for _ in range(50):
            decision = decide(RouteInput("exp", "u"), snap, rng)
            index = spec.arm_index(decision.arm)
            assert index is not None
            trials[index] += 1
            wins[index] += float(env.random() < true_rates[index])
            if batch >= 50:
                last.append(index)
    assert Counter(last)[2] / len(last) > 0.6, Counter(last)


def test_gaussian_experiment_prefers_higher_mean() -> None:
    spec = gaussian_spec(2)
    rng = np.random.default_rng(1)
    low = rng.normal(1.0, 1.0, 300)
    high = rng.normal(1.5, 1.0, 300)
    stats = tuple(ArmStats(300, 300, float(x.sum()), float((x**2).sum())) for x in (low, high))
    st = state(spec, stats)
    assert st.shares[1] > 0.99
    assert win_probabilities(st.posteriors, (0,), rng)[0] == pytest.approx(1.0)


def test_decision_carries_propensity_payload_and_version() -> None:
    st = state(bernoulli_spec(3), version=42)
    decision = decide(RouteInput("exp", "u1"), snapshot(st), np.random.default_rng(0))
    index = st.spec.arm_index(decision.arm)
    assert index is not None
    assert decision.reason is Reason.SAMPLED
    assert decision.counted
    assert decision.config_version == 42
    assert decision.propensity == pytest.approx(float(st.shares[index]))
    assert decision.payload == {"endpoint": f"http://{decision.arm}"}
