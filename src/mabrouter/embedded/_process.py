"""What fork() and interpreter exit do to started in-process routers.

A child of fork() gets a copy of the router's memory but none of its threads: nothing would refresh,
record or flush, so its copies stop routing (they fail open and say why). At exit, routers their owner
forgot to close are closed, so what they buffered reaches Redis instead of dying with the daemon thread.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Protocol


class Started(Protocol):
    def forked(self) -> None:
        """Called in the child of a fork(): stop using what the parent's threads ran."""

    def close(self, timeout: float = ...) -> bool: ...


_started: weakref.WeakSet[Started] = weakref.WeakSet()


def track(router: Started) -> None:
    _started.add(router)


def untrack(router: Started) -> None:
    _started.discard(router)


def _after_fork_in_child() -> None:
    for router in list(_started):
        router.forked()
    _started.clear()


def _close_at_exit() -> None:
    for router in list(_started):
        router.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
