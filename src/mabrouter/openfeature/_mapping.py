"""OpenFeature <-> mabrouter mapping: context attributes, reasons, error codes, flag metadata."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Final, TypeVar

from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason

from mabrouter.client import CLIENT_FALLBACK, Assignment, AttributeValue

log = logging.getLogger("mabrouter.openfeature")

DECISION_ID: Final = "decision_id"
PAYLOAD_PREFIX: Final = "payload."
MAX_WARNED_NAMES: Final = 256

REASONS: Final[Mapping[str, Reason]] = {
    "SAMPLED": Reason.SPLIT,
    "STICKY": Reason.SPLIT,
    "FORCED": Reason.TARGETING_MATCH,
    "NOT_TARGETED": Reason.DEFAULT,
    "NOT_EXPOSED": Reason.DEFAULT,
    "DENIED": Reason.DEFAULT,
    "HOLDOUT": Reason.DEFAULT,
    "KILLED": Reason.DISABLED,
    "STALE_CONTROL": Reason.STALE,
}

T = TypeVar("T")


class WarnOnce:
    """A WARNING once per name (at most MAX_WARNED_NAMES names are remembered)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def __call__(self, name: str, message: str, *args: object) -> None:
        with self._lock:
            if name in self._names or len(self._names) >= MAX_WARNED_NAMES:
                return
            self._names.add(name)
        log.warning(message, *args)


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a double
        return False


def route_attributes(
    attributes: Mapping[str, object], dropped: WarnOnce | None = None
) -> dict[str, AttributeValue]:
    """OpenFeature context attributes -> the router's typed attributes (see the package docstring)."""
    result: dict[str, AttributeValue] = {}

    def add(name: str, value: object) -> None:
        if isinstance(value, bool | str) or (isinstance(value, int | float) and _finite(value)):
            result[name] = value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                add(f"{name}.{key}", item)
        elif (
            isinstance(value, Sequence)
            and not isinstance(value, bytes | bytearray)
            and all(isinstance(item, str) for item in value)
        ):
            result[name] = [str(item) for item in value]
        elif dropped is not None:
            dropped(
                name,
                "mabrouter: evaluation context attribute %r (%s) is not sent to the router: only str, "
                "bool, finite numbers, lists of str and nested mappings of those are (logged once)",
                name,
                type(value).__name__,
            )

    for key, value in attributes.items():
        add(str(key), value)
    return result


def flag_metadata(assignment: Assignment) -> dict[str, bool | int | float | str]:
    metadata: dict[str, bool | int | float | str] = {
        DECISION_ID: assignment.decision_id,
        "propensity": assignment.propensity,
        "config_version": assignment.config_version,
        "mabrouter_reason": assignment.reason,
    }
    metadata.update({PAYLOAD_PREFIX + key: value for key, value in assignment.payload.items()})
    return metadata


def fallback_error(assignment: Assignment) -> tuple[ErrorCode, str]:
    """The OpenFeature error code for a fallback assignment, and its message."""
    if assignment.reason != CLIENT_FALLBACK:  # FALLBACK_DEFAULT: the router has no configuration yet
        return ErrorCode.PROVIDER_NOT_READY, f"the router could not decide yet ({assignment.reason})"
    error = assignment.error or "UNKNOWN: no answer from the router"
    status = error.split(":", 1)[0]
    if status == "NOT_FOUND" or error.startswith("INVALID_ARGUMENT: experiment "):
        return ErrorCode.FLAG_NOT_FOUND, error
    if status == "INVALID_ARGUMENT":
        return ErrorCode.INVALID_CONTEXT, error
    return ErrorCode.GENERAL, error


def resolution(assignment: Assignment) -> FlagResolutionDetails[str]:
    """Map an Assignment to OpenFeature's resolution details (see the table in the package docstring)."""
    metadata = flag_metadata(assignment)
    if assignment.fallback:
        code, message = fallback_error(assignment)
        return FlagResolutionDetails(
            value=assignment.arm,
            reason=Reason.ERROR,
            error_code=code,
            error_message=message,
            flag_metadata=metadata,
        )
    return FlagResolutionDetails(
        value=assignment.arm,
        variant=assignment.arm,
        reason=REASONS.get(assignment.reason, Reason.UNKNOWN),
        flag_metadata=metadata,
    )


def error_details(default_value: T, code: ErrorCode, message: str) -> FlagResolutionDetails[T]:
    return FlagResolutionDetails(
        value=default_value, reason=Reason.ERROR, error_code=code, error_message=message
    )


def type_mismatch(default_value: T, kind: str) -> FlagResolutionDetails[T]:
    return error_details(
        default_value,
        ErrorCode.TYPE_MISMATCH,
        f"mabrouter experiments are string flags (the arm name), not {kind} flags: use get_string_value",
    )
