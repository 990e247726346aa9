"""The calibration scenarios and what each one measures, at two sizes: `QUICK` (seeded, in `make test`)
and `FULL` (benchmarks/bench_calibration.py, whose tables docs/statistics.md quotes).

Every estimate is the one operators read: `summarize` and `evidence` (what `status`, `report` and the
metrics show), `ipw_estimates` (the report's IPW and SNIPS), `guardrail_breaches` (the guardian),
`win_probabilities` (P(best)).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mabrouter.calibration.measures import (
    Bias,
    Rate,
    ReliabilityBin,
    bias,
    calibration_p_value,
    pooled_chi_square,
    reliability,
)
from mabrouter.calibration.simulate import Log, Run, Traffic, Truth, simulate, truth_from_prior
from mabrouter.core.decide import Decision
from mabrouter.core.model import (
    ArmSpec,
    BetaPrior,
    ExperimentSpec,
    Guardrail,
    MetricStats,
    NormalPrior,
    RampStep,
    Reason,
    RewardKind,
)
from mabrouter.core.snapshot import ExperimentState
from mabrouter.core.summary import SUMMARY_DRAWS, evidence, summarize
from mabrouter.core.thompson import win_probabilities
from mabrouter.reporting.estimators import BoolArray, ipw_estimates, ipw_rows
from mabrouter.runtime.trials import TrialBuffer

SRM_ALPHA = 0.001  # what `status` flags as a mismatch
NOMINAL_COVERAGE = 0.95


@dataclass(frozen=True, slots=True)
class Size:
    seeds: int
    batches: int
    batch_size: int


QUICK = Size(seeds=40, batches=12, batch_size=150)
FULL = Size(seeds=400, batches=30, batch_size=400)


def _arms(n: int, kind: RewardKind = RewardKind.BERNOULLI) -> tuple[ArmSpec, ...]:
    prior = BetaPrior(1.0, 1.0) if kind is RewardKind.BERNOULLI else NormalPrior(0.0, 1.0, 1.0, 1.0)
    return tuple(ArmSpec(f"arm-{i}", prior) for i in range(n))


def _spec(
    name: str, n_arms: int = 3, kind: RewardKind = RewardKind.BERNOULLI, **fields: Any
) -> ExperimentSpec:
    return replace(ExperimentSpec(name, kind, "arm-0", _arms(n_arms, kind)), **fields)


def _with_arms(spec: ExperimentSpec, changes: Mapping[str, Mapping[str, Any]]) -> ExperimentSpec:
    return replace(spec, arms=tuple(replace(arm, **changes.get(arm.name, {})) for arm in spec.arms))


@dataclass(frozen=True, slots=True)
class Scenario:
    """One policy feature (or a combination) on a world whose truth is drawn from the priors."""

    spec: ExperimentSpec
    segments: tuple[str, ...] = ()
    units: int = 0  # 0: a new unit per request
    half_life_batches: float = 0.0
    ramp_advance_at: float = 0.0  # fraction of the run after which ramping arms take their next step
    # Segments whose truth differs from the pooled one: the pooled posterior then describes a mixture,
    # so its intervals and P(best) are not checked against one arm mean.
    segment_truths: bool = False

    def traffic(self, size: Size) -> Traffic:
        ramp = {
            arm.name: max(int(size.batches * self.ramp_advance_at), 1)
            for arm in self.spec.arms
            if arm.ramp and self.ramp_advance_at
        }
        return Traffic(
            size.batches,
            size.batch_size,
            self.segments,
            self.units,
            self.half_life_batches,
            ramp_advance=ramp,
        )

    def close_truth(self) -> Truth:
        """Fixed, close arm means (segments shifted): the world the IPW checks use. Drawn from the
        prior, arms are usually far apart, Thompson starves the losers, and their propensities fall to
        the smoothing floor (~1e-4): IPS stays unbiased but its error is so heavy-tailed that no number
        of runs a test can afford shows it. Close arms keep propensities moderate within a run."""
        if self.spec.reward is RewardKind.BERNOULLI:
            means = tuple(0.10 + 0.02 * i for i in range(len(self.spec.arms)))
        else:
            means = tuple(0.1 * i for i in range(len(self.spec.arms)))
        own = {s: tuple(m + 0.02 * k for m in means) for k, s in enumerate(self.segments)}
        return Truth(means, segment_means=own if self.segment_truths else {})

    def truth(self, rng: np.random.Generator) -> Truth:
        truth = truth_from_prior(self.spec, rng)
        if not self.segment_truths:
            return truth
        own = {segment: truth_from_prior(self.spec, rng).means for segment in self.segments}
        return replace(truth, segment_means=own)


SCENARIOS: dict[str, Scenario] = {
    "plain": Scenario(_spec("plain")),
    "gaussian": Scenario(_spec("gaussian", kind=RewardKind.GAUSSIAN)),
    "segments": Scenario(
        _spec("segments", segment_attribute="country", segment_min_trials=100),
        segments=("DE", "FR", "US"),
        segment_truths=True,
    ),
    "caps_floors": Scenario(
        _with_arms(_spec("caps_floors"), {"arm-1": {"max_share": 0.2}, "arm-2": {"min_share": 0.1}})
    ),
    "burn_in": Scenario(_spec("burn_in", burn_in_trials=150)),
    "ramp": Scenario(
        _with_arms(_spec("ramp"), {"arm-2": {"ramp": (RampStep(0.05, 0.0), RampStep(0.5, 0.0))}}),
        ramp_advance_at=0.5,
    ),
    "holdout": Scenario(_spec("holdout", holdout_percent=10.0)),
    "discounting": Scenario(_spec("discounting", half_life_seconds=60.0), half_life_batches=8.0),
    "shadow": Scenario(_with_arms(_spec("shadow", n_arms=4), {"arm-3": {"shadow": True}})),
    "sticky": Scenario(_spec("sticky", sticky_ttl_seconds=3600), units=300),
    "combined": Scenario(
        _with_arms(
            _spec(
                "combined",
                n_arms=4,
                holdout_percent=10.0,
                segment_attribute="country",
                segment_min_trials=100,
            ),
            {"arm-1": {"max_share": 0.3}, "arm-2": {"min_share": 0.05}, "arm-3": {"shadow": True}},
        ),
        segments=("DE", "FR"),
    ),
}


@dataclass(slots=True)
class _Collected:
    srm_stats: list[float]
    srm_df: list[int]
    srm_p: list[float]
    holdout_p: list[float]
    covered: list[bool]
    p_best: list[float]
    is_best: list[bool]
    p_beats: list[float]
    beats: list[bool]
    lift_covered: list[bool]
    ips: dict[str, tuple[list[float], list[float]]]  # arm -> (estimates, truths)
    snips: dict[str, tuple[list[float], list[float]]]


@dataclass(frozen=True, slots=True)
class HealthyReport:
    """What one scenario's healthy runs say about every estimate."""

    scenario: str
    runs: int
    srm_alarms: Rate  # p < SRM_ALPHA: what `status` flags
    srm_at_5_percent: Rate  # p < 0.05: the p-values' calibration at a level runs can resolve
    srm_pooled_p: float  # the summed chi-squares of every run
    holdout_alarms: Rate | None
    coverage: Rate | None  # each served arm's 95% credible interval covering its true mean
    p_best: list[ReliabilityBin] | None
    p_best_calibration_p: float
    p_beats_control: list[ReliabilityBin] | None
    lift_coverage: Rate | None
    ips: dict[str, Bias]
    snips: dict[str, Bias]

    def as_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "runs": self.runs,
            "srm_alarms": self.srm_alarms.as_json(),
            "srm_at_5_percent": self.srm_at_5_percent.as_json(),
            "srm_pooled_p": self.srm_pooled_p,
            "holdout_alarms": self.holdout_alarms.as_json() if self.holdout_alarms else None,
            "coverage": self.coverage.as_json() if self.coverage else None,
            "p_best": [b.as_json() for b in self.p_best] if self.p_best is not None else None,
            "p_best_calibration_p": self.p_best_calibration_p,
            "p_beats_control": [b.as_json() for b in self.p_beats_control]
            if self.p_beats_control is not None
            else None,
            "lift_coverage": self.lift_coverage.as_json() if self.lift_coverage else None,
            "ips": {arm: b.as_json() for arm, b in self.ips.items()},
            "snips": {arm: b.as_json() for arm, b in self.snips.items()},
        }


