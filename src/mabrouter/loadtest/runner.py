"""Runs a load test: preflight, worker processes, live progress, and the merged counts.

Workers are started with the "spawn" method, not "fork": the parent has already used gRPC (the
preflight), and gRPC's core is not fork-safe once initialised. Each worker has its own channel and event
loop; they start together at a shared wall-clock instant once every one of them is connected.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any, Final

from rich.console import Console

from mabrouter.client.wire import RouterWire
from mabrouter.errors import LoadTestStartError, RouterCallError
from mabrouter.loadtest.driver import RunConfig, WorkerResult, run_worker
from mabrouter.loadtest.progress import Monitor, progress_view
from mabrouter.loadtest.stats import Tally

START_DELAY: Final = 0.2  # seconds between the start signal and the first send
READY_TIMEOUT: Final = 30.0
REFRESH: Final = 0.5
NO_EVENT: Final[tuple[str, int, Any]] = ("", -1, None)


@dataclass
class RunResult:
    tally: Tally
    histograms: list[bytes]
    elapsed: float
    started_at: float  # wall clock (epoch seconds)
    failures: list[str] = field(default_factory=list)
    worker_decisions: list[int] = field(default_factory=list)


def preflight(config: RunConfig, connect_timeout: float) -> None:
    """Connect and make one Route call; otherwise LoadTestStartError, whose message names the problem."""
    with RouterWire(config.target) as wire:
        if not wire.wait_ready(connect_timeout):
            raise LoadTestStartError(
                f"cannot reach the router at {config.target} (no connection within {connect_timeout:g} s); "
                "is `mabrouter serve` running there?"
            )
        try:
            wire.route(
                config.experiment,
                "loadtest-preflight",
                default_arm=config.default_arm,
                timeout=max(config.timeout, 2.0),
            )
        except RouterCallError as exc:
            raise LoadTestStartError(
                f"the router at {config.target} refused Route for experiment {config.experiment!r}: {exc}"
            ) from None


def worker_process(
    config: RunConfig, index: int, events: Queue[Any], go: Event, start_wall: Synchronized[float]
) -> None:
    """A worker process's entry point: run the worker and send ready/progress/done (or failed) events."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops its workers

    def wait_start() -> float:
        if not go.wait(READY_TIMEOUT * 2):
            raise TimeoutError("no start signal from the parent")
        return time.monotonic() + (start_wall.value - time.time())

    try:
        result = asyncio.run(
            run_worker(
                config,
                index,
                on_ready=lambda: events.put(("ready", index, None)),
                wait_start=wait_start,
                report=lambda progress: events.put(("progress", index, progress)),
            )
        )
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        events.put(("failed", index, f"{type(exc).__name__}: {exc}".rstrip(": ")))
        return
    events.put(("done", index, result))


@dataclass
class _Workers:
    """The worker processes and what the parent shares with them."""

    processes: list[Any]
    events: Queue[Any]
    go: Event
    start_wall: Synchronized[float]


def run(config: RunConfig, console: Console, connect_timeout: float = 5.0) -> RunResult:
    """Run the load test. LoadTestStartError when it cannot start; otherwise the merged counts."""
    preflight(config, connect_timeout)
    context = multiprocessing.get_context("spawn")
    events: Queue[Any] = context.Queue()
    go = context.Event()
    start_wall: Synchronized[float] = context.Value("d", 0.0)
    processes = [
        context.Process(
            target=worker_process,
            args=(config, index, events, go, start_wall),
            name=f"mabrouter-loadtest-{index}",
            daemon=True,
        )
        for index in range(config.processes)
    ]
    workers = _Workers(processes, events, go, start_wall)
    for process in processes:
        process.start()
    try:
        failures: list[str] = []
        ready = _wait_ready(workers, READY_TIMEOUT + connect_timeout, failures)
        started_at = time.time() + START_DELAY
        start_wall.value = started_at
        go.set()
        start = time.monotonic() + START_DELAY
        results = _collect(config, console, workers, ready, start=start, failures=failures)
        elapsed = max(time.monotonic() - start, 1e-9)  # wall time, with in-flight calls and outcome flush
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(5)
    if not results:
        raise LoadTestStartError(f"no worker finished: {'; '.join(failures)}")
    tally = Tally(config.bucket_seconds)
    for result in results:
        tally.merge(result.tally)
    histograms = [r.histogram for r in results]
    return RunResult(tally, histograms, elapsed, started_at, failures, [r.tally.decisions for r in results])


def _wait_ready(workers: _Workers, timeout: float, failures: list[str]) -> set[int]:
    ready: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(ready) + len(failures) < len(workers.processes):
        kind, index, payload = _next_event(workers.events, deadline, "the workers to connect")
        if kind == "ready":
            ready.add(index)
        elif kind == "failed":
            failures.append(f"worker {index}: {payload}")
    if not ready:
        raise LoadTestStartError(f"no worker could start: {'; '.join(failures)}")
    return ready


def _collect(
    config: RunConfig,
    console: Console,
    workers: _Workers,
    ready: set[int],
    *,
    start: float,
    failures: list[str],
) -> list[WorkerResult]:
    """Show live progress until every started worker sent its result (or failed, or overran)."""
    monitor = Monitor(config)
    results: dict[int, WorkerResult] = {}
    finish_by = start + config.duration + config.timeout + max(config.reward_delay, 5.0) + 30.0
    pending = set(ready)
    with progress_view(console) as show:
        next_show = time.monotonic()
        while pending:
            event = _poll(workers.events, REFRESH / 2)
            kind, index, payload = event if event is not None else NO_EVENT
            if kind == "progress":
                monitor.update(index, payload)
            elif kind in {"done", "failed"}:
                pending.discard(index)
                if kind == "done":
                    results[index] = payload
                else:
                    failures.append(f"worker {index}: {payload}")
            now = time.monotonic()
            if now >= next_show:
                show(monitor, max(0.0, now - start))
                next_show = now + REFRESH
            if now > finish_by:
                failures.extend(f"worker {index}: did not finish in time" for index in sorted(pending))
                break
        show(monitor, max(0.0, time.monotonic() - start))
    return list(results.values())


def _poll(events: Queue[Any], timeout: float) -> tuple[str, int, Any] | None:
    try:
        event: tuple[str, int, Any] = events.get(timeout=timeout)
    except queue.Empty:
        return None
    return event


def _next_event(events: Queue[Any], deadline: float, what: str) -> tuple[str, int, Any]:
    while True:
        event = _poll(events, 0.1)
        if event is not None:
            return event
        if time.monotonic() > deadline:
            raise LoadTestStartError(f"timed out waiting for {what}")
