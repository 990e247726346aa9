"""Route answers first, then records its decisions in batches (decision 0015): never inline, never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mabrouter.app import RouterApp
from mabrouter.core.decide import RouteInput
from mabrouter.runtime import engine
from mabrouter.runtime.engine import RECORD_DELAY_SECONDS, Routed
from mabrouter.service.convert import ResponseBuilder
from mabrouter.store import keys
from mabrouter.v1 import router_pb2

from support import InProcessRouter, RedisServer, router_settings


@pytest.fixture
def slow_flushing_router(applied_ranker: RedisServer) -> Iterator[InProcessRouter]:
    """A router whose periodic flush never runs during a test: only the recording timer records."""
    with InProcessRouter(router_settings(applied_ranker.url, flush_interval_ms=60_000)).start() as instance:
        yield instance


def trials_in_redis(server: RedisServer) -> float:
    client = server.client()
    try:
        fields: dict[str, str] = client.hgetall(keys.stats("ranker"))  # type: ignore[assignment]
        return sum(float(v) for k, v in fields.items() if k.endswith(":trials") and not k.startswith("@"))
    finally:
        client.close()


def test_a_decision_is_not_recorded_inline_but_by_the_next_record_pending(
    slow_flushing_router: InProcessRouter,
) -> None:
    async def route(app: RouterApp) -> tuple[int, int, int, int]:
        app.engine.route_now(RouteInput("ranker", "user-1"))
        inline = (app.trials.pending(), app.exposure.pending())
        app.engine.record_pending()
        return (*inline, app.trials.pending(), app.exposure.pending())

    assert slow_flushing_router.call(route) == (0, 0, 1, 1)


def test_the_recording_timer_records_every_decision_made_meanwhile(
    slow_flushing_router: InProcessRouter,
) -> None:
    async def route_some(app: RouterApp) -> tuple[int, int]:
        for n in range(25):
            app.engine.route_now(RouteInput("ranker", f"user-{n}"))
        await asyncio.sleep(RECORD_DELAY_SECONDS * 20)
        return app.trials.pending(), app.exposure.pending()

    assert slow_flushing_router.call(route_some) == (25, 25)


def test_decisions_not_yet_recorded_reach_redis_at_shutdown(
    applied_ranker: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "RECORD_DELAY_SECONDS", 60.0)  # only the shutdown flush can record them
    router = InProcessRouter(router_settings(applied_ranker.url, flush_interval_ms=60_000)).start()
    try:

        async def route_and_stop(app: RouterApp) -> None:
            for n in range(10):
                app.engine.route_now(RouteInput("ranker", f"user-{n}"))
            await app.stop()

        router.call(route_and_stop, timeout=30)
    finally:
        router.app = None  # stopped above
        router.stop()
    client = applied_ranker.client()
    try:
        assert trials_in_redis(applied_ranker) == 10
        assert client.xlen(keys.decisions_log("ranker")) == 10
    finally:
        client.close()


def test_a_response_carries_every_field_of_the_decision(router: InProcessRouter) -> None:
    async def routed_and_filled(app: RouterApp) -> tuple[Routed, router_pb2.RouteResponse]:
        routed = app.engine.route_now(RouteInput("ranker", "user-1"))
        assert routed is not None
        filled = router_pb2.RouteBatchResponse().results.add().response  # as RouteBatch fills them
        ResponseBuilder().fill(filled, routed)
        return routed, filled

    routed, filled = router.call(routed_and_filled)
    decision = routed.decision
    assert (filled.arm, filled.decision_id, filled.propensity, filled.config_version) == (
        decision.arm,
        routed.decision_id,
        decision.propensity,
        decision.config_version,
    )
    assert router_pb2.Reason.Name(filled.reason) == decision.reason.name
    assert dict(filled.payload) == dict(decision.payload)
    assert decision.payload  # the example's arms carry payloads
    assert filled == ResponseBuilder().response(routed)
