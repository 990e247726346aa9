from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import InProcessRouter, RedisServer, apply_ranker, router_settings, running_redis


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_server(redis_session: RedisServer) -> RedisServer:
    """The session's private redis-server, emptied for this test."""
    client = redis_session.client()
    client.flushall()
    client.close()
    return redis_session


@pytest.fixture
def applied_ranker(redis_server: RedisServer) -> RedisServer:
    apply_ranker(redis_server.url)
    return redis_server


@pytest.fixture
def router(applied_ranker: RedisServer) -> Iterator[InProcessRouter]:
    instance = InProcessRouter(router_settings(applied_ranker.url)).start()
    try:
        yield instance
    finally:
        instance.stop()
