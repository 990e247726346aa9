"""The experiment document schema (YAML or JSON files, and the JSON stored in Redis).

The same schema validates an experiment file on its way into Redis (CLI) and on its way out (router),
so a document that one side accepts the other accepts too.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mabrouter.contextual_schema import ContextualDoc, combination_problem
from mabrouter.core.model import (
    NAME_PATTERN,
    ArmSpec,
    BetaPrior,
    Expectation,
    ExperimentSpec,
    Guardrail,
    NormalPrior,
    RampStep,
    RewardKind,
)
from mabrouter.errors import ConfigError
from mabrouter.targeting_schema import TargetingDoc, to_rule
from mabrouter.validation_messages import describe_validation_error

MAX_ARMS = 100
MAX_PAYLOAD_ENTRIES = 32
MAX_PAYLOAD_VALUE_CHARS = 2048
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_LISTED_UNITS = 10_000
DEFAULT_STICKY_TTL_SECONDS = 7 * 86_400

Name = Annotated[str, Field(pattern=NAME_PATTERN.pattern, description="letters, digits, . _ -; max 64")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BetaPriorDoc(_Strict):
    alpha: Positive = 1.0
    beta: Positive = 1.0


class NormalPriorDoc(_Strict):
    mean: Finite = 0.0
    kappa: Positive = 1.0
    alpha: Positive = 1.0
    beta: Positive = 1.0


class ExpectationDoc(_Strict):
    mean: Finite
    tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class RampStepDoc(_Strict):
    share: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    min_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    min_trials: Annotated[int, Field(ge=0)] = 0


Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class ArmDoc(_Strict):
    name: Name
    payload: dict[str, str] = Field(default_factory=dict)
    prior: BetaPriorDoc | NormalPriorDoc | None = None
    max_share: Share = Field(default=1.0, description="cap on the arm's share of sampled traffic")
    min_share: Share = Field(default=0.0, description="exploration floor")
    shadow: bool = Field(default=False, description="never served; the shadow policy reports its choice")
    expected: ExpectationDoc | None = None
    ramp: list[RampStepDoc] = Field(default_factory=list, max_length=20)

    @field_validator("payload")
    @classmethod
    def _bounded_payload(cls, payload: dict[str, str]) -> dict[str, str]:
        if len(payload) > MAX_PAYLOAD_ENTRIES:
            raise ValueError(f"at most {MAX_PAYLOAD_ENTRIES} payload entries, got {len(payload)}")
        for key, value in payload.items():
            if len(value) > MAX_PAYLOAD_VALUE_CHARS:
                raise ValueError(
                    f"payload {key!r} is {len(value)} characters; the limit is {MAX_PAYLOAD_VALUE_CHARS}"
                )
        return payload

    @model_validator(mode="after")
    def _bounds(self) -> ArmDoc:
        if self.min_share > self.max_share:
            raise ValueError(
                f"arm {self.name!r}: min_share {self.min_share} exceeds max_share {self.max_share}"
            )
        shares = [step.share for step in self.ramp]
        if shares != sorted(shares):
            raise ValueError(f"arm {self.name!r}: ramp shares must not decrease ({shares})")
        return self


class SegmentByDoc(_Strict):
    """Keep posteriors per value of `attribute`; a segment decides on its own after `min_trials`."""

    attribute: Annotated[str, Field(min_length=1, max_length=128)]
    min_trials: Annotated[int, Field(ge=1, le=10_000_000)] = 200


class GuardrailDoc(_Strict):
    metric: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")]
    kind: Literal["rate", "mean"] = "rate"
    max_increase: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    max_value: Finite | None = None
    probability: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    min_samples: Annotated[int, Field(ge=10)] = 200

    @model_validator(mode="after")
    def _one_threshold(self) -> GuardrailDoc:
        if (self.max_increase is None) == (self.max_value is None):
            raise ValueError(
                f"guardrail {self.metric!r}: set exactly one of max_increase (vs control) or max_value"
            )
        return self


class StickyDoc(_Strict):
    ttl_seconds: int = Field(default=DEFAULT_STICKY_TTL_SECONDS, ge=60, le=366 * 86_400)


Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
UnitId = Annotated[str, Field(min_length=1, max_length=512)]


class ExperimentDoc(_Strict):
    """An experiment file (YAML or JSON). Unknown fields are errors."""

    name: Name
    description: str = Field(default="", max_length=1000)
    reward: Literal["bernoulli", "gaussian"] = "bernoulli"
    control: Name
    arms: list[ArmDoc] = Field(min_length=2, max_length=MAX_ARMS)
    salt: str = Field(default="", max_length=128, description="hash salt; defaults to the name")
    rollout: Percent = 100.0
    targeting: TargetingDoc | None = None
    allow: dict[Name, list[UnitId]] = Field(default_factory=dict, description="arm -> unit ids forced to it")
    deny: list[UnitId] = Field(default_factory=list, description="unit ids that always get control")
    sticky: StickyDoc | None = None
    segments: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=16, description="attributes logged with each decision"
    )
    segment_by: SegmentByDoc | None = None
    half_life_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=0.0, description="old evidence fades with this half-life (0: never)"
    )
    holdout: Percent = Field(default=0.0, description="percent of exposed units that always get control")
    burn_in_trials: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    guardrails: list[GuardrailDoc] = Field(default_factory=list, max_length=16)
    divergence_guardrail: bool = Field(
        default=False, description="kill an arm that credibly leaves its expected band"
    )
    contextual: ContextualDoc | None = Field(
        default=None, description="linear Thompson sampling on request attributes (contextual_schema.py)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentDoc:
        names = [arm.name for arm in self.arms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(duplicates)}")
        if self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the arms ({', '.join(names)})")
        self._check_lists(names)
        self._check_policy()
        wanted = BetaPriorDoc if self.reward == "bernoulli" else NormalPriorDoc
        for arm in self.arms:
            if arm.prior is not None and not isinstance(arm.prior, wanted):
                fields = "alpha, beta" if wanted is BetaPriorDoc else "mean, kappa, alpha, beta"
                raise ValueError(f"arm {arm.name!r}: a {self.reward} experiment takes a prior with {fields}")
        return self

    def _check_policy(self) -> None:
        by_name = {arm.name: arm for arm in self.arms}
        control = by_name[self.control]
        if control.shadow or control.ramp:
            raise ValueError(f"control {self.control!r} cannot be a shadow arm or ramp: it is the baseline")
        shadows = {arm.name for arm in self.arms if arm.shadow}
        forced = shadows & set(self.allow)
        if forced:
            raise ValueError(
                f"allow forces units to shadow arms, which are never served: {', '.join(sorted(forced))}"
            )
        served = [arm for arm in self.arms if not arm.shadow]
        if sum(arm.min_share for arm in served) > 1.0:
            raise ValueError("min_share of the served arms sums above 1")
        if self.divergence_guardrail and not any(arm.expected for arm in self.arms):
            raise ValueError("divergence_guardrail needs at least one arm with an `expected` band")
        problem = combination_problem(
            self.contextual, segment_by=self.segment_by is not None, half_life_seconds=self.half_life_seconds
        )
        if problem:
            raise ValueError(problem)

    def _check_lists(self, names: list[str]) -> None:
        unknown = sorted(set(self.allow) - set(names))
        if unknown:
            raise ValueError(f"allow names arms that do not exist: {', '.join(unknown)}")
        allowed = [unit for units in self.allow.values() for unit in units]
        listed = len(allowed) + len(self.deny)
        if listed > MAX_LISTED_UNITS:
            raise ValueError(f"allow and deny list {listed} units; the limit is {MAX_LISTED_UNITS}")
        twice = sorted(unit for unit, n in Counter([*allowed, *self.deny]).items() if n > 1)
        if twice:
            raise ValueError(f"units listed more than once in allow/deny: {', '.join(twice[:10])}")

    def to_spec(self) -> ExperimentSpec:
        kind = RewardKind(self.reward)
        return ExperimentSpec(
            name=self.name,
            reward=kind,
            control=self.control,
            arms=tuple(
                ArmSpec(
                    name=arm.name,
                    prior=_prior(kind, arm.prior),
                    payload=dict(arm.payload),
                    max_share=arm.max_share,
                    min_share=arm.min_share,
                    shadow=arm.shadow,
                    expected=Expectation(arm.expected.mean, arm.expected.tolerance) if arm.expected else None,
                    ramp=tuple(RampStep(step.share, step.min_seconds, step.min_trials) for step in arm.ramp),
                )
                for arm in self.arms
            ),
            salt=self.salt,
            rollout=self.rollout,
            targeting=to_rule(self.targeting) if self.targeting is not None else None,
            allow={unit: arm for arm, units in self.allow.items() for unit in units},
            deny=frozenset(self.deny),
            sticky_ttl_seconds=self.sticky.ttl_seconds if self.sticky is not None else 0,
            segments=tuple(dict.fromkeys(self.segments)),  # each attribute logged once
            holdout_percent=self.holdout,
            burn_in_trials=self.burn_in_trials,
            guardrails=tuple(
                Guardrail(g.metric, g.kind, g.max_increase, g.max_value, g.probability, g.min_samples)
                for g in self.guardrails
            ),
            divergence_guardrail=self.divergence_guardrail,
            half_life_seconds=self.half_life_seconds,
            segment_attribute=self.segment_by.attribute if self.segment_by else "",
            segment_min_trials=self.segment_by.min_trials if self.segment_by else 200,
            contextual=self.contextual.to_spec() if self.contextual is not None else None,
        )


def _prior(kind: RewardKind, doc: BetaPriorDoc | NormalPriorDoc | None) -> BetaPrior | NormalPrior:
    if isinstance(doc, BetaPriorDoc):
        return BetaPrior(doc.alpha, doc.beta)
    if isinstance(doc, NormalPriorDoc):
        return NormalPrior(doc.mean, doc.kappa, doc.alpha, doc.beta)
    return BetaPrior() if kind is RewardKind.BERNOULLI else NormalPrior()


def parse_experiment(data: Any, source: str) -> ExperimentDoc:
    try:
        return ExperimentDoc.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not a valid experiment:\n{describe_validation_error(exc)}") from exc


def load_experiment_file(path: Path) -> ExperimentDoc:
    """Read and validate a YAML or JSON experiment file; ConfigError names the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    if data is None:  # an empty file (or only comments) loads as None
        raise ConfigError(f"{path} is empty: an experiment file needs name, control and arms")
    return parse_experiment(data, str(path))


def experiment_to_json(doc: ExperimentDoc) -> str:
    return doc.model_dump_json(exclude_none=True)
