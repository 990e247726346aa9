"""Issues signed decision ids (the signing key, a unique nonce and the wall clock in one place) and
verifies the ids outcomes come back with."""

from __future__ import annotations

import time
from collections.abc import Sequence

from mabrouter.core import decision_id
from mabrouter.core.decide import Decision
from mabrouter.core.features import encode_context


class DecisionSigner:
    __slots__ = ("_mac", "_next_nonce")

    def __init__(self, key: bytes, process_prefix: str) -> None:
        self._mac = decision_id.KeyedMac(key)
        self._next_nonce = decision_id.nonce_factory(process_prefix)

    def sign(
        self, experiment: str, decision: Decision, trace: str = ""
    ) -> tuple[str, decision_id.DecisionToken]:
        """The signed id and the token it encodes. `trace`: the decision span's trace and span ids."""
        context = decision.context
        # Positional: a NamedTuple built from keywords costs twice as much, and this runs per decision.
        token = decision_id.DecisionToken(
            experiment,
            decision.arm,
            decision.config_version,
            time.time_ns() // 1_000_000,  # issued_ms
            self._next_nonce(),
            decision.counted,
            trace,
            decision.segment,
            encode_context(context.signature, context.vector) if context is not None else "",
        )
        return decision_id.encode(token, self._mac), token


class DecisionVerifier:
    """Checks the decision ids outcomes come back with: signed with any accepted key (key rotation),
    and younger than the decision TTL, after which an outcome no longer counts."""

    __slots__ = ("_keys", "_max_age_ms")

    def __init__(self, accepted_keys: Sequence[bytes], ttl_seconds: int) -> None:
        self._keys = tuple(accepted_keys)
        self._max_age_ms = ttl_seconds * 1000

    def verify(self, raw_id: str, now_ms: int) -> decision_id.DecisionToken:
        """The token the id encodes; raises InvalidDecisionIdError or ExpiredDecisionIdError."""
        return decision_id.decode(raw_id, self._keys, now_ms, self._max_age_ms)

    def seconds_left(self, token: decision_id.DecisionToken, now_ms: int) -> int:
        """How long (at least 1 s) the outcome's seen marker must outlive now: until the id expires."""
        return max(1, (token.issued_ms + self._max_age_ms - now_ms) // 1000 + 1)
