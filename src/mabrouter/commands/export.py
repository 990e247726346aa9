"""`mabrouter export`: decisions joined with their outcomes, for pandas or a warehouse.

One row per decision from the exposure log: decision (nonce), ts_ms, unit, arm, reason, propensity,
config_version, counted, seg.* attributes, then outcome columns: rewarded (0/1), reward (sum of
rewards applied to it; a decision is rewarded at most once), outcome_ts_ms. Outcomes are read from the
same start time on, since an outcome always follows its decision.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TextIO

from mabrouter.commands.common import add_redis_url, admin_store, unknown_experiment
from mabrouter.errors import ConfigError
from mabrouter.store.experiment_decoder import decode_document
from mabrouter.store.ports import OperatorStore

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
BASE_COLUMNS = ["decision", "ts_ms", "unit", "arm", "reason", "propensity", "config_version", "counted"]
OUTCOME_COLUMNS = ["rewarded", "reward", "outcome_ts_ms"]


def parse_since(text: str, now_ms: int) -> int:
    """'90m', '24h', '7d' (ago), an ISO 8601 time, or epoch milliseconds."""
    match = _DURATION.match(text.strip())
    if match:
        return now_ms - int(float(match.group(1)) * _SECONDS[match.group(2)] * 1000)
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use a duration like 24h or 30m, an ISO time, or epoch ms"
        ) from None


def joined_rows(
    decisions: Iterator[dict[str, str]], outcomes: dict[str, dict[str, str]]
) -> Iterator[dict[str, str]]:
    for entry in decisions:
        row = {
            "decision": entry.get("d", ""),
            "ts_ms": entry.get("ts", ""),
            "unit": entry.get("unit", ""),
            "arm": entry.get("arm", ""),
            "reason": entry.get("reason", ""),
            "propensity": entry.get("p", ""),
            "config_version": entry.get("v", ""),
            "counted": entry.get("counted", ""),
        }
        row.update({key: value for key, value in entry.items() if key.startswith("seg.")})
        outcome = outcomes.get(row["decision"])
        row["rewarded"] = "1" if outcome else "0"
        row["reward"] = outcome.get("reward", "") if outcome else ""
        row["outcome_ts_ms"] = outcome.get("ts", "") if outcome else ""
        yield row


def _write(rows: Iterator[dict[str, str]], out: TextIO, fmt: str, segment_columns: list[str]) -> int:
    count = 0
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=BASE_COLUMNS + segment_columns + OUTCOME_COLUMNS, restval="")
        writer.writeheader()
    for row in rows:
        if writer is not None:
            writer.writerow({key: row.get(key, "") for key in writer.fieldnames})
        else:
            out.write(json.dumps(row) + "\n")
        count += 1
    return count


def _segments(store: OperatorStore, experiment: str) -> tuple[str, ...]:
    """The segment columns, from the document as the routers decode it (none if it does not decode:
    the rows still carry every seg.* field they were logged with, in jsonl)."""
    stored = store.get(experiment)
    if stored is None:
        return ()
    try:
        return decode_document(experiment, stored.config).spec.segments
    except ConfigError as exc:
        print(f"warning: {exc}; exporting without segment columns", file=sys.stderr)
        return ()


def cmd_export(args: argparse.Namespace) -> int:
    since_ms = parse_since(args.since, int(time.time() * 1000))
    with admin_store(args) as store:
        if store.get(args.experiment) is None:
            print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
            return 2
        outcomes = {entry["d"]: entry for entry in store.read_outcomes(args.experiment, since_ms)}
        segments = _segments(store, args.experiment)
        rows = joined_rows(store.read_decisions(args.experiment, since_ms), outcomes)
        columns = [f"seg.{name}" for name in segments]
        if args.out:
            with open(args.out, "w", encoding="utf-8", newline="") as out:
                count = _write(rows, out, args.format, columns)
        else:
            count = _write(rows, sys.stdout, args.format, columns)
    print(f"exported {count} decisions ({len(outcomes)} outcomes) of {args.experiment}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser("export", help="decisions joined with outcomes (jsonl or csv)")
    export.add_argument("experiment", help="the experiment's name")
    export.add_argument("--since", default="24h", help="24h, 30m, 7d, an ISO time or epoch ms (default 24h)")
    export.add_argument(
        "--format", choices=["jsonl", "csv"], default="jsonl", help="one JSON object per line, or CSV"
    )
    export.add_argument("--out", help="file to write (default: standard output)")
    add_redis_url(export)
    export.set_defaults(handler=cmd_export)
