"""Lift against the control and P(beats control), as `mabrouter status` shows them (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from mabrouter.core.model import ArmStats
from mabrouter.core.summary import compare_with_control, summarize

from core_fixtures import bernoulli_spec, gaussian_spec, state


def test_a_clearly_better_arm_has_its_lift_and_beats_the_control() -> None:
    # control arm-0 at 10%, arm-1 at 15%, arm-2 at 10%: 5,000 trials each
    stats = tuple(ArmStats(trials=5000, reward_count=5000, reward_sum=s) for s in (500.0, 750.0, 500.0))
    summaries = summarize(state(bernoulli_spec(3), stats), np.random.default_rng(0))
    control, better, same = summaries
    assert control.lift is None
    assert control.as_json(bernoulli_spec().reward)["lift_vs_control"] is None
    assert better.lift is not None
    assert better.lift.lift == pytest.approx(0.5, abs=0.03)  # 15% / 10% - 1
    assert better.lift.ci_low is not None
    assert better.lift.ci_high is not None
    assert better.lift.ci_low < 0.5 < better.lift.ci_high
    assert better.lift.ci_low > 0.3
    assert better.lift.p_beats_control > 0.999
    assert same.lift is not None
    assert same.lift.p_beats_control == pytest.approx(0.5, abs=0.1)
    assert same.lift.ci_low is not None
    assert same.lift.ci_high is not None
    assert same.lift.ci_low < 0 < same.lift.ci_high


def test_a_control_mean_that_can_be_zero_or_negative_has_no_relative_lift() -> None:
    rng = np.random.default_rng(1)
    control = rng.normal(0.0, 1.0, 10_000)
    arm = control + 0.5
    comparison = compare_with_control(arm, control)
    assert (comparison.lift, comparison.ci_low, comparison.ci_high) == (None, None, None)
    assert comparison.p_beats_control == 1.0


def test_gaussian_summaries_always_say_whether_an_arm_beats_the_control() -> None:
    stats = tuple(
        ArmStats(trials=200, reward_count=200, reward_sum=m * 200, reward_sq_sum=(m * m + 1.0) * 200)
        for m in (0.0, 1.0, -1.0)
    )
    summaries = summarize(state(gaussian_spec(3), stats), np.random.default_rng(2))
    assert [s.lift is None for s in summaries] == [True, False, False]
    assert summaries[1].lift is not None
    assert summaries[2].lift is not None
    assert summaries[1].lift.p_beats_control > 0.99
    assert summaries[2].lift.p_beats_control < 0.01
