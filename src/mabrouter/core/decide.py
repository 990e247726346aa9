"""decide(request, snapshot, rng) -> Decision: the whole routing decision, pure and replayable.

Precedence, highest first (README "Operator controls" has the table; tests check every combination):
global kill > experiment kill > arm kill > allow/deny lists > targeting and rollout > holdout > sticky >
sampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from mabrouter.core.hashing import bucket_of, in_rollout, unit_seed
from mabrouter.core.linear_policy import ContextDraw
from mabrouter.core.model import NAME_PATTERN, NAME_RULE, AttributeValue, ExperimentSpec, Reason
from mabrouter.core.snapshot import ExperimentState, Snapshot
from mabrouter.core.targeting import matches
from mabrouter.errors import (
    ExperimentArchivedError,
    ExperimentUnavailableError,
    InvalidRequestError,
    NoSnapshotError,
    UnknownExperimentError,
)

__all__ = ["AttributeValue", "Decision", "RouteInput", "decide", "validate"]

MAX_UNIT_ID_CHARS = 512
NO_ATTRIBUTES: Mapping[str, AttributeValue] = MappingProxyType({})

# RouteInput and Decision are NamedTuples, not frozen dataclasses: as immutable and typed, and one of
# each per Route is built about 3x faster (a frozen dataclass sets every field through object.__setattr__).


class RouteInput(NamedTuple):
    experiment: str
    unit_id: str
    attributes: Mapping[str, AttributeValue] = NO_ATTRIBUTES
    default_arm: str = ""
    # The arm this unit was first assigned, when the experiment is sticky and the caller knows it.
    sticky_arm: str | None = None
    # Draw from a generator seeded by the unit (not the shared one): a sticky experiment whose store is
    # unreachable still gives each unit a stable arm, the same on every replica with the same snapshot.
    hash_seeded: bool = False


class Decision(NamedTuple):
    arm: str
    reason: Reason
    propensity: float
    config_version: int
    payload: Mapping[str, str]
    # Whether this decision counts as a trial of the policy (and its outcome updates the posterior).
    # Only decisions the policy made count: forced or fallback answers would bias the posterior.
    counted: bool
    # The arm the shadow policy would have chosen ('' without shadow arms or for imposed answers).
    shadow_arm: str = ""
    # The segment whose statistics this decision (and its outcome) also updates ('' for none).
    segment: str = ""
    # A contextual experiment's counted decision: its feature vector and the allocation it was drawn
    # from (core/linear_policy.py); None otherwise.
    context: ContextDraw | None = None


def validate(request: RouteInput) -> None:
    if not request.experiment:
        raise InvalidRequestError("experiment is empty: name the experiment to route, e.g. 'ranker'")
    if not NAME_PATTERN.fullmatch(request.experiment):
        raise InvalidRequestError(f"experiment {request.experiment[:80]!r} is not a valid name ({NAME_RULE})")
    _validate_unit(request)


def _validate_unit(request: RouteInput) -> None:
    """`validate` but for the experiment name: enough once the name was found among loaded experiments,
    which were validated when applied."""
    if not request.unit_id:
        raise InvalidRequestError("unit_id is empty: pass the user, session or request id being routed")
    if len(request.unit_id) > MAX_UNIT_ID_CHARS:
        raise InvalidRequestError(
            f"unit_id is {len(request.unit_id)} characters; the limit is {MAX_UNIT_ID_CHARS}"
        )
    if request.default_arm and not NAME_PATTERN.fullmatch(request.default_arm):
        raise InvalidRequestError(
            f"default_arm {request.default_arm[:80]!r} is not a valid arm name ({NAME_RULE})"
        )


def _fixed(state: ExperimentState, index: int, reason: Reason) -> Decision:
    """An arm the rules imposed: deterministic for this unit, so its propensity is 1."""
    return Decision(
        arm=state.spec.arms[index].name,
        reason=reason,
        propensity=1.0,
        config_version=state.version,
        payload=state.payloads[index],
        counted=False,
    )


def segment_of(spec: ExperimentSpec, attributes: Mapping[str, AttributeValue]) -> str:
    """The request's segment: its value of the segment attribute, when it is a usable name."""
    if not spec.segment_attribute:
        return ""
    value = attributes.get(spec.segment_attribute)
    if value is None or isinstance(value, tuple):
        return ""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return text if NAME_PATTERN.fullmatch(text) else ""


def _sampled(
    state: ExperimentState, index: int, reason: Reason, rng: np.random.Generator, *, segment: str = ""
) -> Decision:
    shadow = state.shadow_sampler
    # Positional (arm, reason, propensity, config_version, payload, counted, shadow_arm, segment): half
    # the cost of keywords for a NamedTuple, on every sampled decision.
    return Decision(
        state.spec.arms[index].name,
        reason,
        float(state.allocation(segment)[index]),
        state.version,
        state.payloads[index],
        True,  # counted
        state.spec.arms[shadow.next_arm(rng)].name if shadow is not None else "",
        segment,
    )


