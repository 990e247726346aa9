"""The load test's contextual world and what status and the report compute of a contextual model (pure)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mabrouter.core.features import encode_context, signature
from mabrouter.core.linear import LinearSums
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    BetaPrior,
    CategoricalFeature,
    ContextualSpec,
    ExperimentSpec,
    NumericFeature,
    RewardKind,
)
from mabrouter.core.snapshot import build_experiment_state
from mabrouter.loadtest.environment import build_environment
from mabrouter.reporting.contextual import CURVE_POINTS, contextual_view

CROSSING = (
    "--arm-rate",
    "small=0.8",
    "--above",
    "small=0.2",
    "--arm-rate",
    "large=0.2",
    "--above",
    "large=0.8",
)


def crossing_world(context: str = "prompt_tokens=0:2000"):  # type: ignore[no-untyped-def]
    rates = [CROSSING[i + 1] for i in range(0, len(CROSSING), 2) if CROSSING[i] == "--arm-rate"]
    above = [CROSSING[i + 1] for i in range(0, len(CROSSING), 2) if CROSSING[i] == "--above"]
    return build_environment(rates, [], context=context, above=above)


def test_the_best_arm_and_the_regret_depend_on_the_value_sent() -> None:
    world = crossing_world()
    assert world.context is not None
    assert world.context.threshold == 1000.0
    assert world.regret("small", 0.0, 500.0) == 0.0
    assert world.regret("small", 0.0, 1500.0) == pytest.approx(0.6)
    assert world.regret("large", 0.0, 999.0) == pytest.approx(0.6)
    rng = random.Random(1)
    above = sum(world.sample("small", 0.0, rng, 1500.0) for _ in range(4000)) / 4000
    assert above == pytest.approx(0.2, abs=0.03)
    assert 0.0 <= world.context.draw(rng) <= 2000.0
    assert world.as_json()["context"]["above"] == {"small": {"rate": 0.2}, "large": {"rate": 0.8}}
    assert crossing_world("n=0:10@2").context.threshold == 2.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("rates", "context", "above", "message"),
    [
        (["a=0.5"], None, ["a=0.1"], "--above needs --context"),
        (["a=0.5"], "n=0:10", [], "--context needs --above"),
        (["a=0.5"], "n=10:0", ["a=0.1"], "LOW must be below HIGH"),
        (["a=0.5"], "n", ["a=0.1"], "expected NAME=LOW:HIGH"),
        (["a=0.5"], "n=0:x", ["a=0.1"], "not a number"),
        (["a=0.5"], "n=0:10", ["b=0.1"], "--above names arms the environment does not model: b"),
        (["a=0.5"], "n=0:10", ["a=2"], "a rate must be in"),
    ],
)
def test_a_bad_world_is_refused_naming_the_flag(
    rates: list[str], context: str | None, above: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_environment(rates, [], context=context, above=above)


CONTEXT = ContextualSpec(
    (
        NumericFeature("tokens", "standardize", mean=1000.0, scale=500.0),
        CategoricalFeature("tier", ("free", "pro")),
    )
)
SPEC = ExperimentSpec(
    "sizes",
    RewardKind.BERNOULLI,
    "small",
    (ArmSpec("small", BetaPrior()), ArmSpec("large", BetaPrior())),
    contextual=CONTEXT,
)


def trained_state(rng: np.random.Generator, n: int = 3000):  # type: ignore[no-untyped-def]
    tokens = rng.uniform(0, 2000, n)
    tiers = rng.integers(0, 2, n)
    vectors = np.column_stack([np.ones(n), (tokens - 1000) / 500, tiers == 0, tiers == 1]).astype(float)
    sums = []
    for arm in ("small", "large"):
        rates = np.where((tokens < 1000) == (arm == "small"), 0.8, 0.2)
        sums.append(LinearSums.of(vectors, (rng.random(n) < rates).astype(float)))
    state = build_experiment_state(SPEC, 1, (ArmStats(trials=n), ArmStats(trials=n)), linear_sums=tuple(sums))
    return state, vectors


def test_the_view_says_which_arm_wins_where() -> None:
    state, vectors = trained_state(np.random.default_rng(5))
    logged = [encode_context(signature(CONTEXT), v) for v in vectors[:500]]
    view = contextual_view(state, logged)
    assert view is not None
    assert view.columns == ("intercept", "tokens", "tier=free", "tier=pro")
    assert view.contexts_used == 500
    (curve,) = view.curves  # one numeric feature
    assert curve.attribute == "tokens"
    assert curve.values.shape == (CURVE_POINTS,)
    assert 0.0 <= curve.values[0] < 100.0  # raw tokens: the 1st percentile of the logged ones
    assert 1900.0 < curve.values[-1] <= 2000.0
    winners = curve.winners()
    assert winners[0] == 0  # small wins short prompts
    assert winners[-1] == 1  # large wins long ones
    crossing = curve.values[winners.index(1)]
    assert 850.0 < crossing < 1150.0
    assert np.all(curve.lows <= curve.means)
    assert np.all(curve.means <= curve.highs)
    small = view.arms[0]
    assert small.high[1] < 0 < view.arms[1].low[1]  # tokens: credibly down for small, up for large
    as_json = view.as_json()
    assert as_json["arms"][1]["coefficients"]["tokens"]["mean"] > 0  # type: ignore[index]


def test_without_logged_contexts_a_standardized_feature_spans_two_scales() -> None:
    state, _ = trained_state(np.random.default_rng(6))
    view = contextual_view(state, ["not a context", "0123abcd:AAAA"])  # unreadable or another model
    assert view is not None
    assert view.contexts_used == 0
    (curve,) = view.curves
    assert curve.values[0] == pytest.approx(0.0)
    assert curve.values[-1] == pytest.approx(2000.0)
    assert "missing" in view.typical


def test_a_non_contextual_experiment_has_no_view() -> None:
    plain = build_experiment_state(
        ExperimentSpec(
            "p", RewardKind.BERNOULLI, "a", (ArmSpec("a", BetaPrior()), ArmSpec("b", BetaPrior()))
        ),
        1,
        (ArmStats(), ArmStats()),
    )
    assert contextual_view(plain) is None
