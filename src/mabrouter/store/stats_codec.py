"""An experiment's stats hash: decoded into sufficient statistics, and encoded for trial flushes."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mabrouter.core.discount import weight
from mabrouter.core.hashing import HOLDOUT_CELLS
from mabrouter.core.model import ArmStats, ExperimentSpec, MetricStats
from mabrouter.store.keys import (
    COUNT,
    DISCOUNTED,
    EPOCH,
    EXPECTED,
    METRIC_PREFIX,
    SAMPLED,
    SEGMENT_PREFIX,
    SPLIT_BANDIT,
    SPLIT_CELL,
    SPLIT_HOLDOUT,
    SUM,
    SUMSQ,
    TRIALS,
    stat_field,
)
from mabrouter.store.linear_codec import xx_increments
from mabrouter.store.records import TrialCounts

MAX_SEGMENTS = 100


def _number(raw: Mapping[str, str], field: str) -> float:
    text = raw.get(field)
    if text is None:
        return 0.0
    value = float(text)  # ValueError names the bad text; the caller keeps its last good snapshot
    if not math.isfinite(value):
        raise ValueError(f"stats field {field!r} is not finite: {text!r}")
    return value


def _count(raw: Mapping[str, str], field: str) -> float:
    """A count or a sum of squares: a negative one was written by hand and would break the formulas
    (a square root of a negative variance, a Beta with a negative parameter) further on."""
    value = _number(raw, field)
    if value < 0:
        raise ValueError(f"stats field {field!r} is negative: {raw.get(field)!r}")
    return value


def _metrics(raw: Mapping[str, str], arm: str) -> dict[str, MetricStats]:
    prefix = f"{arm}:{METRIC_PREFIX}"
    names = {field[len(prefix) :].rsplit(":", 1)[0] for field in raw if field.startswith(prefix)}
    return {
        name: MetricStats(
            n=int(_count(raw, f"{prefix}{name}:n")),
            total=_number(raw, f"{prefix}{name}:sum"),
            total_sq=_count(raw, f"{prefix}{name}:sumsq"),
        )
        for name in names
    }


def arm_stats(spec: ExperimentSpec, raw: Mapping[str, str], segment: str = "") -> tuple[ArmStats, ...]:
    """Stats for each arm of `spec` (of one segment, if given), in arm order; missing data is zero."""
    return tuple(
        ArmStats(
            trials=int(_count(raw, stat_field(arm.name, TRIALS, segment))),
            reward_count=int(_count(raw, stat_field(arm.name, COUNT, segment))),
            reward_sum=_number(raw, stat_field(arm.name, SUM, segment)),
            reward_sq_sum=_count(raw, stat_field(arm.name, SUMSQ, segment)),
            sampled=int(_count(raw, stat_field(arm.name, SAMPLED, segment))),
            expected_trials=_count(raw, stat_field(arm.name, EXPECTED, segment)),
            metrics={} if segment else _metrics(raw, arm.name),
        )
        for arm in spec.arms
    )


def segment_stats(
    spec: ExperimentSpec, raw: Mapping[str, str], limit: int = MAX_SEGMENTS
) -> dict[str, tuple[ArmStats, ...]]:
    """Per-segment stats of the `limit` segments with the most trials."""
    trials: dict[str, float] = {}
    for field, value in raw.items():
        if field.startswith(SEGMENT_PREFIX) and field.endswith(f":{TRIALS}"):
            segment = field[1:].split("|", 1)[0]
            trials[segment] = trials.get(segment, 0.0) + float(value)
    busiest = sorted(trials, key=lambda segment: -trials[segment])[:limit]
    return {segment: arm_stats(spec, raw, segment) for segment in busiest}


def holdout_split(raw: Mapping[str, str]) -> tuple[float, float]:
    """(holdout decisions, bandit decisions) among exposed units."""
    return _number(raw, SPLIT_HOLDOUT), _number(raw, SPLIT_BANDIT)


def holdout_cells(raw: Mapping[str, str]) -> dict[int, float]:
    """Exposed decisions per holdout cell of their units (cells outside 0..99 are ignored)."""
    cells = {}
    for field in raw:
        if field.startswith(SPLIT_CELL):
            index = field[len(SPLIT_CELL) :]
            if index.isdigit() and int(index) < HOLDOUT_CELLS:
                cells[int(index)] = _count(raw, field)
    return cells


def discount_epoch(raw: Mapping[str, str]) -> int:
    return int(_number(raw, EPOCH))


def discounted_stats(spec: ExperimentSpec, raw: Mapping[str, str], now_ms: int) -> tuple[ArmStats, ...]:
    """What the posteriors learn from with a half-life: forward-decayed sums read at `now_ms`."""
    epoch = discount_epoch(raw)
    scale = weight(now_ms, epoch, spec.half_life_seconds) if epoch else 1.0
    return tuple(
        ArmStats(
            trials=_count(raw, stat_field(arm.name, DISCOUNTED + TRIALS)) / scale,
            reward_count=_count(raw, stat_field(arm.name, DISCOUNTED + COUNT)) / scale,
            reward_sum=_number(raw, stat_field(arm.name, DISCOUNTED + SUM)) / scale,
            reward_sq_sum=_count(raw, stat_field(arm.name, DISCOUNTED + SUMSQ)) / scale,
        )
        for arm in spec.arms
    )


def trial_increments(counts: TrialCounts) -> dict[str, float]:
    """The stats-hash fields a flush adds to (store/stats_scripts.py APPLY_TRIALS), for one experiment."""
    fields = {stat_field(arm, TRIALS): n for arm, n in counts.trials.items()}
    for (segment, arm), n in counts.segment_trials.items():
        fields[stat_field(arm, TRIALS, segment)] = n
    for arm, n in counts.sampled.items():
        fields[stat_field(arm, SAMPLED)] = n
    for arm, n in counts.expected.items():
        fields[stat_field(arm, EXPECTED)] = n
    if counts.holdout:
        fields[SPLIT_HOLDOUT] = counts.holdout
    if counts.bandit:
        fields[SPLIT_BANDIT] = counts.bandit
    for cell, n in counts.holdout_cells.items():
        fields[f"{SPLIT_CELL}{cell}"] = n
    if counts.discount is not None:
        scale = counts.discount[2]
        for arm, n in counts.trials.items():
            fields[stat_field(arm, DISCOUNTED + TRIALS)] = n * scale
    for (model, arm), xx in counts.contextual.items():
        fields.update(xx_increments(model, arm, xx))
    return fields
