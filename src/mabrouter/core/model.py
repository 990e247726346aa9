"""Immutable domain types shared by every layer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # targeting imports AttributeValue from here; only the annotation needs Rule
    from mabrouter.core.targeting import Rule

# Experiment and arm names appear in Redis keys, decision ids and metrics labels: keep them tame.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


# A request attribute as targeting sees it: strings, numbers, bools and lists of strings.
AttributeValue = str | float | bool | tuple[str, ...]


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
    """An experiment as its document defines it (exposure rules included)."""

    name: str
    reward: RewardKind
    control: str
    arms: tuple[ArmSpec, ...]
    # Hash salt for rollout buckets; changing it re-randomises which units are exposed.
    salt: str = ""
    # Percent of units exposed (by hash bucket); the rest get control with reason NOT_EXPOSED.
    rollout: float = 100.0
    targeting: Rule | None = None
    # unit id -> arm it is forced to (QA, internal testers); deny-listed units always get control.
    allow: Mapping[str, str] = field(default_factory=dict)
    deny: frozenset[str] = frozenset()
    # Keep a unit on the arm it first got, for this long (0 = not sticky).
    sticky_ttl_seconds: int = 0
    # Request attributes recorded with each decision in the exposure log (for segmented analysis).
    segments: tuple[str, ...] = ()

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name

    def arm_index(self, arm: str) -> int | None:
        for index, spec in enumerate(self.arms):
            if spec.name == arm:
                return index
        return None


@dataclass(frozen=True, slots=True)
class Controls:
    """Operator switches for one experiment, flipped at run time through Redis (CLI or redis-cli)."""

    killed: bool = False
    killed_arms: frozenset[str] = frozenset()
    # Overrides the document's rollout when set.
    rollout: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GlobalControls:
    """Switches for every experiment at once: the incident button."""

    killed: bool = False
    reason: str = ""


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
