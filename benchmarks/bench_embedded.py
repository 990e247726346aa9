"""In-process decisions (mabrouter.embedded) against Route through the sidecar: same experiment, same run.

    .venv/bin/python benchmarks/bench_embedded.py [--rounds 5] [--decisions 50000] [--output PATH]

Setup: a private redis-server, bench_grpc's 10-arm Bernoulli experiment WITH RULES (targeting on three
attributes, rollout 90 %, allow- and deny-lists, a segment in the exposure log), one `mabrouter serve`
(default refresh and flush intervals), and in-process routers with the same default settings, each in a
fresh Python process started for one measurement, so its CPU, threads and memory are its own. Every call
routes the same unit inside the rollout with the same attributes, so each decision takes the whole path
(targeting, rollout bucket, Thompson draw, signed id, trial count, exposure-log entry), as bench_grpc's
frame does.

Phases, in-process and sidecar alternating (`--rounds` each; medians reported):
  in-process, 1 thread   `--decisions` route() calls: decisions/s; per-call latency (perf_counter_ns
                         around each call) p50/p90/p99; process CPU per decision (every thread: the
                         caller's and the background loop's recording and flushing, measured until the
                         trial counts are in Redis)
  in-process, 4 threads  the same number of calls split over 4 threads
  sidecar, serial        RouterClient.route from one thread (`--sidecar-calls`): decisions/s, latency,
                         CPU per decision of the client process plus the router process (/proc)
  sidecar, saturated     h2load -c 4 -m 16 on Route for `--seconds`: requests/s, router CPU per Route
Then once each:
  memory                 VmRSS of a fresh interpreter (`python -c`): bare, after importing
                         mabrouter.embedded, after start() and `--decisions` decisions; the same for a
                         RouterClient caller (2,000 calls), and the sidecar process's own RSS
  idle                   CPU of a started in-process router with no traffic, and its Redis commands/s
  lock                   (diagnostic) the engine's decide + sign + hand-over with the in-process lock
                         and without it (the sidecar's RoutingEngine._decide), one thread, alternating,
                         in that thread's CPU time
  kill propagation       (diagnostic) a raw kill + change notice, 4 threads routing: time until every
                         thread serves KILLED, with threads that never leave Python (a tight route()
                         loop) and with threads pausing 0.5 ms per request (as I/O or a model call does)

Every measured decision is checked: SAMPLED, and the trial counts in Redis grew by exactly the number made.
Targets (issue 15): in-process >= 20x the sidecar's serial Route rate in the same run; <= 15 us per
decision at p50 including signing and recording: route()'s p50 (decide, sign, hand-over) plus the
background thread's CPU in record_pending per decision (trial counts, exposure-log entry, metric), timed
by wrapping it in the worker. Flushing to Redis and GIL hand-overs are in the process CPU per decision,
reported next to it. Not a test: nothing passes or fails. Writes benchmarks/results/embedded.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grpc import route_request  # the frame bench_grpc sends
from common import (
    RESULTS_DIR,
    RULE_ATTRIBUTES,
    SECRET,
    RouterServer,
    apply_experiments,
    command_stats,
    cpu_seconds,
    experiment_doc,
    grpc_frame,
    machine_info,
    median,
    percentile,
    rss_kib,
    run_h2load,
    running_redis,
    unit_in_rollout,
    wait_until,
    write_report,
)

EXPERIMENT = "ranker"
ROUTE = "/mabrouter.v1.Router/Route"
SATURATION = (4, 16)  # h2load connections, streams per connection
THREADS = 4
TARGETS = {"in_process_vs_sidecar_serial_min": 20.0, "in_process_p50_us_max": 15.0}
RESULTS = RESULTS_DIR / "embedded.json"


# ------------------------------------------------------------------------------- workers (own processes)


_observers: dict[str, Any] = {}


def _trials(redis_url: str) -> float:
    """Trial counts of the experiment in Redis (one connection per process, kept: polling it must cost
    the measured process next to nothing)."""
    import redis  # noqa: PLC0415 - workers import what they measure, nothing more

    client = _observers.get(redis_url)
    if client is None:
        client = _observers[redis_url] = redis.Redis.from_url(redis_url, decode_responses=True)
    fields = client.hgetall(f"mabrouter:{{{EXPERIMENT}}}:stats")
    return sum(float(v) for k, v in fields.items() if k.endswith(":trials") and not k.startswith("@"))


def _settings(redis_url: str) -> Any:
    from mabrouter.config import Settings  # noqa: PLC0415

    # Default intervals (refresh 200 ms, flush 100 ms), as a production caller runs it; no metrics port.
    return Settings(redis_url=redis_url, decision_secret=SECRET, metrics_listen="")


def _timed_calls(call: Any, count: int, latencies: list[int], reasons: dict[str, int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        reason = call().reason
        latencies.append(clock() - started)
        reasons[reason] = reasons.get(reason, 0) + 1


def _latency_summary(latencies: list[int]) -> dict[str, float]:
    micros = [ns / 1000 for ns in latencies]
    return {
        "p50_us": percentile(micros, 50),
        "p90_us": percentile(micros, 90),
        "p99_us": percentile(micros, 99),
        "mean_us": statistics.fmean(micros),
    }


def worker_in_process(args: argparse.Namespace) -> dict[str, Any]:
    from mabrouter.embedded import EmbeddedRouter  # noqa: PLC0415

    router = EmbeddedRouter(_settings(args.redis_url))
    if not router.start(30):
        raise RuntimeError("the in-process router loaded no snapshot")
    unit = args.unit

    def call() -> Any:
        return router.route(EXPERIMENT, unit, attributes=RULE_ATTRIBUTES, default_arm="arm-0")

    recording = _time_recording(router)
    warm: dict[str, int] = {}
    _timed_calls(call, 2000, [], warm)
    wait_until(lambda: _trials(args.redis_url) >= args.trials_before + 2000, 10, what="warm-up flushed")
    before = _trials(args.redis_url)
    per_thread = args.decisions // args.threads
    latencies: list[list[int]] = [[] for _ in range(args.threads)]
    reasons: list[dict[str, int]] = [{} for _ in range(args.threads)]
    threads = [
        threading.Thread(target=_timed_calls, args=(call, per_thread, latencies[i], reasons[i]))
        for i in range(args.threads)
    ]
    recording.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall0
    made = per_thread * args.threads
    # The recording and flushing of these decisions happen on the background thread: count their CPU.
    wait_until(lambda: _trials(args.redis_url) >= before + made, 30, interval=0.005, what="trials flushed")
    cpu_with_flush = time.process_time() - cpu0
    router.close()
    merged: dict[str, int] = {}
    for counts in reasons:
        for reason, n in counts.items():
            merged[reason] = merged.get(reason, 0) + n
    return {
        "threads": args.threads,
        "decisions": made,
        "decisions_per_s": made / wall,
        "wall_s": wall,
        "cpu_us_per_decision": cpu_with_flush / made * 1e6,
        # The background thread's CPU in record_pending (trial counts, exposure-log entry, metric) per
        # decision it recorded: the recording route() hands over, before any flush to Redis.
        "recording_us_per_decision": _per_decision_us(recording),
        "reasons": merged,
        "trials_added": _trials(args.redis_url) - before,
        **_latency_summary([ns for thread_latencies in latencies for ns in thread_latencies]),
    }


def _time_recording(router: Any) -> list[tuple[int, int]]:
    """Wrap the engine's record_pending (it runs on the background thread) to collect (thread CPU ns,
    decisions recorded) per call: the part of a decision's cost that route() hands over."""
    engine = router._engine
    record = engine.record_pending
    calls: list[tuple[int, int]] = []

    def timed() -> None:
        pending = len(engine._unrecorded)
        started = time.thread_time_ns()
        record()
        if pending:
            calls.append((time.thread_time_ns() - started, pending))

    engine.record_pending = timed
    return calls


