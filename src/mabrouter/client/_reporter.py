"""OutcomeReporter: a bounded buffer and a background thread that delivers outcomes, retrying until acked."""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Final

import grpc

from mabrouter.client._common import CHANNEL_OPTIONS, DEFAULT_TARGET
from mabrouter.client._delivery import MAX_BATCH, Delivery, Item, OutcomeSink, ReporterStats, deliver
from mabrouter.client._sync import RouterClient
from mabrouter.v1 import router_pb2_grpc

log = logging.getLogger("mabrouter.client")

INITIAL_BACKOFF: Final = 0.05
LOG_INTERVAL: Final = 10.0


class OutcomeReporter:
    """Reports outcomes (rewards) off the request path, in batches, until the router acknowledges them.

    ``report()`` never blocks on the network: it appends to a bounded in-memory buffer and returns
    True. When the buffer already holds `max_buffer` outcomes (the router has been unreachable for a
    long time) the outcome is **dropped**: ``report()`` returns False, ``dropped_full`` is incremented
    and a WARNING is logged (at most every 10 s).

    A background thread sends up to `batch_size` outcomes per ``ReportOutcomes`` call, as soon as
    `batch_size` are buffered or the oldest has waited `flush_interval` seconds. Transport failures
    (router down or restarting, UNAVAILABLE, DEADLINE_EXCEEDED...) are retried with exponential backoff
    and jitter, capped at `max_retry_backoff` seconds: accepted outcomes stay buffered until the router
    acknowledges them, so a sidecar restart loses none. Retrying is safe because the router counts a
    decision id once (a retried outcome comes back as a duplicate). Outcomes the router refuses for
    good (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION: bad or expired decision id, invalid
    reward) are dropped and counted in ``rejected``. Buffered outcomes live in memory only: call
    ``close()`` at shutdown, or what is still buffered is lost with the process.

    Pass a :class:`RouterClient` to share its channel (close the reporter first), a target address
    for a channel of its own, or an in-process router (:class:`mabrouter.embedded.EmbeddedRouter`;
    close the reporter first too): the same semantics, the outcomes applied in this process. From
    asyncio code, ``report()`` is safe to call on the event loop; run the blocking
    ``flush()``/``close()`` in a thread: ``await asyncio.to_thread(r.close)``.

    Example::

        reporter = OutcomeReporter(client)
        reporter.report(assignment.decision_id, 1.0)   # clicked
        ...
        reporter.close(timeout=5.0)
    """

    def __init__(
        self,
        client: RouterClient | str | OutcomeSink = DEFAULT_TARGET,
        *,
        batch_size: int = 200,
        flush_interval: float = 0.2,
        max_buffer: int = 100_000,
        max_retry_backoff: float = 5.0,
        rpc_timeout: float = 2.0,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, got {max_buffer}")
        for name, value in (
            ("flush_interval", flush_interval),
            ("max_retry_backoff", max_retry_backoff),
            ("rpc_timeout", rpc_timeout),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self._channel: grpc.Channel | None = None
        self._owns_channel = False
        self._deliver: Callable[[list[Item], float], Delivery]
        if isinstance(client, OutcomeSink):  # an in-process router: no channel
            self._deliver = client.deliver_outcomes
        elif isinstance(client, RouterClient | str):
            if isinstance(client, RouterClient):
                self._channel = client.channel
            else:
                self._channel = grpc.insecure_channel(client, options=CHANNEL_OPTIONS)
                self._owns_channel = True
            self._deliver = partial(deliver, router_pb2_grpc.RouterStub(self._channel))
        else:  # e.g. an AsyncRouterClient: its channel belongs to its event loop, not to a thread
            raise TypeError(
                f"pass a RouterClient, a target address or an in-process router, not "
                f"{type(client).__name__}; from asyncio code use OutcomeReporter(async_client.target)"
            )
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.max_retry_backoff = max_retry_backoff
        self.rpc_timeout = rpc_timeout

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the sender waits here for outcomes
        self._drained = threading.Condition(self._lock)  # flush() waits here for an empty buffer
        # Accepted, unacknowledged outcomes, oldest first. The batch in flight stays at the head
        # until the router answers, so `pending` and the max_buffer bound include it.
        self._queue: deque[Item] = deque()
        self._flushers = 0
        self._closed = False  # report() refuses new outcomes
        self._abandon = False  # the sender stops even if outcomes remain
        self._sent = self._duplicates = self._rejected = self._dropped_full = self._ignored = 0
        self._last_log: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="mabrouter-outcome-reporter", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------------

    def report(self, decision_id: str, reward: float) -> bool:
        """Buffer one outcome for delivery; never blocks on the network.

        Returns True when the outcome was accepted (it will be delivered, retried as needed). Returns
        False, without raising, when it was not: the buffer is full (``dropped_full``, WARNING logged),
        the decision id is empty (a fallback assignment has nothing to report) or the reporter is closed
        (both ``ignored``).
        """
        try:
            value = float(reward)
        except (TypeError, ValueError):
            value = math.nan  # the router refuses it: counted in `rejected`, never raised to the caller
        with self._lock:
            if not decision_id or self._closed:
                self._ignored += 1
                return False
            if len(self._queue) >= self.max_buffer:
                self._dropped_full += 1
                dropped = self._dropped_full
                should_log = self._should_log("full")
            else:
                self._queue.append((decision_id, value, time.monotonic()))
                if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                    self._work.notify()
                return True
        if should_log:
            log.warning(
                "mabrouter: outcome buffer full (%d outcomes waiting for the router); dropping outcomes "
                "(%d dropped so far)",
                self.max_buffer,
                dropped,
            )
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is buffered now; block until the router acknowledged it all or `timeout` s passed.

        Returns True when the buffer is empty. Outcomes reported meanwhile are waited for too.
        """
        with self._lock:
            self._flushers += 1
            self._work.notify()
            try:
                return self._drained.wait_for(lambda: not self._queue, timeout)
            finally:
                self._flushers -= 1

    def close(self, timeout: float = 5.0) -> bool:
        """Refuse new outcomes, flush for up to `timeout` s, then stop the background thread.

        Returns True when every accepted outcome was acknowledged. Otherwise the outcomes still
        buffered are lost: their number stays in ``pending`` and is logged as a WARNING. May take up to
        `rpc_timeout` longer while a call in flight finishes.
        """
        with self._lock:
            self._closed = True
            self._work.notify()
        drained = self.flush(timeout)
        with self._lock:
            self._abandon = True
            lost = len(self._queue)
            self._work.notify()
        if self._owns_channel and self._channel is not None:
            self._channel.close()  # cancels a call in flight
        self._thread.join(self.rpc_timeout + 1.0)
        if lost:
            log.warning("mabrouter: outcome reporter closed with %d outcomes not acknowledged: lost", lost)
        return drained

    def stats(self) -> ReporterStats:
        with self._lock:
            return ReporterStats(
                sent=self._sent,
                duplicates=self._duplicates,
                rejected=self._rejected,
                dropped_full=self._dropped_full,
                ignored=self._ignored,
                pending=len(self._queue),
            )

    @property
    def sent(self) -> int:
        return self.stats().sent

    @property
    def duplicates(self) -> int:
        return self.stats().duplicates

    @property
    def rejected(self) -> int:
        return self.stats().rejected

    @property
    def dropped_full(self) -> int:
        return self.stats().dropped_full

    @property
    def pending(self) -> int:
        return self.stats().pending

    def __enter__(self) -> OutcomeReporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the sender thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if self._send(batch):
                failures = 0
                continue
            failures += 1
            ceiling = min(self.max_retry_backoff, INITIAL_BACKOFF * 2 ** min(failures - 1, 30))
            delay = random.uniform(ceiling / 2, ceiling)
            with self._lock:
                self._work.wait_for(lambda: self._abandon, delay)

    def _next_batch(self) -> list[Item] | None:
        """Block until a batch is due: `batch_size` outcomes, the oldest one `flush_interval` old, or a
        flush/close in progress. None when the sender must stop."""
        with self._lock:
            while True:
                if self._abandon or (self._closed and not self._queue):
                    return None
                if self._queue:
                    due = self._queue[0][2] + self.flush_interval - time.monotonic()
                    if len(self._queue) >= self.batch_size or self._flushers or self._closed or due <= 0:
                        return list(itertools.islice(self._queue, self.batch_size))
                    self._work.wait(due)
                else:
                    self._work.wait()

    def _send(self, batch: list[Item]) -> bool:
        """One ReportOutcomes call. False when (part of) the batch must be retried after a backoff."""
        result = self._deliver(batch, self.rpc_timeout)
        if result.refused:
            log.error("mabrouter: the router refused %d outcomes (%s): dropped", len(batch), result.failure)
        elif result.failure:
            self._log_limited(
                "call", "mabrouter: reporting %d outcomes failed (%s); retrying", len(batch), result.failure
            )
        if result.refusals:
            self._log_limited(
                "item",
                "mabrouter: %d outcomes refused (%s): dropped",
                len(result.refusals),
                result.refusals[0],
            )
        with self._lock:
            for _ in batch:
                self._queue.popleft()
            self._queue.extendleft(reversed(result.retry))
            self._sent += result.sent
            self._duplicates += result.duplicates
            self._rejected += result.rejected
            if not self._queue:
                self._drained.notify_all()
        return not result.retry

    def _should_log(self, key: str) -> bool:
        """Rate limit (call with the lock held)."""
        now = time.monotonic()
        last = self._last_log.get(key)
        if last is not None and now - last < LOG_INTERVAL:
            return False
        self._last_log[key] = now
        return True

    def _log_limited(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            should_log = self._should_log(key)
        if should_log:
            log.warning(message, *args)
