"""Decode and validate operator switches stored in a control hash; encode the changes routers make to them.

Operators may edit these with plain redis-cli during an incident, so every field is checked: a value
that does not parse raises ValueError naming the field and what it accepts, and the router keeps the
last good switches instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mabrouter.core.model import Controls, ExperimentSpec, GlobalControls
from mabrouter.store.keys import (
    KILL,
    KILL_ARM_PREFIX,
    RAMP_PREFIX,
    RAMP_SINCE_PREFIX,
    REASON,
    ROLLOUT,
    VERSION,
    kill_arm_field,
)
from mabrouter.store.records import GuardedChange

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
MAX_REASON_CHARS = 2000


def parse_flag(field: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"control field {field!r} is {text[:40]!r}; use 1 (on) or 0 (off)")


def parse_rollout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"control field 'rollout' is {text[:40]!r}; use a percent from 0 to 100") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ValueError(f"control field 'rollout' is {text[:40]!r}; use a percent from 0 to 100")
    return value


def control_version(raw: Mapping[str, str]) -> int:
    text = raw.get(VERSION, "0")
    if not text.isdigit():
        raise ValueError(f"control field 'version' is {text[:40]!r}; it must be a non-negative integer")
    return int(text)


def _reason(raw: Mapping[str, str]) -> str:
    return raw.get(REASON, "")[:MAX_REASON_CHARS]


def _arm_killed(field: str, value: str, spec: ExperimentSpec) -> bool:
    if not field.startswith(KILL_ARM_PREFIX):
        raise ValueError(
            f"unknown control field {field[:60]!r}; fields are kill, kill:<arm>, rollout, reason, version"
        )
    arm = field.removeprefix(KILL_ARM_PREFIX)
    if spec.arm_index(arm) is None:
        names = ", ".join(a.name for a in spec.arms)
        raise ValueError(f"control field {field[:60]!r} names no arm of {spec.name} (arms: {names})")
    killed = parse_flag(field, value)
    if killed and arm == spec.control:
        raise ValueError(f"control field {field!r}: the control arm cannot be killed; kill the experiment")
    return killed


def _ramp_entry(field: str, value: str, spec: ExperimentSpec) -> tuple[bool, str, int]:
    """(is ramp_since, arm, value) of ramp:<arm> (step index) or ramp_since:<arm> (epoch ms)."""
    is_since = field.startswith(RAMP_SINCE_PREFIX)
    arm = field.removeprefix(RAMP_SINCE_PREFIX if is_since else RAMP_PREFIX)
    index = spec.arm_index(arm)
    if index is None or not spec.arms[index].ramp:
        raise ValueError(f"control field {field[:60]!r} names no ramping arm of {spec.name}")
    if not value.isdigit():
        raise ValueError(f"control field {field!r} is {value[:40]!r}; it must be a non-negative integer")
    return is_since, arm, int(value)


def parse_controls(
    raw: Mapping[str, str], spec: ExperimentSpec, previous: Controls | None = None
) -> tuple[Controls, list[str]]:
    """The switches in `raw`, validated field by field, and the problems found.

    A bad field keeps its own last good value (from `previous`) and is reported; it never blocks the
    other fields: a valid kill must take effect even next to a typo left by redis-cli in an incident.
    """
    last = previous or Controls()
    problems: list[str] = []
    killed = _kill_switch(raw, last.killed, problems)
    killed_arms: set[str] = set()
    cleared_arms: set[str] = set()
    ramp_steps: dict[str, int] = {}
    ramp_since: dict[str, int] = {}
    for field, value in raw.items():
        if field in (KILL, ROLLOUT, REASON, VERSION):
            continue
        if field.startswith((RAMP_PREFIX, RAMP_SINCE_PREFIX)):
            try:
                is_since, arm, number = _ramp_entry(field, value, spec)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            (ramp_since if is_since else ramp_steps)[arm] = number
            continue
        try:
            arm_name = field.removeprefix(KILL_ARM_PREFIX)
            (killed_arms if _arm_killed(field, value, spec) else cleared_arms).add(arm_name)
        except ValueError as exc:
            problems.append(str(exc))
            if field.removeprefix(KILL_ARM_PREFIX) in last.killed_arms:
                killed_arms.add(field.removeprefix(KILL_ARM_PREFIX))
    rollout = last.rollout
    try:
        rollout_text = raw.get(ROLLOUT, "")
        rollout = parse_rollout(rollout_text) if rollout_text.strip() else None
    except ValueError as exc:
        problems.append(str(exc))
    return Controls(
        ramp_steps=ramp_steps,
        ramp_since_ms=ramp_since,
        killed=killed,
        killed_arms=frozenset(killed_arms),
        operator_cleared=frozenset(cleared_arms),
        rollout=rollout,
        reason=_reason(raw),
    ), problems


def parse_global_controls(
    raw: Mapping[str, str], previous: GlobalControls | None = None
) -> tuple[GlobalControls, list[str]]:
    """The global switches in `raw` and the problems found, field by field as `parse_controls` does: a
    stray field or a bad version never hides a valid `kill 1` next to it, and a bad `kill` value keeps
    the last good one (from `previous`)."""
    problems = [
        f"unknown global control field {field[:40]!r}; fields are kill, reason, version"
        for field in sorted(set(raw) - {KILL, REASON, VERSION})
    ]
    killed = _kill_switch(raw, previous.killed if previous is not None else False, problems)
    return GlobalControls(killed=killed, reason=_reason(raw)), problems


def _kill_switch(raw: Mapping[str, str], last: bool, problems: list[str]) -> bool:
    """The `kill` field (or `last` when it does not parse); also checks `version`. Appends problems."""
    killed = last
    try:
        killed = parse_flag(KILL, raw.get(KILL, "0"))
    except ValueError as exc:
        problems.append(str(exc))
    try:
        control_version(raw)
    except ValueError as exc:
        problems.append(str(exc))
    return killed


# The switch changes a router makes on its own (the guardian). Each applies only over the switch as
# judged (GuardedChange.expected), so of all replicas judging the same snapshot exactly one wins.


def arm_kill(arm: str, evidence: str, *, over_unkill: bool) -> GuardedChange:
    """Kill an arm over an unset switch or, judged on fresh evidence, over the operator's unkill ("0");
    never over a switch someone changed meanwhile."""
    return GuardedChange(
        field=kill_arm_field(arm),
        value="1",
        expected="0" if over_unkill else "",
        unless=False,
        actor="guardrail",
        action="auto-kill",
        reason=evidence,
    )


def ramp_start(arm: str, now_ms: int, reason: str) -> GuardedChange:
    return GuardedChange(
        field=f"{RAMP_SINCE_PREFIX}{arm}",
        value=str(now_ms),
        expected="",
        unless=False,
        actor="ramp",
        action="ramp-start",
        reason=reason,
    )


def ramp_advance(arm: str, step: int, now_ms: int, reason: str) -> GuardedChange:
    """From step index `step` (stored as no field while 0) to the next, restarting the step's clock."""
    return GuardedChange(
        field=f"{RAMP_PREFIX}{arm}",
        value=str(step + 1),
        expected=str(step) if step else "",
        unless=False,
        actor="ramp",
        action="ramp-advance",
        reason=reason,
        also=((f"{RAMP_SINCE_PREFIX}{arm}", str(now_ms)),),
    )
