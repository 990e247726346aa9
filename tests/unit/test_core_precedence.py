"""decide()'s precedence table, checked over every combination of operator switches (pure: no I/O).

Highest first: global kill > experiment kill > arm kill > allow/deny lists > targeting and rollout >
sticky > sampling. TABLE below restates it row by row, as the operator reads it, independently of the
order of decide()'s if-statements; the tests compare decide() with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from itertools import combinations, product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabrouter.core.decide import Decision, RouteInput, decide
from mabrouter.core.hashing import BUCKETS, bucket_of
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    BetaPrior,
    ContextualSpec,
    Controls,
    ExperimentSpec,
    GlobalControls,
    NumericFeature,
    Reason,
    RewardKind,
)
from mabrouter.core.snapshot import ExperimentState, Snapshot, build_experiment_state
from mabrouter.core.targeting import AllOf, Condition, Operator, Rule

NAME = "exp"
SALT = "precedence"
UNIT = "user-42"
VERSION = 7
CONTROL = "arm-0"
TREATMENTS = ("arm-1", "arm-2", "arm-3")
ARMS = (CONTROL, *TREATMENTS)
ARM_SPECS = tuple(ArmSpec(arm, BetaPrior(), {"endpoint": f"http://{arm}"}) for arm in ARMS)
# Conversion rates 10%..25% over 400 trials: unequal shares, every live arm still reachable.
STATS = tuple(ArmStats(400, 40 + 20 * i, 40.0 + 20 * i) for i in range(len(ARMS)))
KILL_SUBSETS = tuple(frozenset(c) for size in range(4) for c in combinations(TREATMENTS, size))
ATTRIBUTES = {"country": "NL", "app_version": "2.4.0"}


class Targeting(Enum):
    NONE = "no targeting"
    MATCH = "targeting matches"
    MISS = "targeting does not match"


def _rule(min_version: str) -> Rule:
    return AllOf(
        (
            Condition("country", Operator.IN, ("NL", "BE")),
            Condition("app_version", Operator.SEMVER_GTE, min_version),
        )
    )


RULES: dict[Targeting, Rule | None] = {
    Targeting.NONE: None,
    Targeting.MATCH: _rule("2.3.0"),
    Targeting.MISS: _rule("3.0.0"),
}


@dataclass(frozen=True)
class Switches:
    global_kill: bool
    experiment_kill: bool
    killed: frozenset[str]  # killed experimenting arms (the control arm cannot be killed)
    allow: str | None  # arm the unit is allow-listed to
    deny: bool
    targeting: Targeting
    exposed: bool  # the unit's bucket is inside the rollout (always, at 100%)
    sticky: str | None  # arm the request says the unit is stuck to

    def sticky_is_live(self) -> bool:
        return self.sticky in ARMS and self.sticky not in self.killed


@dataclass(frozen=True)
class Row:
    when: str
    applies: Callable[[Switches], bool]
    serves: str  # "control", "the allowed arm", "the sticky arm" or "a live arm"
    reason: Reason


# The precedence table of docs/contract.md, first matching row wins.
TABLE = (
    Row("global kill", lambda s: s.global_kill, "control", Reason.KILLED),
    Row("experiment kill", lambda s: s.experiment_kill, "control", Reason.KILLED),
    Row("every experimenting arm killed", lambda s: s.killed == set(TREATMENTS), "control", Reason.KILLED),
    Row("allow-listed to a killed arm", lambda s: s.allow in s.killed, "control", Reason.KILLED),
    Row("allow-listed to a live arm", lambda s: s.allow is not None, "the allowed arm", Reason.FORCED),
    Row("deny-listed", lambda s: s.deny, "control", Reason.DENIED),
    Row("targeting does not match", lambda s: s.targeting is Targeting.MISS, "control", Reason.NOT_TARGETED),
    Row("outside the rollout", lambda s: not s.exposed, "control", Reason.NOT_EXPOSED),
    Row("sticky to a live arm", Switches.sticky_is_live, "the sticky arm", Reason.STICKY),
    Row("otherwise", lambda s: True, "a live arm", Reason.SAMPLED),
)
# Only the policy's own choices are trials (propensity = the arm's share); the rest are imposed (1.0).
POLICY_REASONS = frozenset({Reason.STICKY, Reason.SAMPLED})


def expected_row(switches: Switches) -> Row:
    return next(row for row in TABLE if row.applies(switches))


def mismatch(decision: Decision, switches: Switches, state: ExperimentState) -> str | None:
    """What is wrong with `decision` for `switches` according to TABLE; None when it is right."""
    row = expected_row(switches)
    servable: dict[str, set[str | None]] = {
        "control": {CONTROL},
        "the allowed arm": {switches.allow},
        "the sticky arm": {switches.sticky},
        "a live arm": {arm for arm in ARMS if arm not in switches.killed},
    }
    arms = servable[row.serves]
    policy = row.reason in POLICY_REASONS
    index = ARMS.index(decision.arm) if decision.arm in ARMS else 0
    propensity = float(state.shares[index]) if policy else 1.0
    if state.contextual is not None and decision.context is not None:
        # a contextual decision is drawn from the allocation at its own context, which it carries
        propensity = float(decision.context.shares[index])
    carries_context = state.contextual is not None and policy
    if (
        (decision.context is not None) is carries_context
        and decision.reason is row.reason
        and decision.arm in arms
        and decision.counted is policy
        and decision.propensity == propensity
        and 0.0 < decision.propensity <= 1.0
        and decision.payload == {"endpoint": f"http://{decision.arm}"}
        and decision.config_version == VERSION
    ):
        return None
    return (
        f"{switches}: expected [{row.when}] {row.serves} {row.reason.name} counted={policy} "
        f"propensity={propensity}; got {decision.arm} {decision.reason.name} "
        f"counted={decision.counted} propensity={decision.propensity}"
    )


def make_state(
    *,
    experiment_kill: bool = False,
    killed: frozenset[str] = frozenset(),
    unit: str = UNIT,
    allow: str | None = None,
    deny: bool = False,
    targeting: Targeting = Targeting.NONE,
    rollout: float = 100.0,
    controls_rollout: float | None = None,
    salt: str = SALT,
    name: str = NAME,
    stats: tuple[ArmStats, ...] = STATS,
    contextual: bool = False,
) -> ExperimentState:
    spec = ExperimentSpec(
        name,
        RewardKind.BERNOULLI,
        CONTROL,
        ARM_SPECS,
        salt=salt,
        rollout=rollout,
        targeting=RULES[targeting],
        allow={unit: allow} if allow is not None else {},
        deny=frozenset({unit}) if deny else frozenset(),
        # a contextual experiment goes through the same chain; only the last step differs
        contextual=ContextualSpec((NumericFeature("load"),)) if contextual else None,
    )
    controls = Controls(killed=experiment_kill, killed_arms=killed, rollout=controls_rollout)
    return build_experiment_state(spec, VERSION, stats, controls)


cached_state = functools.cache(make_state)  # building one estimates shares by Monte Carlo (~3 ms)


def snapshot_of(state: ExperimentState, global_kill: bool = False) -> Snapshot:
    return Snapshot(
        {state.spec.name: state}, loaded_at=0.0, global_controls=GlobalControls(killed=global_kill)
    )


def pick(kind: str, killed: frozenset[str], last: bool) -> str | None:
    """An arm of `kind` ("none", "live" or "killed"); `last` picks another one than the allow-list's."""
    if kind == "none":
        return None
    arms = sorted(killed) if kind == "killed" else [a for a in TREATMENTS if a not in killed] or [CONTROL]
    return arms[-1] if last else arms[0]


