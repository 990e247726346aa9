"""Plain records the router store reads and writes: raw state as stored, and the writes it batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


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
class Refused:
    """A write the stored statistics cannot absorb (store/stats_scripts.py): none of it was written.

    reason: 'unreadable' (the field is not a finite number), 'overflow' (adding to it would not give a
    finite number), 'type' (`field` is a key holding `stored`, a type other than the one expected),
    'input' (the write itself is malformed)."""

    reason: str
    field: str
    stored: str  # what the field holds, cut to 64 characters


def script_result(reply: Any) -> bool | Refused:
    """A stats script's answer for one write: True applied, False already applied, or a Refused."""
    if isinstance(reply, Sequence) and not isinstance(reply, str | bytes) and len(reply) == 3:
        reason, field, stored = (str(part) for part in reply)
        return Refused(reason, field, stored)
    return bool(reply)


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
    """One outcome for RECORD_OUTCOMES (stats_scripts.py): the strings outcome_writes reads, with the
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
