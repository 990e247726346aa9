"""Anything written by hand into the keys a router reads leaves it answering and obeying kills within 1 s.

A real RouterApp serving gRPC on a real redis-server. Each example writes hypothesis-chosen strings and
numbers (invalid UTF-8 included) into documents, statistics, switches, global switches and the list of
experiments, and replaces some keys by keys of another type (a string where a hash belongs: Redis refuses
to read them); Route must then answer OK or a documented status, readiness must hold, and a kill written
next to the garbage (one experiment's, or the global one) must be obeyed within a second, without a
change notice (plain redis-cli: the router's polling must read it past every broken key).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from hostile_stored import ARMS, DOCS, hostile_state, retyped, stored_doc
from support import InProcessRouter, RedisServer, router_settings, wait_until

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
}


def key(suffix: str) -> str:
    if suffix == "experiments":
        return "mabrouter:experiments"
    return (
        "mabrouter:{_global}:control" if suffix == "_global" else f"mabrouter:{{{suffix.replace(':', '}:')}"
    )


def retype(writer: redis.Redis, suffix: str, kind: str) -> None:
    """Replace the key by one of another type, as a hand-made mistake would (Redis: WRONGTYPE on read)."""
    name = key(suffix)
    writer.delete(name)
    {
        "string": lambda: writer.set(name, "oops"),
        "list": lambda: writer.rpush(name, "oops"),
        "set": lambda: writer.sadd(name, "oops") if suffix != "experiments" else writer.set(name, "oops"),
        "zset": lambda: writer.zadd(name, {"oops": 1.0}),
    }[kind]()


@pytest.fixture(scope="module")
def rig(redis_session: RedisServer) -> Iterator[tuple[InProcessRouter, redis.Redis, Any]]:
    client = redis_session.client()
    client.flushall()
    # surrogateescape: "\udcff" in a hypothesis value is written as the byte 0xff (invalid UTF-8)
    writer = redis.Redis(port=redis_session.port, encoding_errors="surrogateescape")
    reset(writer, version=1)
    router = InProcessRouter(router_settings(redis_session.url, refresh_interval_ms=50)).start()
    channel = grpc.insecure_channel(router.address)
    try:
        yield router, writer, channel
    finally:
        channel.close()
        router.stop()
        writer.close()
        client.flushall()
        client.close()


def reset(writer: redis.Redis, version: int) -> None:
    """Every key back to a good state (the version always grows, so the document is taken again)."""
    pipe = writer.pipeline(transaction=True)
    pipe.delete("mabrouter:experiments", key("_global"))
    for name in DOCS:
        pipe.delete(key(f"{name}:config"), key(f"{name}:stats"), key(f"{name}:control"))
        pipe.hset(key(f"{name}:config"), mapping={"doc": stored_doc(name), "version": str(version)})
        pipe.hset(key(f"{name}:stats"), mapping={f"{arm}:trials": "50" for arm in ARMS[name]})
        pipe.sadd("mabrouter:experiments", name)
    pipe.execute()


def route_code(channel: grpc.Channel, experiment: str) -> tuple[grpc.StatusCode, str]:
    stub = router_pb2_grpc.RouterStub(channel)
    request = pb.RouteRequest(experiment=experiment, unit_id="u1", attributes=None)
    try:
        reply = stub.Route(request, timeout=5)
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, pb.Reason.Name(reply.reason)


def ready(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


VERSIONS = iter(range(int(time.time()), 10**17))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    edits=hostile_state(),
    stray=st.lists(st.text(min_size=1, max_size=20), max_size=2),
    target_and_retyped=st.sampled_from([*DOCS, "_global"]).flatmap(
        lambda target: st.tuples(
            st.just(target), retyped("_global" if target == "_global" else f"{target}:control")
        )
    ),
)
def test_hand_edits_never_stop_a_router_or_a_kill(
    rig: tuple[InProcessRouter, redis.Redis, grpc.Channel],
    edits: dict[str, Any],
    stray: list[str],
    target_and_retyped: tuple[str, dict[str, str]],
) -> None:
    target, retyped_keys = target_and_retyped
    router, writer, channel = rig
    assert router.app is not None
    app = router.app
    reset(writer, next(VERSIONS))

    def good() -> bool:
        snapshot = app.holder.current
        return snapshot is not None and not snapshot.errors and set(snapshot.experiments) == set(DOCS)

    wait_until(good, 5, what="a good state of every experiment")
    for suffix, fields in edits.items():
        if fields:
            writer.hset(key(suffix), mapping=fields)
    for name in stray:  # listed experiments with garbage documents
        writer.sadd("mabrouter:experiments", name)
        writer.hset(f"mabrouter:{{{name}}}:config", mapping={"doc": name, "version": "x"})
    for suffix, kind in retyped_keys.items():
        retype(writer, suffix, kind)
    time.sleep(0.15)  # three refresh intervals
    for name in [*DOCS, *stray]:
        code, detail = route_code(channel, name)
        assert code in DOCUMENTED, (name, code, detail)
    assert ready(channel)

    started = time.monotonic()
    writer.hset(key("_global" if target == "_global" else f"{target}:control"), "kill", "1")
    for name in DOCS if target == "_global" else [target]:
        wait_until(lambda name=name: route_code(channel, name) == (grpc.StatusCode.OK, "KILLED"), 1, 0.01)
    assert time.monotonic() - started < 1.0
