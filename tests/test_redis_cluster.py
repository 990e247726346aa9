"""mabrouter on a real Redis Cluster: 3 masters with one replica each, real `mabrouter serve` processes.

The key schema puts every key of an experiment under one hash tag, `{name}`, so one experiment lives in
one slot (its Lua scripts stay legal) while different experiments spread over the masters. These tests
check that on a live cluster, then break the cluster under traffic: a master is SIGKILLed (its replica
takes over) and a slot is migrated to another master (MOVED / ASK / TRYAGAIN), while a caller keeps
calling Route and ReportOutcome.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from redis_topologies import Ack, RedisClusterTopology, Traffic, running_cluster
from support import EXAMPLE, RouterProcess, cli, free_port, wait_until

EXPERIMENTS = ("ranker", "search", "ads", "feed", "checkout", "pricing")
ARMS = ("ranker-v1", "ranker-v2", "ranker-v3")


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[RedisClusterTopology]:
    with running_cluster(masters=3, replicas_per_master=1) as cluster:
        yield cluster


@pytest.fixture
def cluster(shared_cluster: RedisClusterTopology) -> RedisClusterTopology:
    """The module's cluster, emptied (every master flushed; replicas follow)."""
    shared_cluster.wait_healthy()
    for port in shared_cluster.masters():
        shared_cluster.nodes[port].call("FLUSHALL")
    return shared_cluster


def experiment_file(directory: Path, name: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ncontrol: {name}-a\narms:\n  - name: {name}-a\n  - name: {name}-b\n"
        "segments: [country]\n"
    )
    return path


def scrape(port: int) -> dict[str, float]:
    """The router's Prometheus metrics, `name{label=value,...}` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        text = reply.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def stats(cluster: RedisClusterTopology, experiment: str) -> dict[str, float]:
    """Totals over arms of the experiment's statistics: trials, count, sum."""
    client = cluster.client()
    try:
        raw = client.hgetall(f"mabrouter:{{{experiment}}}:stats")
    finally:
        client.close()
    totals = {"trials": 0.0, "count": 0.0, "sum": 0.0}
    for field, value in raw.items():
        stat = field.rsplit(":", 1)[1]
        if stat in totals:
            totals[stat] += float(value)
    return totals


def seen_markers(cluster: RedisClusterTopology, experiment: str, acks: list[Ack]) -> set[str]:
    """The nonces among `acks` whose `seen` marker exists in the cluster."""
    client = cluster.client()
    try:
        present = set()
        for start in range(0, len(acks), 500):
            chunk = acks[start : start + 500]
            with client.pipeline(transaction=False) as pipe:
                for ack in chunk:
                    pipe.exists(f"mabrouter:{{{experiment}}}:seen:{ack.nonce}")
                present |= {ack.nonce for ack, n in zip(chunk, pipe.execute(), strict=True) if n}
        return present
    finally:
        client.close()


def report(stub: router_pb2_grpc.RouterStub, decision_id: str, reward: float = 1.0) -> pb.OutcomeResponse:
    return stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision_id, reward=reward), timeout=5)


# --- the key schema on a cluster ------------------------------------------------------------------------


def test_experiments_spread_over_masters_and_each_keeps_every_key_in_its_slot(
    cluster: RedisClusterTopology, tmp_path: Path
) -> None:
    url = cluster.url
    for name in EXPERIMENTS:
        cli("experiment", "apply", str(experiment_file(tmp_path, name)), redis_url=url)
    owners = {name: cluster.master_for_key(f"{{{name}}}") for name in EXPERIMENTS}
    assert len(set(owners.values())) >= 2, f"every experiment landed on one master: {owners}"

    # Make every kind of key exist: decisions (log, trial batches), outcomes (seen markers, log), a
    # kill (control, audit, audited).
    router = RouterProcess(url).wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for name in EXPERIMENTS:
                for i in range(5):
                    decision = stub.Route(pb.RouteRequest(experiment=name, unit_id=f"u{i}"), timeout=5)
                    assert decision.reason == pb.SAMPLED
                    assert not report(stub, decision.decision_id).duplicate
                cli("kill", name, "--reason", "schema check", redis_url=url)
        assert router.terminate() == 0, router.output()  # flushes trials and both logs
    finally:
        router.kill()

    suffixes = {"config", "stats", "control", "audit", "audited", "decisions", "outcomes", "seen", "batch"}
    for name in EXPERIMENTS:
        slot = cluster.keyslot(f"{{{name}}}")
        where = {port: cluster.keys_on(port, f"mabrouter:{{{name}}}:*") for port in cluster.masters()}
        holders = {port for port, found in where.items() if found}
        assert holders == {owners[name]}, f"{name}: keys on {holders}, slot owner {owners[name]}"
        found = where[owners[name]]
        assert {key.split(":")[2] for key in found} == suffixes, f"{name}: {found}"
        assert sum(1 for key in found if ":seen:" in key) == 5
        assert {cluster.keyslot(key) for key in found} == {slot}, f"{name}: keys in several slots"
    listed = cluster.client()
    try:
        assert listed.smembers("mabrouter:experiments") == set(EXPERIMENTS)
    finally:
        listed.close()


