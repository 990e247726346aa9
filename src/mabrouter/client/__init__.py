"""mabrouter.client: what an inference service imports to ask its router sidecar for an arm.

Routing fails open: ``route()`` never raises for a slow, missing or misbehaving router. It returns the
``default_arm`` you pass (``Assignment.fallback`` is True, ``Assignment.error`` says why) within the
deadline, so the sidecar can never take the service down with it. Outcomes are reported off the
request path by :class:`OutcomeReporter`, which buffers, batches and retries until the router
acknowledges them (the router counts a decision id once, so retries never double-count).

Usage::

    from mabrouter.client import OutcomeReporter, RouterClient

    client = RouterClient("127.0.0.1:50051")          # 50 ms deadline per route() by default
    reporter = OutcomeReporter(client)                 # background thread, shares the channel
    assignment = client.route("ranker", user_id, attributes={"country": "DE"}, default_arm="ranker-v1")
    endpoint = assignment.payload.get("endpoint", DEFAULT_ENDPOINT)
    ...                                                # serve with assignment.arm
    reporter.report(assignment.decision_id, 1.0)       # non-blocking; ignored when decision_id is ""
    ...
    reporter.close()                                   # at shutdown: flush, then stop
    client.close()

Asyncio services use :class:`AsyncRouterClient` (same API, ``await client.route(...)``) and can share
the thread-based :class:`OutcomeReporter`: ``report()`` never blocks the event loop; run ``flush()`` /
``close()`` with ``await asyncio.to_thread(reporter.close, 5.0)``.

Tools that must see every failure instead of failing open (the load test, the demo, ``mabrouter
health``) use :mod:`mabrouter.client.wire`: raw calls, nothing added per call.
"""

from __future__ import annotations

from mabrouter.client._aio import AsyncRouterClient
from mabrouter.client._common import CHANNEL_OPTIONS, CLIENT_FALLBACK, Assignment, AttributeValue
from mabrouter.client._delivery import ReporterStats
from mabrouter.client._reporter import OutcomeReporter
from mabrouter.client._sync import RouterClient

__all__ = [
    "CHANNEL_OPTIONS",
    "CLIENT_FALLBACK",
    "Assignment",
    "AsyncRouterClient",
    "AttributeValue",
    "OutcomeReporter",
    "ReporterStats",
    "RouterClient",
]
