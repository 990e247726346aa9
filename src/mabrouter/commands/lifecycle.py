"""`mabrouter experiment validate|show|diff`: check files before they reach Redis, read what is stored,
and see what an apply would change."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mabrouter.commands.common import add_redis_url, admin_store, unknown_experiment
from mabrouter.errors import ConfigError
from mabrouter.schema import ExperimentDoc, experiment_to_json, load_experiment_file, parse_experiment
from mabrouter.store.experiment_decoder import DOC, decode_document, stored_version
from mabrouter.store.ports import OperatorStore
from mabrouter.store.records import StoredExperiment

# How far back `show` looks for the last apply: an experiment rarely has more switch changes than this.
AUDIT_LOOKBACK = 1000


def cmd_validate(args: argparse.Namespace) -> int:
    """Every file is checked (no Redis), so one run lists every problem: what CI and pre-commit want."""
    failed = 0
    for name in args.files:
        try:
            doc = load_experiment_file(Path(name))
        except ConfigError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(f"{name}: ok (experiment {doc.name}, {len(doc.arms)} arms, reward {doc.reward})")
    if failed:
        print(f"{failed} of {len(args.files)} files are not valid experiments", file=sys.stderr)
        return 2
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with admin_store(args) as store:
        stored = store.get(args.experiment)
        applied = _last_apply(store, args.experiment) if stored is not None else None
    if stored is None:
        print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
        return 2
    # Through the routers' decoder: a document they would refuse is shown as refused, not as if it served.
    try:
        document = decode_document(args.experiment, stored.config)
    except ConfigError as exc:
        print(
            f"error: {exc}\nrouters serve its last good state; fix it with `mabrouter experiment apply FILE`",
            file=sys.stderr,
        )
        return 1
    print(f"# experiment {args.experiment}, version {document.version}")
    if applied is not None:
        when = datetime.fromtimestamp(int(applied.get("ts_ms", "0")) / 1000, UTC)
        reason = f" ({applied['reason']})" if applied.get("reason") else ""
        print(f"# applied by {applied.get('actor', '?')} at {when:%Y-%m-%d %H:%M:%S} UTC{reason}")
    else:
        print("# no apply in the audit log (written by hand, or trimmed away)")
    # The stored JSON itself, as YAML: `show NAME > FILE` gives a file that `apply FILE` takes back.
    print(yaml.safe_dump(json.loads(stored.config[DOC]), sort_keys=False, allow_unicode=True), end="")
    return 0


def _last_apply(store: OperatorStore, name: str) -> dict[str, str] | None:
    for entry in reversed(store.audit([name], AUDIT_LOOKBACK)):
        if entry.fields.get("action") == "apply":
            return dict(entry.fields)
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying one document would do to what is stored: `experiment diff` and `apply --dry-run`."""

    doc: ExperimentDoc
    stored: bool
    version: str  # the stored version ('?' when unreadable, '' when not stored)
    changes: tuple[str, ...]  # field by field: "  ~ path: before -> after", "  + path: value", "  - ..."
    unreadable: str = ""  # why the stored document cannot be read (apply replaces it)


def plan_apply(doc: ExperimentDoc, stored: StoredExperiment | None) -> Plan:
    if stored is None:
        return Plan(doc, stored=False, version="", changes=tuple(_lines({}, _fields(doc))))
    try:
        version = str(stored_version(doc.name, stored.config))
        decode_document(doc.name, stored.config)  # what the routers read
        before = _fields(parse_experiment(json.loads(stored.config[DOC]), f"experiment {doc.name}"))
    except ConfigError as exc:
        changes = tuple(_lines({}, _fields(doc)))
        return Plan(doc, stored=True, version="?", changes=changes, unreadable=str(exc))
    return Plan(doc, stored=True, version=version, changes=tuple(_lines(before, _fields(doc))))


def cmd_diff(args: argparse.Namespace) -> int:
    """Exit as diff(1) does: 0 no changes, 1 changes, 2 trouble."""
    doc = load_experiment_file(Path(args.file))  # ConfigError names the field: exit 2
    with admin_store(args) as store:
        plan = plan_apply(doc, store.get(doc.name))
    if plan.unreadable:
        print(f"warning: {plan.unreadable}\n(apply would replace it)", file=sys.stderr)
    if not plan.stored:
        print(f"experiment {doc.name} is not stored: apply would create it")
    elif not plan.changes:
        print(f"experiment {doc.name} version {plan.version}: no changes")
        return 0
    else:
        print(f"experiment {doc.name} version {plan.version}: apply would change")
    for line in plan.changes:
        print(line)
    return 1


def _fields(doc: ExperimentDoc) -> dict[str, Any]:
    """Every leaf of the document as `path: value`, defaults included (as apply stores them)."""
    return dict(_flatten("", json.loads(experiment_to_json(doc))))


def _flatten(path: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(f"{path}.{key}" if path else str(key), item)
    elif (
        isinstance(value, list) and value and all(isinstance(item, dict) and "name" in item for item in value)
    ):
        # Arms by name, not position: reordering them is not a change of each one.
        for item in value:
            yield from _flatten(f"{path}[{item['name']}]", item)
    else:
        yield path, value


def _lines(before: dict[str, Any], after: dict[str, Any]) -> Iterator[str]:
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            yield f"  - {path}: {_text(before[path])}"
        elif path not in before:
            yield f"  + {path}: {_text(after[path])}"
        elif before[path] != after[path]:
            yield f"  ~ {path}: {_text(before[path])} -> {_text(after[path])}"


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def register(experiment: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = experiment.add_parser(
        "validate", help="check experiment files without Redis; exit 0 when all are valid, 2 otherwise"
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON experiment files")
    validate.set_defaults(handler=cmd_validate)

    show = experiment.add_parser(
        "show", help="the stored document as YAML, with its version and who applied it last"
    )
    show.add_argument("experiment", help="the experiment's name")
    add_redis_url(show)
    show.set_defaults(handler=cmd_show)

    diff = experiment.add_parser(
        "diff", help="what `apply FILE` would change, field by field (exit 0 no changes, 1 changes)"
    )
    diff.add_argument("file", help="a YAML or JSON experiment file")
    add_redis_url(diff)
    diff.set_defaults(handler=cmd_diff)
