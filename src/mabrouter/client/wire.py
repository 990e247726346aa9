"""Raw calls to a router, for the project's own tools: the load test, the demo and `mabrouter health`.

Inference services use :class:`RouterClient`, which fails open. These tools need the opposite: every
failure visible (as :class:`RouterCallError`, carrying the gRPC status name), and nothing added per call.
The load generator times its Route calls, so :meth:`AsyncRouterWire.route` is one coroutine over the
generated stub: no trace metadata, no fail-open bookkeeping, and the request is built before the timer
starts. Only this package and `service/` import the generated code; tools reach the wire through here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabrouter.client._common import CHANNEL_OPTIONS, AttributeValue, reason_name, route_request
from mabrouter.errors import RouterCallError
from mabrouter.v1 import router_pb2, router_pb2_grpc

__all__ = ["OK", "AsyncRouterWire", "ClientTls", "RouterWire", "connected", "reason_name", "status_name"]

OK = "OK"


def status_name(code: int) -> str:
    """The gRPC status name of a numeric code (a per-outcome result code), or CODE_<n> if unknown."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"CODE_{code}"


def _call_error(exc: grpc.RpcError) -> RouterCallError:
    # A failure before the call reached the transport raises a bare RpcError (no code, no details).
    if isinstance(exc, grpc.Call):
        return RouterCallError(exc.code().name, exc.details())
    return RouterCallError(grpc.StatusCode.UNKNOWN.name, str(exc))


@dataclass(frozen=True, slots=True)
class ClientTls:
    """PEM bytes for a TLS channel: the CA to verify the router, and a client pair for mTLS."""

    root_certificates: bytes
    private_key: bytes | None = None
    certificate_chain: bytes | None = None


class RouterWire:
    """Blocking raw calls on one channel with grpc's default options. A context manager: closes it."""

    def __init__(self, target: str, *, tls: ClientTls | None = None) -> None:
        if tls is None:
            self._channel = grpc.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.root_certificates,
                private_key=tls.private_key,
                certificate_chain=tls.certificate_chain,
            )
            self._channel = grpc.secure_channel(target, credentials)
        self._router = router_pb2_grpc.RouterStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def wait_ready(self, timeout: float) -> bool:
        """Connect now; False when the channel is not ready within `timeout` seconds."""
        future = grpc.channel_ready_future(self._channel)
        try:
            future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            future.cancel()
            return False
        return True

    def route(self, experiment: str, unit_id: str, *, default_arm: str = "", timeout: float) -> Any:
        """The RouteResponse (arm, decision_id, reason, propensity...); RouterCallError on failure."""
        request = router_pb2.RouteRequest(experiment=experiment, unit_id=unit_id, default_arm=default_arm)
        try:
            return self._router.Route(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _call_error(exc) from None

    def report_outcome(self, decision_id: str, reward: float, *, timeout: float) -> None:
        request = router_pb2.OutcomeRequest(decision_id=decision_id, reward=reward)
        try:
            self._router.ReportOutcome(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _call_error(exc) from None

    def health(self, service: str = "", *, timeout: float) -> str:
        """The standard health service's answer for `service`: SERVING, NOT_SERVING, SERVICE_UNKNOWN..."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            raise _call_error(exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RouterWire:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRouterWire:
    """Raw asyncio calls on a connected channel (see :func:`connected`), for load generators."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        stub = router_pb2_grpc.RouterStub(channel)
        self._route = stub.Route
        self._report = stub.ReportOutcomes

    @staticmethod
    def request(
        experiment: str,
        unit_id: str,
        default_arm: str,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Any:
        """A RouteRequest for :meth:`route`: built apart, so a timed call times only the call."""
        return route_request(experiment, unit_id, attributes, default_arm)

    async def route(self, request: Any, timeout: float) -> Any:
        """The RouteResponse (arm, decision_id, reason, propensity); RouterCallError on failure."""
        try:
            return await self._route(request, timeout=timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            raise RouterCallError(exc.code().name, exc.details()) from None

    async def report_outcomes(
        self, outcomes: Sequence[tuple[str, float]], timeout: float
    ) -> list[tuple[str, bool]]:
        """Report (decision id, reward) pairs in one call; per outcome, ("OK" or its status name,
        duplicate). RouterCallError when the whole call failed."""
        request = router_pb2.ReportOutcomesRequest(
            outcomes=[
                router_pb2.OutcomeRequest(decision_id=decision_id, reward=reward)
                for decision_id, reward in outcomes
            ]
        )
        try:
            response = await self._report(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise RouterCallError(exc.code().name, exc.details()) from None
        return [
            (OK if result.code == 0 else status_name(result.code), bool(result.duplicate))
            for result in response.results
        ]


@contextlib.asynccontextmanager
async def connected(target: str, timeout: float) -> AsyncIterator[AsyncRouterWire]:
    """A channel to `target` with the client's options, ready within `timeout` s (TimeoutError if not)."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout)
        yield AsyncRouterWire(channel)
