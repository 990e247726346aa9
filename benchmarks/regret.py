"""Decision quality under load: cumulative regret of the real router against MABWiser's Thompson sampling.

    .venv/bin/python benchmarks/regret.py [--seeds 8] [--decisions 20000] [--rate 2000] [--output PATH]

Needs `mabwiser` (benchmark only, not a runtime dependency: the `dev` and `bench` extras install it).

Environment: 5 Bernoulli arms with true rates 4 %, 5 %, 6 %, 7 %, 8 % (a CTR-like gap). A run is T
decisions; its cumulative expected regret is the sum over decisions of (best rate - rate of the chosen
arm), which does not depend on the reward draws' luck. Each seed drives every policy below:

  router     the real `mabrouter serve` (default refresh 200 ms, trial counts flushed every 100 ms),
             a fresh 5-arm experiment per seed (Beta(1, 1) priors). Paced open loop at `--rate`
             decisions/s: every 10 ms one RouteBatch of rate/100 requests (each an independent Route
             decision from the router's snapshot), the rewards drawn at once from the environment
             and reported with one ReportOutcomes call right after the reply (no added delay; an
             UNAVAILABLE reply is retried, which is safe). At most 20 ticks are in flight: a router
             that falls behind slows the pace (the achieved rate is reported). The router sees its
             own decisions and outcomes only through Redis and its 200 ms refresh.
  MABWiser   `MAB(arms, LearningPolicy.ThompsonSampling(), seed=seed)`, `partial_fit` with the one
             new sample after EVERY decision (the textbook, fully sequential policy). Offline: its
             per-decision cost (hundreds of us) could not keep up with 2k decisions/s.
  numpy TS   the same sequential Thompson sampling in numpy (a check on the MABWiser numbers).
  lagged TS  numpy Thompson sampling whose posterior is refreshed only every `rate x 0.2` decisions
             (the router's 200 ms refresh at that rate, with no other delay): the regret that the
             snapshot design costs by itself, whatever the implementation.

Reported: regret per run, medians over seeds, and router / MABWiser (target <= 1.15). Uniform random
play would have regret (best - mean) x T. Not a test: nothing passes or fails. The router's own RNG
is not seeded, so its runs vary beyond the environment's seed. Writes benchmarks/results/regret.json.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    RouterServer,
    apply_experiments,
    machine_info,
    median,
    running_redis,
    write_report,
)

from mabrouter.client import CHANNEL_OPTIONS
from mabrouter.store import keys
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

RATES = (0.04, 0.05, 0.06, 0.07, 0.08)
ARMS = [f"arm-{i}" for i in range(len(RATES))]
TICK_S = 0.01
TARGET_RATIO = 1.15
MAX_TICKS_IN_FLIGHT = 20  # 200 ms of decisions
RETRIES = 3
RESULTS = RESULTS_DIR / "regret.json"


def regret_of(choices: np.ndarray) -> float:
    rates = np.asarray(RATES)
    return float(np.sum(rates.max() - rates[choices]))


def best_share_last_fifth(choices: np.ndarray) -> float:
    tail = choices[len(choices) * 4 // 5 :]
    return float(np.mean(tail == int(np.argmax(RATES))))


# ------------------------------------------------------------------------------------------------ router


async def router_run(address: str, experiment: str, seed: int, decisions: int, rate: float) -> dict[str, Any]:
    env = np.random.default_rng(seed)
    per_tick = max(1, round(rate * TICK_S))
    ticks = (decisions + per_tick - 1) // per_tick
    choices: list[int] = []
    rewards_sent = 0
    problems: list[str] = []
    late_ticks = 0
    retried: list[str] = []
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        arm_index = {name: i for i, name in enumerate(ARMS)}

        async def tick(number: int) -> None:
            nonlocal rewards_sent
            size = min(per_tick, decisions - number * per_tick)
            request = pb.RouteBatchRequest(
                requests=[
                    pb.RouteRequest(experiment=experiment, unit_id=f"s{seed}-u{number}-{i}")
                    for i in range(size)
                ]
            )
            reply = await stub.RouteBatch(request, timeout=10)
            outcomes = []
            for result in reply.results:
                if result.code != 0 or result.response.reason != pb.SAMPLED:
                    problems.append(f"route {result.code} {result.message} {result.response.reason}")
                    continue
                arm = arm_index[result.response.arm]
                choices.append(arm)
                reward = 1.0 if env.random() < RATES[arm] else 0.0
                outcomes.append(pb.OutcomeRequest(decision_id=result.response.decision_id, reward=reward))
            request_outcomes = pb.ReportOutcomesRequest(outcomes=outcomes)
            for attempt in range(RETRIES + 1):  # retries are safe: outcomes are deduplicated by id
                try:
                    answer = await stub.ReportOutcomes(request_outcomes, timeout=10)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == RETRIES:
                        raise
                    retried.append(exc.details() or "")
                    await asyncio.sleep(0.05)
            problems.extend(
                f"outcome {outcome.code} {outcome.message}" for outcome in answer.results if outcome.code != 0
            )
            rewards_sent += len(outcomes)

        loop = asyncio.get_running_loop()
        tasks = []
        in_flight = asyncio.Semaphore(MAX_TICKS_IN_FLIGHT)

        async def bounded(number: int) -> None:
            try:
                await tick(number)
            finally:
                in_flight.release()

        started = loop.time()
        for number in range(ticks):
            due = started + number * TICK_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -TICK_S:
                late_ticks += 1
            await in_flight.acquire()  # a router that falls behind slows the pace instead of piling up
            tasks.append(asyncio.create_task(bounded(number)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - started
    array = np.asarray(choices, dtype=np.intp)
    return {
        "regret": regret_of(array),
        "decisions": len(choices),
        "best_arm_share_last_fifth": best_share_last_fifth(array),
        "elapsed_s": elapsed,
        "achieved_decisions_per_s": len(choices) / elapsed,
        "late_ticks": late_ticks,
        "outcomes_sent": rewards_sent,
        "problems": problems[:5],
        "problem_count": len(problems),
        "outcome_calls_retried": len(retried),
        "retry_reasons": sorted(set(retried))[:3],
    }


def stats_sum(client: redis.Redis, experiment: str, suffix: str) -> float:
    fields: dict[str, str] = client.hgetall(keys.stats(experiment))  # type: ignore[assignment]
    return sum(float(v) for k, v in fields.items() if k.endswith(suffix) and not k.startswith("@"))


def wait_routable(address: str, experiment: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        while True:
            try:
                stub.Route(pb.RouteRequest(experiment=experiment, unit_id="probe"), timeout=1)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
            else:
                return
            time.sleep(0.02)


# ------------------------------------------------------------------------------------------ references


def mabwiser_run(seed: int, decisions: int) -> dict[str, Any]:
    from mabwiser.mab import MAB, LearningPolicy  # noqa: PLC0415 - optional, benchmark-only dependency

    env = np.random.default_rng(seed)
    mab = MAB(list(range(len(RATES))), LearningPolicy.ThompsonSampling(), seed=seed)
    mab.fit(decisions=[], rewards=[])
    choices = np.empty(decisions, dtype=np.intp)
    started = time.perf_counter()
    for t in range(decisions):
        arm = int(mab.predict())
        choices[t] = arm
        mab.partial_fit([arm], [1 if env.random() < RATES[arm] else 0])
    elapsed = time.perf_counter() - started
    return {
        "regret": regret_of(choices),
        "best_arm_share_last_fifth": best_share_last_fifth(choices),
        "us_per_decision": elapsed / decisions * 1e6,
    }


def numpy_ts_run(seed: int, decisions: int, refresh_every: int = 1) -> dict[str, Any]:
    """Beta(1, 1) Thompson sampling; the sampled posterior is refreshed every `refresh_every` decisions."""
    env = np.random.default_rng(seed)
    rng = np.random.default_rng(seed + 1_000_003)
    rates = np.asarray(RATES)
    successes = np.zeros(len(RATES))
    failures = np.zeros(len(RATES))
    alpha, beta = successes + 1, failures + 1
    choices = np.empty(decisions, dtype=np.intp)
    for t in range(decisions):
        if t % refresh_every == 0:
            alpha, beta = successes + 1, failures + 1
        arm = int(np.argmax(rng.beta(alpha, beta)))
        choices[t] = arm
        if env.random() < rates[arm]:
            successes[arm] += 1
        else:
            failures[arm] += 1
    return {"regret": regret_of(choices), "best_arm_share_last_fifth": best_share_last_fifth(choices)}


def bootstrap_ratio(a: list[float], b: list[float], resamples: int = 10_000) -> list[float]:
    """5th and 95th percentiles of median(a*) / median(b*) over independent bootstrap resamples."""
    rng = np.random.default_rng(0)
    x, y = np.asarray(a), np.asarray(b)
    ra = np.median(rng.choice(x, size=(resamples, len(x))), axis=1)
    rb = np.median(rng.choice(y, size=(resamples, len(y))), axis=1)
    low, high = np.percentile(ra / rb, [5, 95])
    return [float(low), float(high)]


# ------------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=8, help="runs per policy (seeds 1..N)")
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions per run (T)")
    parser.add_argument("--rate", type=float, default=2_000.0, help="router decisions per second (paced)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    info = machine_info()
    seeds = list(range(1, args.seeds + 1))
    lag = max(1, round(args.rate * 0.2))
    runs: dict[str, list[dict[str, Any]]] = {"router": [], "mabwiser": [], "numpy_ts": [], "lagged_ts": []}

    with running_redis() as redis_server:
        client = redis_server.client()
        router = RouterServer(redis_server.url)
        try:
            router.wait_serving()
            for seed in seeds:
                experiment = f"regret-{seed}-{secrets.token_hex(3)}"
                apply_experiments(
                    redis_server.url,
                    [
                        {
                            "name": experiment,
                            "reward": "bernoulli",
                            "control": ARMS[0],
                            "arms": [{"name": arm} for arm in ARMS],
                        }
                    ],
                )
                wait_routable(router.address, experiment)
                time.sleep(0.3)  # the probe's trial reaches Redis; the run starts from a settled router
                base_trials = stats_sum(client, experiment, ":trials")
                result = asyncio.run(router_run(router.address, experiment, seed, args.decisions, args.rate))
                time.sleep(0.4)  # last trial flush
                result["redis_trials"] = stats_sum(client, experiment, ":trials") - base_trials
                result["redis_outcome_counts"] = stats_sum(client, experiment, ":count")
                result["seed"] = seed
                runs["router"].append(result)
                print(
                    f"seed {seed}: router regret {result['regret']:7.1f} at "
                    f"{result['achieved_decisions_per_s']:,.0f} decisions/s "
                    f"(Redis: {result['redis_trials']:,.0f} trials, "
                    f"{result['redis_outcome_counts']:,.0f} outcomes; "
                    f"{result['problem_count']} problems, "
                    f"{result['outcome_calls_retried']} outcome calls retried)",
                    flush=True,
                )
        finally:
            router.stop()

    for seed in seeds:
        for name, result in (
            ("mabwiser", mabwiser_run(seed, args.decisions)),
            ("numpy_ts", numpy_ts_run(seed, args.decisions)),
            ("lagged_ts", numpy_ts_run(seed, args.decisions, lag)),
        ):
            result["seed"] = seed
            runs[name].append(result)
        print(
            f"seed {seed}: MABWiser {runs['mabwiser'][-1]['regret']:7.1f}, "
            f"numpy TS {runs['numpy_ts'][-1]['regret']:7.1f}, "
            f"lagged TS {runs['lagged_ts'][-1]['regret']:7.1f}",
            flush=True,
        )

    medians = {name: median(r["regret"] for r in results) for name, results in runs.items()}
    shares = {name: median(r["best_arm_share_last_fifth"] for r in results) for name, results in runs.items()}
    uniform = (max(RATES) - float(np.mean(RATES))) * args.decisions
    ratio = medians["router"] / medians["mabwiser"]
    interval = bootstrap_ratio([r["regret"] for r in runs["router"]], [r["regret"] for r in runs["mabwiser"]])
    summary = {
        "median_regret": medians,
        "median_best_arm_share_last_fifth": shares,
        "router_over_mabwiser": ratio,
        "router_over_mabwiser_bootstrap_90": interval,
        "mean_regret": {
            name: float(np.mean([r["regret"] for r in results])) for name, results in runs.items()
        },
        "router_over_numpy_ts": medians["router"] / medians["numpy_ts"],
        "lagged_ts_over_numpy_ts": medians["lagged_ts"] / medians["numpy_ts"],
        "uniform_random_regret": uniform,
        "target_ratio": TARGET_RATIO,
        "router_median_decisions_per_s": median(r["achieved_decisions_per_s"] for r in runs["router"]),
        "mabwiser_us_per_decision": median(r["us_per_decision"] for r in runs["mabwiser"]),
    }
    report = {
        "benchmark": "regret",
        "machine": info,
        "config": {
            "rates": RATES,
            "decisions": args.decisions,
            "seeds": seeds,
            "router_rate_per_s": args.rate,
            "router_batch_per_tick": max(1, round(args.rate * TICK_S)),
            "tick_s": TICK_S,
            "lagged_ts_refresh_every": lag,
        },
        "runs": runs,
        "summary": summary,
        "elapsed_s": time.perf_counter() - started,
    }
    print()
    print(
        f"Cumulative expected regret, T = {args.decisions:,}, arms {', '.join(f'{r:.0%}' for r in RATES)}, "
        f"{len(seeds)} seeds (uniform random play: {uniform:,.0f})"
    )
    print(f"{'policy':<44} {'median':>8} {'min':>8} {'max':>8} {'best-arm share, last 20%':>26}")
    labels = {
        "router": f"router, paced {summary['router_median_decisions_per_s']:,.0f}/s, 200 ms refresh",
        "mabwiser": "MABWiser TS, update after every decision",
        "numpy_ts": "numpy TS, update after every decision",
        "lagged_ts": f"numpy TS, posterior refreshed every {lag}",
    }
    for name, label in labels.items():
        values = [r["regret"] for r in runs[name]]
        print(
            f"{label:<44} {medians[name]:>8.1f} {min(values):>8.1f} {max(values):>8.1f} {shares[name]:>26.1%}"
        )
    print(
        f"router / MABWiser = {ratio:.2f} (bootstrap 90% interval {interval[0]:.2f}-{interval[1]:.2f}) "
        f"(target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'MISSED'}); "
        f"router / numpy TS = {summary['router_over_numpy_ts']:.2f}; "
        f"lagged / sequential numpy TS = {summary['lagged_ts_over_numpy_ts']:.2f}"
    )
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
