"""What every report figure shares: the Agg canvas (no pyplot: no GUI backend, no global state), the PNG
encoding for a data: URI, each arm's colour (the same in every figure) and where legends go."""

from __future__ import annotations

import base64
import io

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WIDTH_INCHES = 8.4


def new_figure(height: float = 3.6) -> Figure:
    figure = Figure(figsize=(WIDTH_INCHES, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_base64(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def legend_outside(ax: Axes) -> None:
    """The legend right of the axes, never over data (the constrained layout makes room for it)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def colour(index: int) -> str:
    """The arm at `index` in the experiment: matplotlib's C0..C9, so an arm keeps its colour everywhere."""
    return f"C{index % 10}"
