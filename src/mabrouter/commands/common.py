"""What every admin command shares: the Redis URL, the actor, and a store that is always closed."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mabrouter.config import Settings
from mabrouter.store.admin_store import AdminStore
from mabrouter.store.records import Change


def redis_url(args: argparse.Namespace) -> str:
    if getattr(args, "redis_url", None):
        return str(args.redis_url)
    return Settings().redis_url  # honours MABROUTER_REDIS_URL


@contextmanager
def admin_store(args: argparse.Namespace) -> Iterator[AdminStore]:
    """The operator's store for the command's URL (the CLI's composition: commands take it as an
    OperatorStore), closed whatever happens."""
    store = AdminStore.from_url(redis_url(args))
    try:
        yield store
    finally:
        for warning in store.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        store.close()


def change(args: argparse.Namespace, action: str) -> Change:
    actor = getattr(args, "actor", None) or _os_user()
    return Change(
        actor=actor, action=action, reason=getattr(args, "reason", None) or "", now_ms=int(time.time() * 1000)
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (e.g. an arbitrary container uid)
        return "unknown"


def add_redis_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="e.g. redis://host:6379/0 (env MABROUTER_REDIS_URL)")


def add_actor(parser: argparse.ArgumentParser, reason_required: bool = False) -> None:
    parser.add_argument("--actor", help="who makes the change (default: the OS user)")
    parser.add_argument("--reason", required=reason_required, help="why: recorded in the audit log")


def unknown_experiment(name: str) -> str:
    """The one wording of "no such experiment" (every command exits 2 with it, on stderr)."""
    return f"unknown experiment {name!r} (see `mabrouter experiment list`)"
