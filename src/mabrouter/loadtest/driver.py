"""Load generation: one asyncio worker per process, with its own gRPC channel, driving Route calls.

Open loop (`rate`): sends are scheduled at fixed intervals and never wait for earlier answers (up to
`max_inflight` calls in flight; a send beyond that is counted as skipped). Closed loop (`concurrency`):
that many tasks each call Route again as soon as the previous answer arrives (pausing 10 ms after a
failed call, so a down router is not spun on). Route latency is measured around the awaited Route call
only; it includes the worker's own event-loop delays when the worker is saturated (the report warns
when sends ran late). Outcomes are drawn from the simulated environment at decision time
and reported with ReportOutcomes batches (up to 1,000) once `reward_delay` has passed; outcomes still
pending when the run ends are sent at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from mabrouter.client.wire import OK, AsyncRouterWire, connected, reason_name
from mabrouter.errors import RouterCallError
from mabrouter.loadtest.environment import Environment
from mabrouter.loadtest.stats import Tally

HIGHEST_TRACKABLE_US: Final = 60_000_000  # one minute, in microseconds
SIGNIFICANT_DIGITS: Final = 3
OUTCOME_BATCH: Final = 1000  # the router refuses larger ReportOutcomes calls
OUTCOME_TICK: Final = 0.05
PROGRESS_INTERVAL: Final = 0.5
ERROR_PAUSE: Final = 0.01  # closed loop: pause after a failed call


def new_histogram() -> Any:
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]  # noqa: PLC0415

    return HdrHistogram(1, HIGHEST_TRACKABLE_US, SIGNIFICANT_DIGITS)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """A whole run; each worker process gets its share of `rate` or `concurrency`."""

    target: str
    experiment: str
    duration: float
    environment: Environment
    rate: float | None = None
    concurrency: int | None = None
    processes: int = 1
    units: int = 10_000
    timeout: float = 1.0
    reward_delay: float = 0.0
    report_fraction: float = 1.0
    bucket_seconds: float = 1.0
    default_arm: str = ""
    max_inflight: int = 10_000
    seed: int | None = None

    def rate_of(self, index: int) -> float | None:
        return None if self.rate is None else self.rate / self.processes

    def concurrency_of(self, index: int) -> int:
        total = self.concurrency or 0
        return total // self.processes + (1 if index < total % self.processes else 0)

    @property
    def buckets(self) -> int:
        return max(1, math.ceil(self.duration / self.bucket_seconds - 1e-9))


@dataclass(frozen=True, slots=True)
class Progress:
    """A worker's cumulative counts so far, sent to the parent about twice a second."""

    decisions: int
    errors: int
    arm_totals: dict[str, int]
    histogram: bytes


@dataclass(frozen=True, slots=True)
class WorkerResult:
    tally: Tally
    histogram: bytes  # HDR-encoded Route latencies (microseconds) of successful decisions


