"""Turns raw Redis data into a Snapshot, keeping the last good state of anything invalid.

It also notices edits made outside the CLI (plain redis-cli during an incident): the CLI bumps the
version with every change, so content that changed under an unchanged version is an unattributed edit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mabrouter.core.model import ExperimentSpec, GlobalControls
from mabrouter.core.snapshot import ExperimentState, Snapshot, build_experiment_state
from mabrouter.errors import ConfigError
from mabrouter.schema import parse_experiment
from mabrouter.store.controls_codec import parse_controls, parse_global_controls
from mabrouter.store.keys import GLOBAL_SCOPE, VERSION
from mabrouter.store.router_store import RawExperiment, RawState
from mabrouter.store.stats_codec import arm_stats, discount_epoch, discounted_stats, segment_stats

log = logging.getLogger(__name__)

# A state whose only change is new data is rebuilt when that data moved it (its observations grew by
# 2%, or by 20 while small) or when it is a second old. Each rebuild estimates propensities by Monte
# Carlo (~2 ms for 10 arms): rebuilding every experiment on every 200 ms refresh costs a whole core at
# 100 experiments, while a 1% change in counts barely moves a posterior. Version and switch changes
# (kills, rollouts) always rebuild at once.
REBUILD_MAX_AGE_SECONDS = 1.0
REBUILD_MIN_GROWTH = 0.02
REBUILD_MIN_OBSERVATIONS = 1_000


def rebuild_due(observed_then: float, observed_now: float, age_seconds: float) -> bool:
    """Whether new data alone (same document, same switches) is worth a rebuild."""
    moved = abs(observed_now - observed_then) >= REBUILD_MIN_GROWTH * max(
        observed_then, REBUILD_MIN_OBSERVATIONS
    )
    return moved or age_seconds >= REBUILD_MAX_AGE_SECONDS


@dataclass(frozen=True, slots=True)
class UnattributedEdit:
    scope: str
    target: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What a state was built from: rebuild only when one of these changes."""

    version: int
    stats: Mapping[str, str]
    control: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Built:
    inputs: _Inputs
    at: float  # monotonic
    observations: float  # trials and rewards over all arms


