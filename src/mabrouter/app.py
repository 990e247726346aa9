"""The one composition root: settings -> Redis adapters -> runtime -> gRPC server, or the in-process router
(mabrouter.embedded, built on the same RouterRuntime)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal

import grpc
import numpy as np
from opentelemetry import trace
from prometheus_client import start_http_server

from mabrouter.config import Settings
from mabrouter.config import decision_keys as resolve_decision_keys
from mabrouter.errors import SecretError, StartupError
from mabrouter.runtime.engine import Recorders, StalenessPolicy, build_engine
from mabrouter.runtime.exposure import ExposureLog, unit_hasher
from mabrouter.runtime.guardian import Guardian
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.metric_families import SampleRatioCollector
from mabrouter.runtime.metrics import RouterMetrics, SnapshotCollector
from mabrouter.runtime.outcomes import OutcomeRecorder
from mabrouter.runtime.refresher import Refresher, every, watch_changes
from mabrouter.runtime.signer import DecisionSigner, DecisionVerifier
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.runtime.sticky import StickyAssignments
from mabrouter.runtime.trials import TrialBuffer, TrialFlusher
from mabrouter.service.rpc_metrics import count_rpc_errors
from mabrouter.service.server import HealthReporter, build_server, server_credentials
from mabrouter.service.servicer import RouterServicer
from mabrouter.service.tracing import Tracing
from mabrouter.store.connect import redact
from mabrouter.store.router_store import RouterStore
from mabrouter.store.spool import OutcomeSpool
from mabrouter.telemetry import configure_tracing

log = logging.getLogger(__name__)

GUARDIAN_INTERVAL_SECONDS = 1.0


def decision_keys(settings: Settings) -> tuple[bytes, list[bytes]]:
    """The key that signs new decision ids, and every key accepted when verifying one.

    Raises StartupError for a missing, short or unreadable secret: a router that signs with a guessable
    key lets anyone forge outcomes, so it must not serve (unless settings.dev_insecure_secret says so).
    """
    try:
        keys = resolve_decision_keys(settings)
    except SecretError as exc:
        raise StartupError(str(exc)) from None  # the message is the whole story; no traceback
    for warning in keys.warnings:
        log.warning("INSECURE DECISION SECRET: %s", warning)  # on every start, so it cannot be missed
    return keys.signing, list(keys.accepted)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def _split_host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class RouterRuntime:
    """Everything a router runs but its surface: the Redis adapters, the snapshot and its refresher, the
    routing engine, the write buffers and their flusher, the outcome ledger, the guardian, the metrics.

    `mabrouter serve` (RouterApp, below) puts a gRPC server in front of it; the in-process router
    (`mabrouter.embedded`) calls it from the caller's threads. Both are built here, so there is one
    wiring of every rule. start_background() runs the background loops on the current event loop,
    stop_background() ends them and flushes what was buffered.
    """

    def __init__(self, settings: Settings, *, engine_loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`engine_loop`: decisions are also made on other threads, and this loop records them
        (SharedRoutingEngine); None for a router whose decisions are all made on its loop."""
        signing_key, accepted_keys = decision_keys(settings)  # refuse before building anything
        self.settings = settings
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._refresh_now = asyncio.Event()
        self.store = RouterStore.from_url(settings.redis_url)
        self.holder = SnapshotHolder()
        process_prefix = secrets.token_hex(6)
        self.unit_label = unit_hasher(signing_key) if settings.unit_id_privacy == "hash" else str
        self.metrics = RouterMetrics()
        self.trials = TrialBuffer()
        self.flusher = TrialFlusher(
            self.trials,
            self.store,
            process_prefix,
            on_error=lambda: self.metrics.add(self.metrics.redis_errors, "flush"),
        )
        self.exposure = ExposureLog(
            self.store,
            settings.exposure_log_maxlen,
            self.unit_label,
            on_drop=lambda n: self.metrics.add(self.metrics.dropped, "exposure_log", amount=n),
        )
        self.builder = SnapshotBuilder(
            on_failure=lambda name: self.metrics.add(self.metrics.build_failures, name),
        )
        self.refresher = Refresher(self.store, self.holder, self.builder)
        self.sticky = StickyAssignments(self.store)
        self.guardian = Guardian(
            self.store, self.holder, np.random.default_rng(), self.metrics.guardian_actions
        )
        self.engine = build_engine(
            self.holder,
            sticky=self.sticky,
            signer=DecisionSigner(signing_key, process_prefix),
            staleness=StalenessPolicy(
                settings.max_staleness_seconds, settings.stale_policy == "serve_control"
            ),
            recorders=Recorders(self.trials, self.exposure, self.metrics),
            loop=engine_loop,
        )
        self.spool = (
            OutcomeSpool(settings.spool_dir, settings.spool_max_entries) if settings.spool_dir else None
        )
        self.outcomes = OutcomeRecorder(
            self.store,
            self.holder,
            DecisionVerifier(accepted_keys, settings.decision_ttl_seconds),
            exposure=self.exposure,
            metrics=self.metrics,
            spool=self.spool,
        )
        self.metrics.registry.register(
            SnapshotCollector(
                self.holder,
                invalid_documents=lambda: self.builder.invalid_documents,
                unattributed=lambda: self.builder.unattributed_total,
                pending_writes=lambda: {
                    "trials": self.trials.pending() + self.flusher.unsent(),
                    "exposure_log": self.exposure.pending(),
                    "outcome_spool": self.outcomes.spooled(),
                },
            )
        )
        self.metrics.registry.register(SampleRatioCollector(self.holder, self.builder.holdout_cells))

    def adopt_orphaned_spools(self) -> None:
        """Take over the spools of processes that died: acknowledged outcomes, replayed by the flusher."""
        if self.spool is not None:
            self.spool.adopt_orphans()

    def start_background(self) -> None:
        """Start refreshing, watching for change notices, guarding and flushing (on the running loop)."""
        self._tasks = [
            asyncio.create_task(
                every(
                    self.settings.refresh_interval_ms / 1000, self._stopping, self._refresh, self._refresh_now
                ),
                name="refresher",
            ),
            asyncio.create_task(
                watch_changes(self.store, self._stopping, self._refresh_now, self.refresher),
                name="change-feed",
            ),
            asyncio.create_task(
                every(GUARDIAN_INTERVAL_SECONDS, self._stopping, self.guardian.check), name="guardian"
            ),
            asyncio.create_task(
                every(self.settings.flush_interval_ms / 1000, self._stopping, self._flush_writes),
                name="write-flusher",
            ),
        ]

    async def _flush_writes(self) -> None:
        self.engine.record_pending()  # usually done already by the engine's recording timer
        await self.outcomes.replay_spool()
        await self.flusher.flush()
        await self.sticky.flush()
        await self.exposure.flush()

    async def _refresh(self) -> None:
        try:
            if not await self.refresher.refresh_once():
                self.metrics.add(self.metrics.redis_errors, "refresh")
        finally:  # whatever happened to the refresh, the surface must say so (health)
            await self._refreshed()

    async def _refreshed(self) -> None:
        """Called after every refresh attempt, successful or not."""

    def unflushed(self) -> int:
        """Buffered writes (trial counts, exposure-log entries) not in Redis yet."""
        return self.flusher.unsent() + self.trials.pending() + self.exposure.pending()

    async def stop_background(self) -> None:
        """End the background loops, flush buffered writes, close Redis and the spool."""
        self._stopping.set()
        self._refresh_now.set()
        await asyncio.gather(*self._tasks)
        await self.refresher.settle()
        for _ in range(3):  # the drained batch, then retries of it if Redis hiccups
            await self._flush_writes()
            if not self.unflushed():
                break
        if self.unflushed():
            log.error("exiting with %d buffered writes not in Redis", self.unflushed())
        await self.store.close()
        if self.spool is not None:
            if len(self.spool):
                log.warning("%d acknowledged outcomes stay in the spool for the next start", len(self.spool))
            self.spool.close()


