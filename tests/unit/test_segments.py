"""Per-segment posteriors, pure: which values name a segment, and a segment uses the pooled posterior
until it has trials of its own. A real router converging per segment:
integration/test_segment_convergence.py."""

from __future__ import annotations

from collections import Counter

import numpy as np

from mabrouter.core.decide import RouteInput, decide, segment_of
from mabrouter.core.model import ArmStats
from mabrouter.core.snapshot import build_experiment_state

from core_fixtures import bernoulli_spec, snapshot


def test_segment_values_are_validated() -> None:
    from dataclasses import replace

    spec = replace(bernoulli_spec(), segment_attribute="country")
    assert segment_of(spec, {"country": "DE"}) == "DE"
    assert segment_of(spec, {"country": 3.0}) == "3.0"
    assert segment_of(spec, {"country": "has space"}) == ""  # not a usable name: pooled only
    assert segment_of(spec, {"country": ("a", "b")}) == ""
    assert segment_of(spec, {}) == ""


def test_a_segment_uses_the_pooled_posterior_until_it_has_enough_trials() -> None:
    from dataclasses import replace

    spec = replace(bernoulli_spec(3), segment_attribute="country", segment_min_trials=100)
    pooled = tuple(ArmStats(300, 300, 90.0 if i == 0 else 10.0) for i in range(3))  # pooled: arm-0 best
    young = tuple(ArmStats(20, 20, 10.0 if i == 2 else 0.0) for i in range(3))  # 60 trials < 100
    grown = tuple(ArmStats(200, 200, 100.0 if i == 2 else 5.0) for i in range(3))  # its own best: arm-2
    state = build_experiment_state(spec, 1, pooled, segments={"FR": young, "DE": grown})
    assert set(state.segments) == {"DE"}
    rng = np.random.default_rng(1)
    snap = snapshot(state)
    fr = Counter(decide(RouteInput("exp", f"u{i}", {"country": "FR"}), snap, rng).arm for i in range(300))
    de = Counter(decide(RouteInput("exp", f"u{i}", {"country": "DE"}), snap, rng).arm for i in range(300))
    assert fr.most_common(1)[0][0] == "arm-0"
    assert de.most_common(1)[0][0] == "arm-2"
    decision = decide(RouteInput("exp", "u", {"country": "DE"}), snap, rng)
    assert decision.segment == "DE"
    assert decision.propensity == state.segments["DE"].shares[spec.arm_index(decision.arm) or 0]
