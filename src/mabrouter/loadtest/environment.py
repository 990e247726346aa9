"""The simulated world of a load test: each arm's true reward distribution, which may drift mid-run.

Pure: no I/O, no clock; times are seconds since the start of the run and randomness is passed in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["bernoulli", "gaussian"]


@dataclass(frozen=True, slots=True)
class ArmModel:
    """One arm's true reward: Bernoulli(`mean`) or Normal(`mean`, `sigma`)."""

    kind: Kind
    mean: float
    sigma: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "bernoulli":
            return 1.0 if rng.random() < self.mean else 0.0
        return rng.gauss(self.mean, self.sigma) if self.sigma > 0 else self.mean

    def as_json(self) -> dict[str, Any]:
        if self.kind == "bernoulli":
            return {"rate": self.mean}
        return {"mean": self.mean, "sigma": self.sigma}


@dataclass(frozen=True, slots=True)
class Phase:
    """From `start` seconds on, these arm models hold (until the next phase)."""

    start: float
    arms: Mapping[str, ArmModel]


@dataclass(frozen=True, slots=True)
class Context:
    """A number sent as `attribute` with every request, uniform on [low, high]; at or above `threshold`
    the arms in `above` follow those models instead: a world for contextual experiments, where the best
    arm depends on the request (issue 16's crossing problem: `--context prompt_tokens=0:2000
    --arm-rate small=0.8 --above small=0.2 --arm-rate large=0.2 --above large=0.8`)."""

    attribute: str
    low: float
    high: float
    threshold: float
    above: Mapping[str, ArmModel]

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def as_json(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "low": self.low,
            "high": self.high,
            "threshold": self.threshold,
            "above": {arm: model.as_json() for arm, model in self.above.items()},
        }


class Environment:
    """The true reward of every arm over time: a base phase at t=0 and optional drift phases, and with a
    `context`, per request (each method takes the value sent; drifts change the models below it).

    An arm the router serves that the environment does not model is "unmodeled": its rewards are 0 and
    it is left out of the regret (it is counted separately so the report can say so).
    """

    def __init__(
        self, base: Mapping[str, ArmModel], drifts: Iterable[Phase] = (), context: Context | None = None
    ) -> None:
        if not base:
            raise ValueError("the environment needs at least one arm (--arm-rate or --arm-mean)")
        kinds = {model.kind for model in base.values()}
        if len(kinds) != 1:
            raise ValueError("use either --arm-rate (bernoulli) or --arm-mean (gaussian) arms, not both")
        self.kind: Kind = kinds.pop()
        phases = [Phase(0.0, dict(base))]
        for drift in sorted(drifts, key=lambda phase: phase.start):
            if drift.start <= 0:
                raise ValueError(f"--drift-at must be > 0 seconds, got {drift.start:g}")
            unknown = sorted(set(drift.arms) - set(base))
            if unknown:
                raise ValueError(f"--drift names arms the environment does not model: {', '.join(unknown)}")
            if any(model.kind != self.kind for model in drift.arms.values()):
                raise ValueError("a drift must use the same reward kind as the base arms")
            phases.append(Phase(drift.start, {**phases[-1].arms, **drift.arms}))
        self.phases: tuple[Phase, ...] = tuple(phases)
        self.arms: tuple[str, ...] = tuple(base)
        if context is not None:
            unknown = sorted(set(context.above) - set(base))
            if unknown:
                raise ValueError(f"--above names arms the environment does not model: {', '.join(unknown)}")
            if any(model.kind != self.kind for model in context.above.values()):
                raise ValueError("--above must use the same reward kind as the base arms")
        self.context = context

    def models_at(self, t: float, value: float | None = None) -> Mapping[str, ArmModel]:
        current = self.phases[0].arms
        for phase in self.phases[1:]:
            if t < phase.start:
                break
            current = phase.arms
        if self.context is not None and value is not None and value >= self.context.threshold:
            return {**current, **self.context.above}
        return current

    def expected(self, arm: str, t: float, value: float | None = None) -> float | None:
        """The arm's true expected reward at time t (and context value); None for an arm the environment
        does not model."""
        model = self.models_at(t, value).get(arm)
        return None if model is None else model.mean

    def best(self, t: float, value: float | None = None) -> float:
        return max(model.mean for model in self.models_at(t, value).values())

    def regret(self, arm: str, t: float, value: float | None = None) -> float | None:
        """Expected-reward regret of serving `arm` at time t: best(t) - expected(arm, t), >= 0 (with a
        context, against the best arm for the value the request carried)."""
        expected = self.expected(arm, t, value)
        return None if expected is None else self.best(t, value) - expected

    def sample(self, arm: str, t: float, rng: random.Random, value: float | None = None) -> float:
        model = self.models_at(t, value).get(arm)
        return 0.0 if model is None else model.sample(rng)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "phases": [
                {"start": phase.start, "arms": {arm: m.as_json() for arm, m in phase.arms.items()}}
                for phase in self.phases
            ],
            **({"context": self.context.as_json()} if self.context is not None else {}),
        }


