"""What the store's adapters encode from the ports' domain terms, and how they name a failure: pure
functions, checked without a Redis (the integration tests check that Redis agrees)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError

from mabrouter.core.model import RampStep
from mabrouter.errors import StoreUnavailableError
from mabrouter.store.controls_codec import arm_kill, parse_controls, ramp_advance, ramp_start
from mabrouter.store.errors import translated, unavailable
from mabrouter.store.raw_edits import RawEditWatcher
from mabrouter.store.records import RawExperiment, TrialCounts, UnattributedEdit, arm_of_kill_target
from mabrouter.store.stats_codec import arm_stats, holdout_split, trial_increments

from core_fixtures import bernoulli_spec


def test_trial_counts_become_the_stats_fields_the_decoder_reads_back() -> None:
    counts = TrialCounts(
        trials={"arm-0": 3.0, "arm-1": 1.0},
        segment_trials={("mobile", "arm-1"): 1.0},
        sampled={"arm-1": 1.0},
        expected={"arm-0": 0.5, "arm-1": 0.5},
        holdout=2.0,
        bandit=4.0,
        discount=(1_000, 60_000.0, 2.0),
    )
    fields = trial_increments(counts)
    assert fields == {
        "arm-0:trials": 3.0,
        "arm-1:trials": 1.0,
        "@mobile|arm-1:trials": 1.0,
        "arm-1:sampled": 1.0,
        "arm-0:expected": 0.5,
        "arm-1:expected": 0.5,
        "_split:holdout": 2.0,
        "_split:bandit": 4.0,
        "arm-0:d:trials": 6.0,
        "arm-1:d:trials": 2.0,
    }
    stored = {field: repr(value) for field, value in fields.items()}
    spec = bernoulli_spec(2)
    pooled = arm_stats(spec, stored)
    assert [(s.trials, s.sampled, s.expected_trials) for s in pooled] == [(3, 0, 0.5), (1, 1, 0.5)]
    assert [s.trials for s in arm_stats(spec, stored, "mobile")] == [0, 1]
    assert holdout_split(stored) == (2.0, 4.0)


def test_an_experiment_without_holdout_or_discount_writes_no_such_fields() -> None:
    assert trial_increments(TrialCounts(trials={"a": 1.0}, bandit=1.0)) == {
        "a:trials": 1.0,
        "_split:bandit": 1.0,
    }


def test_the_guardians_switch_changes_read_back_as_the_switches_they_mean() -> None:
    plain = bernoulli_spec(3)
    ramping = replace(plain.arms[1], ramp=(RampStep(0.05, 60), RampStep(0.25, 60), RampStep(0.5, 60)))
    spec = replace(plain, arms=(plain.arms[0], ramping, plain.arms[2]))
    kill = arm_kill("arm-1", "error: 20% vs 1%", over_unkill=False)
    assert (kill.expected, kill.actor, kill.action) == ("", "guardrail", "auto-kill")
    assert arm_kill("arm-1", "e", over_unkill=True).expected == "0"  # only over the operator's unkill
    start = ramp_start("arm-1", 1_234, "step 1 of 2: 5%")
    advance = ramp_advance("arm-1", 1, 5_678, "held")
    assert (advance.expected, ramp_advance("arm-1", 0, 0, "").expected) == ("1", "")
    stored = {
        kill.field: kill.value,
        start.field: start.value,
        advance.field: advance.value,
        **dict(advance.also),
    }
    controls, problems = parse_controls(stored, spec)
    assert problems == []
    assert controls.killed_arms == {"arm-1"}
    assert (controls.ramp_steps, controls.ramp_since_ms) == ({"arm-1": 2}, {"arm-1": 5_678})
    assert arm_of_kill_target("exp", f"exp/{kill.field}") == "arm-1"
    assert arm_of_kill_target("exp", f"exp/{start.field}") is None


def test_raw_edits_are_changes_under_an_unchanged_version() -> None:
    watcher = RawEditWatcher()

    def seen(control: dict[str, str], doc: str = "{}", version: str = "1") -> list[UnattributedEdit]:
        return watcher.experiment(RawExperiment("exp", {"doc": doc, "version": version}, {}, control))

    assert seen({"kill": "0", "version": "1"}) == []  # first sight: nothing to compare with
    assert seen({"kill": "1", "version": "1"}) == [UnattributedEdit("exp", "exp", "0", "1")]
    assert seen({"kill": "0", "version": "2"}) == []  # the CLI bumps the version: attributed
    assert seen({"kill": "0", "kill:arm-1": "1", "version": "2"}, doc="{ }") == [
        UnattributedEdit("exp", "exp/kill:arm-1", "", "1"),
        UnattributedEdit("exp", "exp/doc", "{}", "{ }"),
    ]
    assert watcher.global_switches({"kill": "1"}) == []
    assert watcher.global_switches({}) == [UnattributedEdit("_global", "_global", "1", "")]


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (RedisConnectionError("Error 111 connecting"), "cannot reach Redis: Error 111 connecting"),
        (TimeoutError(), "cannot reach Redis: TimeoutError"),
        (OSError("no route"), "cannot reach Redis: no route"),
        (RedisClusterException("no node"), "cannot reach the Redis cluster: no node"),
        (ResponseError("NOPERM no permissions"), "Redis refused the command: NOPERM no permissions"),
    ],
)
def test_a_store_failure_leaves_as_one_domain_error_naming_its_kind(failure: Exception, message: str) -> None:
    assert str(unavailable(failure)) == message
    with pytest.raises(StoreUnavailableError, match=message) as raised, translated:
        raise failure
    assert raised.value.__cause__ is failure


def test_anything_else_passes_through_untranslated() -> None:
    with pytest.raises(KeyError), translated:
        raise KeyError("not the store's")
