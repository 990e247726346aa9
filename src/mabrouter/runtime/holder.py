"""Holds the current snapshot. Readers take one reference; the refresher swaps in a new one whole."""

from __future__ import annotations

from mabrouter.core.snapshot import Snapshot


class SnapshotHolder:
    __slots__ = ("current",)

    def __init__(self) -> None:
        # Replaced, never mutated: a reader holding the old object keeps a consistent view.
        self.current: Snapshot | None = None
