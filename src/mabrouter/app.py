"""The one composition root: settings -> Redis adapters -> runtime -> gRPC server."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal

import numpy as np

from mabrouter.config import Settings
from mabrouter.runtime.engine import RoutingEngine, StalenessPolicy
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.outcomes import OutcomeRecorder
from mabrouter.runtime.refresher import Refresher, every, watch_changes
from mabrouter.runtime.signer import DecisionSigner
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.runtime.sticky import StickyAssignments
from mabrouter.runtime.trials import TrialBuffer, TrialFlusher
from mabrouter.service.server import HealthReporter, build_server
from mabrouter.service.servicer import RouterServicer
from mabrouter.store.router_store import RouterStore

log = logging.getLogger(__name__)

INSECURE_DEFAULT_SECRET = b"mabrouter-insecure-local-secret"


def decision_keys(settings: Settings) -> tuple[bytes, list[bytes]]:
    """The key that signs new decision ids, and every key accepted when verifying one."""
    if settings.decision_secret is not None:
        current = settings.decision_secret.get_secret_value().encode()
    elif settings.decision_secret_file is not None:
        current = settings.decision_secret_file.read_bytes().strip()
    else:
        log.warning(
            "no MABROUTER_DECISION_SECRET set: using the built-in local secret; anyone can forge "
            "decision ids. Set a random secret shared by all replicas before production use"
        )
        current = INSECURE_DEFAULT_SECRET
    if len(current) < 16 and current != INSECURE_DEFAULT_SECRET:
        log.warning("the decision secret is shorter than 16 bytes; use a long random value")
    accepted = [current]
    if settings.decision_secret_previous is not None:
        accepted.append(settings.decision_secret_previous.get_secret_value().encode())
    return current, accepted


class RouterApp:
    """A running router: start() binds and serves, stop() drains and flushes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._refresh_now = asyncio.Event()
        self.store = RouterStore.from_url(settings.redis_url)
        self.holder = SnapshotHolder()
        process_prefix = secrets.token_hex(6)
        self.trials = TrialBuffer()
        self.flusher = TrialFlusher(self.trials, self.store, process_prefix)
        rng = np.random.default_rng()
        self.refresher = Refresher(self.store, self.holder, SnapshotBuilder(rng))
        signing_key, accepted_keys = decision_keys(settings)
        outcomes = OutcomeRecorder(self.store, self.holder, accepted_keys, settings.decision_ttl_seconds)
        self.sticky = StickyAssignments(self.store)
        staleness = StalenessPolicy(settings.max_staleness_seconds, settings.stale_policy == "serve_control")
        self.engine = RoutingEngine(
            self.holder, self.trials, self.sticky, DecisionSigner(signing_key, process_prefix), rng, staleness
        )
        servicer = RouterServicer(self.engine, outcomes)
        self.health = HealthReporter()
        self.server, self.port = build_server(servicer, self.health, settings.listen)

    async def start(self) -> None:
        await self.health.start_not_serving()
        await self.server.start()
        self._tasks = [
            asyncio.create_task(
                every(
                    self.settings.refresh_interval_ms / 1000, self._stopping, self._refresh, self._refresh_now
                ),
                name="refresher",
            ),
            asyncio.create_task(
                watch_changes(self.store, self._stopping, self._refresh_now), name="change-feed"
            ),
            asyncio.create_task(
                every(self.settings.flush_interval_ms / 1000, self._stopping, self._flush_writes),
                name="write-flusher",
            ),
        ]
        log.info(
            "mabrouter listening on %s (port %d), redis %s",
            self.settings.listen,
            self.port,
            _redact(self.settings.redis_url),
        )

    async def _flush_writes(self) -> None:
        await self.flusher.flush()
        await self.sticky.flush()

    async def _refresh(self) -> None:
        await self.refresher.refresh_once()
        await self.health.update(loaded=self.holder.current is not None, fresh=not self.engine.is_stale())

    async def stop(self) -> None:
        """Stop taking calls, let in-flight ones finish, flush buffered trial counts, close Redis."""
        await self.health.servicer.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds)
        self._stopping.set()
        self._refresh_now.set()
        await asyncio.gather(*self._tasks)
        for _ in range(3):  # the drained batch, then retries of it if Redis hiccups
            await self._flush_writes()
            if not self.flusher.unsent() and not self.trials.pending():
                break
        if self.flusher.unsent() or self.trials.pending():
            log.error(
                "exiting with %d trial counts not written to Redis",
                self.flusher.unsent() + self.trials.pending(),
            )
        await self.store.close()
        log.info("mabrouter stopped")


def _redact(url: str) -> str:
    """Hide a password in a Redis URL before it reaches a log."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    app = RouterApp(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining")
    await app.stop()
