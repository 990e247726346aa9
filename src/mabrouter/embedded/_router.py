"""EmbeddedRouter: the router's engine in the caller's process (see the package docstring)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Final

from prometheus_client import CollectorRegistry

from mabrouter.app import decision_keys
from mabrouter.client import Assignment, AttributeValue, OutcomeReporter
from mabrouter.client._common import DEFAULT_TIMEOUT, check_route_arguments, exception_error
from mabrouter.client._delivery import Delivery, Item, call_failed, classify
from mabrouter.config import Settings
from mabrouter.core.decide import NO_ATTRIBUTES, RouteInput
from mabrouter.embedded._background import EmbeddedRuntime, LoopThread
from mabrouter.embedded._convert import assignment_of, outcome_status, route_attributes
from mabrouter.embedded._failopen import FailOpen
from mabrouter.embedded._process import track, untrack
from mabrouter.errors import InvalidRequestError, MabrouterError
from mabrouter.runtime.engine import Routed, RoutingEngine
from mabrouter.runtime.outcomes import MAX_BATCH, Outcome, OutcomeResult
from mabrouter.service.status import status_of
from mabrouter.store.connect import redact

log = logging.getLogger(__name__)

NO_METRICS: Final[Mapping[str, float]] = {}
START_TIMEOUT: Final = 5.0
OUTCOME_TIMEOUT: Final = 2.0
_BOOT_TIMEOUT: Final = 30.0  # building the runtime: no Redis round trip, only objects and a thread


class EmbeddedRouter:
    """The router's engine inside this process, sharing Redis with the sidecars. Thread-safe.

    Built from the same settings as ``mabrouter serve`` (``Settings()`` reads the ``MABROUTER_*``
    environment when `settings` is None); a missing or short decision secret raises StartupError here.
    Nothing runs until :meth:`start`; :meth:`close` flushes and stops. One per process, created and
    started after a pre-forking server forks (a router started before fork() serves only the default
    arm in the children).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        decision_keys(self.settings)  # refuse an unusable secret now, not on the first request
        self._lifecycle = threading.Lock()
        self._fail_open = FailOpen()
        self._background: LoopThread | None = None
        self._runtime: EmbeddedRuntime | None = None
        self._reporter: OutcomeReporter | None = None
        # Read once per route(): None until started, and again once closed or forked.
        self._engine: RoutingEngine | None = None
        self._unusable = "the in-process router is not started: call start()"
        self._closed = False
        self._stopped = False  # the runtime's loops ended: outcomes can no longer be applied

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> bool:
        """Start the background work and wait up to `timeout` s for the first snapshot.

        Returns whether it is loaded. Redis being down is not an error: route() serves your
        default_arm (reason FALLBACK_DEFAULT) until the snapshot loads. Starting again is a no-op;
        a closed router cannot be started again.
        """
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("this EmbeddedRouter was closed; create a new one")
            if self._runtime is None:
                self._boot()
        return self.wait_ready(timeout)

    def _boot(self) -> None:
        background = LoopThread("mabrouter-embedded")
        background.start()

        async def build() -> EmbeddedRuntime:
            runtime = EmbeddedRuntime(self.settings, asyncio.get_running_loop())
            runtime.adopt_orphaned_spools()
            runtime.start_background()
            return runtime

        try:
            runtime = background.run(build(), _BOOT_TIMEOUT)
        except BaseException:
            background.stop(5.0)
            raise
        self._background, self._runtime = background, runtime
        self._reporter = OutcomeReporter(self)
        self._engine = runtime.engine
        track(self)
        log.info("mabrouter in-process router started, redis %s", redact(self.settings.redis_url))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Wait up to `timeout` s for the first snapshot; whether it is loaded."""
        runtime = self._runtime
        return runtime is not None and runtime.loaded.wait(timeout)

    @property
    def ready(self) -> bool:
        """Whether a snapshot is loaded (until then route() serves the caller's default_arm)."""
        runtime = self._runtime
        return runtime is not None and runtime.holder.current is not None

    @property
    def target(self) -> str:
        """Where decisions are made, for messages: this process, and the Redis it shares."""
        return f"in-process ({redact(self.settings.redis_url)})"

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        """The router's Prometheus metrics (the sidecar's names), for your own /metrics; None before start."""
        return self._runtime.metrics.registry if self._runtime is not None else None

    def close(self, timeout: float = 5.0) -> bool:
        """Stop routing (route() serves default_arm from now on), deliver the outcomes report() accepted,
        flush trial counts and exposure-log entries to Redis, and stop the background thread.

        Returns True when everything accepted reached Redis (or the outcome spool) within `timeout`
        s per step; what did not is logged. Idempotent.
        """
        with self._lifecycle:
            if self._closed:
                return True
            self._closed = True
            self._engine = None
            self._unusable = "the in-process router is closed"
            background, runtime, reporter = self._background, self._runtime, self._reporter
        untrack(self)
        if background is None or runtime is None or reporter is None:
            return True
        delivered = reporter.close(timeout)  # outcomes are still applied until the runtime stops
        self._stopped = True
        try:
            background.run(runtime.stop_background(), timeout)
        except TimeoutError:  # no traceback: the time is the whole story
            log.error("mabrouter in-process router: flushing took longer than %.1f s; gave up", timeout)  # noqa: TRY400
            return False
        finally:
            background.stop(timeout)
        flushed = runtime.unflushed() == 0
        log.info("mabrouter in-process router closed")
        return delivered and flushed

    def forked(self) -> None:
        """In a child of fork(): the background threads were not copied, nothing here can run."""
        self._lifecycle = threading.Lock()  # another thread may have held it at the fork
        self._engine = None
        self._closed = self._stopped = True
        self._background = self._runtime = self._reporter = None
        self._unusable = (
            "this in-process router was started before fork(); create and start one in each worker "
            "process after the fork"
        )

    def __enter__(self) -> EmbeddedRouter:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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
        outcome = self._route_now(experiment, unit_id, attributes, default_arm)
        if not isinstance(outcome, RouteInput):
            return outcome
        background = self._background
        if background is None or background.is_current():
            return self._fail_open.unavailable(experiment, "route() on the router's own thread", default_arm)
        waited = DEFAULT_TIMEOUT if timeout is None else timeout
        future = background.submit(self._route_later(outcome))
        try:
            return future.result(waited)
        except concurrent.futures.TimeoutError:
            future.cancel()  # as a sidecar cancels a call past its deadline: nothing is recorded
            return self._fail_open.deadline(experiment, waited, default_arm)

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
        outcome = self._route_now(experiment, unit_id, attributes, default_arm)
        if not isinstance(outcome, RouteInput):
            return outcome
        background = self._background
        if background is None or background.is_current():
            return self._fail_open.unavailable(experiment, "route_async() on the router's loop", default_arm)
        waited = DEFAULT_TIMEOUT if timeout is None else timeout
        future = asyncio.wrap_future(background.submit(self._route_later(outcome)))
        try:
            return await asyncio.wait_for(future, waited)  # a timeout cancels it, as a deadline does
        except TimeoutError:
            return self._fail_open.deadline(experiment, waited, default_arm)

    def _route_now(
        self,
        experiment: str,
        unit_id: str,
        attributes: Mapping[str, AttributeValue] | None,
        default_arm: str,
    ) -> Assignment | RouteInput:
        """The assignment, unless the experiment is sticky: then the request, to route on the loop."""
        engine = self._engine
        if engine is None:
            return self._fail_open.unavailable(experiment, self._unusable, default_arm)
        try:
            request = RouteInput(
                experiment,
                unit_id,
                route_attributes(attributes) if attributes else NO_ATTRIBUTES,
                default_arm,
            )
            routed = engine.route_now(request)
        except MabrouterError as exc:
            return self._fail_open.refused(experiment, exc, default_arm)
        except Exception as exc:  # noqa: BLE001 - fail open: nothing of the router may reach the caller
            return self._fail_open.unexpected(experiment, exc, default_arm)
        return request if routed is None else assignment_of(routed)

    async def _route_later(self, request: RouteInput) -> Assignment:
        """On the loop: a sticky experiment's route (its lookup may await Redis), failing open."""
        engine, experiment, default_arm = self._engine, request.experiment, request.default_arm
        if engine is None:
            return self._fail_open.unavailable(experiment, self._unusable, default_arm)
        try:
            routed: Routed = await engine.route(request)
        except MabrouterError as exc:
            return self._fail_open.refused(experiment, exc, default_arm)
        except Exception as exc:  # noqa: BLE001 - fail open
            return self._fail_open.unexpected(experiment, exc, default_arm)
        return assignment_of(routed)

    # -- outcomes ----------------------------------------------------------------------------------

    def report(self, decision_id: str, reward: float) -> bool:
        """Buffer one outcome, as OutcomeReporter.report (never blocks; applied by a background thread,
        retried until Redis acknowledges it, counted once). False when ignored or dropped; close()
        delivers what was accepted."""
        reporter = self._reporter
        return reporter.report(decision_id, reward) if reporter is not None else False

    def record_outcomes(
        self, outcomes: Sequence[Outcome], timeout: float = OUTCOME_TIMEOUT
    ) -> list[OutcomeResult]:
        """Apply outcomes now, as ReportOutcomes: (decision id, reward, guardrail metrics) each; one
        result per outcome, in order: Accepted (applied in Redis, or spooled; `duplicate` when counted
        already) or the MabrouterError that refused it. Blocks up to `timeout` s (TimeoutError; retrying
        is safe: an outcome counts once). Raises MabrouterError when none can be applied (no snapshot
        yet, Redis unavailable without a spool), RuntimeError when the router is not running."""
        runtime, background = self._runtime, self._background
        if runtime is None or background is None or self._stopped:
            raise RuntimeError(self._unusable)
        if len(outcomes) > MAX_BATCH:
            raise InvalidRequestError(f"{len(outcomes)} outcomes in one call; the limit is {MAX_BATCH}")
        return background.run(runtime.outcomes.record(list(outcomes)), timeout)

    def deliver_outcomes(self, batch: list[Item], timeout: float) -> Delivery:
        """For an OutcomeReporter: apply `batch`, classified as a sidecar's answer would be. Never raises."""
        try:
            results = self.record_outcomes([(d, r, NO_METRICS) for d, r, _ in batch], timeout)
        except MabrouterError as exc:
            return call_failed(batch, status_of(exc), str(exc))
        except Exception as exc:  # noqa: BLE001 - not running yet, stopped, or slow: keep them, retry
            return Delivery(retry=list(batch), failure=exception_error(exc))
        return classify(batch, [outcome_status(result) for result in results])
