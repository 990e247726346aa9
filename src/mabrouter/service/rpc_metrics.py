"""mabrouter_rpc_errors_total{method, code}: every Router call that ends with a status other than OK.

Each method of the servicer is wrapped once, before the server is built (service.requests looks the
methods up by name then), not with a grpc.aio server interceptor: an interceptor runs a coroutine and
builds a handler for every call, and Route would pay for it. A wrapped call that answers OK costs one
more coroutine frame and a `try` block, nothing else; the work is done only when the call fails.

The status is read from the call's context, where `context.abort` (every refusal of the servicer)
recorded it. An exception that escapes without an abort is answered UNKNOWN by grpc; a call cancelled
while it runs (the client went away, or its deadline passed) ends CANCELLED or DEADLINE_EXCEEDED for
its client. Calls that grpc refuses before any handler runs are not seen here: more than
MABROUTER_MAX_CONCURRENT_RPCS in flight (RESOURCE_EXHAUSTED) and unknown methods (UNIMPLEMENTED).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.service.requests import ROUTER_SERVICE

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def status_code_name(error: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status a call that raised `error` ended with, by name (grpc.StatusCode)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):  # set by context.abort
        return code.name
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"


def counted(behavior: Behavior, method: str, metrics: RouterMetrics) -> Behavior:
    """`behavior`, counting the calls that fail in mabrouter_rpc_errors{method, code}."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except BaseException as exc:  # the call's outcome, re-raised untouched: grpc answers it
            try:
                code = status_code_name(exc, context)
            except Exception:  # noqa: BLE001 - a context that cannot say: still count the failure
                code = "UNKNOWN"
            metrics.add(metrics.rpc_errors, method, code)  # never raises
            raise

    return call


def count_rpc_errors(servicer: object, metrics: RouterMetrics) -> None:
    """Wrap every Router method of `servicer` in place (an attribute of the instance shadows the class's
    method), before the server is built from it."""
    for method in ROUTER_SERVICE.methods:
        setattr(servicer, method.name, counted(getattr(servicer, method.name), method.name, metrics))
