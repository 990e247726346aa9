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
import json
import sys
import tempfile
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
    cpu_seconds,
    experiment_doc,
    grpc_frame,
    machine_info,
    median,
    rss_kib,
    run_h2load,
    running_redis,
    unit_in_rollout,
)

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

EXPERIMENT = "ranker"
ROUTE = "/mabrouter.v1.Router/Route"
ROUTE_BATCH = "/mabrouter.v1.Router/RouteBatch"
BATCH = 100
SWEEP = ((1, 32), (4, 16), (8, 32))  # (connections, streams per connection)
WORKERS_SETTING = (16, 8)  # enough connections for SO_REUSEPORT to spread them over 2 processes
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


def command_stats(client: redis.Redis) -> dict[str, int]:
    info: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


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
    log0 = int(client.xlen(f"mabrouter:{{{EXPERIMENT}}}:decisions"))  # type: ignore[arg-type]
    n_route, n_batch = 4000, 40
    single = run_h2load(router.address, ROUTE, frames["route"], clients=4, streams=8, requests=n_route)
    batched = run_h2load(router.address, ROUTE_BATCH, frames["batch"], clients=2, streams=2, requests=n_batch)
    want = trials0 + single.status_2xx + batched.status_2xx * BATCH
    trials1 = settle(client, EXPERIMENT, want)
    time.sleep(0.3)
    log1 = int(client.xlen(f"mabrouter:{{{EXPERIMENT}}}:decisions"))  # type: ignore[arg-type]
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


