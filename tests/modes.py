"""Both ways of routing behind the interfaces behaviour tests already use, so each such test runs against
both: a sidecar (a real RouterApp serving gRPC on a loopback port) and the in-process router
(mabrouter.embedded.EmbeddedRouter) in this process. Tests take the `mode` fixture (conftest.py).

`EmbeddedStub` answers the RouterStub calls tests make with the same messages, from an in-process router:
refusals raise `EmbeddedCallError`, a grpc.RpcError with the code and details a sidecar would answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import json_format

from mabrouter.client import Assignment
from mabrouter.config import Settings
from mabrouter.embedded import EmbeddedRouter
from mabrouter.errors import MabrouterError
from mabrouter.runtime.outcomes import Accepted
from mabrouter.service.status import status_of
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import InProcessRouter, open_stub

MODES = ("sidecar", "embedded")
Stub = router_pb2_grpc.RouterStub  # or an EmbeddedStub: the same calls


class EmbeddedCallError(grpc.RpcError):
    """A refusal of the in-process router, shaped as the error of a failed gRPC call."""

    def __init__(self, error: MabrouterError) -> None:
        super().__init__(str(error))
        self._code = status_of(error)
        self._details = str(error)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def response_of(assignment: Assignment) -> pb.RouteResponse:
    return pb.RouteResponse(
        arm=assignment.arm,
        decision_id=assignment.decision_id,
        reason=pb.Reason.Value(assignment.reason),
        propensity=assignment.propensity,
        config_version=assignment.config_version,
        payload=assignment.payload,
        stale=assignment.stale,
        shadow_arm=assignment.shadow_arm,
    )


class _Answered:
    """A call answered already, shaped as the future a stub method's `.future()` returns."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: grpc.RpcError | None = None
        try:
            self._value = call()
        except grpc.RpcError as exc:
            self._error = exc

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _Method:
    """A stub method: called, or `.future()` (answered at once: the router is in this process)."""

    def __init__(self, function: Callable[[Any, float | None], Any]) -> None:
        self._function = function

    def __call__(self, request: Any, timeout: float | None = None, **_: Any) -> Any:
        return self._function(request, timeout)

    def future(self, request: Any, timeout: float | None = None, **_: Any) -> _Answered:
        return _Answered(lambda: self._function(request, timeout))


class EmbeddedStub:
    """Route, RouteBatch, ReportOutcome and ReportOutcomes, answered in this process."""

    def __init__(self, router: EmbeddedRouter) -> None:
        self.router = router
        self.Route = _Method(self._route)
        self.RouteBatch = _Method(self._route_batch)
        self.ReportOutcome = _Method(self._report_outcome)
        self.ReportOutcomes = _Method(self._report_outcomes)

    def _route(self, request: pb.RouteRequest, timeout: float | None) -> pb.RouteResponse:
        attributes = json_format.MessageToDict(request.attributes)
        try:
            assignment = self.router.route_or_raise(
                request.experiment,
                request.unit_id,
                attributes=attributes,
                default_arm=request.default_arm,
                timeout=timeout,
            )
        except MabrouterError as exc:
            raise EmbeddedCallError(exc) from None
        return response_of(assignment)

    def _route_batch(self, request: pb.RouteBatchRequest, timeout: float | None) -> pb.RouteBatchResponse:
        response = pb.RouteBatchResponse()
        for item in request.requests:
            try:
                routed = self._route(item, timeout)
            except EmbeddedCallError as exc:
                response.results.add(code=exc.code().value[0], message=exc.details())
            else:
                response.results.add().response.CopyFrom(routed)
        return response

    def _record(self, outcomes: list[pb.OutcomeRequest]) -> list[Accepted | MabrouterError]:
        try:
            return self.router.record_outcomes(
                [(o.decision_id, o.reward, dict(o.metrics)) for o in outcomes], timeout=10.0
            )
        except MabrouterError as exc:
            raise EmbeddedCallError(exc) from None

    def _report_outcome(self, request: pb.OutcomeRequest, timeout: float | None) -> pb.OutcomeResponse:
        (result,) = self._record([request])
        if isinstance(result, MabrouterError):
            raise EmbeddedCallError(result)
        return pb.OutcomeResponse(duplicate=result.duplicate, experiment=result.experiment, arm=result.arm)

    def _report_outcomes(
        self, request: pb.ReportOutcomesRequest, timeout: float | None
    ) -> pb.ReportOutcomesResponse:
        response = pb.ReportOutcomesResponse()
        for outcome, result in zip(request.outcomes, self._record(list(request.outcomes)), strict=True):
            if isinstance(result, MabrouterError):
                response.results.add(
                    decision_id=outcome.decision_id, code=status_of(result).value[0], message=str(result)
                )
            else:
                response.results.add(decision_id=outcome.decision_id, code=0, duplicate=result.duplicate)
        return response


@contextmanager
def embedded(settings: Settings) -> Iterator[EmbeddedRouter]:
    """An in-process router, started (its first snapshot loaded), closed afterwards."""
    router = EmbeddedRouter(settings)
    try:
        assert router.start(10.0), "the in-process router loaded no snapshot within 10 s"
        yield router
    finally:
        router.close()


@contextmanager
def serving(mode: str, settings: Settings) -> Iterator[Stub]:
    """A router in `mode` serving `settings`, and a stub to call it with."""
    if mode == "embedded":
        with embedded(settings) as router:
            yield EmbeddedStub(router)  # type: ignore[misc]  # the stub's shape
        return
    with InProcessRouter(settings).start() as router:
        channel, stub = open_stub(router.address)
        with channel:
            yield stub
