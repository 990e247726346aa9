"""ReportOutcomes sustained into Redis, against the same Redis writes issued straight from redis-py.

    .venv/bin/python benchmarks/bench_outcomes.py [--rounds 3] [--per-round 30000] [--streams 4]
                                                  [--batch 500] [--output PATH]

Setup: a private redis-server, a 10-arm Bernoulli experiment (no rules: every decision is a counted,
SAMPLED one), one real `mabrouter serve` (default settings). First `rounds x per-round` decisions are
routed (RouteBatch of 100 through a grpc.aio client) and their ids collected. Then, alternating:

  router    ReportOutcomes calls of `--batch` outcomes (reward 1 with probability 0.3, else 0) from one
            grpc.aio channel with `--streams` calls in flight; every result must be code 0, not a
            duplicate. The clock runs from the first send to the last reply: "acknowledged" means
            applied in Redis (the Lua script ran), so this is outcomes applied per second.
  baseline  the same Redis work without the router: mabrouter's own RouterStore.record_outcomes (one
            EVALSHA of the RECORD_OUTCOMES script per 250 outcomes of an experiment, which also XADDs
            each applied outcome to the outcomes stream; `--batch` per call), `--streams` calls
            in flight on one redis.asyncio client, fresh nonces. No gRPC, no id verification.

After every round the sum of the `<arm>:count` fields in Redis must have grown by exactly the number
of outcomes sent (checked and reported). Also reported per outcome: the router's CPU time (/proc), the
benchmark client's CPU time, redis-server's CPU time (INFO cpu) and Redis commands (INFO commandstats)
-- the inputs for docs/scaling.md -- and, last, redis-server's cost of one trial-flush script call
(APPLY_TRIALS with the 31 fields of a 10-arm experiment). Not a test: nothing passes or fails.
Target: 20,000 outcomes/s. Writes benchmarks/results/outcomes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    RouterServer,
    apply_experiments,
    command_stats,
    cpu_seconds,
    experiment_doc,
    machine_info,
    median,
    redis_command_costs,
    redis_cpu,
    running_redis,
    write_report,
)

from mabrouter.client import CHANNEL_OPTIONS
from mabrouter.store import keys
from mabrouter.store.records import OutcomeWrite
from mabrouter.store.router_store import RouterStore
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

EXPERIMENT = "outcomes"
ROUTE_BATCH = 100
TTL_SECONDS = 86_400
LOG_MAXLEN = 1_000_000  # Settings.exposure_log_maxlen default
TARGET_PER_S = 20_000
RESULTS = RESULTS_DIR / "outcomes.json"


def count_total(client: redis.Redis) -> float:
    fields: dict[str, str] = client.hgetall(keys.stats(EXPERIMENT))  # type: ignore[assignment]
    return sum(float(v) for k, v in fields.items() if k.endswith(":count") and not k.startswith("@"))


async def route_ids(address: str, count: int, streams: int) -> list[str]:
    """Route `count` decisions (RouteBatch of 100, `streams` calls in flight); return their ids."""
    ids: list[str] = []
    calls = (count + ROUTE_BATCH - 1) // ROUTE_BATCH
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        queue = list(range(calls))

        async def worker() -> None:
            while queue:
                call = queue.pop()
                request = pb.RouteBatchRequest(
                    requests=[
                        pb.RouteRequest(experiment=EXPERIMENT, unit_id=f"u{call}-{i}")
                        for i in range(ROUTE_BATCH)
                    ]
                )
                reply = await stub.RouteBatch(request, timeout=30)
                for result in reply.results:
                    if result.code != 0 or result.response.reason != pb.SAMPLED:
                        raise RuntimeError(f"unexpected Route result: {result}")
                    ids.append(result.response.decision_id)

        await asyncio.gather(*(worker() for _ in range(streams)))
    return ids[:count]


async def report_via_router(
    address: str, ids: list[str], batch: int, streams: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    chunks = [
        pb.ReportOutcomesRequest(
            outcomes=[
                pb.OutcomeRequest(decision_id=d, reward=1.0 if rng.random() < 0.3 else 0.0)
                for d in ids[i : i + batch]
            ]
        )
        for i in range(0, len(ids), batch)
    ]
    problems: list[str] = []
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        await stub.ReportOutcomes(pb.ReportOutcomesRequest(), timeout=10)  # connect before the clock
        pending = list(reversed(chunks))

        async def worker() -> None:
            while pending:
                request = pending.pop()
                reply = await stub.ReportOutcomes(request, timeout=60)
                problems.extend(
                    f"{result.code} {result.message} duplicate={result.duplicate}"
                    for result in reply.results
                    if result.code != 0 or result.duplicate
                )

        cpu0 = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu0
    return {
        "elapsed_s": elapsed,
        "client_cpu_s": client_cpu,
        "problems": problems[:5],
        "refused": len(problems),
    }


async def report_via_redis(url: str, count: int, batch: int, streams: int, seed: int) -> dict[str, Any]:
    """The router's Redis writes for `count` outcomes, issued from here through RouterStore."""
    rng = random.Random(seed)
    arms = [f"arm-{i}" for i in range(10)]
    prefix = secrets.token_hex(6)
    writes = [
        OutcomeWrite(
            experiment=EXPERIMENT,
            arm=arms[i % len(arms)],
            nonce=f"{prefix}{i:x}",
            reward=1.0 if rng.random() < 0.3 else 0.0,
            counted=True,
            ttl_seconds=TTL_SECONDS,
        )
        for i in range(count)
    ]
    chunks = [writes[i : i + batch] for i in range(0, count, batch)]
    store = RouterStore.from_url(url)
    problems = 0
    try:
        await store.ping()
        pending = list(reversed(chunks))

        async def worker() -> None:
            nonlocal problems
            while pending:
                chunk = pending.pop()
                # What the router sends: RECORD_OUTCOMES, which also appends each applied outcome to
                # the outcomes log.
                applied = await store.record_outcomes(chunk, LOG_MAXLEN, int(time.time() * 1000))
                problems += applied.count(False)

        cpu0 = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu0
    finally:
        await store.close()
    return {"elapsed_s": elapsed, "client_cpu_s": client_cpu, "refused": problems}


