"""Spans for Route and ReportOutcome, with OpenTelemetry's feature-flag semantic conventions.

The caller's W3C traceparent (gRPC metadata) makes the decision span a child of the caller's span. The
decision span's ids travel inside the signed decision id, so the ReportOutcome span links to it, even
hours later. Nothing here runs when tracing is off: the servicer skips it entirely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TraceFlags

from mabrouter.core.model import Reason
from mabrouter.runtime.engine import Routed

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


class Tracing:
    def __init__(self, tracer: trace.Tracer, unit_label: Callable[[str], str]) -> None:
        self._tracer = tracer
        self._unit_label = unit_label

    @contextmanager
    def span(self, method: str, metadata: Iterable[Any] | None) -> Iterator[Span]:
        parent = propagate.extract(dict(metadata or ()))
        with self._tracer.start_as_current_span(
            f"mabrouter.v1.Router/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": "mabrouter.v1.Router", "rpc.method": method},
        ) as span:
            yield span

    def record_decision(self, span: Span, experiment: str, unit_id: str, routed: Routed) -> None:
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

    @staticmethod
    def record_outcome(span: Span, experiment: str, arm: str, duplicate: bool, decision_trace: str) -> None:
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
