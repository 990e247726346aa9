"""The exposure and outcome log: every decision and every applied outcome, for unbiased analysis.

Entries are buffered in bounded memory on the request path and written to the store's capped logs in
batches (with Redis: one script call per experiment per batch, store/scripts.py APPEND_LOG, not one XADD
per entry).
Each entry is JSON-encoded when it is recorded (a few at a time, by the engine's recording timer), so
the flush only joins strings: encoding a whole flush at once held the event loop for ~1 us per entry
(230 us for the 200 entries of a 100 ms flush at 2k decisions/s), which Route calls waited out.
A decision entry carries the propensity the policy had for the served arm, which is what
inverse-propensity-weighted (off-policy) estimates need. When the buffer is full, entries are dropped
and counted (a metric and a log line), never queued without bound. Outcomes are logged by the script
that applies them (store/stats_scripts.py RECORD_OUTCOMES), live or replayed from the spool, never here:
an entry buffered here is lost with the process.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable

from mabrouter.core.decide import Decision, RouteInput
from mabrouter.core.decision_id import DecisionToken, KeyedMac
from mabrouter.errors import StoreUnavailableError
from mabrouter.store.ports import DecisionLog

log = logging.getLogger(__name__)

LogEntry = tuple[str, str]  # (experiment, JSON array [field, value, field, value, ...])

# A JSON string literal, quotes included (the C encoder json.dumps uses for str with ensure_ascii=False).
_quote: Callable[[str], str] = json.encoder.encode_basestring


def decision_entry(
    request: RouteInput, decision: Decision, token: DecisionToken, unit: str, segments: tuple[str, ...]
) -> str:
    """A decision's log entry: the JSON array [field, value, ...] that APPEND_LOG XADDs.

    Written out rather than built as a list and JSON-encoded (3.7 -> 1.7 us per entry with one segment,
    timeit): only the values a caller or an operator chose (unit, arm, segment names and values) need
    JSON quoting; the rest are ours (base64url, digits, an enum name, a float repr)."""
    entry = (
        f'["d","{token.nonce}","ts","{token.issued_ms}","unit",{_quote(unit)},"arm",{_quote(decision.arm)},'
        f'"reason","{decision.reason._name_}","p","{decision.propensity!r}","v","{decision.config_version}",'
        f'"counted","{1 if decision.counted else 0}"'
    )
    if token.context:  # a contextual decision: its model and feature vector, as its id carries them
        entry += f',"x","{token.context}"'
    for name in segments:  # unique: the schema drops repeats
        value = request.attributes.get(name)
        if value is not None:
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            entry += f",{_quote(f'seg.{name}')},{_quote(text)}"
    return entry + "]"


def unit_hasher(key: bytes) -> Callable[[str], str]:
    """Pseudonymise unit ids with a keyed hash (stable across replicas sharing the key): the first 16
    bytes of HMAC-SHA256, in hex."""
    mac = KeyedMac(key)
    return lambda unit_id: mac(unit_id.encode()).hex()


class ExposureLog:
    def __init__(
        self,
        store: DecisionLog,
        maxlen: int,
        unit_label: Callable[[str], str],
        max_pending: int = 200_000,
        on_drop: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self._store = store
        self._maxlen = maxlen
        self._unit_label = unit_label
        self._pending: deque[LogEntry] = deque()
        self._max_pending = max_pending
        self._on_drop = on_drop
        self._dropping = False
        self._refusals_reported: set[tuple[str, str]] = set()

    @property
    def enabled(self) -> bool:
        return self._maxlen > 0

    @property
    def maxlen(self) -> int:
        """The streams' approximate cap; 0 when the log is off."""
        return max(self._maxlen, 0)

    def _append(self, entry: LogEntry) -> None:
        if len(self._pending) >= self._max_pending:
            if not self._dropping:
                log.warning(
                    "exposure log buffer full (%d entries, Redis slow or down): dropping", self._max_pending
                )
            self._dropping = True
            self._on_drop(1)
            return
        self._pending.append(entry)

    def decision(
        self, request: RouteInput, decision: Decision, token: DecisionToken, segments: tuple[str, ...]
    ) -> None:
        if not self.enabled:
            return
        entry = decision_entry(request, decision, token, self._unit_label(request.unit_id), segments)
        self._append((request.experiment, entry))

    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, batch: int = 5000) -> None:
        while self._pending:
            entries = [self._pending.popleft() for _ in range(min(batch, len(self._pending)))]
            try:
                refused = await self._store.append_decisions(entries, self._maxlen)
            except StoreUnavailableError as exc:
                log.debug("exposure log not written yet (%s); will retry", exc)
                self._pending.extendleft(reversed(entries))
                return
            self._dropping = False
            if refused:
                self._drop_refused(entries, refused)

    def _drop_refused(self, entries: list[LogEntry], refused: dict[str, str]) -> None:
        """Entries a log refused (its key holds another type): retrying cannot help until an operator
        repairs the key, and keeping them would crowd out every other experiment's; dropped, counted,
        and logged once per experiment and problem."""
        self._on_drop(sum(1 for experiment, _ in entries if experiment in refused))
        for experiment, why in refused.items():
            if (experiment, why) not in self._refusals_reported:
                self._refusals_reported.add((experiment, why))
                log.error(
                    "decision log of %s cannot be written (%s): its entries are dropped until the key is "
                    "deleted or repaired",
                    experiment,
                    why,
                )
