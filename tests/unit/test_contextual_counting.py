"""A contextual experiment's decisions and outcomes, as the runtime counts them and the store encodes and
decodes them (no Redis: the encoding, the trial buffer and the decoder)."""

from __future__ import annotations

import numpy as np
import pytest

from mabrouter.core.decide import Decision, RouteInput, decide
from mabrouter.core.features import encode_context, signature
from mabrouter.core.linear import LinearSums, linear_posterior
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    BetaPrior,
    ContextualSpec,
    ExperimentSpec,
    NumericFeature,
    RewardKind,
)
from mabrouter.core.snapshot import Snapshot, build_experiment_state
from mabrouter.runtime.trials import FOLD_ROWS, TrialBuffer
from mabrouter.store.linear_codec import linear_sums, model_prefix
from mabrouter.store.records import OutcomeWrite, outcome_args
from mabrouter.store.stats_codec import trial_increments

CONTEXT = ContextualSpec((NumericFeature("x"), NumericFeature("y", "log1p")))
SPEC = ExperimentSpec(
    "ctx",
    RewardKind.BERNOULLI,
    "a",
    (ArmSpec("a", BetaPrior()), ArmSpec("b", BetaPrior())),
    contextual=CONTEXT,
)
MODEL = signature(CONTEXT)


def decided(n: int, seed: int = 1) -> tuple[Snapshot, list[tuple[RouteInput, Decision]]]:
    state = build_experiment_state(SPEC, 1, (ArmStats(), ArmStats()))
    snapshot = Snapshot({"ctx": state}, loaded_at=0.0)
    rng = np.random.default_rng(seed)
    requests = [
        RouteInput("ctx", f"u{i}", {"x": float(rng.normal()), "y": float(rng.uniform(0, 100))})
        for i in range(n)
    ]
    return snapshot, [(request, decide(request, snapshot, rng)) for request in requests]


def test_the_buffer_sums_x_xt_per_arm_and_expects_every_decisions_own_allocation() -> None:
    snapshot, decisions = decided(3 * FOLD_ROWS + 5)  # folds several times, and a remainder
    state = snapshot.experiments["ctx"]
    buffer = TrialBuffer()
    for request, decision in decisions:
        buffer.record("ctx", decision, state, request.unit_id)
    counts = buffer.drain(0)["ctx"]
    for arm in ("a", "b"):
        vectors = np.array([d.context.vector for _, d in decisions if d.arm == arm])
        np.testing.assert_allclose(counts.contextual[MODEL, arm], vectors.T @ vectors, rtol=1e-12)
    expected = sum(d.context.shares for _, d in decisions)
    assert counts.expected == pytest.approx({"a": expected[0], "b": expected[1]})
    assert sum(counts.sampled.values()) == len(decisions)
    assert buffer.drain(0) == {}


def test_the_flush_writes_the_upper_triangle_and_the_decoder_reads_it_back() -> None:
    snapshot, decisions = decided(50)
    state = snapshot.experiments["ctx"]
    buffer = TrialBuffer()
    for request, decision in decisions:
        buffer.record("ctx", decision, state, request.unit_id)
    counts = buffer.drain(0)["ctx"]
    fields = {name: repr(value) for name, value in trial_increments(counts).items()}
    prefix = model_prefix(MODEL, "a")
    assert f"{prefix}:xx:0:2" in fields
    assert f"{prefix}:xx:2:0" not in fields  # the matrix is symmetric: the upper triangle is stored
    assert len([f for f in fields if f.startswith(prefix)]) == 6  # d = 3: 3 * 4 / 2
    sums = linear_sums(SPEC, fields)
    assert sums is not None
    np.testing.assert_allclose(sums[0].xx, counts.contextual[MODEL, "a"], rtol=1e-15)
    assert sums[0].decisions == counts.trials["a"]


def test_an_outcome_adds_reward_times_its_decisions_vector() -> None:
    vector = np.array([1.0, 0.5, np.float32(np.log1p(3.0))])
    token_context = encode_context(MODEL, vector)
    write = OutcomeWrite("ctx", "b", "n1", 0.75, True, 60, context=token_context)
    args = outcome_args(write)
    assert args[10] == model_prefix(MODEL, "b")
    assert args[11] == "4"  # rx:0, rx:1, rx:2 and rr
    np.testing.assert_allclose([float(a) for a in args[12:16]], [*(0.75 * vector.astype(np.float32)), 0.5625])
    plain = outcome_args(OutcomeWrite("ctx", "b", "n2", 0.75, True, 60))
    assert plain[10:] == ["", "0"]