def memory_phase(redis_url: str, client: redis.Redis) -> dict[str, Any]:
    """RSS, idle CPU and Redis traffic of one fresh router worker, with 1 and with 100 experiments."""
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
            with grpc.insecure_channel(router.address) as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                for name in names:  # warm-up: every experiment decides, flushes and is rebuilt
                    for n in range(20):
                        stub.Route(
                            pb.RouteRequest(
                                experiment=name, unit_id=f"warm-{n}", attributes=route_request("x").attributes
                            )
                        )
            time.sleep(1.0)  # a few refreshes: snapshots rebuilt from the new counts
            cpu0, ops0, t0 = cpu_seconds(pid), command_stats(client), time.monotonic()
            time.sleep(3.0)
            idle_s = time.monotonic() - t0
            idle_cpu = cpu_seconds(pid) - cpu0
            ops = delta(command_stats(client), ops0)
            ops.pop("info", None)
            out[f"{count}_experiments"] = {
                "experiments": count,
                "arms_each": 10,
                "rss_after_start_kib": rss_start,
                "rss_after_warmup_kib": rss_kib(pid),
                "idle_cpu_fraction_of_a_core": idle_cpu / idle_s,
                "idle_redis_commands_per_s": {k: v / idle_s for k, v in ops.items()},
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
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per h2load run")
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
            "seconds_per_run": seconds,
            "warmup_seconds_per_run": 0.5,
        }

        router, floor = RouterServer(redis_server.url), FloorServer()
        router.wait_serving()
        floor.wait_serving()
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
            print("sweeping h2load settings...", flush=True)
            report["sweep"] = sweep(pair, frames["route"])
            best = {name: tuple(found["best"]) for name, found in report["sweep"].items()}

            print("saturation throughput (alternating)...", flush=True)

            def saturate(name: str, server: Any) -> dict[str, Any]:
                result = run(server, ROUTE, frames["route"], best[name], seconds)
                return {**result.summary(), "cpu_us_per_request": per_request_cpu_us(result, seconds, 0.5)}

            ops0, rcpu0, trials0 = (
                command_stats(client),
                redis_cpu(client),
                stats_total(client, EXPERIMENT, ":trials"),
            )
            saturation = alternate(pair, rounds, saturate)
            trials1 = settle(client, EXPERIMENT, float("inf"), timeout=0.6)
            report["redis_per_decision"] = {
                "decisions": trials1 - trials0,
                "commands": {
                    k: v / max(trials1 - trials0, 1)
                    for k, v in delta(command_stats(client), ops0).items()
                    if k != "info"
                },
                "redis_cpu_us_per_decision": (redis_cpu(client) - rcpu0) / max(trials1 - trials0, 1) * 1e6,
                "note": "measured over the saturation rounds (floor rounds add no Redis traffic)",
            }
            report["saturation"] = saturation

            print("latency at concurrency 1 (alternating)...", flush=True)

            def latency(name: str, server: Any) -> dict[str, Any]:
                return run(server, ROUTE, frames["route"], (1, 1), seconds, log_latency=True).summary()

            report["latency_c1"] = alternate(pair, rounds, latency)

            print("RouteBatch of 100 (alternating)...", flush=True)

            def batch(name: str, server: Any) -> dict[str, Any]:
                result = run(server, ROUTE_BATCH, frames["batch"], (2, 4), seconds)
                return {
                    **result.summary(),
                    "decisions_per_s": result.requests_per_s * BATCH,
                    "cpu_us_per_decision": per_request_cpu_us(result, seconds, 0.5, BATCH),
                }

            report["route_batch"] = alternate(pair, rounds, batch)
        finally:
            router.stop()
            floor.stop()

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
                per_process = [cpu_seconds(pid) for pid in server.worker_pids()]
                return {
                    **result.summary(),
                    "processes": len(server.worker_pids()),
                    "h2load_cores": result.h2load_cpu_s / result.elapsed_s,
                    "server_cores": result.server_cpu_s / result.elapsed_s,
                    "process_cpu_total_s": per_process,
                }

            report["workers"] = alternate(quad, rounds, workers)
        finally:
            for server in quad.values():
                server.stop()

        print("memory: 1 experiment, then 100 x 10 arms...", flush=True)
        report["memory"] = memory_phase(redis_server.url, client)

    # ---------------------------------------------------------------------------------------- summary
    def med(phase: dict[str, list[dict[str, Any]]], name: str, key: str) -> float:
        return median(r[key] for r in phase[name])

    sat, lat, bat, wrk = report["saturation"], report["latency_c1"], report["route_batch"], report["workers"]
    ratios_per_round = [
        r["requests_per_s"] / f["requests_per_s"] for r, f in zip(sat["router"], sat["floor"], strict=True)
    ]
    p50_diffs = [r["p50_us"] - f["p50_us"] for r, f in zip(lat["router"], lat["floor"], strict=True)]
    summary = {
        "route_rps": {
            "floor": med(sat, "floor", "requests_per_s"),
            "router": med(sat, "router", "requests_per_s"),
        },
        "route_throughput_ratio": median(ratios_per_round),
        "route_throughput_ratio_per_round": ratios_per_round,
        "route_cpu_us_per_request": {
            "floor": med(sat, "floor", "cpu_us_per_request"),
            "router": med(sat, "router", "cpu_us_per_request"),
        },
        "latency_c1_us": {
            name: {q: med(lat, name, f"{q}_us") for q in ("p50", "p90", "p99")}
            for name in ("floor", "router")
        },
        "route_p50_overhead_us": median(p50_diffs),
        "route_p50_overhead_us_per_round": p50_diffs,
        "route_p99_overhead_us": median(
            r["p99_us"] - f["p99_us"] for r, f in zip(lat["router"], lat["floor"], strict=True)
        ),
        "batch_decisions_per_s": {
            "floor": med(bat, "floor", "decisions_per_s"),
            "router": med(bat, "router", "decisions_per_s"),
        },
        "batch_cpu_us_per_decision": {
            "floor": med(bat, "floor", "cpu_us_per_decision"),
            "router": med(bat, "router", "cpu_us_per_decision"),
        },
        "workers_rps": {name: med(wrk, name, "requests_per_s") for name in wrk},
        "h2load_cores": {name: med(wrk, name, "h2load_cores") for name in wrk},
        "server_cores": {name: med(wrk, name, "server_cores") for name in wrk},
    }
    summary["router_worker_scaling"] = (
        summary["workers_rps"]["router x2"] / summary["workers_rps"]["router x1"]
    )
    summary["floor_process_scaling"] = summary["workers_rps"]["floor x2"] / summary["workers_rps"]["floor x1"]
    report["summary"] = summary
    report["elapsed_s"] = time.perf_counter() - started

    print()
    print(
        f"gRPC benchmark: router vs floor, h2load, medians of {rounds} alternating rounds of {seconds:g} s "
        f"({info['cpu_count']} CPUs, Python {info['python']}, grpcio {info['grpcio']}, load avg {info['loadavg_1m']:.1f})"
    )
    print(f"{'measure':<44} {'floor':>12} {'router':>12} {'router/floor':>13}  target")
    rps = summary["route_rps"]
    print(
        f"{'Route req/s at saturation':<44} {fmt(rps['floor']):>12} {fmt(rps['router']):>12} "
        f"{summary['route_throughput_ratio']:>13.2f}  >= 0.85: {'met' if summary['route_throughput_ratio'] >= 0.85 else 'MISSED'}"
    )
    print(f"{'  h2load -c/-m (best of the sweep)':<44} {best['floor']!s:>12} {best['router']!s:>12}")
    cpu = summary["route_cpu_us_per_request"]
    print(
        f"{'  server CPU us per request':<44} {cpu['floor']:>12.0f} {cpu['router']:>12.0f} {cpu['router'] / cpu['floor']:>13.2f}"
    )
    lc = summary["latency_c1_us"]
    for q in ("p50", "p90", "p99"):
        target = ""
        if q == "p50":
            ok = summary["route_p50_overhead_us"] <= 40
            target = f"router - floor {summary['route_p50_overhead_us']:+.0f} us; <= 40 us: {'met' if ok else 'MISSED'}"
        print(
            f"{'Route latency c=1 ' + q + ' (us)':<44} {lc['floor'][q]:>12.0f} {lc['router'][q]:>12.0f} {lc['router'][q] / lc['floor'][q]:>13.2f}  {target}"
        )
    bd = summary["batch_decisions_per_s"]
    print(
        f"{'RouteBatch(100) decisions/s':<44} {fmt(bd['floor']):>12} {fmt(bd['router']):>12} "
        f"{bd['router'] / bd['floor']:>13.2f}  >= 50,000/s: {'met' if bd['router'] >= 50_000 else 'MISSED'}"
    )
    bc = summary["batch_cpu_us_per_decision"]
    print(
        f"{'  server CPU us per decision':<44} {bc['floor']:>12.1f} {bc['router']:>12.1f} {bc['router'] / bc['floor']:>13.2f}"
    )
    w = summary["workers_rps"]
    print(f"workers (h2load -c {WORKERS_SETTING[0]} -m {WORKERS_SETTING[1]}, one h2load thread):")
    print(f"{'  config':<44} {'req/s':>12} {'server cores':>12} {'h2load cores':>13}")
    for name in ("floor x1", "floor x2", "router x1", "router x2"):
        print(
            f"{'  ' + name:<44} {fmt(w[name]):>12} {summary['server_cores'][name]:>12.2f} {summary['h2load_cores'][name]:>13.2f}"
        )
    print(
        f"  scaling 2 vs 1: router {summary['router_worker_scaling']:.2f}x, floor {summary['floor_process_scaling']:.2f}x "
        "(2 cores shared with h2load and redis-server)"
    )
    mem = report["memory"]
    for m in mem.values():
        print(
            f"memory, {m['experiments']:>3} experiment(s) x 10 arms: RSS {m['rss_after_warmup_kib'] / 1024:.1f} MiB after warm-up "
            f"({m['rss_after_start_kib'] / 1024:.1f} at start); idle CPU {m['idle_cpu_fraction_of_a_core'] * 100:.1f} % of a core; "
            f"idle Redis commands/s {sum(m['idle_redis_commands_per_s'].values()):.0f}"
        )
    rpd = report["redis_per_decision"]
    print(
        "Redis per Route decision at saturation: "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(rpd["commands"].items()))
        + f"; redis-server CPU {rpd['redis_cpu_us_per_decision']:.1f} us"
    )
    print(f"elapsed {report['elapsed_s']:.0f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=list) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
