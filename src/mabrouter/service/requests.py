"""Malformed requests: bytes that do not decode get INVALID_ARGUMENT, every refusal is counted, and log
lines about them are rate-limited.

grpc.aio decodes a request before the servicer runs. With the generated handlers, protobuf's DecodeError
(invalid UTF-8 in a string field, messages nested deeper than protobuf's limit of 100 -- a Struct ~33
levels deep --, bytes that are not the message) escapes into grpc, which answers UNKNOWN and logs an
ERROR traceback per call: a caller could fill the logs at line rate. Here each method's deserializer
returns an `Undecodable` carrying the reason instead of raising, and the servicer refuses it with
INVALID_ARGUMENT (one isinstance check per call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter

from mabrouter.errors import InvalidDecisionIdError, MabrouterError
from mabrouter.service.guard import TelemetryGuard
from mabrouter.v1 import router_pb2

logger = logging.getLogger(__name__)

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"]
LOG_INTERVAL_SECONDS = 60.0  # one log line per kind of refusal per minute, per process
MAX_LOGGED_MESSAGE_CHARS = 300  # messages may quote caller input


class Undecodable:
    """What a request's deserializer returns for bytes that are not a valid message of its type."""

    __slots__ = ("kind", "message")

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # a label of mabrouter_bad_requests: a fixed set of values
        self.message = message


def undecodable(type_name: str, error: Exception) -> Undecodable:
    """The refusal for `error`, raised while parsing a `type_name`. upb's DecodeError messages are the
    only way to tell its reasons apart ("String field had bad UTF-8", "Exceeded upb_DecodeOptions_MaxDepth",
    "Wire format was corrupt")."""
    text = str(error)
    prefix = f"request is not a valid {type_name}: "
    if "UTF-8" in text:
        return Undecodable(
            "invalid_utf8",
            prefix + "a string field holds bytes that are not UTF-8 (protobuf strings must be UTF-8; "
            "send binary data base64-encoded)",
        )
    if "Depth" in text or "depth" in text:
        return Undecodable(
            "too_deep",
            prefix + "messages are nested deeper than protobuf's limit of 100 levels "
            "(attributes must be flat: a string, number, bool or list of strings per name)",
        )
    detail = text.rpartition(": ")[2][:100] or type(error).__name__
    return Undecodable("malformed", prefix + f"the bytes are not a protobuf encoding of it ({detail})")


def lenient(message_type: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """A request deserializer that never raises: grpc would turn any exception into UNKNOWN."""
    parse = message_type.FromString
    type_name = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, and whatever else a parser may raise
            return undecodable(type_name, exc)

    return deserialize


def router_handlers(servicer: object) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The Router service's method handlers, as the generated add_RouterServicer_to_server builds them
    but with lenient deserializers. Built from the proto's descriptor, so a method added to the proto is
    registered here too (and fails at start-up if the servicer lacks it)."""
    handlers = {}
    for method in ROUTER_SERVICE.methods:
        request_type = getattr(router_pb2, method.input_type.name)
        response_type = getattr(router_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient(request_type),
            response_serializer=response_type.SerializeToString,
        )
    return handlers


def add_router_service(servicer: object, server: grpc.aio.Server) -> None:
    handlers = router_handlers(servicer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ROUTER_SERVICE.full_name, handlers),)
    )
    # Registered methods skip the generic lookup per call (grpc >= 1.62), as the generated code does.
    server.add_registered_method_handlers(ROUTER_SERVICE.full_name, handlers)  # type: ignore[attr-defined]


def kind_of(error: MabrouterError) -> str:
    """The mabrouter_bad_requests kind of an ordinary INVALID_ARGUMENT refusal."""
    return "decision_id" if isinstance(error, InvalidDecisionIdError) else "invalid_value"


class Refusals:
    """Counts calls refused as malformed in mabrouter_bad_requests{method, kind} and logs them, at most
    one line per kind per minute (with how many were not logged since): the refusal itself tells the
    caller; the log only needs to tell an operator that it happens, and must not grow at line rate."""

    def __init__(
        self, counter: Counter | None, guard: TelemetryGuard, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._counter = counter
        self._guard = guard
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def refused(self, method: str, kind: str, message: str) -> None:
        """Never raises (a refusal must still be answered)."""
        if self._counter is not None:
            try:
                self._counter.labels(method, kind).inc()
            except Exception as exc:  # noqa: BLE001 - telemetry never fails a call
                self._guard.failed("metrics", exc)
        now = self._clock()
        logged_at = self._logged_at.get(kind)
        if logged_at is not None and now - logged_at < LOG_INTERVAL_SECONDS:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._logged_at[kind] = now
        unlogged = self._unlogged.pop(kind, 0)
        logger.warning(
            "refused a malformed %s call (%s): %s [logged once a minute per kind%s; every refusal is "
            "counted in mabrouter_bad_requests]",
            method,
            kind,
            message[:MAX_LOGGED_MESSAGE_CHARS],
            f"; {unlogged} more since the last line" if unlogged else "",
        )
