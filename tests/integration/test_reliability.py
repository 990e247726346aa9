"""Reliability: every Redis fault is a real redis-server that the test kills, restarts, stops or slows.

Real `mabrouter serve` processes (or in-process RouterApps), real gRPC, real Redis; nothing is mocked.
Timing assertions are deliberately generous (they catch "Route waited on Redis", not a slow CI box);
the measured numbers are printed (run with -s to see them) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import base64
import secrets
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
CONTROL = "ranker-v1"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Generous bound on Route latency while Redis is dead, hung or slow: a Route that waited for Redis would
# take the 2 s socket timeout (or 400+ ms of round trips through the slow proxy), far above it.
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


def histogram(port: int, name: str = "mabrouter_route_latency_seconds") -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of a Prometheus histogram."""
    buckets = {}
    for key, value in scrape(port).items():
        if key.startswith(f'{name}_bucket{{le="'):
            bound = key.split('le="')[1].rstrip('"}')
            buckets[float(bound)] = value
    return buckets


def server_p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The bucket bound holding the 99th percentile of the observations made between two scrapes."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= 0.99 * total:
            return bound
    return float("inf")


def redis_errors(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k.startswith("mabrouter_redis_errors_total"))


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

    def __init__(self, address: str, pause: float = 0.003) -> None:
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
            at_kill = histogram(ports["serve_stale"])
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
            in_server_p99 = server_p99(at_kill, histogram(ports["serve_stale"]))
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
        assert in_server_p99 <= 0.01
    print(
        "\nredis SIGKILL mid-flight: no Route failed; snapshot health NOT_SERVING "
        f"{stale_after:.2f}s after the kill (max staleness 1 s); snapshot age {age_early:.2f}s -> "
        f"{age_late:.2f}s; {sampled} sampled trials all in Redis after the restart; in-server Route p99 "
        f"during the outage <= {in_server_p99 * 1000:g} ms (histogram bucket)\n" + "\n".join(report)
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
        fresh = loop.between(killed_at, killed_at + 0.5)
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


# -- Redis hung (SIGSTOP), not dead --------------------------------------------------------------------


@contextmanager
def stopped(redis_server: RedisServer) -> Iterator[None]:
    """SIGSTOP redis-server: its socket accepts connections but nothing answers."""
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


def timed(call: Callable[[], Any]) -> tuple[Any, grpc.StatusCode | None, str, float]:
    """(reply, error code, error details, seconds) of one call."""
    started = time.monotonic()
    try:
        reply = call()
    except grpc.RpcError as exc:
        return None, exc.code(), exc.details() or "", time.monotonic() - started
    return reply, None, "", time.monotonic() - started


def test_redis_sigstop_route_unaffected_and_outcomes_follow_the_acknowledgement_contract(
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    with running_redis() as redis_server:
        apply_ranker(redis_server.url)
        spooled = RouterProcess(redis_server.url, MABROUTER_SPOOL_DIR=str(spool_dir))
        plain = RouterProcess(redis_server.url)
        loop: RouteLoop | None = None
        try:
            spooled.wait_serving()
            plain.wait_serving()
            s_channel, s_stub = open_stub(spooled.address)
            p_channel, p_stub = open_stub(plain.address)
            with s_channel, p_channel:
                s_decisions = [route(s_stub, f"s{i}") for i in range(6)]
                p_decision = route(p_stub, "p0")
                loop = RouteLoop(spooled.address)
                loop.start()
                time.sleep(1.5)
                stopped_at = time.monotonic()
                with stopped(redis_server), ThreadPoolExecutor(3) as pool:
                    one = pool.submit(
                        timed,
                        lambda: s_stub.ReportOutcome(
                            pb.OutcomeRequest(decision_id=s_decisions[0].decision_id, reward=1.0), timeout=15
                        ),
                    )
                    many = pool.submit(
                        timed,
                        lambda: s_stub.ReportOutcomes(
                            pb.ReportOutcomesRequest(
                                outcomes=[
                                    pb.OutcomeRequest(decision_id=d.decision_id, reward=reward_of(i))
                                    for i, d in enumerate(s_decisions[1:], 1)
                                ]
                            ),
                            timeout=15,
                        ),
                    )
                    refused = pool.submit(
                        timed,
                        lambda: p_stub.ReportOutcome(
                            pb.OutcomeRequest(decision_id=p_decision.decision_id, reward=1.0), timeout=15
                        ),
                    )
                    one_reply, one_error, _, one_seconds = one.result()
                    many_reply, many_error, _, many_seconds = many.result()
                    _, refused_error, refused_details, refused_seconds = refused.result()
                    spooled_during_stall = spooled_entries(spool_dir)
                    time.sleep(max(0.0, stopped_at + 4.0 - time.monotonic()))
                continued_at = time.monotonic()
                time.sleep(1.0)
                loop.finish()

                # With a spool: acknowledged (fsync'd locally) once Redis's socket timeout (2 s) expires.
                assert one_error is None
                assert not one_reply.duplicate
                assert many_error is None
                assert [r.code for r in many_reply.results] == [0] * 5
                assert spooled_during_stall == 6
                # Without: UNAVAILABLE, saying to retry.
                assert refused_error == grpc.StatusCode.UNAVAILABLE
                assert "retry" in refused_details
                for seconds in (one_seconds, many_seconds, refused_seconds):
                    assert 1.0 < seconds < 8.0
                # Spooled outcomes are replayed once Redis answers; the refused one is retried by its caller.
                wait_until(lambda: spooled_entries(spool_dir) == 0, 10, what="the spool to drain")
                retried = p_stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=p_decision.decision_id, reward=1.0), timeout=5
                )
                expected: Counter[str] = Counter(d.arm for d in s_decisions)
                expected[p_decision.arm] += 1
                assert books_of(redis_server).counts == expected  # 7 outcomes, each once
        finally:
            if loop is not None:
                loop.finish()
            spooled.kill()
            plain.kill()
    samples = loop.samples
    assert not [s for s in samples if s.error is not None]
    stall = loop.between(stopped_at, continued_at)
    before = [s for s in samples if s.at < stopped_at]
    assert stall
    assert all(s.reply and not s.reply.stale and s.reply.reason == pb.SAMPLED for s in stall)
    assert percentile(latencies(stall), 0.99) < ROUTE_P99_BOUND, summary_ms(latencies(stall))
    print(
        f"\nredis SIGSTOP: ReportOutcome acknowledged from the spool in {one_seconds:.2f}s, "
        f"ReportOutcomes(5) in {many_seconds:.2f}s; without a spool UNAVAILABLE in {refused_seconds:.2f}s "
        f"(retry was duplicate={retried.duplicate})\n"
        f"  Route before {summary_ms(latencies(before))}; during the stall {summary_ms(latencies(stall))}"
    )