@pytest.mark.parametrize("contextual", [False, True], ids=["thompson", "contextual"])
def test_every_combination_of_switches_follows_the_table(contextual: bool) -> None:
    bucket = bucket_of(SALT, UNIT)
    assert 0 < bucket < BUCKETS - 1  # so that both boundary rollouts below are strictly inside (0, 100)
    # Exactly at the unit's boundary: bucket b is exposed from (b + 1) hundredths of a percent, not at b.
    rollouts = {"full": 100.0, "exposing": (bucket + 1) / 100, "not exposing": bucket / 100}
    rng = np.random.default_rng(0)
    failures: list[str] = []
    rows_hit: set[str] = set()
    checked = 0
    bools = (False, True)
    kinds = ("none", "live", "killed")
    for global_kill, experiment_kill, killed, allow_kind, deny, targeting, rollout, sticky_kind in product(
        bools, bools, KILL_SUBSETS, kinds, bools, Targeting, rollouts, kinds
    ):
        if not killed and "killed" in (allow_kind, sticky_kind):
            continue  # no killed arm to point at
        allow, sticky = pick(allow_kind, killed, last=False), pick(sticky_kind, killed, last=True)
        state = cached_state(
            experiment_kill=experiment_kill,
            killed=killed,
            allow=allow,
            deny=deny,
            targeting=targeting,
            rollout=rollouts[rollout],
            contextual=contextual,
        )
        switches = Switches(
            global_kill, experiment_kill, killed, allow, deny, targeting, rollout != "not exposing", sticky
        )
        request = RouteInput(NAME, UNIT, {**ATTRIBUTES, "load": 0.5}, sticky_arm=sticky)
        decision = decide(request, snapshot_of(state, global_kill), rng)
        if problem := mismatch(decision, switches, state):
            failures.append(problem)
        rows_hit.add(expected_row(switches).when)
        checked += 1
    # 7 non-empty kill subsets x 3 x 3 allow/sticky kinds + the empty subset x 2 x 2, times
    # 2 x 2 x 2 x 3 x 3 global kill, experiment kill, deny, targeting and rollout.
    assert checked == (7 * 9 + 4) * 72
    assert rows_hit == {row.when for row in TABLE}
    assert not failures, f"{len(failures)} of {checked} combinations disagree:\n" + "\n".join(failures[:20])


