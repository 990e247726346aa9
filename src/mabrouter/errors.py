"""One error tree for mabrouter.

Expected outcomes (a killed experiment, a unit outside the rollout) are *values* (a Reason on the
decision), never exceptions. Exceptions here mean the request or the configuration is wrong, or a
dependency is unavailable; each carries a stable code that the service maps to a gRPC status in one
table (`service/status.py`). Errors that never reach a caller (start-up, the spool's capacity) carry a
code too, so every project exception can be handled as a `MabrouterError`.

    Exception
    └── MabrouterError                  (code)
        ├── InvalidRequestError         INVALID_ARGUMENT     malformed request field
        ├── InvalidDecisionIdError      INVALID_ARGUMENT     forged or altered decision id
        ├── ConfigError                 INVALID_ARGUMENT     invalid experiment document
        ├── UnknownExperimentError      NOT_FOUND
        ├── ExpiredDecisionIdError      FAILED_PRECONDITION
        ├── ExperimentArchivedError     FAILED_PRECONDITION  an operator archived the experiment
        ├── UnknownArmError             FAILED_PRECONDITION
        ├── UnabsorbableOutcomeError    FAILED_PRECONDITION  stored statistics refuse the outcome
        ├── NoSnapshotError             UNAVAILABLE
        ├── ExperimentUnavailableError  UNAVAILABLE
        ├── StoreUnavailableError       UNAVAILABLE          Redis unreachable (chained from its error)
        ├── OverloadedError             RESOURCE_EXHAUSTED
        ├── SpoolFullError              RESOURCE_EXHAUSTED   the outcome spool is at its limit
        ├── RouterCallError             UNAVAILABLE          a tool's raw call got a non-OK status
        └── StartupError                FAILED_PRECONDITION  the CLI prints it and exits 2
            ├── SecretError             (also a ValueError)  unusable decision secret settings
            └── LoadTestStartError                           the load test could not start
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "ConfigError",
    "ErrorCode",
    "ExperimentArchivedError",
    "ExperimentUnavailableError",
    "ExpiredDecisionIdError",
    "InvalidDecisionIdError",
    "InvalidRequestError",
    "LoadTestStartError",
    "MabrouterError",
    "NoSnapshotError",
    "OverloadedError",
    "RouterCallError",
    "SecretError",
    "SpoolFullError",
    "StartupError",
    "StoreUnavailableError",
    "UnabsorbableOutcomeError",
    "UnknownArmError",
    "UnknownExperimentError",
]


class ErrorCode(Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"


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


class UnabsorbableOutcomeError(MabrouterError):
    """The stored statistics cannot take the outcome (a field holds no finite number, or the sum would
    not be one); nothing of it was written, not even its seen marker, so a retry after the repair counts."""

    code = ErrorCode.FAILED_PRECONDITION


class ExperimentArchivedError(MabrouterError):
    """An operator archived the experiment: routers no longer serve it (its statistics and logs are kept).

    FAILED_PRECONDITION rather than NOT_FOUND or UNAVAILABLE: the name is right (not a caller's typo), and
    retrying will not help until an operator unarchives it. Callers that pass default_arm get that arm."""

    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, experiment: str, advice: str = "pass default_arm to get an answer anyway") -> None:
        super().__init__(
            f"experiment {experiment!r} is archived: routers no longer serve it "
            f"(`mabrouter experiment unarchive {experiment}` restores it); {advice}"
        )
        self.experiment = experiment


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


class SpoolFullError(MabrouterError):
    """The outcome spool holds its maximum number of entries; the outcome was not acknowledged."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class RouterCallError(MabrouterError):
    """A raw call from one of the project's tools (load test, demo, `mabrouter health`) to a router did
    not succeed. Inference services never see it: their client fails open instead."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, status: str, details: str | None) -> None:
        super().__init__(f"{status}: {details}")
        self.status = status  # the gRPC status name, e.g. DEADLINE_EXCEEDED
        self.details = details


class ConfigError(MabrouterError):
    """An experiment document (file or Redis) is invalid; the message names the field."""

    code = ErrorCode.INVALID_ARGUMENT


class StartupError(MabrouterError):
    """The router (or a command) cannot start; the message says what to change."""

    code = ErrorCode.FAILED_PRECONDITION


class SecretError(StartupError, ValueError):
    """The decision secret settings would let callers forge decision ids; the message says what to change.

    Also a ValueError, as it was before it joined the tree: a check on settings is a ValueError to
    pydantic, which turns only ValueError and AssertionError raised in a validator into a
    ValidationError that names the field, so the secret checks can move into a validator unchanged.
    """


class LoadTestStartError(StartupError):
    """The load test could not start (router unreachable, unknown experiment, no worker connected)."""
