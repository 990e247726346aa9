"""The PNG chart of a load test: traffic share per arm over time, and cumulative regret over time.

Drawn with matplotlib's Agg canvas directly (no pyplot, so no GUI backend and no global figure state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_chart(report: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - optional, heavy
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = report["timeline"]
    arms = list(report["arms"])
    # each bucket drawn flat from its start to its end, so the areas line up with the time axis
    edges = [x for row in rows for x in (row["start"], row["end"])]
    ends = [row["end"] for row in rows]
    figure = Figure(figsize=(10, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    shares_ax, regret_ax = figure.subplots(2, 1, sharex=True)
    stacks = [[row["shares"].get(arm, 0.0) for row in rows for _ in range(2)] for arm in arms]
    if rows and arms:
        shares_ax.stackplot(edges, stacks, labels=arms, alpha=0.85)
    shares_ax.set_ylim(0, 1)
    shares_ax.set_ylabel("traffic share")
    shares_ax.set_title(
        f"{report['config']['experiment']} @ {report['config']['target']}: traffic share per arm "
        f"({report['config']['bucket_seconds']:g} s buckets)"
    )
    if arms:
        shares_ax.legend(loc="upper left", fontsize="small")
    regret_ax.plot([0.0, *ends], [0.0, *(row["cumulative_regret"] for row in rows)], marker=".")
    regret_ax.set_ylabel("cumulative expected regret")
    regret_ax.set_xlabel("seconds since start")
    regret_ax.set_title("cumulative regret against the best arm (true rates at decision time)")
    regret_ax.grid(alpha=0.3)
    for phase in report["config"]["environment"]["phases"][1:]:
        for ax in (shares_ax, regret_ax):
            ax.axvline(phase["start"], color="black", linestyle="--", linewidth=1)
        shares_ax.annotate(
            " drift", (phase["start"], 0.97), ha="left", va="top", fontsize="small", backgroundcolor="white"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