def _served_mean(run: Run, arm: int) -> float:
    """The arm's true mean over the traffic's segment mix (uniform over the segments)."""
    truth = run.truth
    if not truth.segment_means:
        return truth.means[arm]
    return float(np.mean([truth.mean(arm, segment) for segment in truth.segment_means]))


def _collect(run: Run, collected: _Collected, scenario: Scenario, rng: np.random.Generator) -> None:
    state = run.final
    found = evidence(state, run.holdout_split, rng)
    if found.arm_srm is not None:
        collected.srm_stats.append(found.arm_srm.statistic)
        collected.srm_df.append(found.arm_srm.degrees_of_freedom)
        collected.srm_p.append(found.arm_srm.p_value)
    if found.holdout_srm is not None:
        collected.holdout_p.append(found.holdout_srm.p_value)
    if scenario.segment_truths:
        return
    # Every arm, shadow arms too: status shows their interval and P(best) (from the prior alone).
    best, control = run.truth.best(), state.control_index
    for i, summary in enumerate(summarize(state, rng)):
        truth = run.truth.means[i]
        collected.covered.append(summary.ci_low <= truth <= summary.ci_high)
        collected.p_best.append(summary.p_best)
        collected.is_best.append(i == best)
        lift = summary.lift
        if lift is None:
            continue
        collected.p_beats.append(lift.p_beats_control)
        collected.beats.append(truth > run.truth.means[control])
        if lift.ci_low is not None and lift.ci_high is not None and run.truth.means[control] > 0:
            true_lift = truth / run.truth.means[control] - 1.0
            collected.lift_covered.append(lift.ci_low <= true_lift <= lift.ci_high)


