"""Telemetry never fails a call: exceptions raised by metrics or tracing code are swallowed here.

A Prometheus or OpenTelemetry failure (a broken exporter or span processor, a misbehaving tracer, a
metric misuse) says nothing about the decision or the outcome, which are already made or applied when
it happens. Answering UNKNOWN for them would make callers retry what succeeded, so each one is counted
(mabrouter_telemetry_errors{part}), logged with its traceback the first time per part and then at DEBUG
(a failing exporter fails on every call), and the call answers what the routing logic decided.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

logger = logging.getLogger(__name__)


class TelemetryGuard:
    __slots__ = ("_counter", "_logged")

    def __init__(self, counter: Counter | None) -> None:
        self._counter = counter
        self._logged: set[str] = set()

    def failed(self, part: str, error: Exception) -> None:
        """Record that `part` ("metrics" or "tracing") raised `error`; never raises."""
        try:
            if self._counter is not None:
                self._counter.labels(part).inc()
        except Exception:  # noqa: BLE001, S110 - the metrics library is what fails: the log still says it
            pass
        if part in self._logged:
            logger.debug("%s raised %r again; the call was answered without it", part, error)
            return
        self._logged.add(part)
        logger.error(
            "%s raised %r; calls are answered without it (logged once, later ones at DEBUG, all counted "
            "in mabrouter_telemetry_errors{part=%r})",
            part,
            error,
            part,
            exc_info=error,
        )