# -- a slow, flaky network between the router and Redis -----------------------------------------------


def route_many(
    stub: router_pb2_grpc.RouterStub, prefix: str, n: int
) -> tuple[list[pb.RouteResponse], list[float]]:
    replies, took = [], []
    for i in range(n):
        started = time.perf_counter()
        replies.append(route(stub, f"{prefix}-{i}"))
        took.append(time.perf_counter() - started)
    return replies, took


def report_until_acknowledged(
    stub: router_pb2_grpc.RouterStub, decision: pb.RouteResponse | Issued, reward: float, attempts: int = 50
) -> tuple[pb.OutcomeResponse, int]:
    """Report an outcome, retrying UNAVAILABLE (as a client should); return the reply and the failures."""
    failures = 0
    while True:
        try:
            reply = stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=decision.decision_id, reward=reward), timeout=5
            )
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            failures += 1
            if failures >= attempts:
                raise AssertionError(f"outcome not acknowledged after {failures} attempts") from exc
            time.sleep(0.05)
            continue
        return reply, failures


def test_slow_and_resetting_network_to_redis_route_unaffected_and_learning_continues() -> None:
    with running_redis() as redis_server, FaultProxy(redis_server.port) as proxy:
        apply_ranker(redis_server.url)
        metrics_port = free_port()
        router = RouterProcess(proxy.url, MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                routed, base = route_many(stub, "base", 400)
                proxy.latency = 0.2
                time.sleep(0.5)
                slow_replies, slow = route_many(stub, "slow", 400)
                routed += slow_replies
                outcome, _, _, slow_outcome_seconds = timed(
                    lambda: stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=routed[0].decision_id, reward=1.0), timeout=10
                    )
                )
                assert outcome is not None
                assert not outcome.duplicate
                reported = [routed[0]]
                assert percentile(slow, 0.99) < ROUTE_P99_BOUND, summary_ms(slow)
                wait_until(
                    lambda: books_of(redis_server).trials == len(routed), 15, what="trials through +200 ms"
                )

                proxy.latency = 0.0
                accepted_before = proxy.accepted
                resets, outcome_failures = 0, 0
                for round_ in range(5):
                    resets += proxy.reset_all()
                    replies, _ = route_many(stub, f"reset{round_}", 100)
                    routed += replies
                    for decision in replies[:3]:
                        _, failures = report_until_acknowledged(stub, decision, 1.0)
                        outcome_failures += failures
                        reported.append(decision)
                    time.sleep(0.3)
                assert resets >= 5
                wait_until(
                    lambda: books_of(redis_server).trials >= len(routed), 15, what="trials after resets"
                )
                time.sleep(0.3)
                final = books_of(redis_server)
                assert final.trials == len(routed)  # every trial once: none lost to a reset, none doubled
                assert final.counts == Counter(d.arm for d in reported)
                assert proxy.accepted > accepted_before  # it reconnected
                assert all(r.reason == pb.SAMPLED for r in routed)
            errors = redis_errors(metrics_port)
        finally:
            router.kill()
    print(
        f"\nproxy: Route base {summary_ms(base)}; with +200 ms per chunk {summary_ms(slow)}; "
        f"ReportOutcome through +200 ms took {slow_outcome_seconds:.2f}s\n"
        f"  {resets} connection resets in 5 rounds: {outcome_failures} ReportOutcome attempts got "
        "UNAVAILABLE "
        f"and were retried; {proxy.accepted - accepted_before} reconnections; redis error metric {errors:g}; "
        f"all {len(routed)} trials and {len(reported)} outcomes in Redis exactly once"
    )


# -- outcomes and trial counts during an outage -------------------------------------------------------


def test_outcomes_and_trials_during_an_outage_are_applied_exactly_once(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        metrics_port = free_port()
        router = RouterProcess(
            redis_server.url,
            MABROUTER_SPOOL_DIR=str(spool_dir),
            MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        )
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions, _ = route_many(stub, "before", 200)
                acknowledged: dict[int, float] = {}
                for i in range(100):
                    reply = stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=reward_of(i)),
                        timeout=5,
                    )
                    assert not reply.duplicate
                    acknowledged[i] = reward_of(i)
                wait_until(lambda: books_of(redis_server).trials == 200, 10, what="trials before the outage")

                redis_server.stop(kill=True)
                outage, _ = route_many(stub, "during", 300)
                decisions += outage
                assert all(d.reason == pb.SAMPLED and not d.stale for d in outage)
                ack_seconds = []
                for i in range(100, 300):
                    started = time.monotonic()
                    reply = stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=reward_of(i)),
                        timeout=5,
                    )
                    ack_seconds.append(time.monotonic() - started)
                    assert not reply.duplicate
                    acknowledged[i] = reward_of(i)
                in_spool = spooled_entries(spool_dir)
                pending = scrape(metrics_port)
                assert in_spool == 200
                assert pending['mabrouter_pending_writes{buffer="outcome_spool"}'] == 200
                assert pending['mabrouter_pending_writes{buffer="trials"}'] >= 300

                redis_server.start()
                wait_until(lambda: spooled_entries(spool_dir) == 0, 15, what="the spool to drain")
                wait_until(lambda: books_of(redis_server).trials == 500, 15, what="outage trials flushed")
                time.sleep(0.3)
                final = books_of(redis_server)
                assert final.trials == 500  # every Route call counted once
                expected_counts: Counter[str] = Counter()
                expected_sums: Counter[str] = Counter()
                for i, reward in acknowledged.items():
                    expected_counts[decisions[i].arm] += 1
                    expected_sums[decisions[i].arm] += reward
                assert final.counts == expected_counts
                assert {arm: final.sums.get(arm, 0.0) for arm in expected_sums} == dict(expected_sums)
                assert sum(final.counts.values()) == len(acknowledged) == 300

                again = stub.ReportOutcomes(
                    pb.ReportOutcomesRequest(
                        outcomes=[
                            pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=reward)
                            for i, reward in acknowledged.items()
                        ]
                    ),
                    timeout=10,
                )
                assert all(r.code == 0 and r.duplicate for r in again.results)
                assert books_of(redis_server) == final
        finally:
            router.kill()
    print(
        "\noutage: 300 decisions and 200 outcomes while Redis was down; outcomes acknowledged from the "
        "spool "
        f"in {summary_ms(ack_seconds)}; after recovery 500/500 trials and 300/300 outcomes applied once"
    )


