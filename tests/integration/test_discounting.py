"""Discounting with a half-life (forward decay): exact with concurrent writers, and it follows drift."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from mabrouter.core.discount import weight
from mabrouter.schema import parse_experiment
from mabrouter.store.router_store import RouterStore
from mabrouter.store.stats_codec import discount_epoch, discounted_stats
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import InProcessRouter, RedisServer, cli, router_settings

HALF_LIFE_S = 10.0
SPEC = parse_experiment(
    {
        "name": "drift",
        "control": "a",
        "half_life_seconds": HALF_LIFE_S,
        "arms": [{"name": "a"}, {"name": "b"}],
    },
    "test",
).to_spec()


def test_writers_with_different_epochs_and_a_rebase_give_exact_decayed_sums(
    redis_server: RedisServer,
) -> None:
    """Two replicas propose different epochs; Redis keeps the first and rescales the other's increments."""
    t0 = int(time.time() * 1000) - 60_000
    writes = [(t0, 5.0), (t0 + 20_000, 3.0), (t0 + 45_000, 7.0)]  # (time, trials of arm a)

    async def run() -> dict[str, str]:
        store = RouterStore.from_url(redis_server.url)
        try:
            for index, (at_ms, trials) in enumerate(writes):
                epoch = t0 if index == 0 else at_ms  # the second and third writers believe the epoch is "now"
                scaled = trials * weight(at_ms, epoch, HALF_LIFE_S)
                increments = {"drift": {"a:trials": trials, "a:d:trials": scaled}}
                await store.apply_increments(f"b{index}", increments, {"drift": (epoch, HALF_LIFE_S * 1000)})
            before = await store._redis.hgetall("mabrouter:{drift}:stats")
            assert await store.rebase_discount("drift", t0 + 50_000, HALF_LIFE_S * 1000)
            after = await store._redis.hgetall("mabrouter:{drift}:stats")
        finally:
            await store.close()
        return {
            "before_epoch": str(discount_epoch(before)),
            **{f"after:{k}": v for k, v in after.items()},
            **{f"before:{k}": v for k, v in before.items()},
        }

    raw = asyncio.run(run())
    now = t0 + 60_000
    expected = sum(trials * 2 ** (-(now - at) / (HALF_LIFE_S * 1000)) for at, trials in writes)
    before = {k.removeprefix("before:"): v for k, v in raw.items() if k.startswith("before:")}
    after = {k.removeprefix("after:"): v for k, v in raw.items() if k.startswith("after:")}
    assert int(raw["before_epoch"]) == t0  # the first writer's epoch was kept
    assert discounted_stats(SPEC, before, now)[0].trials == pytest.approx(expected, rel=1e-9)
    assert discounted_stats(SPEC, after, now)[0].trials == pytest.approx(
        expected, rel=1e-9
    )  # rebase: same value
    assert float(after["a:trials"]) == 15.0  # raw counts are never discounted


@pytest.mark.parametrize(("half_life", "follows"), [(0.5, True), (0.0, False)])
def test_a_half_life_lets_the_router_follow_a_drifting_world(
    redis_server: RedisServer, tmp_path: Path, half_life: float, follows: bool
) -> None:
    """A long past says `a` (50%) beats `b` (10%); then the world flips. Only with a half-life does the old
    evidence fade fast enough for traffic to move to `b` within seconds."""
    doc = tmp_path / "drift.yaml"
    doc.write_text(
        f"name: drift\ncontrol: a\nhalf_life_seconds: {half_life}\narms: [{{name: a}}, {{name: b}}]\n"
    )
    cli("experiment", "apply", str(doc), redis_url=redis_server.url)
    history = {
        "a:trials": 20_000,
        "a:count": 10_000,
        "a:sum": 10_000,
        "b:trials": 300,
        "b:count": 30,
        "b:sum": 30,
    }
    client = redis_server.client()
    client.hset(
        "mabrouter:{drift}:stats",
        mapping={
            **history,
            **{k.replace(":", ":d:"): v for k, v in history.items()},
            "_epoch": int(time.time() * 1000),
        },
    )
    client.close()
    router = InProcessRouter(router_settings(redis_server.url)).start()
    env = np.random.default_rng(3)
    rates = {"a": 0.1, "b": 0.5}  # the world has flipped
    tail: Counter[str] = Counter()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            started = time.monotonic()
            i = 0
            while (elapsed := time.monotonic() - started) < 6.5:
                reply = stub.Route(pb.RouteRequest(experiment="drift", unit_id=f"u{i}"))
                i += 1
                if env.random() < rates[reply.arm]:
                    stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0))
                if elapsed > 5.0:
                    tail[reply.arm] += 1
    finally:
        router.stop()
    share_b = tail["b"] / sum(tail.values())
    print(f"half-life {half_life}s: share of b over 5-6.5 s = {share_b:.2f} ({dict(tail)})")
    # after 10 half-lives the 20,000-trial past weighs ~20 trials: recent evidence decides
    assert (share_b > 0.5) if follows else (share_b < 0.3), (half_life, tail)
