"""The ledger: routers on one fixed port sharing one spool directory, client threads that route and report,
faults injected from outside, and the books checked at the end (every acknowledged outcome counted exactly
once). Used by integration/test_exactly_once.py (four faults) and system/test_soak.py (minutes of chaos).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from mabrouter.v1 import router_pb2 as pb

from faults import Books, books_of, report_until_acknowledged, reward_of, route, spooled_entries, stopped
from support import RedisServer, RouterProcess, free_port, open_stub, wait_until


class Issued(NamedTuple):
    """What a client keeps of a decision (a compact RouteResponse: soak runs keep hundreds of thousands)."""

    decision_id: str
    arm: str
    reason: int


@dataclass
class Ledger:
    """The client's books: every decision, its reward, and which outcomes the router acknowledged."""

    decisions: dict[int, Issued] = field(default_factory=dict)
    acknowledged: set[int] = field(default_factory=set)
    first_report_failures: Counter[str] = field(default_factory=Counter)
    route_failures: Counter[str] = field(default_factory=Counter)
    duplicate_on_first_report: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LedgerRun:
    """Routers on one fixed port sharing one spool directory, and client threads that route and report.

    Each client makes a decision (retrying until a router answers), then reports its outcome exactly once,
    counting it as acknowledged only when ReportOutcome returned OK. Faults are injected from outside
    (redis_*/router_* methods); `settle` then retries the unacknowledged outcomes and checks the books.
    """

    def __init__(self, redis_server: RedisServer, spool_dir: Path, **env: str) -> None:
        self.redis_server = redis_server
        self.spool_dir = spool_dir
        self.env = {"MABROUTER_SPOOL_DIR": str(spool_dir), **env}
        self.port = free_port()
        self.router = RouterProcess(redis_server.url, port=self.port, **self.env).wait_serving()
        self.address = self.router.address
        self.routers = [self.router]
        self.ledger = Ledger()
        self.events: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # clients

    def start_clients(self, workers: int, total: int | None, pause: float = 0.0) -> None:
        """`workers` threads share decisions 0..total-1 (or keep going until stop_clients, if None)."""
        for w in range(workers):
            thread = threading.Thread(target=self._client, args=(w, workers, total, pause), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_clients(self, timeout: float = 120) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a client thread did not finish"

    def wait_clients(self, timeout: float = 120) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a client thread did not finish"

    def _client(self, first: int, step: int, total: int | None, pause: float) -> None:
        ledger = self.ledger
        channel, stub = open_stub(self.address)
        with channel:
            i = first
            while (total is None or i < total) and not (total is None and self._stop.is_set()):
                while True:
                    try:
                        decision = route(stub, f"ledger-{i}")
                        break
                    except grpc.RpcError as exc:
                        with ledger.lock:
                            ledger.route_failures[exc.code().name] += 1
                        time.sleep(0.02)
                try:
                    reply = stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decision.decision_id, reward=reward_of(i)), timeout=5
                    )
                except grpc.RpcError as exc:
                    reply, failure = None, exc.code().name
                with ledger.lock:
                    ledger.decisions[i] = Issued(decision.decision_id, decision.arm, decision.reason)
                    if reply is not None:
                        ledger.acknowledged.add(i)
                        ledger.duplicate_on_first_report += int(reply.duplicate)
                    else:
                        ledger.first_report_failures[failure] += 1
                    ledger.done += 1
                i += step
                if pause:
                    time.sleep(pause)

    def wait_progress(self, done: int, timeout: float = 60) -> None:
        wait_until(lambda: self.ledger.done >= done, timeout, interval=0.01, what=f"{done} decisions")

    # faults

    def redis_restart(self, kill: bool, down_for: float = 0.8) -> None:
        """SIGKILL or SIGTERM (a clean AOF shutdown) redis-server, keep it down, start it again."""
        self.redis_server.stop(kill=kill)
        time.sleep(down_for)
        self.redis_server.start()
        self.events["redis SIGKILL" if kill else "redis SIGTERM"] += 1

    def redis_stall(self, seconds: float) -> None:
        with stopped(self.redis_server):
            time.sleep(seconds)
        self.events["redis SIGSTOP"] += 1

    def router_restart(self, kill: bool) -> None:
        """SIGKILL or SIGTERM the router, then start a new one on the same port and spool directory."""
        if kill:
            self.router.kill()
        else:
            assert self.router.terminate(30) == 0, self.router.output()
        self.router = RouterProcess(self.redis_server.url, port=self.port, **self.env).wait_serving(30)
        self.routers.append(self.router)
        self.events["router SIGKILL" if kill else "router SIGTERM"] += 1

    def close(self) -> None:
        self._stop.set()
        for router in self.routers:
            router.kill()

    # the books

    def _stats(self) -> Books:
        return books_of(self.redis_server)

    def settle(self) -> dict[str, Any]:
        """Check the ledger; return the numbers. Clients must have stopped."""
        ledger = self.ledger
        n = len(ledger.decisions)
        assert len({d.decision_id for d in ledger.decisions.values()}) == n, "decision ids must be unique"
        assert all(d.reason == pb.SAMPLED for d in ledger.decisions.values())
        assert ledger.duplicate_on_first_report == 0
        wait_until(lambda: spooled_entries(self.spool_dir) == 0, 30, what="every spool to drain")
        after_first_pass = self._stats()
        applied_first = sum(after_first_pass.counts.values())
        acked_first = len(ledger.acknowledged)
        # None lost: every acknowledged outcome is in Redis. Some unacknowledged ones may be too (the router
        # died or Redis timed out after applying them): exactly those come back as duplicates below.
        assert acked_first <= applied_first <= n

        channel, stub = open_stub(self.address)
        retried = late_duplicates = 0
        with channel:
            for i in sorted(set(ledger.decisions) - ledger.acknowledged):
                reply, _ = report_until_acknowledged(stub, ledger.decisions[i], reward_of(i))
                retried += 1
                late_duplicates += int(reply.duplicate)
                ledger.acknowledged.add(i)
            assert applied_first == acked_first + late_duplicates
            final = self._stats()
            expected_counts: Counter[str] = Counter()
            expected_sums: Counter[str] = Counter()
            for i, decision in ledger.decisions.items():
                expected_counts[decision.arm] += 1
                expected_sums[decision.arm] += reward_of(i)
            # The heart of it: the posterior holds exactly the acknowledged outcomes, none lost, none doubled.
            assert final.counts == expected_counts
            assert {arm: final.sums.get(arm, 0.0) for arm in expected_sums} == dict(expected_sums)

            # Retrying every outcome once more changes nothing: all duplicates.
            duplicates = 0
            ordered = sorted(ledger.decisions)
            for start in range(0, n, 1000):
                chunk = ordered[start : start + 1000]
                reply = stub.ReportOutcomes(
                    pb.ReportOutcomesRequest(
                        outcomes=[
                            pb.OutcomeRequest(
                                decision_id=ledger.decisions[i].decision_id, reward=reward_of(i)
                            )
                            for i in chunk
                        ]
                    ),
                    timeout=30,
                )
                assert all(r.code == 0 for r in reply.results)
                duplicates += sum(1 for r in reply.results if r.duplicate)
            assert duplicates == n
            assert self._stats().counts == final.counts
        return {
            "decisions": n,
            "acknowledged_first_pass": acked_first,
            "applied_first_pass": applied_first,
            "first_report_failures": dict(ledger.first_report_failures),
            "retried": retried,
            "unacknowledged_but_applied": late_duplicates,
            "applied_final": sum(final.counts.values()),
            "duplicates_on_replay": duplicates,
            "route_retries": sum(ledger.route_failures.values()),
            "trials_in_redis": final.trials,
            "events": dict(self.events),
        }