def test_the_spool_is_bounded_and_refuses_rather_than_growing(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(
            redis_server.url, MABROUTER_SPOOL_DIR=str(spool_dir), MABROUTER_SPOOL_MAX_ENTRIES="3"
        )
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions, _ = route_many(stub, "u", 5)
                redis_server.stop(kill=True)
                for decision in decisions[:3]:
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0), timeout=5
                    )
                with pytest.raises(grpc.RpcError) as info:
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[3].decision_id, reward=1.0), timeout=5
                    )
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "3 entries, its limit" in info.value.details()
                assert spooled_entries(spool_dir) == 3
                redis_server.start()
                wait_until(lambda: spooled_entries(spool_dir) == 0, 15, what="the spool to drain")
                report_until_acknowledged(stub, decisions[3], 1.0)
                assert books_of(redis_server).counts == Counter(d.arm for d in decisions[:4])
        finally:
            router.kill()


# -- the ledger: every acknowledged outcome counted exactly once, through every fault ----------------


class Issued(NamedTuple):
    """What a client keeps of a decision (a compact RouteResponse: soak runs keep hundreds of thousands)."""

    decision_id: str
    arm: str
    reason: int


@dataclass
class Ledger:
    """The client's books: every decision, its reward, and which outcomes the router acknowledged."""

    decisions: dict[int, Issued] = field(default_factory=dict)
    acknowledged: set[int] = field(default_factory=set)
    first_report_failures: Counter[str] = field(default_factory=Counter)
    route_failures: Counter[str] = field(default_factory=Counter)
    duplicate_on_first_report: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LedgerRun:
    """Routers on one fixed port sharing one spool directory, and client threads that route and report.

    Each client makes a decision (retrying until a router answers), then reports its outcome exactly once,
    counting it as acknowledged only when ReportOutcome returned OK. Faults are injected from outside
    (redis_*/router_* methods); `settle` then retries the unacknowledged outcomes and checks the books.
    """

    def __init__(self, redis_server: RedisServer, spool_dir: Path, **env: str) -> None:
        self.redis_server = redis_server
        self.spool_dir = spool_dir
        self.env = {"MABROUTER_SPOOL_DIR": str(spool_dir), **env}
        self.port = free_port()
        self.router = router_on_port(redis_server.url, self.port, **self.env).wait_serving()
        self.address = self.router.address
        self.routers = [self.router]
        self.ledger = Ledger()
        self.events: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # clients

    def start_clients(self, workers: int, total: int | None, pause: float = 0.0) -> None:
        """`workers` threads share decisions 0..total-1 (or keep going until stop_clients, if None)."""
        for w in range(workers):
            thread = threading.Thread(target=self._client, args=(w, workers, total, pause), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_clients(self, timeout: float = 120) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a client thread did not finish"

    def wait_clients(self, timeout: float = 120) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a client thread did not finish"

    def _client(self, first: int, step: int, total: int | None, pause: float) -> None:
        ledger = self.ledger
        channel, stub = open_stub(self.address)
        with channel:
            i = first
            while (total is None or i < total) and not (total is None and self._stop.is_set()):
                while True:
                    try:
                        decision = route(stub, f"ledger-{i}")
                        break
                    except grpc.RpcError as exc:
                        with ledger.lock:
                            ledger.route_failures[exc.code().name] += 1
                        time.sleep(0.02)
                try:
                    reply = stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decision.decision_id, reward=reward_of(i)), timeout=5
                    )
                except grpc.RpcError as exc:
                    reply, failure = None, exc.code().name
                with ledger.lock:
                    ledger.decisions[i] = Issued(decision.decision_id, decision.arm, decision.reason)
                    if reply is not None:
                        ledger.acknowledged.add(i)
                        ledger.duplicate_on_first_report += int(reply.duplicate)
                    else:
                        ledger.first_report_failures[failure] += 1
                    ledger.done += 1
                i += step
                if pause:
                    time.sleep(pause)

    def wait_progress(self, done: int, timeout: float = 60) -> None:
        wait_until(lambda: self.ledger.done >= done, timeout, interval=0.01, what=f"{done} decisions")

    # faults

    def redis_restart(self, kill: bool, down_for: float = 0.8) -> None:
        """SIGKILL or SIGTERM (a clean AOF shutdown) redis-server, keep it down, start it again."""
        self.redis_server.stop(kill=kill)
        time.sleep(down_for)
        self.redis_server.start()
        self.events["redis SIGKILL" if kill else "redis SIGTERM"] += 1

    def redis_stall(self, seconds: float) -> None:
        with stopped(self.redis_server):
            time.sleep(seconds)
        self.events["redis SIGSTOP"] += 1

    def router_restart(self, kill: bool) -> None:
        """SIGKILL or SIGTERM the router, then start a new one on the same port and spool directory."""
        if kill:
            self.router.kill()
        else:
            assert self.router.terminate(30) == 0, self.router.output()
        self.router = router_on_port(self.redis_server.url, self.port, **self.env).wait_serving(30)
        self.routers.append(self.router)
        self.events["router SIGKILL" if kill else "router SIGTERM"] += 1

    def close(self) -> None:
        self._stop.set()
        for router in self.routers:
            router.kill()

    # the books

    def _stats(self) -> Books:
        return books_of(self.redis_server)

    def settle(self) -> dict[str, Any]:
        """Check the ledger; return the numbers. Clients must have stopped."""
        ledger = self.ledger
        n = len(ledger.decisions)
        assert len({d.decision_id for d in ledger.decisions.values()}) == n, "decision ids must be unique"
        assert all(d.reason == pb.SAMPLED for d in ledger.decisions.values())
        assert ledger.duplicate_on_first_report == 0
        wait_until(lambda: spooled_entries(self.spool_dir) == 0, 30, what="every spool to drain")
        after_first_pass = self._stats()
        applied_first = sum(after_first_pass.counts.values())
        acked_first = len(ledger.acknowledged)
        # None lost: every acknowledged outcome is in Redis. Some unacknowledged ones may be too (the router
        # died or Redis timed out after applying them): exactly those come back as duplicates below.
        assert acked_first <= applied_first <= n

        channel, stub = open_stub(self.address)
        retried = late_duplicates = 0
        with channel:
            for i in sorted(set(ledger.decisions) - ledger.acknowledged):
                reply, _ = report_until_acknowledged(stub, ledger.decisions[i], reward_of(i))
                retried += 1
                late_duplicates += int(reply.duplicate)
                ledger.acknowledged.add(i)
            assert applied_first == acked_first + late_duplicates
            final = self._stats()
            expected_counts: Counter[str] = Counter()
            expected_sums: Counter[str] = Counter()
            for i, decision in ledger.decisions.items():
                expected_counts[decision.arm] += 1
                expected_sums[decision.arm] += reward_of(i)
            # The heart of it: the posterior holds exactly the acknowledged outcomes, none lost, none doubled.
            assert final.counts == expected_counts
            assert {arm: final.sums.get(arm, 0.0) for arm in expected_sums} == dict(expected_sums)

            # Retrying every outcome once more changes nothing: all duplicates.
            duplicates = 0
            ordered = sorted(ledger.decisions)
            for start in range(0, n, 1000):
                chunk = ordered[start : start + 1000]
                reply = stub.ReportOutcomes(
                    pb.ReportOutcomesRequest(
                        outcomes=[
                            pb.OutcomeRequest(
                                decision_id=ledger.decisions[i].decision_id, reward=reward_of(i)
                            )
                            for i in chunk
                        ]
                    ),
                    timeout=30,
                )
                assert all(r.code == 0 for r in reply.results)
                duplicates += sum(1 for r in reply.results if r.duplicate)
            assert duplicates == n
            assert self._stats().counts == final.counts
        return {
            "decisions": n,
            "acknowledged_first_pass": acked_first,
            "applied_first_pass": applied_first,
            "first_report_failures": dict(ledger.first_report_failures),
            "retried": retried,
            "unacknowledged_but_applied": late_duplicates,
            "applied_final": sum(final.counts.values()),
            "duplicates_on_replay": duplicates,
            "route_retries": sum(ledger.route_failures.values()),
            "trials_in_redis": final.trials,
            "events": dict(self.events),
        }


