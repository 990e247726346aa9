"""RouterClient: the blocking client (one Route call per request, fail-open)."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import grpc

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


class RouterClient:
    """A fail-open client for the mabrouter sidecar. Thread-safe: share one per process.

    `timeout` is the default deadline of ``route()`` in seconds (50 ms). Pass `channel` to use a
    channel you built (TLS, Unix socket, interceptors; see ``CHANNEL_OPTIONS``); the client then
    does not close it.

    Example::

        with RouterClient("127.0.0.1:50051") as client:
            assignment = client.route("ranker", "user-42", default_arm="ranker-v1")
            serve(assignment.arm, assignment.payload)
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        channel: grpc.Channel | None = None,
    ) -> None:
        check_timeout(timeout)
        self.target = target
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = (
            channel if channel is not None else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        )
        self._stub = router_pb2_grpc.RouterStub(self._channel)
        self._failures = FailureLog()

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def route(
        self,
        experiment: str,
        unit_id: str,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        default_arm: str,
        timeout: float | None = None,
    ) -> Assignment:
        """Ask the router which arm serves this request; never raises for router or transport problems.

        On any failure (deadline, router down or overloaded, unknown experiment, invalid request) the
        `default_arm` is returned with ``fallback=True``, ``reason="CLIENT_FALLBACK"`` and ``error`` set
        to ``"<STATUS>: <details>"``. Raises ValueError only for an empty `default_arm` or a
        non-positive `timeout`.
        """
        check_route_arguments(default_arm, timeout)
        try:
            request = route_request(experiment, unit_id, attributes, default_arm)
        except (TypeError, ValueError, OverflowError) as exc:
            return self._fail(
                experiment, grpc.StatusCode.INVALID_ARGUMENT, f"INVALID_ARGUMENT: {exc}", default_arm
            )
        try:
            response = self._stub.Route(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=trace_metadata(),
                wait_for_ready=False,
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return self._fail(experiment, code, status_error(code, details), default_arm)
        except Exception as exc:  # noqa: BLE001 - fail open: no router problem may reach the caller
            return self._fail(experiment, None, exception_error(exc), default_arm)
        return assignment_from(response, default_arm)

    def _fail(
        self, experiment: str, code: grpc.StatusCode | None, error: str, default_arm: str
    ) -> Assignment:
        self._failures.record(experiment, code, error, default_arm)
        return fallback_assignment(default_arm, error)

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Connect now and wait up to `timeout` s for the channel to be ready (e.g. at start-up).

        ``route()`` does not wait for a connection (its deadline is tiny); calling this once at start-up
        avoids falling back on the first requests while the connection is established.
        """
        future = grpc.channel_ready_future(self._channel)
        try:
            future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            future.cancel()
            return False
        return True

    def close(self) -> None:
        """Close the channel (unless it was passed in). Calls after close() fall back."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
