"""Decode the sufficient statistics stored in an experiment's stats hash."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mabrouter.core.model import ArmStats, ExperimentSpec
from mabrouter.store.keys import COUNT, SUM, SUMSQ, TRIALS, stat_field


def _number(raw: Mapping[str, str], field: str) -> float:
    text = raw.get(field)
    if text is None:
        return 0.0
    value = float(text)  # ValueError names the bad text; the caller keeps its last good snapshot
    if not math.isfinite(value):
        raise ValueError(f"stats field {field!r} is not finite: {text!r}")
    return value


def arm_stats(spec: ExperimentSpec, raw: Mapping[str, str]) -> tuple[ArmStats, ...]:
    """Stats for each arm of `spec`, in arm order (arms without data start at zero)."""
    return tuple(
        ArmStats(
            trials=int(_number(raw, stat_field(arm.name, TRIALS))),
            reward_count=int(_number(raw, stat_field(arm.name, COUNT))),
            reward_sum=_number(raw, stat_field(arm.name, SUM)),
            reward_sq_sum=_number(raw, stat_field(arm.name, SUMSQ)),
        )
        for arm in spec.arms
    )
