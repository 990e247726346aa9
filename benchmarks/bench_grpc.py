"""The router against the floor (a gRPC server that does no work), same load generator, same run.

    .venv/bin/python benchmarks/bench_grpc.py [--rounds 3] [--seconds 3] [--output PATH]

Setup: a private redis-server, a 10-arm Bernoulli experiment WITH RULES (targeting on three attributes,
rollout 90 %, allow- and deny-lists, a segment recorded in the exposure log), the real router
(`mabrouter serve`, 1 worker, default refresh and flush intervals) and benchmarks/floor_server.py
(a bare grpc.aio server with the router's options that returns a constant response of the same shape).
Both are driven by h2load over h2c with one pre-encoded gRPC frame (a RouteRequest with attributes for
a unit inside the rollout, so every router decision takes the whole path: targeting, rollout bucket,
Thompson draw, signed id, trial count, exposure-log entry).

Phases (floor and router alternate A B A B..., `--rounds` each; medians are reported):
  verify      the frame through a Python client: status OK and reason SAMPLED; the rules run (an
              allow-listed unit is FORCED, a denied one DENIED, another country NOT_TARGETED, a unit
              outside the rollout NOT_EXPOSED); then a fixed number of h2load requests, and the trial
              counts and exposure-log entries in Redis grow by exactly that number (h2load counts HTTP
              2xx; a gRPC error would be a 200 with grpc-status != 0 in the trailers and count nothing)
  saturation  a short sweep of h2load -c/-m settings per server, then throughput at the best of each
  latency     -c 1 -m 1; per-request latencies from h2load's --log-file; p50/p90/p99 per round
  batch       RouteBatch with 100 requests per call: decisions/s (the floor answers 100 constants)
  workers     `mabrouter serve --workers 2` vs 1, and 2 floor processes (SO_REUSEPORT) vs 1, at one
              h2load setting; h2load's own CPU time (wait4 rusage) and every server's (/proc) reported
  memory      VmRSS of one router worker after warm-up with 1 experiment and with 100 x 10 arms, and
              its idle CPU and Redis traffic (INFO commandstats) over a few refresh intervals

Not a test: nothing passes or fails. On the reference machine (2 shared, noisy cores) read the ratios
to the floor of the same run, not the absolute numbers. Writes benchmarks/results/grpc.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import redis
from google.protobuf import struct_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    RULE_ATTRIBUTES,
    FloorServer,
    H2Result,
    RouterServer,
    apply_experiments,
    command_stats,
    cpu_seconds,
    experiment_doc,
    grpc_frame,
    machine_info,
    median,
    redis_command_costs,
    redis_cpu,
    rss_kib,
    run_h2load,
    running_redis,
    unit_in_rollout,
    write_report,
)

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

EXPERIMENT = "ranker"
ROUTE = "/mabrouter.v1.Router/Route"
ROUTE_BATCH = "/mabrouter.v1.Router/RouteBatch"
BATCH = 100
SWEEP = ((1, 32), (4, 16), (8, 32))  # (connections, streams per connection)
WORKERS_SETTING = (16, 8)  # enough connections for SO_REUSEPORT to spread them over 2 processes
BATCH_SETTING = (2, 4)  # RouteBatch: 8 calls of 100 in flight
BACKGROUND_RATE = 1000.0  # decisions/s spread over every experiment in the experiments phase
MEMORY_EXPERIMENTS = 100
TARGETS = {
    "route_throughput_ratio_min": 0.85,
    "route_p50_overhead_us_max": 40.0,
    "route_batch_decisions_per_s_min": 50_000,
}
RESULTS = RESULTS_DIR / "grpc.json"


def route_request(unit: str, **attributes: Any) -> pb.RouteRequest:
    struct = struct_pb2.Struct()
    struct.update({**RULE_ATTRIBUTES, **attributes})
    return pb.RouteRequest(experiment=EXPERIMENT, unit_id=unit, attributes=struct)


def stats_total(client: redis.Redis, experiment: str, suffix: str) -> float:
    fields: dict[str, str] = client.hgetall(f"mabrouter:{{{experiment}}}:stats")  # type: ignore[assignment]
    return sum(float(v) for k, v in fields.items() if k.endswith(suffix) and not k.startswith("@"))


def settle(client: redis.Redis, experiment: str, expected: float, timeout: float = 5.0) -> float:
    """Wait for the router's 100 ms trial flush to reach `expected`; return what Redis has."""
    deadline = time.monotonic() + timeout
    while True:
        total = stats_total(client, experiment, ":trials")
        if total >= expected or time.monotonic() > deadline:
            return total
        time.sleep(0.05)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


