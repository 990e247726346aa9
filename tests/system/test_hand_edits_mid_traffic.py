"""Two `mabrouter serve` processes under traffic with extreme rewards and metrics while an operator
corrupts the statistics and the version by hand: every call gets a documented answer, no router logs a
traceback, and a kill is obeyed by both within a second."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import RedisServer, RouterProcess, apply_experiments, wait_until

GAUSS = {
    "name": "gauss",
    "reward": "gaussian",
    "control": "a",
    "half_life_seconds": 30,
    "guardrails": [{"metric": "latency_ms", "kind": "mean", "max_value": 250, "min_samples": 10}],
    "arms": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
}
VALUES = (1e308, -1e308, 1e100, -1e100, 5e-324, float("nan"), 0.5, -3.0)
# Per-item codes a caller may get: OK, INVALID_ARGUMENT (out of range), FAILED_PRECONDITION (a stats
# field the outcome needs was corrupted by hand), UNAVAILABLE (retry).
PER_ITEM = {0, 3, 9, 14}
EDITS = ("b:sumsq", "b:count", "_epoch", "b:d:sum", "b:m:latency_ms:n")
BAD = ("abc", "1e308", "-5", "inf", "2e308")


def traffic(address: str, stop: threading.Event, seen: Counter[str]) -> None:
    rng = random.Random(address)
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        while not stop.is_set():
            try:
                request = pb.RouteRequest(experiment="gauss", unit_id=str(rng.random()))
                decision = stub.Route(request, timeout=5)
                outcome = pb.OutcomeRequest(
                    decision_id=decision.decision_id,
                    reward=rng.choice(VALUES),
                    metrics={"latency_ms": rng.choice((1e308, 10.0))},
                )
                reply = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=[outcome]), timeout=5)
                seen.update(f"item {result.code}" for result in reply.results)
            except grpc.RpcError as exc:
                seen[f"call {exc.code().name}"] += 1


def test_hand_edits_mid_traffic_leave_every_router_answering_and_obeying_a_kill(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    apply_experiments(redis_server.url, tmp_path, GAUSS)
    routers = [RouterProcess(redis_server.url).wait_serving() for _ in range(2)]
    stop = threading.Event()
    seen: Counter[str] = Counter()
    threads = [threading.Thread(target=traffic, args=(r.address, stop, seen)) for r in routers]
    client = redis_server.client()
    try:
        for thread in threads:
            thread.start()
        for value in BAD:
            for field in EDITS:
                client.hset("mabrouter:{gauss}:stats", field, value)
                time.sleep(0.03)
            client.hset("mabrouter:{gauss}:config", "version", "x")
        started = time.monotonic()
        client.hset("mabrouter:{gauss}:control", "kill", "1")
        for router in routers:
            with grpc.insecure_channel(router.address) as channel:
                stub = router_pb2_grpc.RouterStub(channel)

                def killed(stub: router_pb2_grpc.RouterStub = stub) -> bool:
                    reply = stub.Route(pb.RouteRequest(experiment="gauss", unit_id="u"), timeout=5)
                    return bool(reply.reason == pb.KILLED)

                wait_until(killed, 1.0, 0.01, "the kill obeyed")
        print(f"kill obeyed by both routers in {time.monotonic() - started:.3f} s; answers {dict(seen)}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        client.close()
        outputs = [router.output() for router in routers]
        for router in routers:
            router.terminate()
    assert not [key for key in seen if key.startswith("call")], seen  # every call answered
    assert {int(key.split()[1]) for key in seen} <= PER_ITEM, seen
    assert seen["item 0"] > 0, seen
    assert all("Traceback" not in output for output in outputs)
