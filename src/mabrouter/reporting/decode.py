"""Step 2 of a report: what was read, decoded into domain terms and numpy arrays.

The experiment goes through the routers' own decoder (store/experiment_decoder.py): the report shows
what the routers decide from. The exposure log (decisions joined with their outcomes by nonce `d`) is
held as numpy arrays: a million decisions stay a few tens of megabytes. A decision without an outcome
has reward NaN here; what that means is decided per analysis (`estimators.per_decision_reward`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mabrouter.core.model import GlobalControls
from mabrouter.reporting.estimators import BoolArray, FloatArray, IntArray
from mabrouter.reporting.read import StoredReport
from mabrouter.store.controls_codec import parse_global_controls
from mabrouter.store.experiment_decoder import DecodedExperiment, decode_experiment
from mabrouter.store.records import AuditEntry, arm_of_kill_target

# Contexts kept for the contextual panel's ranges: enough for percentiles, bounded for long windows.
MAX_CONTEXTS = 5_000
BANDIT_REASONS = ("SAMPLED", "STICKY")  # the policy's own choices (holdout and imposed answers are not)


@dataclass(frozen=True, slots=True, eq=False)
class Exposure:
    """Decisions in the window, oldest first. `arm` indexes `arms` (the spec's arms, then unknown ones)."""

    arms: tuple[str, ...]
    ts_ms: IntArray
    arm: IntArray
    reason: npt.NDArray[np.str_]
    propensity: FloatArray
    counted: BoolArray
    reward: FloatArray  # NaN: no outcome reported
    # The model and feature vector (`x`) of the newest contextual decisions, at most MAX_CONTEXTS.
    contexts: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(self.ts_ms.size)

    def bandit(self) -> BoolArray:
        return np.isin(self.reason, BANDIT_REASONS)

    def holdout(self) -> BoolArray:
        return np.asarray(self.reason == "HOLDOUT", dtype=np.bool_)


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
class DecodedReport:
    name: str
    experiment: DecodedExperiment
    updated_ms: int
    global_controls: GlobalControls
    problems: tuple[str, ...]  # switches the routers ignore, and why
    audit: tuple[AuditRow, ...]  # newest first
    guardrail_kills: Mapping[str, str]  # arms a guardrail (not an operator) killed: arm -> its evidence
    outcomes: int  # outcomes logged in the window
    exposure: Exposure


def decode_report(stored: StoredReport, now_ms: int) -> DecodedReport:
    """Raises ConfigError or ValueError, naming the field, when the stored experiment does not decode."""
    decoded = decode_experiment(stored.experiment.raw, now_ms)
    problems = [f"control switch ignored by routers: {problem}" for problem in decoded.control_problems]
    global_controls, global_problems = parse_global_controls(stored.global_control)
    problems += [f"global switch ignored by routers: {problem}" for problem in global_problems]
    audit = tuple(_audit_row(entry) for entry in reversed(stored.audit))
    rewards = {entry.get("d", ""): float(entry.get("reward", "nan")) for entry in stored.outcomes}
    exposure = decode_exposure(tuple(arm.name for arm in decoded.spec.arms), stored.decisions, rewards)
    return DecodedReport(
        name=stored.name,
        experiment=decoded,
        updated_ms=stored.experiment.updated_ms,
        global_controls=global_controls,
        problems=tuple(problems),
        audit=audit,
        guardrail_kills=_guardrail_kills(stored.name, audit, decoded.controls.killed_arms),
        outcomes=len(rewards),
        exposure=exposure,
    )


def decode_exposure(
    arms: tuple[str, ...], decisions: Iterable[Mapping[str, str]], rewards: Mapping[str, float]
) -> Exposure:
    """Decision log entries (oldest first) joined with the rewards of their outcomes by nonce `d`."""
    names, index = list(arms), {name: i for i, name in enumerate(arms)}
    ts, arm, reason, propensity, counted, reward = [], [], [], [], [], []
    contexts: deque[str] = deque(maxlen=MAX_CONTEXTS)
    for entry in decisions:
        if "x" in entry:
            contexts.append(entry["x"])
        name = entry.get("arm", "")
        if name not in index:
            index[name] = len(names)
            names.append(name)
        ts.append(int(entry.get("ts", "0") or 0))
        arm.append(index[name])
        reason.append(entry.get("reason", ""))
        propensity.append(float(entry.get("p", "nan") or "nan"))
        counted.append(entry.get("counted") == "1")
        reward.append(rewards.get(entry.get("d", ""), math.nan))
    return Exposure(
        tuple(names),
        np.array(ts, dtype=np.int64),
        np.array(arm, dtype=np.int64),
        np.array(reason, dtype=np.str_),
        np.array(propensity, dtype=np.float64),
        np.array(counted, dtype=np.bool_),
        np.array(reward, dtype=np.float64),
        tuple(contexts),
    )


def _audit_row(entry: AuditEntry) -> AuditRow:
    f = entry.fields
    text = (f.get(key, "") for key in ("actor", "action", "target", "before", "after", "reason", "version"))
    return AuditRow(int(f.get("ts_ms", "0") or 0), entry.scope, *text)


def _guardrail_kills(name: str, audit: tuple[AuditRow, ...], killed: frozenset[str]) -> dict[str, str]:
    """Killed arms whose latest kill switch change was the guardrail's: arm -> its evidence."""
    latest: dict[str, AuditRow] = {}
    for row in audit:  # newest first
        arm = arm_of_kill_target(name, row.target) if row.scope == name else None
        if arm is not None:
            latest.setdefault(arm, row)
    return {arm: row.reason for arm, row in latest.items() if arm in killed and row.actor == "guardrail"}
