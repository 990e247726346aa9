"""`mabrouter loadtest` without a router: the chi-square test, the simulated environment, regret, tallies,
latency per time bucket and the sample-ratio check (real runs against a real router:
integration/test_loadtest.py)."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import pytest

from mabrouter.loadtest.environment import ArmModel, Environment, Phase, build_environment
from mabrouter.loadtest.latency import LatencyBuckets, percentile, rounded_us
from mabrouter.loadtest.stats import (
    Tally,
    chi2_sf,
    cumulative_regret,
    gamma_q,
    impute_shares,
    sample_ratio_mismatch,
    timeline,
    weighted_median,
)

# --- chi-square -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chi2", "df", "p"),
    [
        (3.841, 1, 0.05),
        (6.635, 1, 0.01),
        (10.828, 1, 0.001),
        (5.991, 2, 0.05),
        (7.815, 3, 0.05),
        (18.307, 10, 0.05),
        (124.342, 100, 0.05),
        (0.455, 1, 0.5),
    ],
)
def test_chi2_sf_matches_table_values(chi2: float, df: int, p: float) -> None:
    assert chi2_sf(chi2, df) == pytest.approx(p, rel=2e-3)


@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 2.0, 3.841, 10.0, 40.0, 200.0])
def test_chi2_sf_matches_closed_forms(x: float) -> None:
    assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9, abs=1e-300)
    assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9, abs=1e-300)
    # df = 4: Q(2, x/2) = exp(-x/2) (1 + x/2)
    assert chi2_sf(x, 4) == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-9, abs=1e-300)


def test_chi2_sf_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(-1.0, 3) == 1.0
    assert chi2_sf(1e4, 2) == pytest.approx(0.0, abs=1e-300)
    assert gamma_q(1.0, 0.0) == 1.0
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)
    values = [chi2_sf(x, 3) for x in (0.1, 1, 2, 5, 10, 20)]
    assert values == sorted(values, reverse=True)


# --- environment and regret -------------------------------------------------------------------------


def test_environment_drift_changes_true_rates_at_the_drift_time() -> None:
    env = build_environment(
        ["ranker-v1=0.1", "ranker-v2=0.12", "ranker-v3=0.3"], [], drift_at=5.0, drifts=["ranker-v1=0.5"]
    )
    assert env.expected("ranker-v1", 0.0) == 0.1
    assert env.expected("ranker-v1", 4.999) == 0.1
    assert env.expected("ranker-v1", 5.0) == 0.5
    assert env.expected("ranker-v3", 9.0) == 0.3  # arms the drift does not name keep their rate
    assert env.best(1.0) == 0.3
    assert env.best(6.0) == 0.5
    assert env.expected("unknown", 1.0) is None
    rng = random.Random(7)
    before = sum(env.sample("ranker-v1", 1.0, rng) for _ in range(20_000)) / 20_000
    after = sum(env.sample("ranker-v1", 6.0, rng) for _ in range(20_000)) / 20_000
    assert before == pytest.approx(0.1, abs=0.01)
    assert after == pytest.approx(0.5, abs=0.015)
    assert env.sample("unknown", 1.0, rng) == 0.0


def test_gaussian_environment_and_parse_errors() -> None:
    env = build_environment([], ["a=1.5:0.5", "b=2"])
    assert env.kind == "gaussian"
    assert env.models_at(0)["a"] == ArmModel("gaussian", 1.5, 0.5)
    assert env.models_at(0)["b"].sigma == 1.0
    rng = random.Random(3)
    mean = sum(env.sample("a", 0.0, rng) for _ in range(20_000)) / 20_000
    assert mean == pytest.approx(1.5, abs=0.02)
    for rates, means, at, drifts, message in [
        (["a=0.1"], ["b=1"], None, [], "not both"),
        (["a=1.5"], [], None, [], "in [0, 1]"),
        (["a"], [], None, [], "expected ARM=P"),
        (["a=x"], [], None, [], "not a number"),
        (["a=0.1", "a=0.2"], [], None, [], "given twice"),
        (["a=0.1"], [], 3.0, [], "go together"),
        (["a=0.1"], [], None, ["a=0.2"], "go together"),
        (["a=0.1"], [], 3.0, ["b=0.2"], "does not model"),
        ([], [], None, [], "at least one arm"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build_environment(rates, means, at, drifts)


def test_regret_uses_the_true_rates_at_decision_time() -> None:
    env = Environment(
        {"a": ArmModel("bernoulli", 0.1), "b": ArmModel("bernoulli", 0.3)},
        [Phase(10.0, {"a": ArmModel("bernoulli", 0.6)})],
    )
    assert env.regret("a", 1.0) == pytest.approx(0.2)
    assert env.regret("b", 1.0) == 0.0
    assert env.regret("a", 11.0) == 0.0
    assert env.regret("b", 11.0) == pytest.approx(0.3)
    assert env.regret("c", 1.0) is None

    tally = Tally(bucket_seconds=5.0)
    decisions = [(1.0, "a"), (2.0, "b"), (6.0, "a"), (11.0, "b"), (12.0, "a"), (16.0, "c")]
    for t, arm in decisions:
        tally.record_decision(t, arm, "SAMPLED", 0.5, env.regret(arm, t))
    rows = timeline(tally, buckets=4, arms=["a", "b", "c"])
    assert [row["regret"] for row in rows] == pytest.approx([0.2, 0.2, 0.3, 0.0])
    assert [row["cumulative_regret"] for row in rows] == pytest.approx([0.2, 0.4, 0.7, 0.7])
    assert tally.unmodeled == Counter({"c": 1})
    assert rows[0]["shares"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert cumulative_regret([0.2, 0.0, 0.1]) == pytest.approx([0.2, 0.2, 0.3])


# --- tallies and the sample-ratio check ---------------------------------------------------------------


def test_tallies_merge_by_adding_counts() -> None:
    one, two = Tally(1.0, srm_bucket_seconds=1.0), Tally(1.0, srm_bucket_seconds=1.0)
    one.record_decision(0.5, "a", "SAMPLED", 0.25, 0.1)
    two.record_decision(0.7, "a", "SAMPLED", 0.25, 0.1)
    two.record_decision(1.5, "b", "STICKY", 0.75, 0.0)
    two.errors["DEADLINE_EXCEEDED"] += 2
    two.max_latency_us = 900
    one.merge(two)
    assert one.decisions == 3
    assert one.arm_counts == {0: Counter({"a": 2}), 1: Counter({"b": 1})}
    assert one.regret == pytest.approx({0: 0.2, 1: 0.0})
    assert one.propensities == {0: {"a": Counter({0.25: 2})}}  # SAMPLED only
    assert one.reasons == Counter({"SAMPLED": 2, "STICKY": 1})
    assert one.errors == Counter({"DEADLINE_EXCEEDED": 2})
    assert one.max_latency_us == 900
    with pytest.raises(ValueError):
        one.merge(Tally(2.0, srm_bucket_seconds=1.0))


def test_weighted_median_and_share_imputation() -> None:
    assert weighted_median({0.1: 1, 0.2: 1, 0.3: 5}) == 0.3
    assert weighted_median({0.1: 3, 0.9: 1}) == 0.1
    # b and c were not served: they split what a leaves (0.4), in proportion to their last shares
    assert impute_shares({"a": 0.6}, {"b": 0.3, "c": 0.1}) == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1})
    assert impute_shares({"a": 0.8, "b": 0.4}, {"c": 0.2}) == pytest.approx(
        {"a": 2 / 3, "b": 1 / 3, "c": 0.0}
    )


def _simulated_propensities(
    shares: list[float], decisions: int, served: list[float] | None = None, seed: int = 1
) -> dict[int, dict[str, Counter[float]]]:
    """SAMPLED decisions from a fixed policy `shares` (logged), served with `served` (default: the same)."""
    rng = random.Random(seed)
    arms = [f"arm{i}" for i in range(len(shares))]
    propensities: dict[int, dict[str, Counter[float]]] = {}
    for i in range(decisions):
        index = rng.choices(range(len(shares)), weights=served or shares)[0]
        bucket = propensities.setdefault(i // 10, {})
        bucket.setdefault(arms[index], Counter())[shares[index]] += 1
    return propensities


def test_srm_passes_a_faithful_split_and_flags_a_broken_one() -> None:
    good = sample_ratio_mismatch(_simulated_propensities([0.5, 0.3, 0.2], 6000))
    assert good.df == 2
    assert good.p_value is not None
    assert good.p_value > 0.001
    assert sum(good.expected.values()) == pytest.approx(6000)
    assert good.expected["arm0"] == pytest.approx(3000, rel=0.05)
    bad = sample_ratio_mismatch(_simulated_propensities([0.5, 0.3, 0.2], 6000, served=[0.55, 0.25, 0.2]))
    assert bad.p_value is not None
    assert bad.p_value < 1e-6
    assert bad.as_json()["method"].startswith("chi-square")


def test_srm_leaves_out_arms_below_the_share_floor() -> None:
    # arm1 is logged at 0.001 (a Monte Carlo estimate smoothed away from 0) but served 10x less often:
    # without the floor that is a certain "mismatch" (expected 50, observed ~5) that no split caused
    propensities = _simulated_propensities([0.999, 0.001], 50_000, served=[0.9999, 0.0001])
    assert sum(propensities[b]["arm1"][0.001] for b in propensities if "arm1" in propensities[b]) < 20
    result = sample_ratio_mismatch(propensities)
    assert result.p_value is None
    assert result.warning is not None
    assert "fewer than 2 arms" in result.warning
    assert result.excluded < 20
    unfloored = sample_ratio_mismatch(propensities, min_share=0.0)
    assert unfloored.p_value is not None
    assert unfloored.p_value < 1e-6


# --- latency per time bucket ------------------------------------------------------------------------------


def test_latencies_keep_three_significant_digits() -> None:
    assert [rounded_us(v) for v in (0, 1, 999, 1000, 1234, 1235, 56_789, 9_996_000)] == [
        1,
        1,
        999,
        1000,
        1230,
        1240,
        56_800,
        10_000_000,
    ]
    rng = random.Random(5)
    for value in (rng.randrange(1, 60_000_000) for _ in range(2000)):
        assert abs(rounded_us(value) - value) <= 0.005 * value  # the HDR histograms' precision


def test_percentiles_use_the_nearest_rank() -> None:
    values = Counter(range(1, 101))  # 1..100 once each
    assert [percentile(values, q) for q in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert percentile({7: 3}, 99.9) == 7
    assert percentile({10: 98, 500: 2}, 98) == 10
    assert percentile({10: 98, 500: 2}, 99) == 500  # a 2% tail shows at p99
    with pytest.raises(ValueError):
        percentile({}, 50)


def test_latency_per_bucket_merges_across_workers_and_reaches_the_timeline() -> None:
    one, two = Tally(1.0), Tally(1.0)
    for i in range(100):
        one.record_latency(0.5, 200 + i)  # bucket 0: 200..299 us
    for _ in range(99):
        two.record_latency(0.9, 250)
    two.record_latency(0.9, 40_000)  # one slow call among 200 in bucket 0
    two.record_latency(2.2, 1_500)  # bucket 2 only; bucket 1 had no successful call
    one.merge(two)
    rows = timeline(one, buckets=3, arms=["a"])
    first, idle, last = (row["latency_us"] for row in rows)
    assert first["count"] == 200
    assert first["p50"] == 250
    assert first["p99"] == 298  # rank 198 of 200: 150 at or below 250, then 251..298
    assert first["max"] == 40_000
    assert idle == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    assert last == {"count": 1, "p50": 1500, "p90": 1500, "p99": 1500, "max": 1500}
    assert LatencyBuckets().summary(0)["count"] == 0


def test_no_bucket_percentile_exceeds_its_exact_maximum() -> None:
    buckets = LatencyBuckets()
    buckets.record(0, 1235)  # kept as 1240: rounding must not report more than was measured
    assert buckets.summary(0) == {"count": 1, "p50": 1235, "p90": 1235, "p99": 1235, "max": 1235}


def test_a_late_answer_extends_the_timeline() -> None:
    tally = Tally(1.0)
    tally.record_latency(4.5, 900)  # sent after the planned buckets (a slow last call)
    rows = timeline(tally, buckets=2, arms=["a"])
    assert len(rows) == 5
    assert rows[4]["latency_us"]["p50"] == 900