class Worker:
    """One process's share of the load. Create and run it inside that process's event loop."""

    def __init__(self, config: RunConfig, index: int) -> None:
        self.config = config
        self.index = index
        self.rng = random.Random(None if config.seed is None else config.seed * 1_000_003 + index)
        self.tally = Tally(config.bucket_seconds)
        self.histogram = new_histogram()
        self.arm_totals: Counter[str] = Counter()
        self.pending: list[tuple[float, int, str, float]] = []  # (due, sequence, decision id, reward)
        self.sequence = 0
        self.inflight = 0
        self.start = 0.0

    def progress(self) -> Progress:
        return Progress(
            self.tally.decisions, self.tally.errors.total(), dict(self.arm_totals), self.histogram.encode()
        )

    def result(self) -> WorkerResult:
        return WorkerResult(self.tally, self.histogram.encode())

    async def run(
        self, wire: AsyncRouterWire, start: float, report: Callable[[Progress], None]
    ) -> WorkerResult:
        """Drive load from monotonic time `start` for the configured duration; return the counts."""
        self.start = start
        deadline = start + self.config.duration
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        stop = asyncio.Event()
        reporter = asyncio.create_task(self._report_outcomes(wire, stop))
        ticker = asyncio.create_task(self._progress(report, stop))
        rate = self.config.rate_of(self.index)
        if rate is not None:
            await self._open_loop(wire, rate, deadline)
        else:
            await asyncio.gather(
                *(self._closed_loop(wire, deadline) for _ in range(self.config.concurrency_of(self.index)))
            )
        stop.set()
        await asyncio.gather(reporter, ticker)
        self.tally.outcomes_flushed_at_end = sum(1 for due, *_ in self.pending if due > time.monotonic())
        await self._send_due(wire, math.inf)
        report(self.progress())
        return self.result()

    async def _open_loop(self, wire: AsyncRouterWire, rate: float, deadline: float) -> None:
        interval = 1.0 / rate
        total = math.ceil(self.config.duration * rate - 1e-9)
        tasks: set[asyncio.Task[bool]] = set()
        sent = 0
        while sent < total:
            now = time.monotonic()
            if now >= deadline:
                break
            due = min(total, int((now - self.start) * rate) + 1)
            for index in range(sent, due):
                lag_us = int((now - (self.start + index * interval)) * 1_000_000)
                self.tally.max_dispatch_lag_us = max(self.tally.max_dispatch_lag_us, lag_us)
                if self.inflight >= self.config.max_inflight:
                    self.tally.skipped += 1
                    continue
                task: asyncio.Task[bool] = asyncio.create_task(self._route(wire))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent = max(sent, due)
            await asyncio.sleep(max(0.0, self.start + sent * interval - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)

    async def _closed_loop(self, wire: AsyncRouterWire, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not await self._route(wire):
                await asyncio.sleep(ERROR_PAUSE)  # a down router fails fast: do not spin on errors

    async def _route(self, wire: AsyncRouterWire) -> bool:
        """One Route call, timed around the call only; False when it failed."""
        config = self.config
        env = config.environment
        value = env.context.draw(self.rng) if env.context is not None else None
        request = wire.request(
            config.experiment,
            f"unit-{self.rng.randrange(config.units)}",
            config.default_arm,
            {env.context.attribute: value} if env.context is not None and value is not None else None,
        )
        self.inflight += 1
        t = time.monotonic() - self.start
        began = time.perf_counter_ns()
        try:
            response = await wire.route(request, config.timeout)
        except RouterCallError as exc:
            self.tally.errors[exc.status] += 1
            return False
        finally:
            self.inflight -= 1
        elapsed_us = max(1, (time.perf_counter_ns() - began) // 1000)
        self.histogram.record_value(min(elapsed_us, HIGHEST_TRACKABLE_US))
        self.tally.max_latency_us = max(self.tally.max_latency_us, elapsed_us)
        self.tally.record_latency(t, elapsed_us)
        arm = str(response.arm)
        reason = reason_name(int(response.reason))
        self.tally.record_decision(t, arm, reason, float(response.propensity), env.regret(arm, t, value))
        self.arm_totals[arm] += 1
        if response.decision_id and self.rng.random() < config.report_fraction:
            reward = env.sample(arm, t, self.rng, value)
            self.sequence += 1
            due = time.monotonic() + config.reward_delay
            heapq.heappush(self.pending, (due, self.sequence, str(response.decision_id), reward))
        return True

    async def _report_outcomes(self, wire: AsyncRouterWire, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._send_due(wire, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OUTCOME_TICK)

    async def _send_due(self, wire: AsyncRouterWire, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            batch: list[tuple[str, float]] = []
            while self.pending and self.pending[0][0] <= now and len(batch) < OUTCOME_BATCH:
                _, _, decision_id, reward = heapq.heappop(self.pending)
                batch.append((decision_id, reward))
            await self._send(wire, batch)

    async def _send(self, wire: AsyncRouterWire, batch: list[tuple[str, float]]) -> None:
        tally = self.tally
        try:
            results = await wire.report_outcomes(batch, timeout=max(5.0, self.config.timeout))
        except RouterCallError as exc:
            tally.outcome_errors[exc.status] += len(batch)
            return
        for status, duplicate in results:
            if status == OK:
                tally.outcomes_sent += 1
                tally.outcomes_duplicate += int(duplicate)
            else:
                tally.outcome_errors[status] += 1

    async def _progress(self, report: Callable[[Progress], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL)
            except TimeoutError:
                report(self.progress())


async def run_worker(
    config: RunConfig,
    index: int,
    *,
    on_ready: Callable[[], None],
    wait_start: Callable[[], float],
    report: Callable[[Progress], None],
    connect_timeout: float = 10.0,
) -> WorkerResult:
    """Connect, say ready, wait for the shared start time (monotonic seconds), run, and return the counts."""
    async with connected(config.target, connect_timeout) as wire:
        on_ready()
        start = await asyncio.to_thread(wait_start)
        return await Worker(config, index).run(wire, start, report)
