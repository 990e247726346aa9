"""An in-memory store implementing the router's ports (store/ports.py), for unit tests of the runtime.

It keeps what each port was asked to do in plain domain terms (counts per arm, switches per arm, outcomes
by nonce) and mimics the guarantees the runtime relies on: a trial batch counts once per id, an outcome
once per nonce, a sticky unit keeps its first arm, a guarded switch change wins only over the switch as
judged. `down` makes every call raise StoreUnavailableError, as the Redis adapter does in an outage, and
`failing` only the calls it names; `refuse_trials` and `refuse_outcomes` answer a write with a Refused,
as the stats scripts do.
Whether the Redis scripts keep those guarantees is the integration tests' job, against a real Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from mabrouter.errors import StoreUnavailableError
from mabrouter.store.records import (
    OutcomeWrite,
    RawState,
    Refused,
    StickyWrite,
    StoredSwitches,
    TrialCounts,
    UnattributedEdit,
)

K = TypeVar("K")


@dataclass
class Switch:
    """One switch change a router made: which, with what evidence, and whether it won."""

    experiment: str
    arm: str
    action: str  # auto-kill, ramp-start, ramp-advance
    reason: str
    won: bool


@dataclass
class Totals:
    """What the trial batches added up to, for one experiment."""

    trials: dict[str, float] = field(default_factory=dict)
    segment_trials: dict[tuple[str, str], float] = field(default_factory=dict)
    sampled: dict[str, float] = field(default_factory=dict)
    expected: dict[str, float] = field(default_factory=dict)
    discounted_trials: dict[str, float] = field(default_factory=dict)
    holdout: float = 0.0
    bandit: float = 0.0


def _add(into: dict[K, float], counts: Mapping[K, float]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0.0) + value


class FakeStore:
    """Implements SnapshotSource, TrialStore, DecisionLog, StickyStore, OutcomeLedger, GuardianSwitches."""

    def __init__(self, state: RawState | None = None) -> None:
        self.state = state or RawState([], {})
        self.down = False
        self.failing: set[str] = set()  # methods that fail alone (by name), the others answering
        self.calls: list[str] = []  # every port call, by method name, failed ones included
        self.refuse_trials: dict[str, Refused] = {}  # experiment -> its counts are refused
        self.refuse_outcomes: dict[str, Refused] = {}  # nonce -> that outcome is refused
        self.refuse_log: dict[str, str] = {}  # experiment -> why its decision log refuses entries
        self.totals: dict[str, Totals] = {}
        self.batches: list[str] = []  # applied batch ids, in order
        self.decisions: list[tuple[str, str]] = []
        self.sticky: dict[tuple[str, str, str], str] = {}
        self.unstorable: set[tuple[str, str, str]] = set()  # sticky keys of another type
        self.outcomes: dict[str, OutcomeWrite] = {}  # nonce -> applied outcome
        self.unattributed: list[UnattributedEdit] = []
        self.kills: dict[tuple[str, str], str] = {}  # (experiment, arm) -> '1' killed, '0' operator unkill
        self.ramps: dict[tuple[str, str], tuple[int, int]] = {}  # (experiment, arm) -> (step, since ms)
        self.switches: list[Switch] = []
        self.rebases: list[tuple[str, int, float]] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down or name in self.failing:
            raise StoreUnavailableError("cannot reach Redis: the fake store is down")

    # -- SnapshotSource -------------------------------------------------------------------------------
    async def load_all(self) -> RawState:
        self._call("load_all")
        return self.state

    async def load_switches(self, experiments: Sequence[str]) -> StoredSwitches:
        self._call("load_switches")
        stored = {item.name: item.control for item in self.state.experiments}
        return StoredSwitches({name: stored.get(name, {}) for name in experiments}, self.state.global_control)

    async def watch_changes(
        self, stop: asyncio.Event, on_change: Callable[[str], None], on_subscribed: Callable[[], None]
    ) -> None:
        self._call("watch_changes")
        on_subscribed()
        await stop.wait()

    async def record_unattributed(self, edit: UnattributedEdit) -> None:
        self._call("record_unattributed")
        self.unattributed.append(edit)

    # -- TrialStore -----------------------------------------------------------------------------------
    async def add_trials(self, batch_id: str, batch: Mapping[str, TrialCounts]) -> dict[str, Refused]:
        self._call("add_trials")
        refused = {name: self.refuse_trials[name] for name in batch if name in self.refuse_trials}
        if batch_id in self.batches:
            return refused
        self.batches.append(batch_id)
        for name, counts in batch.items():
            if name in refused:
                continue
            totals = self.totals.setdefault(name, Totals())
            _add(totals.trials, counts.trials)
            _add(totals.segment_trials, counts.segment_trials)
            _add(totals.sampled, counts.sampled)
            _add(totals.expected, counts.expected)
            if counts.discount is not None:
                scale = counts.discount[2]
                _add(totals.discounted_trials, {arm: n * scale for arm, n in counts.trials.items()})
            totals.holdout += counts.holdout
            totals.bandit += counts.bandit
        return refused

    # -- DecisionLog ----------------------------------------------------------------------------------
    async def append_decisions(self, entries: Sequence[tuple[str, str]], maxlen: int) -> dict[str, str]:
        self._call("append_decisions")
        self.decisions.extend(entry for entry in entries if entry[0] not in self.refuse_log)
        return {name: why for name, why in self.refuse_log.items() if any(e[0] == name for e in entries)}

    # -- StickyStore ----------------------------------------------------------------------------------
    async def sticky_arm(self, experiment: str, salt: str, unit_id: str, timeout: float) -> str | None:
        self._call("sticky_arm")
        return self.sticky.get((experiment, salt, unit_id))

    async def assign_sticky(self, assignments: Sequence[StickyWrite]) -> list[str | None]:
        self._call("assign_sticky")
        arms: list[str | None] = []
        for item in assignments:
            key = (item.experiment, item.salt, item.unit_id)
            if key in self.unstorable:
                arms.append(None)
                continue
            current = self.sticky.get(key)
            if current is None or current == item.replaces:
                self.sticky[key] = current = item.arm
            arms.append(current)
        return arms

    # -- OutcomeLedger --------------------------------------------------------------------------------
    async def record_outcomes(
        self, outcomes: Sequence[OutcomeWrite], log_maxlen: int = 0, now_ms: int = 0
    ) -> list[bool | Refused]:
        self._call("record_outcomes")
        results: list[bool | Refused] = []
        for outcome in outcomes:
            if outcome.nonce in self.refuse_outcomes:
                results.append(self.refuse_outcomes[outcome.nonce])
            elif outcome.nonce in self.outcomes:
                results.append(False)
            else:
                self.outcomes[outcome.nonce] = outcome
                results.append(True)
        return results

    # -- GuardianSwitches -----------------------------------------------------------------------------
    def _switch(self, experiment: str, arm: str, action: str, reason: str, won: bool) -> bool:
        self.switches.append(Switch(experiment, arm, action, reason, won))
        return won

    async def kill_arm(self, experiment: str, arm: str, evidence: str, *, over_unkill: bool) -> bool:
        self._call("kill_arm")
        won = self.kills.get((experiment, arm), "") == ("0" if over_unkill else "")
        if won:
            self.kills[experiment, arm] = "1"
        return self._switch(experiment, arm, "auto-kill", evidence, won)

    async def start_ramp(self, experiment: str, arm: str, now_ms: int, reason: str) -> bool:
        self._call("start_ramp")
        won = (experiment, arm) not in self.ramps
        if won:
            self.ramps[experiment, arm] = (0, now_ms)
        return self._switch(experiment, arm, "ramp-start", reason, won)

    async def advance_ramp(self, experiment: str, arm: str, step: int, now_ms: int, reason: str) -> bool:
        self._call("advance_ramp")
        won = self.ramps.get((experiment, arm), (0, 0))[0] == step
        if won:
            self.ramps[experiment, arm] = (step + 1, now_ms)
        return self._switch(experiment, arm, "ramp-advance", reason, won)

    async def rebase_discount(self, experiment: str, new_epoch_ms: int, half_life_ms: float) -> bool:
        self._call("rebase_discount")
        self.rebases.append((experiment, new_epoch_ms, half_life_ms))
        return True
