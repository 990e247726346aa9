"""One Route, end to end but for the wire: sticky lookup, decide, count the trial, sign the decision."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mabrouter.core.decide import Decision, RouteInput, decide
from mabrouter.core.model import Reason
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.signer import DecisionSigner
from mabrouter.runtime.sticky import StickyAssignments
from mabrouter.runtime.trials import TrialBuffer


@dataclass(frozen=True, slots=True)
class StalenessPolicy:
    max_seconds: float
    serve_control: bool


@dataclass(frozen=True, slots=True)
class Routed:
    decision: Decision
    decision_id: str  # '' when the router decided nothing (FALLBACK_DEFAULT)
    stale: bool


class RoutingEngine:
    def __init__(
        self,
        holder: SnapshotHolder,
        trials: TrialBuffer,
        sticky: StickyAssignments,
        signer: DecisionSigner,
        rng: np.random.Generator,
        staleness: StalenessPolicy,
    ) -> None:
        self._holder = holder
        self._trials = trials
        self._sticky = sticky
        self._signer = signer
        self._rng = rng
        self._staleness = staleness

    def is_stale(self) -> bool:
        snapshot = self._holder.current
        return snapshot is not None and time.monotonic() - snapshot.loaded_at > self._staleness.max_seconds

    async def route(self, request: RouteInput) -> Routed:
        """Decide one request. Raises MabrouterError for a request that cannot be answered."""
        snapshot = self._holder.current
        state = snapshot.experiments.get(request.experiment) if snapshot is not None else None
        if state is not None and state.spec.sticky_ttl_seconds:  # only sticky experiments may await
            request = await self._sticky.resolve(request, state)
        stale = self.is_stale()
        decision = decide(request, snapshot, self._rng, stale_control=stale and self._staleness.serve_control)
        if decision.reason is Reason.FALLBACK_DEFAULT:
            return Routed(decision, "", stale)
        if decision.counted:
            self._trials.add(request.experiment, decision.arm)
        if state is not None and state.spec.sticky_ttl_seconds:
            self._sticky.remember(request, decision, state)
        return Routed(decision, self._signer.sign(request.experiment, decision), stale)
