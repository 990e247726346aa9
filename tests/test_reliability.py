"""Reliability: every Redis fault is a real redis-server that the test kills, restarts, stops or slows.

Real `mabrouter serve` processes (or in-process RouterApps), real gRPC, real Redis; nothing is mocked.
Timing assertions are deliberately generous (they catch "Route waited on Redis", not a slow CI box);
the measured numbers are printed (run with -s to see them) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabrouter.core import decision_id
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

import support
from support import (
    EXAMPLE,
    InProcessRouter,
    RedisServer,
    RouterProcess,
    cli,
    free_port,
    router_settings,
    running_redis,
    wait_until,
)
from tcp_proxy import FaultProxy

AOF = ("--appendonly", "yes", "--appendfsync", "always")
STATS = "mabrouter:{ranker}:stats"
ARMS = ("ranker-v1", "ranker-v2", "ranker-v3")
CONTROL = "ranker-v1"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Generous bound on Route latency while Redis is dead, hung or slow: a Route that waited for Redis would
# take the 2 s socket timeout (or 200+ ms through the slow proxy), two orders of magnitude above it.
ROUTE_P99_BOUND = 0.050
# Clients reconnect quickly to a router restarted on the same port (gRPC's default backoff starts at 1 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


# -- helpers ---------------------------------------------------------------------------------------


def open_stub(address: str) -> tuple[grpc.Channel, router_pb2_grpc.RouterStub]:
    channel = grpc.insecure_channel(address, options=FAST_RECONNECT)
    return channel, router_pb2_grpc.RouterStub(channel)


def health_status(address: str, service: str = "") -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return None
    return int(reply.status)


def scrape(port: int) -> dict[str, float]:
    """The router's Prometheus endpoint as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(latencies: list[float]) -> str:
    if not latencies:
        return "n=0"
    return (
        f"n={len(latencies)} p50={percentile(latencies, 0.5) * 1000:.2f}ms "
        f"p99={percentile(latencies, 0.99) * 1000:.2f}ms max={max(latencies) * 1000:.2f}ms"
    )


@dataclass
class Books:
    """What Redis holds for one experiment: outcomes per arm, reward sums per arm, trials."""

    counts: Counter[str]
    sums: dict[str, float]
    trials: int


def books(client: redis.Redis, experiment: str = "ranker") -> Books:
    counts: Counter[str] = Counter()
    sums: dict[str, float] = {}
    trials = 0.0
    for key, value in client.hgetall(f"mabrouter:{{{experiment}}}:stats").items():
        arm, _, stat = key.rpartition(":")
        if stat == "count":
            counts[arm] = int(value)
        elif stat == "sum":
            sums[arm] = float(value)
        elif stat == "trials":
            trials += float(value)
    return Books(counts, sums, int(trials))


def books_of(redis_server: RedisServer) -> Books:
    client = redis_server.client()
    try:
        return books(client)
    finally:
        client.close()


def spooled_entries(directory: Path) -> int:
    """Outcomes waiting in the spool files (each line one acknowledged outcome not yet in Redis)."""
    total = 0
    for path in directory.glob("outcomes-*.jsonl"):
        try:
            total += sum(1 for line in path.read_text().splitlines() if line.strip())
        except FileNotFoundError:
            continue  # replaced by a drop() while we read
    return total


def router_on_port(redis_url: str, port: int, **env: str) -> RouterProcess:
    """RouterProcess always picks a free port; a restarted router must reuse its predecessor's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(support, "free_port", lambda: port)
        process = RouterProcess(redis_url, **env)
    assert process.address == f"127.0.0.1:{port}"
    return process


def apply_ranker(url: str) -> None:
    cli("experiment", "apply", str(EXAMPLE), redis_url=url)


def route(stub: router_pb2_grpc.RouterStub, unit: str, **fields: Any) -> pb.RouteResponse:
    return stub.Route(pb.RouteRequest(experiment="ranker", unit_id=unit, **fields), timeout=2)


def reward_of(i: int) -> float:
    """Rewards that are exact binary fractions, so Redis's float sums can be compared with ==."""
    return (i % 5) / 4


