"""Fuzzing the real gRPC server (a real RouterApp on a real redis-server) with hypothesis.

Every answer must be OK or a status the contract defines (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, UNAVAILABLE, RESOURCE_EXHAUSTED) with a message, never UNKNOWN or INTERNAL, and the
server must keep answering. Raw undecodable bytes are the one exception: grpc itself refuses them before
the servicer runs (grpc.aio answers UNKNOWN "Unexpected <class 'google.protobuf.message.DecodeError'>").
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import InProcessRouter, RedisServer, RouterProcess

DEFINED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DEFINED_CODES = {code.value[0] for code in DEFINED}
METHODS: dict[str, type[Message]] = {
    "Route": pb.RouteRequest,
    "ReportOutcome": pb.OutcomeRequest,
    "ReportOutcomes": pb.ReportOutcomesRequest,
    "RouteBatch": pb.RouteBatchRequest,
}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    database=None,
)

# -- strategies --------------------------------------------------------------------------------------

NAMES = st.sampled_from(["ranker", "ranker-v1", "ranker-v2", "ranker-v3", "missing", "", "a" * 64, "a" * 65])
HUGE = st.builds(
    lambda char, n: char * n,
    st.characters(codec="utf-8"),
    st.sampled_from([129, 513, 1025, 70_000, 1_100_000]),
)
LONG = st.one_of(st.text(min_size=100, max_size=600), HUGE)


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three times in four a plausible value, so requests get past validation to the decision, the
    signature check and Redis; otherwise a hostile one."""
    return st.integers(0, 3).flatmap(lambda k: hostile if k == 0 else valid)


EXPERIMENT = mostly(st.just("ranker"), st.one_of(NAMES, st.text(max_size=70), LONG))
UNIT = mostly(st.text(min_size=1, max_size=30), st.one_of(st.just(""), st.text(max_size=30), LONG))
DEFAULT_ARM = mostly(
    st.sampled_from(["", "ranker-v1", "fallback"]), st.one_of(NAMES, st.text(max_size=80), LONG)
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 0.5, -0.0, -1.0, 1e308, 5e-324]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    FLOATS,
    st.integers(-(2**63), 2**63),
    st.text(max_size=30),
    st.text(min_size=1000, max_size=1100),
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=70) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=80,
)
ATTRIBUTES = mostly(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(
            st.text(max_size=30), st.floats(), st.booleans(), st.lists(st.text(max_size=10), max_size=5)
        ),
        max_size=6,
    ),
    st.dictionaries(st.one_of(st.text(max_size=20), st.text(min_size=120, max_size=140)), JSON, max_size=70),
)


def to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def route_requests() -> st.SearchStrategy[pb.RouteRequest]:
    return st.builds(
        lambda experiment, unit, attributes, default: pb.RouteRequest(
            experiment=experiment, unit_id=unit, attributes=to_struct(attributes), default_arm=default
        ),
        EXPERIMENT,
        UNIT,
        ATTRIBUTES,
        DEFAULT_ARM,
    )


def _mutate(decision_id: str, position: int, char: str) -> str:
    if not decision_id:
        return char
    position %= len(decision_id)
    return decision_id[:position] + char + decision_id[position + 1 :]


def decision_ids(pool: list[str]) -> st.SearchStrategy[str]:
    b64 = st.binary(max_size=120).map(lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
    return mostly(
        st.sampled_from(pool),
        st.one_of(
            st.builds(_mutate, st.sampled_from(pool), st.integers(0, 200), st.characters(codec="utf-8")),
            st.builds(lambda a, b: f"{a}.{b}", b64, b64),
            st.builds(
                lambda payload, mac: (
                    base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode() + "." + mac
                ),
                st.text(max_size=80).map(lambda t: "1|" + t),
                b64,
            ),
            st.text(max_size=60),
            LONG,
        ),
    )


def outcome_requests(pool: list[str]) -> st.SearchStrategy[pb.OutcomeRequest]:
    return st.builds(
        lambda decision, reward, metrics: pb.OutcomeRequest(
            decision_id=decision, reward=reward, metrics=metrics
        ),
        decision_ids(pool),
        mostly(st.floats(0, 1), FLOATS),
        st.dictionaries(st.text(max_size=20), FLOATS, max_size=20),
    )


# -- checks ------------------------------------------------------------------------------------------


def answer(call: Callable[[], Any]) -> Any:
    """The reply, or None for a defined error status with a message; anything else fails."""
    try:
        return call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    assert code in DEFINED, f"{code}: {details}"
    assert details, f"{code} without a message"
    return None


def check_results(results: Any) -> Counter[int]:
    codes: Counter[int] = Counter()
    for result in results:
        codes[result.code] += 1
        if result.code:
            assert result.code in DEFINED_CODES, f"code {result.code}: {result.message}"
            assert result.message
    return codes


def still_answers(stub: router_pb2_grpc.RouterStub) -> None:
    reply = stub.Route(pb.RouteRequest(experiment="ranker", unit_id="alive"), timeout=5)
    assert reply.reason == pb.SAMPLED


def decision_pool(stub: router_pb2_grpc.RouterStub, n: int = 40) -> list[str]:
    return [
        stub.Route(pb.RouteRequest(experiment="ranker", unit_id=f"pool-{i}"), timeout=5).decision_id
        for i in range(n)
    ]


# -- the fuzz tests ----------------------------------------------------------------------------------


def test_fuzzed_requests_get_ok_or_a_defined_status_and_the_server_keeps_answering(
    router: InProcessRouter,
) -> None:
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        pool = decision_pool(stub)
        seen: Counter[str] = Counter()

        @FUZZ
        @given(request=route_requests())
        def route(request: pb.RouteRequest) -> None:
            reply = answer(lambda: stub.Route(request, timeout=10))
            seen["Route " + ("OK" if reply is not None else "error")] += 1

        @FUZZ
        @given(request=outcome_requests(pool))
        def report(request: pb.OutcomeRequest) -> None:
            reply = answer(lambda: stub.ReportOutcome(request, timeout=10))
            seen["ReportOutcome " + ("OK" if reply is not None else "error")] += 1

        @settings(FUZZ, max_examples=50)
        @given(requests=st.lists(outcome_requests(pool), max_size=30))
        def report_many(requests: list[pb.OutcomeRequest]) -> None:
            reply = answer(
                lambda: stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=requests), timeout=10)
            )
            if reply is not None:
                assert len(reply.results) == len(requests)
                seen.update(f"ReportOutcomes item {code}" for code in check_results(reply.results).elements())

        @settings(FUZZ, max_examples=50)
        @given(requests=st.lists(route_requests(), max_size=10))
        def route_many(requests: list[pb.RouteRequest]) -> None:
            reply = answer(lambda: stub.RouteBatch(pb.RouteBatchRequest(requests=requests), timeout=10))
            if reply is not None:
                assert len(reply.results) == len(requests)
                seen.update(f"RouteBatch item {code}" for code in check_results(reply.results).elements())

        for fuzz in (route, report, report_many, route_many):
            fuzz()
            still_answers(stub)
    print(f"\nfuzzed answers: {dict(sorted(seen.items()))}")


