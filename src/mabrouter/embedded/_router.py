"""EmbeddedRouter: the router's engine in the caller's process (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Final

from prometheus_client import CollectorRegistry

from mabrouter.app import decision_keys
from mabrouter.client import OutcomeReporter
from mabrouter.client._common import exception_error
from mabrouter.client._delivery import Delivery, Item, call_failed, classify
from mabrouter.config import Settings
from mabrouter.embedded._background import EmbeddedRuntime, LoopThread
from mabrouter.embedded._convert import outcome_status
from mabrouter.embedded._failopen import FailOpen
from mabrouter.embedded._process import track, untrack
from mabrouter.embedded._routing import NotRunningError, Routing
from mabrouter.errors import InvalidRequestError, MabrouterError
from mabrouter.runtime.engine import RoutingEngine
from mabrouter.runtime.outcomes import MAX_BATCH, Outcome, OutcomeResult
from mabrouter.service.status import status_of
from mabrouter.store.connect import redact

log = logging.getLogger(__name__)

NO_METRICS: Final[Mapping[str, float]] = {}
START_TIMEOUT: Final = 5.0
OUTCOME_TIMEOUT: Final = 2.0
_BOOT_TIMEOUT: Final = 30.0  # building the runtime: no Redis round trip, only objects and a thread


class EmbeddedRouter(Routing):
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
            booted = self._runtime is None
            if booted:
                self._boot()
        ready = self.wait_ready(timeout)
        if booted and not ready:
            log.warning(
                "mabrouter in-process router: no snapshot within %.1f s (is Redis at %s reachable?); "
                "route() serves your default_arm until one loads",
                timeout,
                redact(self.settings.redis_url),
            )
        return ready

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
            raise NotRunningError(self._unusable)
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