@dataclass
class Sample:
    at: float  # monotonic time the reply arrived
    latency: float
    reply: pb.RouteResponse | None
    error: grpc.StatusCode | None


class RouteLoop(threading.Thread):
    """Calls Route in a loop (a fresh unit each time) and records every answer with its latency."""

    def __init__(self, address: str, pause: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.pause = pause
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        channel, stub = open_stub(self.address)
        with channel:
            n = 0
            while not self._stop_event.is_set():
                n += 1
                started = time.perf_counter()
                try:
                    reply: pb.RouteResponse | None = route(stub, f"loop-{n}")
                    error = None
                except grpc.RpcError as exc:
                    reply, error = None, exc.code()
                self.samples.append(Sample(time.monotonic(), time.perf_counter() - started, reply, error))
                time.sleep(self.pause)

    def finish(self) -> list[Sample]:
        self._stop_event.set()
        self.join(10)
        return self.samples

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]


def latencies(samples: list[Sample]) -> list[float]:
    return [s.latency for s in samples]


# -- Redis down at start-up ---------------------------------------------------------------------------


def test_redis_down_at_start_serves_the_default_arm_then_recovers_without_a_restart() -> None:
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        redis_server.stop()
        router = RouterProcess(redis_server.url)
        try:
            wait_until(
                lambda: health_status(router.address) == NOT_SERVING,
                20,
                interval=0.05,
                what="the router to answer health checks while Redis is down",
            )
            assert health_status(router.address, "mabrouter.snapshot") == NOT_SERVING
            channel, stub = open_stub(router.address)
            with channel:
                reply = route(stub, "u1", default_arm="ranker-v2")
                assert (reply.arm, reply.reason, reply.decision_id) == ("ranker-v2", pb.FALLBACK_DEFAULT, "")
                with pytest.raises(grpc.RpcError) as info:
                    route(stub, "u1")
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "default_arm" in info.value.details()
                with pytest.raises(grpc.RpcError) as info:
                    stub.ReportOutcome(pb.OutcomeRequest(decision_id="x.y", reward=1.0), timeout=2)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE

                started = time.monotonic()
                redis_server.start()
                router.wait_serving(20)
                recovered_after = time.monotonic() - started
                reply = route(stub, "u1", default_arm="ranker-v2")
                assert reply.reason == pb.SAMPLED
                assert reply.decision_id
                assert not reply.stale
                outcome = stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0), timeout=5
                )
                assert not outcome.duplicate
            assert health_status(router.address, "mabrouter.snapshot") == SERVING
            assert router.process.poll() is None  # the same process all along
        finally:
            router.kill()
    print(f"\nredis down at start: SERVING {recovered_after:.2f}s after redis-server started")


# -- Redis killed mid-flight ---------------------------------------------------------------------------