def test_ledger_every_acknowledged_outcome_counts_exactly_once_through_redis_and_router_faults(
    tmp_path: Path,
) -> None:
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        run = LedgerRun(redis_server, tmp_path / "spool")
        during: dict[str, int] = {}
        try:
            run.start_clients(workers=4, total=None, pause=0.002)
            for name, fault in (
                ("redis SIGTERM", lambda: run.redis_restart(kill=False)),  # SHUTDOWN-like: AOF flushed
                ("router SIGKILL", lambda: run.router_restart(kill=True)),  # its spool adopted by the next
                ("redis SIGKILL", lambda: run.redis_restart(kill=True)),  # appendfsync always
                ("router SIGTERM", lambda: run.router_restart(kill=False)),  # drains, leaves its spool
            ):
                run.wait_progress(run.ledger.done + 300)  # every fault hits live traffic
                before = run.ledger.done
                fault()
                during[name] = run.ledger.done - before
            run.wait_progress(max(2000, run.ledger.done + 300))
            run.stop_clients()
            numbers = run.settle()
        finally:
            run.close()
    assert numbers["decisions"] >= 2000
    # Clients kept deciding (and reporting, into the spool) while Redis was down.
    assert during["redis SIGTERM"] > 0
    assert during["redis SIGKILL"] > 0
    # Trials are not acknowledged: a SIGKILLed router loses the counts it had not flushed yet (see
    # docs/reliability.md). None is ever counted twice.
    assert numbers["trials_in_redis"] <= numbers["decisions"] + numbers["route_retries"]
    assert numbers["events"] == {
        "redis SIGTERM": 1,
        "router SIGKILL": 1,
        "redis SIGKILL": 1,
        "router SIGTERM": 1,
    }
    print(f"\nledger: {numbers}\n  decisions made during each fault: {during}")


