"""The load test's PNG, from a hand-built JSON report (the chart of a real run:
integration/test_loadtest.py): the latency-over-time panel, and legends that never cover data."""

from __future__ import annotations

import math
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mabrouter.loadtest.chart import PANELS, build_figure

ARMS = ("v1", "v2", "v3")


def report(buckets: int = 10, drift_at: float | None = 5.0, idle: tuple[int, ...] = (4,)) -> dict[str, Any]:
    """A 10 s run in 1 s buckets; latency grows over time; nothing answered in the `idle` buckets."""
    rows = []
    for b in range(buckets):
        answered = b not in idle
        latency = {"count": 100, "p50": 300 + 100 * b, "p90": 600 + 200 * b, "p99": 900 + 400 * b}
        rows.append(
            {
                "start": float(b),
                "end": float(b + 1),
                "decisions": 100 if answered else 0,
                "shares": {"v1": 0.5, "v2": 0.3, "v3": 0.2} if answered else {},
                "cumulative_regret": 0.5 * b,
                "latency_us": latency | {"max": 5000}
                if answered
                else dict.fromkeys(latency, None) | {"count": 0},
            }
        )
    phases = [{"start": 0.0, "arms": {}}] + ([{"start": drift_at, "arms": {}}] if drift_at else [])
    return {
        "config": {"experiment": "ranker", "target": "127.0.0.1:1", "bucket_seconds": 1.0,
                   "environment": {"phases": phases}},
        "arms": {arm: {} for arm in ARMS},
        "timeline": rows,
        "latency_us": {"p99": 3500},
    }  # fmt: skip


def panel(figure: Figure, name: str) -> Axes:
    (found,) = [ax for ax in figure.axes if ax.get_label() == name]
    return found


def test_the_chart_has_a_latency_panel_between_shares_and_regret() -> None:
    figure = build_figure(report())
    assert [ax.get_label() for ax in figure.axes] == list(PANELS) == ["shares", "latency", "regret"]
    latency = panel(figure, "latency")
    lines = {line.get_label(): line for line in latency.get_lines()}
    rows = report()["timeline"]
    for name in ("p50", "p90", "p99"):
        drawn = [float(y) for y in lines[name].get_ydata()]
        expected = [r["latency_us"][name] / 1000 if r["latency_us"][name] else math.nan for r in rows]
        assert drawn == pytest.approx(expected, nan_ok=True)  # in ms: the p99 passes 1 ms
        assert [float(x) for x in lines[name].get_xdata()] == [b + 0.5 for b in range(10)]
    assert math.isnan(float(lines["p99"].get_ydata()[4]))  # no answer in bucket 4: a gap, not a zero
    assert float(lines["p99 of the whole run"].get_ydata()[0]) == pytest.approx(3.5)
    assert "ms" in latency.get_ylabel()


def test_latencies_under_a_millisecond_are_drawn_in_microseconds() -> None:
    fast = report()
    for row in fast["timeline"]:
        row["latency_us"] = {"count": 10, "p50": 120, "p90": 200, "p99": 400, "max": 900}
    latency = panel(build_figure(fast), "latency")
    p99 = next(line for line in latency.get_lines() if line.get_label() == "p99")
    assert float(p99.get_ydata()[0]) == 400
    assert "(us)" in latency.get_ylabel()


@pytest.mark.parametrize("drift_at", [5.0, None])
def test_legends_sit_outside_every_axes_and_inside_the_figure(drift_at: float | None) -> None:
    """Before: the share legend sat in the upper left of the share axes, over the stacked areas."""
    figure = build_figure(report(drift_at=drift_at))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert {legend.axes.get_label() for legend in legends} == {"shares", "latency"}
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in figure.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (legend.axes.get_label(), ax.get_label())
        assert figure.bbox.x0 <= box.x0
        assert box.x1 <= figure.bbox.x1  # not cut off either
    shares = panel(figure, "shares").get_legend()
    texts = [text.get_text() for text in shares.get_texts()]
    assert texts[:3] == list(ARMS)
    assert ("drift: true rates change" in texts) == (drift_at is not None)


def test_a_run_without_answers_still_draws_every_panel() -> None:
    silent = report(idle=tuple(range(10)))
    figure = build_figure(silent)
    assert [ax.get_label() for ax in figure.axes] == list(PANELS)
    p50 = next(line for line in panel(figure, "latency").get_lines() if line.get_label() == "p50")
    assert all(math.isnan(float(y)) for y in p50.get_ydata())
