"""The snapshot builder under anything written into Redis by hand (pure: raw data in, snapshot out).

Whatever the documents, statistics and switches hold, building never raises, every experiment that
once had a good state keeps one, decisions never fail with anything but a documented error, and a
valid kill switch written next to the garbage is obeyed: experiment, arm and global.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings

from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.model import Reason
from mabrouter.core.snapshot import Snapshot
from mabrouter.errors import MabrouterError
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.store.records import RawExperiment, RawState

from hostile_stored import ARMS, DOCS, hostile_state, stored_doc

HOSTILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def good_raw() -> dict[str, dict[str, str]]:
    raw: dict[str, dict[str, str]] = {"_global": {}}
    for name in DOCS:
        raw[f"{name}:config"] = {"doc": stored_doc(name), "version": "1"}
        raw[f"{name}:stats"] = {f"{arm}:trials": "100" for arm in ARMS[name]}
        raw[f"{name}:control"] = {}
    return raw


def as_state(raw: dict[str, dict[str, str]]) -> RawState:
    experiments = [
        RawExperiment(name, raw[f"{name}:config"], raw[f"{name}:stats"], raw[f"{name}:control"])
        for name in DOCS
    ]
    return RawState(experiments, raw["_global"])


def with_edits(raw: dict[str, dict[str, str]], edits: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {key: {**fields, **edits.get(key, {})} for key, fields in raw.items()}


def route_all(snapshot: Snapshot, rng: np.random.Generator) -> dict[str, Reason | None]:
    """Reason per experiment for a few units; None when refused with a documented error."""
    reasons: dict[str, Reason | None] = {}
    for name in DOCS:
        for unit in ("u1", "u2", "u3"):
            try:
                decision = decide(RouteInput(name, unit, {"country": "FR"}, ""), snapshot, rng)
            except MabrouterError:
                reasons[name] = None
            else:
                reasons[name] = decision.reason
    return reasons


@HOSTILE
@given(edits=hostile_state())
def test_nothing_stored_stops_the_builder_or_a_kill(edits: dict[str, Any]) -> None:
    builder = SnapshotBuilder()
    rng = np.random.default_rng(1)
    good = builder.build(as_state(good_raw()), None, 0.0)
    assert set(good.experiments) == set(DOCS)

    hostile = with_edits(good_raw(), edits)
    snapshot = builder.build(as_state(hostile), good, 1.0)
    assert set(snapshot.experiments) == set(DOCS)  # a good state, once had, is never dropped
    route_all(snapshot, rng)

    # A kill written next to whatever is there now is obeyed, for each experiment and globally.
    for name in DOCS:
        killed = with_edits(hostile, {f"{name}:control": {"kill": "1"}})
        snapshot = builder.build(as_state(killed), snapshot, 2.0)
        assert route_all(snapshot, rng)[name] is Reason.KILLED, (name, snapshot.errors)
    arms_killed = with_edits(
        hostile, {f"{name}:control": {f"kill:{arm}": "1" for arm in ARMS[name][1:]} for name in DOCS}
    )
    snapshot = builder.build(as_state(arms_killed), snapshot, 3.0)
    for name in DOCS:
        state = snapshot.experiments[name]
        assert state.live == (state.control_index,), (name, state.controls, snapshot.errors)
    all_killed = with_edits(hostile, {"_global": {"kill": "1"}})
    snapshot = builder.build(as_state(all_killed), snapshot, 4.0)
    assert set(route_all(snapshot, rng).values()) == {Reason.KILLED}


@HOSTILE
@given(edits=hostile_state())
def test_an_experiment_never_good_answers_its_default_arm(edits: dict[str, Any]) -> None:
    """A replica that starts on garbage: the experiments it cannot use are refused (UNAVAILABLE) or get
    the caller's default arm; the others are served."""
    builder = SnapshotBuilder()
    snapshot = builder.build(as_state(with_edits(good_raw(), edits)), None, 0.0)
    for name in DOCS:
        if name in snapshot.experiments:
            continue
        assert name in snapshot.errors
        decision = decide(RouteInput(name, "u1", {}, "fallback"), snapshot, np.random.default_rng(0))
        assert (decision.arm, decision.reason) == ("fallback", Reason.FALLBACK_DEFAULT)


WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


def test_an_unreadable_hash_keeps_the_last_good_state_and_its_switches_still_apply() -> None:
    """A key of another type in place of a hash (Redis refuses to read it): the builder keeps the last
    good state; a readable control hash still kills it; an unreadable one keeps its last good switches
    (an empty read must never unkill); no audit entry is made up from the empty read."""
    builder, rng = SnapshotBuilder(), np.random.default_rng(0)
    raw = good_raw()
    raw["gauss:control"] = {"kill": "1"}
    snapshot = builder.build(as_state(raw), None, 0.0)
    assert route_all(snapshot, rng)["gauss"] is Reason.KILLED

    def unreadable(family: str, control: dict[str, str]) -> RawState:
        state = as_state({**raw, "gauss:control": control})
        broken = [
            RawExperiment(item.name, item.config, item.stats, item.control, {family: WRONGTYPE})
            if item.name == "gauss"
            else item
            for item in state.experiments
        ]
        return RawState(broken, state.global_control)

    for family in ("config", "stats"):  # unkilled while the stats (or document) cannot be read: obeyed
        snapshot = builder.build(unreadable(family, {}), snapshot, 1.0)
        assert "cannot read its" in snapshot.errors["gauss"]
        assert route_all(snapshot, rng) == {"gauss": Reason.SAMPLED, "plain": Reason.SAMPLED}
        snapshot = builder.build(unreadable(family, {"kill": "1"}), snapshot, 2.0)
        assert route_all(snapshot, rng)["gauss"] is Reason.KILLED
    snapshot = builder.build(unreadable("control", {}), snapshot, 3.0)  # read as {}: not an unkill
    assert route_all(snapshot, rng)["gauss"] is Reason.KILLED
    assert "gauss" in snapshot.errors
    assert builder.take_unattributed() == []


def test_unreadable_global_switches_keep_the_last_good_ones() -> None:
    builder, rng = SnapshotBuilder(), np.random.default_rng(0)
    raw = good_raw()
    snapshot = builder.build(RawState(as_state(raw).experiments, {"kill": "1"}), None, 0.0)
    assert set(route_all(snapshot, rng).values()) == {Reason.KILLED}
    snapshot = builder.build(RawState(as_state(raw).experiments, {}, WRONGTYPE), snapshot, 1.0)
    assert snapshot.global_controls.killed
    assert set(route_all(snapshot, rng).values()) == {Reason.KILLED}
    snapshot = builder.build(RawState(as_state(raw).experiments, {}), snapshot, 2.0)  # readable again
    assert set(route_all(snapshot, rng).values()) == {Reason.SAMPLED}