def test_the_decoder_refuses_sums_no_writer_could_have_made() -> None:
    prefix = model_prefix(MODEL, "a")
    with pytest.raises(ValueError, match=r"xx:1:1.*non-negative"):
        linear_sums(SPEC, {f"{prefix}:xx:1:1": "-4"})
    with pytest.raises(ValueError, match=r"could not convert|not a finite"):
        linear_sums(SPEC, {f"{prefix}:rx:0": "abc"})
    # a model of other features (the document changed them) is not read
    assert linear_sums(SPEC, {f"{model_prefix('00000000', 'a')}:xx:0:0": "abc"}) is not None


def test_posterior_from_decoded_sums_is_the_least_squares_fit_of_the_decisions_and_rewards() -> None:
    """What the flush and the outcome script add, decoded, is exactly the regression of the rewards on
    the vectors the decisions carried (conversion style: no outcome is a reward of 0)."""
    snapshot, decisions = decided(400, seed=3)
    state = snapshot.experiments["ctx"]
    buffer = TrialBuffer()
    rng = np.random.default_rng(4)
    stored: dict[str, float] = {}
    rewards: dict[str, list[float]] = {"a": [], "b": []}
    for request, decision in decisions:
        buffer.record("ctx", decision, state, request.unit_id)
        reward = float(rng.random() < 0.3)
        rewards[decision.arm].append(reward)
        if reward:
            args = outcome_args(
                OutcomeWrite(
                    "ctx",
                    decision.arm,
                    request.unit_id,
                    reward,
                    True,
                    60,
                    context=encode_context(MODEL, decision.context.vector),
                )
            )
            count = int(args[11])
            prefix = args[10]
            for i, increment in enumerate(args[12 : 12 + count]):
                field = f"{prefix}:rx:{i}" if i < count - 1 else f"{prefix}:rr"
                stored[field] = stored.get(field, 0.0) + float(increment)
    for field, value in trial_increments(buffer.drain(0)["ctx"]).items():
        stored[field] = stored.get(field, 0.0) + value
    sums = linear_sums(SPEC, {k: repr(v) for k, v in stored.items()})
    assert sums is not None
    for index, arm in enumerate(("a", "b")):
        vectors = np.array([d.context.vector for _, d in decisions if d.arm == arm])
        direct = LinearSums.of(vectors, np.array(rewards[arm]))
        decoded = linear_posterior(sums[index], 1.0, SPEC.reward)
        np.testing.assert_allclose(decoded.mean, linear_posterior(direct, 1.0, SPEC.reward).mean, rtol=1e-9)


def test_a_hand_edited_sum_keeps_the_last_good_state_and_kills_still_apply() -> None:
    """Decision 0017 for the model's sums: a matrix that cannot be a posterior (here sum x x^T with a
    negative determinant) leaves the router on its last good state, names the arm, and a kill written
    next to the edit is obeyed."""
    import json

    from mabrouter.core.decide import RouteInput, decide
    from mabrouter.core.model import Reason
    from mabrouter.runtime.snapshot_builder import SnapshotBuilder
    from mabrouter.store.records import RawExperiment, RawState

    doc = json.dumps(
        {
            "name": "ctx",
            "control": "a",
            "arms": [{"name": "a"}, {"name": "b"}],
            "contextual": {"features": [{"attribute": "x"}, {"attribute": "y", "transform": "log1p"}]},
        }
    )
    prefix = model_prefix(MODEL, "b")
    good = {f"{prefix}:xx:0:0": "10", f"{prefix}:xx:1:1": "4", f"{prefix}:rx:0": "3"}

    def state(stats: dict[str, str], control: dict[str, str]) -> RawState:
        experiment = RawExperiment("ctx", {"doc": doc, "version": "1"}, stats, control)
        return RawState([experiment], {})

    builder = SnapshotBuilder()
    first = builder.build(state(good, {}), None, 0.0)
    assert first.experiments["ctx"].contextual is not None
    broken = {**good, f"{prefix}:xx:0:1": "1000"}  # |x0 x1| cannot exceed sqrt(10 * 4)
    second = builder.build(state(broken, {"kill": "1"}), first, 1.0)
    assert "'b'" in second.errors["ctx"]
    assert "positive semi-definite" in second.errors["ctx"]
    served = decide(RouteInput("ctx", "u1", {"x": 1.0}), second, np.random.default_rng(0))
    assert served.reason is Reason.KILLED