def _per_decision_us(calls: list[tuple[int, int]]) -> float:
    return sum(ns for ns, _ in calls) / max(sum(n for _, n in calls), 1) / 1000


def worker_client(args: argparse.Namespace) -> dict[str, Any]:
    from mabrouter.client import RouterClient  # noqa: PLC0415

    client = RouterClient(args.address, timeout=2.0)
    if not client.wait_ready(10):
        raise RuntimeError(f"no router at {args.address}")

    def call() -> Any:
        return client.route(EXPERIMENT, args.unit, attributes=RULE_ATTRIBUTES, default_arm="arm-0")

    _timed_calls(call, 300, [], {})
    wait_until(lambda: _trials(args.redis_url) >= args.trials_before + 300, 10, what="warm-up flushed")
    before = _trials(args.redis_url)
    latencies: list[int] = []
    reasons: dict[str, int] = {}
    router_cpu0, cpu0, wall0 = cpu_seconds(args.router_pid), time.process_time(), time.perf_counter()
    _timed_calls(call, args.decisions, latencies, reasons)
    wall = time.perf_counter() - wall0
    wait_until(lambda: _trials(args.redis_url) >= before + args.decisions, 30, interval=0.005, what="flush")
    client_cpu, router_cpu = time.process_time() - cpu0, cpu_seconds(args.router_pid) - router_cpu0
    client.close()
    return {
        "decisions": args.decisions,
        "decisions_per_s": args.decisions / wall,
        "cpu_us_per_decision": (client_cpu + router_cpu) / args.decisions * 1e6,
        "client_cpu_us_per_decision": client_cpu / args.decisions * 1e6,
        "router_cpu_us_per_decision": router_cpu / args.decisions * 1e6,
        "reasons": reasons,
        "trials_added": _trials(args.redis_url) - before,
        **_latency_summary(latencies),
    }


