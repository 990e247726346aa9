"""Route never waits on Redis: every fault is a real redis-server that the test kills, restarts, stops or
slows (through a fault-injecting proxy, tests/tcp_proxy.py), in front of real `mabrouter serve` processes.

Timing assertions are deliberately generous (they catch "Route waited on Redis", not a slow CI box); the
measured numbers are printed (run with -s to see them) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from mabrouter.v1 import router_pb2 as pb

from faults import (
    AOF,
    ROUTE_P99_BOUND,
    RouteLoop,
    books_of,
    latencies,
    percentile,
    redis_errors,
    report_until_acknowledged,
    reward_of,
    route,
    route_many,
    spooled_entries,
    stopped,
    summary_ms,
    timed,
)
from support import (
    NOT_SERVING,
    SERVING,
    RouterProcess,
    apply_ranker,
    free_port,
    health_status,
    open_stub,
    running_redis,
    scrape,
    wait_until,
)
from tcp_proxy import FaultProxy

CONTROL = "ranker-v1"


def histogram(port: int, name: str = "mabrouter_route_latency_seconds") -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of a Prometheus histogram."""
    buckets = {}
    for key, value in scrape(port).items():
        if key.startswith(f"{name}_bucket{{le="):
            bound = key.split("le=")[1].rstrip("}")
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


# -- Redis down at start-up ------------------------------------------------------------------------------


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


# -- Redis killed mid-flight -----------------------------------------------------------------------------


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
            age_early = scrape(ports["serve_stale"])["mabrouter_snapshot_age_seconds{}"]
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
            age_late = scrape(ports["serve_stale"])["mabrouter_snapshot_age_seconds{}"]
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


# -- Redis hung (SIGSTOP), not dead ----------------------------------------------------------------------


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


# -- a slow, flaky network between the router and Redis --------------------------------------------------


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
