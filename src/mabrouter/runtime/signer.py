"""Issues signed decision ids: the signing key, a unique nonce and the wall clock in one place."""

from __future__ import annotations

import time

from mabrouter.core import decision_id
from mabrouter.core.decide import Decision


class DecisionSigner:
    __slots__ = ("_mac", "_next_nonce")

    def __init__(self, key: bytes, process_prefix: str) -> None:
        self._mac = decision_id.KeyedMac(key)
        self._next_nonce = decision_id.nonce_factory(process_prefix)

    def sign(
        self, experiment: str, decision: Decision, trace: str = ""
    ) -> tuple[str, decision_id.DecisionToken]:
        """The signed id and the token it encodes. `trace`: the decision span's trace and span ids."""
        token = decision_id.DecisionToken(
            experiment=experiment,
            arm=decision.arm,
            config_version=decision.config_version,
            issued_ms=time.time_ns() // 1_000_000,
            nonce=self._next_nonce(),
            counted=decision.counted,
            trace=trace,
            segment=decision.segment,
        )
        return decision_id.encode(token, self._mac), token