def _contextual(
    state: ExperimentState, request: RouteInput, rng: np.random.Generator, sticky_index: int | None
) -> Decision:
    """A counted decision of a contextual experiment: drawn from the allocation at the request's
    context (or the sticky unit's arm), which the decision carries for its trial and its outcome."""
    policy = state.contextual
    assert policy is not None
    if sticky_index is not None:
        index, reason, context = sticky_index, Reason.STICKY, policy.context(request.attributes)
    else:
        reason = Reason.SAMPLED
        draw_rng = (
            np.random.default_rng(unit_seed(state.spec.hash_salt, request.unit_id))
            if request.hash_seeded
            else rng
        )
        index, context = policy.draw(request.attributes, draw_rng)
    shadow = ""
    if state.shadow_sampler is not None:
        pool = tuple(i for i, arm in enumerate(state.spec.arms) if i in state.live or arm.shadow)
        shadow = state.spec.arms[policy.best_draw(context.vector, pool, rng)].name
    return Decision(
        arm=state.spec.arms[index].name,
        reason=reason,
        propensity=float(context.shares[index]),
        config_version=state.version,
        payload=state.payloads[index],
        counted=True,
        shadow_arm=shadow,
        context=context,
    )


def decide(  # noqa: PLR0911, PLR0912 - the precedence chain reads top-down as early returns
    request: RouteInput, snapshot: Snapshot | None, rng: np.random.Generator, *, stale_control: bool = False
) -> Decision:
    """`stale_control`: the snapshot is too old to experiment on; serve control (kills still apply)."""
    if snapshot is None:
        validate(request)
        if request.default_arm:
            return Decision(request.default_arm, Reason.FALLBACK_DEFAULT, 1.0, 0, {}, counted=False)
        raise NoSnapshotError(
            "no configuration loaded yet (is Redis reachable?); pass default_arm to get an answer anyway"
        )
    state = snapshot.experiments.get(request.experiment)
    if state is None:
        validate(request)
        if request.experiment in snapshot.archived:
            # Archived on purpose: the caller's default when it gave one, as when nothing is loaded.
            if request.default_arm:
                return Decision(request.default_arm, Reason.FALLBACK_DEFAULT, 1.0, 0, {}, counted=False)
            raise ExperimentArchivedError(request.experiment)
        problem = snapshot.errors.get(request.experiment)
        if problem is None:
            raise UnknownExperimentError(request.experiment)
        # Stored, but never once usable here: there is no control arm to fall back on.
        if request.default_arm:
            return Decision(request.default_arm, Reason.FALLBACK_DEFAULT, 1.0, 0, {}, counted=False)
        raise ExperimentUnavailableError(
            f"experiment {request.experiment!r} cannot be used: {problem}; "
            "pass default_arm to get an answer anyway"
        )
    _validate_unit(request)  # a loaded experiment's name is valid
    spec, control = state.spec, state.control_index
    if snapshot.global_controls.killed or state.controls.killed or state.sampler is None:
        return _fixed(state, control, Reason.KILLED)
    if stale_control:
        return _fixed(state, control, Reason.STALE_CONTROL)
    forced = spec.allow.get(request.unit_id)
    forced_index = spec.arm_index(forced) if forced is not None else None
    if forced_index is not None:
        if forced_index not in state.live:
            return _fixed(state, control, Reason.KILLED)
        return _fixed(state, forced_index, Reason.FORCED)
    if request.unit_id in spec.deny:
        return _fixed(state, control, Reason.DENIED)
    if spec.targeting is not None and not matches(spec.targeting, request.attributes):
        return _fixed(state, control, Reason.NOT_TARGETED)
    if state.rollout < 100.0 and not in_rollout(bucket_of(spec.hash_salt, request.unit_id), state.rollout):
        return _fixed(state, control, Reason.NOT_EXPOSED)
    if spec.holdout_percent > 0 and in_rollout(
        bucket_of(spec.holdout_salt, request.unit_id), spec.holdout_percent
    ):
        return _fixed(state, control, Reason.HOLDOUT)
    segment = segment_of(spec, request.attributes)
    if request.sticky_arm is not None:
        sticky_index = spec.arm_index(request.sticky_arm)
        if sticky_index is not None and sticky_index in state.live:
            if state.contextual is not None:
                return _contextual(state, request, rng, sticky_index)
            return _sampled(state, sticky_index, Reason.STICKY, rng, segment=segment)
    if state.contextual is not None:
        return _contextual(state, request, rng, None)
    policy = state.segments.get(segment) if segment else None
    sampler = policy.sampler if policy is not None else state.sampler
    if request.hash_seeded:
        unit_rng = np.random.default_rng(unit_seed(spec.hash_salt, request.unit_id))
        return _sampled(state, sampler.draw_once(unit_rng), Reason.SAMPLED, rng, segment=segment)
    return _sampled(state, sampler.next_arm(rng), Reason.SAMPLED, rng, segment=segment)
