"""Exactly once: every acknowledged outcome and every trial reaches Redis once, through Redis outages,
router restarts and a spool replayed after them (real redis-server and `mabrouter serve` processes).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from mabrouter.v1 import router_pb2 as pb

from faults import (
    AOF,
    ROUTE_P99_BOUND,
    RouteLoop,
    books_of,
    latencies,
    percentile,
    reward_of,
    route_many,
    spooled_entries,
    summary_ms,
)
from ledger import LedgerRun
from support import RouterProcess, apply_ranker, free_port, open_stub, running_redis, scrape, wait_until

# -- outcomes and trial counts during an outage ----------------------------------------------------------


def test_outcomes_and_trials_during_an_outage_are_applied_exactly_once(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        metrics_port = free_port()
        router = RouterProcess(
            redis_server.url,
            MABROUTER_SPOOL_DIR=str(spool_dir),
            MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        )
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions, _ = route_many(stub, "before", 200)
                acknowledged: dict[int, float] = {}
                for i in range(100):
                    reply = stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=reward_of(i)),
                        timeout=5,
                    )
                    assert not reply.duplicate
                    acknowledged[i] = reward_of(i)
                wait_until(lambda: books_of(redis_server).trials == 200, 10, what="trials before the outage")

                redis_server.stop(kill=True)
                outage, _ = route_many(stub, "during", 300)
                decisions += outage
                assert all(d.reason == pb.SAMPLED and not d.stale for d in outage)
                ack_seconds = []
                for i in range(100, 300):
                    started = time.monotonic()
                    reply = stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=reward_of(i)),
                        timeout=5,
                    )
                    ack_seconds.append(time.monotonic() - started)
                    assert not reply.duplicate
                    acknowledged[i] = reward_of(i)
                in_spool = spooled_entries(spool_dir)
                pending = scrape(metrics_port)
                assert in_spool == 200
                assert pending["mabrouter_pending_writes{buffer=outcome_spool}"] == 200
                assert pending["mabrouter_pending_writes{buffer=trials}"] >= 300

                redis_server.start()
                wait_until(lambda: spooled_entries(spool_dir) == 0, 15, what="the spool to drain")
                wait_until(lambda: books_of(redis_server).trials == 500, 15, what="outage trials flushed")
                time.sleep(0.3)
                final = books_of(redis_server)
                assert final.trials == 500  # every Route call counted once
                expected_counts: Counter[str] = Counter()
                expected_sums: Counter[str] = Counter()
                for i, reward in acknowledged.items():
                    expected_counts[decisions[i].arm] += 1
                    expected_sums[decisions[i].arm] += reward
                assert final.counts == expected_counts
                assert {arm: final.sums.get(arm, 0.0) for arm in expected_sums} == dict(expected_sums)
                assert sum(final.counts.values()) == len(acknowledged) == 300

                again = stub.ReportOutcomes(
                    pb.ReportOutcomesRequest(
                        outcomes=[
                            pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=reward)
                            for i, reward in acknowledged.items()
                        ]
                    ),
                    timeout=10,
                )
                assert all(r.code == 0 and r.duplicate for r in again.results)
                assert books_of(redis_server) == final
        finally:
            router.kill()
    print(
        "\noutage: 300 decisions and 200 outcomes while Redis was down; outcomes acknowledged from the "
        "spool "
        f"in {summary_ms(ack_seconds)}; after recovery 500/500 trials and 300/300 outcomes applied once"
    )


# -- Route latency while a large spool drains ------------------------------------------------------------


def test_route_latency_stays_flat_while_a_large_spool_drains(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        router = RouterProcess(redis_server.url, MABROUTER_SPOOL_DIR=str(spool_dir)).wait_serving()
        loop: RouteLoop | None = None
        try:
            channel, stub = open_stub(router.address)
            with channel:
                batch = stub.RouteBatch(
                    pb.RouteBatchRequest(
                        requests=[pb.RouteRequest(experiment="ranker", unit_id=f"u{i}") for i in range(1000)]
                    ),
                    timeout=30,
                )
                outcomes = [
                    pb.OutcomeRequest(decision_id=r.response.decision_id, reward=1.0) for r in batch.results
                ]
                redis_server.stop(kill=True)
                for _ in range(15):  # 15,000 spooled entries (retries of 1,000 decisions: replay dedups them)
                    stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=outcomes), timeout=60)
                assert spooled_entries(spool_dir) == 15_000
            loop = RouteLoop(router.address)
            loop.start()
            time.sleep(0.5)
            returned_at = time.monotonic()
            redis_server.start()
            wait_until(lambda: spooled_entries(spool_dir) == 0, 120, interval=0.2, what="the spool to drain")
            drained_at = time.monotonic()
            loop.finish()
            assert books_of(redis_server).counts.total() == 1000
        finally:
            if loop is not None:
                loop.finish()
            router.kill()
    draining = latencies(loop.between(returned_at, drained_at))
    took = drained_at - returned_at
    print(f"\nspool of 15,000 drained in {took:.1f}s; Route meanwhile {summary_ms(draining)}")
    assert not [s for s in loop.samples if s.error is not None]
    assert percentile(draining, 0.99) < ROUTE_P99_BOUND, summary_ms(draining)


# -- the ledger: every acknowledged outcome counted exactly once, through every fault --------------------


def test_ledger_every_acknowledged_outcome_counts_exactly_once_through_redis_and_router_faults(
    tmp_path: Path,
) -> None:
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        run = LedgerRun(redis_server, tmp_path / "spool")
        during: dict[str, int] = {}
        try:
            run.start_clients(workers=4, total=None, pause=0.002)
            for name, fault in (
                ("redis SIGTERM", lambda: run.redis_restart(kill=False)),  # SHUTDOWN-like: AOF flushed
                ("router SIGKILL", lambda: run.router_restart(kill=True)),  # its spool adopted by the next
                ("redis SIGKILL", lambda: run.redis_restart(kill=True)),  # appendfsync always
                ("router SIGTERM", lambda: run.router_restart(kill=False)),  # drains, leaves its spool
            ):
                run.wait_progress(run.ledger.done + 300)  # every fault hits live traffic
                before = run.ledger.done
                fault()
                during[name] = run.ledger.done - before
            run.wait_progress(max(2000, run.ledger.done + 300))
            run.stop_clients()
            numbers = run.settle()
        finally:
            run.close()
    assert numbers["decisions"] >= 2000
    # Clients kept deciding (and reporting, into the spool) while Redis was down.
    assert during["redis SIGTERM"] > 0
    assert during["redis SIGKILL"] > 0
    # Trials are not acknowledged: a SIGKILLed router loses the counts it had not flushed yet (see
    # docs/reliability.md). None is ever counted twice.
    assert numbers["trials_in_redis"] <= numbers["decisions"] + numbers["route_retries"]
    assert numbers["events"] == {
        "redis SIGTERM": 1,
        "router SIGKILL": 1,
        "redis SIGKILL": 1,
        "router SIGTERM": 1,
    }
    print(f"\nledger: {numbers}\n  decisions made during each fault: {during}")