def _collect_ipw(run: Run, collected: _Collected, rows: BoolArray) -> None:
    spec, log = run.spec, run.log
    served = [i for i, arm in enumerate(spec.arms) if not arm.shadow]
    estimates, _ = ipw_estimates(
        tuple(a.name for a in spec.arms), log.arm[rows], log.propensity[rows], log.reward[rows]
    )
    for i in served:
        if not estimates[i].served:
            continue
        truth = _served_mean(run, i)
        name = spec.arms[i].name
        collected.ips.setdefault(name, ([], []))[0].append(estimates[i].ips)
        collected.ips[name][1].append(truth)
        collected.snips.setdefault(name, ([], []))[0].append(estimates[i].snips)
        collected.snips[name][1].append(truth)


def healthy(
    name: str,
    size: Size,
    *,
    buffer: Callable[[], TrialBuffer] = TrialBuffer,
    ipw_selection: Callable[[Log], BoolArray] = lambda log: ipw_rows(log.reason),
) -> HealthyReport:
    """Runs `size.seeds` healthy experiments of scenario `name`; every estimate against its truth.
    `buffer` (the trial counter) and `ipw_selection` (the rows IPW weighs) default to what routers and
    the report use; a deliberately broken one shows that the checks notice."""
    scenario = SCENARIOS[name]
    c = _Collected([], [], [], [], [], [], [], [], [], [], {}, {})
    for seed in range(size.seeds):
        rng = np.random.default_rng(seed)
        run = simulate(scenario.spec, scenario.truth(rng), scenario.traffic(size), seed, trials=buffer())
        _collect(run, c, scenario, rng)
        ipw_run = simulate(scenario.spec, scenario.close_truth(), scenario.traffic(size), seed)
        _collect_ipw(ipw_run, c, ipw_selection(ipw_run.log))
    runs = size.seeds
    checks_posterior = not scenario.segment_truths
    return HealthyReport(
        name,
        runs,
        Rate(sum(p < SRM_ALPHA for p in c.srm_p), len(c.srm_p), SRM_ALPHA),
        Rate(sum(p < 0.05 for p in c.srm_p), len(c.srm_p), 0.05),
        pooled_chi_square(c.srm_stats, c.srm_df),
        Rate(sum(p < SRM_ALPHA for p in c.holdout_p), len(c.holdout_p), SRM_ALPHA) if c.holdout_p else None,
        Rate(sum(c.covered), len(c.covered), NOMINAL_COVERAGE) if checks_posterior else None,
        reliability(c.p_best, c.is_best) if checks_posterior else None,
        calibration_p_value(reliability(c.p_best, c.is_best)) if checks_posterior else float("nan"),
        reliability(c.p_beats, c.beats) if checks_posterior else None,
        Rate(sum(c.lift_covered), len(c.lift_covered), NOMINAL_COVERAGE) if c.lift_covered else None,
        {arm: bias(*pair) for arm, pair in sorted(c.ips.items())},
        {arm: bias(*pair) for arm, pair in sorted(c.snips.items())},
    )


class LossyReplica(TrialBuffer):
    """A replica that loses some of one arm's trials (a broken flush, a crashed pod's buffer): the
    sample-ratio check exists to notice exactly this."""

    def __init__(self, arm: str = "arm-1", every: int = 10) -> None:
        super().__init__()
        self._arm, self._every, self._seen = arm, every, 0

    def record(self, experiment: str, decision: Decision, state: ExperimentState) -> None:
        if decision.arm == self._arm and decision.reason is Reason.SAMPLED:
            self._seen += 1
            if self._seen % self._every == 0:
                return
        super().record(experiment, decision, state)


class PooledAllocation(TrialBuffer):
    """The bug issue 17 found: a segment's decisions counted against the pooled allocation instead of
    the segment's own. Every healthy segmented experiment then 'mismatched'."""

    def add(
        self, experiment: str, arm: str, sampled_from: ExperimentState | None = None, segment: str = ""
    ) -> None:
        pooled = replace(sampled_from, segments={}) if sampled_from is not None else None
        super().add(experiment, arm, pooled, segment)


class LossyHoldout(TrialBuffer):
    """Loses some holdout decisions (a replica that does not count its holdout): a skewed split."""

    def __init__(self, every: int = 5) -> None:
        super().__init__()
        self._every, self._seen = every, 0

    def add_holdout(self, experiment: str) -> None:
        self._seen += 1
        if self._seen % self._every:
            super().add_holdout(experiment)


def detection(name: str, size: Size, buffer: Callable[[], TrialBuffer]) -> tuple[Rate, Rate | None]:
    """How often a broken split is flagged (p < SRM_ALPHA): the traffic split's and the holdout's."""
    report = healthy(name, size, buffer=buffer)
    return report.srm_alarms, report.holdout_alarms


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
    spec = _spec(f"guard-{kind}", guardrails=(rule,))
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
    spec = _spec("peek")
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
