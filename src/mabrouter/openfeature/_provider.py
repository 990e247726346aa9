"""MabrouterProvider: the OpenFeature provider (see the package docstring for the conventions)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, TypeAlias

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from mabrouter.client import OutcomeReporter, RouterClient
from mabrouter.openfeature._mapping import (
    DECISION_ID,
    WarnOnce,
    error_details,
    log,
    resolution,
    route_attributes,
    type_mismatch,
)

if TYPE_CHECKING:  # importing the in-process router loads the whole runtime: only when one is used
    from mabrouter.config import Settings
    from mabrouter.embedded import EmbeddedRouter

# What evaluations go through: a sidecar client, or the router in this process.
Router: TypeAlias = "RouterClient | EmbeddedRouter"


class MabrouterProvider(AbstractProvider):
    """OpenFeature provider backed by a mabrouter sidecar or an in-process router. Thread-safe: register
    one per process.

    Pass a :class:`RouterClient` or a started :class:`~mabrouter.embedded.EmbeddedRouter` to share it
    (the provider never closes it), or let the provider create a RouterClient for `target` with a
    `timeout` (seconds) per evaluation, or (:meth:`in_process`) an EmbeddedRouter of its own, as
    flagd's provider has an in-process resolver. Pass an :class:`OutcomeReporter` for ``track``
    (flushed, not closed, at shutdown), or let the provider create one on the first ``track``.
    ``initialize`` waits up to `ready_timeout` seconds for the connection (or the first snapshot); an
    unreachable router or Redis is logged, not raised: the provider is READY and evaluations fail open
    until the router answers.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options of a public constructor, as OpenFeature providers take them
        self,
        client: Router | None = None,
        *,
        target: str = "127.0.0.1:50051",
        timeout: float = 0.05,
        reporter: OutcomeReporter | None = None,
        ready_timeout: float = 1.0,
        flush_timeout: float = 5.0,
        tracking_events: Collection[str] | None = None,
    ) -> None:
        super().__init__()
        self._owns_client = client is None
        self._new_client: Callable[[], Router] = lambda: RouterClient(target, timeout=timeout)
        self._client = client if client is not None else self._new_client()
        self._owns_reporter = reporter is None
        self._reporter = reporter
        self.ready_timeout = ready_timeout
        self.flush_timeout = flush_timeout
        self.tracking_events = frozenset(tracking_events) if tracking_events is not None else None
        self._lock = threading.Lock()
        self._closed = False
        self._dropped_attributes = WarnOnce()
        self._bad_events = WarnOnce()

    @classmethod
    def in_process(
        cls,
        settings: Settings | None = None,
        *,
        reporter: OutcomeReporter | None = None,
        ready_timeout: float = 5.0,
        flush_timeout: float = 5.0,
        tracking_events: Collection[str] | None = None,
    ) -> MabrouterProvider:
        """A provider deciding in this process: an EmbeddedRouter of its own (MABROUTER_* settings when
        `settings` is None), started by ``initialize`` and closed by ``shutdown``. Create it after a
        pre-forking server forks."""
        from mabrouter.embedded import EmbeddedRouter  # noqa: PLC0415 - only in-process providers need it

        def new_router() -> Router:
            return EmbeddedRouter(settings)

        provider = cls(
            new_router(),
            reporter=reporter,
            ready_timeout=ready_timeout,
            flush_timeout=flush_timeout,
            tracking_events=tracking_events,
        )
        provider._owns_client = True
        provider._new_client = new_router
        return provider

    @property
    def client(self) -> Router:
        return self._client

    def get_metadata(self) -> Metadata:
        return Metadata(name="mabrouter")

    # -- lifecycle ---------------------------------------------------------------------------------

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        with self._lock:
            if self._closed and self._owns_client:  # registered again after a shutdown
                self._client = self._new_client()
            self._closed = False
            client = self._client
        if isinstance(client, RouterClient):
            ready = client.wait_ready(self.ready_timeout)
        else:  # an in-process router: the provider starts its own; one passed in was started by its owner
            ready = (
                client.start(self.ready_timeout)
                if self._owns_client
                else client.wait_ready(self.ready_timeout)
            )
        if not ready:
            log.warning(
                "mabrouter: the router at %s is not reachable yet; flags serve their default values "
                "until it is",
                client.target,
            )

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            reporter = self._reporter
            if self._owns_reporter:
                self._reporter = None
        if reporter is not None:
            if self._owns_reporter:
                reporter.close(self.flush_timeout)
            else:
                reporter.flush(self.flush_timeout)
        if self._owns_client:
            self._client.close()

    # -- evaluation --------------------------------------------------------------------------------

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        if evaluation_context is None or not evaluation_context.targeting_key:
            return error_details(
                default_value,
                ErrorCode.TARGETING_KEY_MISSING,
                "set EvaluationContext.targeting_key to the user, session or request id being routed",
            )
        if not default_value:
            return error_details(default_value, ErrorCode.GENERAL, "the default value must name an arm")
        attributes = route_attributes(evaluation_context.attributes, self._dropped_attributes)
        assignment = self._client.route(
            flag_key, evaluation_context.targeting_key, attributes=attributes, default_arm=default_value
        )
        return resolution(assignment)

    async def resolve_string_details_async(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        client = self._client
        if isinstance(client, RouterClient):
            # The blocking call waits up to `timeout`: keep it off the event loop.
            return await asyncio.to_thread(
                self.resolve_string_details, flag_key, default_value, evaluation_context
            )
        if evaluation_context is None or not evaluation_context.targeting_key or not default_value:
            return self.resolve_string_details(flag_key, default_value, evaluation_context)
        attributes = route_attributes(evaluation_context.attributes, self._dropped_attributes)
        assignment = await client.route_async(
            flag_key, evaluation_context.targeting_key, attributes=attributes, default_arm=default_value
        )
        return resolution(assignment)

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return type_mismatch(default_value, "boolean")

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return type_mismatch(default_value, "integer")

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return type_mismatch(default_value, "float")

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return type_mismatch(default_value, "object")

    # -- tracking ----------------------------------------------------------------------------------

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        if self.tracking_events is not None and tracking_event_name not in self.tracking_events:
            return
        attributes = tracking_event_details.attributes if tracking_event_details is not None else {}
        decision_id = attributes.get(DECISION_ID)
        if not isinstance(decision_id, str):
            self._bad_events(
                tracking_event_name,
                "mabrouter: track(%r) has no string %r in TrackingEventDetails.attributes: ignored "
                "(pass flag_metadata[%r] from the evaluation; logged once per event name)",
                tracking_event_name,
                DECISION_ID,
                DECISION_ID,
            )
            return
        if not decision_id:  # the evaluation fell back: there is nothing to attribute
            return
        value = tracking_event_details.value if tracking_event_details is not None else None
        reporter = self._tracking_reporter()
        if reporter is not None:
            reporter.report(decision_id, 1.0 if value is None else value)

    def _tracking_reporter(self) -> OutcomeReporter | None:
        with self._lock:
            if self._closed:
                self._bad_events(
                    "\0shutdown", "mabrouter: track() after shutdown: outcomes are ignored (logged once)"
                )
                return None
            if self._reporter is None:
                self._reporter = OutcomeReporter(self._client)
            return self._reporter