UNIT_IDS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)  # no lone surrogates
HUNDREDTHS = st.integers(0, 10_000)  # rollout in hundredths of a percent: k exposes buckets < k


@settings(max_examples=400, deadline=None)
@given(
    unit=UNIT_IDS,
    salt=st.sampled_from(["", "s1", "another-salt"]),
    global_kill=st.booleans(),
    experiment_kill=st.booleans(),
    killed=st.frozensets(st.sampled_from(TREATMENTS)),
    allow=st.none() | st.sampled_from(ARMS),
    deny=st.booleans(),
    targeting=st.sampled_from(Targeting),
    hundredths=HUNDREDTHS,
    via_controls=st.booleans(),
    sticky=st.none() | st.sampled_from((*ARMS, "arm-removed")),
    hash_seeded=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_units_and_rollouts_follow_the_table(
    unit: str,
    salt: str,
    global_kill: bool,
    experiment_kill: bool,
    killed: frozenset[str],
    allow: str | None,
    deny: bool,
    targeting: Targeting,
    hundredths: int,
    via_controls: bool,
    sticky: str | None,
    hash_seeded: bool,
    seed: int,
) -> None:
    rollout = hundredths / 100
    exposed = bucket_of(salt or NAME, unit) < hundredths  # the salt defaults to the experiment name
    # An operator's rollout override wins over the document's: give the document the opposite answer.
    spec_rollout, controls_rollout = (
        ((0.0 if exposed else 100.0), rollout) if via_controls else (rollout, None)
    )
    state = make_state(
        experiment_kill=experiment_kill,
        killed=killed,
        unit=unit,
        allow=allow,
        deny=deny,
        targeting=targeting,
        rollout=spec_rollout,
        controls_rollout=controls_rollout,
        salt=salt,
    )
    request = RouteInput(NAME, unit, ATTRIBUTES, sticky_arm=sticky, hash_seeded=hash_seeded)
    decision = decide(request, snapshot_of(state, global_kill), np.random.default_rng(seed))
    switches = Switches(global_kill, experiment_kill, killed, allow, deny, targeting, exposed, sticky)
    assert mismatch(decision, switches, state) is None, mismatch(decision, switches, state)


def is_exposed(unit: str, hundredths: int) -> bool:
    state = cached_state(controls_rollout=hundredths / 100)
    decision = decide(RouteInput(NAME, unit), snapshot_of(state), np.random.default_rng(0))
    assert decision.reason in (Reason.NOT_EXPOSED, Reason.SAMPLED)
    return decision.reason is not Reason.NOT_EXPOSED


@settings(max_examples=300, deadline=None)
@given(unit=UNIT_IDS, a=HUNDREDTHS, b=HUNDREDTHS)
def test_raising_the_rollout_never_unexposes_a_unit(unit: str, a: int, b: int) -> None:
    low, high = sorted((a, b))
    if not is_exposed(unit, high):
        assert not is_exposed(unit, low)
    assert is_exposed(unit, 10_000)


def test_exposed_sets_only_grow_along_a_rollout_sweep() -> None:
    units = [f"u{i}" for i in range(500)]
    previous: set[str] = set()
    for hundredths in range(0, 10_001, 500):
        exposed = {unit for unit in units if is_exposed(unit, hundredths)}
        assert previous <= exposed, (hundredths, sorted(previous - exposed)[:5])
        assert abs(len(exposed) - len(units) * hundredths / 10_000) < 60  # > 5 sd of a binomial at 50%
        previous = exposed
    assert previous == set(units)


def exposed_units(state: ExperimentState, units: list[str]) -> set[str]:
    snap, rng = snapshot_of(state), np.random.default_rng(0)
    return {u for u in units if decide(RouteInput(state.spec.name, u), snap, rng).reason is Reason.SAMPLED}


def test_changing_the_salt_re_randomises_exposure() -> None:
    units = [f"user-{i}" for i in range(2000)]
    exposed_a = exposed_units(make_state(salt="a", rollout=50.0), units)
    exposed_b = exposed_units(make_state(salt="b", rollout=50.0), units)
    assert 900 < len(exposed_a) < 1100
    assert 900 < len(exposed_b) < 1100
    # Independent halves share about half their units (sd ~ 1.6% here); the same salt would share all.
    overlap = len(exposed_a & exposed_b) / len(exposed_a)
    assert 0.44 < overlap < 0.56, overlap
    assert exposed_units(make_state(salt="a", rollout=50.0), units) == exposed_a
    # Without a salt the experiment name is the salt.
    assert exposed_units(make_state(salt="", name="a", rollout=50.0), units) == exposed_a


def test_killed_arms_are_never_sampled_and_get_no_share() -> None:
    # The experimenting arms are by far the best, so a kill that leaked would show up immediately.
    stats = (ArmStats(1000, 50, 50.0), *(ArmStats(1000, 300 + 100 * i, 300.0 + 100 * i) for i in range(3)))
    states = {killed: make_state(killed=killed, stats=stats) for killed in KILL_SUBSETS}
    for killed, state in states.items():
        live = [ARMS.index(arm) for arm in ARMS if arm not in killed]
        assert all(state.shares[ARMS.index(arm)] == 0.0 for arm in killed)
        assert all(state.shares[i] > 0.0 for i in live)
        assert float(state.shares[live].sum()) == pytest.approx(1.0)
    rng = np.random.default_rng(2024)
    served: dict[Reason, int] = {}
    for i in range(5000):
        killed = KILL_SUBSETS[int(rng.integers(len(KILL_SUBSETS)))]
        request = RouteInput(NAME, f"unit-{i}", hash_seeded=bool(rng.integers(2)))
        decision = decide(request, snapshot_of(states[killed]), rng)
        assert decision.arm not in killed, (killed, decision)
        expected = Reason.KILLED if killed == set(TREATMENTS) else Reason.SAMPLED
        assert decision.reason is expected, (killed, decision)
        served[decision.reason] = served.get(decision.reason, 0) + 1
    assert served[Reason.SAMPLED] > 4000