# -- limits --------------------------------------------------------------------------------------------


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_more_than_1000_items_in_one_call_is_invalid_argument(router: InProcessRouter) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        decision = route(stub, "u")
        outcomes = [pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0)] * 1001
        error = rpc_error(lambda: stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes), timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1001 outcomes in one call; the limit is 1000" in error.details()
        requests = [pb.RouteRequest(experiment="ranker", unit_id="u")] * 1001
        error = rpc_error(lambda: stub.RouteBatch(pb.RouteBatchRequest(requests=requests), timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the limit is 1000" in error.details()
        # exactly at the limit is fine
        reply = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes[:1000]), timeout=10)
        assert [r.duplicate for r in reply.results].count(False) == 1


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@pytest.mark.parametrize(
    ("attributes", "needle"),
    [
        ({f"a{i}": i for i in range(65)}, "65 attributes sent; the limit is 64"),
        ({"s": "x" * 1025}, "'s' is 1025 characters; the limit is 1024"),
        ({"tags": ["t"] * 65}, "'tags' has 65 items; the limit is 64"),
        ({"k" * 129: 1}, "is longer than 128 characters"),
        ({"nested": {"a": 1}}, "nested objects are not supported"),
        ({"mixed": ["a", 1]}, "lists may only hold strings"),
    ],
    ids=["count", "string", "list", "key", "nested", "mixed-list"],
)
def test_oversized_or_nested_attributes_are_invalid_argument_naming_the_limit(
    router: InProcessRouter, attributes: dict[str, Any], needle: str
) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(lambda: route(stub, "u", attributes=_struct(attributes)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in error.details()
        assert route(stub, "u").reason == pb.SAMPLED  # and the next call is fine


def test_oversized_ids_are_invalid_argument_naming_the_limit(router: InProcessRouter) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(lambda: route(stub, "u" * 513))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unit_id is 513 characters; the limit is 512" in error.details()
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id="d" * 513, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "513 characters" in error.details()


def test_a_2mb_message_is_resource_exhausted(router: InProcessRouter) -> None:
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(lambda: route(stub, "u" * (2 * 1024 * 1024)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in error.details()
        # ~2 MB: the size limit applies before the message is even parsed (so before the 1,000-item limit)
        outcomes = [pb.OutcomeRequest(decision_id="x" * 500, reward=1.0)] * 4000
        error = rpc_error(lambda: stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes), timeout=5))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert route(stub, "u").reason == pb.SAMPLED


def test_max_concurrent_rpcs_sheds_load_instead_of_queueing() -> None:
    with running_redis() as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(redis_server.url, MABROUTER_MAX_CONCURRENT_RPCS="2").wait_serving()
        try:
            channel, stub = open_stub(router.address)
            with channel:
                decisions = [route(stub, f"u{i}") for i in range(8)]
                with stopped(redis_server), ThreadPoolExecutor(9) as pool:
                    slow = [
                        pool.submit(
                            timed,
                            lambda d=d: stub.ReportOutcome(
                                pb.OutcomeRequest(decision_id=d.decision_id, reward=1.0), timeout=15
                            ),
                        )
                        for d in decisions
                    ]
                    time.sleep(0.3)  # the one admitted outcome call holds its slot, waiting on Redis
                    during, route_error, _, route_seconds = timed(lambda: route(stub, "during"))
                    results = [future.result() for future in slow]
                codes = Counter(code for _, code, _, _ in results)
                shed = [r for r in results if r[1] == grpc.StatusCode.RESOURCE_EXHAUSTED]
                assert shed
                assert all(seconds < 1.0 and details for _, _, details, seconds in shed)  # refused at once
                assert any("outcome calls already in flight" in details for _, _, details, _ in shed)
                assert codes[grpc.StatusCode.UNAVAILABLE] <= 2  # only the admitted ones waited for Redis
                assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
                # Outcome calls may take only half the slots: Route keeps the rest and is answered.
                assert route_error is None, route_error
                assert during.reason == pb.SAMPLED
                assert route_seconds < 1.0
                assert route(stub, "after").reason == pb.SAMPLED
        finally:
            router.kill()
    print(
        f"\nmax_concurrent_rpcs=2 with Redis hung: { {c.name: n for c, n in codes.items()} }; "
        f"shed in <= {max(r[3] for r in shed) * 1000:.1f} ms; Route answered in {route_seconds * 1000:.1f} ms"
    )


def test_a_caller_deadline_shorter_than_a_redis_stall_is_honoured_promptly() -> None:
    with running_redis() as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(redis_server.url).wait_serving()
        try:
            channel, stub = open_stub(router.address)
            with channel:
                decisions = [route(stub, f"u{i}") for i in range(21)]
                with stopped(redis_server):
                    _, code, _, seconds = timed(
                        lambda: stub.ReportOutcome(
                            pb.OutcomeRequest(decision_id=decisions[0].decision_id, reward=1.0), timeout=0.3
                        )
                    )
                    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
                    assert seconds < 1.0
                    assert route(stub, "during").reason == pb.SAMPLED
                    time.sleep(2.5)  # let the server-side call hit its Redis timeout after the caller left
                # The cancelled call left no poisoned connection: every later outcome lands on its own arm.
                replies = [report_until_acknowledged(stub, d, 1.0)[0] for d in decisions[1:]]
                assert [r.arm for r in replies] == [d.arm for d in decisions[1:]]
                retried, _ = report_until_acknowledged(stub, decisions[0], 1.0)
                assert books_of(redis_server).counts == Counter(d.arm for d in decisions)
        finally:
            router.kill()
        log = router.output()
    assert "Traceback" not in log, log
    print(
        f"\ndeadline 0.3 s during a Redis stall: DEADLINE_EXCEEDED after {seconds * 1000:.0f} ms; "
        f"the timed-out outcome, retried, was duplicate={retried.duplicate}"
    )


# -- decision ids: HMAC, rotation, replay --------------------------------------------------------------


def test_a_decision_id_signed_with_another_secret_is_invalid_argument(router: InProcessRouter) -> None:
    token = decision_id.DecisionToken("ranker", "ranker-v2", 1, int(time.time() * 1000), "forged-1", True)
    forged = decision_id.encode(token, b"not-the-routers-secret-0123456789")
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id=forged, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signature does not verify" in error.details()
        genuine = decision_id.encode(token, support.DECISION_SECRET.encode())  # the fixture router's secret
        assert not stub.ReportOutcome(pb.OutcomeRequest(decision_id=genuine, reward=1.0), timeout=2).duplicate


def test_key_rotation_accepts_the_previous_key_only_while_it_is_configured(redis_server: RedisServer) -> None:
    apply_ranker(redis_server.url)
    old, new = "old-secret-" + secrets.token_hex(16), "new-secret-" + secrets.token_hex(16)
    before = InProcessRouter(router_settings(redis_server.url, decision_secret=old)).start()
    rotating = InProcessRouter(
        router_settings(redis_server.url, decision_secret=new, decision_secret_previous=old)
    ).start()
    after = InProcessRouter(router_settings(redis_server.url, decision_secret=new)).start()
    try:
        with (
            grpc.insecure_channel(before.address) as b,
            grpc.insecure_channel(rotating.address) as r,
            grpc.insecure_channel(after.address) as a,
        ):
            old_stub, rotating_stub, new_stub = (router_pb2_grpc.RouterStub(c) for c in (b, r, a))
            issued_old = [route(old_stub, f"o{i}") for i in range(2)]
            issued_new = route(rotating_stub, "n")
            # During the rotation: ids signed with the old key are accepted ...
            reply = rotating_stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=issued_old[0].decision_id, reward=1.0), timeout=2
            )
            assert (reply.duplicate, reply.arm) == (False, issued_old[0].arm)
            # ... and after it (previous key removed) they are refused,
            error = rpc_error(
                lambda: new_stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=issued_old[1].decision_id, reward=1.0), timeout=2
                )
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "signature does not verify" in error.details()
            # while ids signed with the new key verify everywhere the new key is configured.
            assert not new_stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=issued_new.decision_id, reward=1.0), timeout=2
            ).duplicate
            error = rpc_error(
                lambda: old_stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=issued_new.decision_id, reward=1.0), timeout=2
                )
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for instance in (before, rotating, after):
            instance.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_decision_id_cannot_be_replayed_into_another_experiment(
    router: InProcessRouter, tmp_path: Path
) -> None:
    other = tmp_path / "ranker-b.yaml"
    other.write_text(EXAMPLE.read_text().replace("name: ranker\n", "name: ranker-b\n"))
    cli("experiment", "apply", str(other), redis_url=router.settings.redis_url)
    channel, stub = open_stub(router.address)
    with channel:
        wait_until(
            lambda: stub.Route(pb.RouteRequest(experiment="ranker-b", unit_id="u"), timeout=2).decision_id,
            5,
            what="the second experiment",
        )
        decision = route(stub, "u")
        body, mac = decision.decision_id.split(".")
        payload = _unb64(body).decode()
        assert payload.startswith("1|ranker|")
        replayed = _b64(payload.replace("1|ranker|", "1|ranker-b|", 1).encode()) + "." + mac
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id=replayed, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signature does not verify" in error.details()
        # Nor with a non-canonical spelling of the same MAC (spare base64 bits) to dodge the dedup by id.
        respelled = next(
            f"{body}.{mac[:-1]}{c}"
            for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            if c != mac[-1] and _unb64(mac[:-1] + c) == _unb64(mac)
        )
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id=respelled, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "non-canonical" in error.details()
        reply = stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0), timeout=2)
        assert (reply.experiment, reply.duplicate) == ("ranker", False)
    client = redis.Redis.from_url(router.settings.redis_url, decode_responses=True)
    try:
        assert books(client, "ranker-b").counts == Counter()
        assert sum(books(client, "ranker").counts.values()) == 1
    finally:
        client.close()


