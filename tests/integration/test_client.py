"""mabrouter.client against real routers (in-process and `mabrouter serve` processes) and a real Redis.

The `client` tests run twice (the `mode` fixture): a RouterClient to a sidecar, and the in-process router
(mabrouter.embedded), which offers the same calls with the same answers and the same fail-open rules.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from mabrouter.client import (
    CLIENT_FALLBACK,
    Assignment,
    AsyncRouterClient,
    OutcomeReporter,
    RouterClient,
)
from mabrouter.embedded import EmbeddedRouter
from mabrouter.v1 import router_pb2

from modes import embedded
from support import ROOT, InProcessRouter, RedisServer, RouterProcess, free_port, router_settings, wait_until

ARMS = {"ranker-v1", "ranker-v2", "ranker-v3"}
STATS = "mabrouter:{ranker}:stats"
# Generous wall-clock bound for a 50 ms fail-open: only catches "waited for a connection/retry".
FAIL_OPEN_BOUND = 1.0


def stats_by_arm(redis_server: RedisServer) -> tuple[Counter[str], dict[str, float]]:
    client = redis_server.client()
    try:
        raw = client.hgetall(STATS)
    finally:
        client.close()
    counts: Counter[str] = Counter()
    sums: dict[str, float] = {}
    for field, value in raw.items():
        arm, _, stat = field.rpartition(":")
        if stat == "count":
            counts[arm] = int(value)
        elif stat == "sum":
            sums[arm] = float(value)
    return counts, sums


def dead_address() -> str:
    """An address nobody listens on."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def client(mode: str, request: pytest.FixtureRequest) -> Iterator[RouterClient | EmbeddedRouter]:
    """A RouterClient to a sidecar serving the example, or an in-process router serving it."""
    if mode == "embedded":
        with embedded(router_settings(request.getfixturevalue("applied_ranker").url)) as router:
            yield router
        return
    sidecar: InProcessRouter = request.getfixturevalue("router")
    with RouterClient(sidecar.address, timeout=2.0) as instance:
        assert instance.wait_ready(5.0)
        yield instance


# -- route ------------------------------------------------------------------------------------------


def test_route_returns_a_real_arm_with_a_decision_id(client: RouterClient | EmbeddedRouter) -> None:
    assignment = client.route(
        "ranker",
        "user-1",
        attributes={"country": "DE", "age": 31, "score": 0.5, "premium": True, "tags": ["a", "b"]},
        default_arm="ranker-v1",
    )
    assert assignment.arm in ARMS
    assert assignment.decision_id
    assert assignment.reason == "SAMPLED"
    assert 0 < assignment.propensity <= 1
    assert assignment.config_version >= 1
    assert assignment.payload == {"endpoint": f"http://{assignment.arm}:8080"}
    assert not assignment.fallback
    assert assignment.error is None


