"""The store's ports: what the runtime and the CLI need from storage, in the domain's words.

Each is a small `typing.Protocol`. The Redis adapters (`RouterStore`, `AdminStore`) implement them, and
the runtime's unit tests drive the runtime with in-memory ones (tests/unit/fakes.py). Nothing here
names a key or a field: an experiment, an arm, a segment, a ramp step. Every method raises
`mabrouter.errors.StoreUnavailableError` when the store cannot be reached or refuses the command, never
a client library's exception, so callers decide what an outage means without knowing the backend.

Expected answers are values, not errors: a write the stored statistics cannot absorb is a `Refused`,
a duplicate outcome is False, a switch someone else changed first is False.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from mabrouter.store.records import (
    AuditEntry,
    Change,
    OutcomeWrite,
    RawState,
    Refused,
    StickyWrite,
    StoredExperiment,
    StoredSwitches,
    TrialCounts,
    UnattributedEdit,
)

__all__ = [
    "DecisionLog",
    "GuardianSwitches",
    "OperatorStore",
    "OutcomeLedger",
    "SnapshotSource",
    "Spool",
    "StickyStore",
    "TrialStore",
]


class SnapshotSource(Protocol):
    """What the refresher reads: everything stored, the change feed, and the audit of raw edits."""

    async def load_all(self) -> RawState:
        """Every experiment's stored hashes and the global switches, not yet validated."""
        ...

    async def load_switches(self, experiments: Sequence[str]) -> StoredSwitches:
        """The control hashes of `experiments` and the global switches, in one round trip."""
        ...

    async def watch_changes(
        self, stop: asyncio.Event, on_change: Callable[[str], None], on_subscribed: Callable[[], None]
    ) -> None:
        """Call on_change(scope) per change notice until `stop` is set or the feed fails (it raises).

        At most once: callers keep polling too, and resync after every `on_subscribed`."""
        ...

    async def record_unattributed(self, edit: UnattributedEdit) -> None:
        """Audit an edit made without the CLI, once however many replicas notice it."""
        ...


class TrialStore(Protocol):
    async def add_trials(self, batch_id: str, batch: Mapping[str, TrialCounts]) -> dict[str, Refused]:
        """Add each experiment's counts, all of them or none; idempotent per `batch_id` (a retried batch
        counts once). Returns the experiments whose stored statistics refused their counts."""
        ...


class DecisionLog(Protocol):
    async def append_decisions(self, entries: Sequence[tuple[str, str]], maxlen: int) -> dict[str, str]:
        """Append (experiment, encoded entry) pairs to each experiment's capped decision log, in order.
        Returns the experiments whose log refused its entries (why), which were not written."""
        ...


class StickyStore(Protocol):
    async def sticky_arm(self, experiment: str, salt: str, unit_id: str, timeout: float) -> str | None:
        """The arm the unit was assigned, or None; raises when the store is slower than `timeout`."""
        ...

    async def assign_sticky(self, assignments: Sequence[StickyWrite]) -> list[str | None]:
        """Store first assignments (the first writer wins); the arm each unit actually has, in order, or
        None for a unit whose stored assignment cannot be read or written (its key holds another type)."""
        ...


class OutcomeLedger(Protocol):
    async def record_outcomes(
        self, outcomes: Sequence[OutcomeWrite], log_maxlen: int = 0, now_ms: int = 0
    ) -> list[bool | Refused]:
        """Apply each outcome exactly once (by nonce), atomically with its outcome-log entry when
        `log_maxlen` > 0: True applied, False a duplicate, Refused when the statistics cannot absorb it
        (nothing of it written)."""
        ...


class Spool(Protocol):
    """Local, durable room for outcomes acknowledged while the ledger is unreachable (store/spool.py).
    `append` and `drop` block on the disk (fsync): callers on an event loop run them in a thread."""

    def __len__(self) -> int: ...

    def append(self, writes: list[OutcomeWrite]) -> None:
        """Durably keep the outcomes, or raise SpoolFullError (or OSError) having kept none."""
        ...

    def peek(self, count: int) -> list[OutcomeWrite]:
        """The oldest `count` kept outcomes, not yet removed."""
        ...

    def drop(self, count: int) -> None:
        """Remove the oldest `count` outcomes (applied to the ledger)."""
        ...