def test_redis_sigkill_mid_flight_route_never_fails_then_goes_stale_per_policy() -> None:
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        ports = {"serve_stale": free_port(), "serve_control": free_port()}
        routers = {
            policy: RouterProcess(
                redis_server.url,
                MABROUTER_MAX_STALENESS_SECONDS="1",
                MABROUTER_STALE_POLICY=policy,
                MABROUTER_METRICS_LISTEN=f"127.0.0.1:{port}",
            )
            for policy, port in ports.items()
        }
        loops: dict[str, RouteLoop] = {}
        try:
            for router in routers.values():
                router.wait_serving()
            loops = {policy: RouteLoop(router.address) for policy, router in routers.items()}
            for loop in loops.values():
                loop.start()
            begun = time.monotonic()
            time.sleep(2.0)
            killed_at = time.monotonic()
            redis_server.stop(kill=True)
            time.sleep(0.5)
            age_early = scrape(ports["serve_stale"])["mabrouter_snapshot_age_seconds"]
            for router in routers.values():
                wait_until(
                    lambda router=router: health_status(router.address, "mabrouter.snapshot") == NOT_SERVING,
                    5,
                    interval=0.02,
                    what="mabrouter.snapshot to report NOT_SERVING",
                )
            stale_after = time.monotonic() - killed_at
            for router in routers.values():
                assert health_status(router.address, "") == SERVING  # still answering: stay in rotation
                assert health_status(router.address, "mabrouter.v1.Router") == SERVING
            time.sleep(max(0.0, killed_at + 3.0 - time.monotonic()))
            age_late = scrape(ports["serve_stale"])["mabrouter_snapshot_age_seconds"]
            restarted_at = time.monotonic()
            redis_server.start()
            for router in routers.values():
                wait_until(
                    lambda router=router: health_status(router.address, "mabrouter.snapshot") == SERVING,
                    10,
                    interval=0.02,
                    what="mabrouter.snapshot to recover",
                )
            recovered_at = time.monotonic()
            time.sleep(0.5)
            for loop in loops.values():
                loop.finish()
            report, sampled = check_sigkill_samples(loops, begun, killed_at, restarted_at, recovered_at)
            # Trials buffered during the outage reach Redis once it is back, exactly once (a retried flush
            # batch carries the same id, so a batch applied just before the kill counts once).
            wait_until(lambda: books_of(redis_server).trials >= sampled, 10, what="trials flushed")
            time.sleep(0.3)
            assert books_of(redis_server).trials == sampled
        finally:
            for loop in loops.values():
                loop.finish()
            for router in routers.values():
                router.kill()
        assert age_early >= 0.4
        assert age_late >= age_early + 1.5
    print(
        "\nredis SIGKILL mid-flight: no Route failed; snapshot health NOT_SERVING "
        f"{stale_after:.2f}s after the kill (max staleness 1 s); snapshot age {age_early:.2f}s -> "
        f"{age_late:.2f}s; {sampled} sampled trials all in Redis after the restart\n" + "\n".join(report)
    )


def check_sigkill_samples(
    loops: dict[str, RouteLoop], begun: float, killed_at: float, restarted_at: float, recovered_at: float
) -> tuple[list[str], int]:
    """Every Route answered; fresh, then stale per policy, then fresh again. Returns report lines and
    the number of SAMPLED (trial-counting) answers."""
    report = []
    sampled = 0
    for policy, loop in loops.items():
        samples = loop.samples
        assert samples, "the client loop made no calls"
        errors = [s for s in samples if s.error is not None]
        assert not errors, f"{policy}: {len(errors)} Route calls failed: {Counter(s.error for s in errors)}"
        before = loop.between(begun, killed_at)
        fresh = loop.between(killed_at, killed_at + 0.8)
        stale = loop.between(killed_at + 1.3, restarted_at)
        after = loop.between(recovered_at + 0.2, time.monotonic())
        outage = loop.between(killed_at, restarted_at)
        assert before
        assert fresh
        assert stale
        assert after
        assert all(s.reply and not s.reply.stale and s.reply.reason == pb.SAMPLED for s in before)
        # Within the maximum staleness: decisions from the last snapshot, not flagged.
        assert all(
            s.reply and not s.reply.stale and s.reply.reason == pb.SAMPLED and s.reply.config_version == 1
            for s in fresh
        )
        assert all(s.reply and s.reply.stale for s in stale)
        if policy == "serve_stale":
            assert all(s.reply and s.reply.reason == pb.SAMPLED and s.reply.decision_id for s in stale)
        else:
            assert all(
                s.reply and s.reply.reason == pb.STALE_CONTROL and s.reply.arm == CONTROL for s in stale
            )
        assert all(s.reply and not s.reply.stale and s.reply.reason == pb.SAMPLED for s in after)
        assert percentile(latencies(outage), 0.99) < ROUTE_P99_BOUND, summary_ms(latencies(outage))
        sampled += sum(1 for s in samples if s.reply and s.reply.reason == pb.SAMPLED)
        report.append(
            f"  {policy}: before {summary_ms(latencies(before))}; during {summary_ms(latencies(outage))}"
        )
    return report, sampled
