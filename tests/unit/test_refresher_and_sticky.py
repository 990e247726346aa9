"""The refresher, the change feed and sticky assignments against an in-memory store that fails on cue:
the router keeps serving what it has, logs an outage once, and catches up when the store returns."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from mabrouter.core.decide import Decision, RouteInput, decide
from mabrouter.core.model import Reason
from mabrouter.runtime import refresher as refresher_module
from mabrouter.runtime.holder import SnapshotHolder
from mabrouter.runtime.refresher import Refresher, watch_changes
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.runtime.sticky import StickyAssignments
from mabrouter.store.records import RawExperiment, RawState, StoredSwitches, UnattributedEdit

import fakes
from core_fixtures import bernoulli_spec, state

DOC = json.dumps({"name": "exp", "control": "a", "arms": [{"name": "a"}, {"name": "b"}]})


def stored(version: int = 1, doc: str = DOC, control: dict[str, str] | None = None) -> RawState:
    config = {"doc": doc, "version": str(version)}
    return RawState([RawExperiment("exp", config, {}, control or {})], {})


def refresher(store: fakes.FakeStore) -> tuple[Refresher, SnapshotHolder]:
    holder = SnapshotHolder()
    return Refresher(store, holder, SnapshotBuilder()), holder


def test_a_failing_store_keeps_the_last_snapshot_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    store = fakes.FakeStore(stored())
    made, holder = refresher(store)
    assert asyncio.run(made.refresh_once())
    first, loaded = holder.current, made.last_success
    assert first is not None
    assert "exp" in first.experiments

    store.down = True
    with caplog.at_level(logging.INFO, logger="mabrouter.runtime.refresher"):
        assert not asyncio.run(made.refresh_once())
        assert not asyncio.run(made.refresh_once())
        assert holder.current is first
        assert made.last_success == loaded
        store.down = False
        assert asyncio.run(made.refresh_once())
    messages = [entry.getMessage() for entry in caplog.records if entry.name == refresher_module.__name__]
    assert messages == [
        "snapshot refresh failed, serving the last snapshot: cannot reach Redis: the fake store is down",
        "snapshot refresh recovered",
    ]


def test_an_edit_made_without_the_cli_is_audited_and_a_failed_audit_does_not_fail_the_refresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = fakes.FakeStore(stored(control={"kill": "0"}))
    made, _ = refresher(store)
    asyncio.run(made.refresh_once())
    store.state = stored(control={"kill": "1"})  # HSET by hand: same version, new content
    assert asyncio.run(made.refresh_once())
    assert store.unattributed == [UnattributedEdit("exp", "exp", "0", "1")]

    store.failing = {"record_unattributed"}
    store.state = stored(doc=DOC.replace('"b"', '"c"'), control={"kill": "1"})  # the document, in place
    with caplog.at_level(logging.WARNING, logger="mabrouter.runtime.refresher"):
        assert asyncio.run(made.refresh_once())
    assert len(store.unattributed) == 1
    assert [entry.getMessage() for entry in caplog.records if entry.name == refresher_module.__name__] == [
        "could not write the audit entry for an unattributed edit of exp/doc: "
        "cannot reach Redis: the fake store is down"
    ]


def test_the_change_feed_resubscribes_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    store = fakes.FakeStore()
    monkeypatch.setattr(refresher_module, "MAX_RECONNECT_BACKOFF_SECONDS", 0.01)

    async def run() -> int:
        stop, wake = asyncio.Event(), asyncio.Event()
        store.down = True
        task = asyncio.create_task(watch_changes(store, stop, wake, refresher(store)[0]))
        await asyncio.sleep(0.3)  # backoff 0.1 s, then at most 0.01 s: a few failed attempts
        failures = len(store.calls)
        store.down = False
        await asyncio.wait_for(wake.wait(), 1)  # subscribed: the refresher resyncs
        stop.set()
        await asyncio.wait_for(task, 1)
        return failures

    assert asyncio.run(run()) >= 2


class GatedStore(fakes.FakeStore):
    """Reads take what is stored when they start, and answer only once their gate opens: a read that
    started earlier can finish later, as two reads on one connection pool can."""

    def __init__(self, state: RawState) -> None:
        super().__init__(state)
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, method: str) -> asyncio.Event:
        self.gates[method] = asyncio.Event()
        return self.gates[method]

    async def load_all(self) -> RawState:
        taken = self.state
        if "load_all" in self.gates:
            await self.gates.pop("load_all").wait()
        self._call("load_all")
        return taken

    async def load_switches(self, experiments: Sequence[str]) -> StoredSwitches:
        taken = await super().load_switches(experiments)
        if "load_switches" in self.gates:
            await self.gates.pop("load_switches").wait()
        return taken


def killed(holder: SnapshotHolder) -> bool:
    assert holder.current is not None
    return holder.current.experiments["exp"].controls.killed


def test_a_change_notice_applies_a_kill_from_the_switches_alone() -> None:
    store = fakes.FakeStore(stored())
    made, holder = refresher(store)

    async def run() -> None:
        assert await made.refresh_once()
        store.state = stored(control={"kill": "1"})
        store.calls.clear()
        made.notice("exp")
        made.notice("_global")  # read together with the experiment's, never taken for one
        await made.settle()

    asyncio.run(run())
    assert store.calls == ["load_switches"]  # one read: no names, no documents, no statistics, no build
    assert killed(holder)
    assert (
        decide(RouteInput("exp", "u1", {}), holder.current, np.random.default_rng()).reason is Reason.KILLED
    )


def test_a_global_kill_notice_is_applied_over_every_experiment() -> None:
    store = fakes.FakeStore(stored())
    made, holder = refresher(store)

    async def run() -> None:
        assert await made.refresh_once()
        store.state = replace(store.state, global_control={"kill": "1"})
        made.notice("_global")
        await made.settle()

    asyncio.run(run())
    assert holder.current is not None
    assert holder.current.global_controls.killed


def test_a_refresh_that_read_before_the_kill_does_not_undo_it() -> None:
    store = GatedStore(stored())
    made, holder = refresher(store)

    async def run() -> None:
        assert await made.refresh_once()
        gate = store.gate("load_all")
        refresh = asyncio.create_task(made.refresh_once())  # reads now: not killed
        await asyncio.sleep(0)
        store.state = stored(control={"kill": "1"})
        await made.apply_switches(["exp"])
        assert killed(holder)
        gate.set()
        assert await refresh  # built from its older read, then the newer switches applied over it
        assert killed(holder)
        assert await made.refresh_once()  # the next read sees the kill itself
        assert killed(holder)

    asyncio.run(run())


def test_a_switch_read_older_than_a_refresh_is_not_installed() -> None:
    store = GatedStore(stored())
    made, holder = refresher(store)

    async def run() -> None:
        assert await made.refresh_once()
        store.state = stored(control={"kill": "1"})
        gate = store.gate("load_switches")
        fast = asyncio.create_task(made.apply_switches(["exp"]))  # reads the kill, answers late
        await asyncio.sleep(0)
        store.state = stored(control={"kill": "0"})  # unkilled meanwhile
        assert await made.refresh_once()
        gate.set()
        await fast
        assert not killed(holder)

    asyncio.run(run())


def test_a_failing_fast_path_is_logged_once_and_leaves_the_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    store = fakes.FakeStore(stored())
    made, holder = refresher(store)

    async def run() -> None:
        assert await made.refresh_once()
        before = holder.current
        store.failing.add("load_switches")
        for _ in range(3):
            made.notice("exp")
            await made.settle()
        assert holder.current is before

    with caplog.at_level(logging.WARNING, logger="mabrouter.runtime.refresher"):
        asyncio.run(run())
    assert sum("ahead of the refresh" in r.getMessage() for r in caplog.records) == 1


def sticky_request(unit: str = "u1") -> RouteInput:
    return RouteInput("exp", unit, {})


def test_sticky_lookups_fall_back_to_hash_seeded_draws_while_the_store_is_down() -> None:
    spec = bernoulli_spec(2, name="exp")
    sticky_state = state(replace(spec, sticky_ttl_seconds=3600))
    store = fakes.FakeStore()
    assignments = StickyAssignments(store, breaker_seconds=60)

    store.sticky["exp", "exp", "u1"] = "arm-1"
    assert asyncio.run(assignments.resolve(sticky_request(), sticky_state)).sticky_arm == "arm-1"
    store.down = True
    assert asyncio.run(assignments.resolve(sticky_request(), sticky_state)).sticky_arm == "arm-1"  # cached
    assert asyncio.run(assignments.resolve(sticky_request("u2"), sticky_state)).hash_seeded
    calls = len(store.calls)
    assert asyncio.run(assignments.resolve(sticky_request("u3"), sticky_state)).hash_seeded
    assert len(store.calls) == calls  # the breaker is open: no lookup at all


def test_sticky_assignments_are_written_later_and_the_first_writer_wins() -> None:
    spec = bernoulli_spec(2, name="exp")
    sticky_state = state(replace(spec, sticky_ttl_seconds=3600))
    store = fakes.FakeStore()
    assignments = StickyAssignments(store)
    sampled = Decision("arm-1", Reason.SAMPLED, 0.5, 1, {}, counted=True)
    assignments.remember(sticky_request("u1"), sampled, sticky_state)
    assignments.remember(sticky_request("u2"), sampled, sticky_state)
    store.sticky["exp", "exp", "u2"] = "arm-0"  # another replica assigned u2 first

    store.down = True
    asyncio.run(assignments.flush())  # kept for the next flush
    store.down = False
    asyncio.run(assignments.flush())

    assert store.sticky == {("exp", "exp", "u1"): "arm-1", ("exp", "exp", "u2"): "arm-0"}
    assert asyncio.run(assignments.resolve(sticky_request("u2"), sticky_state)).sticky_arm == "arm-0"
    assert store.calls == ["assign_sticky", "assign_sticky"]  # u2's adopted arm came from the cache


def test_an_unstorable_sticky_assignment_is_not_retried_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = bernoulli_spec(2, name="exp")
    sticky_state = state(replace(spec, sticky_ttl_seconds=3600))
    store = fakes.FakeStore()
    store.unstorable.add(("exp", "exp", "u1"))
    assignments = StickyAssignments(store)
    decision = Decision("arm-1", Reason.SAMPLED, 0.5, 1, {}, counted=True)
    with caplog.at_level(logging.ERROR, logger="mabrouter.runtime.sticky"):
        for unit in ("u1", "u2", "u1"):
            assignments.remember(sticky_request(unit), decision, sticky_state)
            asyncio.run(assignments.flush())
    assert store.sticky == {("exp", "exp", "u2"): "arm-1"}
    assert store.calls.count("assign_sticky") == 3  # one flush each: nothing left to retry
    assert sum("cannot be stored" in r.getMessage() for r in caplog.records) == 1
    assert asyncio.run(assignments.resolve(sticky_request("u1"), sticky_state)).sticky_arm == "arm-1"