def parse_arm(spec: str, kind: Kind, flag: str) -> tuple[str, ArmModel]:
    """`ARM=P` (bernoulli) or `ARM=MU[:SIGMA]` (gaussian) -> (arm, model). ValueError names the problem."""
    arm, sep, value = spec.partition("=")
    arm = arm.strip()
    if not sep or not arm or not value:
        form = "ARM=P" if kind == "bernoulli" else "ARM=MU[:SIGMA]"
        raise ValueError(f"{flag} {spec!r}: expected {form}")
    if kind == "bernoulli":
        rate = _number(value, f"{flag} {spec!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{flag} {spec!r}: a rate must be in [0, 1]")
        return arm, ArmModel("bernoulli", rate)
    mean_text, _, sigma_text = value.partition(":")
    mean = _number(mean_text, f"{flag} {spec!r}")
    sigma = _number(sigma_text, f"{flag} {spec!r}") if sigma_text else 1.0
    if sigma < 0:
        raise ValueError(f"{flag} {spec!r}: sigma must be >= 0")
    return arm, ArmModel("gaussian", mean, sigma)


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is not a finite number")
    return value


def parse_context(spec: str, above: Iterable[str], kind: Kind) -> Context:
    """`--context NAME=LOW:HIGH[@THRESHOLD]` (threshold: the middle) with its `--above ARM=...` models."""
    attribute, sep, value = spec.partition("=")
    bounds, _, threshold_text = value.partition("@")
    low_text, colon, high_text = bounds.partition(":")
    if not (sep and attribute.strip() and colon):
        raise ValueError(f"--context {spec!r}: expected NAME=LOW:HIGH[@THRESHOLD]")
    low, high = _number(low_text, f"--context {spec!r}"), _number(high_text, f"--context {spec!r}")
    if not low < high:
        raise ValueError(f"--context {spec!r}: LOW must be below HIGH")
    threshold = _number(threshold_text, f"--context {spec!r}") if threshold_text else (low + high) / 2
    models: dict[str, ArmModel] = {}
    for item in above:
        arm, model = parse_arm(item, kind, "--above")
        if arm in models:
            raise ValueError(f"--above: arm {arm} is given twice")
        models[arm] = model
    if not models:
        raise ValueError(
            "--context needs --above for at least one arm: else every arm is the same everywhere"
        )
    return Context(attribute.strip(), low, high, threshold, models)


def build_environment(
    arm_rates: Iterable[str],
    arm_means: Iterable[str],
    drift_at: float | None = None,
    drifts: Iterable[str] = (),
    context: str | None = None,
    above: Iterable[str] = (),
) -> Environment:
    """The environment from the CLI flags (--arm-rate / --arm-mean, --drift-at with --drift, --context
    with --above)."""
    rates, means, drift_specs = list(arm_rates), list(arm_means), list(drifts)
    if rates and means:
        raise ValueError("use either --arm-rate (bernoulli) or --arm-mean (gaussian), not both")
    kind: Kind = "gaussian" if means else "bernoulli"
    flag = "--arm-mean" if means else "--arm-rate"
    base: dict[str, ArmModel] = {}
    for spec in means or rates:
        arm, model = parse_arm(spec, kind, flag)
        if arm in base:
            raise ValueError(f"{flag}: arm {arm} is given twice")
        base[arm] = model
    if (drift_at is None) != (not drift_specs):
        raise ValueError("--drift-at and --drift go together: when, and which arms change")
    phases = []
    if drift_at is not None:
        phases.append(Phase(drift_at, dict(parse_arm(spec, kind, "--drift") for spec in drift_specs)))
    above_specs = list(above)
    if above_specs and context is None:
        raise ValueError("--above needs --context: above what")
    return Environment(base, phases, parse_context(context, above_specs, kind) if context else None)
