"""Validation of a reported outcome against the decision it claims and the experiment's reward kind."""

from __future__ import annotations

from collections.abc import Mapping

from mabrouter.core.decision_id import DecisionToken
from mabrouter.core.model import RewardKind
from mabrouter.core.snapshot import Snapshot
from mabrouter.errors import (
    ExperimentArchivedError,
    InvalidRequestError,
    UnknownArmError,
    UnknownExperimentError,
)

MAX_METRICS = 16

# The largest magnitude a reward or a guardrail metric value may have. Stored statistics are sums of
# values and of their squares, kept for an experiment's whole life as doubles (max ~1.8e308):
#   |value| <= 1e100, so value^2 <= 1e200;
#   plain sums over even 1e18 outcomes (a million a second for 30,000 years): |sum| <= 1e118,
#   sumsq <= 1e218;
#   discounted sums (core/discount.py) also carry the forward-decay weight, at most 2^64 ~ 1.8e19 before
#   the guardians rebase: sumsq <= 1e218 * 1.8e19 ~ 1.8e237;
# which leaves a factor of ~1e71 (2^235) to the float max: a rebase late by 200 half-lives still fits,
# and so do the posterior's terms (sum^2 <= 1e236). Nothing a caller plausibly measures comes near 1e100
# (rewards are clicks, revenue, latencies, costs); a value beyond it is a bug in the caller.
MAX_ABS_VALUE = 1e100
_LIMIT = f"{MAX_ABS_VALUE:.0e}".replace("e+", "e")  # "1e100", as docs/contract.md states it


def _in_domain(value: float) -> bool:
    """Finite and within MAX_ABS_VALUE (NaN fails both comparisons)."""
    return -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE


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
        if not _in_domain(value):
            raise InvalidRequestError(
                f"metric {name!r} is {value!r}, out of range: metric values must be finite with "
                f"|value| <= {_LIMIT} (so the experiment's statistics stay finite)"
            )
        if kinds[name] == "rate" and not 0.0 <= value <= 1.0:
            raise InvalidRequestError(
                f"metric {name!r} is a rate guardrail: it takes 0 or 1 (or a value in [0, 1])"
            )
        watched.append((name, value))
    return tuple(watched)


def validate_outcome(token: DecisionToken, reward: float, snapshot: Snapshot) -> None:
    state = snapshot.experiments.get(token.experiment)
    if state is None:
        if token.experiment in snapshot.archived:
            raise ExperimentArchivedError(token.experiment, "outcomes are not counted while it is archived")
        raise UnknownExperimentError(token.experiment)
    if state.spec.arm_index(token.arm) is None:
        raise UnknownArmError(
            f"experiment {token.experiment!r} no longer has arm {token.arm!r} (removed after the decision)"
        )
    if not _in_domain(reward):
        raise InvalidRequestError(
            f"reward {reward!r} is out of range: rewards must be finite with |reward| <= {_LIMIT} "
            "(so the experiment's statistics stay finite)"
        )
    if state.spec.reward is RewardKind.BERNOULLI and not 0.0 <= reward <= 1.0:
        raise InvalidRequestError(
            f"reward {reward!r} is outside [0, 1]; experiment {token.experiment!r} is bernoulli"
        )
