"""The end report of a load test: one JSON-able dict, and the rich tables printed from it."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from mabrouter.loadtest.driver import RunConfig, new_histogram
from mabrouter.loadtest.runner import RunResult
from mabrouter.loadtest.stats import SrmResult, Tally, arms_seen, sample_ratio_mismatch, timeline

PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
TABLE_ROWS: Final = 10
SRM_ALPHA: Final = 0.001  # the usual SRM alarm threshold: a mismatch this unlikely means a broken split
LATE_SEND_US: Final = 50_000  # an open-loop send this late: the generator's event loop was saturated
KEEP_UP: Final = 0.9  # an open-loop run below 90% of its target rate: the generator could not keep up


def build_report(config: RunConfig, result: RunResult, command: list[str]) -> dict[str, Any]:
    tally = result.tally
    histogram = new_histogram()
    for encoded in result.histograms:
        histogram.decode_and_add(encoded)
    count = histogram.get_total_count()
    # The histogram reports a bucket's highest equivalent value (3 significant digits); the exact maximum
    # is tracked apart, and no percentile is reported above it.
    latency: dict[str, Any] = {
        name: min(histogram.get_value_at_percentile(p), tally.max_latency_us) if count else None
        for name, p in PERCENTILES
    }
    latency["max"] = tally.max_latency_us if count else None
    latency["count"] = count
    latency["mean"] = round(histogram.get_mean_value(), 1) if count else None
    arms = arms_seen(tally, config.environment.arms)
    rows = timeline(tally, config.buckets, arms)
    srm = (
        sample_ratio_mismatch(tally.propensities)
        if config.environment.context is None
        # Each contextual request has its own allocation, of which Route returns only the served arm's
        # share: the medians this check estimates shares from do not exist. The router counts it exactly.
        else SrmResult({}, {}, None, 0, None, "left out with --context; `mabrouter status` checks the split")
    )
    total_regret = rows[-1]["cumulative_regret"] if rows else 0.0
    modeled = tally.decisions - tally.unmodeled.total()
    throughput = tally.decisions / config.duration
    warnings = [*result.failures, *_warnings(config, tally, srm)]
    return {
        "command": command,
        "started_at": datetime.fromtimestamp(result.started_at, UTC).isoformat(),
        "config": {
            "target": config.target,
            "experiment": config.experiment,
            "duration_seconds": config.duration,
            "mode": "open-loop" if config.rate is not None else "closed-loop",
            "rate": config.rate,
            "concurrency": config.concurrency,
            "processes": config.processes,
            "units": config.units,
            "timeout_seconds": config.timeout,
            "reward_delay_seconds": config.reward_delay,
            "report_fraction": config.report_fraction,
            "bucket_seconds": config.bucket_seconds,
            "environment": config.environment.as_json(),
        },
        "wall_seconds": round(result.elapsed, 3),
        "workers": [{"decisions": n} for n in result.worker_decisions],
        "decisions": tally.decisions,
        "throughput_per_second": throughput,
        "latency_us": latency,
        "latency_note": "Route latency of successful calls, measured around the Route call only; "
        "timeline[].latency_us: the same per time bucket (by send time), to 3 significant digits",
        "errors": dict(tally.errors.most_common()),
        "error_total": tally.errors.total(),
        "reasons": dict(tally.reasons.most_common()),
        "arms": {
            arm: {
                "decisions": sum(row["counts"][arm] for row in rows),
                "share": (sum(row["counts"][arm] for row in rows) / tally.decisions)
                if tally.decisions
                else 0.0,
            }
            for arm in arms
        },
        "timeline": rows,
        "regret": {
            "total": total_regret,
            "per_decision": total_regret / modeled if modeled else None,
            "method": "expected-reward regret: sum over decisions of best_rate(t) - rate(arm, t), "
            "with the true rates at decision time t",
        },
        "srm": srm.as_json(),
        "outcomes": {
            "reported": tally.outcomes_sent,
            "duplicates": tally.outcomes_duplicate,
            "errors": dict(tally.outcome_errors.most_common()),
            "sent_early_at_end": tally.outcomes_flushed_at_end,
        },
        "generator": {"skipped": tally.skipped, "max_dispatch_lag_us": tally.max_dispatch_lag_us},
        "warnings": warnings,
    }


def _warnings(config: RunConfig, tally: Tally, srm: SrmResult) -> list[str]:
    """What a reader must know before trusting the numbers."""
    warnings: list[str] = []
    sent = tally.decisions + tally.errors.total()
    if config.rate is not None and sent < KEEP_UP * config.rate * config.duration:
        warnings.append(
            f"only {sent / config.duration:,.0f} calls/s were sent of the target {config.rate:,.0f}/s: the "
            "generator could not keep up (try --processes; is the machine saturated?)"
        )
    if tally.errors:
        warnings.append(
            f"{tally.errors.total():,} of {sent:,} Route calls failed ({tally.errors.total() / sent:.1%})"
        )
    if tally.max_dispatch_lag_us > LATE_SEND_US:
        warnings.append(
            f"sends ran up to {tally.max_dispatch_lag_us / 1000:,.0f} ms late: the generator was busy, "
            "and its own delays are in the latencies (try --processes)"
        )
    if tally.skipped:
        warnings.append(f"{tally.skipped:,} sends skipped: {config.max_inflight:,} calls were in flight")
    if tally.unmodeled:
        warnings.append(
            "arms without a simulated reward (rewards 0, left out of the regret): "
            + ", ".join(tally.unmodeled)
        )
    if srm.warning:
        warnings.append(f"SRM: {srm.warning}")
    if srm.p_value is not None and srm.p_value < SRM_ALPHA:
        warnings.append(f"SRM: p = {srm.p_value:.2g} < {SRM_ALPHA}: served counts do not match propensities")
    return warnings


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.3f} ms" if value >= 1000 else f"{value:.0f} us"


def print_report(report: dict[str, Any], console: Console) -> None:
    config = report["config"]
    load = (
        f"rate {config['rate']:g}/s" if config["rate"] is not None else f"concurrency {config['concurrency']}"
    )
    summary = Table(
        title=f"loadtest {config['experiment']} @ {config['target']}",
        caption=f"{config['mode']}, {load}, {config['duration_seconds']:g} s, "
        f"{config['processes']} process(es)",
    )
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    latency = report["latency_us"]
    srm = report["srm"]
    outcomes = report["outcomes"]
    regret = report["regret"]
    rows = [
        ("decisions", f"{report['decisions']:,}"),
        ("throughput", f"{report['throughput_per_second']:,.1f} decisions/s"),
        *((f"latency {name}", _us(latency[name])) for name in ("p50", "p90", "p99", "p99.9", "max")),
        ("errors", ", ".join(f"{k} {v:,}" for k, v in report["errors"].items()) or "0"),
        ("reasons", ", ".join(f"{k} {v:,}" for k, v in report["reasons"].items()) or "-"),
        ("outcomes reported", f"{outcomes['reported']:,} ({outcomes['duplicates']:,} duplicates)"),
        ("outcome errors", ", ".join(f"{k} {v:,}" for k, v in outcomes["errors"].items()) or "0"),
        ("cumulative regret", f"{regret['total']:,.2f}"),
        ("regret per decision", "-" if regret["per_decision"] is None else f"{regret['per_decision']:.4f}"),
        (
            "SRM chi-square",
            "-"
            if srm["chi2"] is None
            else f"chi2 {srm['chi2']:.2f}, df {srm['df']}, p {srm['p_value']:.3g} "
            f"({sum(srm['observed'].values()):,} decisions, {srm['excluded_decisions']:,} left out)",
        ),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    console.print(summary)
    console.print(_timeline_table(report))
    console.print(_arms_table(report))
    console.print(f"[dim]SRM method: {srm['method']}[/]")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


def _timeline_table(report: dict[str, Any]) -> Table:
    arms = list(report["arms"])
    rows = report["timeline"]
    group = max(1, math.ceil(len(rows) / TABLE_ROWS))
    table = Table(title="traffic share per arm over time")
    table.add_column("time (s)")
    table.add_column("decisions", justify="right")
    for arm in arms:
        table.add_column(arm, justify="right")
    table.add_column("cum. regret", justify="right")
    for first in range(0, len(rows), group):
        chunk = rows[first : first + group]
        total = sum(row["decisions"] for row in chunk)
        table.add_row(
            f"{chunk[0]['start']:g}-{chunk[-1]['end']:g}",
            f"{total:,}",
            *(f"{sum(row['counts'][arm] for row in chunk) / total:.1%}" if total else "-" for arm in arms),
            f"{chunk[-1]['cumulative_regret']:,.2f}",
        )
    table.add_row(
        "all",
        f"{report['decisions']:,}",
        *(f"{report['arms'][arm]['share']:.1%}" for arm in arms),
        f"{report['regret']['total']:,.2f}",
        end_section=True,
    )
    return table


def _arms_table(report: dict[str, Any]) -> Table:
    srm = report["srm"]
    phases = report["config"]["environment"]["phases"]
    table = Table(title="arms: true reward, traffic, sample-ratio check (SAMPLED decisions)")
    for column in ("arm", "true reward", "decisions", "share", "SRM expected", "SRM observed"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, stats in report["arms"].items():
        truth = [phase["arms"].get(arm) for phase in phases]
        table.add_row(
            arm,
            " -> ".join(_truth(value) for value in truth),
            f"{stats['decisions']:,}",
            f"{stats['share']:.1%}",
            f"{srm['expected'][arm]:,.1f}" if arm in srm["expected"] else "-",
            f"{srm['observed'].get(arm, 0):,}",
        )
    return table


def _truth(model: dict[str, float] | None) -> str:
    if model is None:
        return "?"
    if "rate" in model:
        return f"{model['rate']:g}"
    return f"N({model['mean']:g}, {model['sigma']:g})"
