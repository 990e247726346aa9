"""Hostile requests at the wire, against real routers on a real redis-server.

Bytes that do not decode (invalid UTF-8 in a string field, a Struct nested past protobuf's depth limit,
garbage) and signed decision ids whose fields are not what routers write each get INVALID_ARGUMENT with
a message naming the problem, on every RPC -- not UNKNOWN, which grpc answers when the deserializer
raises. Refusals are counted in mabrouter_bad_requests{method,kind} and logged at most once per kind per
minute, without a traceback.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import InProcessRouter, RedisServer, RouterProcess
from wire import METHODS, field, nested_struct, resign

INVALID_UTF8 = {
    "Route": field(1, b"ranker") + field(2, b"user-\xff\xfe"),
    "RouteBatch": field(1, field(1, b"ranker") + field(2, b"\xc3(")),
    "ReportOutcome": field(1, b"\xed\xa0\x80"),  # a UTF-16 surrogate, encoded as if it were UTF-8
    "ReportOutcomes": field(1, field(1, b"id-\x80")),
}
TOO_DEEP = {
    "Route": field(1, b"ranker") + field(2, b"u") + field(3, nested_struct(40)),
    "RouteBatch": field(1, field(1, b"ranker") + field(3, nested_struct(40))),
}
GARBAGE = {
    "Route": b"\xff\xff\xff\xff",
    "RouteBatch": b"\x0a\x05ab",  # a field longer than the message
    "ReportOutcome": b"\x7b" * 150 + b"\x7c" * 150,  # groups nested past the limit
    "ReportOutcomes": bytes(range(256)),
}
CASES = [
    *((method, data, "invalid_utf8", "not UTF-8") for method, data in INVALID_UTF8.items()),
    *((method, data, "too_deep", "nested deeper than") for method, data in TOO_DEEP.items()),
    *((method, data, "malformed", "not a protobuf encoding") for method, data in GARBAGE.items()),
]


def raw_call(channel: grpc.Channel, method: str, data: bytes) -> grpc.RpcError | bytes:
    call = channel.unary_unary(f"/mabrouter.v1.Router/{method}")
    try:
        reply: bytes = call(data, timeout=10)
    except grpc.RpcError as exc:
        return exc
    return reply


def still_routes(channel: grpc.Channel) -> None:
    reply = router_pb2_grpc.RouterStub(channel).Route(
        pb.RouteRequest(experiment="ranker", unit_id="u"), timeout=5
    )
    assert reply.reason == pb.SAMPLED


def bad_requests(router: InProcessRouter, method: str, kind: str) -> float:
    assert router.app is not None
    registry = router.app.metrics.registry
    return registry.get_sample_value("mabrouter_bad_requests_total", {"method": method, "kind": kind}) or 0.0


@pytest.mark.parametrize(("method", "data", "kind", "message"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_undecodable_bytes_get_invalid_argument_naming_the_problem(
    router: InProcessRouter, method: str, data: bytes, kind: str, message: str
) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the point: these bytes do not decode
        METHODS[method].FromString(data)
    with grpc.insecure_channel(router.address) as channel:
        error = raw_call(channel, method, data)
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        details = error.details() or ""
        assert details.startswith(f"request is not a valid {METHODS[method].DESCRIPTOR.full_name}: ")
        assert message in details
        assert bad_requests(router, method, kind) == 1
        still_routes(channel)


def test_undecodable_requests_are_counted_each_and_logged_once_a_minute_per_kind(
    router: InProcessRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(router.address) as channel:
        for _ in range(25):
            raw_call(channel, "Route", INVALID_UTF8["Route"])
        for _ in range(5):
            raw_call(channel, "ReportOutcome", INVALID_UTF8["ReportOutcome"])
        for _ in range(10):
            raw_call(channel, "RouteBatch", GARBAGE["RouteBatch"])
        still_routes(channel)
    assert bad_requests(router, "Route", "invalid_utf8") == 25
    assert bad_requests(router, "ReportOutcome", "invalid_utf8") == 5
    assert bad_requests(router, "RouteBatch", "malformed") == 10
    refusal_lines = [r.getMessage() for r in caplog.records if "refused a malformed" in r.getMessage()]
    assert len(refusal_lines) == 2, refusal_lines  # one per kind: invalid_utf8, malformed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "no tracebacks"


def test_ordinary_refusals_are_counted_by_method_and_kind_and_successes_are_not(
    router: InProcessRouter,
) -> None:
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for _ in range(3):
            still_routes(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Route(pb.RouteRequest(experiment="", unit_id="u"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        batch = stub.RouteBatch(
            pb.RouteBatchRequest(requests=[pb.RouteRequest(experiment="bad name")]), timeout=5
        )
        assert batch.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportOutcome(pb.OutcomeRequest(decision_id="not-an-id", reward=1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        many = stub.ReportOutcomes(
            pb.ReportOutcomesRequest(outcomes=[pb.OutcomeRequest(decision_id="x.y", reward=1)]), timeout=5
        )
        assert many.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad_requests(router, "Route", "invalid_value") == 1
    assert bad_requests(router, "RouteBatch", "invalid_value") == 1
    assert bad_requests(router, "ReportOutcome", "decision_id") == 1
    assert bad_requests(router, "ReportOutcomes", "decision_id") == 1


# -- signed decision ids with a field altered --------------------------------------------------------------


ALTERED = [
    (3, "x", "config_version"),  # was UNKNOWN: invalid literal for int()
    (4, "1.7e12", "issued_ms"),
    (4, "16725225600000", "future"),  # the year 2500: was accepted with a seen-marker TTL of ~15e9 s
    (5, "", "nonce"),
    (6, "3", "flags"),
    (1, "ranker\t", "experiment"),
    (2, "../ranker-v1", "arm"),
]


@pytest.mark.parametrize(("index", "value", "named"), ALTERED, ids=[a[2] for a in ALTERED])
def test_a_signed_decision_id_with_an_altered_field_is_invalid_argument_naming_it(
    router: InProcessRouter, applied_ranker: RedisServer, index: int, value: str, named: str
) -> None:
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        decision_id = stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u1"), timeout=5).decision_id
        forged = resign(decision_id, [None] * index + [value.encode()])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=forged, reward=1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in (refused.value.details() or "")
        many = stub.ReportOutcomes(
            pb.ReportOutcomesRequest(outcomes=[pb.OutcomeRequest(decision_id=forged, reward=1)]), timeout=5
        )
        assert many.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert named in many.results[0].message
        # the untouched id is still good: only the altered field made the difference
        assert not stub.ReportOutcome(
            pb.OutcomeRequest(decision_id=decision_id, reward=1), timeout=5
        ).duplicate
    client = applied_ranker.client()
    ttls = [client.ttl(key) for key in client.scan_iter("mabrouter:{ranker}:seen:*")]
    client.close()
    assert ttls, "the genuine outcome left its seen marker"
    assert max(ttls) <= router.settings.decision_ttl_seconds + 1  # nothing outlives a decision's life


# -- a real router process: statuses, and what it writes to its log -----------------------------------------


def test_a_router_process_refuses_hostile_bytes_and_logs_one_line_per_kind(
    applied_ranker: RedisServer,
) -> None:
    router = RouterProcess(applied_ranker.url).wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            for method, data, _, _ in CASES * 10:
                error = raw_call(channel, method, data)
                assert isinstance(error, grpc.RpcError)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            still_routes(channel)
    finally:
        router.terminate()
    output = router.output()
    assert output.count("refused a malformed") == 3, output  # invalid_utf8, too_deep, malformed
    assert "Traceback" not in output
    assert "DecodeError" not in output
