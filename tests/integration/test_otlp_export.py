"""Spans leave a real `mabrouter serve` process over OTLP/gRPC and arrive at a real OTLP receiver.

The receiver is a grpc server implementing opentelemetry-proto's TraceService, on a free port in this test
process; it keeps every ExportTraceServiceRequest it gets. The router is configured only through the
standard OTEL_* environment variables, as an operator would configure it.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from mabrouter.v1 import router_pb2 as pb

from support import RedisServer, RouterProcess, free_port, open_stub, wait_until

ROUTE_SPAN = "mabrouter.v1.Router/Route"
OUTCOME_SPAN = "mabrouter.v1.Router/ReportOutcome"


@dataclass
class ReceivedSpan:
    name: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    attributes: dict[str, Any]
    links: list[tuple[bytes, bytes, dict[str, Any]]]
    resource: dict[str, Any]


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


def _received(span: Any, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        attributes=_attributes(span.attributes),
        links=[(link.trace_id, link.span_id, _attributes(link.attributes)) for link in span.links],
        resource=resource,
    )


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that stores what it is sent."""

    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(  # noqa: N802 - the OTLP service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            requests = list(self.requests)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    found.extend(_received(span, resource) for span in scope_spans.spans)
        return found

    def named(self, name: str, trace_id: bytes | None = None) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.name == name and (trace_id is None or s.trace_id == trace_id)]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    assert port
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


def otlp_env(port: int, schedule_delay_ms: int) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms),
    }


def traceparent(trace_id: bytes, span_id: bytes) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{trace_id.hex()}-{span_id.hex()}-01"),)


def test_route_and_outcome_spans_reach_an_otlp_receiver_with_the_link(
    applied_ranker: RedisServer, receiver: tuple[Receiver, int]
) -> None:
    collector, port = receiver
    router = RouterProcess(applied_ranker.url, **otlp_env(port, 100)).wait_serving()
    try:
        caller_trace, caller_span = secrets.token_bytes(16), secrets.token_bytes(8)
        later_trace, later_span = secrets.token_bytes(16), secrets.token_bytes(8)
        channel, router_stub = open_stub(router.address)
        with channel:
            reply = router_stub.Route(
                pb.RouteRequest(experiment="ranker", unit_id="user-9"),
                metadata=traceparent(caller_trace, caller_span),
                timeout=5,
            )
            router_stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0),
                metadata=traceparent(later_trace, later_span),
                timeout=5,
            )
        (route,) = wait_until(
            lambda: collector.named(ROUTE_SPAN, caller_trace), 15, interval=0.05, what="the Route span"
        )
        (outcome,) = wait_until(
            lambda: collector.named(OUTCOME_SPAN, later_trace), 15, interval=0.05, what="the outcome span"
        )
    finally:
        router.kill()

    assert route.parent_span_id == caller_span
    assert route.resource["service.name"] == "mabrouter"
    assert route.attributes["feature_flag.key"] == "ranker"
    assert route.attributes["feature_flag.result.variant"] == reply.arm
    assert route.attributes["feature_flag.result.reason"] == "split"
    assert route.attributes["feature_flag.context.id"] == "user-9"
    assert route.attributes["feature_flag.provider.name"] == "mabrouter"
    assert route.attributes["mabrouter.decision_id"] == reply.decision_id
    assert route.attributes["mabrouter.propensity"] == pytest.approx(reply.propensity)
    assert route.attributes["mabrouter.config_version"] == 1

    assert outcome.parent_span_id == later_span
    assert outcome.links == [(caller_trace, route.span_id, {"mabrouter.link": "decision"})]
    assert outcome.attributes["feature_flag.result.variant"] == reply.arm


def test_sigterm_flushes_spans_still_waiting_in_the_batch_processor(
    applied_ranker: RedisServer, receiver: tuple[Receiver, int]
) -> None:
    collector, port = receiver
    # A schedule delay far longer than the test: only the shutdown flush can export these spans.
    router = RouterProcess(applied_ranker.url, **otlp_env(port, 600_000)).wait_serving()
    try:
        trace_id = secrets.token_bytes(16)
        channel, router_stub = open_stub(router.address)
        with channel:
            replies = [
                router_stub.Route(
                    pb.RouteRequest(experiment="ranker", unit_id=f"u{i}"),
                    metadata=traceparent(trace_id, secrets.token_bytes(8)),
                    timeout=5,
                )
                for i in range(25)
            ]
        time.sleep(0.3)
        assert collector.named(ROUTE_SPAN, trace_id) == []  # still buffered in the router
        router.process.send_signal(signal.SIGTERM)
        assert router.process.wait(30) == 0, router.output()
    finally:
        router.kill()
    exported = collector.named(ROUTE_SPAN, trace_id)
    assert sorted(s.attributes["mabrouter.decision_id"] for s in exported) == sorted(
        r.decision_id for r in replies
    )
