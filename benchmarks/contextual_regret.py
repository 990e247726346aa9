"""Contextual decision quality: cumulative regret of mabrouter's linear Thompson sampling against MABWiser's
LinTS and against non-contextual Thompson sampling, on the same synthetic problems (issue 16).

    .venv/bin/python benchmarks/contextual_regret.py [--seeds 10] [--decisions 10000] [--batch 200]
                                                     [--output PATH]

Needs `mabwiser` (benchmark only: the `dev` and `bench` extras install it).

Problems (every arm a Bernoulli reward whose rate depends on the request):

  crossing   one number x ~ U(0, 2000) sent as `prompt_tokens`; arm `small` converts 80 % below 1000 and
             20 % above, `large` the opposite (the problem of issue 16's end-to-end test). A step: the
             linear model is misspecified, as real ones are.
  one-hot    a string `tier` of 4 values, uniform; 3 arms, each tier with its own best arm (rates 0.1 to
             0.6): exactly linear in the one-hot columns.
  mixed      a number, a 3-valued string and 2 numbers that do not matter; 4 arms whose rates are linear
             in the number and the string (clipped to [0.02, 0.98]), a different best arm in different
             regions.

Each seed draws T requests and drives every policy with the same requests and, for the arm it picks, the
same reward luck (one uniform per request: reward = u < rate). Outcomes arrive in batches as the router's
do: a policy decides `--batch` requests from the model it had at the start of the batch, then learns
all of their outcomes at once (the router's 200 ms refresh at 1,000 decisions/s).

  mabrouter     the real pure core: `decide()` on a snapshot built by `build_experiment_state` from the
                sums the store would hold (x x^T per decision, r x and r^2 per reward), rebuilt per batch.
  MABWiser      `MAB(arms, LearningPolicy.LinTS(), seed=seed)` (alpha 1, l2_lambda 1: its defaults),
                the same columns mabrouter uses (an intercept column included), `fit` on the first batch
                (decided uniformly at random, as MABWiser cannot predict before a fit) and `partial_fit`
                after each later one; `predict` on the whole batch of contexts.
  MABWiser a=.5 the same with alpha 0.5 (a Bernoulli reward's noise sd is at most 0.5: MABWiser does not
                estimate it, mabrouter does).
  MABWiser indep  the default one with a generator of its own per arm. As shipped, MABWiser (2.7) gives
                every arm's model a deep copy of one generator at the same state, and the copies advance
                in lockstep: every arm's coefficients are drawn from the same standard normals. Textbook
                Thompson sampling draws the arms independently, as mabrouter does; the correlated draws
                explore less, which pays on the misspecified crossing problem.
  non-contextual mabrouter's Thompson sampling on the arms' average rates (no contextual block).

Regret: the sum over decisions of max_a rate(a, x) - rate(chosen, x), which does not depend on the reward
draws' luck. Reported: medians over seeds, and mabrouter / MABWiser (target <= 1.15). Not a test: nothing
passes or fails. Writes benchmarks/results/contextual_regret.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, median, write_report

from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.features import FeatureEncoder
from mabrouter.core.linear import LinearSums
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    BetaPrior,
    CategoricalFeature,
    ContextualSpec,
    ExperimentSpec,
    NumericFeature,
    RewardKind,
)
from mabrouter.core.snapshot import Snapshot, build_experiment_state

RESULTS = RESULTS_DIR / "contextual_regret.json"
TARGET_RATIO = 1.15
Attributes = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    name: str
    arms: tuple[str, ...]
    contextual: ContextualSpec
    draw: Callable[[np.random.Generator], Attributes]  # one request's attributes
    rates: Callable[[Attributes], np.ndarray]  # every arm's true rate for it


def _crossing() -> Problem:
    def draw(rng: np.random.Generator) -> Attributes:
        return {"prompt_tokens": float(rng.uniform(0.0, 2000.0))}

    def rates(attributes: Attributes) -> np.ndarray:
        below = attributes["prompt_tokens"] < 1000.0
        return np.array([0.8, 0.2]) if below else np.array([0.2, 0.8])

    spec = ContextualSpec((NumericFeature("prompt_tokens", "standardize", mean=1000.0, scale=500.0),))
    return Problem("crossing", ("small", "large"), spec, draw, rates)


TIERS = ("free", "pro", "team", "enterprise")
ONE_HOT_RATES = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.55], [0.35, 0.35, 0.4]])


def _one_hot() -> Problem:
    def draw(rng: np.random.Generator) -> Attributes:
        return {"tier": TIERS[int(rng.integers(0, len(TIERS)))]}

    def rates(attributes: Attributes) -> np.ndarray:
        return ONE_HOT_RATES[TIERS.index(attributes["tier"])]

    spec = ContextualSpec((CategoricalFeature("tier", TIERS),))
    return Problem("one-hot", ("a", "b", "c"), spec, draw, rates)


REGIONS = ("eu", "us", "apac")
MIXED_BASE = np.array([0.40, 0.35, 0.30, 0.45])
MIXED_SLOPE = np.array([0.15, -0.15, 0.05, 0.0])  # per unit of the standardized number
MIXED_REGION = np.array([[0.0, 0.1, -0.1], [0.1, -0.1, 0.0], [-0.1, 0.0, 0.2], [0.0, 0.0, -0.15]])


def _mixed() -> Problem:
    def draw(rng: np.random.Generator) -> Attributes:
        return {
            "load": float(rng.normal(50.0, 20.0)),
            "region": REGIONS[int(rng.integers(0, len(REGIONS)))],
            "noise1": float(rng.normal()),
            "noise2": float(rng.uniform(0.0, 10.0)),
        }

    def rates(attributes: Attributes) -> np.ndarray:
        z = (attributes["load"] - 50.0) / 20.0
        region = MIXED_REGION[:, REGIONS.index(attributes["region"])]
        return np.clip(MIXED_BASE + MIXED_SLOPE * z + region, 0.02, 0.98)

    spec = ContextualSpec(
        (
            NumericFeature("load", "standardize", mean=50.0, scale=20.0),
            CategoricalFeature("region", REGIONS),
            NumericFeature("noise1"),
            NumericFeature("noise2", "log1p"),
        )
    )
    return Problem("mixed", ("a", "b", "c", "d"), spec, draw, rates)


PROBLEMS = (_crossing(), _one_hot(), _mixed())


def experiment(problem: Problem, contextual: bool) -> ExperimentSpec:
    arms = tuple(ArmSpec(arm, BetaPrior()) for arm in problem.arms)
    spec = problem.contextual if contextual else None
    return ExperimentSpec("bench", RewardKind.BERNOULLI, problem.arms[0], arms, contextual=spec)


def mabrouter_run(
    problem: Problem, requests: list[Attributes], luck: np.ndarray, seed: int, batch: int, *, contextual: bool
) -> list[int]:
    """Arms chosen by the real core; the snapshot is rebuilt from the stored sums after every batch."""
    spec = experiment(problem, contextual)
    encoder = FeatureEncoder(problem.contextual)
    k, d = len(problem.arms), encoder.dimension
    xx, rx, rr = np.zeros((k, d, d)), np.zeros((k, d)), np.zeros(k)
    trials, successes = np.zeros(k), np.zeros(k)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for start in range(0, len(requests), batch):
        sums = tuple(LinearSums(xx[a].copy(), rx[a].copy(), float(rr[a])) for a in range(k))
        stats = tuple(
            ArmStats(trials=trials[a], reward_count=successes[a], reward_sum=successes[a]) for a in range(k)
        )
        state = build_experiment_state(spec, 1, stats, linear_sums=sums if contextual else None)
        snapshot = Snapshot({"bench": state}, loaded_at=0.0)
        for i in range(start, min(start + batch, len(requests))):
            decision = decide(RouteInput("bench", f"u{i}", requests[i]), snapshot, rng)
            arm = problem.arms.index(decision.arm)
            reward = float(luck[i] < problem.rates(requests[i])[arm])
            chosen.append(arm)
            vector = decision.context.vector if decision.context is not None else encoder.vector(requests[i])
            xx[arm] += np.outer(vector, vector)
            rx[arm] += reward * vector
            rr[arm] += reward * reward
            trials[arm] += 1
            successes[arm] += reward
    return chosen


def mabwiser_run(
    problem: Problem,
    requests: list[Attributes],
    luck: np.ndarray,
    seed: int,
    batch: int,
    alpha: float,
    *,
    independent: bool = False,
) -> list[int]:
    """MABWiser's LinTS. `independent`: give each arm's model a generator of its own after the first fit.
    As shipped, every arm's model holds a deep copy of one generator, taken at the same state, and they
    advance in lockstep: all arms' coefficients are drawn from the same standard normals. Thompson
    sampling draws each arm's posterior independently; correlated draws explore less."""
    from mabwiser.mab import MAB, LearningPolicy  # noqa: PLC0415 - optional, benchmark-only dependency
    from mabwiser.utils import create_rng  # noqa: PLC0415

    encoder = FeatureEncoder(problem.contextual)
    contexts = np.array([encoder.vector(r) for r in requests])
    arms = list(range(len(problem.arms)))
    mab = MAB(arms, LearningPolicy.LinTS(alpha=alpha, l2_lambda=1.0), seed=seed)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for start in range(0, len(requests), batch):
        rows = slice(start, min(start + batch, len(requests)))
        if start == 0:
            picks = [int(a) for a in rng.integers(0, len(arms), rows.stop - rows.start)]
        else:
            predicted = mab.predict(contexts[rows])
            picks = [int(a) for a in (predicted if isinstance(predicted, list) else [predicted])]
        rewards = [
            float(luck[i] < problem.rates(requests[i])[a])
            for i, a in zip(range(rows.start, rows.stop), picks, strict=True)
        ]
        if start == 0:
            mab.fit(picks, rewards, contexts[rows])
            if independent:
                for arm, model in mab._imp.arm_to_model.items():
                    model.rng = create_rng(seed * 1_000 + arm + 1)
        else:
            mab.partial_fit(picks, rewards, contexts[rows])
        chosen += picks
    return chosen


