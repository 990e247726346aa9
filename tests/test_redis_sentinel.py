"""mabrouter through Redis Sentinel: one master, one replica, three sentinels (quorum 2), real processes.

The router and the CLI find the master through `redis+sentinel://S1,S2,S3/mymaster`. The failover tests
move the master while a caller keeps calling Route and ReportOutcome, and then check, from the data
nodes themselves, where every acknowledged outcome ended up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from redis_topologies import Ack, SentinelTopology, Traffic, running_sentinel
from support import EXAMPLE, RouterProcess, cli, free_port, wait_until

STATS = "mabrouter:{ranker}:stats"


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with running_sentinel() as topology:
        yield topology


def totals(topology: SentinelTopology, port: int | None = None) -> dict[str, float]:
    """Totals over arms of ranker's statistics on one data node (default: the current master)."""
    client = topology.data[port if port is not None else topology.master_port()].client()
    try:
        raw = client.hgetall(STATS)
    finally:
        client.close()
    result = {"trials": 0.0, "count": 0.0, "sum": 0.0}
    for field, value in raw.items():
        stat = field.rsplit(":", 1)[1]
        if stat in result:
            result[stat] += float(value)
    return result


def present(topology: SentinelTopology, port: int, acks: list[Ack]) -> set[str]:
    """The nonces among `acks` whose `seen` marker exists on one data node."""
    client = topology.data[port].client()
    try:
        with client.pipeline(transaction=False) as pipe:
            for ack in acks:
                pipe.exists(f"mabrouter:{{ranker}}:seen:{ack.nonce}")
            return {ack.nonce for ack, n in zip(acks, pipe.execute(), strict=True) if n}
    finally:
        client.close()


def test_cli_and_router_work_through_sentinel(sentinel: SentinelTopology) -> None:
    url = sentinel.url
    cli("experiment", "apply", str(EXAMPLE), redis_url=url)
    assert "ranker\tversion 1" in cli("experiment", "list", redis_url=url).stdout
    master = sentinel.master_port()
    router = RouterProcess(url).wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            decisions = [
                stub.Route(pb.RouteRequest(experiment="ranker", unit_id=f"u{i}"), timeout=5) for i in range(50)
            ]
            assert {d.reason for d in decisions} == {pb.SAMPLED}
            for i, decision in enumerate(decisions):
                request = pb.OutcomeRequest(decision_id=decision.decision_id, reward=float(i % 2))
                assert not stub.ReportOutcome(request, timeout=5).duplicate
                assert stub.ReportOutcome(request, timeout=5).duplicate
            wait_until(lambda: totals(sentinel)["trials"] == 50, 5, what="50 trials on the master")
            assert totals(sentinel, master) == {"trials": 50.0, "count": 50.0, "sum": 25.0}
            # ... and the replica has them too (it is the master's copy, nothing is written there)
            (replica,) = sentinel.replica_ports()
            wait_until(lambda: totals(sentinel, replica)["count"] == 50, 5, what="replication")

            cli("kill", "ranker", "--reason", "through sentinel", redis_url=url)
            wait_until(
                lambda: stub.Route(pb.RouteRequest(experiment="ranker", unit_id="k"), timeout=5).reason
                == pb.KILLED,
                2,
                what="the kill",
            )
    finally:
        router.kill()
