"""`mabrouter experiment apply|list` and `mabrouter status` (one experiment; without a name, fleet.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mabrouter.commands import archive
from mabrouter.commands.apply_dir import cmd_apply_directory
from mabrouter.commands.common import add_actor, add_redis_url, admin_store, change, unknown_experiment
from mabrouter.commands.contextual_status import print_model
from mabrouter.commands.fleet import COLUMNS_HELP, cmd_fleet_status, lifecycle_state, state_label
from mabrouter.commands.lifecycle import Plan, plan_apply
from mabrouter.core.model import RewardKind
from mabrouter.core.summary import ControlComparison, EvidenceSummary, evidence, segment_shares, summarize
from mabrouter.errors import ConfigError
from mabrouter.reporting.contextual import contextual_view
from mabrouter.schema import experiment_to_json, load_experiment_file
from mabrouter.store.controls_codec import parse_global_controls
from mabrouter.store.experiment_decoder import decode_experiment, experiment_state, is_archived


def cmd_apply(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        return cmd_apply_directory(args, path)
    if args.prune:
        print(f"error: --prune takes a directory; {path} is not one", file=sys.stderr)
        return 2
    doc = load_experiment_file(path)  # ConfigError names the field; nothing is written
    with admin_store(args) as store:
        stored = store.get(doc.name)
        if args.dry_run:
            return _dry_run(plan_apply(doc, stored))
        version = store.apply(doc.name, experiment_to_json(doc), change(args, "apply"))
    print(f"applied experiment {doc.name} (version {version}, {len(doc.arms)} arms, reward {doc.reward})")
    if stored is not None and is_archived(stored.control):
        print(f"{doc.name} stays archived: `mabrouter experiment unarchive {doc.name}` serves it again")
    return 0


def _dry_run(plan: Plan) -> int:
    name = plan.doc.name
    if not plan.stored:
        print(f"experiment {name} would be created")
    elif plan.changes:
        print(f"experiment {name} version {plan.version} would change")
    else:
        print(f"experiment {name} version {plan.version}: no changes (apply would still store a new version)")
    for line in plan.changes:
        print(line)
    print("dry run: nothing written")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """One line per experiment: name, version, state (live, killed, archived, or unusable)."""
    with admin_store(args) as store:
        global_control, _ = parse_global_controls(store.global_control())
        for name in store.names():
            stored = store.get(name)
            if stored is None:
                continue  # listed before its config is written: being created
            print(f"{name}\tversion {stored.version_text}\t{lifecycle_state(stored, global_control.killed)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.experiment is None:
        return cmd_fleet_status(args)
    with admin_store(args) as store:
        stored = store.get(args.experiment)
        global_control, global_problems = parse_global_controls(store.global_control())
    if stored is None:
        print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
        return 2
    rng = np.random.default_rng()
    try:
        # The routers' own decoder and state: what is shown here is what they decide from.
        decoded = decode_experiment(stored.raw, int(time.time() * 1000))
        state = experiment_state(decoded)
    except (ConfigError, ValueError) as exc:
        fix = (
            "replace the key Redis cannot read (redis-cli TYPE, then DEL it; the document: "
            "`mabrouter experiment apply FILE`)"
            if stored.unreadable
            else "`mabrouter experiment apply FILE`"
        )
        print(
            f"error: experiment {args.experiment} as stored cannot be used: {exc}\n"
            "routers serve its last good state (under its current kill switches), or refuse it if they "
            f"never had one; fix it with {fix}",
            file=sys.stderr,
        )
        return 1
    spec, controls = decoded.spec, decoded.controls
    for problem in (*decoded.control_problems, *global_problems):
        print(f"warning: {problem} (routers ignore this field)", file=sys.stderr)
    summaries = summarize(state, rng)
    found = evidence(state, decoded.holdout_cells, rng)
    model = contextual_view(state)
    killed = global_control.killed or controls.killed
    archived = is_archived(stored.control)
    reward = spec.reward.value
    if args.json:
        report = {
            "experiment": spec.name,
            "version": decoded.version,
            "state": state_label(archived, killed),
            "archived": archived,
            "reward": reward,
            "control": spec.control,
            "killed": killed,
            "global_kill": global_control.killed,
            "rollout": state.rollout,
            "killed_arms": sorted(controls.killed_arms),
            "holdout": spec.holdout_percent,
            "half_life_seconds": spec.half_life_seconds,
            "ramps": dict(controls.ramp_steps),
            "arms": [s.as_json(spec.reward) for s in summaries],
            "segments": segment_shares(state),
            **found.as_json(),
            **({"contextual": model.as_json()} if model is not None else {}),
        }
        print(json.dumps(report, indent=2))
        return 0
    total = "successes" if spec.reward is RewardKind.BERNOULLI else "reward sum"
    flags = (
        f", rollout {state.rollout:g}%" + (", KILLED" if killed else "") + (", ARCHIVED" if archived else "")
    )
    table = Table(title=f"{spec.name} (version {decoded.version}, {reward}, control {spec.control}{flags})")
    for column in ("arm", "trials", total, "mean", "95% CI", "P(best)", "share"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for s in summaries:
        name = s.arm + (" (killed)" if s.arm in controls.killed_arms else "")
        table.add_row(
            name,
            f"{s.trials:,.0f}",
            f"{s.reward_sum:,.1f}",
            f"{s.mean:.4f}",
            f"[{s.ci_low:.4f}, {s.ci_high:.4f}]",
            f"{s.p_best:.3f}",
            f"{s.share:.1%}",
        )
    # A second table, so each fits an 80-column terminal (or a pipe, which rich treats as one).
    against = Table(title=f"against the control {spec.control}")
    for column in ("arm", "lift (mean)", "95% CI", "P(> control)"):
        against.add_column(column, justify="left" if column == "arm" else "right")
    for s in summaries:
        if s.lift is not None:
            against.add_row(s.arm, *_against_control(s.lift))
    console = Console()
    console.print(table)
    print_model(console, model)
    console.print(against)
    if spec.half_life_seconds:
        console.print(
            f"mean, CI and P(best) weigh evidence with a half-life of {spec.half_life_seconds:g} s "
            "(trials and sums are raw counts)"
        )
    for segment, shares in segment_shares(state).items():
        split = ", ".join(f"{arm} {share:.1%}" for arm, share in shares.items())
        console.print(f"segment {spec.segment_attribute}={segment} decides on its own data: {split}")
    _print_evidence(console, found)
    return 0


def _against_control(lift: ControlComparison) -> tuple[str, str, str]:
    p_beats = f"{lift.p_beats_control:.3f}"
    if lift.lift is None or lift.ci_low is None or lift.ci_high is None:
        return "n/a (control mean may be <= 0)", "", p_beats
    return f"{lift.lift:+.1%}", f"[{lift.ci_low:+.1%}, {lift.ci_high:+.1%}]", p_beats


def _print_evidence(console: Console, found: EvidenceSummary) -> None:
    for label, check in (("traffic split", found.arm_srm), ("holdout split", found.holdout_srm)):
        if check is None:
            continue
        verdict = "[bold red]SAMPLE RATIO MISMATCH[/]" if check.mismatch else "ok"
        console.print(
            f"{label}: chi2 = {check.statistic:.2f} (df {check.degrees_of_freedom}), "
            f"p = {check.p_value:.4g}: {verdict}"
        )
    for d in found.divergences:
        console.print(
            f"[yellow]divergence[/]: {d.arm} 95% CI [{d.ci_low:.4g}, {d.ci_high:.4g}] is outside the "
            f"expected {d.expected:g} +/- {d.tolerance:g}"
        )
    for b in found.breaches:
        console.print(f"[red]guardrail breach[/]: {b.arm}: {b.evidence}")


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add `experiment apply|list` and `status`; return the `experiment` subcommands for the others."""
    experiment = commands.add_parser("experiment", help="manage experiments").add_subparsers(
        dest="action", required=True
    )
    apply = experiment.add_parser(
        "apply",
        help="validate experiment files and store them in Redis: one file, or every file in a directory",
    )
    apply.add_argument(
        "path",
        metavar="FILE|DIR",
        help="a YAML or JSON experiment file (see docs/experiments.md), or a directory of them: "
        "every file is validated before anything is written, and only files that change something are",
    )
    apply.add_argument(
        "--prune", action="store_true", help="with a directory: archive stored experiments it has no file for"
    )
    apply.add_argument(
        "--dry-run", action="store_true", help="print what would change, field by field; write nothing"
    )
    add_actor(apply)
    apply.set_defaults(handler=cmd_apply)
    listing = experiment.add_parser("list", help="list experiments: name, version, live/killed/archived")
    listing.set_defaults(handler=cmd_list)
    for sub in (apply, listing):
        add_redis_url(sub)
    archive.register(experiment)

    status = commands.add_parser(
        "status",
        help="every experiment in one table, or one experiment's arms: trials, mean, 95%% CI, P(best)",
        description=COLUMNS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("experiment", nargs="?", help="the experiment's name (omit it: every experiment)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add_redis_url(status)
    status.set_defaults(handler=cmd_status)
    return experiment