# --- a router on the cluster ----------------------------------------------------------------------------


def test_router_routes_counts_applies_once_and_obeys_a_kill_by_pubsub(
    cluster: RedisClusterTopology, tmp_path: Path
) -> None:
    url = cluster.url
    for name in EXPERIMENTS:
        cli("experiment", "apply", str(experiment_file(tmp_path, name)), redis_url=url)
    # Polling every 5 s: a kill seen in well under that came through the change notice (pub/sub).
    router = RouterProcess(url, MABROUTER_REFRESH_INTERVAL_MS="5000").wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            ids: dict[str, list[str]] = {name: [] for name in EXPERIMENTS}
            for name in EXPERIMENTS:
                for i in range(40):
                    decision = stub.Route(pb.RouteRequest(experiment=name, unit_id=f"u{i}"), timeout=5)
                    assert decision.reason == pb.SAMPLED
                    assert decision.arm in (f"{name}-a", f"{name}-b")
                    ids[name].append(decision.decision_id)
            wait_until(
                lambda: all(stats(cluster, name)["trials"] == 40 for name in EXPERIMENTS),
                10,
                what="40 trials of every experiment in Redis",
            )
            for name in EXPERIMENTS:
                for i, decision_id in enumerate(ids[name]):
                    first = report(stub, decision_id, reward=float(i % 2))
                    assert (first.duplicate, first.experiment) == (False, name)
                    assert report(stub, decision_id, reward=float(i % 2)).duplicate  # the retry counts nothing
                assert stats(cluster, name) == {"trials": 40.0, "count": 40.0, "sum": 20.0}

            # A kill of an experiment on each master: its change notice is published on that master
            # and must reach the router's subscription (one node) through the cluster bus.
            timings = {}
            by_master = {cluster.master_for_key(f"{{{name}}}"): name for name in EXPERIMENTS}
            for round_ in range(2):
                for name in by_master.values():
                    cli("kill", name, "--reason", f"round {round_}", redis_url=url)
                    started = time.monotonic()
                    wait_until(
                        lambda name=name: (
                            stub.Route(pb.RouteRequest(experiment=name, unit_id="k"), timeout=5).reason
                            == pb.KILLED
                        ),
                        4,
                        interval=0.005,
                        what=f"the kill of {name}",
                    )
                    timings[f"{name}#{round_}"] = time.monotonic() - started
                    cli("unkill", name, redis_url=url)
                    wait_until(
                        lambda name=name: (
                            stub.Route(pb.RouteRequest(experiment=name, unit_id="k"), timeout=5).reason
                            == pb.SAMPLED
                        ),
                        4,
                        interval=0.005,
                        what=f"the unkill of {name}",
                    )
            print(f"\nkill propagation on the cluster (s): {timings}")
            assert max(timings.values()) < 1.0, timings
    finally:
        router.kill()


# --- failover under traffic -----------------------------------------------------------------------------


@pytest.fixture
def fresh_cluster() -> Iterator[RedisClusterTopology]:
    """A cluster of its own: the test kills one of its masters."""
    with running_cluster(masters=3, replicas_per_master=1) as cluster:
        yield cluster


