"""A local append-only spool: outcomes acknowledged while Redis is unreachable survive any crash.

"Acknowledged" means durable: applied in Redis, or written and fsync'd here. Replaying is safe to repeat,
because every outcome carries its decision's nonce and Redis applies a nonce once.

On disk (see docs/reliability.md, "The spool on disk"): the spool is a series of segment files
`outcomes-<uuid>.jsonl`, one JSON outcome per line, never rewritten. New outcomes go to the newest
segment; replay seals the oldest one (no more appends) and reads it front to back, recording after each
applied batch how many of its entries are in Redis in a sidecar `outcomes-<uuid>.applied`, and unlinks
both once every entry is applied. Draining n outcomes therefore costs O(n) and a few small fsyncs, not a
rewrite of everything left per batch. A file without a sidecar has nothing applied, which is exactly the
single file earlier versions wrote, so their spools are adopted unchanged.

A process holds an exclusive flock on each of its segments; a segment nobody holds belongs to a process
that died (SIGKILL, OOM) or stopped with outcomes left, and is adopted by whichever router finds it first.

Thread safety: `append` and `drop` do blocking file I/O (fsync) and the router runs them in
`asyncio.to_thread`, alongside `peek` and `len` on the event loop, so the shared bookkeeping sits behind
a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from mabrouter.errors import SpoolFullError
from mabrouter.store.records import OutcomeWrite

log = logging.getLogger(__name__)
PATTERN = "outcomes-*.jsonl"
APPLIED_SUFFIX = ".applied"
# A segment is created under a name outside PATTERN and renamed once locked, so no adopter ever sees a
# live process's segment unlocked (and takes it while the owner still appends to it).
STAGING_PATTERN = ".outcomes-*.jsonl.new"
# Fixed width, so the count is overwritten in place by one small pwrite.
_APPLIED_WIDTH = 20
STAGING_MAX_AGE_SECONDS = 60.0
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC


def _encode(write: OutcomeWrite) -> str:
    return json.dumps(asdict(write), separators=(",", ":"))


def _decode(line: str) -> OutcomeWrite | None:
    try:
        fields = json.loads(line)
        fields["metrics"] = tuple((str(name), float(value)) for name, value in fields.get("metrics", ()))
        return OutcomeWrite(**fields)
    except (ValueError, TypeError, AttributeError):
        return None  # a torn last line from a crash mid-write: it was never acknowledged


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int  # holds the flock for as long as this process owns the file
    entries: list[OutcomeWrite]
    applied: int = 0  # leading entries known to be in Redis (persisted in the sidecar)
    size: int = 0  # bytes of whole lines: a failed append is truncated back to it
    applied_fd: int | None = None

    @property
    def remaining(self) -> int:
        return len(self.entries) - self.applied

    @property
    def applied_path(self) -> Path:
        return self.path.with_suffix(APPLIED_SUFFIX)

    def close(self) -> None:
        for fd in (self.applied_fd, self.fd):
            if fd is not None:
                os.close(fd)
        self.applied_fd = None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _lock_existing(path: Path) -> int | None:
    """Open `path` holding its exclusive flock; None when a live process holds it or it is gone."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The previous holder may have unlinked the file between our open and our flock: then this lock
        # is on an inode nobody can find any more, and its entries were already dealt with.
        still_there = os.fstat(fd).st_ino == path.stat().st_ino
    except (BlockingIOError, FileNotFoundError):
        still_there = False
    if not still_there:
        os.close(fd)
        return None
    return fd


def _read_entries(path: Path) -> list[OutcomeWrite]:
    text = path.read_bytes().decode("utf-8", errors="replace")  # a torn tail simply fails to decode
    return [write for line in text.splitlines() if (write := _decode(line)) is not None]


def _read_applied(path: Path) -> int:
    """The sidecar's count; 0 when missing or unreadable, which only replays entries again (deduplicated)."""
    try:
        return max(0, int(path.read_text(encoding="ascii").strip() or "0"))
    except (OSError, ValueError):
        return 0


def _unlink_segment(segment: _Segment) -> None:
    # The data first: a sidecar left without its data file is harmless and swept by adopt_orphans.
    segment.path.unlink(missing_ok=True)
    segment.applied_path.unlink(missing_ok=True)
    segment.close()


