"""Validation of a reported outcome against the decision it claims and the experiment's reward kind."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mabrouter.core.decision_id import DecisionToken
from mabrouter.core.model import RewardKind
from mabrouter.core.snapshot import Snapshot
from mabrouter.errors import InvalidRequestError, UnknownArmError, UnknownExperimentError

MAX_METRICS = 16


def guardrail_metrics(
    token: DecisionToken, metrics: Mapping[str, float], snapshot: Snapshot
) -> tuple[tuple[str, float], ...]:
    """The metrics this experiment's guardrails watch, validated; others are ignored."""
    if not metrics:
        return ()
    if len(metrics) > MAX_METRICS:
        raise InvalidRequestError(f"{len(metrics)} metrics sent with one outcome; the limit is {MAX_METRICS}")
    state = snapshot.experiments[token.experiment]
    kinds = {guardrail.metric: guardrail.kind for guardrail in state.spec.guardrails}
    watched = []
    for name, value in sorted(metrics.items()):
        if name not in kinds:
            continue
        if not math.isfinite(value):
            raise InvalidRequestError(f"metric {name!r} must be a finite number, got {value!r}")
        if kinds[name] == "rate" and not 0.0 <= value <= 1.0:
            raise InvalidRequestError(
                f"metric {name!r} is a rate guardrail: it takes 0 or 1 (or a value in [0, 1])"
            )
        watched.append((name, value))
    return tuple(watched)


def validate_outcome(token: DecisionToken, reward: float, snapshot: Snapshot) -> None:
    state = snapshot.experiments.get(token.experiment)
    if state is None:
        raise UnknownExperimentError(token.experiment)
    if state.spec.arm_index(token.arm) is None:
        raise UnknownArmError(
            f"experiment {token.experiment!r} no longer has arm {token.arm!r} (removed after the decision)"
        )
    if not math.isfinite(reward):
        raise InvalidRequestError(f"reward must be a finite number, got {reward!r}")
    if state.spec.reward is RewardKind.BERNOULLI and not 0.0 <= reward <= 1.0:
        raise InvalidRequestError(
            f"reward {reward!r} is outside [0, 1]; experiment {token.experiment!r} is bernoulli"
        )
