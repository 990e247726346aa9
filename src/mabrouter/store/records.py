"""Plain records the router store reads and writes: raw state as stored, and the writes it batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawExperiment:
    """An experiment as stored, not yet validated: the router validates before trusting it."""

    name: str
    config: Mapping[str, str]
    stats: Mapping[str, str]
    control: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RawState:
    experiments: list[RawExperiment]
    global_control: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class OutcomeWrite:
    experiment: str
    arm: str
    nonce: str
    reward: float
    counted: bool
    ttl_seconds: int
    # Guardrail metrics (name, value) observed with the outcome.
    metrics: tuple[tuple[str, float], ...] = ()
    segment: str = ""
    # Forward decay: the epoch (ms) the weight is scaled to, the half-life (ms), and the weight.
    discount: tuple[int, float, float] | None = None


@dataclass(frozen=True, slots=True)
class StickyWrite:
    experiment: str
    salt: str
    unit_id: str
    arm: str
    ttl_seconds: int
    replaces: str = ""  # the (killed) arm this assignment replaces; '' for a first assignment


Discount = tuple[int, float]  # (epoch ms the increments are scaled to, half-life ms)


def discount_args(discount: Discount | tuple[int, float] | None) -> tuple[str, str]:
    return (str(discount[0]), repr(discount[1])) if discount else ("", "")


def outcome_args(outcome: OutcomeWrite) -> list[str]:
    """One outcome for RECORD_OUTCOMES (scripts.py): the strings RECORD_OUTCOME took as ARGV, with the
    nonce at position 10 (for the log entry) and the guardrail metric triples after it."""
    discount = outcome.discount
    args = [
        outcome.arm,
        repr(outcome.reward),
        repr(outcome.reward * outcome.reward),
        str(outcome.ttl_seconds),
        "1" if outcome.counted else "0",
        outcome.segment,
        *((str(discount[0]), repr(discount[1]), repr(discount[2])) if discount else ("", "", "")),
        outcome.nonce,
    ]
    for name, value in outcome.metrics:
        args += (name, repr(value), repr(value * value))
    return args


@dataclass(frozen=True, slots=True)
class GuardedChange:
    """Set `field` to `value` only if it currently is (unless=False) or is not (unless=True) `expected`."""

    field: str
    value: str
    expected: str
    unless: bool
    actor: str
    action: str
    reason: str
    also: tuple[tuple[str, str], ...] = ()
