"""The report's contextual panel: which arm wins where (reporting/contextual.py computes what is drawn)."""

from __future__ import annotations

import math

from matplotlib.figure import Figure

from mabrouter.reporting.canvas import colour, legend_outside, new_figure
from mabrouter.reporting.data import ReportData

PANELS_PER_ROW = 2


def contextual_figure(data: ReportData) -> Figure | str:
    """One panel per numeric feature: each arm's predicted reward across it, with its 95 % band."""
    view = data.contextual
    if view is None or not view.curves:
        return (
            "no numeric feature with a known range: no contexts logged in the window, and no "
            "standardized feature to span mean +/- 2 scale"
        )
    rows = math.ceil(len(view.curves) / PANELS_PER_ROW)
    columns = min(len(view.curves), PANELS_PER_ROW)
    figure = new_figure(0.6 + 3.0 * rows)
    index = {arm.name: i for i, arm in enumerate(data.arms)}
    labels = {arm.name: arm.label for arm in data.arms}
    for panel, curve in enumerate(view.curves):
        ax = figure.add_subplot(rows, columns, panel + 1)
        for row, model in enumerate(view.arms):
            tint = colour(index.get(model.arm, row))
            ax.plot(curve.values, curve.means[row], color=tint, label=labels.get(model.arm, model.arm))
            ax.fill_between(curve.values, curve.lows[row], curve.highs[row], color=tint, alpha=0.18)
        ax.set_xlabel(curve.attribute)
        ax.set_ylabel("predicted reward")
        ax.grid(alpha=0.3)
        if panel == columns - 1:  # the rightmost panel of the first row: the legend has room beside it
            legend_outside(ax)
    figure.suptitle(f"others held at: {view.typical}", fontsize=9)
    return figure
