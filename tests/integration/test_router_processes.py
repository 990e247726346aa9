"""Real `mabrouter serve` processes sharing one real redis-server."""

from __future__ import annotations

import json
import signal
from collections import Counter

import grpc

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import RedisServer, RouterProcess, cli, wait_until


def total_trials(redis_server: RedisServer) -> int:
    client = redis_server.client()
    try:
        return sum(
            int(v) for k, v in client.hgetall("mabrouter:{ranker}:stats").items() if k.endswith(":trials")
        )
    finally:
        client.close()


def test_two_routers_learn_from_rewards_reported_to_either(applied_ranker: RedisServer) -> None:
    first = RouterProcess(applied_ranker.url)
    second = RouterProcess(applied_ranker.url)
    try:
        first.wait_serving()
        second.wait_serving()
        with (
            grpc.insecure_channel(first.address) as a_channel,
            grpc.insecure_channel(second.address) as b_channel,
        ):
            a = router_pb2_grpc.RouterStub(a_channel)
            b = router_pb2_grpc.RouterStub(b_channel)
            # Decisions made by A, rewarded through B, only when ranker-v3 was chosen: v3 is the best arm.
            for i in range(600):
                decision = a.Route(pb.RouteRequest(experiment="ranker", unit_id=f"u{i}"))
                if decision.arm == "ranker-v3":
                    b.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0))
            wait_until(lambda: total_trials(applied_ranker) == 600, 5, what="A's trials flushed")

            def both_prefer_v3() -> bool:
                shares = []
                for router in (a, b):
                    arms = Counter(
                        router.Route(pb.RouteRequest(experiment="ranker", unit_id="x")).arm
                        for _ in range(100)
                    )
                    shares.append(arms["ranker-v3"] / 100)
                return all(share > 0.9 for share in shares)

            wait_until(
                both_prefer_v3, 10, interval=0.1, what="both replicas to send >90% of traffic to ranker-v3"
            )
    finally:
        first.kill()
        second.kill()


def test_sigterm_flushes_buffered_trials(applied_ranker: RedisServer) -> None:
    # A flush interval far longer than the test: only the shutdown flush can write these trials.
    router = RouterProcess(applied_ranker.url, MABROUTER_FLUSH_INTERVAL_MS="60000").wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for i in range(137):
                stub.Route(pb.RouteRequest(experiment="ranker", unit_id=f"u{i}"))
        assert total_trials(applied_ranker) == 0
        router.process.send_signal(signal.SIGTERM)
        assert router.process.wait(20) == 0, router.output()
        assert total_trials(applied_ranker) == 137
        assert "mabrouter stopped" in router.output()
    finally:
        router.kill()


def test_cli_apply_list_status(applied_ranker: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    listed = cli("experiment", "list", redis_url=applied_ranker.url).stdout
    assert "ranker\tversion 1" in listed
    status = json.loads(cli("status", "ranker", "--json", redis_url=applied_ranker.url).stdout)
    arms = {arm["arm"]: arm for arm in status["arms"]}
    assert set(arms) == {"ranker-v1", "ranker-v2", "ranker-v3"}
    for arm in arms.values():
        assert set(arm) >= {"arm", "trials", "successes", "mean", "ci_low", "ci_high", "p_best", "share"}
        assert arm["ci_low"] < arm["mean"] < arm["ci_high"]
    assert abs(sum(arm["p_best"] for arm in arms.values()) - 1) < 1e-6
    table = cli("status", "ranker", redis_url=applied_ranker.url).stdout
    assert "P(best)" in table
    assert "ranker-v3" in table


def test_cli_refuses_a_bad_file_and_changes_nothing(applied_ranker: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "ranker.yaml"
    bad.write_text(
        "name: ranker\ncontrol: ranker-v1\narms:\n  - name: ranker-v1\n  - name: ranker-v2\n    wieght: 3\n"
    )
    result = cli("experiment", "apply", str(bad), redis_url=applied_ranker.url, check=False)
    assert result.returncode == 2
    assert "arms[1].wieght: unknown field" in result.stderr
    client = applied_ranker.client()
    try:
        assert client.hget("mabrouter:{ranker}:config", "version") == "1"
    finally:
        client.close()


def test_cli_reports_unreachable_redis_clearly() -> None:
    from support import free_port

    result = cli("experiment", "list", redis_url=f"redis://127.0.0.1:{free_port()}/0", check=False)
    assert result.returncode == 3
    assert "cannot reach Redis" in result.stderr


def test_health_command_exit_codes(applied_ranker: RedisServer) -> None:
    router = RouterProcess(applied_ranker.url).wait_serving()
    try:
        ok = cli("health", "--address", router.address, redis_url=applied_ranker.url, check=False)
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    finally:
        router.kill()
    down = cli(
        "health", "--address", router.address, "--timeout", "0.5", redis_url=applied_ranker.url, check=False
    )
    assert down.returncode == 1
    assert "unhealthy" in down.stdout
