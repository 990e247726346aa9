"""`mabrouter experiment archive|unarchive|delete`: stop serving an experiment and keep everything of it,
serve it again as it was, or remove every key of it. Each is audited."""

from __future__ import annotations

import argparse
import sys
import time

from mabrouter.commands.common import add_actor, add_redis_url, admin_store, change, unknown_experiment
from mabrouter.store.experiment_decoder import archived_at_ms, is_archived
from mabrouter.store.ports import OperatorStore

# What routers answer for an archived experiment (docs/contract.md, "Statuses").
ARCHIVED_ANSWER = "the caller's default_arm with reason FALLBACK_DEFAULT, or FAILED_PRECONDITION without one"
# How long after an archive a delete waits: routers stop deciding within a refresh (200 ms, or at once on
# the change notice) and flush what they buffered within a flush interval (100 ms). A write landing after
# the delete would bring a key of the experiment back.
SETTLE_SECONDS = 3.0


def _version(version: int | None) -> str:
    return f"version {version}" if version is not None else "written without a version"


def cmd_archive(args: argparse.Namespace) -> int:
    with admin_store(args) as store:
        stored = store.get(args.experiment)
        if stored is None:
            print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
            return 2
        if is_archived(stored.control):
            print(f"{args.experiment} is archived already (no change)")
            return 0
        version, _ = store.set_archived(args.experiment, True, change(args, "archive"))
    print(
        f"{args.experiment} is archived ({_version(version)}): routers stop serving it within a second and "
        f"answer {ARCHIVED_ANSWER}; its statistics, logs and switches are kept"
    )
    return 0


def cmd_unarchive(args: argparse.Namespace) -> int:
    with admin_store(args) as store:
        stored = store.get(args.experiment)
        if stored is None:
            print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
            return 2
        if not is_archived(stored.control):
            print(f"{args.experiment} is not archived (no change)")
            return 0
        version, _ = store.set_archived(args.experiment, False, change(args, "unarchive"))
    print(
        f"{args.experiment} is served again ({_version(version)}) as it was: its document, statistics "
        "and switches are those stored"
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with admin_store(args) as store:
        problem = _delete_refusal(store, args.experiment)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        families = store.key_families(args.experiment)
        if not args.yes:
            _print_families(args.experiment, families)
            print(
                f"error: refusing to delete {args.experiment} without --yes (nothing deleted)",
                file=sys.stderr,
            )
            return 2
        stored = store.get(args.experiment)
        _settle(archived_at_ms(stored.control) if stored is not None else None)
        removed = store.delete(args.experiment, change(args, "delete"))
    if removed is None:
        print(f"error: {args.experiment} was unarchived meanwhile: its definition is kept", file=sys.stderr)
        return 1
    print(
        f"deleted experiment {args.experiment}: {removed} keys removed; the deletion is recorded in the "
        "global audit log (`mabrouter audit`)"
    )
    return 0


def _delete_refusal(store: OperatorStore, name: str) -> str:
    """Why `name` cannot be deleted now, or ''. Only an archived experiment can: routers have stopped
    serving and writing it, so nothing they do brings a key of it back."""
    stored = store.get(name)
    if stored is None:
        # Listed without a config: a delete that was interrupted (finish it), or an unknown name.
        return "" if name in store.names() else unknown_experiment(name)
    if not is_archived(stored.control):
        return (
            f"experiment {name} is served: archive it first (`mabrouter experiment archive {name}`), so "
            "routers stop serving and writing it; then delete it"
        )
    return ""


def _print_families(name: str, families: dict[str, int]) -> None:
    print(f"`mabrouter experiment delete {name} --yes` would remove {sum(families.values())} keys:")
    for family, count in sorted(families.items()):
        print(f"  {family}  ({count} key{'s' * (count != 1)})")
    print(f"and unlist {name}; the deletion is recorded in the global audit log")


def _settle(archived_ms: int | None) -> None:
    if archived_ms is None:
        return
    wait = SETTLE_SECONDS - (time.time() * 1000 - archived_ms) / 1000
    if 0 < wait <= SETTLE_SECONDS:
        print(
            f"archived {SETTLE_SECONDS - wait:.1f} s ago: waiting {wait:.1f} s for routers to flush",
            file=sys.stderr,
        )
        time.sleep(wait)


def register(experiment: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    archive = experiment.add_parser(
        "archive",
        help="stop serving an experiment, keeping its statistics, logs and switches (routers answer "
        "default_arm with reason FALLBACK_DEFAULT, or FAILED_PRECONDITION without one)",
    )
    unarchive = experiment.add_parser(
        "unarchive", help="serve an archived experiment again, as it was (same statistics and switches)"
    )
    delete = experiment.add_parser(
        "delete",
        help="remove every key of an archived experiment (config, statistics, switches, logs, audit, "
        "sticky units, markers); without --yes, list them and delete nothing",
    )
    delete.add_argument("--yes", action="store_true", help="really delete (it cannot be undone)")
    for sub, handler in ((archive, cmd_archive), (unarchive, cmd_unarchive), (delete, cmd_delete)):
        sub.add_argument("experiment", help="the experiment's name")
        add_actor(sub)
        add_redis_url(sub)
        sub.set_defaults(handler=handler)
