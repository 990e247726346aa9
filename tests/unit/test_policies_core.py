"""Traffic policies in the pure core: caps, floors, burn-in, ramps, holdout, shadow arms, evidence.

No I/O. Every random input comes from a seeded generator, so each statistical check is deterministic;
the thresholds are still the honest ones (a 0.1% chi-square level, ~5 binomial standard deviations), so a
real regression fails them and a different seed would not.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mabrouter.core.allocation import constrained_allocation
from mabrouter.core.decide import Decision, RouteInput, decide
from mabrouter.core.evidence import (
    chi_square_p_value,
    divergences,
    guardrail_breaches,
    metrics_since,
    sample_ratio_check,
)
from mabrouter.core.hashing import bucket_of, in_rollout
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    BetaPrior,
    Controls,
    Expectation,
    ExperimentSpec,
    Guardrail,
    MetricStats,
    RampStep,
    Reason,
)
from mabrouter.core.posterior import posteriors_for
from mabrouter.core.snapshot import ExperimentState, build_experiment_state
from mabrouter.core.thompson import win_probabilities

from core_fixtures import bernoulli_spec, snapshot

# Arm 2 is clearly the best, arm 1 clearly the worst: Thompson alone would give arm 2 ~all the traffic.
SKEWED = (ArmStats(1000, 1000, 100.0), ArmStats(1000, 1000, 20.0), ArmStats(1000, 1000, 300.0))
DECISIONS = 40_000


def with_arms(spec: ExperimentSpec, **changes: dict[str, object]) -> ExperimentSpec:
    """`spec` with per-arm field changes, e.g. with_arms(spec, **{"arm-2": {"max_share": 0.1}})."""
    return replace(spec, arms=tuple(replace(arm, **changes.get(arm.name, {})) for arm in spec.arms))


def build(
    spec: ExperimentSpec, stats: tuple[ArmStats, ...], controls: Controls | None = None
) -> ExperimentState:
    return build_experiment_state(spec, 1, stats, controls or Controls())


def route(state: ExperimentState, n: int, seed: int = 1, prefix: str = "u") -> list[Decision]:
    snap = snapshot(state)
    rng = np.random.default_rng(seed)
    return [decide(RouteInput(state.spec.name, f"{prefix}-{i}"), snap, rng) for i in range(n)]


def chi_square_fit(observed: Counter[str], state: ExperimentState) -> float:
    """p-value of the served arms' counts against the state's shares (arms with share > 0)."""
    names = [arm.name for arm in state.spec.arms]
    pairs = [(observed[name], state.shares[i]) for i, name in enumerate(names) if state.shares[i] > 0]
    assert sum(observed.values()) == sum(o for o, _ in pairs), "an arm without share was served"
    check = sample_ratio_check([float(o) for o, _ in pairs], [float(e) for _, e in pairs])
    if check is None:  # one arm expects nearly everything: nothing to compare (cells < 5 are pooled)
        assert max(observed.values()) >= 0.99 * sum(observed.values()), observed
        return 1.0
    return check.p_value


def assert_served_by_shares(state: ExperimentState, seed: int = 1) -> list[Decision]:
    decisions = route(state, DECISIONS, seed)
    assert {d.reason for d in decisions} == {Reason.SAMPLED}
    p_value = chi_square_fit(Counter(d.arm for d in decisions), state)
    assert p_value > 0.001, (p_value, state.shares)
    # The logged propensity is exactly the allocation the arm was drawn from.
    index = {arm.name: i for i, arm in enumerate(state.spec.arms)}
    assert all(d.propensity == state.shares[index[d.arm]] for d in decisions)
    return decisions


# --- constrained_allocation -------------------------------------------------------------------------


def test_allocation_sums_to_one_and_respects_floors_and_caps_on_live_arms() -> None:
    p = np.array([0.5, 0.001, 0.459, 0.04])
    floors = np.array([0.0, 0.05, 0.0, 0.3])  # arm 3 is not live: its floor must not count
    caps = np.array([1.0, 1.0, 0.1, 1.0])
    q = constrained_allocation(p, (0, 1, 2), floors, caps)
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    assert q[3] == 0.0
    assert q[2] == pytest.approx(0.10, abs=1e-12)  # capped
    assert q[1] == pytest.approx(0.05, abs=1e-12)  # lifted to its floor
    assert q[0] == pytest.approx(0.85, abs=1e-12)  # the rest


def test_allocation_equals_thompson_when_no_bound_binds() -> None:
    p = np.array([0.2, 0.3, 0.5])
    q = constrained_allocation(p, (0, 1, 2), np.array([0.1, 0.1, 0.0]), np.array([0.9, 0.35, 0.6]))
    np.testing.assert_allclose(q, p, rtol=1e-9)


def test_state_shares_equal_thompson_win_probabilities_when_bounds_do_not_bind() -> None:
    spec = with_arms(bernoulli_spec(3), **{"arm-0": {"max_share": 0.9}, "arm-1": {"min_share": 0.0001}})
    stats = (ArmStats(300, 300, 30.0), ArmStats(300, 300, 36.0), ArmStats(300, 300, 40.0))
    state = build(spec, stats)
    # Same posteriors, so the same generator: the very same Monte Carlo estimate as without bounds.
    p = build(bernoulli_spec(3), stats).shares
    assert state.shares.max() < 0.9
    assert state.shares.min() > 0.0001
    np.testing.assert_allclose(state.shares, p, rtol=1e-9)


@st.composite
def feasible_bounds(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 8))
    unit = st.floats(0.0, 1.0, allow_nan=False)
    p = np.array([draw(st.floats(0.001, 1.0)) for _ in range(n)])
    live = tuple(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))))
    floor_budget = draw(unit)
    floors = np.array([draw(unit) * floor_budget / n for _ in range(n)])  # sum of floors <= 1
    caps = np.array([f + draw(unit) * (1.0 - f) for f in floors])
    assume(caps[list(live)].sum() >= 1.0 + 1e-9)  # feasible: the caps can absorb all the traffic
    return p / p[list(live)].sum(), live, floors, caps


@given(feasible_bounds())
@settings(max_examples=300, deadline=None)
def test_allocation_is_the_clipped_scaling_of_p(
    case: tuple[np.ndarray, tuple[int, ...], np.ndarray, np.ndarray],
) -> None:
    p, live, floors, caps = case
    q = constrained_allocation(p, live, floors, caps)
    idx = list(live)
    dead = [i for i in range(len(p)) if i not in live]
    assert q[idx].sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(q[dead] == 0.0)
    tol = 1e-9
    assert np.all(q[idx] >= floors[idx] - tol)
    assert np.all(q[idx] <= caps[idx] + tol)
    # q = clip(lambda * p, floor, cap) for one lambda: the free arms share one ratio q/p, arms held at
    # their floor would have had less, arms held at their cap would have had more.
    free = [i for i in idx if floors[i] + 1e-7 < q[i] < caps[i] - 1e-7]
    if free:
        ratios = q[free] / p[free]
        lam = float(np.median(ratios))
        np.testing.assert_allclose(ratios, lam, rtol=1e-6)
        for i in idx:
            if i in free:
                continue
            if caps[i] - floors[i] <= 2e-7:
                continue  # pinned by a floor equal to its cap: both readings hold
            if q[i] <= floors[i] + 1e-7:
                assert lam * p[i] <= floors[i] + 1e-6
            else:
                assert lam * p[i] >= caps[i] - 1e-6
    if np.all(floors[idx] == 0) and np.all(caps[idx] == 1.0):
        np.testing.assert_allclose(q[idx], p[idx], rtol=1e-6)


# --- build_experiment_state: caps, floors, burn-in, ramps ---------------------------------------------


def test_a_cap_and_a_floor_bind_and_decisions_follow_the_shares_exactly() -> None:
    spec = with_arms(bernoulli_spec(3), **{"arm-2": {"max_share": 0.1}, "arm-1": {"min_share": 0.05}})
    # arm 2 (12%) is the likely best (P ~ 0.75), arm 0 (11%) the runner-up, arm 1 (5%) never wins.
    stats = (ArmStats(1000, 1000, 110.0), ArmStats(1000, 1000, 50.0), ArmStats(1000, 1000, 120.0))
    state = build(spec, stats)
    assert state.shares[2] == pytest.approx(0.10, abs=1e-12)
    assert state.shares[1] == pytest.approx(0.05, abs=1e-12)
    assert state.shares[0] == pytest.approx(0.85, abs=1e-12)
    assert_served_by_shares(state)


def test_the_excess_of_a_capped_best_arm_goes_to_the_runner_up_not_to_a_clearly_bad_arm() -> None:
    spec = with_arms(bernoulli_spec(3), **{"arm-2": {"max_share": 0.1}})
    # Arm 1 (2%, n=1000) is credibly worse than arm 0 (10%, n=1000): P(arm 1 beats arm 0) ~ 1e-30.
    # Once arm 2 is held at 10%, Thompson over the remaining arms would send the other 90% to arm 0.
    state = build(spec, SKEWED)
    assert state.shares[2] == pytest.approx(0.10, abs=1e-12)
    assert state.shares[1] < 0.01, state.shares  # before the fix: 0.45 (the same as the control)


def test_a_killed_arm_gets_nothing_even_with_a_floor() -> None:
    spec = with_arms(bernoulli_spec(3), **{"arm-1": {"min_share": 0.2}})
    state = build(spec, SKEWED, controls=Controls(killed_arms=frozenset({"arm-1"})))
    assert state.shares[1] == 0.0
    decisions = assert_served_by_shares(state)
    assert all(d.arm != "arm-1" for d in decisions)


def test_burn_in_is_uniform_until_every_live_arm_has_its_trials() -> None:
    spec = replace(bernoulli_spec(3), burn_in_trials=100)
    short = (SKEWED[0], ArmStats(99, 99, 2.0), SKEWED[2])  # arm 1 is one trial short
    state = build(spec, short)
    np.testing.assert_array_equal(state.shares, np.full(3, 1 / 3))
    assert_served_by_shares(state)

    done = build(spec, (SKEWED[0], ArmStats(100, 100, 2.0), SKEWED[2]))
    assert done.shares[2] > 0.99  # burn-in over: Thompson takes over

    # A killed arm does not hold the burn-in open, and the burn-in is uniform over live arms only.
    killed = build(spec, short, controls=Controls(killed_arms=frozenset({"arm-1"})))
    assert killed.shares[2] > 0.99
    three_live = replace(spec, arms=(*spec.arms, ArmSpec("arm-3", BetaPrior())))
    uniform = build(three_live, (*short, ArmStats()), controls=Controls(killed_arms=frozenset({"arm-3"})))
    np.testing.assert_allclose(uniform.shares, [1 / 3, 1 / 3, 1 / 3, 0.0])


def test_burn_in_still_honours_caps() -> None:
    spec = with_arms(replace(bernoulli_spec(3), burn_in_trials=100), **{"arm-2": {"max_share": 0.1}})
    state = build(spec, (ArmStats(), ArmStats(), ArmStats()))
    np.testing.assert_allclose(state.shares, [0.45, 0.45, 0.10], atol=1e-12)
    assert_served_by_shares(state)


@pytest.mark.parametrize(("step", "cap"), [(0, 0.05), (1, 0.25), (2, None)])
def test_a_ramp_step_caps_the_arm_at_the_steps_share(step: int, cap: float | None) -> None:
    ramp = (RampStep(0.05, 60), RampStep(0.25, 60))
    spec = with_arms(bernoulli_spec(3), **{"arm-2": {"ramp": ramp}})
    controls = Controls(ramp_steps={"arm-2": step} if step else {})
    state = build(spec, SKEWED, controls=controls)
    if cap is None:  # past the last step: uncapped, the plain Thompson allocation
        assert state.shares[2] > 0.99
    else:
        assert state.shares[2] == pytest.approx(cap, abs=1e-12)
        assert_served_by_shares(state, seed=step + 10)


def test_max_share_still_caps_a_ramp_past_it() -> None:
    spec = with_arms(bernoulli_spec(3), **{"arm-2": {"ramp": (RampStep(0.25, 60),), "max_share": 0.1}})
    assert build(spec, SKEWED).shares[2] == pytest.approx(0.1, abs=1e-12)
    finished = build(spec, SKEWED, controls=Controls(ramp_steps={"arm-2": 1}))
    assert finished.shares[2] == pytest.approx(0.1, abs=1e-12)


# --- holdout ----------------------------------------------------------------------------------------


def random_units(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"user-{value:016x}" for value in rng.integers(0, 2**63, size=n)]


def test_holdout_takes_its_percent_of_units_serves_control_and_counts_nothing() -> None:
    spec = replace(bernoulli_spec(3), holdout_percent=10.0)
    state = build(spec, SKEWED)
    snap = snapshot(state)
    rng = np.random.default_rng(3)
    units = random_units(20_000, seed=5)
    decisions = [decide(RouteInput("exp", unit), snap, rng) for unit in units]
    held = [d for d in decisions if d.reason is Reason.HOLDOUT]
    fraction = len(held) / len(units)
    # binomial sd = sqrt(0.1 * 0.9 / 20000) = 0.0021; 5 sd
    assert abs(fraction - 0.10) < 0.0106, fraction
    assert {d.reason for d in decisions} == {Reason.HOLDOUT, Reason.SAMPLED}
    assert all(d.arm == "arm-0" and not d.counted and d.propensity == 1.0 for d in held)
    assert all(d.shadow_arm == "" for d in held)
    assert all(d.counted for d in decisions if d.reason is Reason.SAMPLED)
    # Holdout is a property of the unit: the same units are held out on every call and replica.
    again = [decide(RouteInput("exp", unit), snap, rng).reason is Reason.HOLDOUT for unit in units]
    assert again == [d.reason is Reason.HOLDOUT for d in decisions]


def test_holdout_is_independent_of_the_rollout_hash() -> None:
    spec = replace(bernoulli_spec(3), holdout_percent=10.0)
    units = random_units(20_000, seed=6)
    rng = np.random.default_rng(3)
    full = snapshot(build(spec, SKEWED))
    half = snapshot(build(replace(spec, rollout=50.0), SKEWED))
    held_full = {u for u in units if decide(RouteInput("exp", u), full, rng).reason is Reason.HOLDOUT}
    half_reasons = {u: decide(RouteInput("exp", u), half, rng).reason for u in units}
    exposed = [u for u, reason in half_reasons.items() if reason is not Reason.NOT_EXPOSED]
    held_half = {u for u, reason in half_reasons.items() if reason is Reason.HOLDOUT}
    assert abs(len(exposed) / len(units) - 0.5) < 0.018  # 5 sd of a 50% binomial on 20k
    # Among exposed units ~10% are held out (n ~ 10k: sd 0.003, 5 sd = 0.015)...
    assert abs(len(held_half) / len(exposed) - 0.10) < 0.015, len(held_half) / len(exposed)
    # ...exactly the units that rollout 100 holds out, restricted to the exposed ones.
    assert held_half == held_full & set(exposed)
    # Independence: the holdout rate is the same in the low and the high rollout buckets.
    for low, high in ((0, 2500), (2500, 5000)):
        band = [u for u in exposed if low <= bucket_of("exp", u) < high]
        rate = sum(u in held_half for u in band) / len(band)
        assert abs(rate - 0.10) < 0.021, (low, high, rate)  # n ~ 5k: 5 sd = 0.021
    assert all(in_rollout(bucket_of("exp", u), 50.0) for u in exposed)


# --- shadow arms ------------------------------------------------------------------------------------


def shadow_spec(prior: BetaPrior) -> ExperimentSpec:
    spec = bernoulli_spec(3)
    return with_arms(spec, **{"arm-2": {"shadow": True, "prior": prior}})


LIVE_STATS = (ArmStats(500, 500, 50.0), ArmStats(500, 500, 100.0), ArmStats())


def test_a_shadow_arm_is_never_served_but_the_shadow_policy_picks_it_when_competitive() -> None:
    # Shadow prior Beta(40, 160): mean 0.2, about as good as the best live arm (100/500).
    state = build(shadow_spec(BetaPrior(40, 160)), LIVE_STATS)
    assert state.live == (0, 1)
    assert state.shares[2] == 0.0
    decisions = route(state, 20_000)
    assert all(d.arm != "arm-2" for d in decisions)
    assert all(d.reason is Reason.SAMPLED and d.shadow_arm for d in decisions)
    shadow_counts = Counter(d.shadow_arm for d in decisions)
    assert shadow_counts["arm-2"] > 0
    # The shadow policy is Thompson sampling over live + shadow arms: its picks follow those win
    # probabilities (smoothed Monte Carlo estimate of 200k draws).
    p = win_probabilities(state.posteriors, (0, 1, 2), np.random.default_rng(9), 200_000)
    observed = [float(shadow_counts[f"arm-{i}"]) for i in range(3)]
    check = sample_ratio_check(observed, [float(x) for x in p])
    assert check is not None
    assert check.p_value > 0.001, (observed, p)
    assert 0.2 < shadow_counts["arm-2"] / len(decisions) < 0.8


def test_a_hopeless_shadow_arm_is_still_reported_as_a_live_pick_and_imposed_answers_have_none() -> None:
    state = build(shadow_spec(BetaPrior(1, 5000)), LIVE_STATS)
    decisions = route(state, 5000)
    assert {d.shadow_arm for d in decisions} <= {"arm-0", "arm-1"}
    assert all(d.shadow_arm for d in decisions)
    held = build(replace(shadow_spec(BetaPrior(40, 160)), holdout_percent=50.0), LIVE_STATS)
    imposed = [d for d in route(held, 2000) if d.reason is Reason.HOLDOUT]
    assert imposed
    assert all(d.shadow_arm == "" for d in imposed)
    # Without shadow arms the field stays empty.
    assert all(d.shadow_arm == "" for d in route(build(bernoulli_spec(3), SKEWED), 500))


# --- evidence: guardrails, divergence, sample ratio ---------------------------------------------------


def rate(n: int, events: int) -> MetricStats:
    return MetricStats(n=n, total=float(events), total_sq=float(events))


def sample(values: np.ndarray) -> MetricStats:
    return MetricStats(n=len(values), total=float(values.sum()), total_sq=float((values**2).sum()))


def guarded_spec(*guardrails: Guardrail) -> ExperimentSpec:
    return replace(bernoulli_spec(4), guardrails=guardrails)


def metric_stats(**per_arm: MetricStats) -> tuple[ArmStats, ...]:
    """Arm stats with one metric: metric_stats(arm_0=..., ...) keyed by 'arm-N'."""
    return tuple(
        ArmStats(1000, 500, 50.0, metrics={"error": per_arm[f"arm_{i}"]} if f"arm_{i}" in per_arm else {})
        for i in range(4)
    )


ERROR_GUARDRAIL = Guardrail("error", "rate", max_increase=0.01, probability=0.95, min_samples=200)


def test_guardrail_flags_a_harmful_arm_and_not_a_harmless_one() -> None:
    spec = guarded_spec(ERROR_GUARDRAIL)
    stats = metric_stats(
        arm_0=rate(500, 10),  # control: 2%
        arm_1=rate(500, 40),  # 8%: harmful
        arm_2=rate(500, 11),  # 2.2%: within +1 point
        arm_3=rate(150, 60),  # 40%, but below min_samples
    )
    for seed in range(5):
        breaches = guardrail_breaches(spec, stats, (0, 1, 2, 3), np.random.default_rng(seed))
        assert [b.arm for b in breaches] == ["arm-1"]
        (breach,) = breaches
        assert breach.metric == "error"
        assert breach.probability >= 0.99
        assert "rate 0.0800 (n=500) vs control 0.0200 (n=500)" in breach.evidence
    # A killed (not live) arm is not judged.
    assert guardrail_breaches(spec, stats, (0, 2, 3), np.random.default_rng(0)) == []


def test_a_max_increase_guardrail_waits_for_the_controls_samples_too() -> None:
    spec = guarded_spec(ERROR_GUARDRAIL)
    stats = metric_stats(arm_0=rate(199, 4), arm_1=rate(500, 200))
    assert guardrail_breaches(spec, stats, (0, 1, 2, 3), np.random.default_rng(0)) == []
    stats = metric_stats(arm_0=rate(200, 4), arm_1=rate(500, 200))
    assert [b.arm for b in guardrail_breaches(spec, stats, (0, 1, 2, 3), np.random.default_rng(0))] == [
        "arm-1"
    ]


def test_a_mean_guardrail_with_max_value() -> None:
    rng = np.random.default_rng(2)
    guardrail = Guardrail("latency_ms", "mean", max_value=250.0, probability=0.95, min_samples=100)
    spec = replace(bernoulli_spec(4), guardrails=(guardrail,))
    latencies = {
        1: rng.normal(262.0, 40.0, 300),  # slow: mean credibly above 250
        2: rng.normal(240.0, 40.0, 300),  # fine
        3: rng.normal(300.0, 40.0, 50),  # slow but below min_samples
    }
    stats = tuple(
        ArmStats(300, 300, 30.0, metrics={"latency_ms": sample(latencies[i])} if i in latencies else {})
        for i in range(4)
    )
    # max_value needs no control samples (the control has none here).
    breaches = guardrail_breaches(spec, stats, (0, 1, 2, 3), np.random.default_rng(0))
    assert [b.arm for b in breaches] == ["arm-1"]
    assert "> 250.0" in breaches[0].evidence
    assert breaches[0].probability > 0.99


def test_a_mean_guardrail_with_max_increase_over_control() -> None:
    rng = np.random.default_rng(8)
    guardrail = Guardrail("latency_ms", "mean", max_increase=10.0, probability=0.95, min_samples=100)
    spec = replace(bernoulli_spec(3), guardrails=(guardrail,))
    values = [rng.normal(200.0, 30.0, 400), rng.normal(225.0, 30.0, 400), rng.normal(203.0, 30.0, 400)]
    stats = tuple(ArmStats(400, 400, 40.0, metrics={"latency_ms": sample(v)}) for v in values)
    breaches = guardrail_breaches(spec, stats, (0, 1, 2), np.random.default_rng(0))
    assert [b.arm for b in breaches] == ["arm-1"]


def test_divergences_flag_an_arm_whose_credible_interval_leaves_its_band() -> None:
    spec = bernoulli_spec(5)
    spec = with_arms(
        spec,
        **{
            "arm-1": {"expected": Expectation(0.30, 0.05)},  # true ~0.05: far below the band
            "arm-2": {"expected": Expectation(0.10, 0.03)},  # true ~0.10: inside
            "arm-3": {"expected": Expectation(0.02, 0.01)},  # true ~0.10: above the band
            "arm-4": {"expected": Expectation(0.90, 0.01)},  # no data: the prior is too wide to judge
        },
    )
    stats = (
        ArmStats(1000, 1000, 100.0),
        ArmStats(1000, 1000, 50.0),
        ArmStats(1000, 1000, 100.0),
        ArmStats(1000, 1000, 100.0),
        ArmStats(),
    )
    found = divergences(spec, posteriors_for(spec, stats), np.random.default_rng(0))
    assert [d.arm for d in found] == ["arm-1", "arm-3"]
    low = found[0]
    assert low.ci_high < 0.25
    assert (low.expected, low.tolerance) == (0.30, 0.05)
    assert found[1].ci_low > 0.03
    # A spec without expectations has nothing to diverge from.
    plain = bernoulli_spec(3)
    assert divergences(plain, posteriors_for(plain, SKEWED), np.random.default_rng(0)) == []


def test_sample_ratio_check_passes_a_fair_split_and_catches_a_broken_one() -> None:
    rng = np.random.default_rng(12)
    shares = [0.5, 0.3, 0.2]
    fair = rng.multinomial(30_000, shares).astype(float).tolist()
    check = sample_ratio_check(fair, shares)
    assert check is not None
    assert check.degrees_of_freedom == 2
    assert check.p_value > 0.001
    assert not check.mismatch
    # Expected counts may come at any scale (fractions, or expected trials): they are rescaled.
    scaled = sample_ratio_check(fair, [s * 12_345 for s in shares])
    assert scaled is not None
    assert scaled.statistic == pytest.approx(check.statistic)
    broken = sample_ratio_check([15_600.0, 8_900.0, 5_500.0], shares)  # 52% / 29.7% / 18.3%
    assert broken is not None
    assert broken.mismatch
    assert broken.p_value < 0.001
    # Arms without expectation are left out; fewer than two arms or no data: no check.
    assert sample_ratio_check([10.0, 0.0, 5.0], [1.0, 0.0, 0.0]) is None
    assert sample_ratio_check([0.0, 0.0], [0.5, 0.5]) is None


@pytest.mark.parametrize(
    ("statistic", "df", "p"),
    [(3.841, 1, 0.05), (6.635, 1, 0.01), (10.828, 1, 0.001), (148.23, 99, 0.001), (13.816, 2, 0.001)],
)
def test_chi_square_p_value_matches_table_values(statistic: float, df: int, p: float) -> None:
    assert chi_square_p_value(statistic, df) == pytest.approx(p, rel=2e-3)


@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 80.0])
def test_chi_square_p_value_matches_closed_forms(x: float) -> None:
    # Both branches (series below a + 1, continued fraction above) against exact expressions.
    assert chi_square_p_value(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9, abs=1e-300)
    assert chi_square_p_value(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
    assert chi_square_p_value(x, 4) == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-9)
    assert chi_square_p_value(0.0, 3) == 1.0


def test_metrics_since_keeps_only_what_came_after_the_baseline() -> None:
    baseline = ArmStats(100, 100, 10.0, metrics={"error": MetricStats(100, 30.0, 30.0)})
    now = ArmStats(
        300,
        300,
        40.0,
        metrics={"error": MetricStats(300, 32.0, 32.0), "latency_ms": MetricStats(5, 500.0, 50_000.0)},
    )
    fresh = metrics_since(now, baseline)
    assert fresh.metrics["error"] == MetricStats(200, 2.0, 2.0)
    assert fresh.metrics["latency_ms"] == MetricStats(5, 500.0, 50_000.0)  # none at the baseline
    assert (fresh.trials, fresh.reward_sum) == (300, 40.0)  # the posterior's data is not touched
