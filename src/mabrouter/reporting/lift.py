"""Each arm against the control, as the report shows it: the comparisons `core.summary.summarize` made
(the ones `mabrouter status` prints), arranged in rows. Nothing is estimated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mabrouter.core.summary import ControlComparison
from mabrouter.reporting.data import ArmView

UNDEFINED_WHY = "the control's mean may be zero or negative, where (arm - control) / control means nothing"


@dataclass(frozen=True, slots=True)
class LiftRow:
    arm: str
    label: str  # the arm's name and state (killed, shadow), as every figure names it
    index: int  # the arm's position in the experiment: its colour in every figure
    comparison: ControlComparison
    trials: float

    @property
    def defined(self) -> bool:
        c = self.comparison
        return c.lift is not None and c.ci_low is not None and c.ci_high is not None


def against_control(arms: Sequence[ArmView]) -> tuple[LiftRow, ...]:
    """Every arm but the control, in experiment order."""
    return tuple(
        LiftRow(arm.name, arm.label, index, arm.summary.lift, arm.summary.trials)
        for index, arm in enumerate(arms)
        if arm.summary.lift is not None
    )


def why_no_lift(arms: Sequence[ArmView]) -> str | None:
    """Why a lift panel would have nothing to show, or None when it has something."""
    if not against_control(arms):
        return "the experiment has no arm besides the control"
    control = next((arm for arm in arms if arm.control), None)
    if control is not None and control.summary.trials <= 0:
        # Prior against prior: an interval that says only what the experiment file assumed.
        return f"no trials on the control arm {control.name} yet"
    return None
