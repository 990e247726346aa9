"""Validation of a reported outcome against the decision it claims and the experiment's reward kind."""

from __future__ import annotations

import math

from mabrouter.core.decision_id import DecisionToken
from mabrouter.core.model import RewardKind
from mabrouter.core.snapshot import Snapshot
from mabrouter.errors import InvalidRequestError, UnknownArmError, UnknownExperimentError


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