def regret(problem: Problem, requests: list[Attributes], chosen: list[int]) -> float:
    total = 0.0
    for attributes, arm in zip(requests, chosen, strict=True):
        rates = problem.rates(attributes)
        total += float(rates.max() - rates[arm])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    policies = ("mabrouter", "mabwiser", "mabwiser_alpha_0.5", "mabwiser_independent", "non_contextual")
    results: dict[str, Any] = {}
    for problem in PROBLEMS:
        runs: dict[str, list[float]] = {policy: [] for policy in policies}
        seconds: dict[str, float] = dict.fromkeys(policies, 0.0)
        for seed in range(args.seeds):
            env = np.random.default_rng(10_000 + seed)
            requests = [problem.draw(env) for _ in range(args.decisions)]
            luck = env.random(args.decisions)
            for policy in policies:
                began = time.perf_counter()
                if policy == "mabrouter":
                    chosen = mabrouter_run(problem, requests, luck, seed, args.batch, contextual=True)
                elif policy == "non_contextual":
                    chosen = mabrouter_run(problem, requests, luck, seed, args.batch, contextual=False)
                else:
                    alpha = 0.5 if policy.endswith("0.5") else 1.0
                    independent = policy.endswith("independent")
                    chosen = mabwiser_run(
                        problem, requests, luck, seed, args.batch, alpha, independent=independent
                    )
                seconds[policy] += time.perf_counter() - began
                runs[policy].append(regret(problem, requests, chosen))
            print(
                f"{problem.name:9s} seed {seed}: "
                + ", ".join(f"{policy} {runs[policy][-1]:7.1f}" for policy in policies),
                flush=True,
            )
        medians = {policy: median(runs[policy]) for policy in policies}
        results[problem.name] = {
            "regret": runs,
            "median": medians,
            "mabrouter_over_mabwiser": medians["mabrouter"] / medians["mabwiser"],
            "mabrouter_over_mabwiser_alpha_0.5": medians["mabrouter"] / medians["mabwiser_alpha_0.5"],
            "mabrouter_over_mabwiser_independent": medians["mabrouter"] / medians["mabwiser_independent"],
            "mabrouter_over_non_contextual": medians["mabrouter"] / medians["non_contextual"],
            "seconds": seconds,
        }
    print(
        f"\nmedian cumulative regret, {args.seeds} seeds x {args.decisions:,} decisions, batch {args.batch}:"
    )
    header = ("problem", "mabrouter", "MABWiser", "ratio", "MABW a=.5", "MABW indep", "ratio", "non-ctx TS")
    print("{:10s} {:>10s} {:>10s} {:>6s} {:>10s} {:>10s} {:>6s} {:>10s}".format(*header))
    for name, found in results.items():
        m, shipped = found["median"], found["mabrouter_over_mabwiser"]
        print(
            f"{name:10s} {m['mabrouter']:10.1f} {m['mabwiser']:10.1f} {shipped:6.2f} "
            f"{m['mabwiser_alpha_0.5']:10.1f} {m['mabwiser_independent']:10.1f} "
            f"{found['mabrouter_over_mabwiser_independent']:6.2f} {m['non_contextual']:10.1f}"
        )
    write_report(
        args.output,
        {
            "benchmark": "contextual_regret",
            "machine": machine_info(),
            "seeds": args.seeds,
            "decisions": args.decisions,
            "batch": args.batch,
            "target_ratio": TARGET_RATIO,
            "problems": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
