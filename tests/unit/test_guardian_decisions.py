"""The guardian's decisions (kill a breaching arm, start and advance ramps, rebase the discount epoch),
driven through the GuardianSwitches port with an in-memory store: what it asks for, and when not."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter

from mabrouter.core.model import ArmStats, Controls, ExperimentSpec, Guardrail, MetricStats, RampStep
from mabrouter.core.snapshot import ExperimentState, Snapshot, build_experiment_state
from mabrouter.runtime.guardian import Guardian
from mabrouter.runtime.holder import SnapshotHolder

import fakes
from core_fixtures import bernoulli_spec

ERRORS = Guardrail("error", kind="rate", max_increase=0.02, min_samples=100)
NO_CONTROLS = Controls()


def error_stats(n: int, errors: int) -> ArmStats:
    return ArmStats(n, n, n / 10, n / 10, metrics={"error": MetricStats(n, float(errors), float(errors))})


class Rig:
    def __init__(self, store: fakes.FakeStore | None = None) -> None:
        self.store = store or fakes.FakeStore()
        self.holder = SnapshotHolder()
        self.actions = Counter("actions", "guardian actions", ["e", "a", "k"], registry=CollectorRegistry())
        self.guardian = Guardian(self.store, self.holder, np.random.default_rng(0), self.actions)

    def publish(self, *states: ExperimentState) -> None:
        self.holder.current = Snapshot({s.spec.name: s for s in states}, loaded_at=0.0)

    def check(self) -> None:
        asyncio.run(self.guardian.check())

    def acted(self, kind: str) -> float:
        return sum(
            sample.value
            for metric in self.actions.collect()
            for sample in metric.samples
            if sample.name == "actions_total" and sample.labels["k"] == kind
        )


def guarded(name: str = "exp") -> ExperimentSpec:
    return replace(bernoulli_spec(3, name=name), guardrails=(ERRORS,))


def make(
    spec: ExperimentSpec, stats: tuple[ArmStats, ...], controls: Controls = NO_CONTROLS
) -> ExperimentState:
    return build_experiment_state(spec, 1, stats, controls)


HARMFUL = (error_stats(2000, 20), error_stats(400, 80), error_stats(2000, 20))  # arm-1: 20% vs 1%
HEALTHY = (error_stats(2000, 20), error_stats(400, 4), error_stats(2000, 20))


def test_a_breaching_arm_is_killed_once_with_its_evidence_and_a_second_replica_loses() -> None:
    rig = Rig()
    rig.publish(make(guarded(), HARMFUL))
    rig.check()
    rig.check()  # the same state again: the same verdict, not a second kill

    (kill,) = rig.store.switches
    assert (kill.experiment, kill.arm, kill.action, kill.won) == ("exp", "arm-1", "auto-kill", True)
    assert kill.reason.startswith("error:")
    assert rig.store.kills == {("exp", "arm-1"): "1"}
    assert rig.acted("auto_kill") == 1

    other = Rig(rig.store)  # another replica judging the same snapshot
    other.publish(make(guarded(), HARMFUL))
    other.check()
    assert [switch.won for switch in rig.store.switches] == [True, False]
    assert other.acted("auto_kill") == 0


def test_a_healthy_experiment_is_left_alone() -> None:
    rig = Rig()
    rig.publish(make(guarded(), HEALTHY))
    rig.check()
    assert rig.store.switches == []


def test_after_an_operator_unkill_only_evidence_gathered_since_kills_again() -> None:
    rig = Rig()
    rig.store.kills["exp", "arm-1"] = "0"  # the operator's unkill
    unkilled = Controls(operator_cleared=frozenset({"arm-1"}))
    rig.publish(make(guarded(), HARMFUL, unkilled))
    rig.check()
    assert rig.store.switches == []  # the overruled evidence does not count again

    since = (error_stats(2500, 25), error_stats(600, 82), error_stats(2500, 25))  # +200 outcomes, 2 errors
    rig.publish(make(guarded(), since, unkilled))
    rig.check()
    assert rig.store.switches == []

    regressed = (error_stats(3000, 30), error_stats(900, 142), error_stats(3000, 30))  # +500, 62 errors
    rig.publish(make(guarded(), regressed, unkilled))
    rig.check()
    (kill,) = rig.store.switches
    assert kill.won
    assert "since the operator's unkill" in kill.reason
    assert rig.store.kills == {("exp", "arm-1"): "1"}


def ramping(steps: tuple[RampStep, ...]) -> ExperimentSpec:
    spec = guarded("ramp")
    arms = (spec.arms[0], replace(spec.arms[1], ramp=steps), spec.arms[2])
    return replace(spec, arms=arms)


def test_a_ramp_starts_then_advances_once_its_step_has_held_and_has_its_trials() -> None:
    steps = (RampStep(0.05, min_seconds=0, min_trials=50), RampStep(0.25, min_seconds=0))
    rig = Rig()
    rig.publish(make(ramping(steps), (HEALTHY[0], error_stats(49, 0), HEALTHY[2])))
    rig.check()
    assert [(s.action, s.arm) for s in rig.store.switches] == [("ramp-start", "arm-1")]
    assert rig.store.switches[0].reason == "step 1 of 2: 5%"
    step, since_ms = rig.store.ramps["ramp", "arm-1"]
    assert step == 0
    assert abs(since_ms - time.time() * 1000) < 60_000

    started = Controls(ramp_since_ms={"arm-1": since_ms})
    rig.publish(make(ramping(steps), (HEALTHY[0], error_stats(49, 0), HEALTHY[2]), started))
    rig.check()
    assert len(rig.store.switches) == 1  # one trial short of the step's minimum: holds

    rig.publish(make(ramping(steps), (HEALTHY[0], error_stats(50, 0), HEALTHY[2]), started))
    rig.check()
    advance = rig.store.switches[-1]
    assert (advance.action, advance.won) == ("ramp-advance", True)
    assert "50 trials" in advance.reason
    assert advance.reason.endswith("next 25%")
    assert rig.store.ramps["ramp", "arm-1"][0] == 1
    assert rig.acted("ramp_advance") == 1


def test_a_breach_halts_the_ramp_and_kills_the_arm() -> None:
    rig = Rig()
    began = Controls(ramp_since_ms={"arm-1": 0})
    rig.publish(make(ramping((RampStep(0.05, min_seconds=0), RampStep(0.25, min_seconds=0))), HARMFUL, began))
    rig.check()
    assert [s.action for s in rig.store.switches] == ["auto-kill"]


def test_an_old_discount_epoch_is_rebased() -> None:
    rig = Rig()
    spec = replace(bernoulli_spec(2, name="drift"), half_life_seconds=1.0)
    old = int(time.time() * 1000) - 100_000  # 100 half-lives ago: the weights grow toward overflow
    rig.publish(replace(make(spec, (ArmStats(), ArmStats())), discount_epoch_ms=old))
    rig.check()
    ((experiment, epoch, half_life_ms),) = rig.store.rebases
    assert (experiment, half_life_ms) == ("drift", 1000.0)
    assert epoch > old + 99_000


def test_an_unreachable_store_stops_no_judging(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rig.store.down = True
    rig.publish(make(guarded("one"), HARMFUL), make(guarded("two"), HARMFUL))
    with caplog.at_level(logging.DEBUG, logger="mabrouter.runtime.guardian"):
        rig.check()  # does not raise
    assert rig.store.calls == ["kill_arm", "kill_arm"]  # each experiment tried on its own
    assert all(record.levelno == logging.DEBUG for record in caplog.records)

    rig.store.down = False
    rig.publish(make(guarded("one"), HARMFUL), make(guarded("two"), HARMFUL))  # new states: judged again
    rig.check()
    assert sorted(rig.store.kills) == [("one", "arm-1"), ("two", "arm-1")]


def test_a_kill_the_store_could_not_take_is_retried_on_the_same_statistics() -> None:
    rig = Rig()
    rig.publish(make(guarded(), HARMFUL))
    rig.store.down = True
    rig.check()  # the breach is found, the kill fails: Redis is down
    assert rig.store.kills == {}
    rig.store.down = False
    rig.check()  # the same state (no new statistics): judged again, and killed now
    assert rig.store.kills == {("exp", "arm-1"): "1"}
