"""Fixtures every folder shares: one private redis-server per session (never the shared 6379), emptied for
each test; the example experiment applied to it; a router serving it in this process.

The helper modules beside this file (support, faults, ledger, wire, core_fixtures, hostile_stored,
tcp_proxy, redis_topologies) import as top-level names from any folder: pytest puts this directory on
sys.path when it loads this conftest (the default "prepend" import mode). Test file names are therefore
unique across unit/, integration/ and system/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import EXAMPLE, InProcessRouter, RedisServer, cli_in_process, router_settings, running_redis


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
    """The example experiment ("ranker"), applied by the CLI's own code in this process (no interpreter
    start-up: tests of the CLI as a process call support.cli)."""
    cli_in_process("experiment", "apply", str(EXAMPLE), redis_url=redis_server.url)
    return redis_server


@pytest.fixture
def router(applied_ranker: RedisServer) -> Iterator[InProcessRouter]:
    with InProcessRouter(router_settings(applied_ranker.url)).start() as instance:
        yield instance


@pytest.fixture(params=["sidecar", "embedded"])
def mode(request: pytest.FixtureRequest) -> str:
    """How a behaviour test routes: through a sidecar over gRPC, or in this process (mabrouter.embedded).
    Tests of behaviour both must share take it; tests/modes.py puts either behind the same calls."""
    return str(request.param)