class GuardianSwitches(Protocol):
    """Switch changes a router makes on its own. Each is guarded: it applies only if the switch is still
    as judged, writes its audit entry and change notice with it, and returns True for the one winner."""

    async def kill_arm(self, experiment: str, arm: str, evidence: str, *, over_unkill: bool) -> bool:
        """Kill `arm` if its switch is unset, or (over_unkill) still the operator's unkill."""
        ...

    async def start_ramp(self, experiment: str, arm: str, now_ms: int, reason: str) -> bool:
        """Start the clock of the arm's first ramp step, if it has not started."""
        ...

    async def advance_ramp(self, experiment: str, arm: str, step: int, now_ms: int, reason: str) -> bool:
        """Move the arm from ramp step index `step` to `step + 1`, restarting the step clock at now_ms."""
        ...

    async def rebase_discount(self, experiment: str, new_epoch_ms: int, half_life_ms: float) -> bool:
        """Rescale the discounted statistics to a later epoch (idempotent); True when this call moved it."""
        ...


class OperatorStore(Protocol):
    """What the CLI (and reports) do as an operator: apply documents, flip switches, read state and logs."""

    def close(self) -> None: ...

    def ping(self) -> bool:
        """Whether the store answers (False, never an error)."""
        ...

    def apply(self, name: str, doc_json: str, change: Change) -> int:
        """Store a validated document; its new version (greater than any before)."""
        ...

    def set_kill(
        self, experiment: str | None, arm: str | None, killed: bool, change: Change
    ) -> tuple[int | None, bool]:
        """Kill or unkill an experiment (None: every experiment) or one of its arms. Returns the new
        version (None when the stored one is not a number) and whether it was killed before."""
        ...

    def set_rollout(self, experiment: str, percent: float, change: Change) -> tuple[int | None, str]:
        """Set the share of units exposed; the new version and the rollout stored before ('' if none)."""
        ...

    def set_archived(self, experiment: str, archived: bool, change: Change) -> tuple[int | None, str]:
        """Archive or unarchive an experiment (nothing else of it changes); the new version and the
        `archived` value stored before ('' when it was not archived)."""
        ...

    def key_families(self, experiment: str) -> dict[str, int]:
        """How many stored keys of each family the experiment has, by the family's key pattern
        (`mabrouter:{name}:stats`, `mabrouter:{name}:sticky:*`...)."""
        ...

    def delete(self, experiment: str, change: Change) -> int | None:
        """Remove every stored key of an archived experiment and unlist it (audited in the global log);
        the number of keys removed, or None when it is not archived (its definition stays)."""
        ...

    def count_decisions(self, experiment: str, since_ms: int, limit: int) -> int:
        """How many decisions the experiment's decision log holds from `since_ms` on, counting no
        further than `limit` (counting costs Redis time in proportion)."""
        ...

    def names(self) -> list[str]:
        """Every listed experiment, sorted (archived ones included)."""
        ...

    def get(self, name: str) -> StoredExperiment | None: ...

    def global_control(self) -> Mapping[str, str]:
        """The global switches as stored (decode with store.controls_codec)."""
        ...

    def read_decisions(self, experiment: str, since_ms: int) -> Iterator[dict[str, str]]:
        """The decision log from `since_ms` on, oldest first."""
        ...

    def read_outcomes(self, experiment: str, since_ms: int) -> Iterator[dict[str, str]]:
        """The outcome log (applied outcomes) from `since_ms` on, oldest first."""
        ...

    def audit(
        self, experiments: Sequence[str], count: int, *, global_switches: bool = False
    ) -> list[AuditEntry]:
        """The newest `count` audit entries of these experiments (and the global switches), oldest first."""
        ...
