"""Turns raw Redis data into a Snapshot, keeping the last good state of anything invalid."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mabrouter.config import parse_experiment
from mabrouter.core.model import ExperimentSpec
from mabrouter.core.snapshot import ExperimentState, Snapshot, build_experiment_state
from mabrouter.errors import ConfigError
from mabrouter.store.router_store import RawExperiment
from mabrouter.store.stats_codec import arm_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Parsed:
    version: int
    spec: ExperimentSpec


class SnapshotBuilder:
    """Stateful across refreshes: caches parsed specs per version and reuses unchanged states."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._specs: dict[str, _Parsed] = {}
        self._raw_stats: dict[str, Mapping[str, str]] = {}
        self._reported_bad: set[tuple[str, str]] = set()
        self.invalid_documents = 0

    def build(self, raw: Sequence[RawExperiment], previous: Snapshot | None, loaded_at: float) -> Snapshot:
        old = previous.experiments if previous else {}
        states: dict[str, ExperimentState] = {}
        errors: dict[str, str] = {}
        for item in raw:
            try:
                state = self._state(item, old.get(item.name))
            except (ConfigError, ValueError, KeyError) as exc:
                errors[item.name] = str(exc)
                self._report_once(item, str(exc))
                state = old.get(item.name)  # keep the last good version
            if state is not None:
                states[item.name] = state
        return Snapshot(experiments=states, loaded_at=loaded_at, errors=errors)

    def _state(self, item: RawExperiment, old: ExperimentState | None) -> ExperimentState | None:
        version = int(item.config.get("version", "0"))
        if old is not None and version < old.version:
            log.warning(
                "experiment %s: ignoring version %d older than version %d in use",
                item.name,
                version,
                old.version,
            )
            return old
        spec = self._spec(item, version)
        if old is not None and old.version == version and self._raw_stats.get(item.name) == item.stats:
            return old  # nothing changed: keep the sampler and its propensities
        state = build_experiment_state(spec, version, arm_stats(spec, item.stats), self._rng)
        self._raw_stats[item.name] = item.stats
        return state

    def _spec(self, item: RawExperiment, version: int) -> ExperimentSpec:
        cached = self._specs.get(item.name)
        if cached is not None and cached.version == version:
            return cached.spec
        try:
            data = json.loads(item.config.get("doc", ""))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"experiment {item.name} version {version}: document is not JSON ({exc})"
            ) from exc
        doc = parse_experiment(data, f"experiment {item.name} version {version} in Redis")
        if doc.name != item.name:
            raise ConfigError(f"experiment {item.name} version {version}: document is named {doc.name!r}")
        spec = doc.to_spec()
        self._specs[item.name] = _Parsed(version, spec)
        return spec

    def _report_once(self, item: RawExperiment, message: str) -> None:
        key = (item.name, item.config.get("version", "?"))
        if key in self._reported_bad:
            return
        self._reported_bad.add(key)
        self.invalid_documents += 1
        log.error("keeping the last good state of experiment %s: %s", item.name, message)
