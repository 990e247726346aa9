"""What Redis holds cannot stop a router, and operators are shown what the routers decide from.

Real redis-server, real routers (`mabrouter serve` processes where the observation was made with them),
real CLI. Issue 11, observations 1 and 4.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from mabrouter.core.thompson import win_probabilities
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import (
    NOT_SERVING,
    SERVING,
    InProcessRouter,
    RedisServer,
    RouterProcess,
    apply_experiments,
    cli,
    health_status,
    router_settings,
    wait_until,
)

GAUSS: dict[str, Any] = {
    "name": "gauss",
    "reward": "gaussian",
    "control": "g-a",
    "arms": [{"name": "g-a"}, {"name": "g-b"}, {"name": "g-c"}],
}
PLAIN: dict[str, Any] = {"name": "plain", "control": "p-a", "arms": [{"name": "p-a"}, {"name": "p-b"}]}
# Sums a float cannot carry through the posterior's formulas (the squared deviations overflow): what one
# reward of 1e200 left in Redis before rewards were bounded at the edge.
OVERFLOWING = {"g-b:count": "2", "g-b:sum": "1e200", "g-b:sumsq": "1e300"}


def route(address: str, experiment: str, unit: str = "u1", default_arm: str = "") -> pb.RouteResponse:
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        reply: pb.RouteResponse = stub.Route(
            pb.RouteRequest(experiment=experiment, unit_id=unit, default_arm=default_arm), timeout=5
        )
        return reply


def reason(address: str, experiment: str) -> str:
    return pb.Reason.Name(route(address, experiment).reason)


def killed_within(address: str, experiment: str, seconds: float = 1.0) -> float:
    """Seconds until Route answers KILLED; fails after `seconds`."""
    started = time.monotonic()
    wait_until(lambda: reason(address, experiment) == "KILLED", seconds, 0.02, f"{experiment} KILLED")
    return time.monotonic() - started


def test_one_extreme_reward_cannot_disable_any_kill_switch(redis_server: RedisServer, tmp_path: Path) -> None:
    """Observation 1: a reward of 1e200 (or statistics that overflow, however they got there) used to
    stop every refresh on every replica: kills ignored, health SERVING, a new replica never serving."""
    apply_experiments(redis_server.url, tmp_path, GAUSS)
    apply_experiments(redis_server.url, tmp_path, PLAIN)
    first = RouterProcess(redis_server.url).wait_serving()
    second: RouterProcess | None = None
    client = redis_server.client()
    try:
        decision = route(first.address, "gauss")
        with grpc.insecure_channel(first.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, reward=1e200))
        # refused at the edge now that rewards are bounded; the statistics written below break it anyway
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
        client.hset("mabrouter:{gauss}:stats", mapping=OVERFLOWING)
        wait_until(
            lambda: health_status(first.address, "mabrouter.snapshot", timeout=2) == NOT_SERVING,
            5,
            0.05,
            "degraded",
        )
        assert health_status(first.address, "", timeout=2) == SERVING  # still answering: readiness holds
        assert reason(first.address, "gauss") == "SAMPLED"  # from its last good state

        cli("kill", "gauss", "--arm", "g-b", "--reason", "test", redis_url=redis_server.url)
        cli("kill", "gauss", "--arm", "g-c", "--reason", "test", redis_url=redis_server.url)
        # every experimenting arm killed: control, with reason KILLED (the state was rebuilt over the
        # last good statistics with the new switches)
        killed_within(first.address, "gauss")
        cli("unkill", "gauss", "--arm", "g-b", redis_url=redis_server.url)
        cli("unkill", "gauss", "--arm", "g-c", redis_url=redis_server.url)
        wait_until(lambda: reason(first.address, "gauss") == "SAMPLED", 1, 0.02, "unkilled")
        cli("kill", "gauss", "--reason", "test", redis_url=redis_server.url)
        killed_within(first.address, "gauss")
        cli("kill", "plain", "--reason", "test", redis_url=redis_server.url)
        killed_within(first.address, "plain")
        cli("unkill", "gauss", redis_url=redis_server.url)
        cli("unkill", "plain", redis_url=redis_server.url)
        wait_until(lambda: reason(first.address, "plain") == "SAMPLED", 1, 0.02, "plain unkilled")

        # A replica started now never saw a good state of gauss: it serves everything else, and gauss
        # gets the caller's default arm or UNAVAILABLE naming the problem.
        second = RouterProcess(redis_server.url).wait_serving()
        assert reason(second.address, "plain") == "SAMPLED"
        fallback = route(second.address, "gauss", default_arm="g-a")
        assert (fallback.arm, pb.Reason.Name(fallback.reason)) == ("g-a", "FALLBACK_DEFAULT")
        with pytest.raises(grpc.RpcError) as unusable:
            route(second.address, "gauss")
        assert unusable.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "g-b" in str(unusable.value.details()), unusable.value.details()

        cli("kill", "--all", "--reason", "incident", redis_url=redis_server.url)
        for router in (first, second):
            killed_within(router.address, "plain")
        killed_within(first.address, "gauss")
        assert "_refresh failed" not in first.output()  # the builder never lets a failure escape
    finally:
        client.close()
        first.terminate()
        if second is not None:
            second.terminate()


def test_a_degraded_experiment_is_visible_and_recovers(redis_server: RedisServer, tmp_path: Path) -> None:
    apply_experiments(redis_server.url, tmp_path, GAUSS)
    router = InProcessRouter(router_settings(redis_server.url)).start()
    client = redis_server.client()
    try:
        assert router.app is not None
        url = f"http://127.0.0.1:{router.app.metrics_port}/metrics"

        def metrics() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        wait_until(
            lambda: health_status(router.address, "mabrouter.snapshot", timeout=2) == SERVING, 5, what="fresh"
        )
        client.hset("mabrouter:{gauss}:stats", "g-a:sum", "not a number")
        wait_until(lambda: 'mabrouter_experiment_degraded{experiment="gauss"} 1.0' in metrics(), 5)
        assert health_status(router.address, "mabrouter.snapshot", timeout=2) == NOT_SERVING
        failures = [
            line for line in metrics().splitlines() if line.startswith("mabrouter_state_build_failures_total")
        ]
        assert failures
        assert float(failures[0].split()[-1]) >= 1, failures
        client.hdel("mabrouter:{gauss}:stats", "g-a:sum")
        wait_until(
            lambda: health_status(router.address, "mabrouter.snapshot", timeout=2) == SERVING,
            5,
            what="recovered",
        )
        assert "mabrouter_experiment_degraded{" not in metrics()
    finally:
        client.close()
        router.stop()


def test_operators_can_kill_an_experiment_whose_document_is_broken(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    apply_experiments(redis_server.url, tmp_path, PLAIN)
    router = InProcessRouter(router_settings(redis_server.url)).start()
    client = redis_server.client()
    try:
        client.hset("mabrouter:{plain}:config", "doc", "{not json")
        status = cli("status", "plain", redis_url=redis_server.url, check=False)
        assert status.returncode == 1
        assert "document is not JSON" in status.stderr, status.stderr
        killed = cli("kill", "plain", "--reason", "broken doc", redis_url=redis_server.url)
        assert "written anyway" in killed.stderr
        killed_within(router.address, "plain")
        cli("unkill", "plain", redis_url=redis_server.url)
        # a version edited into something HINCRBY refuses does not block a kill either
        client.hset("mabrouter:{plain}:config", "version", "v2")
        killed = cli("kill", "plain", "--reason", "broken version", redis_url=redis_server.url)
        assert "written without a version" in killed.stdout, killed.stdout
        killed_within(router.address, "plain")
    finally:
        client.close()
        router.stop()


@pytest.mark.parametrize("family", ["stats", "config"])
def test_a_key_of_the_wrong_type_stops_neither_a_kill_nor_the_other_experiments(
    redis_server: RedisServer, tmp_path: Path, family: str
) -> None:
    """A string where a hash belongs (Redis refuses to read it: WRONGTYPE) used to fail every refresh and
    every CLI read of the experiment: no kill of any experiment was obeyed, and `mabrouter kill` itself
    exited 3 on it."""
    apply_experiments(redis_server.url, tmp_path, PLAIN, GAUSS)
    router = RouterProcess(redis_server.url).wait_serving()  # refreshes every 50 ms
    client = redis_server.client()
    try:
        assert reason(router.address, "plain") == "SAMPLED"
        client.delete(f"mabrouter:{{gauss}}:{family}")
        client.set(f"mabrouter:{{gauss}}:{family}", "written by hand")
        client.hset("mabrouter:{plain}:control", "kill", "1")  # plain redis-cli: no change notice
        killed_within(router.address, "plain")
        killed = cli("kill", "gauss", "--reason", "broken key", redis_url=redis_server.url)
        assert "gauss is killed" in killed.stdout, killed.stdout
        killed_within(router.address, "gauss")  # over its last good state
        fleet = cli("status", redis_url=redis_server.url, check=False)
        assert fleet.returncode == 1, fleet.stdout + fleet.stderr
        assert "unusable" in fleet.stdout
        assert "cannot read its" in fleet.stderr
        one = cli("status", "gauss", redis_url=redis_server.url, check=False)
        assert one.returncode == 1
        assert f"cannot read its {family} hash: WRONGTYPE" in one.stderr, one.stderr
        assert "redis-cli TYPE" in one.stderr
    finally:
        client.close()
        router.terminate()


def test_a_decision_log_of_the_wrong_type_drops_its_own_entries_only(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """One experiment's decision log replaced by a string used to fail every exposure-log write of every
    experiment (one pipeline): all entries were retried until the buffer dropped them."""
    apply_experiments(redis_server.url, tmp_path, PLAIN, GAUSS)
    router = RouterProcess(redis_server.url).wait_serving()
    client = redis_server.client()
    try:
        client.set("mabrouter:{gauss}:decisions", "written by hand")
        for unit in range(20):
            route(router.address, "plain", f"u{unit}")
            route(router.address, "gauss", f"u{unit}")
        wait_until(lambda: client.xlen("mabrouter:{plain}:decisions") == 20, 5, what="plain's 20 entries")
        assert client.get("mabrouter:{gauss}:decisions") == "written by hand"

        def gauss_trials() -> float:  # another key: its decisions are still counted
            return sum(float(client.hget("mabrouter:{gauss}:stats", f"g-{arm}:trials") or 0) for arm in "abc")

        wait_until(lambda: gauss_trials() == 20, 5, what="gauss's 20 trials")
        assert "decision log of gauss cannot be written" in router.output()
    finally:
        client.close()
        router.terminate()


@pytest.mark.parametrize(("key", "kind"), [("audit", "stream"), ("audited", "hash")])
def test_an_audit_key_of_the_wrong_type_does_not_block_a_kill(
    redis_server: RedisServer, tmp_path: Path, key: str, kind: str
) -> None:
    """The switch scripts wrote the kill, then failed on the audit key (Redis does not undo a script's
    writes): the CLI exited 3 on a kill that was half made (no audit entry, no change notice)."""
    apply_experiments(redis_server.url, tmp_path, PLAIN)
    router = RouterProcess(redis_server.url).wait_serving()
    client = redis_server.client()
    try:
        client.set(f"mabrouter:{{plain}}:{key}", "written by hand")
        killed = cli("kill", "plain", "--reason", "incident", redis_url=redis_server.url)
        assert "plain is killed" in killed.stdout
        assert f"mabrouter:{{plain}}:{key} holds a string, not a {kind}" in killed.stderr, killed.stderr
        assert "audit entry could not be written" in killed.stderr
        killed_within(router.address, "plain")
    finally:
        client.close()
        router.terminate()


def test_a_control_hash_of_the_wrong_type_refuses_a_switch_whole(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    apply_experiments(redis_server.url, tmp_path, PLAIN)
    client = redis_server.client()
    try:
        version = client.hget("mabrouter:{plain}:config", "version")
        client.set("mabrouter:{plain}:control", "written by hand")
        refused = cli("rollout", "plain", "50", redis_url=redis_server.url, check=False)
        assert refused.returncode == 3
        assert "mabrouter:{plain}:control holds a string, not a hash: nothing was written" in refused.stderr
        assert client.hget("mabrouter:{plain}:config", "version") == version  # no half change
        assert client.xlen("mabrouter:{plain}:audit") == 1  # the apply's entry only
    finally:
        client.close()


# -- what operators see is what routers decide from ------------------------------------------------------


def _discounted(client: redis.Redis) -> None:
    """A world that changed: the raw counts say p-a is far better, the recent (discounted) evidence says
    p-b is. Routers decide on the discounted evidence; status used to show the raw counts."""
    raw = {"p-a:trials": 4000, "p-a:count": 4000, "p-a:sum": 3600, "p-b:trials": 4000}
    raw |= {"p-b:count": 4000, "p-b:sum": 400}
    recent = {"p-a:d:trials": 400, "p-a:d:count": 400, "p-a:d:sum": 40}
    recent |= {"p-b:d:trials": 400, "p-b:d:count": 400, "p-b:d:sum": 360}
    client.hset("mabrouter:{plain}:stats", mapping={**raw, **recent, "_epoch": int(time.time() * 1000)})


def _segmented(client: redis.Redis) -> None:
    """Pooled, p-a wins; in segment country=FR (enough trials to decide alone) p-b wins."""
    pooled = {"p-a:trials": 3000, "p-a:count": 3000, "p-a:sum": 1500, "p-b:trials": 3000}
    pooled |= {"p-b:count": 3000, "p-b:sum": 600}
    france = {"@FR|p-a:trials": 500, "@FR|p-a:count": 500, "@FR|p-a:sum": 50}
    france |= {"@FR|p-b:trials": 500, "@FR|p-b:count": 500, "@FR|p-b:sum": 400}
    client.hset("mabrouter:{plain}:stats", mapping={**pooled, **france})


def _plain(client: redis.Redis) -> None:
    stats = {"p-a:trials": 300, "p-a:count": 300, "p-a:sum": 150, "p-b:trials": 300}
    client.hset("mabrouter:{plain}:stats", mapping=stats | {"p-b:count": 300, "p-b:sum": 165})


@pytest.mark.parametrize(
    ("extra", "write_stats"),
    [
        ({"half_life_seconds": 3600}, _discounted),
        ({"segment_by": {"attribute": "country", "min_trials": 100}}, _segmented),
        ({}, _plain),
    ],
    ids=["discounted", "segmented", "plain"],
)
def test_status_shows_the_state_routers_decide_from(
    redis_server: RedisServer, tmp_path: Path, extra: dict[str, Any], write_stats: Any
) -> None:
    apply_experiments(redis_server.url, tmp_path, PLAIN | extra)
    client = redis_server.client()
    write_stats(client)
    client.close()
    router = InProcessRouter(router_settings(redis_server.url)).start()
    try:
        assert router.app is not None
        app = router.app

        def loaded() -> bool:
            snapshot = app.holder.current
            return (
                snapshot is not None
                and "plain" in snapshot.experiments
                and (snapshot.experiments["plain"].stats[0].trials > 0)
            )

        wait_until(loaded, 5, what="stats in the router's snapshot")
        status = json.loads(cli("status", "plain", "--json", redis_url=redis_server.url).stdout)
        snapshot = app.holder.current
        assert snapshot is not None
        state = snapshot.experiments["plain"]
        p_best = win_probabilities(state.posteriors, (0, 1), np.random.default_rng(0), 20_000)
        for i, arm in enumerate(status["arms"]):
            assert arm["mean"] == pytest.approx(float(state.posteriors.mean()[i]), abs=0.01), arm
            assert arm["share"] == pytest.approx(float(state.shares[i]), abs=0.05), arm
            assert arm["p_best"] == pytest.approx(float(p_best[i]), abs=0.05), arm
        served = {arm["arm"]: arm["share"] for arm in status["arms"]}
        control, challenger = status["arms"]  # p-a is the control
        assert control["lift_vs_control"] is None
        assert control["p_beats_control"] is None
        mean_a, mean_b = (float(m) for m in state.posteriors.mean())
        # 1 % (the discounted posterior moves with the seconds between the router's build and status's
        # read; raw counts would give a lift of -0.89 here, not ~7.8)
        assert challenger["lift_vs_control"] == pytest.approx(mean_b / mean_a - 1, rel=0.01, abs=0.02)
        assert challenger["lift_ci_low"] < challenger["lift_vs_control"] < challenger["lift_ci_high"]
        if write_stats is _discounted:
            assert served["p-b"] > 0.95  # the recent evidence, as the routers see it
        if write_stats is _segmented:
            assert set(status["segments"]) == set(state.segments) == {"FR"}
            for i, name in enumerate(("p-a", "p-b")):
                own = float(state.segments["FR"].shares[i])
                assert status["segments"]["FR"][name] == pytest.approx(own, abs=0.05)
            assert status["segments"]["FR"]["p-b"] > 0.95
            assert served["p-a"] > 0.95
    finally:
        router.stop()
