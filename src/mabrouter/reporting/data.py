"""Everything a report shows, read from Redis into plain dataclasses (no matplotlib, no HTML).

The exposure log (decisions joined with their outcomes by nonce `d`) is held as numpy arrays: a million
decisions stay a few tens of megabytes. A decision without an outcome has reward NaN here; what that
means is decided per analysis (`per_decision_reward`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from mabrouter.core.evidence import SampleRatioCheck, guardrail_breaches
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    Controls,
    ExperimentSpec,
    GlobalControls,
    Guardrail,
    MetricStats,
    RewardKind,
)
from mabrouter.core.posterior import BetaPosteriors, Posteriors
from mabrouter.core.summary import ArmSummary, evidence, summarize
from mabrouter.reporting import (
    Exposure,
    HoldoutComparison,
    IpwEstimate,
    holdout_difference,
    ipw_estimates,
    per_decision_reward,
    read_exposure,
)
from mabrouter.store import keys
from mabrouter.store.admin_store import AdminStore, AuditEntry
from mabrouter.store.controls_codec import parse_global_controls
from mabrouter.store.experiment_decoder import decode_experiment, experiment_state

QUIET_MS = 3_600_000  # no decision logged for this long: say so
KILL_LOOKBACK = 1000  # audit entries searched for who killed an arm


def utc_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class ArmView:
    name: str
    spec: ArmSpec
    summary: ArmSummary
    density: tuple[float, float, float]  # bernoulli: (alpha, beta, 0); gaussian: (location, scale, df)
    control: bool
    killed: bool
    guardrail_kill: str  # the evidence, when a guardrail (not an operator) killed the arm
    divergent: bool


@dataclass(frozen=True, slots=True)
class GuardrailRow:
    arm: str
    guardrail: Guardrail
    observed: MetricStats
    control: MetricStats | None  # None for an absolute limit (max_value)
    probability: float  # of breach; NaN: not computable yet (no observations of the arm or control)
    status: str  # breached / ok / waiting for samples / killed by guardrail


@dataclass(frozen=True, slots=True)
class AuditRow:
    ts_ms: int
    scope: str
    actor: str
    action: str
    target: str
    before: str
    after: str
    reason: str
    version: str


@dataclass(frozen=True, slots=True, eq=False)
class ReportData:
    experiment: str
    description: str
    version: int
    updated_ms: int
    reward: RewardKind
    control: str
    generated_ms: int
    since_ms: int
    controls: Controls
    global_controls: GlobalControls
    rollout: float
    holdout_percent: float
    arms: tuple[ArmView, ...]
    guardrails: tuple[GuardrailRow, ...]
    srm: SampleRatioCheck | None
    srm_counts: tuple[tuple[str, float, float], ...]  # arm, sampled, expected (scaled to the same total)
    holdout_srm: SampleRatioCheck | None
    holdout_split: tuple[float, float]  # holdout decisions, bandit decisions (Redis counters)
    exposure: Exposure
    outcomes_in_window: int
    holdout: HoldoutComparison | None
    ipw: tuple[IpwEstimate, ...]
    ipw_dropped: int
    audit: tuple[AuditRow, ...]  # newest first
    warnings: tuple[str, ...]

    @property
    def killed(self) -> bool:
        return self.controls.killed or self.global_controls.killed


def gather(
    store: AdminStore,
    name: str,
    *,
    since_ms: int,
    now_ms: int,
    rng: np.random.Generator,
    audit_limit: int = 200,
) -> ReportData | None:
    """Everything about experiment `name` (None when it does not exist); the logs from `since_ms` on."""
    stored = store.get(name)
    if stored is None:
        return None
    # The routers' own decoder and state (ConfigError/ValueError name what is wrong with the stored data).
    decoded = decode_experiment(stored.raw, now_ms)
    state = experiment_state(decoded, rng)
    spec, stats, controls, split = decoded.spec, decoded.stats, decoded.controls, decoded.holdout_split
    warnings = [f"control switch ignored by routers: {problem}" for problem in decoded.control_problems]
    global_controls, global_problems = parse_global_controls(store.global_control())
    warnings += [f"global switch ignored by routers: {problem}" for problem in global_problems]
    found = evidence(state, split, rng)
    entries = store.audit([name, keys.GLOBAL_SCOPE], max(audit_limit, KILL_LOOKBACK))
    audit = tuple(_audit_row(entry) for entry in reversed(entries))
    rewards = {
        entry.get("d", ""): float(entry.get("reward", "nan"))
        for entry in store.read_log(keys.outcomes_log(name), since_ms)
    }
    exposure = read_exposure(
        tuple(arm.name for arm in spec.arms), store.read_log(keys.decisions_log(name), since_ms), rewards
    )
    auto_kills = _guardrail_kills(name, audit, controls.killed_arms)
    divergent = {d.arm for d in found.divergences}
    summaries = summarize(state, rng)
    arms = tuple(
        ArmView(
            arm.name,
            arm,
            summaries[i],
            _density(state.posteriors, i),
            arm.name == spec.control,
            arm.name in controls.killed_arms,
            auto_kills.get(arm.name, ""),
            arm.name in divergent,
        )
        for i, arm in enumerate(spec.arms)
    )
    sampled = [float(s.sampled) for s in stats]
    expected = [s.expected_trials for s in stats]
    scale = sum(sampled) / sum(expected) if sum(expected) > 0 else 0.0
    value = per_decision_reward(exposure.reward, spec.reward)
    bandit, counted = exposure.bandit(), exposure.counted
    ipw, dropped = ipw_estimates(
        exposure.arms, exposure.arm[counted], exposure.propensity[counted], value[counted]
    )
    trials = int(sum(arm_stat.trials for arm_stat in stats))
    warnings += _log_warnings(exposure, len(rewards), trials, since_ms, now_ms)
    return ReportData(
        experiment=name,
        description=decoded.document.description,
        version=decoded.version,
        updated_ms=stored.updated_ms,
        reward=spec.reward,
        control=spec.control,
        generated_ms=now_ms,
        since_ms=since_ms,
        controls=controls,
        global_controls=global_controls,
        rollout=state.rollout,
        holdout_percent=spec.holdout_percent,
        arms=arms,
        guardrails=_guardrail_rows(spec, stats, auto_kills, rng),
        srm=found.arm_srm,
        srm_counts=tuple(
            (arm.name, o, e * scale) for arm, o, e in zip(spec.arms, sampled, expected, strict=True)
        ),
        holdout_srm=found.holdout_srm,
        holdout_split=split,
        exposure=exposure,
        outcomes_in_window=len(rewards),
        holdout=holdout_difference(value[exposure.holdout()], value[bandit], spec.reward, rng),
        ipw=tuple(ipw),
        ipw_dropped=dropped,
        audit=audit[:audit_limit],
        warnings=tuple(warnings),
    )


def _audit_row(entry: AuditEntry) -> AuditRow:
    f = entry.fields
    text = (f.get(key, "") for key in ("actor", "action", "target", "before", "after", "reason", "version"))
    return AuditRow(int(f.get("ts_ms", "0") or 0), entry.scope, *text)


def _guardrail_kills(name: str, audit: tuple[AuditRow, ...], killed: frozenset[str]) -> dict[str, str]:
    """Killed arms whose latest kill switch change was the guardrail's: arm -> its evidence."""
    prefix = f"{name}/{keys.KILL_ARM_PREFIX}"
    latest: dict[str, AuditRow] = {}
    for row in audit:  # newest first
        if row.scope == name and row.target.startswith(prefix):
            latest.setdefault(row.target.removeprefix(prefix), row)
    return {arm: row.reason for arm, row in latest.items() if arm in killed and row.actor == "guardrail"}


