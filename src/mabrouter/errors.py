"""One error tree for mabrouter.

Expected outcomes (a killed experiment, a unit outside the rollout) are *values* (a Reason on the
decision), never exceptions. Exceptions here mean the request or the configuration is wrong, or a
dependency is unavailable; each carries a stable code that the service maps to a gRPC status.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    PERMISSION_DENIED = "permission_denied"


class MabrouterError(Exception):
    """Base class: every error the router raises on purpose."""

    code: ErrorCode = ErrorCode.FAILED_PRECONDITION


class InvalidRequestError(MabrouterError):
    """The caller sent something malformed (empty experiment, NaN reward, oversized field...)."""

    code = ErrorCode.INVALID_ARGUMENT


class UnknownExperimentError(MabrouterError):
    code = ErrorCode.NOT_FOUND

    def __init__(self, experiment: str) -> None:
        super().__init__(
            f"unknown experiment {experiment!r}: apply it with `mabrouter experiment apply FILE`"
        )
        self.experiment = experiment


class InvalidDecisionIdError(MabrouterError):
    """The decision id was not issued by a router sharing this secret, or it was altered."""

    code = ErrorCode.INVALID_ARGUMENT


class ExpiredDecisionIdError(MabrouterError):
    code = ErrorCode.FAILED_PRECONDITION


class UnknownArmError(MabrouterError):
    """A decision refers to an arm the current configuration no longer has."""

    code = ErrorCode.FAILED_PRECONDITION


class NoSnapshotError(MabrouterError):
    """The router has not loaded any configuration yet (Redis unreachable since start-up)."""

    code = ErrorCode.UNAVAILABLE


class ExperimentUnavailableError(MabrouterError):
    """The experiment is stored but has never been usable by this router (its document or statistics
    do not decode); callers that pass default_arm get that arm instead."""

    code = ErrorCode.UNAVAILABLE


class StoreUnavailableError(MabrouterError):
    code = ErrorCode.UNAVAILABLE


class OverloadedError(MabrouterError):
    """Too many calls of one kind in flight: shed at once rather than queued."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class ConfigError(MabrouterError):
    """An experiment document (file or Redis) is invalid; the message names the field."""

    code = ErrorCode.INVALID_ARGUMENT
