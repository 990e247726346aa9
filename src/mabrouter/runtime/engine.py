"""One Route, end to end but for the wire: sticky lookup, decide, count the trial, sign the decision."""

from __future__ import annotations

import numpy as np

from mabrouter.core.decide import Decision, RouteInput, decide
from mabrouter.core.model import Reason
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.signer import DecisionSigner
from mabrouter.runtime.sticky import StickyAssignments
from mabrouter.runtime.trials import TrialBuffer


class RoutingEngine:
    def __init__(
        self,
        holder: SnapshotHolder,
        trials: TrialBuffer,
        sticky: StickyAssignments,
        signer: DecisionSigner,
        rng: np.random.Generator,
    ) -> None:
        self._holder = holder
        self._trials = trials
        self._sticky = sticky
        self._signer = signer
        self._rng = rng

    async def route(self, request: RouteInput) -> tuple[Decision, str]:
        """The decision and its signed id ('' when the router decided nothing). Raises MabrouterError."""
        snapshot = self._holder.current
        state = snapshot.experiments.get(request.experiment) if snapshot is not None else None
        if state is not None and state.spec.sticky_ttl_seconds:  # only sticky experiments may await
            request = await self._sticky.resolve(request, state)
        decision = decide(request, snapshot, self._rng)
        if decision.reason is Reason.FALLBACK_DEFAULT:
            return decision, ""  # nothing to attribute
        if decision.counted:
            self._trials.add(request.experiment, decision.arm)
        if state is not None and state.spec.sticky_ttl_seconds:
            self._sticky.remember(request, decision, state)
        return decision, self._signer.sign(request.experiment, decision)
