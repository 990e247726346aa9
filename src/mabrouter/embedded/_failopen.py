"""How the in-process router fails open: as RouterClient does (mabrouter.client's fallback assignment,
error text and log-once rules), with the gRPC status the sidecar would have answered."""

from __future__ import annotations

import grpc

from mabrouter.client import Assignment
from mabrouter.client._common import FailureLog, exception_error, fallback_assignment, status_error
from mabrouter.errors import MabrouterError
from mabrouter.service.status import status_of


class FailOpen:
    """Fallback assignments, each logged once per (experiment, status) or every 30 s (FailureLog)."""

    __slots__ = ("_failures",)

    def __init__(self) -> None:
        self._failures = FailureLog()

    def fail(self, experiment: str, code: grpc.StatusCode | None, error: str, default_arm: str) -> Assignment:
        self._failures.record(experiment, code, error, default_arm)
        return fallback_assignment(default_arm, error)

    def refused(self, experiment: str, error: MabrouterError, default_arm: str) -> Assignment:
        code = status_of(error)
        return self.fail(experiment, code, status_error(code, str(error)), default_arm)

    def unexpected(self, experiment: str, error: Exception, default_arm: str) -> Assignment:
        return self.fail(experiment, None, exception_error(error), default_arm)

    def unavailable(self, experiment: str, why: str, default_arm: str) -> Assignment:
        code = grpc.StatusCode.UNAVAILABLE
        return self.fail(experiment, code, status_error(code, why), default_arm)

    def deadline(self, experiment: str, waited: float, default_arm: str) -> Assignment:
        code = grpc.StatusCode.DEADLINE_EXCEEDED
        return self.fail(experiment, code, status_error(code, f"no answer within {waited} s"), default_arm)