class OutcomeSpool:
    def __init__(self, directory: Path, max_entries: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()  # oldest first
        self._active: _Segment | None = None  # the newest segment, while it still takes appends
        self._pending = 0  # entries not yet applied, over all segments

    def __len__(self) -> int:
        return self._pending

    def append(self, writes: list[OutcomeWrite]) -> None:
        """Durably record `writes` (one fsync for the batch); raise SpoolFullError when at capacity."""
        with self._lock:
            if self._pending + len(writes) > self._max_entries:
                raise SpoolFullError(f"outcome spool holds {self._pending} entries, its limit")
            segment = self._active or self._start_segment()
            data = "".join(_encode(write) + "\n" for write in writes).encode()
            try:
                _write_all(segment.fd, data)
                os.fsync(segment.fd)
            except OSError:
                self._discard_failed_append(segment)
                raise
            segment.size += len(data)
            segment.entries.extend(writes)
            self._pending += len(writes)

    def _start_segment(self) -> _Segment:
        name = f"outcomes-{uuid.uuid4().hex}.jsonl"
        staging = self._directory / f".{name}.new"
        fd = os.open(staging, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = staging.rename(self._directory / name)
            _fsync_directory(self._directory)  # the name must survive a power loss as the lines will
        except OSError:
            os.close(fd)
            staging.unlink(missing_ok=True)
            raise
        segment = _Segment(path, fd, [])
        self._segments.append(segment)
        self._active = segment
        return segment

    def _discard_failed_append(self, segment: _Segment) -> None:
        """Cut a failed append off the file: a partial line would glue itself onto the next append."""
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError:
            log.exception("cannot truncate a failed spool append in %s", segment.path)
        # Either way, append no more to this file: whatever the failure left in it stays at its end,
        # where an undecodable line is skipped and a whole one (never acknowledged) is merely replayed.
        self._active = None
        if not segment.entries:
            self._segments.remove(segment)
            _unlink_segment(segment)

    def peek(self, count: int) -> list[OutcomeWrite]:
        """Up to `count` of the oldest entries, all from one segment, which from now on takes no appends."""
        with self._lock:
            if not self._segments:
                return []
            head = self._segments[0]
            if head is self._active:
                self._active = None  # sealed: the next append starts a new segment
            return head.entries[head.applied : head.applied + count]

    def drop(self, count: int) -> None:
        """Record that the `count` entries of the last peek are in Redis. Blocking: run it off the loop."""
        with self._lock:
            head = self._segments[0]
        applied = head.applied + count
        if applied < len(head.entries):
            # Durable before the next batch is sent, so a crash replays at most one batch again.
            self._persist_applied(head, applied)
        else:
            _unlink_segment(head)
        with self._lock:
            head.applied = applied
            self._pending -= count
            if not head.remaining:
                self._segments.popleft()

    @staticmethod
    def _persist_applied(segment: _Segment, applied: int) -> None:
        if segment.applied_fd is None:
            segment.applied_fd = os.open(segment.applied_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        os.pwrite(segment.applied_fd, f"{applied:>{_APPLIED_WIDTH}}\n".encode(), 0)
        os.fsync(segment.applied_fd)

    def adopt_orphans(self) -> int:
        """Take over the segments of processes that died; return how many unapplied entries came with them.

        Adopted entries count towards the limit but are taken even beyond it: they are acknowledged and
        already on disk, and refusing them would not free anything. New outcomes are refused until the
        spool drains below the limit again.
        """
        self._sweep_leftovers()
        with self._lock:
            own = {segment.path for segment in self._segments}
        adopted = 0
        for path in sorted(self._directory.glob(PATTERN)):
            if path not in own:
                adopted += self._adopt(path)
        if adopted:
            log.warning("adopted %d acknowledged outcomes from the spool of a process that died", adopted)
        if self._pending > self._max_entries:
            log.warning(
                "the spool holds %d outcomes, over its limit of %d: new ones are refused until it drains",
                self._pending,
                self._max_entries,
            )
        return adopted

    def _adopt(self, path: Path) -> int:
        fd = _lock_existing(path)
        if fd is None:
            return 0  # a live process owns it, or it was just removed
        entries = _read_entries(path)
        applied = min(_read_applied(path.with_suffix(APPLIED_SUFFIX)), len(entries))
        segment = _Segment(path, fd, entries, applied=applied)
        if not segment.remaining:
            _unlink_segment(segment)
            return 0
        with self._lock:
            # Before the active segment, which must stay last so that appends keep their order behind it.
            position = len(self._segments) - (self._active is not None)
            self._segments.insert(position, segment)
            self._pending += segment.remaining
        return segment.remaining

    def _sweep_leftovers(self) -> None:
        """Remove what crashes leave behind: sidecars of unlinked segments, unlocked staging files."""
        for sidecar in self._directory.glob(f"outcomes-*{APPLIED_SUFFIX}"):
            if not sidecar.with_suffix(".jsonl").exists():
                sidecar.unlink(missing_ok=True)
        for staging in self._directory.glob(STAGING_PATTERN):
            # A live process renames its staging file within microseconds; one this old was left by a
            # crash before the rename, so it never held an acknowledged outcome.
            with contextlib.suppress(FileNotFoundError):
                if time.time() - staging.stat().st_mtime > STAGING_MAX_AGE_SECONDS:
                    staging.unlink()

    def close(self) -> None:
        """Release every segment; those with entries left stay on disk for the next router to adopt."""
        with self._lock:
            segments, self._active = list(self._segments), None
            self._segments.clear()
        for segment in segments:
            segment.close()