# -- secrets stay out of logs --------------------------------------------------------------------------


def test_secrets_never_appear_in_the_router_log_or_errors(tmp_path: Path) -> None:
    password = "redis-pw-" + secrets.token_hex(8)
    secret = "decision-secret-" + secrets.token_hex(16)
    previous = "previous-secret-" + secrets.token_hex(16)
    with running_redis() as redis_server:
        admin = redis_server.client()
        admin.config_set(
            "requirepass", password
        )  # = redis-server --requirepass (support pings unauthenticated)
        admin.close()
        url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"
        apply_ranker(url)
        router = RouterProcess(
            url,
            MABROUTER_DECISION_SECRET=secret,
            MABROUTER_DECISION_SECRET_PREVIOUS=previous,
            MABROUTER_LOG_LEVEL="DEBUG",
            MABROUTER_SPOOL_DIR=str(tmp_path / "spool"),
        )
        details = []
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions = [route(stub, f"u{i}") for i in range(5)]
                stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=decisions[0].decision_id, reward=1.0), timeout=5
                )
                details.extend(
                    rpc_error(
                        lambda bad=bad: stub.ReportOutcome(
                            pb.OutcomeRequest(decision_id=bad, reward=1.0), timeout=2
                        )
                    ).details()
                    for bad in ("garbage", decisions[1].decision_id[:-2] + "AA")
                )
                with stopped(redis_server):  # errors and warnings get logged, outcomes spooled
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[2].decision_id, reward=1.0), timeout=10
                    )
                redis_server.stop(kill=True)
                time.sleep(0.5)
                details.append(rpc_error(lambda: route(stub, "u" * 600)).details())
            assert router.terminate() == 0
        finally:
            router.kill()
        cli_down = cli("experiment", "list", redis_url=url, check=False)
    log = router.output()
    assert f"redis redis://***@127.0.0.1:{redis_server.port}/0" in log  # the URL is logged, redacted
    assert "snapshot refresh failed" in log  # the outage was logged ...
    assert cli_down.returncode == 3
    for text in (log, cli_down.stdout, cli_down.stderr, *details):
        for hidden in (password, secret, previous):
            assert hidden not in text  # ... without a secret


# -- least-privilege Redis ACLs (docs/reliability.md shows these lines) -------------------------------

# Everything the router does: read config/stats/controls, run its Lua scripts (which call SET, GET,
# HMGET, TYPE, HGET, HSET, XADD inside: scripts run with the caller's permissions), append the
# exposure log, subscribe to change notices. It reads every mabrouter key (%R~) but writes only the keys it
# owns: it cannot change an experiment's config or its kill switches. Only the change channel.
ROUTER_ACL = (
    "resetkeys %R~mabrouter:* ~mabrouter:{*}:stats ~mabrouter:{*}:seen:* ~mabrouter:{*}:batch:* "
    "~mabrouter:{*}:sticky:* ~mabrouter:{*}:decisions ~mabrouter:{*}:outcomes ~mabrouter:{*}:audit "
    "~mabrouter:{*}:audited resetchannels &mabrouter:changes -@all "
    "+ping +smembers +hgetall +hget +hmget +type +hset +hincrby +hincrbyfloat +get +set +xadd "
    "+evalsha +eval +script|load +script|exists +subscribe +unsubscribe"
)
# Everything the CLI does: apply/list/status/kill/unkill/rollout/audit/export. It writes configs, switches
# and the audit log, publishes change notices, and only reads counters and logs.
OPERATOR_ACL = (
    "resetkeys %R~mabrouter:* ~mabrouter:experiments ~mabrouter:{*}:config ~mabrouter:{*}:control "
    "~mabrouter:{*}:audit ~mabrouter:{*}:audited resetchannels &mabrouter:changes -@all "
    "+ping +smembers +sadd +hgetall +hget +hset +hdel +hincrby +xadd +xrange +xrevrange "
    "+publish +evalsha +eval +script|load +script|exists"
)

