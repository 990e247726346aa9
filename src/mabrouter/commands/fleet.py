"""`mabrouter status` without a name: one row per experiment, read through the routers' own decoder."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from mabrouter.commands.common import admin_store
from mabrouter.core.summary import summarize
from mabrouter.errors import ConfigError
from mabrouter.store.controls_codec import parse_controls, parse_global_controls
from mabrouter.store.experiment_decoder import (
    archived_at_ms,
    decode_document,
    decode_experiment,
    experiment_state,
    is_archived,
    switches,
)
from mabrouter.store.ports import OperatorStore
from mabrouter.store.records import StoredExperiment

HOUR_MS = 3_600_000
# Decisions are counted up to this many per experiment (about 0.4 s of Redis time at most), then "N+".
DECISIONS_CAP = 100_000
# Guardrail actions are counted among this many newest audit entries of each experiment.
AUDIT_WINDOW = 1000
GUARDRAIL_ACTOR = "guardrail"

COLUMNS_HELP = """\
Without a name: one row per experiment, plain aligned columns (--json: a list of the same fields):
  EXPERIMENT, VERSION  the name and the stored version
  STATE                live, killed (the experiment's or the global kill switch), archived, or unusable
                       (what is stored cannot be decoded: routers serve its last good state; exit 1)
  ROLLOUT              percent of units exposed
  LEADER, P(BEST)      the arm most likely to be the best, and that probability
  DECISIONS 1H         entries routers wrote to the experiment's decision log (mabrouter:{EXP}:decisions)
                       in the last hour, by when each was written (about 100 ms after its decision):
                       every Route answer except FALLBACK_DEFAULT ones. 0 when the log is off
                       (MABROUTER_EXPOSURE_LOG_MAXLEN=0). Counted exactly up to 100,000, shown as
                       100,000+ beyond (--json: decisions_last_hour_capped true): counting costs Redis
                       about 4 ms per 1,000 entries
  GUARDRAIL ACTIONS    arms killed by guardrails: audit entries by actor 'guardrail' among the
                       experiment's newest 1,000
With a name: per-arm trials, mean, 95% CI, P(best), traffic share, and lift against the control."""


@dataclass(frozen=True, slots=True)
class FleetRow:
    experiment: str
    version: int | None
    state: str
    rollout: float | None
    leader: str | None
    leader_p_best: float | None
    decisions_last_hour: int
    decisions_last_hour_capped: bool  # more than DECISIONS_CAP: counting stopped there
    guardrail_actions: int
    archived_at_ms: int | None
    problem: str | None


def state_label(archived: bool, killed: bool) -> str:
    return "archived" if archived else ("killed" if killed else "live")


def lifecycle_state(stored: StoredExperiment, global_killed: bool) -> str:
    """live, killed, archived or unusable, from the document and switches alone (what `list` shows)."""
    if is_archived(stored.control):
        return "archived"
    try:
        spec = decode_document(stored.name, stored.config).spec
    except ConfigError:
        return "unusable"
    controls, _ = parse_controls(switches(stored.control), spec)
    return state_label(False, global_killed or controls.killed)


def fleet_row(store: OperatorStore, stored: StoredExperiment, global_killed: bool, now_ms: int) -> FleetRow:
    name, archived = stored.name, is_archived(stored.control)
    counted = store.count_decisions(name, now_ms - HOUR_MS, DECISIONS_CAP + 1)
    decisions, capped = min(counted, DECISIONS_CAP), counted > DECISIONS_CAP
    actions = sum(
        1 for entry in store.audit([name], AUDIT_WINDOW) if entry.fields.get("actor") == GUARDRAIL_ACTOR
    )
    when = archived_at_ms(stored.control)
    try:
        decoded = decode_experiment(stored.raw, now_ms)
        state = experiment_state(decoded)
    except (ConfigError, ValueError) as exc:
        label = "archived" if archived else "unusable"
        return FleetRow(name, None, label, None, None, None, decisions, capped, actions, when, str(exc))
    leader = max(summarize(state, np.random.default_rng()), key=lambda arm: arm.p_best)
    return FleetRow(
        experiment=name,
        version=decoded.version,
        state=state_label(archived, global_killed or decoded.controls.killed),
        rollout=state.rollout,
        leader=leader.arm,
        leader_p_best=leader.p_best,
        decisions_last_hour=decisions,
        decisions_last_hour_capped=capped,
        guardrail_actions=actions,
        archived_at_ms=when,
        problem=None,
    )


def fleet_rows(store: OperatorStore, now_ms: int) -> tuple[list[FleetRow], bool]:
    """Every stored experiment's row (a name listed without a config is being created: left out), and
    whether the global kill switch is on."""
    global_control, _ = parse_global_controls(store.global_control())
    rows = [
        fleet_row(store, stored, global_control.killed, now_ms)
        for name in store.names()
        if (stored := store.get(name)) is not None
    ]
    return rows, global_control.killed


def cmd_fleet_status(args: argparse.Namespace) -> int:
    with admin_store(args) as store:
        rows, global_killed = fleet_rows(store, int(time.time() * 1000))
    unusable = [row for row in rows if row.state == "unusable"]
    for row in unusable:
        print(f"warning: {row.experiment}: {row.problem}", file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        _print_table(rows, global_killed)
    return 1 if unusable else 0


HEADERS = (
    "EXPERIMENT",
    "VERSION",
    "STATE",
    "ROLLOUT",
    "LEADER",
    "P(BEST)",
    "DECISIONS 1H",
    "GUARDRAIL ACTIONS",
)
RIGHT_ALIGNED = frozenset({1, 3, 5, 6, 7})


def _print_table(rows: list[FleetRow], global_killed: bool) -> None:
    """Plain aligned columns, as `kubectl get` prints them: nothing is cut whatever the names' length or
    the terminal's width, and each row stays one line for grep and awk."""
    if global_killed:
        print("GLOBAL KILL is on: every experiment serves its control arm")
    cells = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    for line in cells:
        padded = (
            text.rjust(width) if i in RIGHT_ALIGNED else text.ljust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        )
        print("  ".join(padded).rstrip())


def _cells(row: FleetRow) -> tuple[str, ...]:
    return (
        row.experiment,
        str(row.version) if row.version is not None else "?",
        row.state,
        f"{row.rollout:g}%" if row.rollout is not None else "-",
        row.leader or "-",
        f"{row.leader_p_best:.3f}" if row.leader_p_best is not None else "-",
        f"{row.decisions_last_hour:,}{'+' if row.decisions_last_hour_capped else ''}",
        str(row.guardrail_actions),
    )