def _density(posteriors: Posteriors, index: int) -> tuple[float, float, float]:
    if isinstance(posteriors, BetaPosteriors):
        return float(posteriors.alpha[index]), float(posteriors.beta[index]), 0.0
    return float(posteriors.location[index]), float(posteriors.scale[index]), float(posteriors.df[index])


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


def _log_warnings(exposure: Exposure, outcomes: int, trials: int, since_ms: int, now_ms: int) -> list[str]:
    found = []
    if exposure.size == 0 and trials > 0:
        found.append(
            f"no decisions in the exposure log since {utc_text(since_ms)} although Redis counts {trials:,} "
            "trials: the log may be off (MABROUTER_EXPOSURE_LOG_MAXLEN=0), trimmed, or --since too short"
        )
    stale = int(np.sum(exposure.reason == "STALE_CONTROL"))
    if stale:
        found.append(
            f"{stale:,} decisions served control because a router's snapshot was stale (STALE_CONTROL)"
        )
    if exposure.size and now_ms - int(exposure.ts_ms.max()) > QUIET_MS:
        last = int(exposure.ts_ms.max())
        found.append(
            f"stale data: the last decision was logged at {utc_text(last)}, "
            f"{(now_ms - last) / 3_600_000:.1f} h ago"
        )
    unmatched = outcomes - int(np.isfinite(exposure.reward).sum())
    if unmatched > 0:
        found.append(
            f"{unmatched:,} outcomes in the window match no logged decision (decided before the window, or "
            "trimmed from the capped log); they are left out of the exposure analyses"
        )
    return found
