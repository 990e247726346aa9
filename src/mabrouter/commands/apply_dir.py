"""`mabrouter experiment apply DIR [--prune] [--dry-run]`: a directory of experiment files is what should
be stored (GitOps). Every file is validated before anything is written; only files that change something
are written (a loop re-applying the same directory bumps no version and writes no audit entry);
`--prune` archives the stored experiments that have no file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mabrouter.commands.common import admin_store, change
from mabrouter.commands.lifecycle import Plan, plan_apply
from mabrouter.errors import ConfigError
from mabrouter.schema import ExperimentDoc, experiment_to_json, load_experiment_file
from mabrouter.store.experiment_decoder import is_archived
from mabrouter.store.ports import OperatorStore

EXPERIMENT_SUFFIXES = (".yaml", ".yml", ".json")


def experiment_files(directory: Path) -> list[Path]:
    """The experiment files directly in `directory` (not in subdirectories), by name; hidden files (an
    editor's swap file, `.gitkeep`) are not experiments."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix in EXPERIMENT_SUFFIXES and not path.name.startswith(".")
    )


def load_directory(directory: Path) -> tuple[list[ExperimentDoc], list[str]]:
    """Every file's document, and every problem: invalid files, two files for one experiment, none."""
    files = experiment_files(directory)
    if not files:
        return [], [f"{directory} holds no experiment files ({', '.join(EXPERIMENT_SUFFIXES)})"]
    docs: list[ExperimentDoc] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            doc = load_experiment_file(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if doc.name in seen:
            problems.append(f"{seen[doc.name]} and {path} both define experiment {doc.name}")
            continue
        seen[doc.name] = path
        docs.append(doc)
    return docs, problems


def cmd_apply_directory(args: argparse.Namespace, directory: Path) -> int:
    docs, problems = load_directory(directory)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(problems)} problems in {directory}: nothing applied", file=sys.stderr)
        return 2
    with admin_store(args) as store:
        stored = {doc.name: store.get(doc.name) for doc in docs}
        prune = _to_archive(store, set(stored)) if args.prune else []
        tally = {"created": 0, "changed": 0, "unchanged": 0, "archived": 0}
        for doc in docs:
            before = stored[doc.name]
            archived = before is not None and is_archived(before.control)
            tally[_apply_one(store, plan_apply(doc, before), archived, args)] += 1
        for name in prune:
            _archive_one(store, name, directory, args)
            tally["archived"] += 1
    counts = ", ".join(f"{count} {what}" for what, count in tally.items())
    if args.dry_run:
        print(f"dry run of {directory}: would be {counts}; nothing written")
    else:
        print(f"applied {directory}: {counts}")
    return 0


def _to_archive(store: OperatorStore, wanted: set[str]) -> list[str]:
    """Stored experiments with no file in the directory that are still served."""
    unwanted = (name for name in store.names() if name not in wanted)
    return [name for name in unwanted if (stored := store.get(name)) and not is_archived(stored.control)]


def _apply_one(store: OperatorStore, plan: Plan, archived: bool, args: argparse.Namespace) -> str:
    """Write the document when it changes something (not in a dry run); what happened to it."""
    name, would = plan.doc.name, "would be " if args.dry_run else ""
    if plan.unreadable:
        print(f"warning: {plan.unreadable} (apply replaces it)", file=sys.stderr)
    outcome = "changed" if plan.stored else "created"
    if plan.stored and not plan.changes:
        outcome = "unchanged"
        print(f"= {name}: unchanged (version {plan.version})")
    else:
        version = (
            "" if args.dry_run else store.apply(name, experiment_to_json(plan.doc), change(args, "apply"))
        )
        if plan.stored:
            print(f"~ {name}: {would}changed (version {plan.version}{f' -> {version}' if version else ''})")
            for line in plan.changes:
                print(line)
        else:  # every field would be a `+` line: `experiment diff FILE` lists them
            arms = f"{len(plan.doc.arms)} arms, reward {plan.doc.reward}"
            print(f"+ {name}: {would}created ({f'version {version}, ' if version else ''}{arms})")
    if archived:
        # Like a kill, an archive is the operator's: a file does not undo it.
        print(f"  {name} stays archived: `mabrouter experiment unarchive {name}` serves it again")
    return outcome


def _archive_one(store: OperatorStore, name: str, directory: Path, args: argparse.Namespace) -> None:
    if args.dry_run:
        print(f"- {name}: would be archived (no file in {directory})")
        return
    reason = args.reason or f"no file in {directory} (apply --prune)"
    pruned = dataclasses.replace(change(args, "archive"), reason=reason)
    version, _ = store.set_archived(name, True, pruned)
    print(f"- {name}: archived (version {version}; no file in {directory})")
