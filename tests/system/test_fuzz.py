"""Fuzzing the real gRPC server (a real RouterApp on a real redis-server) with hypothesis.

Every answer must be OK or a status the contract defines (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, UNAVAILABLE, RESOURCE_EXHAUSTED) with a message, never UNKNOWN or INTERNAL, and the
server must keep answering -- and obeying operators: after the fuzzing, a kill switch set on another
experiment directly in Redis is obeyed by Route within a second. This holds for raw bytes too: bytes that
do not decode as the method's request get INVALID_ARGUMENT naming the problem. Well-formed requests carry
extreme values (rewards and metrics of 1e308, -1e308, 5e-324, 1e200, NaN, inf; huge metrics maps) and
decision ids whose fields are altered and signed again with the routers' secret, as a holder of a leaked
secret could send them.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import (
    InProcessRouter,
    RedisServer,
    RouterProcess,
    apply_experiments,
    router_settings,
    wait_until,
)
from wire import b64, field, nested_struct, resign

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

# -- the experiments fuzzed: bernoulli, gaussian with guardrails, and a bystander to kill afterwards -----

GAUSS: dict[str, Any] = {
    "name": "gauss",
    "reward": "gaussian",  # any finite reward is an ordinary one: where extreme values reach Redis
    "control": "gauss-a",
    "arms": [{"name": "gauss-a"}, {"name": "gauss-b"}],
    "guardrails": [
        {"metric": "latency_ms", "kind": "mean", "max_value": 1e9},
        {"metric": "error", "kind": "rate", "max_increase": 0.05},
    ],
}
BYSTANDER: dict[str, Any] = {
    "name": "bystander",
    "reward": "bernoulli",
    "control": "by-a",
    "arms": [{"name": "by-a"}, {"name": "by-b"}],
}


@pytest.fixture
def fuzzed(applied_ranker: RedisServer, tmp_path: Path) -> Iterator[tuple[InProcessRouter, RedisServer]]:
    """A real router serving ranker (bernoulli), gauss (gaussian, guardrails) and bystander."""
    apply_experiments(applied_ranker.url, tmp_path, GAUSS, BYSTANDER)
    with InProcessRouter(router_settings(applied_ranker.url)).start() as router:
        yield router, applied_ranker


def kill_of_another_experiment_is_obeyed_within_1s(router: InProcessRouter, redis: RedisServer) -> float:
    """What an operator does in an incident, after the fuzzing: kill the bystander in Redis directly
    (HSET, as the README documents it) and expect every Route to serve its control within a second."""
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)

        def reason() -> int:
            return stub.Route(pb.RouteRequest(experiment="bystander", unit_id="operator"), timeout=5).reason

        assert reason() == pb.SAMPLED
        client = redis.client()
        client.hset("mabrouter:{bystander}:control", "kill", "1")
        client.close()
        started = time.monotonic()
        wait_until(lambda: reason() == pb.KILLED, 1.0, what="the bystander's kill to be obeyed")
        return time.monotonic() - started


# -- strategies --------------------------------------------------------------------------------------

NAMES = st.sampled_from(
    ["ranker", "ranker-v1", "ranker-v2", "ranker-v3", "gauss", "missing", "", "a" * 64, "a" * 65]
)
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


EXPERIMENT = mostly(st.sampled_from(["ranker", "gauss"]), st.one_of(NAMES, st.text(max_size=70), LONG))
UNIT = mostly(st.text(min_size=1, max_size=30), st.one_of(st.just(""), st.text(max_size=30), LONG))
DEFAULT_ARM = mostly(
    st.sampled_from(["", "ranker-v1", "fallback"]), st.one_of(NAMES, st.text(max_size=80), LONG)
)
# The values the issue names, and their neighbours: what overflows a square, a sum, or nothing at all.
EXTREME = st.sampled_from(
    [
        1e308,
        -1e308,
        5e-324,
        -5e-324,
        1e200,
        -1e200,
        1e154,
        1e101,
        1e100,
        -1e100,
        math.nan,
        math.inf,
        -math.inf,
    ]
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 0.5, -0.0, -1.0]),
    EXTREME,
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


FIELD_VALUES = st.one_of(
    st.sampled_from(
        [b"", b"0", b"-1", b"1e3", b"1_000", b" 7", b"x", b"2", b"3", b"255", b"9" * 19, b"\xff", b"\xc3("]
        + [str(int(time.time() * 1000) + offset).encode() for offset in (-(10**11), 10**6, 10**9)]
        + [b"16725225600000", b"ranker", b"gauss", b"gauss-b", b"0123456789abcdef" * 3, b"A" * 48]
    ),
    st.text(max_size=40).map(str.encode),
    st.binary(max_size=20),
)


def resigned_ids(pool: list[str]) -> st.SearchStrategy[str]:
    """Real ids with some or all of their fields altered (one in four per field), re-signed."""
    altered = st.integers(0, 3).flatmap(lambda k: FIELD_VALUES if k == 0 else st.none())
    return st.builds(resign, st.sampled_from(pool), st.lists(altered, min_size=7, max_size=10))


def decision_ids(pool: list[str]) -> st.SearchStrategy[str]:
    b64_text = st.binary(max_size=120).map(b64)
    return mostly(
        st.sampled_from(pool),
        st.one_of(
            resigned_ids(pool),
            st.builds(_mutate, st.sampled_from(pool), st.integers(0, 200), st.characters(codec="utf-8")),
            st.builds(lambda a, b: f"{a}.{b}", b64_text, b64_text),
            st.builds(
                lambda payload, mac: b64(payload.encode()) + "." + mac,
                st.text(max_size=80).map(lambda t: "1|" + t),
                b64_text,
            ),
            st.text(max_size=60),
            LONG,
        ),
    )


METRICS = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(["latency_ms", "error"]), st.text(max_size=20)), FLOATS, max_size=20
    ),
    # huge maps: beyond the 16-metric limit, up to what fits in a 1 MiB message
    st.builds(
        lambda n, value: {f"m{i}": value for i in range(n)}, st.sampled_from([17, 1000, 20_000]), FLOATS
    ),
)


def outcome_requests(pool: list[str]) -> st.SearchStrategy[pb.OutcomeRequest]:
    return st.builds(
        lambda decision, reward, metrics: pb.OutcomeRequest(
            decision_id=decision, reward=reward, metrics=metrics
        ),
        decision_ids(pool),
        st.one_of(st.floats(0, 1), EXTREME, FLOATS),
        METRICS,
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
    # Redis is up throughout: UNAVAILABLE would be a store error in disguise (a script refusing a value
    # half-way), answered "retry it" for what no retry can fix.
    assert code != grpc.StatusCode.UNAVAILABLE, f"{code} with Redis up: {details}"
    return None


def check_results(results: Any) -> Counter[int]:
    codes: Counter[int] = Counter()
    for result in results:
        codes[result.code] += 1
        if result.code:
            assert result.code in DEFINED_CODES, f"code {result.code}: {result.message}"
            assert result.code != grpc.StatusCode.UNAVAILABLE.value[0], f"with Redis up: {result.message}"
            assert result.message
    return codes


def stored_statistics_are_finite(redis: RedisServer) -> None:
    """Whatever the fuzzing applied, every stored sufficient statistic is still a finite number: the
    next refresh can use it, and so can every router started later."""
    client = redis.client()
    for experiment in ("ranker", "gauss"):
        for field_name, text in client.hgetall(f"mabrouter:{{{experiment}}}:stats").items():
            assert math.isfinite(float(text)), f"{experiment} stats {field_name} = {text}"
    client.close()


def still_answers(stub: router_pb2_grpc.RouterStub) -> None:
    reply = stub.Route(pb.RouteRequest(experiment="ranker", unit_id="alive"), timeout=5)
    assert reply.reason == pb.SAMPLED


def decision_pool(
    stub: router_pb2_grpc.RouterStub, n: int = 40, experiments: tuple[str, ...] = ("ranker",)
) -> list[str]:
    return [
        stub.Route(pb.RouteRequest(experiment=experiment, unit_id=f"pool-{i}"), timeout=5).decision_id
        for experiment in experiments
        for i in range(n)
    ]


# -- the fuzz tests ----------------------------------------------------------------------------------


def test_fuzzed_requests_get_ok_or_a_defined_status_and_a_kill_is_still_obeyed(
    fuzzed: tuple[InProcessRouter, RedisServer],
) -> None:
    router, redis = fuzzed
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        pool = decision_pool(stub, 20, ("ranker", "gauss"))
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
    stored_statistics_are_finite(redis)
    took = kill_of_another_experiment_is_obeyed_within_1s(router, redis)
    print(f"\nfuzzed answers: {dict(sorted(seen.items()))}; bystander killed in {took:.2f} s")


def parses(message_type: type[Message], data: bytes) -> bool:
    try:
        message_type.FromString(data)
    except DecodeError:
        return False
    return True


def _flip(data: bytes, position: int, value: int) -> bytes:
    if not data:
        return bytes([value])
    position %= len(data)
    return data[:position] + bytes([value]) + data[position + 1 :]


# Per method: bytes in its string fields (invalid UTF-8 as often as not), and Structs nested around
# protobuf's depth limit where the request has one.
STRING_BYTES = st.binary(min_size=1, max_size=12).map(lambda raw: raw + b"\xff" if raw.isascii() else raw)
STRINGS_AS_BYTES: dict[str, st.SearchStrategy[bytes]] = {
    "Route": st.builds(field, st.sampled_from([1, 2, 4]), STRING_BYTES),
    "RouteBatch": STRING_BYTES.map(lambda raw: field(1, field(2, raw))),
    "ReportOutcome": STRING_BYTES.map(lambda raw: field(1, raw)),
    "ReportOutcomes": STRING_BYTES.map(lambda raw: field(1, field(1, raw))),
}
DEEP = st.integers(25, 60).map(nested_struct)
NESTED: dict[str, st.SearchStrategy[bytes]] = {
    "Route": DEEP.map(lambda struct: field(1, b"ranker") + field(2, b"u") + field(3, struct)),
    "RouteBatch": DEEP.map(lambda struct: field(1, field(3, struct))),
}
SMALL_ROUTE = st.builds(
    lambda experiment, unit, attributes: pb.RouteRequest(
        experiment=experiment, unit_id=unit, attributes=to_struct(attributes)
    ),
    st.sampled_from(["ranker", "gauss", ""]),
    st.text(max_size=20),
    st.dictionaries(
        st.text(max_size=10), SCALARS.filter(lambda v: not isinstance(v, str) or len(v) < 50), max_size=4
    ),
)
WELL_FORMED: dict[str, st.SearchStrategy[Message]] = {  # small: their bytes get flipped
    "Route": SMALL_ROUTE,
    "RouteBatch": st.lists(SMALL_ROUTE, max_size=3).map(lambda rs: pb.RouteBatchRequest(requests=rs)),
    "ReportOutcome": st.builds(pb.OutcomeRequest, decision_id=st.text(max_size=30), reward=FLOATS),
    "ReportOutcomes": st.builds(
        lambda ids: pb.ReportOutcomesRequest(outcomes=[pb.OutcomeRequest(decision_id=i) for i in ids]),
        st.lists(st.text(max_size=30), max_size=3),
    ),
}


def raw_bytes(method: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        st.binary(min_size=1000, max_size=5000),
        st.builds(
            _flip,
            WELL_FORMED[method].map(lambda m: m.SerializeToString()),
            st.integers(0, 10**6),
            st.integers(0, 255),
        ),
        STRINGS_AS_BYTES[method],
        NESTED.get(method, STRINGS_AS_BYTES[method]),
    )


def fuzz_raw(channel: grpc.Channel, method: str, message_type: type[Message], outcomes: Counter[str]) -> None:
    call = channel.unary_unary(
        f"/mabrouter.v1.Router/{method}", request_serializer=None, response_deserializer=None
    )

    @settings(FUZZ, max_examples=75)
    @given(data=raw_bytes(method))
    def garbage(data: bytes) -> None:
        try:
            call(data, timeout=10)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        else:
            assert parses(message_type, data)
            outcomes["OK"] += 1
            return
        assert code in DEFINED, f"{code}: {details}"  # never UNKNOWN or INTERNAL
        assert details
        if parses(message_type, data):
            outcomes[code.name] += 1
            return
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"request is not a valid {message_type.DESCRIPTOR.full_name}: "), details
        outcomes[f"undecodable -> {details.partition(': ')[2][:24]}"] += 1

    garbage()


def test_raw_bytes_get_ok_or_invalid_argument_and_a_kill_is_still_obeyed(
    fuzzed: tuple[InProcessRouter, RedisServer],
) -> None:
    router, redis = fuzzed
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        outcomes: Counter[str] = Counter()
        for method, message_type in METHODS.items():
            fuzz_raw(channel, method, message_type, outcomes)
            still_answers(stub)
    assert router.app is not None
    sample = router.app.metrics.registry.get_sample_value
    kinds = {
        kind: sum(sample("mabrouter_bad_requests_total", {"method": m, "kind": kind}) or 0 for m in METHODS)
        for kind in ("invalid_utf8", "too_deep", "malformed")
    }
    assert all(kinds.values()), f"every kind of undecodable request was sent and counted: {kinds}"
    took = kill_of_another_experiment_is_obeyed_within_1s(router, redis)
    print(f"\nraw bytes: {dict(outcomes)}; refusals counted {kinds}; bystander killed in {took:.2f} s")


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
