"""The guardian and an operator peeking, against the truth: false kills, time to kill, false winners."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mabrouter.calibration.measures import (
    Rate,
)
from mabrouter.calibration.scenarios import Size, spec_of
from mabrouter.calibration.simulate import simulate
from mabrouter.calibration.world import Traffic, Truth, truth_from_prior
from mabrouter.core.model import (
    Guardrail,
    MetricStats,
)
from mabrouter.core.snapshot import ExperimentState
from mabrouter.core.summary import SUMMARY_DRAWS
from mabrouter.core.thompson import win_probabilities


@dataclass(frozen=True, slots=True)
class GuardrailReport:
    runs: int
    kills: Rate  # runs in which the regressed (or healthy) arm was killed
    # Runs in which the arm (and the control, when compared) reached min_samples: a kill was possible.
    eligible: int
    median_batches_to_kill: float
    # Every kill happened with at least min_samples on the arm (and on the control when compared).
    min_samples_respected: bool
    smallest_evidence: tuple[int, int]  # (arm n, control n) of the earliest kill

    def as_json(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "kills": self.kills.as_json(),
            "eligible": self.eligible,
            "median_batches_to_kill": self.median_batches_to_kill,
            "min_samples_respected": self.min_samples_respected,
            "smallest_evidence": list(self.smallest_evidence),
        }


GUARDRAILS = {
    "error_rate": Guardrail("error", "rate", max_increase=0.02, probability=0.95, min_samples=300),
    "latency_cap": Guardrail("latency_ms", "mean", max_value=250.0, probability=0.95, min_samples=300),
}


def guardrail(
    kind: str, metric: tuple[float, ...], size: Size, *, metric_sd: float = 60.0
) -> GuardrailReport:
    """Runs with a guardian judging after every batch (as it does after every refresh). `metric`: the
    true metric per arm (error rate, or mean latency); arm-1 is the one watched for kills."""
    rule = GUARDRAILS[kind]
    spec = spec_of(f"guard-{kind}", guardrails=(rule,))
    kills, eligible, batches, evidence_seen = 0, 0, [], []
    needs_control = rule.max_increase is not None
    for seed in range(size.seeds):
        rng = np.random.default_rng(seed)
        truth = replace(truth_from_prior(spec, rng), metric=metric, metric_sd=metric_sd)
        traffic = replace(Traffic(size.batches, size.batch_size), guardian=True)
        run = simulate(spec, replace(truth, means=(0.5, 0.5, 0.5)), traffic, seed)
        seen = [s.metrics.get(rule.metric, MetricStats()).n for s in run.final.stats]
        eligible += seen[1] >= rule.min_samples and (not needs_control or seen[0] >= rule.min_samples)
        if "arm-1" in run.killed:
            kills += 1
            batches.append(run.killed["arm-1"] + 1)
            evidence_seen.append(run.kill_evidence["arm-1"])
    respected = all(
        arm_n >= rule.min_samples and (not needs_control or control_n >= rule.min_samples)
        for arm_n, control_n in evidence_seen
    )
    return GuardrailReport(
        size.seeds,
        Rate(kills, size.seeds, 0.0),
        eligible,
        float(np.median(batches)) if batches else float("nan"),
        respected,
        min(evidence_seen) if evidence_seen else (0, 0),
    )


@dataclass(frozen=True, slots=True)
class PeekingReport:
    runs: int
    thresholds: tuple[float, ...]
    # Per threshold: runs in which an arm that is not the best reached it at some check.
    reached_by_a_non_best_arm: tuple[Rate, ...]
    # And at the last check only (an operator who looks once, at the end).
    at_the_end: tuple[Rate, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "thresholds": list(self.thresholds),
            "reached_by_a_non_best_arm": [r.as_json() for r in self.reached_by_a_non_best_arm],
            "at_the_end": [r.as_json() for r in self.at_the_end],
        }


def peeking(size: Size, *, equal_arms: bool, thresholds: tuple[float, ...] = (0.95, 0.99)) -> PeekingReport:
    """An operator checks P(best) after every batch and stops when an arm reaches a threshold. With
    `equal_arms` (an A/A test) no arm is best, so every arm reaching it is a false winner; otherwise the
    truth is drawn from the prior and only the truly best arm may reach it."""
    spec = spec_of("peek")
    ever = [0] * len(thresholds)
    end = [0] * len(thresholds)
    for seed in range(size.seeds):
        rng = np.random.default_rng(seed)
        truth = Truth((0.1, 0.1, 0.1)) if equal_arms else truth_from_prior(spec, rng)
        best = -1 if equal_arms else truth.best()
        peaks = np.zeros(len(spec.arms))
        last: list[float] = []

        def check(_batch: int, state: ExperimentState, rng: np.random.Generator = rng) -> None:
            nonlocal peaks, last
            p = win_probabilities(state.posteriors, tuple(range(len(spec.arms))), rng, SUMMARY_DRAWS)
            peaks = np.maximum(peaks, p)
            last = p.tolist()

        simulate(spec, truth, Traffic(size.batches, size.batch_size), seed, checkpoint=check)
        for k, threshold in enumerate(thresholds):
            wrong = [i for i in range(len(spec.arms)) if i != best]
            ever[k] += any(peaks[i] >= threshold for i in wrong)
            end[k] += any(last[i] >= threshold for i in wrong)
    nominal = tuple(1.0 - t for t in thresholds)
    return PeekingReport(
        size.seeds,
        thresholds,
        tuple(Rate(e, size.seeds, n) for e, n in zip(ever, nominal, strict=True)),
        tuple(Rate(e, size.seeds, n) for e, n in zip(end, nominal, strict=True)),
    )
