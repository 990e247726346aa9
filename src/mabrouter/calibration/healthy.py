"""Healthy runs of a scenario: every estimate operators read against the truth it estimates.

`summarize` and `evidence` (what `status`, `report` and the metrics show), `ipw_estimates` (the report's
IPW and SNIPS) and `win_probabilities` (P(best)), on runs of the real decision core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
from mabrouter.calibration.scenarios import SCENARIOS, Scenario, Size
from mabrouter.calibration.simulate import Log, Run, simulate
from mabrouter.core.summary import evidence, summarize
from mabrouter.reporting.estimators import BoolArray, ipw_estimates, ipw_rows
from mabrouter.runtime.trials import TrialBuffer

SRM_ALPHA = 0.001  # what `status` flags as a mismatch
NOMINAL_COVERAGE = 0.95


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
    found = evidence(state, run.holdout_cells, rng)
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
