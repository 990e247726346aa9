"""AsyncRouterClient: the asyncio (grpc.aio) client, same API and fail-open behaviour as RouterClient."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType

import grpc
import grpc.aio

from mabrouter.client._common import (
    CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    Assignment,
    AttributeValue,
    FailureLog,
    assignment_from,
    check_route_arguments,
    check_timeout,
    exception_error,
    fallback_assignment,
    route_request,
    status_error,
    trace_metadata,
)
from mabrouter.v1 import router_pb2_grpc


class AsyncRouterClient:
    """The asyncio variant of :class:`RouterClient`. Create it inside the running event loop.

    Example::

        async with AsyncRouterClient("127.0.0.1:50051") as client:
            assignment = await client.route("ranker", "user-42", default_arm="ranker-v1")
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        check_timeout(timeout)
        self.target = target
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = (
            channel if channel is not None else grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        )
        self._stub = router_pb2_grpc.RouterStub(self._channel)
        self._failures = FailureLog()

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def route(
        self,
        experiment: str,
        unit_id: str,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        default_arm: str,
        timeout: float | None = None,
    ) -> Assignment:
        """Ask the router which arm serves this request; never raises for router or transport problems.

        Same contract as :meth:`RouterClient.route`. Cancelling the awaiting task still cancels it.
        """
        check_route_arguments(default_arm, timeout)
        try:
            request = route_request(experiment, unit_id, attributes, default_arm)
        except (TypeError, ValueError, OverflowError) as exc:
            return self._fail(
                experiment, grpc.StatusCode.INVALID_ARGUMENT, f"INVALID_ARGUMENT: {exc}", default_arm
            )
        try:
            response = await self._stub.Route(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=trace_metadata(),
                wait_for_ready=False,
            )
        except grpc.aio.AioRpcError as exc:
            return self._fail(experiment, exc.code(), status_error(exc.code(), exc.details()), default_arm)
        except Exception as exc:  # noqa: BLE001 - fail open: no router problem may reach the caller
            return self._fail(experiment, None, exception_error(exc), default_arm)
        return assignment_from(response, default_arm)

    def _fail(
        self, experiment: str, code: grpc.StatusCode | None, error: str, default_arm: str
    ) -> Assignment:
        self._failures.record(experiment, code, error, default_arm)
        return fallback_assignment(default_arm, error)

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        """Connect now and wait up to `timeout` s for the channel to be ready (e.g. at start-up)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close the channel (unless it was passed in). Calls after close() fall back."""
        if self._owns_channel:
            await self._channel.close(None)

    async def __aenter__(self) -> AsyncRouterClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
