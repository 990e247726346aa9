"""The caller's Python values in, the client's Assignment out: what RouterClient sends and the sidecar
accepts, with the same refusals, minus protobuf (mabrouter.client's types, service.attributes' limits)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mabrouter.client import Assignment
from mabrouter.client._common import unsupported_attribute
from mabrouter.core.decide import AttributeValue
from mabrouter.core.model import Reason
from mabrouter.errors import InvalidRequestError
from mabrouter.runtime.engine import Routed
from mabrouter.runtime.outcomes import Accepted, OutcomeResult
from mabrouter.service.attributes import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_LIST_ITEMS,
    MAX_ATTRIBUTE_STRING_CHARS,
    MAX_ATTRIBUTES,
    list_too_long,
    name_too_long,
    string_too_long,
    too_many_attributes,
)
from mabrouter.service.status import status_of


def route_attributes(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    """`attributes` as the core reads them. Numbers become floats and lists tuples, as they arrive
    through the sidecar (a protobuf Struct holds doubles), so targeting compares the same values in
    both modes. Raises InvalidRequestError with the sidecar's messages."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise too_many_attributes(len(attributes))
    result: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not isinstance(key, str):
            raise InvalidRequestError(f"attribute name {key!r} is not a string")
        if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            raise name_too_long(key)
        if isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_STRING_CHARS:
                raise string_too_long(key, len(value))
            result[key] = value
        elif isinstance(value, bool):  # before int: a bool is an int
            result[key] = value
        elif isinstance(value, int | float):
            try:
                result[key] = float(value)
            except OverflowError as exc:  # an int too large for a double
                raise InvalidRequestError(str(exc)) from None
        elif isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
            if len(value) > MAX_ATTRIBUTE_LIST_ITEMS:
                raise list_too_long(key, len(value))
            result[key] = tuple(value)
        else:
            raise InvalidRequestError(unsupported_attribute(key, value))
    return result


def assignment_of(routed: Routed) -> Assignment:
    decision = routed.decision
    # Positional, in Assignment's field order (a frozen dataclass built from keywords costs 0.45 us more,
    # per decision); `_name_` is the member's name without the `name` property's Python-level lookup.
    return Assignment(
        decision.arm,
        routed.decision_id,
        decision.reason._name_,  # reason
        decision.propensity,
        decision.config_version,
        dict(decision.payload),
        decision.reason is Reason.FALLBACK_DEFAULT,  # fallback
        None,  # error
        routed.stale,
        decision.shadow_arm,
    )


def outcome_status(result: OutcomeResult) -> tuple[int, str, bool]:
    """(status code value, message, duplicate), as ReportOutcomes answers for one outcome."""
    if isinstance(result, Accepted):
        return 0, "", result.duplicate
    return status_of(result).value[0], str(result), False
