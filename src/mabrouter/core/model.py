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
# Check with fullmatch: re's '$' also matches before a final newline ("gold\n" would pass .match). The
# pattern keeps '$' because pydantic's (Rust) regex engine, which the schema hands it to, has no \Z.
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
    HOLDOUT = 10


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
class RampStep:
    """Cap the arm at `share` of sampled traffic for at least `min_seconds`, and until the arm has
    `min_trials` decisions in all, before the next step: time alone says nothing with no traffic."""

    share: float
    min_seconds: float
    min_trials: int = 0


@dataclass(frozen=True, slots=True)
class Expectation:
    """The reward an arm was expected to earn offline, and how far online may credibly stray."""

    mean: float
    tolerance: float


@dataclass(frozen=True, slots=True)
class ArmSpec:
    name: str
    prior: Prior
    payload: Mapping[str, str] = field(default_factory=dict)
    # Bounds on the arm's share of sampled traffic (a canary cap; an exploration floor).
    max_share: float = 1.0
    min_share: float = 0.0
    # Never served; the shadow policy reports what it would have chosen.
    shadow: bool = False
    expected: Expectation | None = None
    ramp: tuple[RampStep, ...] = ()


@dataclass(frozen=True, slots=True)
class Guardrail:
    """An outcome metric an arm must not regress on, judged by posterior probability.

    kind "rate": the metric is 0/1 (e.g. error); "mean": a continuous metric (e.g. latency_ms).
    Breached when P(arm - control > max_increase) >= probability, or P(arm > max_value) >= probability,
    once the arm has min_samples observations of the metric, and the control too when the guardrail
    compares with it (max_increase); an absolute limit (max_value) does not wait for the control.
    """

    metric: str
    kind: str = "rate"
    max_increase: float | None = None
    max_value: float | None = None
    probability: float = 0.95
    min_samples: int = 200


@dataclass(frozen=True, slots=True)
class MetricStats:
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


@dataclass(frozen=True, slots=True)
class NumericFeature:
    """A number from Route's attributes, one column of the contextual model.

    transform: "none", "log1p" (sign(v) * log(1 + |v|): defined for every number) or "standardize"
    ((v - mean) / scale). `default` stands in for a missing or non-numeric value, before the transform
    (None: 0, or `mean` when standardizing, which then contributes 0)."""

    attribute: str
    transform: str = "none"
    mean: float = 0.0
    scale: float = 1.0
    default: float | None = None


@dataclass(frozen=True, slots=True)
class CategoricalFeature:
    """A string attribute one-hot encoded over `values` (one column each; any other value: all zero)."""

    attribute: str
    values: tuple[str, ...]


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True, slots=True)
class ContextualSpec:
    """Linear Thompson sampling on request attributes: per arm a Bayesian linear regression of the
    reward on the features (plus an intercept), ridge prior `prior_precision` (core/linear.py)."""

    features: tuple[Feature, ...]
    prior_precision: float = 1.0


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
    # Percent of exposed units that always get control (hashed independently of the rollout).
    holdout_percent: float = 0.0
    # Uniform allocation over live arms until every one has this many trials.
    burn_in_trials: int = 0
    guardrails: tuple[Guardrail, ...] = ()
    # Treat a credible divergence from an arm's offline expectation as a guardrail breach.
    divergence_guardrail: bool = False
    # Old evidence fades with this half-life (0: never), so the bandit follows a drifting world.
    half_life_seconds: float = 0.0
    # Keep posteriors per value of this attribute; a segment decides on its own data once it has
    # segment_min_trials trials, and on the pooled posterior before that.
    segment_attribute: str = ""
    segment_min_trials: int = 200
    # Route on the request's attributes with linear Thompson sampling (None: the arms' own posteriors).
    contextual: ContextualSpec | None = None

    @property
    def holdout_salt(self) -> str:
        return f"{self.hash_salt}:holdout"

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
    # Arms an operator explicitly unkilled (`kill:<arm>` = 0): guardrails no longer auto-kill them.
    operator_cleared: frozenset[str] = frozenset()
    # Overrides the document's rollout when set.
    rollout: float | None = None
    reason: str = ""
    # Ramp position per arm: the step index it is on (absent: step 0) and when it entered it (epoch ms).
    ramp_steps: Mapping[str, int] = field(default_factory=dict)
    ramp_since_ms: Mapping[str, int] = field(default_factory=dict)


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

    # Counts are floats: with discounting (a half-life) old evidence counts for less than one.
    trials: float = 0
    reward_count: float = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    # Decisions that sampling served to this arm, and the number the allocations in force expected.
    sampled: int = 0
    expected_trials: float = 0.0
    metrics: Mapping[str, MetricStats] = field(default_factory=dict)
