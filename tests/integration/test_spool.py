"""The outcome spool on its own: real files, real flocks, real processes killed with SIGKILL.

End to end (router processes, Redis outages, the ledger) it is covered in test_exactly_once.py and
test_limits.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from mabrouter.errors import SpoolFullError
from mabrouter.store.records import OutcomeWrite
from mabrouter.store.spool import STAGING_MAX_AGE_SECONDS, OutcomeSpool


def writes(first: int, n: int) -> list[OutcomeWrite]:
    return [
        OutcomeWrite("ranker", f"arm{i % 3}", f"nonce{i}", i / 8, counted=True, ttl_seconds=600)
        for i in range(first, first + n)
    ]


def nonces(entries: list[OutcomeWrite]) -> list[str]:
    return [entry.nonce for entry in entries]


def drain(spool: OutcomeSpool, batch: int = 7) -> list[str]:
    """What a replay would apply, in order."""
    applied: list[str] = []
    while len(spool):
        entries = spool.peek(batch)
        applied += nonces(entries)
        spool.drop(len(entries))
    return applied


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("outcomes-*.jsonl"))


def lines_on_disk(directory: Path) -> int:
    return sum(len(path.read_text().splitlines()) for path in segment_files(directory))


def run_child(directory: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter with `spool` open on `directory` (and `writes` defined)."""
    script = textwrap.dedent(
        f"""
        import os, resource, signal
        from pathlib import Path
        from mabrouter.store.spool import OutcomeSpool
        from mabrouter.store.records import OutcomeWrite

        def writes(first, n):
            return [
                OutcomeWrite("ranker", f"arm{{i % 3}}", f"nonce{{i}}", i / 8, counted=True, ttl_seconds=600)
                for i in range(first, first + n)
            ]

        spool = OutcomeSpool(Path({str(directory)!r}), 1000)
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )


def test_drained_in_order_and_nothing_left_on_disk(tmp_path: Path) -> None:
    spool = OutcomeSpool(tmp_path, 1000)
    spool.append(writes(0, 10))
    spool.append(writes(10, 5))
    assert len(spool) == 15
    assert lines_on_disk(tmp_path) == 15
    assert drain(spool) == [f"nonce{i}" for i in range(15)]
    assert len(spool) == 0
    assert list(tmp_path.iterdir()) == []
    spool.close()


def test_draining_never_rewrites_the_segment(tmp_path: Path) -> None:
    """The bug this replaced: every drop rewrote (and fsync'd) all remaining entries, O(n^2) per drain."""
    spool = OutcomeSpool(tmp_path, 1000)
    spool.append(writes(0, 300))
    [segment] = segment_files(tmp_path)
    before = segment.stat()
    spool.drop(len(spool.peek(100)))
    spool.drop(len(spool.peek(100)))
    after = segment.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert int(segment.with_suffix(".applied").read_text()) == 200
    assert nonces(spool.peek(1000)) == [f"nonce{i}" for i in range(200, 300)]
    spool.close()


def test_appends_after_replay_began_go_to_a_new_segment_behind_it(tmp_path: Path) -> None:
    spool = OutcomeSpool(tmp_path, 1000)
    spool.append(writes(0, 4))
    assert nonces(spool.peek(2)) == ["nonce0", "nonce1"]  # seals the segment
    spool.append(writes(4, 3))
    assert len(segment_files(tmp_path)) == 2
    spool.drop(2)
    assert nonces(spool.peek(10)) == ["nonce2", "nonce3"]  # one segment at a time
    spool.drop(2)
    assert len(segment_files(tmp_path)) == 1
    assert drain(spool) == ["nonce4", "nonce5", "nonce6"]
    assert list(tmp_path.iterdir()) == []
    spool.close()


def test_a_live_spool_is_never_adopted(tmp_path: Path) -> None:
    owner = OutcomeSpool(tmp_path, 1000)
    owner.append(writes(0, 3))
    owner.peek(1)  # a sealed segment is still held
    owner.append(writes(3, 1))
    other = OutcomeSpool(tmp_path, 1000)
    assert other.adopt_orphans() == 0
    assert len(other) == 0
    assert len(owner) == 4
    owner.close()
    other.close()


def test_sigkill_mid_drain_the_next_spool_replays_only_what_was_not_applied(tmp_path: Path) -> None:
    child = run_child(
        tmp_path,
        """
        spool.append(writes(0, 10))
        spool.drop(len(spool.peek(4)))  # applied in Redis and recorded
        spool.append(writes(10, 3))     # acknowledged after replay began: a second segment
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert child.returncode == -9, child.stderr
    spool = OutcomeSpool(tmp_path, 1000)
    assert spool.adopt_orphans() == 9
    assert sorted(drain(spool)) == sorted(f"nonce{i}" for i in range(4, 13))
    assert list(tmp_path.iterdir()) == []
    spool.close()


def test_stopped_with_entries_left_they_stay_for_the_next_start(tmp_path: Path) -> None:
    first = OutcomeSpool(tmp_path, 1000)
    first.append(writes(0, 5))
    first.drop(len(first.peek(2)))
    first.close()
    assert lines_on_disk(tmp_path) == 5  # applied lines stay until their segment is fully applied
    second = OutcomeSpool(tmp_path, 1000)
    assert second.adopt_orphans() == 3
    assert drain(second, batch=2) == ["nonce2", "nonce3", "nonce4"]
    second.close()


def test_a_spool_file_from_before_segments_is_adopted_whole(tmp_path: Path) -> None:
    """The earlier format: one file per process, no sidecar (it rewrote the file instead), a torn tail."""
    legacy = tmp_path / "outcomes-0123456789abcdef0123456789abcdef.jsonl"
    lines = [json.dumps(asdict(write), separators=(",", ":")) for write in writes(0, 3)]
    legacy.write_text("\n".join(lines) + "\n" + lines[0][:17])
    spool = OutcomeSpool(tmp_path, 1000)
    assert spool.adopt_orphans() == 3
    assert drain(spool) == ["nonce0", "nonce1", "nonce2"]
    assert list(tmp_path.iterdir()) == []
    spool.close()


def test_adopted_orphans_drain_before_newer_appends(tmp_path: Path) -> None:
    dead = OutcomeSpool(tmp_path, 1000)
    dead.append(writes(0, 2))
    dead.close()
    spool = OutcomeSpool(tmp_path, 1000)
    spool.append(writes(2, 2))
    assert spool.adopt_orphans() == 2
    spool.append(writes(4, 1))
    assert drain(spool) == [f"nonce{i}" for i in range(5)]
    spool.close()


def test_bounded_refuses_with_a_clear_error_and_adoption_is_never_refused(tmp_path: Path) -> None:
    dead = OutcomeSpool(tmp_path, 1000)
    dead.append(writes(0, 5))
    dead.close()
    spool = OutcomeSpool(tmp_path, 3)
    spool.append(writes(100, 3))
    with pytest.raises(SpoolFullError, match="outcome spool holds 3 entries, its limit"):
        spool.append(writes(200, 1))
    assert spool.adopt_orphans() == 5  # acknowledged and on disk already: refusing them frees nothing
    assert len(spool) == 8
    with pytest.raises(SpoolFullError, match="holds 8 entries"):
        spool.append(writes(200, 1))
    drain(spool)
    spool.append(writes(200, 1))
    assert len(spool) == 1
    spool.close()


def test_a_failed_append_leaves_no_partial_line_and_is_not_kept(tmp_path: Path) -> None:
    """A real EFBIG (RLIMIT_FSIZE) mid-append: the refused batch must not glue itself onto the next one."""
    child = run_child(
        tmp_path,
        """
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        spool.append(writes(0, 2))
        size = sum(p.stat().st_size for p in Path(spool._directory).glob("outcomes-*.jsonl"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, size + 300))
        try:
            spool.append(writes(2, 10))
        except OSError as exc:
            print("refused", exc.errno)
        spool.append(writes(12, 1))  # a new segment: the failed one takes no more appends
        print("pending", len(spool))
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert "refused 27" in child.stdout, child.stderr  # EFBIG
    assert "pending 3" in child.stdout
    for path in segment_files(tmp_path):
        assert path.read_bytes().endswith(b"\n")
    spool = OutcomeSpool(tmp_path, 1000)
    assert spool.adopt_orphans() == 3
    assert sorted(drain(spool)) == ["nonce0", "nonce1", "nonce12"]
    spool.close()


def test_leftovers_of_crashes_are_swept(tmp_path: Path) -> None:
    orphan_sidecar = tmp_path / "outcomes-feedfacefeedfacefeedfacefeedface.applied"
    orphan_sidecar.write_text("3\n")
    stale = tmp_path / ".outcomes-00000000000000000000000000000000.jsonl.new"
    stale.touch()
    old = time.time() - STAGING_MAX_AGE_SECONDS - 1
    os.utime(stale, (old, old))
    fresh = tmp_path / ".outcomes-11111111111111111111111111111111.jsonl.new"
    fresh.touch()  # maybe a live process about to rename it
    spool = OutcomeSpool(tmp_path, 1000)
    assert spool.adopt_orphans() == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [fresh.name]
    spool.close()


def test_drops_off_the_loop_run_alongside_appends(tmp_path: Path) -> None:
    """replay_spool runs drop in a worker thread while ReportOutcome appends on the event loop."""
    spool = OutcomeSpool(tmp_path, 100_000)
    spool.append(writes(0, 500))
    applied: list[str] = []

    def replay() -> None:
        while len(applied) < 2500:
            entries = spool.peek(50)
            if entries:
                applied.extend(nonces(entries))
                spool.drop(len(entries))

    worker = threading.Thread(target=replay)
    worker.start()
    for first in range(500, 2500, 20):
        spool.append(writes(first, 20))
    worker.join(60)
    assert applied == [f"nonce{i}" for i in range(2500)]
    assert len(spool) == 0
    assert segment_files(tmp_path) == []
    spool.close()
