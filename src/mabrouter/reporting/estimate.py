"""Step 3 of a report: everything estimated from the decoded data, with one seeded generator.

The routers' state and evidence (sample ratios, divergence), each arm's summary, the guardrails'
probabilities of breach, and the estimators over the exposure log (`estimators`). The draws are made in
a fixed order from one generator, so the same data and seed give the same page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from mabrouter.core.evidence import guardrail_breaches
from mabrouter.core.model import ArmStats, ExperimentSpec, Guardrail, MetricStats
from mabrouter.core.snapshot import ExperimentState
from mabrouter.core.summary import ArmSummary, EvidenceSummary, evidence, summarize
from mabrouter.reporting.decode import DecodedReport
from mabrouter.reporting.estimators import (
    HoldoutComparison,
    IpwEstimate,
    holdout_difference,
    ipw_estimates,
    ipw_rows,
    per_decision_reward,
)
from mabrouter.store.experiment_decoder import experiment_state


@dataclass(frozen=True, slots=True)
class GuardrailRow:
    arm: str
    guardrail: Guardrail
    observed: MetricStats
    control: MetricStats | None  # None for an absolute limit (max_value)
    probability: float  # of breach; NaN: not computable yet (no observations of the arm or control)
    status: str  # breached / ok / waiting for samples / killed by guardrail


@dataclass(frozen=True, slots=True, eq=False)
class Estimates:
    state: ExperimentState
    evidence: EvidenceSummary
    summaries: list[ArmSummary]
    guardrails: tuple[GuardrailRow, ...]
    holdout: HoldoutComparison | None
    ipw: tuple[IpwEstimate, ...]
    ipw_dropped: int


def estimate(decoded: DecodedReport, rng: np.random.Generator) -> Estimates:
    """Raises ValueError when the statistics cannot give usable posteriors (as the routers would)."""
    experiment, exposure = decoded.experiment, decoded.exposure
    spec = experiment.spec
    # The routers' own state: the shares and posteriors they sample from.
    state = experiment_state(experiment)
    found = evidence(state, experiment.holdout_cells, rng)
    summaries = summarize(state, rng)
    guardrails = _guardrail_rows(spec, experiment.stats, decoded.guardrail_kills, rng)
    value = per_decision_reward(exposure.reward, spec.reward)
    rows = ipw_rows(exposure.reason)
    ipw, dropped = ipw_estimates(exposure.arms, exposure.arm[rows], exposure.propensity[rows], value[rows])
    holdout = holdout_difference(value[exposure.holdout()], value[exposure.bandit()], spec.reward, rng)
    return Estimates(state, found, summaries, guardrails, holdout, tuple(ipw), dropped)


def _guardrail_rows(
    spec: ExperimentSpec, stats: tuple[ArmStats, ...], auto_kills: Mapping[str, str], rng: np.random.Generator
) -> tuple[GuardrailRow, ...]:
    control = spec.arm_index(spec.control)
    every_arm = tuple(range(len(spec.arms)))
    rows = []
    for guardrail in spec.guardrails:
        # Every arm's probability of breach whatever the threshold: ask with threshold 0, judge below.
        probe = replace(spec, guardrails=(replace(guardrail, probability=0.0, min_samples=1),))
        probability = {b.arm: b.probability for b in guardrail_breaches(probe, stats, every_arm, rng)}
        relative = guardrail.max_increase is not None
        base = (
            stats[control].metrics.get(guardrail.metric, MetricStats())
            if control is not None
            else MetricStats()
        )
        for index, arm in enumerate(spec.arms):
            if index == control:
                continue
            observed = stats[index].metrics.get(guardrail.metric, MetricStats())
            p = probability.get(arm.name, math.nan)
            enough = observed.n >= guardrail.min_samples and (not relative or base.n >= guardrail.min_samples)
            if auto_kills.get(arm.name, "").startswith(f"{guardrail.metric}:"):
                status = "killed by guardrail"
            elif not enough:
                status = "waiting for samples"
            else:
                status = "breached" if p >= guardrail.probability else "ok"
            rows.append(GuardrailRow(arm.name, guardrail, observed, base if relative else None, p, status))
    return tuple(rows)
