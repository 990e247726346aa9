"""The Router servicer: convert, decide from the in-memory snapshot, convert back. No Redis on Route."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from mabrouter.errors import InvalidRequestError, MabrouterError
from mabrouter.runtime.engine import RoutingEngine
from mabrouter.runtime.outcomes import MAX_BATCH, Accepted, OutcomeRecorder
from mabrouter.service.convert import route_input, route_response
from mabrouter.service.status import status_of
from mabrouter.v1 import router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, engine: RoutingEngine, outcomes: OutcomeRecorder) -> None:
        self._engine = engine
        self._outcomes = outcomes

    async def Route(  # noqa: N802 - gRPC method names are fixed by the proto
        self, request: router_pb2.RouteRequest, context: Context
    ) -> router_pb2.RouteResponse:
        try:
            routed = await self._engine.route(route_input(request))
        except MabrouterError as exc:
            await context.abort(status_of(exc), str(exc))
        return route_response(routed)

    async def RouteBatch(  # noqa: N802
        self, request: router_pb2.RouteBatchRequest, context: Context
    ) -> router_pb2.RouteBatchResponse:
        if len(request.requests) > MAX_BATCH:
            error = InvalidRequestError(
                f"{len(request.requests)} requests in one call; the limit is {MAX_BATCH}"
            )
            await context.abort(status_of(error), str(error))
        response = router_pb2.RouteBatchResponse()
        for item in request.requests:
            try:
                routed = await self._engine.route(route_input(item))
            except MabrouterError as exc:
                response.results.add(code=status_of(exc).value[0], message=str(exc))
            else:
                response.results.add(response=route_response(routed))
        return response

    async def ReportOutcome(  # noqa: N802
        self, request: router_pb2.OutcomeRequest, context: Context
    ) -> router_pb2.OutcomeResponse:
        try:
            (result,) = await self._outcomes.record([(request.decision_id, request.reward)])
        except MabrouterError as exc:
            await context.abort(status_of(exc), str(exc))
        if isinstance(result, MabrouterError):
            await context.abort(status_of(result), str(result))
        return router_pb2.OutcomeResponse(
            duplicate=result.duplicate, experiment=result.experiment, arm=result.arm
        )

    async def ReportOutcomes(  # noqa: N802
        self, request: router_pb2.ReportOutcomesRequest, context: Context
    ) -> router_pb2.ReportOutcomesResponse:
        if len(request.outcomes) > MAX_BATCH:
            error = InvalidRequestError(
                f"{len(request.outcomes)} outcomes in one call; the limit is {MAX_BATCH}"
            )
            await context.abort(status_of(error), str(error))
        try:
            results = await self._outcomes.record([(o.decision_id, o.reward) for o in request.outcomes])
        except MabrouterError as exc:
            await context.abort(status_of(exc), str(exc))
        response = router_pb2.ReportOutcomesResponse()
        for outcome, result in zip(request.outcomes, results, strict=True):
            if isinstance(result, Accepted):
                response.results.add(decision_id=outcome.decision_id, code=0, duplicate=result.duplicate)
            else:
                response.results.add(
                    decision_id=outcome.decision_id, code=status_of(result).value[0], message=str(result)
                )
        return response