def test_master_failover_under_traffic_loses_no_route_and_doubles_no_outcome(
    fresh_cluster: RedisClusterTopology, tmp_path: Path
) -> None:
    cluster = fresh_cluster
    cli("experiment", "apply", str(EXAMPLE), redis_url=cluster.url)
    slot = cluster.keyslot("{ranker}")
    victim = cluster.owner_of_slot(slot)
    (heir,) = cluster.replicas_of(victim)
    survivor = next(port for port in cluster.masters() if port != victim)
    metrics_port = free_port()
    router = RouterProcess(
        cluster.url_starting_with(survivor),
        MABROUTER_SPOOL_DIR=str(tmp_path / "spool"),
        MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    ).wait_serving()
    traffic = Traffic(router.address).start()
    try:
        traffic.wait_acks(500)
        killed_at = time.monotonic()
        cluster.kill(victim)
        assert cluster.wait_failover(slot, victim) == heir
        promoted_at = time.monotonic()
        traffic.wait_acks(500)  # outcomes flow again (applied, or spooled and replayed)
        trials_before = stats(cluster, "ranker")["trials"]
        wait_until(lambda: stats(cluster, "ranker")["trials"] > trials_before, 10, what="trials to flow")
        traffic.stop()
        wait_until(
            lambda: scrape(metrics_port)['mabrouter_pending_writes{buffer=outcome_spool}'] == 0,
            20,
            what="the outcome spool to drain",
        )
        assert traffic.route_errors == []
        assert traffic.outcome_errors == []
        acks = traffic.acks
        assert len({ack.nonce for ack in acks}) == len(acks)

        # Measure: which acknowledged outcomes did Redis itself lose (async replication)?
        present = seen_markers(cluster, "ranker", acks)
        lost = [ack for ack in acks if ack.nonce not in present]
        totals = stats(cluster, "ranker")
        spooled = scrape(metrics_port).get("mabrouter_outcomes_total{experiment=,result=spooled}", 0.0)
        print(
            f"\nfailover: slot {slot} {victim} -> {heir} in {promoted_at - killed_at:.2f}s; "
            f"{traffic.routes} routes, {len(acks)} outcomes acknowledged ({spooled:.0f} spooled, "
            f"{traffic.retries} UNAVAILABLE retries), lost by Redis: {len(lost)}"
            + (f" acked {[round(killed_at - ack.at, 3) for ack in lost]}s before the kill" if lost else "")
        )
        # Nothing doubled, nothing invented: Redis holds exactly the acknowledged outcomes it kept.
        assert totals["count"] == len(acks) - len(lost)
        assert totals["sum"] == sum(ack.reward for ack in acks) - sum(ack.reward for ack in lost)
        # What async replication can lose is what the old master acknowledged just before it died.
        for ack in lost:
            assert killed_at - 1.0 <= ack.at <= killed_at, ack

        # Callers may replay: every kept outcome is a duplicate, every lost one is applied now.
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            replayed = [report(stub, ack.decision_id, ack.reward).duplicate for ack in acks]
        assert replayed == [ack.nonce in present for ack in acks]
        assert stats(cluster, "ranker")["count"] == len(acks)

        print("DEBUG metrics", {k: v for k, v in scrape(metrics_port).items() if "outcomes" in k or "redis_errors" in k or "pending" in k})
        assert router.terminate() == 0, router.output()  # the shutdown flush writes the last trials
        trials = stats(cluster, "ranker")["trials"]
        recent = sum(1 for at in traffic.route_times if killed_at - 1.0 <= at <= killed_at)
        print(f"trials: {traffic.counted} counted decisions, {trials:.0f} in Redis")
        ack_times = [ack.at for ack in acks]
        print("DEBUG max ack gap", max(b - a for a, b in zip(ack_times, ack_times[1:])),
              "max route gap", max(b - a for a, b in zip(traffic.route_times, traffic.route_times[1:])),
              "routes during outage", sum(1 for t in traffic.route_times if killed_at <= t <= promoted_at),
              "acks during outage", sum(1 for t in ack_times if killed_at <= t <= promoted_at),
              "max attempts", max(a.attempts for a in acks), "dups", sum(a.duplicate for a in acks))
        assert traffic.counted - recent <= trials <= traffic.counted
    finally:
        traffic.close()
        router.kill()


# --- resharding under traffic ---------------------------------------------------------------------------


def test_slot_migration_under_traffic_keeps_routing_and_counts_exact(
    cluster: RedisClusterTopology,
) -> None:
    cli("experiment", "apply", str(EXAMPLE), redis_url=cluster.url)
    slot = cluster.keyslot("{ranker}")
    source = cluster.owner_of_slot(slot)
    target = next(port for port in cluster.masters() if port != source)
    router = RouterProcess(cluster.url).wait_serving()
    traffic = Traffic(router.address).start()
    try:
        traffic.wait_acks(300)
        started = time.monotonic()
        moved = cluster.migrate_slot(slot, target, batch=5, pause=0.05)
        took = time.monotonic() - started
        cluster.wait_healthy()
        assert cluster.owner_of_slot(slot) == target
        assert cluster.keys_on(source, "mabrouter:{ranker}:*") == []
        traffic.wait_acks(300)
        traffic.stop()
        assert router.terminate() == 0, router.output()
        print(
            f"\nresharding: slot {slot} {source} -> {target}, {moved} keys in {took:.2f}s; "
            f"{traffic.routes} routes, {len(traffic.acks)} outcomes acknowledged, "
            f"{traffic.retries} UNAVAILABLE retries {traffic.retry_messages}"
        )
        assert traffic.route_errors == []
        assert traffic.outcome_errors == []
        acks = traffic.acks
        totals = stats(cluster, "ranker")
        assert totals == {
            "trials": traffic.counted,
            "count": len(acks),
            "sum": sum(ack.reward for ack in acks),
        }
        assert seen_markers(cluster, "ranker", acks) == {ack.nonce for ack in acks}
    finally:
        traffic.close()
        router.kill()

