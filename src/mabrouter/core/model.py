"""Immutable domain types shared by every layer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

# Experiment and arm names appear in Redis keys, decision ids and metrics labels: keep them tame.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


class RewardKind(Enum):
    BERNOULLI = "bernoulli"
    GAUSSIAN = "gaussian"


class Reason(Enum):
    """Why an arm was served. Values mirror mabrouter.v1.Reason."""

    SAMPLED = 1
    KILLED = 2
    NOT_EXPOSED = 3
    NOT_TARGETED = 4
    FORCED = 5
    DENIED = 6
    STICKY = 7
    FALLBACK_DEFAULT = 8
    STALE_CONTROL = 9


@dataclass(frozen=True, slots=True)
class BetaPrior:
    alpha: float = 1.0
    beta: float = 1.0


@dataclass(frozen=True, slots=True)
class NormalPrior:
    """Normal-Inverse-Gamma prior: mean, pseudo-count kappa, and Inverse-Gamma(alpha, beta) on variance."""

    mean: float = 0.0
    kappa: float = 1.0
    alpha: float = 1.0
    beta: float = 1.0


Prior = BetaPrior | NormalPrior


@dataclass(frozen=True, slots=True)
class ArmSpec:
    name: str
    prior: Prior
    payload: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    name: str
    reward: RewardKind
    control: str
    arms: tuple[ArmSpec, ...]

    def arm_index(self, arm: str) -> int | None:
        for index, spec in enumerate(self.arms):
            if spec.name == arm:
                return index
        return None


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Sufficient statistics of one arm, as stored in Redis.

    trials: decisions made by the policy for this arm (conversion style: every decision is a trial).
    reward_count: outcomes reported. reward_sum / reward_sq_sum: sums of rewards and squared rewards.
    """

    trials: int = 0
    reward_count: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
