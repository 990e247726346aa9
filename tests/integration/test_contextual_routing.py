"""Contextual experiments end to end: one real redis-server and two real `mabrouter serve` processes
sharing it learn the crossing problem of issue 16 from each other's decisions and outcomes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import struct_pb2

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import RedisServer, RouterProcess, apply_experiments, open_stub, wait_until

DOC = """
name: sizes
control: small
arms: [{name: small}, {name: large}]
contextual:
  features:
    - {attribute: prompt_tokens, transform: standardize, mean: 1000, scale: 500}
    - {attribute: tier, values: [free, pro]}
"""
THRESHOLD = 1000.0
STATS = "mabrouter:{sizes}:stats"


def conversion_rate(arm: str, tokens: float) -> float:
    """small converts 80 % below the threshold and 20 % above it; large the opposite."""
    return 0.8 if (tokens < THRESHOLD) == (arm == "small") else 0.2


def route(stub: router_pb2_grpc.RouterStub, unit: str, tokens: float, tier: str) -> pb.RouteResponse:
    attributes = struct_pb2.Struct(
        fields={
            "prompt_tokens": struct_pb2.Value(number_value=tokens),
            "tier": struct_pb2.Value(string_value=tier),
        }
    )
    reply: pb.RouteResponse = stub.Route(
        pb.RouteRequest(experiment="sizes", unit_id=unit, attributes=attributes), timeout=5
    )
    return reply


class Outcomes:
    """Rewards waiting to be reported to each replica, sent in batches as callers send them."""

    def __init__(self, stubs: list[router_pb2_grpc.RouterStub]) -> None:
        self.stubs = stubs
        self.pending: list[list[pb.OutcomeRequest]] = [[] for _ in stubs]
        self.rewarded = 0

    def add(self, replica: int, decision: pb.RouteResponse) -> None:
        self.pending[replica].append(pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0))
        self.rewarded += 1
        if len(self.pending[replica]) >= 50:
            self.send(replica)

    def send(self, replica: int) -> None:
        if self.pending[replica]:
            request = pb.ReportOutcomesRequest(outcomes=self.pending[replica])
            results = self.stubs[replica].ReportOutcomes(request, timeout=10).results
            assert all(result.code == 0 and not result.duplicate for result in results)
            self.pending[replica] = []

    def send_all(self) -> None:
        for replica in range(len(self.stubs)):
            self.send(replica)


def test_two_replicas_learn_the_crossing_problem_together(redis_server: RedisServer, tmp_path: Path) -> None:
    apply_experiments(redis_server.url, tmp_path, DOC)
    routers = [RouterProcess(redis_server.url), RouterProcess(redis_server.url)]
    channels: list[grpc.Channel] = []
    try:
        stubs = []
        for router in routers:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            channels.append(channel)
            stubs.append(stub)
        env = np.random.default_rng(16)
        outcomes = Outcomes(stubs)
        for i in range(4_000):
            tokens = float(env.uniform(0.0, 2.0 * THRESHOLD))
            decision = route(stubs[i % 2], f"u{i}", tokens, "free" if i % 3 else "pro")
            assert decision.reason == pb.SAMPLED
            if env.random() < conversion_rate(decision.arm, tokens):
                # the other replica receives the outcome: the id carries the decision's context
                outcomes.add((i + 1) % 2, decision)
        outcomes.send_all()
        assert outcomes.rewarded > 2_500
        client = redis_server.client()
        wait_until(
            lambda: (
                sum(float(client.hget(STATS, f"{arm}:trials") or 0) for arm in ("small", "large")) >= 4_000
            ),
            10,
            what="every decision's trial flushed",
        )
        entry = client.xrange("mabrouter:{sizes}:decisions", count=1)[0][1]
        client.close()
        assert entry["x"].count(":") == 1  # the log carries each decision's model and vector

        for replica, stub in enumerate(stubs):
            served: dict[str, Counter[str]] = {"below": Counter(), "above": Counter()}
            for j in range(300):
                for side, tokens in (
                    ("below", env.uniform(0.0, THRESHOLD)),
                    ("above", env.uniform(THRESHOLD, 2 * THRESHOLD)),
                ):
                    decision = route(
                        stub, f"fresh-{replica}-{j}-{side}", float(tokens), "free" if j % 3 else "pro"
                    )
                    served[side][decision.arm] += 1
                    # fresh traffic is traffic: rewarded as the world does (a decision without an
                    # outcome is a reward of 0 to the model, which would pull the served arm down)
                    if env.random() < conversion_rate(decision.arm, float(tokens)):
                        outcomes.add(replica, decision)
            outcomes.send_all()
            right_below = served["below"]["small"] / 300
            right_above = served["above"]["large"] / 300
            print(f"replica {replica}: small below {right_below:.1%}, large above {right_above:.1%}")
            assert right_below >= 0.85, json.dumps(served)
            assert right_above >= 0.85, json.dumps(served)
    finally:
        for channel in channels:
            channel.close()
        for router in routers:
            router.terminate()
