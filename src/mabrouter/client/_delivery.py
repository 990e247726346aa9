"""One ReportOutcomes call for the OutcomeReporter, and what to do with each outcome of the batch.

The classification (acknowledged, refused for good, to retry) is the same whatever delivered the batch:
a sidecar's ReportOutcomes (`deliver`, here) or an in-process router (mabrouter.embedded), which
reports the same status codes for the same outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import grpc

from mabrouter.client._common import status_error
from mabrouter.v1 import router_pb2

MAX_BATCH: Final = 1000  # the router refuses larger ReportOutcomes calls
# Per-outcome refusals that a retry cannot fix (bad or expired decision id, invalid reward...): dropped.
PERMANENT_ITEM_CODES: Final = frozenset(
    code.value[0]
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
)
# Whole-call refusals that a retry cannot fix (wrong server, wrong credentials): the batch is dropped.
# Every other failure (UNAVAILABLE, DEADLINE_EXCEEDED, connection errors, ...) is retried.
PERMANENT_CALL_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

Item = tuple[str, float, float]  # decision id, reward, time.monotonic() when accepted


@dataclass(frozen=True, slots=True)
class ReporterStats:
    """Counters of an :class:`OutcomeReporter` (monotonic, except `pending`).

    sent: outcomes the router acknowledged (including `duplicates`).
    duplicates: acknowledged outcomes whose decision id had already been rewarded (counted once).
    rejected: outcomes the router refused for good (bad/expired decision id, invalid reward): dropped.
    dropped_full: ``report()`` calls refused because the buffer held `max_buffer` outcomes.
    ignored: ``report()`` calls refused because the decision id was empty or the reporter was closed.
    pending: outcomes accepted but not acknowledged yet; after ``close()``, the ones that were lost.
    """

    sent: int
    duplicates: int
    rejected: int
    dropped_full: int
    ignored: int
    pending: int


@dataclass(slots=True)
class Delivery:
    """The fate of one batch: acknowledged, refused for good (dropped) or to retry after a backoff."""

    retry: list[Item] = field(default_factory=list)
    sent: int = 0
    duplicates: int = 0
    rejected: int = 0
    failure: str = ""  # why the call failed (its outcomes are in `retry`, or dropped when `refused`)
    refused: bool = False  # the router refused the whole call for good
    refusals: list[str] = field(default_factory=list)  # why outcomes were refused one by one


@runtime_checkable
class OutcomeSink(Protocol):
    """What an OutcomeReporter delivers through when it is not a gRPC channel: an in-process router."""

    def deliver_outcomes(self, batch: list[Item], timeout: float) -> Delivery:
        """Apply `batch` (never raises) and say what became of each outcome."""
        ...


def call_failed(batch: list[Item], code: grpc.StatusCode, details: str | None) -> Delivery:
    """A call that applied nothing: refused for good (dropped) or to retry whole."""
    failure = status_error(code, details)
    if code in PERMANENT_CALL_CODES:
        return Delivery(rejected=len(batch), failure=failure, refused=True)
    return Delivery(retry=list(batch), failure=failure)


def classify(batch: list[Item], results: Sequence[tuple[int, str, bool]]) -> Delivery:
    """What became of each outcome, from its (status code value, message, duplicate) result."""
    if len(results) != len(batch):
        return Delivery(
            retry=list(batch), failure=f"INTERNAL: {len(results)} results for {len(batch)} outcomes"
        )
    delivery = Delivery()
    for item, (code, message, duplicate) in zip(batch, results, strict=True):
        if code == 0:
            delivery.sent += 1
            delivery.duplicates += bool(duplicate)
        elif code in PERMANENT_ITEM_CODES:
            delivery.rejected += 1
            delivery.refusals.append(f"{code}: {message}")
        else:
            delivery.retry.append(item)
    return delivery


def deliver(stub: Any, batch: list[Item], timeout: float) -> Delivery:
    """Send `batch` in one ReportOutcomes call (never raises) and classify every outcome."""
    request = router_pb2.ReportOutcomesRequest(
        outcomes=[router_pb2.OutcomeRequest(decision_id=d, reward=r) for d, r, _ in batch]
    )
    try:
        response = stub.ReportOutcomes(request, timeout=timeout, wait_for_ready=False)
    except grpc.RpcError as exc:
        if not isinstance(exc, grpc.Call):
            return Delivery(retry=list(batch), failure=f"UNKNOWN: {exc!r}")
        return call_failed(batch, exc.code(), exc.details())
    except Exception as exc:  # noqa: BLE001 - keep the sender alive; the outcomes stay buffered
        return Delivery(retry=list(batch), failure=f"UNKNOWN: {exc!r}")
    return classify(batch, [(r.code, r.message, r.duplicate) for r in response.results])
