"""Turns raw Redis data into a Snapshot, keeping the last good state of anything invalid.

Nothing stored can stop it: whatever fails while building one experiment (its document, statistics,
switches or the numbers in between) keeps that experiment's last good state, is logged once and counted,
and never stops the other experiments or the global switches. The experiment's kill switches are still
read from its control hash and applied over that last good state: an operator must be able to stop an
experiment whose statistics someone (or one extreme reward) broke.

An archived experiment (an operator's deliberate act, `mabrouter experiment archive`) is neither built
nor an error: it is listed in `Snapshot.archived`, whatever its document or statistics hold, so decide()
gives its defined answer and the `mabrouter.snapshot` health stays SERVING.

It also reports edits made outside the CLI (plain redis-cli during an incident; store/raw_edits.py tells
them): each is logged, counted, and handed to the refresher, which records its audit entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from mabrouter.core.model import ArmStats, Controls, GlobalControls
from mabrouter.core.snapshot import ExperimentState, Snapshot
from mabrouter.store.controls_codec import parse_controls, parse_global_controls
from mabrouter.store.experiment_decoder import (
    DOC,
    DecodedExperiment,
    StoredDocument,
    decode_document,
    decode_experiment,
    experiment_state,
    is_archived,
    stored_version,
    switches,
    unreadable_problem,
)
from mabrouter.store.raw_edits import RawEditWatcher
from mabrouter.store.records import (
    GLOBAL_SWITCHES,
    RawExperiment,
    RawState,
    StoredSwitches,
    UnattributedEdit,
)
from mabrouter.store.stats_codec import arm_stats

log = logging.getLogger(__name__)

# A state whose only change is new data is rebuilt when that data moved it (its observations grew by
# 2%, or by 20 while small) or when it is a second old. Each rebuild estimates propensities by Monte
# Carlo (~2 ms for 10 arms): rebuilding every experiment on every 200 ms refresh costs a whole core at
# 100 experiments, while a 1% change in counts barely moves a posterior. Version and switch changes
# (kills, rollouts) always rebuild at once.
REBUILD_MAX_AGE_SECONDS = 1.0
REBUILD_MIN_GROWTH = 0.02
REBUILD_MIN_OBSERVATIONS = 1_000
MAX_PROBLEM_CHARS = 500


def rebuild_due(observed_then: float, observed_now: float, age_seconds: float) -> bool:
    """Whether new data alone (same document, same switches) is worth a rebuild."""
    moved = abs(observed_now - observed_then) >= REBUILD_MIN_GROWTH * max(
        observed_then, REBUILD_MIN_OBSERVATIONS
    )
    return moved or age_seconds >= REBUILD_MAX_AGE_SECONDS


def describe(exc: BaseException) -> str:
    """One line for an operator: our own errors say what is wrong; anything else names its type too."""
    text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_PROBLEM_CHARS]


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
    decoded: DecodedExperiment  # the last good data: kills are applied over it when new data is bad


class SnapshotBuilder:
    """Stateful across refreshes: caches parsed documents, reuses unchanged states, remembers raw inputs.

    `on_failure(experiment)` is called for every refresh that could not build that experiment from
    what Redis holds now (a metric)."""

    def __init__(self, on_failure: Callable[[str], None] = lambda _name: None) -> None:
        self._on_failure = on_failure
        self._documents: dict[str, tuple[str, StoredDocument]] = {}
        self._built: dict[str, _Built] = {}
        self._edits = RawEditWatcher()
        self._reported_bad: set[tuple[str, str]] = set()
        self._global = GlobalControls()
        self.invalid_documents = 0
        self.unattributed_total = 0
        self.unattributed: list[UnattributedEdit] = []

    def build(self, raw: RawState, previous: Snapshot | None, loaded_at: float) -> Snapshot:
        old = previous.experiments if previous else {}
        states: dict[str, ExperimentState] = {}
        errors: dict[str, str] = {}
        archived: set[str] = set()
        for item in raw.experiments:
            if not item.unreadable:  # an unreadable hash read as empty: not an edit to audit
                for edit in self._edits.experiment(item):
                    self._unattributed(edit)
            if "control" not in item.unreadable and is_archived(item.control):
                archived.add(item.name)
                self._forget(item.name)
                continue
            state, problem = self._state_or_last_good(item, old.get(item.name), loaded_at)
            if problem:
                errors[item.name] = problem
            if state is not None:
                states[item.name] = state
        if raw.global_unreadable:  # keep the last good global switches
            problems = [f"cannot read the global switches ({raw.global_unreadable}): keeping the last good"]
        else:
            self._global, problems = parse_global_controls(raw.global_control, self._global)
            for edit in self._edits.global_switches(raw.global_control):
                self._unattributed(edit)
        if problems:
            self._report_once(GLOBAL_SWITCHES, "; ".join(problems), "ignoring " + "; ".join(problems))
        return Snapshot(
            experiments=states,
            loaded_at=loaded_at,
            global_controls=self._global,
            errors=errors,
            archived=frozenset(archived),
        )

    def _forget(self, name: str) -> None:
        """Drop what was cached for an experiment that is no longer served: an archive may last for
        months, and an unarchive rebuilds it from what is stored then."""
        self._built.pop(name, None)
        self._documents.pop(name, None)

    def holdout_cells(self, name: str) -> Mapping[int, float]:
        """Exposed decisions per holdout cell of `name`'s units, from the data its served state was last
        built from (empty before that): what the holdout's sample-ratio check reads, at scrape time."""
        built = self._built.get(name)  # one dict read: safe from the metrics server's thread
        return built.decoded.holdout_cells if built is not None else {}

    def take_unattributed(self) -> list[UnattributedEdit]:
        edits, self.unattributed = self.unattributed, []
        return edits

    def _state_or_last_good(
        self, item: RawExperiment, old: ExperimentState | None, now: float
    ) -> tuple[ExperimentState | None, str]:
        """The experiment's state and '' or, when what is stored cannot be used, its last good state
        under the switches stored now (None if it never had one) and the problem."""
        try:
            return self._state(item, old, now), ""
        except Exception as exc:  # noqa: BLE001 - whatever one experiment's data does, the rest go on
            problem = describe(exc)
        self._on_failure(item.name)
        if "control" in item.unreadable:  # its switches cannot be read: the last good ones stay
            self._report_once(item.name, problem, f"{problem} (with its last good kill switches)")
            return old, problem
        self._report_once(item.name, problem, f"{problem} (its kill switches still apply)")
        if old is None:
            return None, problem
        return self._under_switches(item.name, item.control, old), problem

    def with_switches(self, snapshot: Snapshot, stored: StoredSwitches) -> Snapshot:
        """`snapshot` under the switches just read on a change notice (the refresher's fast path): each
        experiment's kill switches and rollout applied over its served state, the global switches
        parsed; nothing else rebuilt, nothing cached changed. An archive, a new document and new data
        wait for the full refresh the notice also wakes; problems are reported by that refresh."""
        states = dict(snapshot.experiments)
        for name, control in stored.controls.items():
            old = states.get(name)
            if old is not None and not is_archived(control):
                states[name] = self._under_switches(name, control, old)
        global_controls = snapshot.global_controls
        if stored.global_control is not None:
            global_controls, _ = parse_global_controls(stored.global_control, global_controls)
        return replace(snapshot, experiments=states, global_controls=global_controls)

    def _under_switches(self, name: str, control: Mapping[str, str], old: ExperimentState) -> ExperimentState:
        """`old` with the kill switches (and rollout) of `control`, rebuilt over the last good data."""
        controls, _ = parse_controls(switches(control), old.spec, old.controls)
        if controls == old.controls:
            return old
        built = self._built.get(name)
        if built is not None and built.decoded.spec is old.spec:
            try:
                return experiment_state(built.decoded, controls)
            except Exception:
                log.exception("cannot apply the new switches of %s: serving control", name)
        return _serving_control(old, controls)

    def _state(self, item: RawExperiment, old: ExperimentState | None, now: float) -> ExperimentState:
        if item.unreadable:
            raise ValueError(unreadable_problem(item.unreadable))
        version = stored_version(item.name, item.config)
        inputs = _Inputs(version, item.stats, item.control)
        built = self._built.get(item.name)
        if old is not None and built is not None:
            if built.inputs == inputs:
                return old  # nothing changed: keep the sampler and its propensities
            same_rules = (built.inputs.version, built.inputs.control) == (version, item.control)
            if same_rules and not rebuild_due(
                built.observations, _observations(arm_stats(old.spec, item.stats)), now - built.at
            ):
                return old
        if old is not None and built is not None and version < old.version:
            # The document never goes back (a rewound or restored Redis), but switches and stats still
            # apply: a kill made after a rewind must be obeyed.
            message = (
                f"ignoring document version {version}, older than version {old.version} in use; "
                "kill switches still apply"
            )
            self._report_once(item.name, f"rewound to {version}", message)
            document = built.decoded.document
        else:
            document = self._document(item, version)
        decoded = decode_experiment(
            item,
            int(time.time() * 1000),
            document=document,
            previous_controls=old.controls if old is not None else None,
        )
        if decoded.control_problems:
            self._report_once(
                item.name, repr(sorted(item.control.items())), "; ".join(decoded.control_problems)
            )
        state = experiment_state(decoded)
        self._built[item.name] = _Built(inputs, now, _observations(decoded.stats), decoded)
        return state

    def _document(self, item: RawExperiment, version: int) -> StoredDocument:
        text = item.config.get(DOC, "")
        cached = self._documents.get(item.name)
        if cached is not None and cached[0] == text:
            return cached[1] if cached[1].version == version else replace(cached[1], version=version)
        document = decode_document(item.name, item.config)
        self._documents[item.name] = (text, document)
        return document

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


def _observations(stats: tuple[ArmStats, ...]) -> float:
    return sum(arm.trials + arm.reward_count for arm in stats)


def _serving_control(state: ExperimentState, controls: Controls) -> ExperimentState:
    """The safe answer when new switches cannot be applied over the last good data: control only."""
    shares = np.zeros(len(state.spec.arms), dtype=np.float64)
    shares[state.control_index] = 1.0
    return replace(
        state,
        controls=controls,
        live=(state.control_index,),
        shares=shares,
        sampler=None,
        shadow_sampler=None,
        segments={},
    )
