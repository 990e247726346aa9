"""`mabrouter status` of a contextual experiment: each arm's coefficients with 95% intervals."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mabrouter.reporting.contextual import ContextualView


def print_model(console: Console, view: ContextualView | None) -> None:
    """One row per column of the model, one column per arm: `mean [low, high]` (nothing for an
    experiment that is not contextual)."""
    if view is None:
        return
    table = Table(title="contextual model: coefficient, +/- half its 95% credible interval")
    table.add_column("column", justify="left")
    for arm in view.arms:
        table.add_column(arm.arm, justify="right")
    table.add_row("decisions", *(f"{arm.decisions:,.0f}" for arm in view.arms))
    table.add_row("noise sd", *(f"{arm.noise_sd:.4f}" for arm in view.arms))
    for c, column in enumerate(view.columns):
        table.add_row(
            column, *(f"{arm.mean[c]:+.4f} [{arm.low[c]:+.4f}, {arm.high[c]:+.4f}]" for arm in view.arms)
        )
    console.print(table)
    console.print(
        "P(best) and share above are at the typical context (every attribute missing): the allocation "
        "depends on each request's attributes (`mabrouter report` draws which arm wins where)"
    )
