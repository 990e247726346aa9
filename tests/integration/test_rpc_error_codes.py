"""mabrouter_rpc_errors_total for the statuses a router's own refusals never produce: an exception that
escapes a handler (UNKNOWN), a client that gives up (CANCELLED) or whose deadline passes
(DEADLINE_EXCEEDED) while the call runs. A real grpc.aio server runs the Router service's handlers
(service.requests, as `mabrouter serve` builds them) over a servicer whose methods fail on demand,
wrapped by service.rpc_metrics exactly as app.py wraps the real one. The refusals of the real servicer
(INVALID_ARGUMENT, NOT_FOUND, ...) are counted against a real router in test_metrics_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.service.requests import add_router_service
from mabrouter.service.rpc_metrics import count_rpc_errors
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc


class FailingServicer:
    """Route fails as its unit id says; the other methods answer OK."""

    async def Route(self, request: pb.RouteRequest, context: Any) -> pb.RouteResponse:  # noqa: N802
        if request.unit_id == "raise":
            raise RuntimeError("a bug in the handler")
        if request.unit_id == "slow":
            await asyncio.sleep(5)
        if request.unit_id == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "archived")
        return pb.RouteResponse(arm="a")

    async def RouteBatch(self, request: Any, context: Any) -> pb.RouteBatchResponse:  # noqa: N802
        return pb.RouteBatchResponse()

    async def ReportOutcome(self, request: Any, context: Any) -> pb.OutcomeResponse:  # noqa: N802
        return pb.OutcomeResponse()

    async def ReportOutcomes(self, request: Any, context: Any) -> pb.ReportOutcomesResponse:  # noqa: N802
        return pb.ReportOutcomesResponse()


@asynccontextmanager
async def served() -> AsyncIterator[tuple[router_pb2_grpc.RouterStub, RouterMetrics]]:
    metrics = RouterMetrics()
    servicer = FailingServicer()
    count_rpc_errors(servicer, metrics)
    server = grpc.aio.server()
    add_router_service(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield router_pb2_grpc.RouterStub(channel), metrics
    finally:
        await server.stop(0)


def errors(metrics: RouterMetrics, code: str) -> float:
    return (
        metrics.registry.get_sample_value("mabrouter_rpc_errors_total", {"method": "Route", "code": code})
        or 0.0
    )


async def eventually(metrics: RouterMetrics, code: str, count: float) -> None:
    """The server counts a call when its handler ends, which may be after the client saw the status."""
    for _ in range(200):
        if errors(metrics, code) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{code}: {errors(metrics, code)} counted, expected {count}")


def test_each_way_a_call_can_fail_is_counted_under_the_status_its_client_sees() -> None:
    asyncio.run(fail_each_way())


async def fail_each_way() -> None:
    async with served() as (stub, metrics):
        await route_and_fail(stub, metrics)


async def route_and_fail(stub: router_pb2_grpc.RouterStub, metrics: RouterMetrics) -> None:
    for unit, timeout, seen in (
        ("raise", 5.0, grpc.StatusCode.UNKNOWN),
        ("slow", 0.2, grpc.StatusCode.DEADLINE_EXCEEDED),
        ("abort", 5.0, grpc.StatusCode.FAILED_PRECONDITION),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Route(pb.RouteRequest(experiment="e", unit_id=unit), timeout=timeout)
        assert failed.value.code() is seen
        await eventually(metrics, seen.name, 1)

    call = stub.Route(pb.RouteRequest(experiment="e", unit_id="slow"))
    await asyncio.sleep(0.2)  # the handler is running
    call.cancel()
    await eventually(metrics, "CANCELLED", 1)

    assert (await stub.Route(pb.RouteRequest(experiment="e", unit_id="ok"))).arm == "a"
    await stub.RouteBatch(pb.RouteBatchRequest())
    await asyncio.sleep(0.05)
    samples = metrics.registry.get_sample_value
    counted = {
        code: samples("mabrouter_rpc_errors_total", {"method": "Route", "code": code})
        for code in ("UNKNOWN", "DEADLINE_EXCEEDED", "FAILED_PRECONDITION", "CANCELLED", "OK")
    }
    assert counted == {
        "UNKNOWN": 1,
        "DEADLINE_EXCEEDED": 1,
        "FAILED_PRECONDITION": 1,
        "CANCELLED": 1,
        "OK": None,  # calls that answer OK are not errors
    }