# Run with `python -c` in a fresh interpreter: the first reading is before any import (the worker mode of
# this script imports the benchmark's helpers, grpc and redis first, which would hide what a caller adds).
MEMORY_PROBE = """
import json, os, sys, time
def rss():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
mode, url, secret, unit, address, decisions = sys.argv[1:7]
attributes = json.loads(sys.argv[7])
steps = {"bare interpreter": rss()}
if mode == "embedded":
    from mabrouter.config import Settings
    from mabrouter.embedded import EmbeddedRouter
    steps["import mabrouter.embedded"] = rss()
    router = EmbeddedRouter(Settings(redis_url=url, decision_secret=secret, metrics_listen=""))
    router.start(30)
    for _ in range(int(decisions)):
        router.route("ranker", unit, attributes=attributes, default_arm="arm-0")
    time.sleep(1.0)  # a few flushes: the buffers back to empty
    steps[f"started, {int(decisions):,} decisions"] = rss()
    router.close()
else:
    from mabrouter.client import RouterClient
    steps["import mabrouter.client"] = rss()
    client = RouterClient(address, timeout=2.0)
    client.wait_ready(10)
    for _ in range(int(decisions)):
        client.route("ranker", unit, attributes=attributes, default_arm="arm-0")
    steps[f"connected, {int(decisions):,} decisions"] = rss()
    client.close()
print(json.dumps({"rss_kib": steps}))
"""


