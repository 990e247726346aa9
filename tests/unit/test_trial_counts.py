"""The trial buffer and its flusher, driven through the TrialStore port with an in-memory store."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import numpy as np
import pytest

from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.discount import weight
from mabrouter.core.evidence import sample_ratio_check
from mabrouter.core.model import ArmStats
from mabrouter.core.snapshot import build_experiment_state
from mabrouter.runtime.trials import TrialBuffer, TrialFlusher
from mabrouter.store.records import Refused

import fakes
from core_fixtures import bernoulli_spec, snapshot, state

NOW_MS = 1_700_000_000_000


def flusher(store: fakes.FakeStore, buffer: TrialBuffer, errors: list[int] | None = None) -> TrialFlusher:
    seen = errors if errors is not None else []
    return TrialFlusher(buffer, store, "p", on_error=lambda: seen.append(1))


def test_drain_counts_trials_segments_sampling_and_the_holdout_split() -> None:
    sampled_from = state(bernoulli_spec(3, name="exp"))
    buffer = TrialBuffer()
    buffer.add("exp", "arm-1", sampled_from)
    buffer.add("exp", "arm-1", sampled_from, segment="mobile")
    buffer.add("exp", "arm-0")  # served, not sampled (e.g. forced by the allow list)
    buffer.add_holdout("exp")
    assert buffer.pending() == 3  # the segment's copy of a trial is not a second trial

    batch = buffer.drain(NOW_MS)

    counts = batch["exp"]
    assert counts.trials == {"arm-1": 2.0, "arm-0": 1.0}
    assert counts.segment_trials == {("mobile", "arm-1"): 1.0}
    assert counts.sampled == {"arm-1": 2.0}
    shares = sampled_from.shares  # two sampled decisions under this allocation
    assert counts.expected == pytest.approx({f"arm-{i}": 2 * float(shares[i]) for i in range(3)})
    assert (counts.bandit, counts.holdout) == (3.0, 1.0)
    assert counts.discount is None
    assert buffer.pending() == 0
    assert buffer.drain(NOW_MS) == {}


def test_a_discounted_experiment_proposes_an_epoch_and_carries_the_weight_of_now() -> None:
    spec = replace(bernoulli_spec(2, name="drift"), half_life_seconds=60.0)
    buffer = TrialBuffer()
    buffer.add("drift", "arm-1", state(spec))  # no epoch stored yet: this writer proposes now
    (counts,) = buffer.drain(NOW_MS).values()
    assert counts.discount == (NOW_MS, 60_000.0, 1.0)

    epoch = NOW_MS - 120_000  # two half-lives ago
    buffer.add("drift", "arm-1", replace(state(spec), discount_epoch_ms=epoch))
    (counts,) = buffer.drain(NOW_MS).values()
    assert counts.discount == (epoch, 60_000.0, weight(NOW_MS, epoch, 60.0))
    assert counts.discount[2] == pytest.approx(4.0)


def test_a_failed_flush_is_retried_with_the_same_batch_and_counts_once() -> None:
    store, buffer, errors = fakes.FakeStore(), TrialBuffer(), []
    flush = flusher(store, buffer, errors)
    buffer.add("exp", "arm-0")
    store.down = True
    asyncio.run(flush.flush())
    asyncio.run(flush.flush())
    assert (len(errors), flush.unsent(), store.totals) == (2, 1, {})
    buffer.add("exp", "arm-0")  # counted meanwhile: waits behind the unsent batch

    store.down = False
    asyncio.run(flush.flush())
    asyncio.run(flush.flush())

    assert store.batches == ["p-1", "p-2"]
    assert store.totals["exp"].trials == {"arm-0": 2.0}
    assert flush.unsent() == 0


def test_a_refused_experiment_is_dropped_and_the_others_are_written(caplog: pytest.LogCaptureFixture) -> None:
    store, buffer, errors = fakes.FakeStore(), TrialBuffer(), []
    store.refuse_trials["broken"] = Refused("unreadable", "arm-0:trials", "abc")
    flush = flusher(store, buffer, errors)
    with caplog.at_level(logging.INFO, logger="mabrouter.runtime.trials"):
        for _ in range(2):
            buffer.add("broken", "arm-0")
            buffer.add("fine", "arm-0")
            asyncio.run(flush.flush())
        del store.refuse_trials["broken"]
        buffer.add("broken", "arm-0")
        asyncio.run(flush.flush())

    assert store.totals["fine"].trials == {"arm-0": 2.0}
    assert store.totals["broken"].trials == {"arm-0": 1.0}  # only what came after the repair
    assert len(errors) == 2  # one per refused experiment per flush
    assert flush.unsent() == 0  # dropped, not held for a retry
    messages = [record.getMessage() for record in caplog.records]
    assert sum("dropped" in message for message in messages) == 1  # logged when it starts, not per flush
    assert "holds 'abc' (not a finite number)" in messages[0]
    assert any("written again" in message for message in messages)


def test_expected_counts_come_from_the_allocation_each_decision_was_drawn_from() -> None:
    """A segment deciding on its own posteriors: its decisions expect the segment's shares, not the
    pooled ones (issue 17: the pooled shares made every healthy segmented experiment 'mismatch')."""
    spec = replace(bernoulli_spec(2, name="exp"), segment_attribute="country", segment_min_trials=10)
    pooled = (ArmStats(400, 400, 200.0), ArmStats(400, 400, 200.0))  # pooled: a coin flip
    own = (ArmStats(200, 200, 20.0), ArmStats(200, 200, 160.0))  # DE: arm-1 clearly best
    sampled_from = build_experiment_state(spec, 1, pooled, segments={"DE": own})
    snap = snapshot(sampled_from)
    buffer, rng = TrialBuffer(), np.random.default_rng(3)
    for i in range(2000):
        attributes = {"country": "DE"} if i % 2 else {"country": "FR"}  # FR: no own posterior yet
        decision = decide(RouteInput("exp", f"u{i}", attributes), snap, rng)
        buffer.add("exp", decision.arm, sampled_from, decision.segment)

    counts = buffer.drain(NOW_MS)["exp"]

    de, shared = sampled_from.segments["DE"].shares, sampled_from.shares
    assert de[1] > 0.99  # the two allocations differ a lot
    assert 0.3 < shared[1] < 0.7
    assert counts.expected == pytest.approx({f"arm-{i}": 1000 * (de[i] + shared[i]) for i in range(2)})
    check = sample_ratio_check(
        [counts.sampled.get(f"arm-{i}", 0.0) for i in range(2)],
        [counts.expected[f"arm-{i}"] for i in range(2)],
    )
    assert check is not None
    assert not check.mismatch, check