class SnapshotBuilder:
    """Stateful across refreshes: caches parsed specs, reuses unchanged states, remembers raw inputs."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._specs: dict[str, tuple[str, ExperimentSpec]] = {}
        self._built: dict[str, _Built] = {}
        self._seen_raw: dict[str, tuple[Mapping[str, str], str]] = {}
        self._reported_bad: set[tuple[str, str]] = set()
        self._global = GlobalControls()
        self.invalid_documents = 0
        self.unattributed_total = 0
        self.unattributed: list[UnattributedEdit] = []

    def build(self, raw: RawState, previous: Snapshot | None, loaded_at: float) -> Snapshot:
        old = previous.experiments if previous else {}
        states: dict[str, ExperimentState] = {}
        errors: dict[str, str] = {}
        for item in raw.experiments:
            self._notice_raw_edits(item)
            try:
                state = self._state(item, old.get(item.name), loaded_at)
            except (ConfigError, ValueError, KeyError) as exc:
                errors[item.name] = str(exc)
                self._report_once(
                    item.name, item.config.get(VERSION, "?") + repr(sorted(item.control.items())), str(exc)
                )
                state = old.get(item.name)  # keep the last good version
            if state is not None:
                states[item.name] = state
        self._global = self._global_controls(raw.global_control, errors)
        return Snapshot(experiments=states, loaded_at=loaded_at, global_controls=self._global, errors=errors)

    def take_unattributed(self) -> list[UnattributedEdit]:
        edits, self.unattributed = self.unattributed, []
        return edits

    def _global_controls(self, raw: Mapping[str, str], errors: dict[str, str]) -> GlobalControls:
        self._notice_control_edit(GLOBAL_SCOPE, raw)
        try:
            return parse_global_controls(raw)
        except ValueError as exc:
            errors[GLOBAL_SCOPE] = str(exc)
            self._report_once(GLOBAL_SCOPE, repr(sorted(raw.items())), str(exc))
            return self._global

    def _state(self, item: RawExperiment, old: ExperimentState | None, now: float) -> ExperimentState | None:
        version = int(item.config.get(VERSION, "0"))
        inputs = _Inputs(version, item.stats, item.control)
        built = self._built.get(item.name)
        if old is not None and built is not None:
            if built.inputs == inputs:
                return old  # nothing changed: keep the sampler and its propensities
            same_rules = (built.inputs.version, built.inputs.control) == (version, item.control)
            if same_rules and not rebuild_due(
                built.observations, _observations(old.spec, item.stats), now - built.at
            ):
                return old
        if old is not None and version < old.version:
            # The document never goes back (a rewound or restored Redis), but switches and stats still
            # apply: a kill made after a rewind must be obeyed.
            message = (
                f"ignoring document version {version}, older than version {old.version} in use; "
                "kill switches still apply"
            )
            self._report_once(item.name, f"rewound to {version}", message)
            spec, version = old.spec, old.version
        else:
            spec = self._spec(item, version)
        controls, problems = parse_controls(item.control, spec, old.controls if old is not None else None)
        if problems:
            self._report_once(item.name, repr(sorted(item.control.items())), "; ".join(problems))
        segments = segment_stats(spec, item.stats) if spec.segment_attribute else None
        discounted = (
            discounted_stats(spec, item.stats, int(time.time() * 1000)) if spec.half_life_seconds else None
        )
        state = build_experiment_state(
            spec,
            version,
            arm_stats(spec, item.stats),
            self._rng,
            controls,
            segments=segments,
            posterior_stats=discounted,
            discount_epoch_ms=discount_epoch(item.stats),
        )
        self._built[item.name] = _Built(inputs, now, _observations(spec, item.stats))
        return state

    def _spec(self, item: RawExperiment, version: int) -> ExperimentSpec:
        doc_text = item.config.get("doc", "")
        cached = self._specs.get(item.name)
        if cached is not None and cached[0] == doc_text:
            return cached[1]
        try:
            data = json.loads(doc_text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"experiment {item.name} version {version}: document is not JSON ({exc})"
            ) from exc
        doc = parse_experiment(data, f"experiment {item.name} version {version} in Redis")
        if doc.name != item.name:
            raise ConfigError(f"experiment {item.name} version {version}: document is named {doc.name!r}")
        spec = doc.to_spec()
        self._specs[item.name] = (doc_text, spec)
        return spec

    def _notice_raw_edits(self, item: RawExperiment) -> None:
        self._notice_control_edit(item.name, item.control)
        key = f"{item.name}/doc"
        doc, version = item.config.get("doc", ""), item.config.get(VERSION, "")
        seen = self._seen_raw.get(key)
        self._seen_raw[key] = ({"doc": doc}, version)
        if seen is not None and seen[1] == version and seen[0]["doc"] != doc:
            self._unattributed(UnattributedEdit(item.name, f"{item.name}/doc", seen[0]["doc"], doc))

    def _notice_control_edit(self, scope: str, control: Mapping[str, str]) -> None:
        seen = self._seen_raw.get(scope)
        version = control.get(VERSION, "")
        self._seen_raw[scope] = (dict(control), version)
        if seen is None or seen[0] == control or seen[1] != version:
            return
        before, after = seen[0], control
        for field in sorted(set(before) | set(after)):
            if before.get(field) != after.get(field):
                target = scope if field == "kill" else f"{scope}/{field}"
                self._unattributed(
                    UnattributedEdit(scope, target, before.get(field, ""), after.get(field, ""))
                )

    def _unattributed(self, edit: UnattributedEdit) -> None:
        log.warning(
            "unattributed change to %s: %r -> %r (made in Redis without the CLI; no audit entry)",
            edit.target,
            edit.before[:200],
            edit.after[:200],
        )
        self.unattributed.append(edit)
        self.unattributed_total += 1

    def _report_once(self, scope: str, fingerprint: str, message: str) -> None:
        key = (scope, fingerprint)
        if key in self._reported_bad:
            return
        self._reported_bad.add(key)
        self.invalid_documents += 1
        log.error("keeping the last good state of %s: %s", scope, message)


def _observations(spec: ExperimentSpec, raw: Mapping[str, str]) -> float:
    return sum(arm.trials + arm.reward_count for arm in arm_stats(spec, raw))