def memory_probe(mode: str, redis_url: str, unit: str, address: str, decisions: int) -> dict[str, Any]:
    """RSS (KiB) at each step of a caller adopting one mode or the other, from a bare interpreter."""
    argv = [sys.executable, "-c", MEMORY_PROBE, mode, redis_url, SECRET, unit, address, str(decisions)]
    done = subprocess.run(
        [*argv, json.dumps(RULE_ATTRIBUTES)], capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def worker_idle(args: argparse.Namespace) -> dict[str, Any]:
    import redis  # noqa: PLC0415

    from mabrouter.embedded import EmbeddedRouter  # noqa: PLC0415

    router = EmbeddedRouter(_settings(args.redis_url))
    router.start(30)
    time.sleep(2.0)  # past start-up
    observer = redis.Redis.from_url(args.redis_url)
    ops0, cpu0, wall0 = command_stats(observer), time.process_time(), time.perf_counter()
    time.sleep(args.idle_seconds)
    cpu, wall, ops1 = time.process_time() - cpu0, time.perf_counter() - wall0, command_stats(observer)
    observer.close()
    router.close()
    # The observer's own INFO calls are excluded; everything else on this private Redis is the router's.
    commands = sum(n - ops0.get(name, 0) for name, n in ops1.items() if name != "info")
    return {"seconds": wall, "cpu_fraction": cpu / wall, "redis_commands_per_s": commands / wall}


def worker_propagation(args: argparse.Namespace) -> dict[str, Any]:
    import redis  # noqa: PLC0415

    from mabrouter.embedded import EmbeddedRouter  # noqa: PLC0415

    router = EmbeddedRouter(_settings(args.redis_url))
    router.start(30)
    operator = redis.Redis.from_url(args.redis_url)
    delays: list[float] = []
    for flip in range(args.flips):
        stop = threading.Event()
        first: dict[int, float] = {}  # thread -> when it first served the new state
        want = "KILLED" if flip % 2 == 0 else "SAMPLED"

        def serve(index: int, want: str, stop: threading.Event, first: dict[int, float]) -> None:
            while not stop.is_set():
                assignment = router.route(
                    EXPERIMENT, args.unit, attributes=RULE_ATTRIBUTES, default_arm="arm-0"
                )
                if assignment.reason == want and index not in first:
                    first[index] = time.perf_counter()
                if args.pause:
                    time.sleep(args.pause)

        threads = [threading.Thread(target=serve, args=(i, want, stop, first)) for i in range(args.threads)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        operator.hset(f"mabrouter:{{{EXPERIMENT}}}:control", "kill", "1" if want == "KILLED" else "0")
        operator.publish("mabrouter:changes", EXPERIMENT)
        flipped = time.perf_counter()
        wait_until(lambda first=first: len(first) == args.threads, 30, interval=0.001, what="every thread")
        delays.append((max(first.values()) - flipped) * 1000)
        stop.set()
        for thread in threads:
            thread.join()
    operator.close()
    router.close()
    return {"threads": args.threads, "pause_s": args.pause, "delays_ms": delays}


def worker_lock(args: argparse.Namespace) -> dict[str, Any]:
    """What the shared engine's lock costs one thread: the same decisions through the locked
    SharedRoutingEngine._decide and the base class's unlocked one (what the sidecar runs), alternating."""
    from mabrouter.core.decide import RouteInput  # noqa: PLC0415
    from mabrouter.embedded import EmbeddedRouter  # noqa: PLC0415
    from mabrouter.embedded._convert import route_attributes  # noqa: PLC0415
    from mabrouter.runtime.engine import RoutingEngine  # noqa: PLC0415

    router = EmbeddedRouter(_settings(args.redis_url))
    router.start(30)
    engine = router._engine  # a benchmark of the engine itself
    snapshot = router._runtime.holder.current  # type: ignore[union-attr]
    assert engine is not None
    assert snapshot is not None
    request = RouteInput(EXPERIMENT, args.unit, route_attributes(RULE_ATTRIBUTES), "arm-0")
    state = snapshot.experiments[EXPERIMENT]
    locked = engine._decide
    unlocked = types.MethodType(RoutingEngine._decide, engine)  # bound, as `locked` is
    runs: dict[str, list[float]] = {"locked": [], "unlocked": []}
    for _ in range(41):  # many short alternations: the loop's recording disturbs both alike
        for name, decide in (("locked", locked), ("unlocked", unlocked)):
            # This thread's CPU only: the loop records these decisions meanwhile, on its own thread.
            started = time.thread_time()
            for _ in range(args.decisions):
                decide(request, snapshot, state, "")
            runs[name].append((time.thread_time() - started) / args.decisions * 1e6)
    router.close()
    return {name: median(values) for name, values in runs.items()} | {"runs_us": runs}


WORKERS = {
    "in-process": worker_in_process,
    "client": worker_client,
    "idle": worker_idle,
    "propagation": worker_propagation,
    "lock": worker_lock,
}


def in_worker(kind: str, **options: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its JSON result."""
    argv = [sys.executable, __file__, "--worker", kind]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------------ orchestration


def problems(rounds: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every measured decision was SAMPLED and counted once in Redis; no h2load call failed."""
    found = []
    for phase, results in rounds.items():
        for index, result in enumerate(results):
            if "reasons" in result and result["reasons"] != {"SAMPLED": result["decisions"]}:
                found.append(f"{phase} round {index + 1}: reasons {result['reasons']}")
            if "trials_added" in result and result["trials_added"] != result["decisions"]:
                found.append(f"{phase} round {index + 1}: {result['trials_added']} trials added")
            if result.get("failed"):
                found.append(f"{phase} round {index + 1}: {result['failed']:.0f} failed calls")
    return found


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    rounds = report["rounds"]

    def med(phase: str, key: str) -> float:
        return median(r[key] for r in rounds[phase])

    serial = med("sidecar, serial", "decisions_per_s")
    one = med("in-process, 1 thread", "decisions_per_s")
    per_round = [
        a["decisions_per_s"] / b["decisions_per_s"]
        for a, b in zip(rounds["in-process, 1 thread"], rounds["sidecar, serial"], strict=True)
    ]
    one_thread = rounds["in-process, 1 thread"]
    return {
        phase: {key: med(phase, key) for key in rounds[phase][0] if isinstance(rounds[phase][0][key], float)}
        for phase in rounds
    } | {
        # The per-decision measure: route() at p50 (decide, sign, hand-over) plus its recording.
        "in_process_route_p50_plus_recording_us": median(
            r["p50_us"] + r["recording_us_per_decision"] for r in one_thread
        ),
        "in_process_vs_sidecar_serial": one / serial,
        "in_process_vs_sidecar_serial_per_round": per_round,
        "in_process_4_threads_vs_sidecar_saturated": med("in-process, 4 threads", "decisions_per_s")
        / med("sidecar, saturated", "decisions_per_s"),
    }


def print_table(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(
        "\nchecks: " + ("every decision SAMPLED and counted once" if not report["problems"] else "PROBLEMS")
    )
    for problem in report["problems"]:
        print(f"  {problem}")
    print(f"\nmedians of {len(report['rounds']['sidecar, serial'])} alternating rounds")
    print(
        f"{'phase':<24}{'decisions/s':>14}{'p50 us':>10}{'p90 us':>10}{'p99 us':>10}{'CPU us/decision':>18}"
    )
    for phase in ("in-process, 1 thread", "in-process, 4 threads", "sidecar, serial", "sidecar, saturated"):
        row = s[phase]

        def cell(key: str, row: dict[str, float] = row) -> str:
            return f"{row[key]:,.1f}" if key in row else "-"

        print(
            f"{phase:<24}{row['decisions_per_s']:>14,.0f}{cell('p50_us'):>10}{cell('p90_us'):>10}"
            f"{cell('p99_us'):>10}{cell('cpu_us_per_decision'):>18}"
        )
    ratio, target = s["in_process_vs_sidecar_serial"], TARGETS["in_process_vs_sidecar_serial_min"]
    p50, p50_target = s["in_process_route_p50_plus_recording_us"], TARGETS["in_process_p50_us_max"]
    one = s["in-process, 1 thread"]
    met = {True: "met", False: "missed"}
    print(f"in-process / sidecar serial: {ratio:.1f}x (target >= {target:.0f}x: {met[ratio >= target]})")
    print(
        f"in-process route() p50 {one['p50_us']:.1f} us + recording {one['recording_us_per_decision']:.1f} us"
        f" per decision: {p50:.1f} us (target <= {p50_target:.0f} us: {met[p50 <= p50_target]}); with"
        f" flushing and every thread, {one['cpu_us_per_decision']:.1f} us of process CPU per decision"
    )
    print(f"in-process 4 threads / sidecar saturated: {s['in_process_4_threads_vs_sidecar_saturated']:.1f}x")
    for mode, steps in report["memory"].items():
        print(
            f"memory, {mode}: "
            + ", ".join(f"{name} {kib / 1024:.1f} MiB" for name, kib in steps["rss_kib"].items())
        )
    lock = report["lock"]
    print(
        f"the shared engine's lock, one thread: decide + sign {lock['locked']:.2f} us locked, "
        f"{lock['unlocked']:.2f} us unlocked (the sidecar's engine)"
    )
    idle = report["idle"]
    print(
        f"idle in-process router: {idle['cpu_fraction'] * 100:.2f} % of a core, "
        f"{idle['redis_commands_per_s']:.1f} Redis commands/s"
    )
    for row in report["propagation"]:
        delays = row["delays_ms"]
        print(
            f"kill/unkill reaches {row['threads']} threads (pause {row['pause_s'] * 1000:.1f} ms): median "
            f"{median(delays):.0f} ms, p90 {percentile(delays, 90):.0f} ms, max {max(delays):.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    parser.add_argument("--decisions", type=int, default=50_000, help="in-process decisions per round")
    parser.add_argument("--sidecar-calls", type=int, default=2_000, help="serial Route calls per round")
    parser.add_argument("--seconds", type=float, default=2.5, help="measured seconds per h2load run")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--flips", type=int, default=10, help="kills/unkills per propagation case")
    parser.add_argument("--output", type=Path, default=RESULTS)
    # worker mode (this script in a fresh interpreter); not for direct use
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    for name in ("redis-url", "unit", "address"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("threads", "router-pid", "trials-before"):
        parser.add_argument(f"--{name}", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pause", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.trials_before = float(args.trials_before)
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "embedded",
        "machine": machine_info(note="2 shared cores: redis-server, the router and the callers compete"),
        "targets": TARGETS,
        "config": {
            "experiment": experiment_doc(EXPERIMENT),
            "rounds": args.rounds,
            "in_process_decisions": args.decisions,
            "sidecar_serial_calls": args.sidecar_calls,
            "saturation_setting": SATURATION,
            "seconds_per_h2load_run": args.seconds,
        },
    }
    with running_redis() as redis_server:
        url = redis_server.url
        apply_experiments(url, [experiment_doc(EXPERIMENT)])
        unit = unit_in_rollout(EXPERIMENT, 90)
        router = RouterServer(url)
        router.wait_serving()
        frame = Path(redis_server.directory) / "route.bin"
        frame.write_bytes(grpc_frame(route_request(unit)))
        pid = router.worker_pids()[0]
        rounds: dict[str, list[dict[str, Any]]] = {
            "in-process, 1 thread": [],
            "in-process, 4 threads": [],
            "sidecar, serial": [],
            "sidecar, saturated": [],
        }
        try:
            for index in range(args.rounds):
                print(f"round {index + 1}/{args.rounds}...", flush=True)
                common = {"redis_url": url, "unit": unit}
                for threads in (1, THREADS):
                    result = in_worker(
                        "in-process",
                        **common,
                        threads=threads,
                        decisions=args.decisions,
                        trials_before=int(_trials(url)),
                    )
                    rounds[f"in-process, {threads} thread{'s' if threads > 1 else ''}"].append(result)
                rounds["sidecar, serial"].append(
                    in_worker(
                        "client",
                        **common,
                        address=router.address,
                        router_pid=pid,
                        decisions=args.sidecar_calls,
                        trials_before=int(_trials(url)),
                    )
                )
                h2 = run_h2load(
                    router.address,
                    ROUTE,
                    frame,
                    clients=SATURATION[0],
                    streams=SATURATION[1],
                    duration=args.seconds,
                    warmup=0.5,
                    server_pids=[pid],
                )
                calls = h2.requests_per_s * (args.seconds + 0.5)
                rounds["sidecar, saturated"].append(
                    {
                        "decisions_per_s": h2.requests_per_s,
                        "cpu_us_per_decision": h2.server_cpu_s / max(calls, 1) * 1e6,
                        "failed": float(h2.failed + h2.errored),
                    }
                )
            report["rounds"] = rounds
            print("memory, idle, kill propagation...", flush=True)
            report["memory"] = {
                "embedded": memory_probe("embedded", url, unit, router.address, args.decisions),
                "sidecar client": memory_probe("client", url, unit, router.address, 2000),
                "sidecar process": {"rss_kib": {"mabrouter serve, after the rounds": rss_kib(pid)}},
            }
            report["idle"] = in_worker("idle", redis_url=url, unit=unit, idle_seconds=args.idle_seconds)
            report["lock"] = in_worker("lock", redis_url=url, unit=unit, decisions=3_000)
            report["propagation"] = [
                in_worker(
                    "propagation", redis_url=url, unit=unit, threads=THREADS, pause=pause, flips=args.flips
                )
                for pause in (0.0, 0.0005)
            ]
        finally:
            router.stop()
    report["summary"] = summarize(report)
    report["problems"] = problems(report["rounds"])
    report["elapsed_s"] = time.perf_counter() - started
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    print_table(report)
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