STICKY_EXPERIMENT = """\
name: sticky-exp
control: a
arms:
  - name: a
  - name: b
sticky: {ttl_seconds: 3600}
"""


def acl_user(name: str, password: str, rules: str) -> tuple[str, ...]:
    return ("--user", name, "on", f">{password}", *rules.split())


def _parallel_cli(redis_url: str, *commands: tuple[str, ...]) -> list[str]:
    """Run CLI commands concurrently (each is a Python start-up); return their stdout."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: cli(*command, redis_url=redis_url).stdout, commands))


def _sticky_lookup_works(admin: redis.Redis, stub: router_pb2_grpc.RouterStub, attempt: list[int]) -> bool:
    """A unit assigned in Redis by someone else is served its arm with reason STICKY: the router's GET
    worked (a refused or slow lookup falls back to a hash-seeded draw with reason SAMPLED)."""
    attempt[0] += 1
    unit = f"seeded-{attempt[0]}"
    admin.set(f"mabrouter:{{sticky-exp}}:sticky:sticky-exp:{unit}", "b", ex=3600)
    reply = stub.Route(pb.RouteRequest(experiment="sticky-exp", unit_id=unit), timeout=2)
    return reply.arm == "b" and reply.reason == pb.STICKY


def _assert_denied(client: redis.Redis, attempts: list[Callable[[], Any]]) -> int:
    for attempt in attempts:
        with pytest.raises(redis.exceptions.ResponseError, match=r"permission|can.t run"):
            attempt()
    return len(attempts)


def test_least_privilege_acl_users_are_enough_for_the_router_and_the_cli(tmp_path: Path) -> None:
    router_pw, operator_pw, admin_pw = (secrets.token_hex(12) for _ in range(3))
    args = (
        # The harness probes readiness with an unauthenticated PING; in production use "user default off".
        *("--user", "default", "on", "nopass", "-@all", "+ping"),
        *acl_user("router", router_pw, ROUTER_ACL),
        *acl_user("operator", operator_pw, OPERATOR_ACL),
        *acl_user("admin", admin_pw, "~* &* +@all"),  # the test's own eyes
    )
    with running_redis(*args) as redis_server:
        host = f"127.0.0.1:{redis_server.port}"
        router_url = f"redis://router:{router_pw}@{host}/0"
        operator_url = f"redis://operator:{operator_pw}@{host}/0"
        admin = redis.Redis(
            port=redis_server.port, username="admin", password=admin_pw, decode_responses=True
        )
        sticky_file = tmp_path / "sticky.yaml"
        sticky_file.write_text(STICKY_EXPERIMENT)
        _parallel_cli(
            operator_url, ("experiment", "apply", str(EXAMPLE)), ("experiment", "apply", str(sticky_file))
        )
        metrics_port = free_port()
        router = RouterProcess(router_url, MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions = [route(stub, f"u{i}") for i in range(30)]
                for i in range(10):
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=1.0), timeout=5
                    )
                first = stub.Route(pb.RouteRequest(experiment="sticky-exp", unit_id="s1"), timeout=2)
                wait_until(
                    lambda: admin.get("mabrouter:{sticky-exp}:sticky:sticky-exp:s1") == first.arm,
                    5,
                    what="the sticky assignment written (Lua: GET, SET)",
                )
                wait_until(
                    lambda attempt=[0]: _sticky_lookup_works(admin, stub, attempt),
                    5,
                    what="a sticky lookup (GET)",
                )

                cli("kill", "ranker", "--reason", "acl test", "--actor", "ops", redis_url=operator_url)
                wait_until(
                    lambda: route(stub, "k").reason == pb.KILLED, 5, what="the kill to reach the router"
                )
                cli("unkill", "ranker", "--actor", "ops", redis_url=operator_url)
                wait_until(lambda: route(stub, "k").reason == pb.SAMPLED, 5, what="the unkill")
                # A raw edit (an incident with redis-cli): the router writes the audit entry, as its user.
                admin.hset("mabrouter:{ranker}:control", "rollout", "50")
                wait_until(
                    lambda: any(
                        f.get("actor") == "unattributed" for _, f in admin.xrange("mabrouter:{ranker}:audit")
                    ),
                    5,
                    what="the router to audit the raw edit",
                )
                admin.hdel("mabrouter:{ranker}:control", "rollout")
                sampled = sum(1 for d in decisions if d.reason == pb.SAMPLED)
                wait_until(
                    lambda: books(admin).counts.total() == 10, 5, what="outcomes (Lua: SET, HINCRBY...)"
                )
                wait_until(lambda: books(admin).trials >= sampled, 5, what="trials (Lua: SET, HINCRBYFLOAT)")
                wait_until(lambda: admin.xlen("mabrouter:{ranker}:decisions") >= 30, 5, what="exposure log")
                assert admin.xlen("mabrouter:{ranker}:outcomes") == 10
            errors = redis_errors(metrics_port)
            listed, status, audit, exported = _parallel_cli(
                operator_url,
                ("experiment", "list"),
                ("status", "ranker", "--json"),
                ("audit", "ranker", "--json"),
                ("export", "ranker"),
            )
            assert "ranker" in listed
            assert "ranker-v3" in status
            assert '"actor": "ops"' in audit or '"actor":"ops"' in audit
            assert len(exported.splitlines()) >= 30
        finally:
            router.kill()
        log = router.output()
        clients = {
            user: redis.Redis(port=redis_server.port, username=user, password=password)
            for user, password in (("router", router_pw), ("operator", operator_pw))
        }
        denied = 0
        for client in clients.values():
            denied += _assert_denied(
                client,
                [
                    client.flushall,
                    lambda client=client: client.config_get("*"),
                    lambda client=client: client.keys("*"),
                    lambda client=client: client.get("not-mabrouter:key"),
                    lambda client=client: client.hgetall("other:{ranker}:stats"),
                    lambda client=client: client.eval("return redis.call('FLUSHALL')", 0),
                    lambda client=client: client.delete("mabrouter:experiments"),
                    lambda client=client: client.execute_command("SCRIPT", "FLUSH"),
                ],
            )
        # Each user lacks what only the other needs: the router never publishes nor changes a config or a
        # switch; the CLI never counts.
        router_client, operator_client = clients["router"], clients["operator"]
        denied += _assert_denied(
            router_client,
            [
                lambda: router_client.publish("mabrouter:changes", "x"),
                lambda: router_client.hset("mabrouter:{ranker}:control", "kill", "0"),
                lambda: router_client.hset("mabrouter:{_global}:control", "kill", "0"),
                lambda: router_client.hset("mabrouter:{ranker}:config", "doc", "{}"),
                lambda: router_client.sadd("mabrouter:experiments", "evil"),
            ],
        )
        denied += _assert_denied(
            operator_client,
            [
                lambda: operator_client.hincrbyfloat("mabrouter:{ranker}:stats", "ranker-v1:sum", 1),
                lambda: operator_client.hset("mabrouter:{ranker}:stats", "ranker-v1:count", 0),
                lambda: operator_client.set("mabrouter:{ranker}:seen:x", "1"),
            ],
        )
        for client in (router_client, operator_client, admin):
            client.close()
    assert errors == 0
    assert "NOPERM" not in log
    assert "permission" not in log
    print(f"\nACLs: the router and operator users are enough end to end; {denied} forbidden commands refused")


# -- bounded memory while Redis is down at start-up ---------------------------------------------------


def test_fallback_answers_do_not_create_a_metric_series_per_caller_supplied_name() -> None:
    router = InProcessRouter(router_settings(f"redis://127.0.0.1:{free_port()}/0")).start(wait_ready=False)
    try:
        channel, stub = open_stub(router.address)
        with channel:
            for i in range(2000):
                reply = stub.Route(
                    pb.RouteRequest(experiment=f"exp-{i}", unit_id="u", default_arm=f"arm-{i}"), timeout=2
                )
                assert reply.reason == pb.FALLBACK_DEFAULT
        assert router.app is not None
        series = scrape(router.app.metrics_port)
    finally:
        router.stop()
    decisions = [key for key in series if key.startswith("mabrouter_decisions_total")]
    assert len(decisions) < 100, f"{len(decisions)} mabrouter_decisions series after 2,000 fallback answers"


# -- TLS to Redis (rediss://) --------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=redis", "-keyout", "server.key",
             "-out", "server.csr", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=directory)  # fmt: skip
    return directory


def test_redis_over_tls_with_a_rediss_url_and_an_unverifiable_server_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    tls = (
        *("--tls-port", str(tls_port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(pki / "server.pem"), "--tls-key-file", str(pki / "server.key")),
        *("--tls-ca-cert-file", str(pki / "ca.pem")),
    )
    with running_redis(*tls) as redis_server:
        verified = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={pki / 'ca.pem'}&ssl_cert_reqs=required"
        apply_ranker(verified)  # the CLI over TLS
        router = RouterProcess(verified)
        untrusted = RouterProcess(f"rediss://127.0.0.1:{tls_port}/0")  # system CAs: cannot verify the server
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decision = route(stub, "u")
                assert not stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0), timeout=5
                ).duplicate
            wait_until(lambda: books_of(redis_server).trials == 1, 5, what="a trial over TLS")
            assert books_of(redis_server).counts == Counter({decision.arm: 1})
            wait_until(lambda: "certificate verify failed" in untrusted.output(), 10, what="a TLS refusal")
            assert health_status(untrusted.address) == NOT_SERVING
        finally:
            router.kill()
            untrusted.kill()


# -- Route latency while a large spool drains ---------------------------------------------------------


def test_route_latency_stays_flat_while_a_large_spool_drains(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(redis_server.url, MABROUTER_SPOOL_DIR=str(spool_dir)).wait_serving()
        loop: RouteLoop | None = None
        try:
            channel, stub = open_stub(router.address)
            with channel:
                batch = stub.RouteBatch(
                    pb.RouteBatchRequest(
                        requests=[pb.RouteRequest(experiment="ranker", unit_id=f"u{i}") for i in range(1000)]
                    ),
                    timeout=30,
                )
                outcomes = [
                    pb.OutcomeRequest(decision_id=r.response.decision_id, reward=1.0) for r in batch.results
                ]
                redis_server.stop(kill=True)
                for _ in range(15):  # 15,000 spooled entries (retries of 1,000 decisions: replay dedups them)
                    stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes), timeout=60)
                assert spooled_entries(spool_dir) == 15_000
            loop = RouteLoop(router.address)
            loop.start()
            time.sleep(0.5)
            returned_at = time.monotonic()
            redis_server.start()
            wait_until(lambda: spooled_entries(spool_dir) == 0, 120, interval=0.2, what="the spool to drain")
            drained_at = time.monotonic()
            loop.finish()
            assert books_of(redis_server).counts.total() == 1000
        finally:
            if loop is not None:
                loop.finish()
            router.kill()
    draining = latencies(loop.between(returned_at, drained_at))
    took = drained_at - returned_at
    print(f"\nspool of 15,000 drained in {took:.1f}s; Route meanwhile {summary_ms(draining)}")
    assert not [s for s in loop.samples if s.error is not None]
    assert percentile(draining, 0.99) < ROUTE_P99_BOUND, summary_ms(draining)


# -- an outage is logged, not flooded -------------------------------------------------------------------


def test_a_redis_outage_is_logged_once_not_once_per_retry() -> None:
    with running_redis() as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(redis_server.url).wait_serving()
        try:
            channel, stub = open_stub(router.address)
            with channel:
                route(stub, "u")
                redis_server.stop(kill=True)
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:  # traffic keeps a trial batch waiting to be flushed
                    route(stub, "u")
                    time.sleep(0.01)
        finally:
            router.kill()
    warnings = [line for line in router.output().splitlines() if " WARNING " in line]
    per_logger = Counter(line.split(" WARNING ", 1)[1].split(":", 1)[0] for line in warnings)
    print(f"\n2 s outage: {len(warnings)} WARNING lines: {dict(per_logger)}")
    assert all(count <= 3 for count in per_logger.values()), per_logger
