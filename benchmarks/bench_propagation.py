"""How long a kill takes to reach every replica: CLI (pub/sub + poll) and raw redis-cli (poll only).

    .venv/bin/python benchmarks/bench_propagation.py [--flips 60] [--replicas 3] [--output PATH]

Setup: a private redis-server on a free port (tests/support.py), the example experiment applied, and
`--replicas` real `mabrouter serve` processes with the DEFAULT settings users get: the refresh interval
is not set (200 ms; MABROUTER_REFRESH_INTERVAL_MS and MABROUTER_FLUSH_INTERVAL_MS are removed from the
environment the routers inherit). One observer thread per replica calls Route in a tight loop on its own
gRPC channel and records every change of the answer's reason with two client clock readings:

    t_new  when the first reply in the new state arrived        (upper bound of the switch)
    t_old  when the last reply in the old state arrived         (lower bound, give or take one call)

A flip is: start the command as a subprocess, and when it EXITS start the clock (t_return); wait until
every observer has seen the new state; the flip's latency is max over replicas of (t_new - t_return),
i.e. until the LAST replica obeys, as a caller of that replica sees it. Flips alternate kill / unkill:

    cli   `mabrouter kill ranker --reason bench` / `mabrouter unkill ranker` (writes + publishes a notice)
    raw   `redis-cli -p PORT HSET mabrouter:{ranker}:control kill 1` / `... kill 0` (polling only)

What is included: the observer's resolution (the switch happened between t_old and t_new, about one
Route round trip apart; the table shows that gap), and for a replica that had already obeyed before the
command's process exited, 0 (counted as "before exit"). What is not: the command's own run time
(interpreter start, Redis round trip), reported separately. Between flips the harness waits a random
0-200 ms so commands land at random phases of the 200 ms polling timer.

Not a test: nothing passes or fails. Targets for the p99: < 100 ms through the CLI, < 1 s through
redis-cli. Results (every sample, plus machine info) go to benchmarks/results/propagation.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import EXAMPLE, cli, free_port, running_redis, wait_until  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "propagation.json"
CONTROL_KEY = "mabrouter:{ranker}:control"
AUDIT_KEY = "mabrouter:{ranker}:audit"
TARGET_P99_MS = {"cli": 100.0, "raw": 1000.0}
FLIP_DEADLINE_S = 10.0
REASON_NAMES = {pb.KILLED: "KILLED", pb.SAMPLED: "SAMPLED"}


class Router:
    """`mabrouter serve` with default refresh and flush intervals (unlike tests/support.RouterProcess)."""

    def __init__(self, redis_url: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"MABROUTER_REFRESH_INTERVAL_MS", "MABROUTER_FLUSH_INTERVAL_MS"}
        }
        env.update(
            MABROUTER_REDIS_URL=redis_url,
            MABROUTER_DECISION_SECRET="bench-decision-secret-0123456789abcdef",  # >= 32 bytes
            # The default Prometheus port (9464) is one per host; replicas here share a host.
            MABROUTER_METRICS_LISTEN="127.0.0.1:0",
        )
        self.log = tempfile.NamedTemporaryFile(prefix="mabrouter-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mabrouter", "serve", "--listen", self.address],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_serving(self) -> None:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited early:\n{Path(self.log.name).read_text()}")
            with grpc.insecure_channel(self.address) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=0.5
                    )
                except grpc.RpcError:
                    return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, 30, interval=0.05, what=f"router on {self.address}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


@dataclass
class Transition:
    t_old: float  # monotonic time the last reply in the previous state arrived
    t_new: float  # monotonic time the first reply in this state arrived
    reason: int


@dataclass
class Observer:
    """A thread calling Route on one replica in a tight loop, recording every change of reason."""

    address: str
    stop: threading.Event
    transitions: list[Transition] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)  # every 16th call's round trip
    calls: int = 0
    errors: int = 0
    current: int | None = None

    def run(self) -> None:
        request = pb.RouteRequest(experiment="ranker", unit_id="bench-observer")
        with grpc.insecure_channel(self.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            last = time.monotonic()
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    reply = stub.Route(request, timeout=5)
                except grpc.RpcError:
                    self.errors += 1
                    continue
                end = time.monotonic()
                self.calls += 1
                if self.calls % 16 == 0:
                    self.call_ms.append((end - start) * 1000)
                if reply.reason != self.current:
                    # Appended before `current` changes: whoever sees the new state finds its transition.
                    self.transitions.append(Transition(last, end, reply.reason))
                    self.current = reply.reason
                last = end

    def first_transition_to(self, reason: int, after: float) -> Transition | None:
        """The earliest change to `reason` whose first reply arrived after `after`."""
        for transition in list(self.transitions):
            if transition.t_new > after and transition.reason == reason:
                return transition
        return None


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {
        "n": len(values),
        "median": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(array.max()),
    }


def cli_commit_time(client: redis.Redis, action: str) -> float:
    """When the CLI's change was committed, on this process's monotonic clock.

    The change and its audit entry are written by one Lua script; the entry's stream id starts with
    the Redis server's clock in ms at that moment (same machine, so the same wall clock as ours).
    """
    ((entry_id, fields),) = client.xrevrange(AUDIT_KEY, count=1)
    if fields.get("action") != action:
        raise RuntimeError(f"newest audit entry is {fields}, expected action {action!r}")
    wall_to_monotonic = time.time() - time.monotonic()
    return int(str(entry_id).split("-")[0]) / 1000 - wall_to_monotonic


def run_flip(
    command: list[str],
    target: int,
    observers: list[Observer],
    commit_time: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Run the command; time from its exit until every observer has seen `target`."""
    issued = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    returned = time.monotonic()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")

    def everyone_obeyed() -> bool:
        return all(observer.current == target for observer in observers)

    wait_until(everyone_obeyed, FLIP_DEADLINE_S, interval=0.001, what=f"every replica to serve {target}")
    per_replica = []
    for observer in observers:
        transition = observer.first_transition_to(target, issued)
        if transition is None:
            raise RuntimeError(f"{observer.address}: no transition to {target} after the command started")
        per_replica.append(
            {
                "upper_ms": (transition.t_new - returned) * 1000,
                "lower_ms": (transition.t_old - returned) * 1000,
            }
        )
    last = max(per_replica, key=lambda r: r["upper_ms"])
    committed = commit_time() if commit_time is not None else None
    extra = {}
    if committed is not None:
        # The same flip timed from the write in Redis instead of from the CLI process's exit.
        extra["commit_to_last_replica_ms"] = last["upper_ms"] + (returned - committed) * 1000
        extra["commit_before_exit_ms"] = (returned - committed) * 1000
    return {
        **extra,
        "to": REASON_NAMES[target],
        "command_ms": (returned - issued) * 1000,
        "last_replica_ms": max(0.0, last["upper_ms"]),
        "last_replica_raw_ms": last["upper_ms"],
        "last_replica_lower_ms": last["lower_ms"],
        "before_exit": last["upper_ms"] <= 0,
        "first_replica_ms": max(0.0, min(r["upper_ms"] for r in per_replica)),
        "resolution_ms": last["upper_ms"] - last["lower_ms"],
        "per_replica": per_replica,
    }


