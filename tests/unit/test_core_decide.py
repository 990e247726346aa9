"""Request validation and the no-snapshot path of decide()."""

from __future__ import annotations

import numpy as np
import pytest

from mabrouter.core.decide import MAX_UNIT_ID_CHARS, RouteInput, decide
from mabrouter.core.model import Reason
from mabrouter.errors import ErrorCode, InvalidRequestError, NoSnapshotError, UnknownExperimentError

from core_fixtures import bernoulli_spec, snapshot, state

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (RouteInput("", "u"), "experiment is empty"),
        (RouteInput("bad name!", "u"), "not a valid name"),
        (RouteInput("exp\n", "u"), "not a valid name"),  # re's '$' alone would let a final newline through
        (RouteInput("exp", ""), "unit_id is empty"),
        (RouteInput("exp", "x" * (MAX_UNIT_ID_CHARS + 1)), "the limit is"),
        (RouteInput("exp", "u", default_arm="no spaces allowed"), "default_arm"),
        (RouteInput("exp", "u", default_arm="arm-0\n"), "default_arm"),
    ],
)
def test_malformed_requests_name_the_problem(request_: RouteInput, needle: str) -> None:
    with pytest.raises(InvalidRequestError, match=needle) as info:
        decide(request_, snapshot(state(bernoulli_spec())), RNG)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_unknown_experiment_is_not_found() -> None:
    with pytest.raises(UnknownExperimentError) as info:
        decide(RouteInput("other", "u"), snapshot(state(bernoulli_spec())), RNG)
    assert info.value.code is ErrorCode.NOT_FOUND


def test_without_snapshot_the_default_arm_is_served_and_not_counted() -> None:
    decision = decide(RouteInput("exp", "u", default_arm="arm-0"), None, RNG)
    assert (decision.arm, decision.reason, decision.counted) == ("arm-0", Reason.FALLBACK_DEFAULT, False)


def test_without_snapshot_or_default_it_is_unavailable() -> None:
    with pytest.raises(NoSnapshotError) as info:
        decide(RouteInput("exp", "u"), None, RNG)
    assert info.value.code is ErrorCode.UNAVAILABLE


def test_hash_seeded_draws_are_the_same_on_every_replica() -> None:
    """Two replicas (separately built states, different generators) agree on every unit."""
    from mabrouter.core.model import ArmStats

    from core_fixtures import state as build

    spec = bernoulli_spec(3)
    stats = tuple(ArmStats(100, 100, float(30 + 2 * i)) for i in range(3))  # close arms: all get drawn
    replica_a = snapshot(build(spec, stats))
    replica_b = snapshot(build(spec, stats))
    arms = []
    for i in range(200):
        request = RouteInput("exp", f"unit-{i}", hash_seeded=True)
        a = decide(request, replica_a, np.random.default_rng(i))
        b = decide(request, replica_b, np.random.default_rng(10_000 + i))
        assert a.arm == b.arm
        arms.append(a.arm)
    assert len(set(arms)) == 3  # still a Thompson draw per unit, not one arm for all
