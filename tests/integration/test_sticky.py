"""Sticky assignment with real Redis: stable per unit, shared by replicas, reset by kills and salts. Each test
runs with sidecars and with in-process routers (the `mode` fixture, tests/modes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mabrouter.v1 import router_pb2 as pb

from modes import Stub, serving
from support import (
    RedisServer,
    apply_experiments,
    cli,
    router_settings,
    running_redis,
    wait_until,
)

STICKY_DOC = """
name: homepage
control: v1
sticky: {ttl_seconds: 3600}
arms: [{name: v1}, {name: v2}, {name: v3}]
"""


@pytest.fixture
def sticky_redis(redis_server: RedisServer, tmp_path: Path) -> RedisServer:
    apply_experiments(redis_server.url, tmp_path, STICKY_DOC)
    return redis_server


@pytest.fixture
def two_routers(mode: str, sticky_redis: RedisServer) -> Iterator[tuple[Stub, Stub]]:
    settings = router_settings(sticky_redis.url)
    with serving(mode, settings) as first, serving(mode, settings) as second:
        yield first, second


def route(router: Stub, unit: str) -> pb.RouteResponse:
    return router.Route(pb.RouteRequest(experiment="homepage", unit_id=unit), timeout=2)


def test_a_unit_keeps_its_arm_on_every_replica(
    two_routers: tuple[Stub, Stub], sticky_redis: RedisServer
) -> None:
    first, second = two_routers
    assignments = {f"user-{i}": route(first, f"user-{i}") for i in range(30)}
    assert all(reply.reason == pb.SAMPLED for reply in assignments.values())
    assert len({reply.arm for reply in assignments.values()}) > 1  # it is still randomised across units
    client = sticky_redis.client()
    wait_until(
        lambda: all(client.get(f"mabrouter:{{homepage}}:sticky:homepage:{unit}") for unit in assignments),
        5,
        what="assignments written to Redis",
    )
    client.close()
    for unit, first_reply in assignments.items():
        for replica in (first, second):
            again = route(replica, unit)
            assert (again.arm, again.reason) == (first_reply.arm, pb.STICKY)


def test_killing_its_arm_moves_the_unit_and_it_sticks_to_the_new_one(
    two_routers: tuple[Stub, Stub], sticky_redis: RedisServer
) -> None:
    first, second = two_routers
    units = [f"u{i}" for i in range(40)]
    before = {unit: route(first, unit).arm for unit in units}
    moved = [unit for unit, arm in before.items() if arm == "v2"]
    assert moved, "no unit drew v2: the test needs at least one"
    cli("kill", "homepage", "--arm", "v2", "--reason", "test", redis_url=sticky_redis.url)
    wait_until(
        lambda: all(route(r, moved[0]).arm != "v2" for r in (first, second)),
        5,
        what="replicas to obey the arm kill",
    )
    after = {unit: route(first, unit) for unit in moved}
    assert all(reply.arm != "v2" for reply in after.values())
    client = sticky_redis.client()
    wait_until(
        lambda: all(client.get(f"mabrouter:{{homepage}}:sticky:homepage:{u}") != "v2" for u in moved),
        5,
        what="the new assignments replacing v2 in Redis",
    )
    stored = {u: client.get(f"mabrouter:{{homepage}}:sticky:homepage:{u}") for u in moved}
    client.close()
    # Both replicas may have reassigned a unit after the kill; the one that lost the atomic get-or-set
    # adopts the winner's arm when its flush returns, so they agree within a flush interval.

    def agreed() -> bool:
        return all(route(r, unit).arm == stored[unit] for r in (first, second) for unit in moved)

    wait_until(agreed, 5, what="both replicas to serve the stored reassignment")
    for unit in moved:
        assert route(first, unit).reason == pb.STICKY


def test_without_redis_units_get_stable_hash_seeded_arms(mode: str, tmp_path: Path) -> None:
    with running_redis() as redis_server:
        apply_experiments(redis_server.url, tmp_path, STICKY_DOC)
        with serving(mode, router_settings(redis_server.url)) as router:
            redis_server.stop(kill=True)  # the snapshot stays; sticky lookups now fail
            units = [f"new-{i}" for i in range(20)]
            first = {unit: route(router, unit).arm for unit in units}
            assert len(set(first.values())) > 1
            for unit in units:  # answered from this replica's cache (test_core_decide proves determinism)
                assert route(router, unit).arm == first[unit]


def test_a_sticky_key_of_the_wrong_type_costs_that_unit_alone(
    two_routers: tuple[Stub, Stub], sticky_redis: RedisServer
) -> None:
    """A unit's key replaced by a hash (by hand): its lookup used to pause every unit's lookups for a
    second on that replica (so units assigned elsewhere got a hash-seeded arm, not theirs), and its write
    failed every flush of the batch, retried forever."""
    first, second = two_routers
    client = sticky_redis.client()
    broken = "mabrouter:{homepage}:sticky:homepage:user-broken"
    client.hset(broken, "arm", "v2")
    try:
        units = [f"user-{i}" for i in range(10)]
        replies = {unit: route(first, unit) for unit in units}
        assert route(first, "user-broken").reason == pb.SAMPLED
        wait_until(
            lambda: all(client.get(f"mabrouter:{{homepage}}:sticky:homepage:{unit}") for unit in units),
            5,
            what="the other units' assignments written",
        )
        assert route(second, "user-broken").reason == pb.SAMPLED  # answered, just not sticky
        for unit, reply in replies.items():  # right after it, on the same replica: looked up, not paused
            again = route(second, unit)
            assert (again.arm, again.reason) == (reply.arm, pb.STICKY), unit
        assert client.type(broken) == "hash"
    finally:
        client.close()
