"""mabrouter.embedded: the router inside your Python process, interchangeable with the sidecar.

The same engine, snapshot, write buffers, outcome ledger, guardian and kill switches as ``mabrouter
serve``, built by the same composition root (``mabrouter.app.RouterRuntime``) and sharing Redis with the
sidecars: a decision made here can be rewarded through a sidecar's ``ReportOutcome`` and the other way
round, counted once; operators' kills, rollouts and rules reach both alike. What it saves is the gRPC
round trip per decision (docs/in-process.md has the numbers and when to pick which).

Usage::

    from mabrouter.client import OutcomeReporter
    from mabrouter.embedded import EmbeddedRouter

    router = EmbeddedRouter()                          # MABROUTER_* settings, as `mabrouter serve` reads
    router.start()                                     # waits up to 5 s for the first snapshot
    assignment = router.route("ranker", user_id, attributes={"country": "DE"}, default_arm="ranker-v1")
    ...                                                # serve with assignment.arm / assignment.payload
    router.report(assignment.decision_id, 1.0)         # or OutcomeReporter(router).report(...)
    ...
    router.close()                                     # at shutdown: delivers outcomes, flushes counts

``route()`` has RouterClient's call shape and returns its :class:`~mabrouter.client.Assignment`; it fails
open the same way (``default_arm``, ``fallback=True``, ``reason="CLIENT_FALLBACK"``, ``error``, logged
once) for a caller's mistake, a router not started or closed, and never waits on Redis (a sticky
experiment's first look-up of a unit excepted, bounded by ``timeout``). ``report()`` and
``OutcomeReporter(router)`` have OutcomeReporter's semantics; ``record_outcomes()`` is ReportOutcomes
(acknowledged when it returns, guardrail metrics included).

Threads and asyncio: every method is thread-safe. Refreshing, flushing, the change feed and the guardian
run on a private event loop in a daemon thread, never on yours. In asyncio code, ``route()`` does not
block the loop but for sticky experiments; ``await route_async(...)`` never does.

Pre-forking servers (gunicorn, uWSGI, multiprocessing): create and start the router in each worker after
the fork (gunicorn's ``post_fork`` hook, a worker's start-up). A router started before fork() serves only
the default arm in the children (its thread is not copied) and says so once.
"""

from __future__ import annotations

from mabrouter.embedded._router import EmbeddedRouter

__all__ = ["EmbeddedRouter"]
