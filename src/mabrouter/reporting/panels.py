"""Which panels of the report have nothing to show, and why: a panel without data is left out (and named
in one note) instead of drawn as an empty box. Pure: decided from the view alone, no matplotlib.

Figures and sections are keyed separately: the holdout figure and the holdout section are hidden for the
same reason, but the guardrails figure (no guardrails) and section (no guardrails, ramps or kills) are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mabrouter.reporting.data import ReportData, utc_text
from mabrouter.reporting.estimators import ipw_rows, per_decision_reward
from mabrouter.reporting.lift import why_no_lift


@dataclass(frozen=True, slots=True)
class Charts:
    """The drawn figures (key -> base64 PNG) and the figures left out (key -> why)."""

    images: Mapping[str, str]
    omitted: Mapping[str, str] = field(default_factory=dict)


def figure_omissions(data: ReportData) -> dict[str, str]:
    """Figure key -> why it has nothing to show. The posteriors and arm values always have something:
    with no trials they show the priors, and say so."""
    found = {
        "lift": why_no_lift(data.arms),
        "traffic": _no_decisions(data),
        "reward": _no_decisions(data) or _no_outcomes(data),
        "holdout": why_no_holdout(data),
        "guardrails": None if data.guardrails else "the experiment has no guardrails",
    }
    return {key: why for key, why in found.items() if why}


def section_omissions(data: ReportData) -> dict[str, str]:
    """Section id -> why it has nothing to show. The arms table is always shown."""
    killed_by_guardrail = any(arm.guardrail_kill for arm in data.arms)
    ramps = any(arm.spec.ramp for arm in data.arms)
    found = {
        "lift": why_no_lift(data.arms),
        "guardrails": None
        if data.guardrails or ramps or killed_by_guardrail
        else "the experiment has no guardrails or ramps",
        "srm": _no_sampling(data),
        "holdout": why_no_holdout(data),
        "ipw": None
        if ipw_rows(data.exposure.reason).any()
        else f"no sampled decisions (SAMPLED) logged since {utc_text(data.since_ms)}",
        "audit": None if data.audit else "no audit entries",
    }
    return {key: why for key, why in found.items() if why}


def why_no_holdout(data: ReportData) -> str | None:
    if data.holdout is not None:
        return None
    if data.holdout_percent <= 0:
        return "no holdout configured (holdout: 0)"
    return f"fewer than 2 holdout or bandit decisions with an outcome logged since {utc_text(data.since_ms)}"


def _no_decisions(data: ReportData) -> str | None:
    return None if data.exposure.size else f"no decisions logged since {utc_text(data.since_ms)}"


def _no_outcomes(data: ReportData) -> str | None:
    # Bernoulli decisions without an outcome count as 0 (conversion style), so only a gaussian reward
    # can have decisions and still no value to draw.
    if np.isfinite(per_decision_reward(data.exposure.reward, data.reward)).any():
        return None
    return f"no outcome matches a decision logged since {utc_text(data.since_ms)}"


def _no_sampling(data: ReportData) -> str | None:
    sampled = sum(observed for _, observed, _ in data.srm_counts)
    split = sum(data.holdout_split) if data.holdout_percent > 0 else 0.0
    return None if sampled > 0 or split > 0 else "no decision has been sampled yet"
