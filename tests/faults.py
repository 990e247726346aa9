"""The tools of the reliability tests: a fault to inject into a running redis-server (`stopped`), callers
that measure what the router answers meanwhile (`RouteLoop`, `timed`), and the books to check afterwards
(`books`: what Redis counted; `spooled_entries`: what waits in the outcome spool).

Timing assertions built on these are deliberately generous (they catch "Route waited on Redis", not a slow
CI box); the measured numbers are printed (run with -s to see them) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import redis

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import RedisServer, RouterProcess, apply_ranker, open_stub, running_redis, scrape

if TYPE_CHECKING:
    from ledger import Issued


# redis-server with every write fsync'd to its append-only file: a SIGKILL loses nothing acknowledged.
AOF = ("--appendonly", "yes", "--appendfsync", "always")
# Generous bound on Route latency while Redis is dead, hung or slow: a Route that waited for Redis would
# take the 2 s socket timeout (or 400+ ms of round trips through the slow proxy), far above it.
ROUTE_P99_BOUND = 0.050


# -- calls -----------------------------------------------------------------------------------------------


def route(stub: router_pb2_grpc.RouterStub, unit: str, **fields: Any) -> pb.RouteResponse:
    return stub.Route(pb.RouteRequest(experiment="ranker", unit_id=unit, **fields), timeout=2)


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


def reward_of(i: int) -> float:
    """Rewards that are exact binary fractions, so Redis's float sums can be compared with ==."""
    return (i % 5) / 4


def timed(call: Callable[[], Any]) -> tuple[Any, grpc.StatusCode | None, str, float]:
    """(reply, error code, error details, seconds) of one call."""
    started = time.monotonic()
    try:
        reply = call()
    except grpc.RpcError as exc:
        return None, exc.code(), exc.details() or "", time.monotonic() - started
    return reply, None, "", time.monotonic() - started


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# -- faults ----------------------------------------------------------------------------------------------


@contextmanager
def stopped(redis_server: RedisServer) -> Iterator[None]:
    """SIGSTOP redis-server: its socket accepts connections but nothing answers."""
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


@contextmanager
def ranker_process(
    *redis_args: str, **env: str
) -> Iterator[tuple[RedisServer, RouterProcess, router_pb2_grpc.RouterStub]]:
    """A private redis-server (started with `redis_args`) holding the example experiment, one `mabrouter
    serve` on it (with `env`) and a stub to it. The router is killed on the way out; its log stays."""
    with running_redis(*redis_args) as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(redis_server.url, **env).wait_serving()
        try:
            channel, stub = open_stub(router.address)
            with channel:
                yield redis_server, router, stub
        finally:
            router.kill()


# -- latency ---------------------------------------------------------------------------------------------


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


# -- the books -------------------------------------------------------------------------------------------


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


def redis_errors(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k.startswith("mabrouter_redis_errors_total"))
