"""The outcome recorder's answer for each item of a batch, and its spool, through the OutcomeLedger
port with an in-memory store: exactly once per nonce, refusals per item, an outage spooled or refused."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import pytest

from mabrouter.core import decision_id
from mabrouter.errors import (
    InvalidDecisionIdError,
    InvalidRequestError,
    NoSnapshotError,
    SpoolFullError,
    StoreUnavailableError,
    UnabsorbableOutcomeError,
)
from mabrouter.runtime.exposure import ExposureLog
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.runtime.outcomes import Accepted, OutcomeRecorder, OutcomeResult
from mabrouter.runtime.signer import DecisionVerifier
from mabrouter.store.records import OutcomeWrite, Refused

import fakes
from core_fixtures import bernoulli_spec, snapshot, state

KEY = b"k" * 32


def decision(nonce: str, arm: str = "arm-1") -> str:
    token = decision_id.DecisionToken("exp", arm, 1, int(time.time() * 1000), nonce, counted=True)
    return decision_id.encode(token, KEY)


class MemorySpool:
    """The Spool port in memory; `limit` entries at most, like the file spool's SpoolFullError."""

    def __init__(self, limit: int = 100) -> None:
        self.entries: list[OutcomeWrite] = []
        self.limit = limit

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, writes: list[OutcomeWrite]) -> None:
        if len(self.entries) + len(writes) > self.limit:
            raise SpoolFullError(f"outcome spool holds {len(self.entries)} entries, its limit")
        self.entries += writes

    def peek(self, count: int) -> list[OutcomeWrite]:
        return self.entries[:count]

    def drop(self, count: int) -> None:
        del self.entries[:count]


def recorder(
    store: fakes.FakeStore, spool: MemorySpool | None = None
) -> tuple[OutcomeRecorder, RouterMetrics]:
    holder = SnapshotHolder()
    holder.current = snapshot(state(bernoulli_spec(3, name="exp")))
    metrics = RouterMetrics()
    exposure = ExposureLog(store, 1000, str)
    made = OutcomeRecorder(
        store, holder, DecisionVerifier([KEY], 600), exposure=exposure, metrics=metrics, spool=spool
    )
    return made, metrics


def record(made: OutcomeRecorder, outcomes: Sequence[tuple[str, float]]) -> list[OutcomeResult]:
    return asyncio.run(made.record([(raw_id, reward, {}) for raw_id, reward in outcomes]))


def counted(metrics: RouterMetrics, result: str, experiment: str = "exp") -> float:
    labels = {"experiment": experiment, "result": result}
    return metrics.registry.get_sample_value("mabrouter_outcomes_total", labels) or 0.0


def test_each_item_gets_its_own_answer_and_each_nonce_counts_once() -> None:
    store = fakes.FakeStore()
    store.refuse_outcomes["n3"] = Refused("unreadable", "arm-1:sum", "abc")
    made, metrics = recorder(store)

    results = record(
        made,
        [
            (decision("n1"), 1.0),
            ("not-an-id", 1.0),
            (decision("n2"), 7.0),
            (decision("n3"), 1.0),
            (decision("n1"), 1.0),
        ],
    )

    first, forged, out_of_range, refused, again = results
    assert first == Accepted("exp", "arm-1", duplicate=False)
    assert isinstance(forged, InvalidDecisionIdError)
    assert isinstance(out_of_range, InvalidRequestError)  # bernoulli: a reward of 7 is refused unsent
    assert isinstance(refused, UnabsorbableOutcomeError)
    assert "stats field 'arm-1:sum' holds 'abc'" in str(refused)
    assert again == Accepted("exp", "arm-1", duplicate=True)
    assert sorted(store.outcomes) == ["n1"]
    assert store.calls == ["record_outcomes"]  # one call for the whole batch
    assert (counted(metrics, "applied"), counted(metrics, "duplicate"), counted(metrics, "rejected")) == (
        1,
        1,
        1,
    )


def test_without_a_snapshot_nothing_is_sent() -> None:
    store = fakes.FakeStore()
    made, _ = recorder(store)
    made._holder.current = None
    with pytest.raises(NoSnapshotError):
        record(made, [(decision("n1"), 1.0)])
    assert store.calls == []


def test_an_unreachable_store_without_a_spool_refuses_the_batch_saying_so() -> None:
    store = fakes.FakeStore()
    store.down = True
    made, metrics = recorder(store)
    with pytest.raises(StoreUnavailableError, match=r"outcome not recorded \(cannot reach Redis") as raised:
        record(made, [(decision("n1"), 1.0)])
    assert isinstance(raised.value.__cause__, StoreUnavailableError)
    assert (
        metrics.registry.get_sample_value("mabrouter_redis_errors_total", {"operation": "record_outcomes"})
        == 1
    )


def test_an_outage_is_spooled_and_replayed_exactly_once() -> None:
    store, spool = fakes.FakeStore(), MemorySpool()
    made, metrics = recorder(store, spool)
    store.down = True
    assert record(made, [(decision("n1"), 1.0), (decision("n2"), 0.0)]) == [
        Accepted("exp", "arm-1", duplicate=False),
        Accepted("exp", "arm-1", duplicate=False),
    ]
    assert (len(spool), made.spooled(), counted(metrics, "spooled", experiment="")) == (2, 2, 2)
    asyncio.run(made.replay_spool())  # still down: kept
    assert len(spool) == 2

    store.down = False
    record(made, [(decision("n1"), 1.0)])  # the caller retried one live meanwhile
    asyncio.run(made.replay_spool(batch=1))
    assert len(spool) == 0
    assert sorted(store.outcomes) == ["n1", "n2"]
    assert (counted(metrics, "applied"), counted(metrics, "duplicate")) == (2, 1)


def test_a_full_spool_refuses_and_counts_the_drop() -> None:
    store, spool = fakes.FakeStore(), MemorySpool(limit=1)
    store.down = True
    made, metrics = recorder(store, spool)
    with pytest.raises(StoreUnavailableError, match="its limit"):
        record(made, [(decision("n1"), 1.0), (decision("n2"), 1.0)])
    assert len(spool) == 0
    assert (
        metrics.registry.get_sample_value("mabrouter_buffer_dropped_total", {"buffer": "outcome_spool"}) == 2
    )


def test_a_spooled_outcome_the_statistics_refuse_is_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, spool = fakes.FakeStore(), MemorySpool()
    made, metrics = recorder(store, spool)
    store.down = True
    record(made, [(decision("bad"), 1.0), (decision("good"), 1.0)])
    store.down = False
    store.refuse_outcomes["bad"] = Refused("overflow", "arm-1:sum", "1e308")
    with caplog.at_level(logging.ERROR, logger="mabrouter.runtime.outcomes"):
        asyncio.run(made.replay_spool())
    assert len(spool) == 0  # dropped: it must not block the outcomes behind it
    assert sorted(store.outcomes) == ["good"]
    assert counted(metrics, "rejected") == 1
    (line,) = [entry.getMessage() for entry in caplog.records]
    assert line.startswith("1 acknowledged outcome(s) from the spool dropped")
    assert '"nonce":"bad"' in line