def test_unknown_experiment_fails_open_with_the_error_and_warns_once(
    client: RouterClient | EmbeddedRouter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mabrouter.client"):
        first = client.route("no-such-experiment", "user-1", default_arm="ranker-v1")
        second = client.route("no-such-experiment", "user-2", default_arm="ranker-v1")
    for assignment in (first, second):
        assert assignment == Assignment(
            arm="ranker-v1", reason=CLIENT_FALLBACK, fallback=True, error=assignment.error
        )
        assert assignment.error is not None
        assert assignment.error.startswith("NOT_FOUND: unknown experiment 'no-such-experiment'")
    warnings = [r for r in caplog.records if "no-such-experiment" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_invalid_requests_fail_open(client: RouterClient | EmbeddedRouter) -> None:
    empty_unit = client.route("ranker", "", default_arm="ranker-v2")
    assert (empty_unit.arm, empty_unit.fallback) == ("ranker-v2", True)
    assert empty_unit.error is not None
    assert empty_unit.error.startswith("INVALID_ARGUMENT: unit_id is empty")

    nested = client.route("ranker", "u", attributes={"user": {"tier": "gold"}}, default_arm="ranker-v2")  # type: ignore[dict-item]
    assert (nested.arm, nested.fallback) == ("ranker-v2", True)
    assert nested.error is not None
    assert nested.error.startswith("INVALID_ARGUMENT: attribute 'user': dict is not supported")


def test_empty_default_arm_is_a_programming_error(client: RouterClient | EmbeddedRouter) -> None:
    with pytest.raises(ValueError, match="default_arm is empty"):
        client.route("ranker", "u", default_arm="")


def test_router_without_configuration_serves_the_callers_default_arm(mode: str) -> None:
    # A real router whose Redis is unreachable has no snapshot: it answers with the default_arm the
    # caller passed (reason FALLBACK_DEFAULT), which proves default_arm travels in the request.
    settings = router_settings(f"redis://127.0.0.1:{free_port()}/0")
    if mode == "embedded":
        in_process = EmbeddedRouter(settings)
        try:
            assert not in_process.start(timeout=0)  # Redis down is not an error: it starts unready
            assignment = in_process.route("ranker", "u", default_arm="ranker-v3")
        finally:
            in_process.close()
    else:
        instance = InProcessRouter(settings).start(wait_ready=False)
        try:
            with RouterClient(instance.address, timeout=2.0) as client:
                assignment = client.route("ranker", "u", default_arm="ranker-v3")
        finally:
            instance.stop()
    assert assignment == Assignment(arm="ranker-v3", reason="FALLBACK_DEFAULT", fallback=True)


def test_route_fails_open_fast_when_no_router_listens() -> None:
    with RouterClient(dead_address(), timeout=0.05) as client:
        for attempt in range(3):  # the first call connects; later ones meet a channel in backoff
            started = time.monotonic()
            assignment = client.route("ranker", f"user-{attempt}", default_arm="ranker-v1", timeout=0.05)
            elapsed = time.monotonic() - started
            assert elapsed < FAIL_OPEN_BOUND
            assert assignment.arm == "ranker-v1"
            assert assignment.fallback
            assert assignment.reason == CLIENT_FALLBACK
            assert (assignment.decision_id, assignment.propensity, assignment.payload) == ("", 1.0, {})
            assert assignment.error is not None
            assert assignment.error.split(":")[0] in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@contextmanager
def silent_listener() -> Iterator[str]:
    """A real TCP socket that accepts connections (kernel backlog) and never speaks HTTP/2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_route_fails_open_at_the_deadline_when_the_router_hangs() -> None:
    with silent_listener() as address, RouterClient(address) as client:
        started = time.monotonic()
        assignment = client.route("ranker", "user-1", default_arm="ranker-v1")
        elapsed = time.monotonic() - started
    assert elapsed < FAIL_OPEN_BOUND
    assert assignment.fallback
    assert assignment.error is not None
    assert assignment.error.startswith("DEADLINE_EXCEEDED")


def test_route_after_close_fails_open() -> None:
    client = RouterClient(dead_address())
    client.close()
    assignment = client.route("ranker", "u", default_arm="ranker-v1")
    assert assignment.fallback
    assert assignment.error is not None


# -- asyncio ----------------------------------------------------------------------------------------


def test_async_client_routes_and_fails_open(router: InProcessRouter) -> None:
    async def scenario() -> tuple[Assignment, Assignment, Assignment, float]:
        async with AsyncRouterClient(router.address, timeout=2.0) as client:
            assert await client.wait_ready(5.0)
            routed = await client.route(
                "ranker", "user-1", attributes={"country": "DE"}, default_arm="ranker-v1"
            )
            unknown = await client.route("no-such-experiment", "user-1", default_arm="ranker-v2")
        async with AsyncRouterClient(dead_address()) as dead:
            started = time.monotonic()
            unreachable = await dead.route("ranker", "user-1", default_arm="ranker-v3", timeout=0.05)
            elapsed = time.monotonic() - started
        return routed, unknown, unreachable, elapsed

    routed, unknown, unreachable, elapsed = asyncio.run(scenario())
    assert routed.arm in ARMS
    assert routed.decision_id
    assert routed.reason == "SAMPLED"
    assert not routed.fallback
    assert (unknown.arm, unknown.fallback) == ("ranker-v2", True)
    assert unknown.error is not None
    assert unknown.error.startswith("NOT_FOUND")
    assert (unreachable.arm, unreachable.fallback, unreachable.reason) == ("ranker-v3", True, CLIENT_FALLBACK)
    assert elapsed < FAIL_OPEN_BOUND


# -- trace propagation ------------------------------------------------------------------------------


@contextmanager
def recording_router() -> Iterator[tuple[str, list[tuple[dict[str, str], Any]]]]:
    """A tiny real gRPC server for mabrouter.v1.Router/Route that records each call's metadata."""
    calls: list[tuple[dict[str, str], Any]] = []

    def route(request: Any, context: grpc.ServicerContext) -> Any:
        calls.append(({m.key: m.value for m in context.invocation_metadata()}, request))
        if request.unit_id == "future":
            return router_pb2.RouteResponse(arm="ranker-v2", decision_id="d-2", reason=42)
        return router_pb2.RouteResponse(
            arm="ranker-v2",
            decision_id="d-1",
            reason=router_pb2.STICKY,
            propensity=0.25,
            config_version=7,
            payload={"endpoint": "http://ranker-v2:8080"},
        )

    handler = grpc.method_handlers_generic_handler(
        "mabrouter.v1.Router",
        {
            "Route": grpc.unary_unary_rpc_method_handler(
                route,
                request_deserializer=router_pb2.RouteRequest.FromString,
                response_serializer=router_pb2.RouteResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        server.stop(None)


def test_trace_context_is_sent_as_traceparent_metadata() -> None:
    tracer = TracerProvider().get_tracer("mabrouter-client-test")

    async def async_route(address: str) -> Assignment:
        async with AsyncRouterClient(address, timeout=2.0) as client:
            with tracer.start_as_current_span("async-request"):
                return await client.route("ranker", "async-user", default_arm="ranker-v1")

    with recording_router() as (address, calls), RouterClient(address, timeout=2.0) as client:
        untraced = client.route("ranker", "no-span", default_arm="ranker-v1")
        with tracer.start_as_current_span("inference-request") as span:
            assignment = client.route("ranker", "user-1", default_arm="ranker-v1")
        context = span.get_span_context()
        asyncio.run(async_route(address))
        future = client.route("ranker", "future", default_arm="ranker-v1")

    assert "traceparent" not in calls[0][0]
    assert untraced.reason == "STICKY"
    metadata, request = calls[1]
    trace_id, span_id, flags = context.trace_id, context.span_id, context.trace_flags
    assert metadata["traceparent"] == f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    assert (request.experiment, request.unit_id, request.default_arm) == ("ranker", "user-1", "ranker-v1")
    assert assignment == Assignment(
        arm="ranker-v2",
        decision_id="d-1",
        reason="STICKY",
        propensity=0.25,
        config_version=7,
        payload={"endpoint": "http://ranker-v2:8080"},
    )
    async_metadata, async_request = calls[2]
    assert async_request.unit_id == "async-user"
    assert async_metadata["traceparent"].startswith("00-")
    assert async_metadata["traceparent"] != metadata["traceparent"]
    assert future.reason == "REASON_42"  # a reason newer than this client is passed through by number


# -- outcomes ---------------------------------------------------------------------------------------


def test_reported_outcomes_are_applied_exactly_once(
    client: RouterClient | EmbeddedRouter, redis_server: RedisServer
) -> None:
    assignments = [client.route("ranker", f"user-{i}", default_arm="ranker-v1") for i in range(60)]
    assert all(a.decision_id and not a.fallback for a in assignments)
    expected_counts: Counter[str] = Counter(a.arm for a in assignments)
    expected_sums: Counter[str] = Counter()
    with OutcomeReporter(client, batch_size=25, flush_interval=0.05) as reporter:
        for i, assignment in enumerate(assignments):
            reward = float(i % 2)
            assert reporter.report(assignment.decision_id, reward)
            expected_sums[assignment.arm] += reward
        assert reporter.flush(10.0)
        first = reporter.stats()
        # Reporting the same decisions again (a caller retrying) is acknowledged as duplicates.
        for assignment in assignments:
            assert reporter.report(assignment.decision_id, 1.0)
        assert reporter.flush(10.0)
        second = reporter.stats()
    assert (first.sent, first.duplicates, first.rejected, first.pending) == (60, 0, 0, 0)
    assert (second.sent, second.duplicates, second.rejected, second.pending) == (120, 60, 0, 0)
    counts, sums = stats_by_arm(redis_server)
    assert counts == expected_counts
    assert {arm: sums.get(arm, 0.0) for arm in expected_sums} == dict(expected_sums)


def test_refused_outcomes_are_dropped_and_counted(
    client: RouterClient | EmbeddedRouter, redis_server: RedisServer
) -> None:
    valid = client.route("ranker", "user-1", default_arm="ranker-v1")
    with OutcomeReporter(client, flush_interval=0.01) as reporter:
        assert reporter.report("not-a-decision-id", 1.0)
        assert reporter.report(valid.decision_id, 2.0)  # a bernoulli reward must be in [0, 1]
        assert not reporter.report("", 1.0)  # a fallback's empty decision id: nothing to report
        assert reporter.flush(10.0)
        stats = reporter.stats()
    assert (stats.sent, stats.rejected, stats.ignored, stats.pending) == (0, 2, 1, 0)
    assert stats_by_arm(redis_server)[0] == Counter()


def test_full_buffer_refuses_outcomes_and_close_reports_the_loss() -> None:
    reporter = OutcomeReporter(dead_address(), max_buffer=5, flush_interval=0.01, max_retry_backoff=0.05)
    accepted = [reporter.report(f"id-{i}", 1.0) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert reporter.dropped_full == 3
    started = time.monotonic()
    assert not reporter.close(timeout=0.3)
    assert time.monotonic() - started < 5.0
    assert not reporter.report("id-late", 1.0)
    stats = reporter.stats()
    assert (stats.pending, stats.sent, stats.ignored) == (5, 0, 1)


def test_reporter_loses_nothing_across_a_sidecar_restart(applied_ranker: RedisServer) -> None:
    first = RouterProcess(applied_ranker.url).wait_serving()
    second: RouterProcess | None = None
    try:
        with RouterClient(first.address, timeout=2.0) as client:
            assignments = [client.route("ranker", f"user-{i}", default_arm="ranker-v1") for i in range(600)]
            assert all(a.decision_id and not a.fallback for a in assignments)
            reporter = OutcomeReporter(client, batch_size=50, flush_interval=0.02, max_retry_backoff=0.5)
            accepted: list[tuple[Assignment, float]] = []

            def report(chunk: list[Assignment], pause: float) -> None:
                for i, assignment in enumerate(chunk):
                    reward = float(i % 2)
                    if reporter.report(assignment.decision_id, reward):
                        accepted.append((assignment, reward))
                    time.sleep(pause)

            report(assignments[:300], 0)
            wait_until(lambda: reporter.sent >= 300, 20, what="the first outcomes to be acknowledged")
            # Keep reporting from another thread while the sidecar dies mid-stream.
            reporting = threading.Thread(target=report, args=(assignments[300:], 0.002))
            reporting.start()
            time.sleep(0.1)
            first.kill()
            reporting.join(30)
            pending_at_restart = reporter.pending
            assert pending_at_restart > 0  # the outage really left outcomes buffered
            second = RouterProcess(applied_ranker.url, port=first.port).wait_serving()
            assert reporter.flush(30.0), f"{reporter.pending} outcomes still pending"
            reporter.close(5.0)
        stats = reporter.stats()
    finally:
        first.kill()
        if second is not None:
            second.kill()

    assert len(accepted) == 600
    assert (stats.pending, stats.rejected, stats.dropped_full) == (0, 0, 0)
    assert stats.sent == 600 + stats.duplicates  # a retried batch may come back as duplicates
    counts, sums = stats_by_arm(applied_ranker)
    assert counts == Counter(a.arm for a, _ in accepted)  # none lost, none counted twice
    expected_sums: Counter[str] = Counter()
    for assignment, reward in accepted:
        expected_sums[assignment.arm] += reward
    assert all(math.isclose(sums.get(arm, 0.0), total) for arm, total in expected_sums.items())
    print(
        f"\nrestart: accepted={len(accepted)} buffered during the outage={pending_at_restart} "
        f"applied={sum(counts.values())} acknowledged={stats.sent} duplicates={stats.duplicates}"
    )


# -- the example ------------------------------------------------------------------------------------


def test_python_example_routes_and_reports(router: InProcessRouter, redis_server: RedisServer) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "python_client.py"),
            "--address",
            router.address,
            "--unit-id",
            "user-7",
            "--reward",
            "1",
            "--timeout",
            "2",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert '"arm": "ranker-v' in result.stdout
    counts, _ = stats_by_arm(redis_server)
    assert sum(counts.values()) == 1


def test_an_unconvertible_number_fails_open_instead_of_raising() -> None:
    """Regression: an int too large for a double raised OverflowError out of route()."""
    client = RouterClient(f"127.0.0.1:{free_port()}", timeout=0.05)
    try:
        assignment = client.route("ranker", "u", attributes={"big": 10**400}, default_arm="ranker-v1")
    finally:
        client.close()
    assert (assignment.arm, assignment.fallback) == ("ranker-v1", True)
    assert assignment.error is not None
    assert "too large" in assignment.error


def test_assignment_reports_a_fresh_snapshot_as_not_stale(router: InProcessRouter) -> None:
    with RouterClient(router.address, timeout=2.0) as client:
        assignment = client.route("ranker", "u", default_arm="ranker-v1")
    assert assignment.stale is False
    assert assignment.reason == "SAMPLED"
