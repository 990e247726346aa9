"""When the snapshot builder rebuilds an experiment's state (pure: raw Redis data in, states out, no I/O).

New data alone rebuilds a state only once it moved the posterior (2% more observations, or 20 while
small) or the state is a second old; a new document version or any switch rebuilds it at once.
"""

from __future__ import annotations

import json

import yaml

from mabrouter.core.snapshot import Snapshot
from mabrouter.runtime.snapshot_builder import (
    REBUILD_MAX_AGE_SECONDS,
    SnapshotBuilder,
    rebuild_due,
)
from mabrouter.store.records import RawExperiment, RawState

from support import EXAMPLE

DOC = json.dumps(yaml.safe_load(EXAMPLE.read_text()))
ARMS = ("ranker-v1", "ranker-v2", "ranker-v3")


def raw(trials: int, *, version: int = 1, control: dict[str, str] | None = None) -> RawState:
    stats = {f"{arm}:trials": str(trials) for arm in ARMS}
    stats.update({f"{arm}:count": str(trials // 10) for arm in ARMS})
    stats.update({f"{arm}:sum": str(trials // 10) for arm in ARMS})
    experiment = RawExperiment(
        name="ranker", config={"doc": DOC, "version": str(version)}, stats=stats, control=control or {}
    )
    return RawState(experiments=[experiment], global_control={})


class Builder:
    def __init__(self) -> None:
        self.builder = SnapshotBuilder()
        self.snapshot: Snapshot | None = None

    def build(self, state: RawState, at: float) -> bool:
        """Build at monotonic time `at`; True when the experiment's state was rebuilt."""
        before = self.snapshot.experiments["ranker"] if self.snapshot is not None else None
        self.snapshot = self.builder.build(state, self.snapshot, at)
        return self.snapshot.experiments["ranker"] is not before


def test_the_rule() -> None:
    assert not rebuild_due(10_000, 10_199, 0.5)  # < 2%
    assert rebuild_due(10_000, 10_200, 0.5)  # 2%
    assert rebuild_due(100, 120, 0.1)  # small: 20 observations are news
    assert not rebuild_due(100, 119, 0.1)
    assert rebuild_due(10_000, 10_001, REBUILD_MAX_AGE_SECONDS)  # a second old
    assert rebuild_due(10_000, 5_000, 0.0)  # counts went down (reset or discounting rebase)


def test_small_news_waits_for_a_second_and_big_news_does_not() -> None:
    builder = Builder()
    assert builder.build(raw(10_000), at=0.0)
    assert not builder.build(raw(10_010), at=0.2)  # 60 new observations over 33,000
    assert not builder.build(raw(10_020), at=0.4)
    assert builder.build(raw(10_030), at=1.0)  # a second since the last rebuild
    assert builder.build(raw(11_000), at=1.2)  # 9% more: at once
    assert not builder.build(raw(11_000), at=5.0)  # nothing changed: never rebuilt


def test_a_kill_or_a_new_version_rebuilds_at_once() -> None:
    builder = Builder()
    assert builder.build(raw(10_000), at=0.0)
    assert builder.build(raw(10_001, control={"kill:ranker-v3": "1"}), at=0.1)
    assert builder.snapshot is not None
    assert builder.snapshot.experiments["ranker"].controls.killed_arms == {"ranker-v3"}
    assert builder.build(raw(10_002, version=2, control={"kill:ranker-v3": "1"}), at=0.2)
    assert builder.snapshot.experiments["ranker"].version == 2
