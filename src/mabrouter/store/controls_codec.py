"""Decode and validate operator switches stored in a control hash.

Operators may edit these with plain redis-cli during an incident, so every field is checked: a value
that does not parse raises ValueError naming the field and what it accepts, and the router keeps the
last good switches instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mabrouter.core.model import Controls, ExperimentSpec, GlobalControls
from mabrouter.store.keys import KILL, KILL_ARM_PREFIX, REASON, ROLLOUT, VERSION

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


def parse_controls(raw: Mapping[str, str], spec: ExperimentSpec) -> Controls:
    killed_arms: set[str] = set()
    for field, value in raw.items():
        if field.startswith(KILL_ARM_PREFIX):
            arm = field.removeprefix(KILL_ARM_PREFIX)
            if spec.arm_index(arm) is None:
                names = ", ".join(a.name for a in spec.arms)
                raise ValueError(f"control field {field!r} names no arm of {spec.name} (arms: {names})")
            if arm == spec.control and parse_flag(field, value):
                raise ValueError(
                    f"control field {field!r}: the control arm cannot be killed; kill the experiment"
                )
            if parse_flag(field, value):
                killed_arms.add(arm)
        elif field not in (KILL, ROLLOUT, REASON, VERSION):
            raise ValueError(
                f"unknown control field {field!r}; fields are kill, kill:<arm>, rollout, reason, version"
            )
    control_version(raw)
    rollout_text = raw.get(ROLLOUT, "")
    return Controls(
        killed=parse_flag(KILL, raw.get(KILL, "0")),
        killed_arms=frozenset(killed_arms),
        rollout=parse_rollout(rollout_text) if rollout_text.strip() else None,
        reason=_reason(raw),
    )


def parse_global_controls(raw: Mapping[str, str]) -> GlobalControls:
    unknown = set(raw) - {KILL, REASON, VERSION}
    if unknown:
        raise ValueError(
            f"unknown global control field(s) {sorted(unknown)}; fields are kill, reason, version"
        )
    control_version(raw)
    return GlobalControls(killed=parse_flag(KILL, raw.get(KILL, "0")), reason=_reason(raw))
