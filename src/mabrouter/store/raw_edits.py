"""Notices edits made in Redis without the CLI (plain redis-cli during an incident).

The CLI bumps the version with every change, so content that changed under an unchanged version is an
unattributed edit: a document edited in place, or a switch set by HSET. The router records one audit
entry per such edit (docs/decisions/0008); this module only tells what changed, from what it saw last.
"""

from __future__ import annotations

from collections.abc import Mapping

from mabrouter.store.experiment_decoder import DOC
from mabrouter.store.keys import GLOBAL_SCOPE, KILL, VERSION
from mabrouter.store.records import RawExperiment, UnattributedEdit


class RawEditWatcher:
    """Remembers, per scope, the content last seen and the version it was seen under."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Mapping[str, str], str]] = {}

    def experiment(self, item: RawExperiment) -> list[UnattributedEdit]:
        """Edits of the experiment's switches, then of its document, since the last call."""
        edits = self._control(item.name, item.control)
        key = f"{item.name}/{DOC}"
        doc, version = item.config.get(DOC, ""), item.config.get(VERSION, "")
        seen = self._seen.get(key)
        self._seen[key] = ({DOC: doc}, version)
        if seen is not None and seen[1] == version and seen[0][DOC] != doc:
            edits.append(UnattributedEdit(item.name, key, seen[0][DOC], doc))
        return edits

    def global_switches(self, control: Mapping[str, str]) -> list[UnattributedEdit]:
        return self._control(GLOBAL_SCOPE, control)

    def _control(self, scope: str, control: Mapping[str, str]) -> list[UnattributedEdit]:
        seen = self._seen.get(scope)
        version = control.get(VERSION, "")
        self._seen[scope] = (dict(control), version)
        if seen is None or seen[0] == control or seen[1] != version:
            return []
        before, after = seen[0], control
        return [
            UnattributedEdit(
                scope,
                scope if field == KILL else f"{scope}/{field}",
                before.get(field, ""),
                after.get(field, ""),
            )
            for field in sorted(set(before) | set(after))
            if before.get(field) != after.get(field)
        ]