def parses(message_type: type[Message], data: bytes) -> bool:
    try:
        message_type.FromString(data)
    except DecodeError:
        return False
    return True


def fuzz_raw(channel: grpc.Channel, method: str, message_type: type[Message], outcomes: Counter[str]) -> None:
    call = channel.unary_unary(
        f"/mabrouter.v1.Router/{method}", request_serializer=None, response_deserializer=None
    )

    @settings(FUZZ, max_examples=75)
    @given(data=st.one_of(st.binary(max_size=300), st.binary(min_size=1000, max_size=5000)))
    def garbage(data: bytes) -> None:
        try:
            call(data, timeout=10)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        else:
            outcomes["OK"] += 1
            return
        if code in DEFINED:
            assert details
            outcomes[code.name] += 1
            return
        # grpc's own refusal of an undecodable message, before the servicer runs: only then.
        assert code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), details
        assert not parses(message_type, data), f"{code} for a decodable message: {details}"
        assert "DecodeError" in details or "parsing" in details
        outcomes[f"undecodable -> {code.name}"] += 1

    garbage()


def test_raw_garbage_bytes_never_break_the_server(router: InProcessRouter) -> None:
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        outcomes: Counter[str] = Counter()
        for method, message_type in METHODS.items():
            fuzz_raw(channel, method, message_type, outcomes)
            still_answers(stub)
    print(f"\nraw bytes: {dict(outcomes)}")


# -- memory ------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_over_20k_fuzzed_calls(applied_ranker: RedisServer) -> None:
    router = RouterProcess(applied_ranker.url).wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            pool = decision_pool(stub)
            corpus: list[tuple[str, Message]] = []

            @settings(FUZZ, max_examples=200)
            @given(
                st.one_of(
                    route_requests().map(lambda r: ("Route", r)),
                    outcome_requests(pool).map(lambda r: ("ReportOutcome", r)),
                    st.lists(outcome_requests(pool), max_size=10).map(
                        lambda rs: ("ReportOutcomes", pb.ReportOutcomesRequest(outcomes=rs))
                    ),
                    st.lists(route_requests(), max_size=5).map(
                        lambda rs: ("RouteBatch", pb.RouteBatchRequest(requests=rs))
                    ),
                )
            )
            def collect(item: tuple[str, Message]) -> None:
                if item[1].ByteSize() < 20_000:  # big refusals are covered above, and slow to send 20k times
                    corpus.append(item)

            collect()
            assert len(corpus) > 100
            methods = {name: getattr(stub, name) for name in METHODS}

            def run(calls: int) -> Counter[str]:
                results: Counter[str] = Counter()
                for start in range(0, calls, 200):
                    futures = [
                        methods[name].future(request, timeout=30)
                        for name, request in (corpus[i % len(corpus)] for i in range(start, start + 200))
                    ]
                    for future in futures:
                        code = future.code()
                        assert code == grpc.StatusCode.OK or code in DEFINED, f"{code}: {future.details()}"
                        results[code.name] += 1
                return results

            run(2000)  # warm up: caches, allocator arenas, metric children for the fixed label sets
            time.sleep(0.5)
            before = rss_kib(router.process.pid)
            started = time.monotonic()
            results = run(20_000)
            took = time.monotonic() - started
            time.sleep(0.5)
            after = rss_kib(router.process.pid)
            still_answers(stub)
            assert router.process.poll() is None
    finally:
        router.kill()
    growth_mib = (after - before) / 1024
    print(
        f"\nmemory: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB ({growth_mib:+.1f} MiB) over "
        f"20,000 fuzzed calls in {took:.1f}s ({len(corpus)} distinct requests): {dict(results)}"
    )
    assert growth_mib < 50
