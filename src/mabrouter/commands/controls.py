"""Operator switches: `mabrouter kill|unkill|rollout|audit`. Each change is audited and propagated."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from mabrouter.commands.common import add_actor, add_redis_url, admin_store, change, unknown_experiment
from mabrouter.errors import ConfigError
from mabrouter.store.controls_codec import parse_controls, parse_rollout
from mabrouter.store.experiment_decoder import decode_document, is_archived, switches
from mabrouter.store.ports import OperatorStore


def _check_target(store: OperatorStore, args: argparse.Namespace) -> str | None:  # noqa: PLR0911
    """The problem with the target of a kill/unkill, or None when it is valid."""
    if args.experiment is None:
        return None if args.all else "name an experiment, or pass --all for the global kill switch"
    if args.all:
        return "pass either an experiment or --all, not both"
    stored = store.get(args.experiment)
    if stored is None:
        return unknown_experiment(args.experiment)
    _warn_if_archived(args.experiment, stored.control)
    try:
        spec = decode_document(args.experiment, stored.config).spec
    except ConfigError as exc:
        # A kill must go through even (above all) when the stored document is broken: routers obey it
        # over the experiment's last good state. Arm names cannot be checked against it, though.
        print(f"warning: {exc}; the switch is written anyway (routers obey it)", file=sys.stderr)
        return None
    for problem in parse_controls(switches(stored.control), spec)[1]:
        print(
            f"warning: {problem} (routers ignore this field; remove it with redis-cli HDEL)", file=sys.stderr
        )
    if args.arm is not None:
        names = [arm.name for arm in spec.arms]
        if args.arm not in names:
            return f"experiment {args.experiment} has no arm {args.arm!r} (arms: {', '.join(names)})"
        if args.arm == spec.control:
            return f"{args.arm} is the control arm (served when nothing else may be): kill the experiment"
    return None


def _warn_if_archived(name: str, control: Mapping[str, str]) -> None:
    if is_archived(control):
        print(
            f"warning: {name} is archived: routers do not serve it; the switch is kept for when it is "
            "unarchived",
            file=sys.stderr,
        )


def _switch(args: argparse.Namespace, on: bool) -> int:
    with admin_store(args) as store:
        problem = _check_target(store, args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        experiment = None if args.all else args.experiment
        version, was_killed = store.set_kill(
            experiment, args.arm, on, change(args, "kill" if on else "unkill")
        )
    what = (
        "every experiment"
        if args.all
        else (f"arm {args.arm} of {args.experiment}" if args.arm else args.experiment)
    )
    state = "killed" if on else "live"
    note = " (no change)" if was_killed == on else ""
    print(f"{what} is {state}{note} ({_version(version)})")
    if args.arm and not on:
        print(f"guardrails now judge {args.arm} only on outcomes reported from now on")
    return 0


def _version(version: int | None) -> str:
    if version is not None:
        return f"version {version}"
    return (
        "written without a version: the stored version was edited into something that is not a number; "
        "set it back with redis-cli (HSET mabrouter:{EXP}:config version N)"
    )


def cmd_kill(args: argparse.Namespace) -> int:
    return _switch(args, on=True)


def cmd_unkill(args: argparse.Namespace) -> int:
    return _switch(args, on=False)


def cmd_rollout(args: argparse.Namespace) -> int:
    percent = parse_rollout(args.percent)  # ValueError -> exit 2 with the message
    with admin_store(args) as store:
        stored = store.get(args.experiment)
        if stored is None:
            print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
            return 2
        _warn_if_archived(args.experiment, stored.control)
        version, before = store.set_rollout(args.experiment, percent, change(args, "rollout"))
    print(f"{args.experiment} rollout {before or 'from file'} -> {percent:g}% ({_version(version)})")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with admin_store(args) as store:
        if args.experiment and store.get(args.experiment) is None:
            print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
            return 2
        if args.experiment:
            entries = store.audit([args.experiment], args.limit)
        else:
            entries = store.audit(store.names(), args.limit, global_switches=True)
    if args.json:
        for entry in entries:
            print(json.dumps({"id": entry.entry_id, "scope": entry.scope, **entry.fields}))
        return 0
    table = Table(title=f"audit log ({'all experiments' if not args.experiment else args.experiment})")
    for column in ("time (UTC)", "actor", "action", "target", "before", "after", "reason", "version"):
        table.add_column(column)
    for entry in entries:
        f = entry.fields
        when = datetime.fromtimestamp(int(f.get("ts_ms", "0")) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            when,
            f.get("actor", ""),
            f.get("action", ""),
            f.get("target", ""),
            _short(f.get("before", "")),
            _short(f.get("after", "")),
            f.get("reason", ""),
            f.get("version", ""),
        )
    Console().print(table)
    return 0


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, handler, doc, arm_help in (
        (
            "kill",
            cmd_kill,
            "stop an experiment (serve control), one arm, or with --all every experiment",
            "kill only this arm (it drops out of sampling)",
        ),
        ("unkill", cmd_unkill, "undo a kill", "undo the kill of this arm (it is sampled again)"),
    ):
        sub = commands.add_parser(name, help=doc)
        sub.add_argument("experiment", nargs="?", help="the experiment's name (omit with --all)")
        sub.add_argument("--arm", help=arm_help)
        sub.add_argument("--all", action="store_true", help="the global switch: every experiment")
        add_actor(sub, reason_required=name == "kill")
        add_redis_url(sub)
        sub.set_defaults(handler=handler)

    rollout = commands.add_parser("rollout", help="set the percent of units exposed (decimals allowed)")
    rollout.add_argument("experiment", help="the experiment's name")
    rollout.add_argument("percent", help="0 to 100, e.g. 12.5")
    add_actor(rollout)
    add_redis_url(rollout)
    rollout.set_defaults(handler=cmd_rollout)

    audit = commands.add_parser("audit", help="the audit log: who changed what, when and why")
    audit.add_argument("experiment", nargs="?", help="one experiment (default: all, and the global switches)")
    audit.add_argument("--limit", type=int, default=50, help="newest entries shown (default 50)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    add_redis_url(audit)
    audit.set_defaults(handler=cmd_audit)