# ------------------------------------------------------------------------------------------------ verify


def verify(
    router: RouterServer, client: redis.Redis, frame_request: pb.RouteRequest, frames: dict[str, Path]
) -> dict[str, Any]:
    """The frame succeeds through a real client, the rules run, and h2load's 2xx are real decisions."""
    doc = experiment_doc(EXPERIMENT)
    outside = unit_in_rollout(EXPERIMENT, doc["rollout"], want=False)
    checks: dict[str, str] = {}
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        reply = stub.Route(frame_request, timeout=5)
        checks["benchmark frame"] = pb.Reason.Name(reply.reason)
        checks["allow-listed qa-alice"] = f"{pb.Reason.Name(stub.Route(route_request('qa-alice')).reason)}"
        checks["allow-listed qa-alice arm"] = stub.Route(route_request("qa-alice")).arm
        checks["deny-listed vip-customer-1"] = pb.Reason.Name(
            stub.Route(route_request("vip-customer-1")).reason
        )
        checks["country RU"] = pb.Reason.Name(
            stub.Route(route_request(frame_request.unit_id, country="RU")).reason
        )
        checks["internal user"] = pb.Reason.Name(
            stub.Route(route_request(frame_request.unit_id, internal=True)).reason
        )
        checks[f"unit {outside} (outside the 90 % rollout)"] = pb.Reason.Name(
            stub.Route(route_request(outside)).reason
        )
        batch = pb.RouteBatchRequest.FromString(frames["batch"].read_bytes()[5:])
        batch_reply = stub.RouteBatch(batch, timeout=5)
        codes = {r.code for r in batch_reply.results}
        reasons = {pb.Reason.Name(r.response.reason) for r in batch_reply.results}
        checks["RouteBatch frame"] = (
            f"{len(batch_reply.results)} results, codes {sorted(codes)}, reasons {sorted(reasons)}"
        )
    expected = {
        "benchmark frame": "SAMPLED",
        "allow-listed qa-alice": "FORCED",
        "allow-listed qa-alice arm": "arm-3",
        "deny-listed vip-customer-1": "DENIED",
        "country RU": "NOT_TARGETED",
        "internal user": "NOT_TARGETED",
        f"unit {outside} (outside the 90 % rollout)": "NOT_EXPOSED",
    }
    rules_ok = all(checks[k] == v for k, v in expected.items()) and codes == {0} and reasons == {"SAMPLED"}

    # h2load's 2xx are gRPC successes: each counted decision adds one trial and one exposure entry.
    time.sleep(0.3)
    trials0 = stats_total(client, EXPERIMENT, ":trials")
    log0 = int(client.xlen(f"mabrouter:{{{EXPERIMENT}}}:decisions"))
    n_route, n_batch = 4000, 40
    single = run_h2load(router.address, ROUTE, frames["route"], clients=4, streams=8, requests=n_route)
    batched = run_h2load(router.address, ROUTE_BATCH, frames["batch"], clients=2, streams=2, requests=n_batch)
    want = trials0 + single.status_2xx + batched.status_2xx * BATCH
    trials1 = settle(client, EXPERIMENT, want)
    time.sleep(0.3)
    log1 = int(client.xlen(f"mabrouter:{{{EXPERIMENT}}}:decisions"))
    h2_ok = single.status_2xx == n_route and batched.status_2xx == n_batch
    counted = trials1 - trials0
    logged = log1 - log0
    wanted = n_route + n_batch * BATCH
    return {
        "checks": checks,
        "rules_ok": rules_ok,
        "h2load_route_2xx": single.status_2xx,
        "h2load_batch_2xx": batched.status_2xx,
        "trials_added": counted,
        "exposure_entries_added": logged,
        "decisions_sent": wanted,
        "all_h2load_requests_were_decisions": h2_ok and counted == wanted and logged == wanted,
    }


# --------------------------------------------------------------------------------------------- phases