def measure(path: str, flips: int, observers: list[Observer], redis_url: str, redis_port: int) -> list[dict]:
    mabrouter = [sys.executable, "-m", "mabrouter"]
    redis_cli = [shutil.which("redis-cli") or "redis-cli", "-p", str(redis_port)]
    client = redis.Redis(port=redis_port, decode_responses=True)
    samples = []
    for i in range(flips):
        kill = observers[0].current != pb.KILLED
        if path == "cli":
            command = [*mabrouter, "kill" if kill else "unkill", "ranker", "--redis-url", redis_url]
            command += ["--reason", "bench", "--actor", "bench"]
        else:
            command = [*redis_cli, "HSET", CONTROL_KEY, "kill", "1" if kill else "0"]
        action = "kill" if kill else "unkill"
        commit = (lambda action=action: cli_commit_time(client, action)) if path == "cli" else None
        samples.append(run_flip(command, pb.KILLED if kill else pb.SAMPLED, observers, commit))
        time.sleep(random.uniform(0.0, 0.2))  # land at a random phase of the polling timer
        print(f"\r  {path}: {i + 1}/{flips} flips", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    client.close()
    return samples


def machine(load_at_start: float) -> dict[str, Any]:
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": load_at_start,
        "loadavg_1m_at_end": os.getloadavg()[0],
        "redis_server": redis_version,
        "grpcio": grpc.__version__,
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def summarize(samples: list[dict]) -> dict[str, Any]:
    def of(key: str, items: list[dict]) -> dict[str, float]:
        return percentiles([sample[key] for sample in items])

    return {
        "last_replica_ms": of("last_replica_ms", samples),
        "last_replica_kill_ms": of("last_replica_ms", [s for s in samples if s["to"] == "KILLED"]),
        "last_replica_unkill_ms": of("last_replica_ms", [s for s in samples if s["to"] == "SAMPLED"]),
        "first_replica_ms": of("first_replica_ms", samples),
        "resolution_ms": of("resolution_ms", samples),
        "command_ms": of("command_ms", samples),
        "before_exit": sum(sample["before_exit"] for sample in samples),
        **(
            {
                "commit_to_last_replica_ms": of("commit_to_last_replica_ms", samples),
                "commit_before_exit_ms": of("commit_before_exit_ms", samples),
            }
            if "commit_to_last_replica_ms" in samples[0]
            else {}
        ),
    }


def print_table(summary: dict[str, dict[str, Any]], observer_ms: dict[str, float]) -> None:
    print()
    print("Propagation: command exit -> LAST replica's Route answers in the new state (ms)")
    header = f"{'path':<26}{'flips':>6}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}   p99 target"
    print(header)
    print("-" * len(header))
    labels = {"cli": "mabrouter kill/unkill", "raw": "redis-cli HSET kill 1/0"}
    for path, stats in summary.items():
        rows = [
            (labels[path], stats["last_replica_ms"]),
            ("  kill only", stats["last_replica_kill_ms"]),
            ("  unkill only", stats["last_replica_unkill_ms"]),
        ]
        if "commit_to_last_replica_ms" in stats:
            rows.append(("  from the Redis write", stats["commit_to_last_replica_ms"]))
        for label, row in rows:
            target = TARGET_P99_MS[path]
            verdict = (
                f"< {target:g} ({'met' if row['p99'] < target else 'MISSED'})" if label[0] != " " else ""
            )
            print(
                f"{label:<26}{row['n']:>6}{row['median']:>9.1f}{row['p90']:>9.1f}"
                f"{row['p99']:>9.1f}{row['max']:>9.1f}   {verdict}"
            )
    print()
    for path, stats in summary.items():
        print(
            f"{path}: first replica median {stats['first_replica_ms']['median']:.1f} ms; "
            f"observer resolution (gap between last old and first new reply) median "
            f"{stats['resolution_ms']['median']:.2f} ms, max {stats['resolution_ms']['max']:.2f} ms; "
            f"command run time median {stats['command_ms']['median']:.0f} ms (not included"
            + (
                f"; of which after its Redis write: median {stats['commit_before_exit_ms']['median']:.0f} ms"
                if "commit_before_exit_ms" in stats
                else ""
            )
            + "); "
            f"{stats['before_exit']} flips already obeyed before the command exited (counted as 0)"
        )
    print(
        f"observer Route round trip: median {observer_ms['median']:.2f} ms, p99 {observer_ms['p99']:.2f} ms "
        f"({observer_ms['n']} sampled calls)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flips", type=int, default=60, help="flips per path, alternating kill/unkill")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("redis-cli") is None:
        print("redis-cli is not installed (apt-get install -y redis-tools)", file=sys.stderr)
        return 1

    load_at_start = os.getloadavg()[0]
    with running_redis() as redis_server:
        cli("experiment", "apply", str(EXAMPLE), redis_url=redis_server.url)
        routers = [Router(redis_server.url) for _ in range(args.replicas)]
        stop = threading.Event()
        observers = [Observer(router.address, stop) for router in routers]
        threads = [threading.Thread(target=observer.run, daemon=True) for observer in observers]
        try:
            for router in routers:
                router.wait_serving()
            for thread in threads:
                thread.start()
            wait_until(
                lambda: all(observer.current == pb.SAMPLED for observer in observers), 10, what="observers"
            )
            started = time.monotonic()
            samples = {
                path: measure(path, args.flips, observers, redis_server.url, redis_server.port)
                for path in ("cli", "raw")
            }
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            for thread in threads:
                if thread.ident is not None:
                    thread.join(10)
            for router in routers:
                router.stop()

    summary = {path: summarize(items) for path, items in samples.items()}
    observer_ms = percentiles([ms for observer in observers for ms in observer.call_ms])
    print_table(summary, observer_ms)
    report = {
        "benchmark": "propagation",
        "replicas": args.replicas,
        "refresh_interval_ms": "default (200; MABROUTER_REFRESH_INTERVAL_MS not set)",
        "flips_per_path": args.flips,
        "targets_p99_ms": TARGET_P99_MS,
        "measured_seconds": elapsed,
        "summary": summary,
        "observer_route_ms": observer_ms,
        "observer_calls": [observer.calls for observer in observers],
        "observer_errors": [observer.errors for observer in observers],
        "samples": samples,
        "machine": machine(load_at_start),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