class RouterApp(RouterRuntime):
    """A running `mabrouter serve`: the runtime behind a gRPC server. start() binds and serves, stop()
    drains and flushes."""

    def __init__(self, settings: Settings, tracer: trace.Tracer | None = None) -> None:
        """`tracer` overrides the OTEL_* configuration (tests pass one with an in-memory exporter)."""
        super().__init__(settings)
        self.metrics_port = 0
        self.tracer_provider = None if tracer is not None else configure_tracing()
        if tracer is None and self.tracer_provider is not None:
            tracer = self.tracer_provider.get_tracer("mabrouter")
        tracing = Tracing(tracer, self.unit_label) if tracer is not None else None
        self.health = HealthReporter()
        servicer = RouterServicer(
            self.engine,
            self.outcomes,
            self.metrics,
            tracing,
            max_outcome_calls=max(1, settings.max_concurrent_rpcs // 2),
        )
        count_rpc_errors(servicer, self.metrics)  # before build_server looks its methods up
        self.metrics.add_process_metrics()
        self.server, self.port = build_server(
            servicer,
            self.health,
            settings.listen,
            reuse_port=settings.reuse_port,
            credentials=_credentials(settings),
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
        )

    async def start(self) -> None:
        self.adopt_orphaned_spools()
        await self.health.start_not_serving()
        await self.server.start()
        if self.settings.metrics_listen:
            host, port = _split_host_port(self.settings.metrics_listen)
            try:
                http_server, _ = start_http_server(port, host, registry=self.metrics.registry)
            except OSError as exc:
                await self.server.stop(0)
                raise StartupError(
                    f"cannot serve metrics on {self.settings.metrics_listen}: {exc.strerror} "
                    "(set MABROUTER_METRICS_LISTEN to a free host:port, or '' to disable)"
                ) from exc
            self._metrics_http = http_server
            self.metrics_port = int(http_server.server_port)
        self.start_background()
        log.info(
            "mabrouter listening on %s (port %d), metrics on %s, redis %s",
            self.settings.listen,
            self.port,
            self.settings.metrics_listen or "(off)",
            redact(self.settings.redis_url),
        )

    async def _refreshed(self) -> None:
        snapshot = self.holder.current
        await self.health.update(
            loaded=snapshot is not None,
            fresh=not self.engine.is_stale() and snapshot is not None and not snapshot.errors,
        )

    async def stop(self) -> None:
        """Stop taking calls, let in-flight ones finish, flush buffered writes, close Redis."""
        await self.health.servicer.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds)
        await self.stop_background()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the batch span processor
        if self.metrics_port:
            self._metrics_http.shutdown()
        log.info("mabrouter stopped")


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
