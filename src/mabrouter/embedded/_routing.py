"""The routing half of the in-process router: route, route_async and route_or_raise, sharing one path."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from mabrouter.client import Assignment, AttributeValue
from mabrouter.client._common import DEFAULT_TIMEOUT, check_route_arguments
from mabrouter.core.decide import NO_ATTRIBUTES, RouteInput
from mabrouter.embedded._background import LoopThread
from mabrouter.embedded._convert import assignment_of, route_attributes
from mabrouter.embedded._failopen import FailOpen
from mabrouter.errors import MabrouterError
from mabrouter.runtime.engine import Routed, RoutingEngine

T = TypeVar("T")


class NotRunningError(RuntimeError):
    """The router is not started, closed, or was started before a fork()."""


class Routing:
    """Routes through the engine of a running EmbeddedRouter, which sets these attributes."""

    # None until started, and again once closed or forked: read once per call.
    _engine: RoutingEngine | None
    _background: LoopThread | None
    _unusable: str  # why routing is not possible, while _engine is None
    _fail_open: FailOpen

    # -- routing -----------------------------------------------------------------------------------

    def route(
        self,
        experiment: str,
        unit_id: str,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        default_arm: str,
        timeout: float | None = None,
    ) -> Assignment:
        """The arm to serve, decided in this process; never raises but for an empty `default_arm` or a
        non-positive `timeout` (ValueError), as RouterClient.route.

        A caller's mistake, a router not started or closed, or anything unexpected serves `default_arm`
        with ``fallback=True``, ``reason="CLIENT_FALLBACK"`` and ``error`` set to ``"<STATUS>: ..."``
        (logged once per experiment and status). Redis does not have to answer: decisions come from the
        in-memory snapshot. Only a sticky experiment's first sight of a unit may wait on Redis, on the
        background thread, for at most `timeout` s (50 ms by default; then `default_arm`, status
        DEADLINE_EXCEEDED). In asyncio code use :meth:`route_async` for sticky experiments.
        """
        check_route_arguments(default_arm, timeout)
        waited = DEFAULT_TIMEOUT if timeout is None else timeout
        try:
            engine, request, routed = self._route_now(experiment, unit_id, attributes, default_arm)
            if routed is None:
                routed = self._wait(self._on_loop(engine.route(request)), waited)
        except NotRunningError as exc:
            return self._fail_open.unavailable(experiment, str(exc), default_arm)
        except TimeoutError:
            return self._fail_open.deadline(experiment, waited, default_arm)
        except MabrouterError as exc:
            return self._fail_open.refused(experiment, exc, default_arm)
        except Exception as exc:  # noqa: BLE001 - fail open: nothing of the router may reach the caller
            return self._fail_open.unexpected(experiment, exc, default_arm)
        return assignment_of(routed)

    async def route_async(
        self,
        experiment: str,
        unit_id: str,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        default_arm: str,
        timeout: float | None = None,
    ) -> Assignment:
        """:meth:`route` for asyncio code: a sticky experiment's lookup is awaited, never waited for."""
        check_route_arguments(default_arm, timeout)
        waited = DEFAULT_TIMEOUT if timeout is None else timeout
        try:
            engine, request, routed = self._route_now(experiment, unit_id, attributes, default_arm)
            if routed is None:  # past the deadline, wait_for cancels it, as a sidecar does a late call
                future = asyncio.wrap_future(self._on_loop(engine.route(request)))
                routed = await asyncio.wait_for(future, waited)
        except NotRunningError as exc:
            return self._fail_open.unavailable(experiment, str(exc), default_arm)
        except TimeoutError:
            return self._fail_open.deadline(experiment, waited, default_arm)
        except MabrouterError as exc:
            return self._fail_open.refused(experiment, exc, default_arm)
        except Exception as exc:  # noqa: BLE001 - fail open
            return self._fail_open.unexpected(experiment, exc, default_arm)
        return assignment_of(routed)

    def route_or_raise(
        self,
        experiment: str,
        unit_id: str,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        default_arm: str = "",
        timeout: float | None = None,
    ) -> Assignment:
        """:meth:`route` without failing open, for tools and tests that must see every refusal (as
        mabrouter.client.wire is for a sidecar). Raises the MabrouterError a sidecar answers with a
        status (an empty `default_arm` is allowed, as in a RouteRequest), TimeoutError when a sticky
        lookup outlasts `timeout`, RuntimeError when the router is not running."""
        engine, request, routed = self._route_now(experiment, unit_id, attributes, default_arm)
        if routed is None:
            routed = self._wait(
                self._on_loop(engine.route(request)), DEFAULT_TIMEOUT if timeout is None else timeout
            )
        return assignment_of(routed)

    def _route_now(
        self,
        experiment: str,
        unit_id: str,
        attributes: Mapping[str, AttributeValue] | None,
        default_arm: str,
    ) -> tuple[RoutingEngine, RouteInput, Routed | None]:
        """The engine, the request, and its decision unless the experiment is sticky (None: route it on
        the loop, where its lookup may wait on Redis)."""
        engine = self._engine
        if engine is None:
            raise NotRunningError(self._unusable)
        attributes = route_attributes(attributes) if attributes else NO_ATTRIBUTES
        request = RouteInput(experiment, unit_id, attributes, default_arm)
        return engine, request, engine.route_now(request)

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        background = self._background
        if background is None or background.is_current():
            coroutine.close()
            raise NotRunningError("called on the router's own thread, which cannot wait for itself")
        return background.submit(coroutine)

    @staticmethod
    def _wait(future: concurrent.futures.Future[T], timeout: float) -> T:
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # as a sidecar cancels a call past its deadline (recorded only if it decided)
            raise