def per_request_cpu_us(result: H2Result, seconds: float, warmup: float, per_call: int = 1) -> float:
    """Server CPU per decision: its CPU over the whole run (warm-up included) over the decisions made."""
    calls = result.requests_per_s * (seconds + warmup)
    return result.server_cpu_s / max(calls * per_call, 1) * 1e6


def run(
    server: FloorServer | RouterServer,
    path: str,
    frame: Path,
    setting: tuple[int, int],
    seconds: float,
    warmup: float = 0.5,
    **kw: Any,
) -> H2Result:
    clients, streams = setting
    return run_h2load(
        server.address,
        path,
        frame,
        clients=clients,
        streams=streams,
        duration=seconds,
        warmup=warmup,
        server_pids=server.worker_pids(),
        **kw,
    )


def sweep(servers: dict[str, FloorServer | RouterServer], frame: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, server in servers.items():
        rates = {}
        for setting in SWEEP:
            rates[f"-c {setting[0]} -m {setting[1]}"] = run(server, ROUTE, frame, setting, 1.5).requests_per_s
        best = max(SWEEP, key=lambda s: rates[f"-c {s[0]} -m {s[1]}"])
        found[name] = {"rates": rates, "best": best}
    return found


def alternate(
    servers: dict[str, FloorServer | RouterServer],
    rounds: int,
    measure: Any,
) -> dict[str, list[Any]]:
    results: dict[str, list[Any]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            results[name].append(measure(name, server))
    return results


class BackgroundLoad:
    """A thread calling RouteBatch (one request per experiment, cycling) at a fixed pace."""

    def __init__(self, address: str, names: list[str], decisions_per_s: float, batch: int = 100) -> None:
        self.address, self.names, self.batch = address, names, batch
        self.interval = batch / decisions_per_s
        self.stop = threading.Event()
        self.decisions = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        attributes = route_request("x").attributes
        with grpc.insecure_channel(self.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            n = 0
            next_due = time.monotonic()
            while not self.stop.is_set():
                requests = [
                    pb.RouteRequest(
                        experiment=self.names[(n + i) % len(self.names)],
                        unit_id=f"bg-{n + i}",
                        attributes=attributes,
                    )
                    for i in range(self.batch)
                ]
                n += self.batch
                stub.RouteBatch(pb.RouteBatchRequest(requests=requests), timeout=30)
                self.decisions += self.batch
                next_due += self.interval
                self.stop.wait(max(0.0, next_due - time.monotonic()))

    def __enter__(self) -> BackgroundLoad:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def experiments_phase(
    redis_url: str, client: redis.Redis, frame: Path, seconds: float, background_rate: float
) -> dict[str, Any]:
    """One fresh router worker with 1, then 100 experiments x 10 arms: RSS after warm-up, idle CPU and
    Redis traffic, then Route latency at c=1 while a background client spreads `background_rate`
    decisions/s over every experiment (so each refresh finds every experiment's counts changed)."""
    out: dict[str, Any] = {}
    for count in (1, MEMORY_EXPERIMENTS):
        if count > 1:
            apply_experiments(
                redis_url, (experiment_doc(f"bench-{i:03d}") for i in range(1, MEMORY_EXPERIMENTS))
            )
        names = [EXPERIMENT] + [f"bench-{i:03d}" for i in range(1, count)]
        router = RouterServer(redis_url)
        try:
            router.wait_serving()
            pid = router.worker_pids()[0]
            rss_start = rss_kib(pid)
            attributes = route_request("x").attributes
            with grpc.insecure_channel(router.address) as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                for name in names:  # warm-up: every experiment decides, flushes and is rebuilt
                    for n in range(20):
                        stub.Route(
                            pb.RouteRequest(experiment=name, unit_id=f"warm-{n}", attributes=attributes)
                        )
            time.sleep(1.0)  # a few refreshes: snapshots rebuilt from the new counts
            rss_warm = rss_kib(pid)
            cpu0, ops0, t0, rcpu0 = (
                cpu_seconds(pid),
                command_stats(client),
                time.monotonic(),
                redis_cpu(client),
            )
            time.sleep(3.0)
            idle_s = time.monotonic() - t0
            idle_cpu = cpu_seconds(pid) - cpu0
            idle_redis_cpu = redis_cpu(client) - rcpu0
            ops = delta(command_stats(client), ops0)
            ops.pop("info", None)
            with BackgroundLoad(router.address, names, background_rate) as load:
                time.sleep(1.0)
                cpu0, t0, done0 = cpu_seconds(pid), time.monotonic(), load.decisions
                latency = run_h2load(
                    router.address,
                    ROUTE,
                    frame,
                    clients=1,
                    streams=1,
                    duration=seconds,
                    warmup=0.5,
                    log_latency=True,
                ).summary()
                loaded_s = time.monotonic() - t0
                loaded_cpu = cpu_seconds(pid) - cpu0
                background = (load.decisions - done0) / loaded_s
            out[f"{count}_experiments"] = {
                "experiments": count,
                "arms_each": 10,
                "rss_after_start_kib": rss_start,
                "rss_after_warmup_kib": rss_warm,
                "rss_after_load_kib": rss_kib(pid),
                "idle_cpu_fraction_of_a_core": idle_cpu / idle_s,
                "idle_redis_commands_per_s": {k: v / idle_s for k, v in ops.items()},
                "idle_redis_cpu_fraction_of_a_core": idle_redis_cpu / idle_s,
                "loaded_background_decisions_per_s": background,
                "loaded_cpu_fraction_of_a_core": loaded_cpu / loaded_s,
                "loaded_route_latency_c1": latency,
            }
        finally:
            router.stop()
    return out


# ---------------------------------------------------------------------------------------------- report


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds per phase (median reported)"
    )
    parser.add_argument("--seconds", type=float, default=2.5, help="measured seconds per h2load run")
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=7,
        help="alternating rounds of the c=1 phase: one round's p50 difference moves by 100 us here",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    info = machine_info(note="2 shared cores: h2load, redis-server and the servers compete for them")
    report: dict[str, Any] = {"benchmark": "grpc", "machine": info, "targets": TARGETS}
    seconds, rounds = args.seconds, args.rounds

    with running_redis() as redis_server, tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        client = redis_server.client()
        apply_experiments(redis_server.url, [experiment_doc(EXPERIMENT)])
        unit = unit_in_rollout(EXPERIMENT, 90)
        frame_request = route_request(unit)
        batch_units = [unit_in_rollout(EXPERIMENT, 90, prefix=f"batch-{i}-") for i in range(BATCH)]
        frames = {"route": Path(tmp) / "route.bin", "batch": Path(tmp) / "route_batch.bin"}
        frames["route"].write_bytes(grpc_frame(frame_request))
        frames["batch"].write_bytes(
            grpc_frame(pb.RouteBatchRequest(requests=[route_request(u) for u in batch_units]))
        )
        report["config"] = {
            "experiment": experiment_doc(EXPERIMENT),
            "route_frame_bytes": frames["route"].stat().st_size,
            "batch_frame_bytes": frames["batch"].stat().st_size,
            "batch_size": BATCH,
            "rounds": rounds,
            "latency_rounds": args.latency_rounds,
            "seconds_per_run": seconds,
            "warmup_seconds_per_run": 0.5,
        }

        router, floor = RouterServer(redis_server.url), FloorServer()
        # Diagnostic: the same router with the exposure log disabled (MABROUTER_EXPOSURE_LOG_MAXLEN=0).
        nolog = RouterServer(redis_server.url, MABROUTER_EXPOSURE_LOG_MAXLEN="0")
        for server in (router, floor, nolog):
            server.wait_serving()
        try:
            print("verifying the frames and the rules through a Python client...", flush=True)
            report["verify"] = verify(router, client, frame_request, frames)
            for name, value in report["verify"]["checks"].items():
                print(f"  {name:<44} {value}")
            v = report["verify"]
            print(
                f"  h2load: {v['decisions_sent']:,} decisions sent, Redis trials +{v['trials_added']:,.0f}, "
                f"exposure log +{v['exposure_entries_added']:,}: "
                + (
                    "every h2load 2xx was a decision"
                    if v["all_h2load_requests_were_decisions"]
                    else "MISMATCH"
                )
            )

            pair: dict[str, FloorServer | RouterServer] = {"floor": floor, "router": router}
            trio: dict[str, FloorServer | RouterServer] = {**pair, "router, exposure log off": nolog}
            print("sweeping h2load settings...", flush=True)
            report["sweep"] = sweep(pair, frames["route"])
            best = {name: tuple(found["best"]) for name, found in report["sweep"].items()}
            best["router, exposure log off"] = best["router"]
            redis_rounds: dict[str, list[dict[str, float]]] = {"router": [], NOLOG: []}

            def saturate(name: str, server: Any) -> dict[str, Any]:
                counted = name in redis_rounds
                if counted:
                    ops0, rcpu0 = command_stats(client), redis_cpu(client)
                    trials0 = stats_total(client, EXPERIMENT, ":trials")
                    t0 = time.monotonic()
                result = run(server, ROUTE, frames["route"], best[name], seconds)
                if counted:  # Redis work per decision (after the router's last flush)
                    time.sleep(0.3)
                    window = time.monotonic() - t0
                    decisions = stats_total(client, EXPERIMENT, ":trials") - trials0
                    ops = delta(command_stats(client), ops0)
                    redis_rounds[name].append(
                        {
                            "decisions": decisions,
                            "redis_cpu_us_per_decision": (redis_cpu(client) - rcpu0) / decisions * 1e6,
                            **{
                                f"{k}_per_decision": v / decisions
                                for k, v in ops.items()
                                if k not in {"info", "hgetall", "smembers"}
                            },
                            "hgetall_per_s": ops.get("hgetall", 0) / window,
                            "smembers_per_s": ops.get("smembers", 0) / window,
                        }
                    )
                return {**result.summary(), "cpu_us_per_request": per_request_cpu_us(result, seconds, 0.5)}

            print("saturation throughput (alternating)...", flush=True)
            report["saturation"] = alternate(trio, rounds, saturate)
            report["redis_per_decision"] = {
                name: {key: median(r.get(key, 0.0) for r in found) for key in found[0]}
                for name, found in redis_rounds.items()
            }
            # Cost per command as redis-server accounts it, so far: EVALSHA here is APPLY_TRIALS (the
            # trial flush), XADD the exposure log, HGETALL and SMEMBERS the refresh.
            report["redis_command_costs"] = redis_command_costs(client)

            print("latency at concurrency 1 (alternating)...", flush=True)

            def latency(name: str, server: Any) -> dict[str, Any]:
                return run(server, ROUTE, frames["route"], (1, 1), seconds, log_latency=True).summary()

            report["latency_c1"] = alternate(trio, args.latency_rounds, latency)

            print("RouteBatch of 100 (alternating)...", flush=True)

            def batch(name: str, server: Any) -> dict[str, Any]:
                result = run(server, ROUTE_BATCH, frames["batch"], BATCH_SETTING, seconds)
                return {
                    **result.summary(),
                    "decisions_per_s": result.requests_per_s * BATCH,
                    "cpu_us_per_decision": per_request_cpu_us(result, seconds, 0.5, BATCH),
                    "server_cores": result.server_cpu_s / result.elapsed_s,
                }

            report["route_batch"] = alternate(trio, rounds, batch)
        finally:
            for server in (router, floor, nolog):
                server.stop()

        print("workers: 2 processes vs 1 (alternating)...", flush=True)
        quad: dict[str, FloorServer | RouterServer] = {
            "router x1": RouterServer(redis_server.url),
            "router x2": RouterServer(redis_server.url, workers=2),
            "floor x1": FloorServer(),
            "floor x2": FloorServer(copies=2),
        }
        try:
            for server in quad.values():
                server.wait_serving()

            def workers(name: str, server: Any) -> dict[str, Any]:
                result = run(server, ROUTE, frames["route"], WORKERS_SETTING, seconds)
                return {
                    **result.summary(),
                    "processes": len(server.worker_pids()),
                    "h2load_cores": result.h2load_cpu_s / result.elapsed_s,
                    "server_cores": result.server_cpu_s / result.elapsed_s,
                    "cores_per_process": [cpu / result.elapsed_s for cpu in result.server_cpu_per_process_s],
                }

            report["workers"] = alternate(quad, rounds, workers)
        finally:
            for server in quad.values():
                server.stop()

        print(
            "experiments: 1, then 100 x 10 arms (memory, idle cost, latency under spread load)...", flush=True
        )
        report["experiments"] = experiments_phase(
            redis_server.url, client, frames["route"], seconds, BACKGROUND_RATE
        )

    report["summary"] = summarize(report)
    report["elapsed_s"] = time.perf_counter() - started
    print_table(report, best, rounds, seconds)
    print(f"elapsed {report['elapsed_s']:.0f} s")
    write_report(args.output, report)
    return 0


NOLOG = "router, exposure log off"


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    sat, lat, bat, wrk = report["saturation"], report["latency_c1"], report["route_batch"], report["workers"]
    names = list(sat)

    def med(phase: dict[str, list[dict[str, Any]]], name: str, key: str) -> float:
        return median(r[key] for r in phase[name])

    def per_round(phase: dict[str, list[dict[str, Any]]], name: str, key: str, op: Any) -> list[float]:
        return [op(r[key], f[key]) for r, f in zip(phase[name], phase["floor"], strict=True)]

    def ratio(a: float, b: float) -> float:
        return a / b

    def diff(a: float, b: float) -> float:
        return a - b

    summary: dict[str, Any] = {
        "route_rps": {n: med(sat, n, "requests_per_s") for n in names},
        "route_cpu_us_per_request": {n: med(sat, n, "cpu_us_per_request") for n in names},
        "latency_c1_us": {n: {q: med(lat, n, f"{q}_us") for q in ("p50", "p90", "p99")} for n in names},
        "batch_decisions_per_s": {n: med(bat, n, "decisions_per_s") for n in names},
        "batch_cpu_us_per_decision": {n: med(bat, n, "cpu_us_per_decision") for n in names},
        "batch_server_cores": {n: med(bat, n, "server_cores") for n in names},
        "workers_rps": {n: med(wrk, n, "requests_per_s") for n in wrk},
        "h2load_cores": {n: med(wrk, n, "h2load_cores") for n in wrk},
        "server_cores": {n: med(wrk, n, "server_cores") for n in wrk},
    }
    for n in ("router", NOLOG):
        key = "" if n == "router" else "_exposure_log_off"
        rounds = per_round(sat, n, "requests_per_s", ratio)
        summary[f"route_throughput_ratio{key}"] = median(rounds)
        summary[f"route_throughput_ratio{key}_per_round"] = rounds
        p50 = per_round(lat, n, "p50_us", diff)
        summary[f"route_p50_overhead_us{key}"] = median(p50)
        summary[f"route_p50_overhead_us{key}_per_round"] = p50
        summary[f"route_p99_overhead_us{key}"] = median(per_round(lat, n, "p99_us", diff))
    summary["router_worker_scaling"] = (
        summary["workers_rps"]["router x2"] / summary["workers_rps"]["router x1"]
    )
    summary["floor_process_scaling"] = summary["workers_rps"]["floor x2"] / summary["workers_rps"]["floor x1"]
    return summary


def print_table(report: dict[str, Any], best: dict[str, Any], rounds: int, seconds: float) -> None:
    info, s = report["machine"], report["summary"]
    print()
    print(
        f"gRPC benchmark: router vs floor through h2load, medians of {rounds} alternating rounds of "
        f"{seconds:g} s ({report['config']['latency_rounds']} for c=1; {info['cpu_count']} CPUs, "
        f"Python {info['python']}, grpcio {info['grpcio']}, "
        f"load avg {info['loadavg_1m']:.1f} at start)"
    )
    print(f"{'measure':<36} {'floor':>10} {'router':>10} {'no exp.log':>10} {'router/floor':>13}  target")

    def row(label: str, values: dict[str, float], digits: int, target: str = "", ratio: bool = True) -> None:
        cells = " ".join(f"{values[n]:>10,.{digits}f}" for n in ("floor", "router", NOLOG))
        r = f"{values['router'] / values['floor']:>13.2f}" if ratio else f"{'':>13}"
        print(f"{label:<36} {cells} {r}  {target}")

    met = s["route_throughput_ratio"] >= TARGETS["route_throughput_ratio_min"]
    row("Route req/s at saturation", s["route_rps"], 0, f">= 0.85: {'met' if met else 'MISSED'}")
    blank = f"{'':>10} {'':>10} {'':>10}"
    print(f"{'  (median of per-round ratios)':<36} {blank} {s['route_throughput_ratio']:>13.2f}")
    settings = " ".join(f"{best[n]!s:>10}" for n in ("floor", "router", NOLOG))
    print(f"{'  h2load -c, -m (best of sweep)':<36} {settings}")
    row("  server CPU us per request", s["route_cpu_us_per_request"], 0)
    for q in ("p50", "p90", "p99"):
        target = ""
        if q == "p50":
            over = s["route_p50_overhead_us"]
            ok = over <= TARGETS["route_p50_overhead_us_max"]
            target = f"router - floor {over:+.0f} us; <= 40 us: {'met' if ok else 'MISSED'}"
        row(f"Route latency c=1 {q} (us)", {n: v[q] for n, v in s["latency_c1_us"].items()}, 0, target)
    bd = s["batch_decisions_per_s"]
    ok = bd["router"] >= TARGETS["route_batch_decisions_per_s_min"]
    row("RouteBatch(100) decisions/s", bd, 0, f">= 50,000/s: {'met' if ok else 'MISSED'}")
    row("  server CPU us per decision", s["batch_cpu_us_per_decision"], 1)
    row("  server cores busy", s["batch_server_cores"], 2)
    print()
    print(
        f"workers (every config: h2load -c {WORKERS_SETTING[0]} -m {WORKERS_SETTING[1]}, one h2load thread)"
    )
    print(f"{'config':<36} {'req/s':>10} {'srv cores':>10} {'h2load':>10}")
    for name in ("floor x1", "floor x2", "router x1", "router x2"):
        print(
            f"{name:<36} {s['workers_rps'][name]:>10,.0f} {s['server_cores'][name]:>10.2f} "
            f"{s['h2load_cores'][name]:>10.2f}"
        )
    print(
        f"scaling 2 vs 1: router {s['router_worker_scaling']:.2f}x, floor {s['floor_process_scaling']:.2f}x "
        "(2 cores shared with h2load, redis-server and whatever else runs on the machine)"
    )
    print()
    print(f"{'experiments x 10 arms':<36} {'1':>10} {'100':>10}")
    one, many = (
        report["experiments"]["1_experiments"],
        report["experiments"][f"{MEMORY_EXPERIMENTS}_experiments"],
    )

    def line(label: str, get: Any, digits: int = 1) -> None:
        print(f"{label:<36} {get(one):>10,.{digits}f} {get(many):>10,.{digits}f}")

    line("RSS after warm-up (MiB)", lambda m: m["rss_after_warmup_kib"] / 1024)
    line("RSS after loaded phase (MiB)", lambda m: m["rss_after_load_kib"] / 1024)
    line("idle CPU (% of a core)", lambda m: m["idle_cpu_fraction_of_a_core"] * 100)
    line("idle Redis commands/s", lambda m: sum(m["idle_redis_commands_per_s"].values()), 0)
    line("  redis-server CPU (% of a core)", lambda m: m["idle_redis_cpu_fraction_of_a_core"] * 100, 2)
    line("background decisions/s (spread)", lambda m: m["loaded_background_decisions_per_s"], 0)
    line("  router CPU (% of a core)", lambda m: m["loaded_cpu_fraction_of_a_core"] * 100)
    line("  Route c=1 p50 (us)", lambda m: m["loaded_route_latency_c1"]["p50_us"], 0)
    line("  Route c=1 p99 (us)", lambda m: m["loaded_route_latency_c1"]["p99_us"], 0)
    line("  Route c=1 max (us)", lambda m: max(m["loaded_route_latency_c1"].get("max_us", 0), 0), 0)
    print()
    costs = report["redis_command_costs"]
    print(
        "redis-server time per command (INFO commandstats): "
        + ", ".join(
            f"{name.upper()} {costs[name]['usec_per_call']:.1f} us"
            for name in ("xadd", "evalsha", "hgetall", "smembers")
            if name in costs
        )
        + " (EVALSHA = the trial flush script)"
    )
    for name, rpd in report["redis_per_decision"].items():
        ops = ", ".join(
            f"{k.removesuffix('_per_decision').upper()} {v:.4f}"
            for k, v in sorted(rpd.items())
            if k.endswith("_per_decision") and k != "redis_cpu_us_per_decision"
        )
        print(
            f"Redis per decision, {name} at saturation: {ops}; redis-server CPU "
            f"{rpd['redis_cpu_us_per_decision']:.1f} us; refresh HGETALL {rpd['hgetall_per_s']:.1f}/s"
        )


if __name__ == "__main__":
    raise SystemExit(main())
