"""Acts on evidence: kills an arm that breaches a guardrail, and moves ramping arms through their steps.

Every replica judges the same snapshot; each change is guarded by the store (it applies only over the
switch as judged), so exactly one replica wins each kill or step and writes the audit entry with the
evidence. Nothing here ever unkills an arm: only an operator does. A ramp advances only when its step's
minimum duration has passed and the arm breaches no guardrail; it halts on a breach.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from prometheus_client import Counter

from mabrouter.core.discount import needs_rebase
from mabrouter.core.evidence import Breach, divergences, guardrail_breaches, metrics_since
from mabrouter.core.model import ArmStats
from mabrouter.core.snapshot import ExperimentState
from mabrouter.errors import StoreUnavailableError
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.store.ports import GuardianSwitches

log = logging.getLogger(__name__)


class Guardian:
    def __init__(
        self, store: GuardianSwitches, holder: SnapshotHolder, rng: np.random.Generator, actions: Counter
    ) -> None:
        self._store = store
        self._holder = holder
        self._rng = rng
        self._actions = actions
        # experiment -> (the state last judged, its breaches). The state itself is kept, not its id():
        # CPython reuses the address of a freed state for a later one with new statistics.
        self._judged: dict[str, tuple[ExperimentState, frozenset[str]]] = {}
        # (experiment, arm) -> the arm's statistics when this process first saw an operator's unkill of
        # it: its guardrails then judge only evidence gathered after that, so a new regression is still
        # caught but the evidence the operator overruled never counts again.
        self._unkilled_at: dict[tuple[str, str], ArmStats] = {}
        self._failing: set[str] = set()  # experiments whose judging raised (logged once)

    async def check(self) -> None:
        snapshot = self._holder.current
        if snapshot is None or snapshot.global_controls.killed:
            return
        for name, state in snapshot.experiments.items():
            if state.controls.killed or state.sampler is None:
                continue
            try:
                breached = await self._guard(name, state)
                await self._ramp(name, state, breached)
                await self._rebase(name, state)
            except StoreUnavailableError as exc:
                log.debug("guardian could not act on %s yet: %s", name, exc)
            except Exception:  # one experiment's odd numbers must not stop the others' guards
                if name not in self._failing:
                    log.exception("guardian cannot judge %s; the other experiments are still judged", name)
                self._failing.add(name)
            else:
                self._failing.discard(name)

    def breaches(self, state: ExperimentState, name: str = "") -> list[Breach]:
        stats = self._fresh_evidence(name, state)
        found = guardrail_breaches(state.spec, stats, state.live, self._rng)
        if state.spec.divergence_guardrail:
            cleared = state.controls.operator_cleared  # the posterior has no "since": an unkill stands
            live_names = {
                state.spec.arms[i].name
                for i in state.live
                if i != state.control_index and state.spec.arms[i].name not in cleared
            }
            found += [
                Breach(
                    d.arm,
                    "divergence",
                    0.975,
                    f"reward 95% CI [{d.ci_low:.4g}, {d.ci_high:.4g}] outside "
                    f"expected {d.expected:g} +/- {d.tolerance:g}",
                )
                for d in divergences(state.spec, state.posteriors, self._rng)
                if d.arm in live_names
            ]
        return found

    def _fresh_evidence(self, name: str, state: ExperimentState) -> tuple[ArmStats, ...]:
        """The statistics to judge: for an arm an operator unkilled, only what came after the unkill."""
        cleared = state.controls.operator_cleared
        for key in [key for key in self._unkilled_at if key[0] == name and key[1] not in cleared]:
            del self._unkilled_at[key]  # killed or re-armed since: judged on everything again
        if not cleared:
            return state.stats
        stats = list(state.stats)
        for index, arm in enumerate(state.spec.arms):
            if arm.name in cleared:
                baseline = self._unkilled_at.setdefault((name, arm.name), state.stats[index])
                stats[index] = metrics_since(state.stats[index], baseline)
        return tuple(stats)

    async def _guard(self, name: str, state: ExperimentState) -> frozenset[str]:
        last = self._judged.get(name)
        if last is not None and last[0] is state:  # same statistics as last time: same verdict
            return last[1]
        breaches = self.breaches(state, name)
        breached = frozenset(breach.arm for breach in breaches)
        for breach in breaches:
            # Over an operator's unkill only on evidence gathered since it (_fresh_evidence).
            unkilled = breach.arm in state.controls.operator_cleared
            evidence = breach.evidence + (" (evidence since the operator's unkill)" if unkilled else "")
            if await self._store.kill_arm(name, breach.arm, evidence, over_unkill=unkilled):
                self._actions.labels(name, breach.arm, "auto_kill").inc()
                log.warning("guardrail killed arm %s of %s: %s", breach.arm, name, breach.evidence)
        # Remembered only once every kill was attempted: a kill the store could not take (Redis down)
        # is tried again at the next check, not only when the statistics next change.
        self._judged[name] = (state, breached)
        return breached

    async def _rebase(self, name: str, state: ExperimentState) -> None:
        """Move the forward-decay epoch forward before the weights grow large (any replica; idempotent)."""
        now_ms = int(time.time() * 1000)
        half_life = state.spec.half_life_seconds
        if half_life and needs_rebase(now_ms, state.discount_epoch_ms, half_life):
            await self._store.rebase_discount(name, now_ms, half_life * 1000.0)

    async def _ramp(self, name: str, state: ExperimentState, breached: frozenset[str]) -> None:
        now_ms = int(time.time() * 1000)
        for index in state.live:
            arm = state.spec.arms[index]
            if not arm.ramp or arm.name in breached:
                continue  # a breach halts the ramp (and kills the arm)
            step = state.controls.ramp_steps.get(arm.name, 0)
            since = state.controls.ramp_since_ms.get(arm.name)
            if since is None:
                reason = f"step 1 of {len(arm.ramp)}: {arm.ramp[0].share:.0%}"
                await self._store.start_ramp(name, arm.name, now_ms, reason)
                continue
            if step >= len(arm.ramp) or now_ms - since < arm.ramp[step].min_seconds * 1000:
                continue
            if state.stats[index].trials < arm.ramp[step].min_trials:
                continue  # not enough traffic yet for its guardrails to have judged it
            following = f"{arm.ramp[step + 1].share:.0%}" if step + 1 < len(arm.ramp) else "uncapped"
            reason = (
                f"step {step + 1} held {arm.ramp[step].min_seconds:g}s, "
                f"{state.stats[index].trials:g} trials, healthy; next {following}"
            )
            if await self._store.advance_ramp(name, arm.name, step, now_ms, reason):
                self._actions.labels(name, arm.name, "ramp_advance").inc()
                log.info("ramp of %s/%s advanced to step %d (%s)", name, arm.name, step + 2, following)
