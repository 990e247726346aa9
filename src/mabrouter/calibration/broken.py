"""Deliberately broken trial counters: the splits the sample-ratio checks exist to catch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from mabrouter.calibration.healthy import healthy
from mabrouter.calibration.measures import (
    Rate,
)
from mabrouter.calibration.scenarios import Size
from mabrouter.core.decide import Decision
from mabrouter.core.model import (
    Reason,
)
from mabrouter.core.snapshot import ExperimentState
from mabrouter.runtime.trials import TrialBuffer


class LossyReplica(TrialBuffer):
    """A replica that loses some of one arm's trials (a broken flush, a crashed pod's buffer): the
    sample-ratio check exists to notice exactly this."""

    def __init__(self, arm: str = "arm-1", every: int = 10) -> None:
        super().__init__()
        self._arm, self._every, self._seen = arm, every, 0

    def record(self, experiment: str, decision: Decision, state: ExperimentState, unit_id: str) -> None:
        if decision.arm == self._arm and decision.reason is Reason.SAMPLED:
            self._seen += 1
            if self._seen % self._every == 0:
                return
        super().record(experiment, decision, state, unit_id)


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

    def record(self, experiment: str, decision: Decision, state: ExperimentState, unit_id: str) -> None:
        if decision.reason is Reason.HOLDOUT:
            self._seen += 1
            if self._seen % self._every == 0:
                return
        super().record(experiment, decision, state, unit_id)


def detection(name: str, size: Size, buffer: Callable[[], TrialBuffer]) -> tuple[Rate, Rate | None]:
    """How often a broken split is flagged (p < SRM_ALPHA): the traffic split's and the holdout's."""
    report = healthy(name, size, buffer=buffer)
    return report.srm_alarms, report.holdout_alarms