async def trial_flush_cost(
    url: str, client: redis.Redis, runs: int = 5, calls: int = 300, warmup: int = 1000
) -> dict[str, Any]:
    """redis-server's cost of one trial flush of a 10-arm experiment, as a router sends it each flush
    interval: one EVALSHA of APPLY_TRIALS adding trials, sampled and expected counts for every arm
    and the bandit split (31 fields) to the experiment's stats hash (61 fields after the rounds). One
    call per pipeline, sequential, after `warmup` calls (on the reference machine the first ~1,000
    calls cost several times more than later ones). `runs` runs of `calls` calls; medians."""
    fields: dict[str, float] = {"_split:bandit": 20.0}
    for i in range(10):
        fields.update({f"arm-{i}:trials": 2.0, f"arm-{i}:sampled": 2.0, f"arm-{i}:expected": 2.0})
    store = RouterStore.from_url(url)
    cpu_per_call: list[float] = []
    usec_per_call: list[float] = []
    try:
        for n in range(warmup):
            await store.apply_increments(f"warm-up-{n}", {EXPERIMENT: fields})
        for run in range(runs):
            client.config_resetstat()
            cpu0 = redis_cpu(client)
            for n in range(calls):
                await store.apply_increments(f"cost-{run}-{n}", {EXPERIMENT: fields})
            cpu_per_call.append((redis_cpu(client) - cpu0) / calls * 1e6)
            usec_per_call.append(redis_command_costs(client)["evalsha"]["usec_per_call"])
    finally:
        await store.close()
    return {
        "runs": runs,
        "calls_per_run": calls,
        "warmup_calls": warmup,
        "fields_per_call": len(fields),
        "hash_fields": int(client.hlen(keys.stats(EXPERIMENT))),
        "redis_cpu_us_per_call": median(cpu_per_call),
        "redis_cpu_us_per_call_runs": cpu_per_call,
        "commandstats_usec_per_evalsha": median(usec_per_call),
        "commandstats_usec_per_evalsha_runs": usec_per_call,
        "note": "INFO cpu includes the SCRIPT EXISTS that redis-py sends before every pipeline with scripts",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=30_000, help="outcomes per round")
    parser.add_argument("--batch", type=int, default=500, help="outcomes per ReportOutcomes call / pipeline")
    parser.add_argument("--streams", type=int, default=4, help="calls (or pipelines) in flight")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    info = machine_info()
    rounds: dict[str, list[dict[str, Any]]] = {"router": [], "baseline": []}

    with running_redis() as redis_server:
        client = redis_server.client()
        apply_experiments(redis_server.url, [experiment_doc(EXPERIMENT, rules=False)])
        router = RouterServer(redis_server.url)
        try:
            router.wait_serving()
            pid = router.worker_pids()[0]
            total = args.rounds * args.per_round
            print(f"routing {total:,} decisions to collect their ids...", flush=True)
            t0 = time.perf_counter()
            ids = asyncio.run(route_ids(router.address, total, args.streams))
            route_s = time.perf_counter() - t0
            print(
                f"  {len(ids):,} ids in {route_s:.1f} s "
                f"({len(ids) / route_s:,.0f} decisions/s via RouteBatch)"
            )
            time.sleep(0.5)  # let the router flush its trial counts and exposure log
            for r in range(args.rounds):
                for kind in ("router", "baseline"):
                    before = count_total(client)
                    ops0, rcpu0, pcpu0 = command_stats(client), redis_cpu(client), cpu_seconds(pid)
                    if kind == "router":
                        chunk = ids[r * args.per_round : (r + 1) * args.per_round]
                        result = asyncio.run(
                            report_via_router(router.address, chunk, args.batch, args.streams, r)
                        )
                        time.sleep(0.4)  # the router's exposure-log flush (outcome entries) runs every 100 ms
                    else:
                        result = asyncio.run(
                            report_via_redis(redis_server.url, args.per_round, args.batch, args.streams, r)
                        )
                    after = count_total(client)
                    ops = {
                        k: (v - ops0.get(k, 0)) / args.per_round
                        for k, v in command_stats(client).items()
                        if v - ops0.get(k, 0) > 0 and k not in {"info", "hgetall", "smembers"}
                    }
                    result.update(
                        sent=args.per_round,
                        counts_added=after - before,
                        verified=after - before == args.per_round and result["refused"] == 0,
                        outcomes_per_s=args.per_round / result["elapsed_s"],
                        redis_commands_per_outcome=ops,
                        redis_cpu_us_per_outcome=(redis_cpu(client) - rcpu0) / args.per_round * 1e6,
                        client_cpu_us_per_outcome=result["client_cpu_s"] / args.per_round * 1e6,
                        router_cpu_us_per_outcome=(cpu_seconds(pid) - pcpu0) / args.per_round * 1e6,
                    )
                    rounds[kind].append(result)
                    print(
                        f"  round {r + 1} {kind:<8} {result['outcomes_per_s']:>9,.0f} outcomes/s, "
                        f"Redis counts +{result['counts_added']:,.0f} of {args.per_round:,} "
                        f"({'ok' if result['verified'] else 'MISMATCH'})",
                        flush=True,
                    )
            costs = redis_command_costs(client)  # EVALSHA: RECORD_OUTCOMES (and the rare trial flush)
        finally:
            router.stop()
        print("timing the trial-flush script (APPLY_TRIALS) on its own...", flush=True)
        flush_cost = asyncio.run(trial_flush_cost(redis_server.url, client))

    def med(kind: str, key: str) -> float:
        return median(r[key] for r in rounds[kind])

    ratios = [
        r["outcomes_per_s"] / b["outcomes_per_s"]
        for r, b in zip(rounds["router"], rounds["baseline"], strict=True)
    ]
    summary: dict[str, Any] = {
        "outcomes_per_s": {kind: med(kind, "outcomes_per_s") for kind in rounds},
        "router_over_baseline": median(ratios),
        "router_over_baseline_per_round": ratios,
        "all_verified": all(r["verified"] for kind in rounds for r in rounds[kind]),
        "redis_cpu_us_per_outcome": {kind: med(kind, "redis_cpu_us_per_outcome") for kind in rounds},
        "client_cpu_us_per_outcome": {kind: med(kind, "client_cpu_us_per_outcome") for kind in rounds},
        "router_cpu_us_per_outcome": med("router", "router_cpu_us_per_outcome"),
        "redis_commands_per_outcome": {
            kind: {
                k: median(r["redis_commands_per_outcome"].get(k, 0.0) for r in rounds[kind])
                for k in rounds[kind][0]["redis_commands_per_outcome"]
            }
            for kind in rounds
        },
        "target_per_s": TARGET_PER_S,
    }
    report = {
        "benchmark": "outcomes",
        "machine": info,
        "config": {
            "experiment": EXPERIMENT,
            "arms": 10,
            "rounds": args.rounds,
            "per_round": args.per_round,
            "batch": args.batch,
            "streams": args.streams,
            "decisions_routed_per_s": len(ids) / route_s,
        },
        "rounds": rounds,
        "redis_command_costs": costs,
        "trial_flush_cost": flush_cost,
        "summary": summary,
        "elapsed_s": time.perf_counter() - started,
    }
    ops = summary["outcomes_per_s"]
    print()
    print(
        f"ReportOutcomes: batches of {args.batch}, {args.streams} in flight, medians of {args.rounds} "
        f"alternating rounds of {args.per_round:,} "
        f"({info['cpu_count']} CPUs, load avg {info['loadavg_1m']:.1f})"
    )
    print(f"{'measure':<40} {'baseline':>12} {'router':>12} {'router/baseline':>16}")
    print(
        f"{'outcomes applied per second':<40} {ops['baseline']:>12,.0f} {ops['router']:>12,.0f} "
        f"{summary['router_over_baseline']:>16.2f}"
    )
    cc, rc = summary["client_cpu_us_per_outcome"], summary["redis_cpu_us_per_outcome"]
    print(f"{'client CPU us per outcome':<40} {cc['baseline']:>12.1f} {cc['router']:>12.1f}")
    print(f"{'router CPU us per outcome':<40} {'-':>12} {summary['router_cpu_us_per_outcome']:>12.1f}")
    print(f"{'redis-server CPU us per outcome':<40} {rc['baseline']:>12.1f} {rc['router']:>12.1f}")
    for kind in ("baseline", "router"):
        cmds = summary["redis_commands_per_outcome"][kind]
        print(
            f"Redis commands per outcome, {kind}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(cmds.items()))
        )
    print(
        "redis-server time per command (INFO commandstats): "
        + ", ".join(
            f"{n.upper()} {costs[n]['usec_per_call']:.1f} us" for n in ("evalsha", "xadd") if n in costs
        )
        + " (EVALSHA = RECORD_OUTCOMES, up to 250 outcomes per call, XADDs inside)"
    )
    print(
        f"trial flush (APPLY_TRIALS, {flush_cost['fields_per_call']} fields into a hash of "
        f"{flush_cost['hash_fields']}): redis-server CPU {flush_cost['redis_cpu_us_per_call']:.1f} us "
        f"per call, "
        f"commandstats {flush_cost['commandstats_usec_per_evalsha']:.1f} us per EVALSHA (medians of "
        f"{flush_cost['runs']} x {flush_cost['calls_per_run']} calls)"
    )
    met = ops["router"] >= TARGET_PER_S
    print(
        f"router {ops['router']:,.0f} outcomes/s: target >= {TARGET_PER_S:,}/s {'met' if met else 'MISSED'}; "
        f"Redis counts {'verified' if summary['all_verified'] else 'MISMATCH'} in every round"
    )
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
