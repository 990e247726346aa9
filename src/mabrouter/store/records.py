"""Plain records the stores read and write: raw state as stored, the writes the router batches, and what
the operator's store reads and changes. The ports (store/ports.py) speak in these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mabrouter.core.posterior import FloatArray
from mabrouter.store.keys import GLOBAL_SCOPE, KILL_ARM_PREFIX, VERSION
from mabrouter.store.linear_codec import outcome_increments


@dataclass(frozen=True, slots=True)
class RawExperiment:
    """An experiment as stored, not yet validated: the router validates before trusting it."""

    name: str
    config: Mapping[str, str]
    stats: Mapping[str, str]
    control: Mapping[str, str]
    # Hashes Redis refused to read (a key of another type, written by hand): family -> Redis's reason.
    # Such a hash reads as empty above, which must not be taken for its content.
    unreadable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RawState:
    experiments: list[RawExperiment]
    global_control: Mapping[str, str]
    global_unreadable: str = ""  # why Redis refused to read the global switches ('' when it did not)


@dataclass(frozen=True, slots=True)
class StoredSwitches:
    """The operator switches alone, as stored now: read on a change notice, ahead of everything else."""

    controls: Mapping[str, Mapping[str, str]]  # experiment -> its control hash (empty when absent)
    global_control: Mapping[str, str] | None  # None: Redis refused to read it (keep the last good)


# The scope the global switches go by in audit entries and logs.
GLOBAL_SWITCHES = GLOBAL_SCOPE


@dataclass(frozen=True, slots=True)
class UnattributedEdit:
    """A change made in the store without the CLI: `target` ('exp/doc', 'exp/kill:arm', 'exp') in `scope`
    went from `before` to `after` under an unchanged version (store/raw_edits.py)."""

    scope: str
    target: str
    before: str
    after: str


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
    # A contextual decision's model signature and feature vector, as its id carries them (the recorder
    # checked that it decodes); its reward is added to the model's sums (store/linear_codec.py).
    context: str = ""


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
    nonce at position 10 (for the log entry), a contextual model's prefix at 11, the count n of its
    increments at 12 and the increments from 13 (store/linear_codec.py), then the guardrail metric
    triples."""
    discount = outcome.discount
    prefix, increments = (
        outcome_increments(outcome.context, outcome.arm, outcome.reward) if outcome.context else ("", [])
    )
    args = [
        outcome.arm,
        repr(outcome.reward),
        repr(outcome.reward * outcome.reward),
        str(outcome.ttl_seconds),
        "1" if outcome.counted else "0",
        outcome.segment,
        *((str(discount[0]), repr(discount[1]), repr(discount[2])) if discount else ("", "", "")),
        outcome.nonce,
        prefix,
        str(len(increments)),
        *(repr(increment) for increment in increments),
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


@dataclass(slots=True)
class TrialCounts:
    """One experiment's counters for one flush, added all together or not at all.

    trials: policy decisions served per arm, and per (segment, arm) for segments that decide on their
    own data; sampled: decisions sampled per arm; expected: the decisions each arm should have had under
    the allocations in force (sampled vs expected is the sample-ratio check); holdout and bandit: the
    holdout split among exposed units. discount: for an experiment with a half-life, (epoch ms, half-life
    ms, weight of a trial now at that epoch): its arms' discounted trials are trials x weight."""

    trials: dict[str, float] = field(default_factory=dict)
    segment_trials: dict[tuple[str, str], float] = field(default_factory=dict)
    sampled: dict[str, float] = field(default_factory=dict)
    expected: dict[str, float] = field(default_factory=dict)
    holdout: float = 0.0
    bandit: float = 0.0
    # Exposed decisions (holdout and bandit) per holdout cell of their unit (core/hashing.holdout_cell).
    holdout_cells: dict[int, float] = field(default_factory=dict)
    discount: tuple[int, float, float] | None = None
    # Contextual experiments: (model signature, arm) -> the sum of x x^T over its decisions in the flush.
    contextual: dict[tuple[str, str], FloatArray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredExperiment:
    """An experiment's hashes as stored, not yet validated: decode it with store.experiment_decoder."""

    name: str
    config: Mapping[str, str]
    stats: Mapping[str, str]
    control: Mapping[str, str]
    unreadable: Mapping[str, str] = field(default_factory=dict)  # as RawExperiment.unreadable

    @property
    def raw(self) -> RawExperiment:
        return RawExperiment(self.name, self.config, self.stats, self.control, self.unreadable)

    @property
    def updated_ms(self) -> int:
        text = self.config.get("updated_ms", "0")
        return int(text) if text.isdigit() else 0

    @property
    def version_text(self) -> str:
        """The stored version as written (it may have been edited by hand: not parsed here)."""
        return self.config.get(VERSION, "?")


@dataclass(frozen=True, slots=True)
class Change:
    """Who changed what, and why: becomes one audit entry."""

    actor: str
    action: str
    reason: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    scope: str  # the experiment, or "_global" for the global switches
    entry_id: str
    fields: Mapping[str, str]  # ts_ms, actor, action, target, before, after, reason, version


def arm_of_kill_target(experiment: str, target: str) -> str | None:
    """The arm an audit target such as 'ranker/kill:fast' names, if it is an arm's kill switch."""
    prefix = f"{experiment}/{KILL_ARM_PREFIX}"
    return target.removeprefix(prefix) if target.startswith(prefix) else None
