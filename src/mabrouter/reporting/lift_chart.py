"""The lift figure: each arm's relative lift against the control with its 95% credible interval, and its
probability of beating the control written beside it (in a column right of the axes, never over data).

The lift is undefined when the control's mean may be <= 0; that depends on the control's draws alone, so
it holds for every arm at once, and the figure then shows P(beats control) as bars, and why.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from mabrouter.reporting.canvas import colour, new_figure
from mabrouter.reporting.lift import UNDEFINED_WHY, LiftRow

ROW_INCHES = 0.55
NOTE_X = 1.02  # the annotation column, in axes fractions: right of the plotting area


def lift_figure(rows: Sequence[LiftRow], control: str) -> Figure:
    figure = new_figure(1.3 + ROW_INCHES * len(rows))
    ax = figure.add_subplot()
    ax.set_label("lift")  # tests and scripts find the panel by name
    if any(row.defined for row in rows):
        _lift_rows(ax, rows, control)
    else:
        _p_beats_bars(ax, rows, control)
    ax.set_yticks(range(len(rows)), [row.label for row in reversed(rows)])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    return figure


def _y(rows: Sequence[LiftRow], position: int) -> int:
    return len(rows) - 1 - position  # the first arm on top


def _note(ax: Axes, y: float, text: str) -> None:
    """Text in the column right of the axes, level with row `y`: beside the data, never over it."""
    ax.annotate(text, (NOTE_X, y), xycoords=("axes fraction", "data"), va="center", fontsize="small")


def _lift_rows(ax: Axes, rows: Sequence[LiftRow], control: str) -> None:
    ax.axvline(0.0, color="red", linewidth=1.2)
    for position, row in enumerate(rows):
        y, c = _y(rows, position), row.comparison
        p_beats = f"P(beats control) = {c.p_beats_control:.3f}"
        if c.lift is None or c.ci_low is None or c.ci_high is None:
            _note(ax, y, f"{p_beats}; lift undefined")
            continue
        error = [[c.lift - c.ci_low], [c.ci_high - c.lift]]
        ax.errorbar([c.lift], [y], xerr=error, fmt="o", color=colour(row.index), capsize=4, linewidth=2)
        _note(ax, y, p_beats)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel(f"relative lift of the mean against {control}: (arm - control) / control, 95% interval")
    ax.grid(axis="x", alpha=0.3)


def _p_beats_bars(ax: Axes, rows: Sequence[LiftRow], control: str) -> None:
    for position, row in enumerate(rows):
        y, p = _y(rows, position), row.comparison.p_beats_control
        ax.barh(y, p, color=colour(row.index), height=0.6)
        _note(ax, y, f"P(beats control) = {p:.3f}")
    ax.axvline(0.5, color="black", linewidth=1, linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"P(arm's mean > {control}'s)")
    ax.set_title(f"lift undefined: {UNDEFINED_WHY}; P(arm beats control) instead", fontsize=9, wrap=True)
