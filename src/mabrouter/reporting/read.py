"""Step 1 of a report: read what is stored about an experiment, as stored (text, nothing parsed).

The only module of the report that talks to the store, through its operator port. The two logs are read
lazily, page by page, as the decode step consumes them: a million log entries never exist as Python
dicts at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from mabrouter.store.ports import OperatorStore
from mabrouter.store.records import AuditEntry, StoredExperiment


@dataclass(frozen=True, slots=True, eq=False)
class StoredReport:
    name: str
    experiment: StoredExperiment
    global_control: Mapping[str, str]
    audit: list[AuditEntry]  # the experiment's and the global switches' entries, oldest first
    outcomes: Iterator[dict[str, str]]  # outcome log entries in the window, oldest first (lazy)
    decisions: Iterator[dict[str, str]]  # decision (exposure) log entries in the window, oldest first (lazy)


def read_stored(store: OperatorStore, name: str, since_ms: int, audit_count: int) -> StoredReport | None:
    """What is stored about experiment `name` (None when it does not exist), the logs from `since_ms` on."""
    stored = store.get(name)
    if stored is None:
        return None
    return StoredReport(
        name=name,
        experiment=stored,
        global_control=store.global_control(),
        audit=store.audit([name], audit_count, global_switches=True),
        outcomes=store.read_outcomes(name, since_ms),
        decisions=store.read_decisions(name, since_ms),
    )
