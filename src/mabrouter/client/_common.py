"""What the sync and asyncio clients share: the Assignment, request building, fail-open bookkeeping."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.protobuf import struct_pb2
from opentelemetry import propagate

from mabrouter.v1 import router_pb2

log = logging.getLogger("mabrouter.client")

CLIENT_FALLBACK: Final = "CLIENT_FALLBACK"
DEFAULT_TARGET: Final = "127.0.0.1:50051"
DEFAULT_TIMEOUT: Final = 0.05

# Options for a channel to a sidecar on the same host. Reuse them when you build your own channel
# (TLS, Unix socket) and pass it as `channel=`.
CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    # Route has a deadline of a few ms: a retry could never fit, and the caller falls back anyway.
    ("grpc.enable_retries", 0),
    # Detect a dead peer on an active connection. gRPC servers with default settings (like
    # mabrouter's) reject pings more often than every 5 minutes, so a shorter period gets the
    # connection closed with "too_many_pings"; never ping an idle connection for the same reason.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Reconnect to a restarted sidecar within about a second (gRPC's default backoff grows to 120 s,
    # and with wait_for_ready=False every call fails fast while the channel waits to reconnect).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)

# The caller's mistakes: a WARNING once per (experiment, code), so misconfiguration is visible.
CALLER_MISTAKES: Final = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
TRANSPORT_LOG_INTERVAL: Final = 30.0

AttributeValue = str | float | bool | Sequence[str]


@dataclass(frozen=True, slots=True)
class Assignment:
    """The arm to serve for one request.

    `reason` is the name of the router's Reason (``"SAMPLED"``, ``"KILLED"``, ``"STICKY"``...) or
    ``"CLIENT_FALLBACK"`` when the client could not get an answer. `fallback` is True whenever the
    caller's `default_arm` is served because nothing decided: the client fell back (`error` says
    why, e.g. ``"DEADLINE_EXCEEDED: Deadline Exceeded"``) or the router had no configuration yet
    (reason ``"FALLBACK_DEFAULT"``, `error` None). A fallback has an empty `decision_id`: there is no
    outcome to report (``OutcomeReporter.report("")`` ignores it).
    """

    arm: str
    decision_id: str = ""
    reason: str = CLIENT_FALLBACK
    propensity: float = 1.0
    config_version: int = 0
    payload: dict[str, str] = field(default_factory=dict)
    fallback: bool = False
    error: str | None = None
    # True when the router decided from a snapshot older than its maximum staleness (Redis unreachable).
    stale: bool = False
    # The arm the shadow policy would have chosen ('' when the experiment has no shadow arms).
    shadow_arm: str = ""


def fallback_assignment(default_arm: str, error: str) -> Assignment:
    return Assignment(arm=default_arm, reason=CLIENT_FALLBACK, propensity=1.0, fallback=True, error=error)


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def check_route_arguments(default_arm: str, timeout: float | None) -> None:
    """Programming errors a test run catches at once (these raise ValueError; nothing else does)."""
    if not default_arm:
        raise ValueError("default_arm is empty: name the arm to serve when the router cannot answer")
    check_timeout(timeout)


def to_struct(attributes: Mapping[str, AttributeValue]) -> struct_pb2.Struct:
    """Typed attributes -> google.protobuf.Struct. Raises TypeError for an unsupported value."""
    struct = struct_pb2.Struct()
    for key, value in attributes.items():
        if not isinstance(key, str):
            raise TypeError(f"attribute name {key!r} is not a string")
        slot = struct.fields[key]
        if isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, int | float):
            slot.number_value = float(value)
        elif isinstance(value, str):
            slot.string_value = value
        elif isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
            slot.list_value.SetInParent()
            for item in value:
                slot.list_value.values.add().string_value = item
        else:
            raise TypeError(unsupported_attribute(key, value))
    return struct


def unsupported_attribute(key: str, value: object) -> str:
    """Why `value` cannot be an attribute (the in-process router refuses the same values the same way)."""
    return (
        f"attribute {key!r}: {type(value).__name__} is not supported; "
        "use a str, a number, a bool or a list of str (flatten objects: 'user.tier')"
    )


def route_request(
    experiment: str, unit_id: str, attributes: Mapping[str, AttributeValue] | None, default_arm: str
) -> Any:
    request = router_pb2.RouteRequest(experiment=experiment, unit_id=unit_id, default_arm=default_arm)
    if attributes:
        request.attributes.CopyFrom(to_struct(attributes))
    return request


def trace_metadata() -> tuple[tuple[str, str], ...] | None:
    """The current OpenTelemetry context as gRPC metadata (W3C `traceparent`, `tracestate`, `baggage`)."""
    carrier: dict[str, str] = {}
    try:
        propagate.inject(carrier)
    except Exception:  # tracing must never break routing
        log.debug("could not inject the trace context", exc_info=True)
        return None
    return tuple((key.lower(), value) for key, value in carrier.items()) or None


def reason_name(value: int) -> str:
    known = router_pb2.Reason.DESCRIPTOR.values_by_number.get(value)
    # A newer router may send a reason this client does not know yet.
    return str(known.name) if known is not None else f"REASON_{value}"


def assignment_from(response: Any, default_arm: str) -> Assignment:
    if not response.arm:
        return fallback_assignment(default_arm, "INTERNAL: the router answered without an arm")
    reason_value = int(response.reason)
    return Assignment(
        arm=str(response.arm),
        decision_id=str(response.decision_id),
        reason=reason_name(reason_value),
        propensity=float(response.propensity),
        config_version=int(response.config_version),
        payload=dict(response.payload),
        fallback=reason_value == router_pb2.FALLBACK_DEFAULT,
        stale=bool(response.stale),
        shadow_arm=str(response.shadow_arm),
    )


def status_error(code: grpc.StatusCode, details: str | None) -> str:
    return f"{code.name}: {details or code.value[1]}"


def exception_error(exc: BaseException) -> str:
    return f"UNKNOWN: {type(exc).__name__}: {exc}"


class FailureLog:
    """Makes fallbacks visible without flooding the log from the request path.

    Caller mistakes (INVALID_ARGUMENT, NOT_FOUND) are logged once per (experiment, code); any other
    failure at most once every 30 s per status code.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warned: set[tuple[str, grpc.StatusCode]] = set()
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def record(self, experiment: str, code: grpc.StatusCode | None, error: str, default_arm: str) -> None:
        if code is not None and code in CALLER_MISTAKES:
            with self._lock:
                if (experiment, code) in self._warned:
                    return
                self._warned.add((experiment, code))
            log.warning(
                "mabrouter: route(%r) was refused (%s); serving default_arm %r. Fix the call or the "
                "experiment; this is logged once per experiment and code",
                experiment,
                error,
                default_arm,
            )
            return
        key = code.name if code is not None else "UNKNOWN"
        now = time.monotonic()
        with self._lock:
            last = self._last_logged.get(key)
            if last is not None and now - last < TRANSPORT_LOG_INTERVAL:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last_logged[key] = now
            suppressed = self._suppressed.pop(key, 0)
        log.warning(
            "mabrouter: route(%r) failed open (%s); serving default_arm %r%s",
            experiment,
            error,
            default_arm,
            f" ({suppressed} similar failures in the last {TRANSPORT_LOG_INTERVAL:.0f} s not logged)"
            if suppressed
            else "",
        )
