"""Telemetry never fails a call: a real router whose tracer or metrics raise still answers what the
routing logic decided, counts the failure in mabrouter_telemetry_errors{part} and logs it once.

The tracers here fail the ways real ones do: a span processor (an exporter's) raising when a span starts
or ends, a tracer object that cannot start spans, spans whose methods raise. The metrics failure is the
prometheus_client Histogram itself raising.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from prometheus_client import Counter, Gauge, Histogram

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import InProcessRouter, RedisServer, router_settings


class FailingProcessor(SpanProcessor):
    """An exporter's processor that raises when a span starts or ends (the SDK does not catch it)."""

    def __init__(self, when: str) -> None:
        self.when = when

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        if self.when == "start":
            raise RuntimeError("span processor failed on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.when == "end":
            raise RuntimeError("span processor failed on end")


class UnstartableTracer:
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer cannot start a span")


class BrokenSpan:
    """A span every method of which raises."""

    def __getattr__(self, name: str) -> Any:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"span.{name} failed")

        return broken


class BrokenSpanTracer:
    @contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[BrokenSpan]:
        yield BrokenSpan()


def sdk_tracer(when: str) -> Any:
    provider = TracerProvider()
    provider.add_span_processor(FailingProcessor(when))
    return provider.get_tracer("test")


TRACERS: dict[str, Callable[[], Any]] = {
    "processor raises on span start": lambda: sdk_tracer("start"),
    "processor raises on span end": lambda: sdk_tracer("end"),
    "start_as_current_span raises": UnstartableTracer,
    "every span method raises": BrokenSpanTracer,
}


def telemetry_errors(router: InProcessRouter, part: str) -> float:
    assert router.app is not None
    return (
        router.app.metrics.registry.get_sample_value("mabrouter_telemetry_errors_total", {"part": part})
        or 0.0
    )


def guard_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the guard logged above DEBUG."""
    return [r for r in caplog.records if r.name == "mabrouter.service.guard" and r.levelno > logging.DEBUG]


def exercise_every_rpc(address: str) -> None:
    """Answers as the routing logic decides them, successes and refusals alike."""
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        routed = [
            stub.Route(pb.RouteRequest(experiment="ranker", unit_id=f"u{i}"), timeout=5) for i in range(3)
        ]
        assert all(reply.reason == pb.SAMPLED and reply.decision_id for reply in routed)
        applied = stub.ReportOutcome(
            pb.OutcomeRequest(decision_id=routed[0].decision_id, reward=1), timeout=5
        )
        assert (applied.experiment, applied.duplicate) == ("ranker", False)
        many = stub.ReportOutcomes(
            pb.ReportOutcomesRequest(
                outcomes=[pb.OutcomeRequest(decision_id=reply.decision_id, reward=0) for reply in routed]
            ),
            timeout=5,
        )
        assert [(r.code, r.duplicate) for r in many.results] == [(0, True), (0, False), (0, False)]
        batch = stub.RouteBatch(
            pb.RouteBatchRequest(requests=[pb.RouteRequest(experiment="ranker", unit_id="b")]), timeout=5
        )
        assert batch.results[0].code == 0
        # a refusal raised inside the span stays the refusal, whatever the span does on the way out
        for request in (pb.RouteRequest(experiment="", unit_id="u"), pb.RouteRequest(experiment="missing")):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Route(request, timeout=5)
            assert refused.value.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportOutcome(pb.OutcomeRequest(decision_id="not-an-id", reward=1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_failing_tracer_never_fails_a_call_and_is_counted_and_logged_once(
    applied_ranker: RedisServer, tracer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mabrouter.service.guard")
    router = InProcessRouter(router_settings(applied_ranker.url), tracer=TRACERS[tracer]()).start()
    try:
        exercise_every_rpc(router.address)
        failures = telemetry_errors(router, "tracing")
    finally:
        router.stop()
    assert failures >= 6  # at least once per traced call
    logged = guard_lines(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]  # then at DEBUG
    assert logged[0].exc_info is not None
    assert "mabrouter_telemetry_errors" in logged[0].getMessage()


def test_failing_latency_metrics_never_fail_a_call(
    applied_ranker: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Histogram, amount: float, exemplar: Any = None) -> None:
        raise ValueError("histogram failed")

    monkeypatch.setattr(Histogram, "observe", broken)
    caplog.set_level(logging.INFO, logger="mabrouter.service.guard")
    router = InProcessRouter(router_settings(applied_ranker.url)).start()
    try:
        exercise_every_rpc(router.address)
        failures = telemetry_errors(router, "metrics")
    finally:
        router.stop()
    assert failures == 8  # each call observes its latency: Route x5 (refusals too), ReportOutcome(s) x3
    assert len(guard_lines(caplog)) == 1


def test_a_failing_bad_requests_counter_still_refuses_with_invalid_argument(
    router: InProcessRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Counter, amount: float = 1, exemplar: Any = None) -> None:
        raise ValueError("counter failed")

    with grpc.insecure_channel(router.address) as channel:
        call = channel.unary_unary("/mabrouter.v1.Router/Route")
        with monkeypatch.context() as patched:
            patched.setattr(Counter, "inc", broken)
            with pytest.raises(grpc.RpcError) as refused:
                call(b"\xff\xff\xff\xff", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = router_pb2_grpc.RouterStub(channel).Route(
            pb.RouteRequest(experiment="ranker", unit_id="u"), timeout=5
        )
        assert reply.reason == pb.SAMPLED


def test_every_metric_raising_never_fails_a_call(
    applied_ranker: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Counters and gauges too (decisions, outcomes, rewards, refusals, the fallback path): the calls
    answer as decided, outcomes are applied once, and the failure is logged once."""

    def broken(self: Any, amount: float = 1, exemplar: Any = None) -> None:
        raise ValueError("metrics failed")

    monkeypatch.setattr(Counter, "inc", broken)
    monkeypatch.setattr(Gauge, "inc", broken)
    caplog.set_level(logging.INFO, logger="mabrouter.runtime.metrics")
    router = InProcessRouter(router_settings(applied_ranker.url)).start()
    try:
        exercise_every_rpc(router.address)
        time.sleep(0.1)  # the recording timer (5 ms) and a flush (20 ms) ran, counting decisions
        stats = applied_ranker.client().hgetall("mabrouter:{ranker}:stats")
        assert sum(float(v) for k, v in stats.items() if k.endswith(":trials")) == 4  # 3 Route + 1 batch
    finally:
        router.stop()
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    logged = [
        r for r in caplog.records if r.name == "mabrouter.runtime.metrics" and r.levelno > logging.DEBUG
    ]
    assert len(logged) == 1, [r.getMessage() for r in logged]
