"""Spans for Route and ReportOutcome, with OpenTelemetry's feature-flag semantic conventions.

The caller's W3C traceparent (gRPC metadata) makes the decision span a child of the caller's span. The
decision span's ids travel inside the signed decision id, so the ReportOutcome span links to it, even
hours later. Nothing here runs when tracing is off: the servicer skips it entirely.

Tracing never fails a call: every method here catches what the tracer, its spans or the propagator
raise, reports it to a TelemetryGuard (counted, logged once) and carries on with a non-recording span.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Literal

from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanContext, SpanKind, TraceFlags

from mabrouter.core.model import Reason
from mabrouter.runtime.engine import Routed
from mabrouter.service.guard import TelemetryGuard

# OpenTelemetry feature_flag.result.reason values for each of our reasons.
SEMCONV_REASON = {
    Reason.SAMPLED: "split",
    Reason.STICKY: "cached",
    Reason.FORCED: "targeting_match",
    Reason.NOT_TARGETED: "default",
    Reason.NOT_EXPOSED: "default",
    Reason.DENIED: "default",
    Reason.KILLED: "disabled",
    Reason.STALE_CONTROL: "stale",
    Reason.FALLBACK_DEFAULT: "error",
    Reason.HOLDOUT: "default",
}


def trace_ref(span: Span) -> str:
    """'<trace id><span id>' in hex, or '' when the span is not sampled (nothing to link to)."""
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return ""
    return f"{context.trace_id:032x}{context.span_id:016x}"


def link_to(ref: str) -> Link | None:
    if len(ref) != 48:
        return None
    try:
        context = SpanContext(int(ref[:32], 16), int(ref[32:], 16), is_remote=True, trace_flags=TraceFlags(1))
    except ValueError:
        return None
    return Link(context)


class GuardedSpan:
    """`tracer.start_as_current_span(...)` as a context manager that never raises its own exceptions:
    a tracer that cannot start a span gives INVALID_SPAN (a no-op span); one that fails while ending
    it is reported. Exceptions of the body pass through unchanged (an abort must stay an abort)."""

    __slots__ = ("_guard", "_manager", "_open")

    def __init__(self, guard: TelemetryGuard, open_span: Callable[[], Any]) -> None:
        self._guard = guard
        self._open = open_span
        self._manager: Any = None

    def __enter__(self) -> Span:
        try:
            manager = self._open()
            span: Span = manager.__enter__()
        except Exception as exc:  # noqa: BLE001 - tracing never fails a call
            self._guard.failed("tracing", exc)
            return INVALID_SPAN
        self._manager = manager
        return span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        if self._manager is None:
            return False
        try:
            self._manager.__exit__(kind, error, traceback)
        except Exception as exc:  # noqa: BLE001 - tracing never fails a call
            if exc is not error:  # the manager re-raising the body's own exception is not a failure
                self._guard.failed("tracing", exc)
        return False  # never swallow the body's exception


class Tracing:
    def __init__(
        self, tracer: trace.Tracer, unit_label: Callable[[str], str], guard: TelemetryGuard | None = None
    ) -> None:
        self._tracer = tracer
        self._unit_label = unit_label
        # Without a guard of the caller's, failures are logged but not counted.
        self._guard = guard or TelemetryGuard(None)

    def guarded_by(self, guard: TelemetryGuard) -> Tracing:
        """This tracing, reporting its failures to `guard` (the servicer's, which counts them)."""
        return Tracing(self._tracer, self._unit_label, guard)

    def span(self, method: str, metadata: Iterable[Any] | None) -> GuardedSpan:
        def open_span() -> Any:
            return self._tracer.start_as_current_span(
                f"mabrouter.v1.Router/{method}",
                context=propagate.extract(dict(metadata or ())),
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": "mabrouter.v1.Router", "rpc.method": method},
            )

        return GuardedSpan(self._guard, open_span)

    def ref(self, span: Span) -> str:
        """trace_ref(span), or '' when the span cannot tell."""
        try:
            return trace_ref(span)
        except Exception as exc:  # noqa: BLE001 - tracing never fails a call
            self._guard.failed("tracing", exc)
            return ""

    def record_decision(self, span: Span, experiment: str, unit_id: str, routed: Routed) -> None:
        try:
            decision = routed.decision
            span.set_attributes(
                {
                    "feature_flag.key": experiment,
                    "feature_flag.provider.name": "mabrouter",
                    "feature_flag.result.variant": decision.arm,
                    "feature_flag.result.reason": SEMCONV_REASON[decision.reason],
                    "feature_flag.context.id": self._unit_label(unit_id),
                    "feature_flag.version": str(decision.config_version),
                    "mabrouter.decision_id": routed.decision_id,
                    "mabrouter.reason": decision.reason.name,
                    "mabrouter.propensity": decision.propensity,
                    "mabrouter.config_version": decision.config_version,
                    "mabrouter.stale": routed.stale,
                }
            )
        except Exception as exc:  # noqa: BLE001 - tracing never fails a call
            self._guard.failed("tracing", exc)

    def record_outcome(
        self, span: Span, experiment: str, arm: str, duplicate: bool, decision_trace: str
    ) -> None:
        try:
            span.set_attributes(
                {
                    "feature_flag.key": experiment,
                    "feature_flag.result.variant": arm,
                    "mabrouter.duplicate": duplicate,
                }
            )
            link = link_to(decision_trace)
            if link is not None:
                span.add_link(link.context, {"mabrouter.link": "decision"})
        except Exception as exc:  # noqa: BLE001 - tracing never fails a call
            self._guard.failed("tracing", exc)
