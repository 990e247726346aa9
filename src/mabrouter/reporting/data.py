"""Step 4 of a report: the view, everything the page shows, in plain dataclasses (no matplotlib, no
HTML), and `gather`, which runs the steps: read (`read`), decode (`decode`), estimate (`estimate`),
then this. Rendering (`charts`, `html`) takes the view and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from mabrouter.core.evidence import SampleRatioCheck
from mabrouter.core.model import ArmSpec, Controls, GlobalControls, RewardKind
from mabrouter.core.posterior import BetaPosteriors, Posteriors
from mabrouter.core.summary import ArmSummary
from mabrouter.reporting.contextual import ContextualView, contextual_view
from mabrouter.reporting.decode import AuditRow, DecodedReport, Exposure, decode_report
from mabrouter.reporting.estimate import Estimates, GuardrailRow, estimate
from mabrouter.reporting.estimators import HoldoutComparison, IpwEstimate
from mabrouter.reporting.read import read_stored
from mabrouter.store.ports import OperatorStore

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

    @property
    def label(self) -> str:
        """The arm's name and what is special about it, as every figure names it."""
        notes = ["control"] if self.control else []
        notes += ["killed by guardrail"] if self.guardrail_kill else (["killed"] if self.killed else [])
        notes += ["shadow"] if self.spec.shadow else []
        return self.name + (f" ({', '.join(notes)})" if notes else "")


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
    # A contextual experiment's model: coefficients and which arm wins where (None for the others).
    contextual: ContextualView | None = None

    @property
    def killed(self) -> bool:
        return self.controls.killed or self.global_controls.killed


def gather(
    store: OperatorStore,
    name: str,
    *,
    since_ms: int,
    now_ms: int,
    rng: np.random.Generator,
    audit_limit: int = 200,
) -> ReportData | None:
    """Everything about experiment `name` (None when it does not exist); the logs from `since_ms` on.

    Raises ConfigError or ValueError, naming the field, when what is stored does not decode."""
    stored = read_stored(store, name, since_ms, max(audit_limit, KILL_LOOKBACK))
    if stored is None:
        return None
    decoded = decode_report(stored, now_ms)
    found = estimate(decoded, rng)
    return build_view(decoded, found, since_ms=since_ms, now_ms=now_ms, audit_limit=audit_limit)


def build_view(
    decoded: DecodedReport, found: Estimates, *, since_ms: int, now_ms: int, audit_limit: int
) -> ReportData:
    experiment, exposure = decoded.experiment, decoded.exposure
    spec, stats, controls = experiment.spec, experiment.stats, experiment.controls
    divergent = {d.arm for d in found.evidence.divergences}
    arms = tuple(
        ArmView(
            arm.name,
            arm,
            found.summaries[i],
            _density(found.state.posteriors, i),
            arm.name == spec.control,
            arm.name in controls.killed_arms,
            decoded.guardrail_kills.get(arm.name, ""),
            arm.name in divergent,
        )
        for i, arm in enumerate(spec.arms)
    )
    sampled = [float(s.sampled) for s in stats]
    expected = [s.expected_trials for s in stats]
    scale = sum(sampled) / sum(expected) if sum(expected) > 0 else 0.0
    trials = int(sum(arm_stat.trials for arm_stat in stats))
    warnings = [*decoded.problems, *_log_warnings(exposure, decoded.outcomes, trials, since_ms, now_ms)]
    return ReportData(
        experiment=decoded.name,
        description=experiment.document.description,
        version=experiment.version,
        updated_ms=decoded.updated_ms,
        reward=spec.reward,
        control=spec.control,
        generated_ms=now_ms,
        since_ms=since_ms,
        controls=controls,
        global_controls=decoded.global_controls,
        rollout=found.state.rollout,
        holdout_percent=spec.holdout_percent,
        arms=arms,
        guardrails=found.guardrails,
        srm=found.evidence.arm_srm,
        srm_counts=tuple(
            (arm.name, o, e * scale) for arm, o, e in zip(spec.arms, sampled, expected, strict=True)
        ),
        holdout_srm=found.evidence.holdout_srm,
        holdout_split=experiment.holdout_split,
        exposure=exposure,
        outcomes_in_window=decoded.outcomes,
        holdout=found.holdout,
        ipw=found.ipw,
        ipw_dropped=found.ipw_dropped,
        audit=decoded.audit[:audit_limit],
        warnings=tuple(warnings),
        contextual=contextual_view(found.state, exposure.contexts),
    )


def _density(posteriors: Posteriors, index: int) -> tuple[float, float, float]:
    if isinstance(posteriors, BetaPosteriors):
        return float(posteriors.alpha[index]), float(posteriors.beta[index]), 0.0
    return float(posteriors.location[index]), float(posteriors.scale[index]), float(posteriors.df[index])


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
