"""Decode the sufficient statistics stored in an experiment's stats hash."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mabrouter.core.model import ArmStats, ExperimentSpec, MetricStats
from mabrouter.store.keys import (
    COUNT,
    EXPECTED,
    METRIC_PREFIX,
    SAMPLED,
    SPLIT_BANDIT,
    SPLIT_HOLDOUT,
    SUM,
    SUMSQ,
    TRIALS,
    stat_field,
)


def _number(raw: Mapping[str, str], field: str) -> float:
    text = raw.get(field)
    if text is None:
        return 0.0
    value = float(text)  # ValueError names the bad text; the caller keeps its last good snapshot
    if not math.isfinite(value):
        raise ValueError(f"stats field {field!r} is not finite: {text!r}")
    return value


def _metrics(raw: Mapping[str, str], arm: str) -> dict[str, MetricStats]:
    prefix = f"{arm}:{METRIC_PREFIX}"
    names = {field[len(prefix) :].rsplit(":", 1)[0] for field in raw if field.startswith(prefix)}
    return {
        name: MetricStats(
            n=int(_number(raw, f"{prefix}{name}:n")),
            total=_number(raw, f"{prefix}{name}:sum"),
            total_sq=_number(raw, f"{prefix}{name}:sumsq"),
        )
        for name in names
    }


def arm_stats(spec: ExperimentSpec, raw: Mapping[str, str]) -> tuple[ArmStats, ...]:
    """Stats for each arm of `spec`, in arm order (arms without data start at zero)."""
    return tuple(
        ArmStats(
            trials=int(_number(raw, stat_field(arm.name, TRIALS))),
            reward_count=int(_number(raw, stat_field(arm.name, COUNT))),
            reward_sum=_number(raw, stat_field(arm.name, SUM)),
            reward_sq_sum=_number(raw, stat_field(arm.name, SUMSQ)),
            sampled=int(_number(raw, stat_field(arm.name, SAMPLED))),
            expected_trials=_number(raw, stat_field(arm.name, EXPECTED)),
            metrics=_metrics(raw, arm.name),
        )
        for arm in spec.arms
    )


def holdout_split(raw: Mapping[str, str]) -> tuple[float, float]:
    """(holdout decisions, bandit decisions) among exposed units."""
    return _number(raw, SPLIT_HOLDOUT), _number(raw, SPLIT_BANDIT)
