"""`mabrouter serve --workers N`: N router processes sharing one TCP port through SO_REUSEPORT.

Each worker is a full router with its own snapshot, change feed and buffers (Python's GIL makes one
process use one core). The supervisor forwards SIGTERM/SIGINT so every worker drains and flushes, and
restarts a worker that dies unexpectedly, with a backoff so a crash loop cannot spin. A worker that exits
with STARTUP_ERROR_EXIT is not restarted: it cannot start with these settings (a refused decision secret, a
busy metrics port) and never will, so the supervisor stops every worker and exits with that code. Worker i
serves metrics on the metrics port + i.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

log = logging.getLogger(__name__)
RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)
STARTUP_ERROR_EXIT = 2  # what `mabrouter serve` exits with when its settings cannot work


def _metrics_listen(base: str, index: int) -> str:
    if not base:
        return ""
    host, _, port = base.rpartition(":")
    return f"{host}:{int(port) + index}" if int(port) else base


def worker_env(index: int, metrics_listen: str) -> dict[str, str]:
    return {
        **os.environ,
        "MABROUTER_REUSE_PORT": "1",
        "MABROUTER_METRICS_LISTEN": _metrics_listen(metrics_listen, index),
    }


def supervise(workers: int, argv: list[str], metrics_listen: str) -> int:
    """Run `workers` copies of `mabrouter serve argv...` until SIGTERM/SIGINT; return an exit code."""
    stopping = False
    startup_failed = False

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "mabrouter", "serve", *argv], env=worker_env(index, metrics_listen)
        )

    processes = [start(i) for i in range(workers)]
    restarts = [0] * workers

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("supervising %d workers (pids %s)", workers, ", ".join(str(p.pid) for p in processes))
    while not stopping:
        time.sleep(0.2)
        for index, process in enumerate(processes):
            code = process.poll()
            if code is None or stopping:
                continue
            if code == STARTUP_ERROR_EXIT:
                log.error("worker %d (pid %d) cannot start with these settings; stopping", index, process.pid)
                startup_failed = True
                forward(signal.SIGTERM, None)
                break
            delay = RESTART_BACKOFF_SECONDS[min(restarts[index], len(RESTART_BACKOFF_SECONDS) - 1)]
            log.error(
                "worker %d (pid %d) exited with %d; restarting in %.1fs", index, process.pid, code, delay
            )
            time.sleep(delay)
            restarts[index] += 1
            processes[index] = start(index)
    codes = [process.wait() for process in processes]
    if startup_failed:
        return STARTUP_ERROR_EXIT
    return 0 if all(code == 0 for code in codes) else 1
