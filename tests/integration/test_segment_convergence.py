"""Per-segment posteriors: each segment converges to its own best arm (real router, real Redis; the pure
rules: unit/test_segments.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import struct_pb2

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import InProcessRouter, RedisServer, cli, router_settings

DOC = """
name: feed
control: a
segment_by: {attribute: country, min_trials: 150}
arms: [{name: a}, {name: b}, {name: c}]
"""
# Each country has a different best arm.
TRUTH = {"DE": {"a": 0.05, "b": 0.30, "c": 0.05}, "US": {"a": 0.05, "b": 0.05, "c": 0.30}}


def serve_countries(router: InProcessRouter, decisions: int, seed: int) -> list[tuple[str, str]]:
    """Route `decisions` requests alternating DE and US, rewarding each by TRUTH; (country, arm) served."""
    env = np.random.default_rng(seed)
    served = []
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for i in range(decisions):
            country = "DE" if i % 2 else "US"
            attributes = struct_pb2.Struct(fields={"country": struct_pb2.Value(string_value=country)})
            reply = stub.Route(pb.RouteRequest(experiment="feed", unit_id=f"u{i}", attributes=attributes))
            if env.random() < TRUTH[country][reply.arm]:
                stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0))
            served.append((country, reply.arm))
    return served


def test_each_segment_converges_to_its_own_best_arm(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "feed.yaml"
    path.write_text(DOC)
    cli("experiment", "apply", str(path), redis_url=redis_server.url)
    router = InProcessRouter(router_settings(redis_server.url)).start()
    try:
        served = serve_countries(router, 2400, seed=7)
        client = redis_server.client()
        stats = client.hgetall("mabrouter:{feed}:stats")
        client.close()
    finally:
        router.stop()
    last: dict[str, Counter[str]] = {"DE": Counter(), "US": Counter()}
    for country, arm in served[2000:]:
        last[country][arm] += 1
    assert last["DE"]["b"] / 200 > 0.6, last
    assert last["US"]["c"] / 200 > 0.6, last
    # Segment statistics accrue beside the pooled ones, in the same hash.
    assert float(stats["@DE|b:trials"]) > float(stats["@US|b:trials"])
    assert float(stats["@DE|b:count"]) > 0
    pooled_trials = sum(
        float(v) for k, v in stats.items() if k.endswith(":trials") and not k.startswith(("@", "_"))
    )
    assert pooled_trials >= 2000


def test_the_sample_ratio_check_is_quiet_on_a_healthy_segmented_experiment(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Issue 17: each segment samples from its own allocation, so its decisions must be expected from
    that allocation. Counted against the pooled one, every healthy run of this experiment 'mismatched'
    (chi-square 123 to 6,900, p = 0)."""
    path = tmp_path / "feed.yaml"
    path.write_text(DOC)
    cli("experiment", "apply", str(path), redis_url=redis_server.url)
    router = InProcessRouter(router_settings(redis_server.url)).start()
    try:
        serve_countries(router, 2000, seed=11)
    finally:
        router.stop()  # flushes every trial it counted
    report = json.loads(cli("status", "feed", "--json", redis_url=redis_server.url).stdout)
    assert report["srm"]["mismatch"] is False, report["srm"]
    assert report["srm"]["p_value"] > 0.001, report["srm"]
    assert set(report["segments"]) == {"DE", "US"}  # both decided on their own posteriors
