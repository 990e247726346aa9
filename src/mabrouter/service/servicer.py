"""The Router servicer: convert, decide from the in-memory snapshot, convert back. No Redis on Route.

Requests arrive through service.requests' lenient deserializers: a request that did not decode is an
`Undecodable`, refused with INVALID_ARGUMENT before anything else. Metrics and tracing never fail a
call: what they raise goes to a TelemetryGuard and the call answers what the routing logic decided.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from mabrouter.errors import ErrorCode, InvalidRequestError, MabrouterError, OverloadedError
from mabrouter.runtime.engine import RoutingEngine
from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.runtime.outcomes import MAX_BATCH, Accepted, Outcome, OutcomeRecorder, OutcomeResult
from mabrouter.service.convert import ResponseBuilder, route_input
from mabrouter.service.guard import TelemetryGuard
from mabrouter.service.requests import Refusals, Undecodable, kind_of
from mabrouter.service.status import status_of
from mabrouter.service.tracing import Tracing
from mabrouter.v1 import router_pb2, router_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
_INVALID = ErrorCode.INVALID_ARGUMENT


async def _abort(context: Context, error: MabrouterError) -> NoReturn:
    await context.abort(status_of(error), str(error))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        engine: RoutingEngine,
        outcomes: OutcomeRecorder,
        metrics: RouterMetrics,
        tracing: Tracing | None,
        max_outcome_calls: int,
    ) -> None:
        self._engine = engine
        # Outcome calls may wait on Redis (up to its socket timeout in a stall); Route never does. Without
        # a limit of their own they could fill every slot of the server's concurrency limit and get Route
        # shed too. In-flight count, not a semaphore: an excess call is refused at once, never queued.
        self._max_outcome_calls = max_outcome_calls
        self._outcome_calls = 0
        self._outcomes = outcomes
        self._route_latency = metrics.route_latency.observe
        self._outcome_latency = metrics.outcome_latency.observe
        self._guard = TelemetryGuard(metrics.telemetry_errors)
        self._refusals = Refusals(metrics.bad_requests, self._guard)
        self._tracing = tracing.guarded_by(self._guard) if tracing is not None else None
        responses = ResponseBuilder()
        self._respond, self._fill = responses.response, responses.fill

    async def _refuse(self, method: str, kind: str, error: MabrouterError, context: Context) -> NoReturn:
        self._refusals.refused(method, kind, str(error))
        await _abort(context, error)

    async def _refuse_undecodable(self, method: str, request: Undecodable, context: Context) -> NoReturn:
        await self._refuse(method, request.kind, InvalidRequestError(request.message), context)

    def _observe(self, observe: Callable[[float], None], started: float) -> None:
        try:
            observe(time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a call
            self._guard.failed("metrics", exc)

    def _refused_item(self, method: str, error: MabrouterError) -> None:
        if error.code is _INVALID:
            self._refusals.refused(method, kind_of(error), str(error))

    async def Route(  # noqa: N802 - gRPC method names are fixed by the proto
        self, request: router_pb2.RouteRequest | Undecodable, context: Context
    ) -> router_pb2.RouteResponse:
        if isinstance(request, Undecodable):
            await self._refuse_undecodable("Route", request, context)
        started = time.perf_counter()
        try:
            if self._tracing is None:
                asked = route_input(request)
                routed = self._engine.route_now(asked) or await self._engine.route(asked)
                return self._respond(routed)
            tracing = self._tracing
            with tracing.span("Route", context.invocation_metadata()) as span:
                routed = await self._engine.route(route_input(request), tracing.ref(span))
                tracing.record_decision(span, request.experiment, request.unit_id, routed)
                return self._respond(routed)
        except MabrouterError as exc:
            self._refused_item("Route", exc)
            await _abort(context, exc)
        finally:
            self._observe(self._route_latency, started)

    async def RouteBatch(  # noqa: N802
        self, request: router_pb2.RouteBatchRequest | Undecodable, context: Context
    ) -> router_pb2.RouteBatchResponse:
        if isinstance(request, Undecodable):
            await self._refuse_undecodable("RouteBatch", request, context)
        if len(request.requests) > MAX_BATCH:
            await self._refuse(
                "RouteBatch",
                "too_many_items",
                InvalidRequestError(
                    f"{len(request.requests)} requests in one call; the limit is {MAX_BATCH}"
                ),
                context,
            )
        response = router_pb2.RouteBatchResponse()
        add, engine, fill = response.results.add, self._engine, self._fill
        for item in request.requests:
            try:
                asked = route_input(item)
                routed = engine.route_now(asked) or await engine.route(asked)
            except MabrouterError as exc:
                self._refused_item("RouteBatch", exc)
                add(code=status_of(exc).value[0], message=str(exc))
            else:
                fill(add().response, routed)
        return response

    async def _record(self, pairs: list[Outcome], context: Context) -> list[OutcomeResult]:
        if self._outcome_calls >= self._max_outcome_calls:
            await _abort(
                context,
                OverloadedError(
                    f"{self._outcome_calls} outcome calls already in flight, the limit "
                    "(half of MABROUTER_MAX_CONCURRENT_RPCS, so Route keeps the rest); retry with backoff"
                ),
            )
        self._outcome_calls += 1
        started = time.perf_counter()
        try:
            if self._tracing is None:
                return await self._outcomes.record(pairs)
            tracing = self._tracing
            with tracing.span("ReportOutcome", context.invocation_metadata()) as span:
                results = await self._outcomes.record(pairs)
                for result in results:
                    if isinstance(result, Accepted):
                        tracing.record_outcome(
                            span, result.experiment, result.arm, result.duplicate, result.trace
                        )
                return results
        except MabrouterError as exc:
            await _abort(context, exc)
        finally:
            self._outcome_calls -= 1
            self._observe(self._outcome_latency, started)

    async def ReportOutcome(  # noqa: N802
        self, request: router_pb2.OutcomeRequest | Undecodable, context: Context
    ) -> router_pb2.OutcomeResponse:
        if isinstance(request, Undecodable):
            await self._refuse_undecodable("ReportOutcome", request, context)
        (result,) = await self._record([(request.decision_id, request.reward, request.metrics)], context)
        if isinstance(result, MabrouterError):
            self._refused_item("ReportOutcome", result)
            await _abort(context, result)
        return router_pb2.OutcomeResponse(
            duplicate=result.duplicate, experiment=result.experiment, arm=result.arm
        )

    async def ReportOutcomes(  # noqa: N802
        self, request: router_pb2.ReportOutcomesRequest | Undecodable, context: Context
    ) -> router_pb2.ReportOutcomesResponse:
        if isinstance(request, Undecodable):
            await self._refuse_undecodable("ReportOutcomes", request, context)
        if len(request.outcomes) > MAX_BATCH:
            await self._refuse(
                "ReportOutcomes",
                "too_many_items",
                InvalidRequestError(
                    f"{len(request.outcomes)} outcomes in one call; the limit is {MAX_BATCH}"
                ),
                context,
            )
        results = await self._record(
            [(o.decision_id, o.reward, o.metrics) for o in request.outcomes], context
        )
        response = router_pb2.ReportOutcomesResponse()
        for outcome, result in zip(request.outcomes, results, strict=True):
            if isinstance(result, Accepted):
                response.results.add(decision_id=outcome.decision_id, code=0, duplicate=result.duplicate)
            else:
                self._refused_item("ReportOutcomes", result)
                code = status_of(result).value[0]
                response.results.add(decision_id=outcome.decision_id, code=code, message=str(result))
        return response
