"""The one decoder of a stored experiment: what routers decide from is what operators are shown.

Routers (the snapshot builder), `mabrouter status`, `mabrouter report`, `mabrouter export` and, through
the router's snapshot, the guardian all turn what Redis holds for an experiment into domain state here:
the document, the statistics (raw counts, per-segment counts, forward-decayed counts) and the operator
switches, then `experiment_state` builds the allocation the routers sample from. Before this module,
`status` and `report` had their own copies that left out discounting and segments, and showed shares
the routers did not use.

Everything read is data someone may have written by hand: a field that does not parse raises
ConfigError (document) or ValueError (statistics) naming it; controls are validated field by field and
never raise (see controls_codec). Callers decide what a failure means: a router keeps its last good
state, the CLI says what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from mabrouter.core.linear import LinearSums
from mabrouter.core.model import ArmStats, Controls, ExperimentSpec
from mabrouter.core.snapshot import ExperimentState, build_experiment_state
from mabrouter.errors import ConfigError
from mabrouter.schema import parse_experiment
from mabrouter.store.controls_codec import parse_controls
from mabrouter.store.keys import ARCHIVED, VERSION
from mabrouter.store.linear_codec import linear_sums
from mabrouter.store.records import RawExperiment
from mabrouter.store.stats_codec import (
    arm_stats,
    discount_epoch,
    discounted_stats,
    holdout_cells,
    holdout_split,
    segment_stats,
)

DOC = "doc"
_NOT_ARCHIVED = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class StoredDocument:
    spec: ExperimentSpec
    version: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class DecodedExperiment:
    """An experiment as stored, validated and in domain terms: the input of `experiment_state`."""

    document: StoredDocument
    # Raw counts: trials, outcomes, sums, sampled/expected, guardrail metrics.
    stats: tuple[ArmStats, ...]
    # What the posteriors learn from when it differs from the raw counts (a half-life), else None.
    posterior_stats: tuple[ArmStats, ...] | None
    # Per-segment counts of the busiest segments (with `segment_by`), else None.
    segments: Mapping[str, tuple[ArmStats, ...]] | None
    discount_epoch_ms: int
    # (holdout decisions, bandit decisions) among exposed units.
    holdout_split: tuple[float, float]
    # The same decisions per holdout cell of their units: what the holdout check reads.
    holdout_cells: Mapping[int, float]
    controls: Controls
    # Control fields that were ignored (each kept its last good value): for operators to read.
    control_problems: tuple[str, ...]
    # A contextual experiment's sums per arm under its current model (store/linear_codec.py), else None.
    linear: tuple[LinearSums, ...] | None = None

    @property
    def spec(self) -> ExperimentSpec:
        return self.document.spec

    @property
    def version(self) -> int:
        return self.document.version


def is_archived(control: Mapping[str, str]) -> bool:
    """Whether an operator archived the experiment. Anything but an unset or "off" value counts: an
    archive must hold even when written by hand as `archived 1` or `archived yes`."""
    return control.get(ARCHIVED, "").strip().lower() not in _NOT_ARCHIVED


def archived_at_ms(control: Mapping[str, str]) -> int | None:
    """When the experiment was archived (the CLI stores the time), or None: not archived, or archived
    by hand with a value that is not a time."""
    text = control.get(ARCHIVED, "").strip()
    return int(text) if is_archived(control) and text.isdigit() and len(text) <= 18 else None


def switches(control: Mapping[str, str]) -> Mapping[str, str]:
    """The control hash without the lifecycle field: the switches routers apply over a served state."""
    return {field: value for field, value in control.items() if field != ARCHIVED}


def stored_version(name: str, config: Mapping[str, str]) -> int:
    text = config.get(VERSION, "0")
    if not text.isdigit() or len(text) > 18:  # a version is a Redis integer counter
        raise ConfigError(f"experiment {name}: config field 'version' is {text[:40]!r}, not a version number")
    return int(text)


def decode_document(name: str, config: Mapping[str, str]) -> StoredDocument:
    """The validated document in `config` (the experiment's config hash); ConfigError names the problem."""
    version = stored_version(name, config)
    source = f"experiment {name} version {version} in Redis"
    try:
        data = json.loads(config.get(DOC, ""))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{source}: document is not JSON ({str(exc)[:200]})") from exc
    doc = parse_experiment(data, source)
    if doc.name != name:
        raise ConfigError(f"{source}: document is named {doc.name!r}")
    return StoredDocument(doc.to_spec(), version, doc.description)


def unreadable_problem(unreadable: Mapping[str, str]) -> str:
    return "; ".join(f"cannot read its {family} hash: {why}" for family, why in unreadable.items())


def decode_experiment(
    raw: RawExperiment,
    now_ms: int,
    *,
    document: StoredDocument | None = None,
    previous_controls: Controls | None = None,
) -> DecodedExperiment:
    """Decode everything stored for one experiment. `document`: already decoded (a router caches it,
    or keeps its last good one after a rewind); `previous_controls`: what a bad control field keeps."""
    if raw.unreadable:  # read as empty: never to be taken for what is stored
        raise ConfigError(unreadable_problem(raw.unreadable))
    document = document or decode_document(raw.name, raw.config)
    spec = document.spec
    controls, problems = parse_controls(switches(raw.control), spec, previous_controls)
    return DecodedExperiment(
        document=document,
        stats=arm_stats(spec, raw.stats),
        posterior_stats=discounted_stats(spec, raw.stats, now_ms) if spec.half_life_seconds else None,
        segments=segment_stats(spec, raw.stats) if spec.segment_attribute else None,
        discount_epoch_ms=discount_epoch(raw.stats),
        holdout_split=holdout_split(raw.stats),
        holdout_cells=holdout_cells(raw.stats),
        controls=controls,
        control_problems=tuple(problems),
        linear=linear_sums(spec, raw.stats),
    )


def experiment_state(decoded: DecodedExperiment, controls: Controls | None = None) -> ExperimentState:
    """The state routers decide from (posteriors, allocation, samplers). `controls` overrides the decoded
    switches (a router applying a new kill over its last good statistics). Raises ValueError when the
    statistics cannot give usable posteriors (numbers a float cannot carry through the formulas)."""
    spec = decoded.spec
    state = build_experiment_state(
        spec,
        decoded.version,
        decoded.stats,
        decoded.controls if controls is None else controls,
        segments=decoded.segments,
        posterior_stats=decoded.posterior_stats,
        discount_epoch_ms=decoded.discount_epoch_ms,
        linear_sums=decoded.linear,
    )
    if not all(math.isfinite(share) for share in state.shares):
        raise ValueError(f"experiment {spec.name}: the statistics give non-finite traffic shares")
    return state
