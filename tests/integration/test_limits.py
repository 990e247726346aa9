"""Limits: what a caller, or an outage, can make a router hold is bounded. Oversized requests are refused
naming the limit, outcome calls are shed instead of queued, a caller's deadline is honoured during a Redis
stall, the spool refuses rather than grows, caller-supplied names create no metric series, and an outage is
logged once, not once per retry.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from mabrouter.v1 import router_pb2 as pb

from faults import (
    AOF,
    books_of,
    ranker_process,
    report_until_acknowledged,
    route,
    route_many,
    rpc_error,
    spooled_entries,
    stopped,
    timed,
)
from support import (
    InProcessRouter,
    RouterProcess,
    apply_ranker,
    free_port,
    open_stub,
    router_settings,
    running_redis,
    scrape,
    wait_until,
)

# -- requests --------------------------------------------------------------------------------------------


def test_more_than_1000_items_in_one_call_is_invalid_argument(router: InProcessRouter) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        decision = route(stub, "u")
        outcomes = [pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0)] * 1001
        error = rpc_error(lambda: stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes), timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1001 outcomes in one call; the limit is 1000" in error.details()
        requests = [pb.RouteRequest(experiment="ranker", unit_id="u")] * 1001
        error = rpc_error(lambda: stub.RouteBatch(pb.RouteBatchRequest(requests=requests), timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the limit is 1000" in error.details()
        # exactly at the limit is fine
        reply = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes[:1000]), timeout=10)
        assert [r.duplicate for r in reply.results].count(False) == 1


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@pytest.mark.parametrize(
    ("attributes", "needle"),
    [
        ({f"a{i}": i for i in range(65)}, "65 attributes sent; the limit is 64"),
        ({"s": "x" * 1025}, "'s' is 1025 characters; the limit is 1024"),
        ({"tags": ["t"] * 65}, "'tags' has 65 items; the limit is 64"),
        ({"k" * 129: 1}, "is longer than 128 characters"),
        ({"nested": {"a": 1}}, "nested objects are not supported"),
        ({"mixed": ["a", 1]}, "lists may only hold strings"),
    ],
    ids=["count", "string", "list", "key", "nested", "mixed-list"],
)
def test_oversized_or_nested_attributes_are_invalid_argument_naming_the_limit(
    router: InProcessRouter, attributes: dict[str, Any], needle: str
) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(lambda: route(stub, "u", attributes=_struct(attributes)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in error.details()
        assert route(stub, "u").reason == pb.SAMPLED  # and the next call is fine


def test_oversized_ids_are_invalid_argument_naming_the_limit(router: InProcessRouter) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(lambda: route(stub, "u" * 513))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unit_id is 513 characters; the limit is 512" in error.details()
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id="d" * 513, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "513 characters" in error.details()


def test_a_2mb_message_is_resource_exhausted(router: InProcessRouter) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(lambda: route(stub, "u" * (2 * 1024 * 1024)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in error.details()
        # ~2 MB: the size limit applies before the message is even parsed (so before the 1,000-item limit)
        outcomes = [pb.OutcomeRequest(decision_id="x" * 500, reward=1.0)] * 4000
        error = rpc_error(lambda: stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes), timeout=5))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert route(stub, "u").reason == pb.SAMPLED


# -- concurrency and deadlines ---------------------------------------------------------------------------


def test_max_concurrent_rpcs_sheds_load_instead_of_queueing() -> None:
    with ranker_process(MABROUTER_MAX_CONCURRENT_RPCS="2") as (redis_server, _router, stub):
        decisions = [route(stub, f"u{i}") for i in range(8)]
        with stopped(redis_server), ThreadPoolExecutor(9) as pool:
            slow = [
                pool.submit(
                    timed,
                    lambda d=d: stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=d.decision_id, reward=1.0), timeout=15
                    ),
                )
                for d in decisions
            ]
            time.sleep(0.3)  # the one admitted outcome call holds its slot, waiting on Redis
            during, route_error, _, route_seconds = timed(lambda: route(stub, "during"))
            results = [future.result() for future in slow]
        codes = Counter(code for _, code, _, _ in results)
        shed = [r for r in results if r[1] == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert shed
        assert all(seconds < 1.0 and details for _, _, details, seconds in shed)  # refused at once
        assert any("outcome calls already in flight" in details for _, _, details, _ in shed)
        assert codes[grpc.StatusCode.UNAVAILABLE] <= 2  # only the admitted ones waited for Redis
        assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
        # Outcome calls may take only half the slots: Route keeps the rest and is answered.
        assert route_error is None, route_error
        assert during.reason == pb.SAMPLED
        assert route_seconds < 1.0
        assert route(stub, "after").reason == pb.SAMPLED
    print(
        f"\nmax_concurrent_rpcs=2 with Redis hung: { {c.name: n for c, n in codes.items()} }; "
        f"shed in <= {max(r[3] for r in shed) * 1000:.1f} ms; Route answered in {route_seconds * 1000:.1f} ms"
    )


def test_a_caller_deadline_shorter_than_a_redis_stall_is_honoured_promptly() -> None:
    with ranker_process() as (redis_server, router, stub):
        decisions = [route(stub, f"u{i}") for i in range(21)]
        with stopped(redis_server):
            _, code, _, seconds = timed(
                lambda: stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=decisions[0].decision_id, reward=1.0), timeout=0.3
                )
            )
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert seconds < 1.0
            assert route(stub, "during").reason == pb.SAMPLED
            time.sleep(2.5)  # let the server-side call hit its Redis timeout after the caller left
        # The cancelled call left no poisoned connection: every later outcome lands on its own arm.
        replies = [report_until_acknowledged(stub, d, 1.0)[0] for d in decisions[1:]]
        assert [r.arm for r in replies] == [d.arm for d in decisions[1:]]
        retried, _ = report_until_acknowledged(stub, decisions[0], 1.0)
        assert books_of(redis_server).counts == Counter(d.arm for d in decisions)
    log = router.output()
    assert "Traceback" not in log, log
    print(
        f"\ndeadline 0.3 s during a Redis stall: DEADLINE_EXCEEDED after {seconds * 1000:.0f} ms; "
        f"the timed-out outcome, retried, was duplicate={retried.duplicate}"
    )


# -- buffers, metric series and log lines ----------------------------------------------------------------


def test_the_spool_is_bounded_and_refuses_rather_than_growing(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(
            redis_server.url, MABROUTER_SPOOL_DIR=str(spool_dir), MABROUTER_SPOOL_MAX_ENTRIES="3"
        )
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions, _ = route_many(stub, "u", 5)
                redis_server.stop(kill=True)
                for decision in decisions[:3]:
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0), timeout=5
                    )
                with pytest.raises(grpc.RpcError) as info:
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[3].decision_id, reward=1.0), timeout=5
                    )
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "3 entries, its limit" in info.value.details()
                assert spooled_entries(spool_dir) == 3
                redis_server.start()
                wait_until(lambda: spooled_entries(spool_dir) == 0, 15, what="the spool to drain")
                report_until_acknowledged(stub, decisions[3], 1.0)
                assert books_of(redis_server).counts == Counter(d.arm for d in decisions[:4])
        finally:
            router.kill()


def test_fallback_answers_do_not_create_a_metric_series_per_caller_supplied_name() -> None:
    router = InProcessRouter(router_settings(f"redis://127.0.0.1:{free_port()}/0")).start(wait_ready=False)
    try:
        channel, stub = open_stub(router.address)
        with channel:
            for i in range(2000):
                reply = stub.Route(
                    pb.RouteRequest(experiment=f"exp-{i}", unit_id="u", default_arm=f"arm-{i}"), timeout=2
                )
                assert reply.reason == pb.FALLBACK_DEFAULT
        assert router.app is not None
        series = scrape(router.app.metrics_port)
    finally:
        router.stop()
    decisions = [key for key in series if key.startswith("mabrouter_decisions_total")]
    assert len(decisions) < 100, f"{len(decisions)} mabrouter_decisions series after 2,000 fallback answers"


def test_a_redis_outage_is_logged_once_not_once_per_retry() -> None:
    with ranker_process() as (redis_server, router, stub):
        route(stub, "u")
        redis_server.stop(kill=True)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # traffic keeps a trial batch waiting to be flushed
            route(stub, "u")
            time.sleep(0.01)
    warnings = [line for line in router.output().splitlines() if " WARNING " in line]
    per_logger = Counter(line.split(" WARNING ", 1)[1].split(":", 1)[0] for line in warnings)
    print(f"\n2 s outage: {len(warnings)} WARNING lines: {dict(per_logger)}")
    assert all(count <= 3 for count in per_logger.values()), per_logger
