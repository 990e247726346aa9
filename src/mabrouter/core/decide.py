"""decide(request, snapshot, rng) -> Decision: the whole routing decision, pure and replayable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mabrouter.core.model import NAME_PATTERN, NAME_RULE, Reason
from mabrouter.core.snapshot import Snapshot
from mabrouter.errors import InvalidRequestError, NoSnapshotError, UnknownExperimentError

MAX_UNIT_ID_CHARS = 512

AttributeValue = str | float | bool | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RouteInput:
    experiment: str
    unit_id: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    default_arm: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    arm: str
    reason: Reason
    propensity: float
    config_version: int
    payload: Mapping[str, str]
    # Whether this decision counts as a trial of the policy (and its outcome updates the posterior).
    # Only decisions the policy made count: forced or fallback answers would bias the posterior.
    counted: bool


def validate(request: RouteInput) -> None:
    if not request.experiment:
        raise InvalidRequestError("experiment is empty: name the experiment to route, e.g. 'ranker'")
    if not NAME_PATTERN.match(request.experiment):
        raise InvalidRequestError(f"experiment {request.experiment[:80]!r} is not a valid name ({NAME_RULE})")
    if not request.unit_id:
        raise InvalidRequestError("unit_id is empty: pass the user, session or request id being routed")
    if len(request.unit_id) > MAX_UNIT_ID_CHARS:
        raise InvalidRequestError(
            f"unit_id is {len(request.unit_id)} characters; the limit is {MAX_UNIT_ID_CHARS}"
        )
    if request.default_arm and not NAME_PATTERN.match(request.default_arm):
        raise InvalidRequestError(
            f"default_arm {request.default_arm[:80]!r} is not a valid arm name ({NAME_RULE})"
        )


def decide(request: RouteInput, snapshot: Snapshot | None, rng: np.random.Generator) -> Decision:
    validate(request)
    if snapshot is None:
        if request.default_arm:
            return Decision(request.default_arm, Reason.FALLBACK_DEFAULT, 1.0, 0, {}, counted=False)
        raise NoSnapshotError(
            "no configuration loaded yet (is Redis reachable?); pass default_arm to get an answer anyway"
        )
    state = snapshot.experiments.get(request.experiment)
    if state is None:
        raise UnknownExperimentError(request.experiment)
    index = state.sampler.next_arm(rng)
    return Decision(
        arm=state.spec.arms[index].name,
        reason=Reason.SAMPLED,
        propensity=float(state.shares[index]),
        config_version=state.version,
        payload=state.payloads[index],
        counted=True,
    )
