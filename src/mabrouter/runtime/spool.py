"""A local append-only spool: outcomes acknowledged while Redis is unreachable survive any crash.

"Acknowledged" means durable: applied in Redis, or written and fsync'd here. Each process appends to
its own file, which it holds an exclusive flock on; a file nobody holds belongs to a process that died
(SIGKILL, OOM) and is replayed by whichever router finds it first. Replaying is safe to repeat, because
every outcome carries its decision's nonce and Redis applies a nonce once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import IO

from mabrouter.store.router_store import OutcomeWrite

log = logging.getLogger(__name__)
PATTERN = "outcomes-*.jsonl"


class SpoolFullError(Exception):
    pass


def _encode(write: OutcomeWrite) -> str:
    return json.dumps(asdict(write), separators=(",", ":"))


def _decode(line: str) -> OutcomeWrite | None:
    try:
        fields = json.loads(line)
        fields["metrics"] = tuple((str(name), float(value)) for name, value in fields.get("metrics", ()))
        return OutcomeWrite(**fields)
    except (ValueError, TypeError, AttributeError):
        return None  # a torn last line from a crash mid-write: it was never acknowledged


class OutcomeSpool:
    def __init__(self, directory: Path, max_entries: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._max_entries = max_entries
        self._path = directory / f"outcomes-{uuid.uuid4().hex}.jsonl"
        self._file: IO[str] = self._path.open("a", encoding="utf-8")
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._entries: list[OutcomeWrite] = []

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, writes: list[OutcomeWrite]) -> None:
        """Durably record `writes` (one fsync for the batch); raise SpoolFullError when at capacity."""
        if len(self._entries) + len(writes) > self._max_entries:
            raise SpoolFullError(f"outcome spool holds {len(self._entries)} entries, its limit")
        self._file.write("".join(_encode(write) + "\n" for write in writes))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._entries.extend(writes)

    def peek(self, count: int) -> list[OutcomeWrite]:
        return self._entries[:count]

    def drop(self, count: int) -> None:
        """Forget the first `count` entries (applied in Redis): rewrite the file with the rest."""
        self._entries = self._entries[count:]
        temporary = self._path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            out.write("".join(_encode(write) + "\n" for write in self._entries))
            out.flush()
            os.fsync(out.fileno())
        new_file = temporary.open("a", encoding="utf-8")
        fcntl.flock(new_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        temporary.replace(self._path)
        self._file.close()
        self._file = new_file

    def adopt_orphans(self) -> int:
        """Take over the entries of spool files whose process died; return how many were adopted."""
        adopted = 0
        for path in sorted(self._directory.glob(PATTERN)):
            if path == self._path:
                continue
            try:
                handle = path.open("r+", encoding="utf-8")
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                writes = [write for line in handle if (write := _decode(line)) is not None]
                if writes:
                    self.append(writes)  # durable here before the orphan is removed
                path.unlink()
                adopted += len(writes)
        if adopted:
            log.warning("adopted %d acknowledged outcomes from the spool of a process that died", adopted)
        return adopted

    def close(self) -> None:
        self._file.close()
        if not self._entries:
            self._path.unlink(missing_ok=True)
