"""The PNG chart of a load test, from its JSON report: traffic share per arm, Route latency (p50, p90,
p99 per time bucket), and cumulative regret, over the same time axis.

Legends sit right of the axes, outside the plotting area, so they never cover data (the constrained
layout makes room for them). Drawn with matplotlib's Agg canvas directly (no pyplot, so no GUI backend
and no global figure state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # matplotlib is optional: imported when a chart is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANELS: Final = ("shares", "latency", "regret")  # each axes' label, top to bottom
LATENCY_LINES: Final = (("p50", "-"), ("p90", "--"), ("p99", ":"))
MS_FROM_US: Final = 1000  # latencies are drawn in ms once a bucket's p99 reaches 1 ms


def write_chart(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    build_figure(report).savefig(path, format="png")


def build_figure(report: dict[str, Any]) -> Figure:
    """The chart as a figure: one axes per PANELS entry, in that order, each labelled with its name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - optional, heavy
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(11, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(3, 1, sharex=True, height_ratios=(3, 2, 2))
    for ax, name in zip(axes, PANELS, strict=True):
        ax.set_label(name)
    shares_ax, latency_ax, regret_ax = axes
    rows = report["timeline"]
    _shares(shares_ax, report, rows)
    _latency(latency_ax, report, rows)
    _regret(regret_ax, rows)
    for index, phase in enumerate(report["config"]["environment"]["phases"][1:]):
        for ax in axes:  # the drift's label goes in the legend, not over the data
            label = "drift: true rates change" if ax is shares_ax and index == 0 else None
            ax.axvline(phase["start"], color="black", linestyle="--", linewidth=1, label=label)
    for ax in (shares_ax, latency_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)
    return figure


def _shares(ax: Axes, report: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    arms = list(report["arms"])
    # each bucket drawn flat from its start to its end, so the areas line up with the time axis
    edges = [x for row in rows for x in (row["start"], row["end"])]
    stacks = [[row["shares"].get(arm, 0.0) for row in rows for _ in range(2)] for arm in arms]
    if rows and arms:
        ax.stackplot(edges, stacks, labels=arms, alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_ylabel("traffic share")
    config = report["config"]
    ax.set_title(
        f"{config['experiment']} @ {config['target']}: traffic share per arm "
        f"({config['bucket_seconds']:g} s buckets)"
    )


def _latency(ax: Axes, report: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """Each bucket's percentiles at its middle; a bucket without a successful call leaves a gap."""
    middles = [(row["start"] + row["end"]) / 2 for row in rows]
    summaries = [row.get("latency_us") or {} for row in rows]
    highest = max((s.get("p99") or 0 for s in summaries), default=0)
    scale, unit = (MS_FROM_US, "ms") if highest >= MS_FROM_US else (1, "us")
    for name, style in LATENCY_LINES:
        values = [s[name] / scale if s.get(name) is not None else float("nan") for s in summaries]
        ax.plot(middles, values, style, marker=".", label=name)
    run_p99 = report["latency_us"].get("p99")
    if run_p99 is not None:
        ax.axhline(run_p99 / scale, color="0.5", linewidth=1, label="p99 of the whole run")
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"Route latency ({unit})")
    ax.set_title("Route latency of successful calls, per time bucket (by send time)")
    ax.grid(alpha=0.3)


def _regret(ax: Axes, rows: Sequence[dict[str, Any]]) -> None:
    ax.plot(
        [0.0, *(row["end"] for row in rows)], [0.0, *(row["cumulative_regret"] for row in rows)], marker="."
    )
    ax.set_ylabel("cumulative expected regret")
    ax.set_xlabel("seconds since start")
    ax.set_title("cumulative regret against the best arm (true rates at decision time)")
    ax.grid(alpha=0.3)
