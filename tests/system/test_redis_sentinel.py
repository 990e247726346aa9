"""mabrouter through Redis Sentinel: one master, one replica, three sentinels (quorum 2), real processes.

The router and the CLI find the master through `redis+sentinel://S1,S2,S3/mymaster`. The failover tests
move the master while a caller keeps calling Route and ReportOutcome, and then check, from the data
nodes themselves, where every acknowledged outcome ended up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from redis_topologies import (
    SentinelTopology,
    Traffic,
    killed_within,
    running_sentinel,
    seen_nonces,
    stat_totals,
)
from support import EXAMPLE, RouterProcess, cli, wait_until

# An OK already on its way from the router when the master is killed arrives a little after the kill.
REPLY_SLACK = 0.5


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with running_sentinel() as topology:
        yield topology


def test_cli_and_router_work_through_sentinel(sentinel: SentinelTopology) -> None:
    url = sentinel.url
    cli("experiment", "apply", str(EXAMPLE), redis_url=url)
    assert "ranker\tversion 1" in cli("experiment", "list", redis_url=url).stdout
    master = sentinel.master_port()
    router = RouterProcess(url).wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            decisions = [stub.Route(pb.RouteRequest(experiment="ranker", unit_id=f"u{i}")) for i in range(50)]
            assert {d.reason for d in decisions} == {pb.SAMPLED}
            for i, decision in enumerate(decisions):
                request = pb.OutcomeRequest(decision_id=decision.decision_id, reward=float(i % 2))
                assert not stub.ReportOutcome(request, timeout=5).duplicate
                assert stub.ReportOutcome(request, timeout=5).duplicate
            wait_until(
                lambda: stat_totals(sentinel.master_client())["trials"] == 50,
                5,
                what="50 trials on the master",
            )
            assert stat_totals(sentinel.data[master].client()) == {"trials": 50.0, "count": 50.0, "sum": 25.0}
            # ... and the replica has them too (it is the master's copy, nothing is written there)
            (replica,) = sentinel.replica_ports()
            wait_until(
                lambda: stat_totals(sentinel.data[replica].client())["count"] == 50, 5, what="replication"
            )

            cli("kill", "ranker", "--reason", "through sentinel", redis_url=url)
            wait_until(
                lambda: (
                    stub.Route(pb.RouteRequest(experiment="ranker", unit_id="k"), timeout=5).reason
                    == pb.KILLED
                ),
                2,
                what="the kill",
            )
    finally:
        router.kill()


def test_master_killed_under_traffic_router_reconnects_through_sentinel(sentinel: SentinelTopology) -> None:
    """SIGKILL the master while a caller keeps routing and reporting (no spool: the caller retries
    UNAVAILABLE). Route never fails; once Sentinel promotes the replica, the router finds it through
    Sentinel and every outcome and trial is applied there, exactly once. Async replication could lose
    what the old master acknowledged in its last moments: measured per decision, bounded, reported."""
    url = sentinel.url
    cli("experiment", "apply", str(EXAMPLE), redis_url=url)
    old = sentinel.master_port()
    router = RouterProcess(url).wait_serving()
    traffic = Traffic(router.address).start()
    try:
        traffic.wait_acks(500)
        killed_at = time.monotonic()
        sentinel.kill(old)
        new = sentinel.wait_new_master(old)
        promoted_at = time.monotonic()
        traffic.wait_acks(500)
        traffic.stop()
        with grpc.insecure_channel(router.address) as channel:  # config now comes from the new master
            cli("kill", "ranker", "--reason", "after the failover", redis_url=url)
            assert killed_within(router_pb2_grpc.RouterStub(channel), "ranker", 2.0) is not None
        assert router.terminate() == 0, router.output()  # the shutdown flush writes the last trials
        assert traffic.route_errors == []
        assert traffic.outcome_errors == []
        acks = traffic.acks
        kept = seen_nonces(sentinel.data[new].client(), "ranker", acks)
        lost = [ack for ack in acks if ack.nonce not in kept]
        result = stat_totals(sentinel.data[new].client())
        print(
            f"\nsentinel, master killed: {old} -> {new} promoted {promoted_at - killed_at:.1f} s after the "
            f"kill; {traffic.summary()}; acknowledged outcomes lost by Redis: {len(lost)}; "
            f"trials {result['trials']:.0f} of {traffic.counted}"
        )
        assert result["count"] == len(acks) - len(lost)  # none doubled
        assert result["sum"] == sum(a.reward for a in acks) - sum(a.reward for a in lost)
        assert all(killed_at - 1.0 <= ack.at <= killed_at + REPLY_SLACK for ack in lost), lost
        assert all(ack.at < promoted_at for ack in lost)  # after the promotion, all on the new master
        last_second = sum(1 for at in traffic.route_times if killed_at - 1.0 <= at <= killed_at)
        assert traffic.counted - last_second <= result["trials"] <= traffic.counted
    finally:
        traffic.close()
        router.kill()


def test_sentinel_failover_command_under_traffic_moves_the_router_to_the_new_master(
    sentinel: SentinelTopology,
) -> None:
    url = sentinel.url
    cli("experiment", "apply", str(EXAMPLE), redis_url=url)
    old = sentinel.master_port()
    router = RouterProcess(url).wait_serving()
    traffic = Traffic(router.address).start()
    problems = []
    try:
        traffic.wait_acks(300)
        started = time.monotonic()
        sentinel.failover()
        new = sentinel.wait_new_master(old)
        promoted_at = time.monotonic()
        traffic.wait_acks(600)  # ~2 s of traffic after the promotion
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            cli("kill", "ranker", "--reason", "after the failover", redis_url=url)
            if killed_within(stub, "ranker", 1.0) is None:
                problems.append("a kill made after the failover was not obeyed within 1 s")
        traffic.stop()
        assert traffic.route_errors == []
        assert traffic.outcome_errors == []
        acks = traffic.acks
        on_new = seen_nonces(sentinel.data[new].client(), "ranker", acks)
        on_old = seen_nonces(sentinel.data[old].client(), "ranker", acks)
        late = [ack for ack in acks if ack.at > promoted_at + 1.0]
        stranded = [ack for ack in late if ack.nonce not in on_new]
        lost = [ack for ack in acks if ack.nonce not in on_new]
        print(
            f"\nSENTINEL FAILOVER {old} -> {new}, promoted {promoted_at - started:.1f} s after the "
            f"command; {traffic.summary()}; not on the new master: {len(lost)} "
            f"({sum(a.nonce in on_old for a in lost)} of them on the demoted master only); "
            f"acknowledged more than 1 s after the promotion: {len(late)}, of which {len(stranded)} "
            "not on the new master"
        )
        if stranded:
            problems.append(
                f"{len(stranded)} of {len(late)} outcomes acknowledged more than 1 s after the promotion "
                "are not on the new master"
            )
        assert problems == []
    finally:
        traffic.close()
        router.kill()
