"""`mabrouter report EXP --out report.html`: one self-contained HTML page about an experiment.

Pictures first (posteriors, lift against the control, traffic and reward over time, bandit vs holdout,
arm values, guardrails), the numbers below (arms, lift, guardrails and ramps, sample ratio, holdout
comparison, inverse-propensity-weighted values, audit trail). A panel with nothing to show (the holdout's
when there is no holdout) is left out and named, with the reason. The charts need matplotlib:
`pip install 'mabrouter[report]'`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from mabrouter.commands.common import add_redis_url, admin_store, unknown_experiment
from mabrouter.commands.export import parse_since
from mabrouter.reporting.data import gather
from mabrouter.reporting.html import render

MISSING_MATPLOTLIB = (
    "mabrouter report draws its charts with matplotlib, which is not installed: "
    "pip install 'mabrouter[report]'"
)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        print(f"error: {MISSING_MATPLOTLIB}", file=sys.stderr)
        return 2
    from mabrouter.reporting.charts import render_charts  # noqa: PLC0415 - needs the optional matplotlib

    now_ms = int(time.time() * 1000)
    since_ms = parse_since(args.since, now_ms)  # ValueError -> exit 2 with the message
    with admin_store(args) as store:
        data = gather(
            store,
            args.experiment,
            since_ms=since_ms,
            now_ms=now_ms,
            rng=np.random.default_rng(0),  # the same data gives the same page
            audit_limit=args.audit_limit,
        )
    if data is None:
        print(f"error: {unknown_experiment(args.experiment)}", file=sys.stderr)
        return 2
    page = render(data, render_charts(data))
    out = Path(args.out or f"{args.experiment}-report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    partial.write_text(page, encoding="utf-8")
    partial.replace(out)  # readers never see half a page
    print(
        f"wrote {out} ({len(page) / 1024:,.0f} KiB): {data.exposure.size:,} decisions and "
        f"{data.outcomes_in_window:,} outcomes since {args.since}, {len(data.audit)} audit entries",
        file=sys.stderr,
    )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser("report", help="self-contained HTML report: charts first, then numbers")
    report.add_argument("experiment", help="the experiment's name")
    report.add_argument("--out", help="HTML file to write (default: EXPERIMENT-report.html)")
    window = "exposure log window: 24h, 30m, 7d, an ISO time or epoch ms (default 24h)"
    report.add_argument("--since", default="24h", help=window)
    report.add_argument("--audit-limit", type=int, default=100, help="audit entries shown (default 100)")
    add_redis_url(report)
    report.set_defaults(handler=cmd_report)
