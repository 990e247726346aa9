"""The report's figures, drawn on matplotlib's Agg canvas (`canvas`), each returned as a base64 PNG for a
data: URI. A figure with nothing to show is left out, with the reason (`panels`), never drawn empty.

Each arm keeps its colour in every figure (matplotlib's C0..C9, in experiment order).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mabrouter.core.model import RewardKind
from mabrouter.reporting.canvas import colour, legend_outside, new_figure, png_base64
from mabrouter.reporting.contextual_chart import contextual_figure
from mabrouter.reporting.data import ReportData, utc_text
from mabrouter.reporting.estimators import FloatArray, IntArray, per_decision_reward
from mabrouter.reporting.lift import against_control
from mabrouter.reporting.lift_chart import lift_figure
from mabrouter.reporting.panels import Charts, figure_omissions

NICE_BUCKETS_MS = (
    *(100, 250, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000),
    *(60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000),
    *(3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000),
)
TARGET_BUCKETS = 40  # traffic shares
REWARD_BUCKETS = 15  # rewards are noisier: wider buckets
MIN_BUCKET_DECISIONS = 5  # a reward mean over fewer decisions is not drawn
HOLDOUT_COLOUR = "black"


def beta_pdf(x: FloatArray, alpha: float, beta: float) -> FloatArray:
    """Beta density on 0 < x < 1, computed in log space (no scipy)."""
    log_norm = math.lgamma(alpha + beta) - math.lgamma(alpha) - math.lgamma(beta)
    return np.exp(log_norm + (alpha - 1.0) * np.log(x) + (beta - 1.0) * np.log1p(-x))


def student_t_pdf(x: FloatArray, location: float, scale: float, df: float) -> FloatArray:
    """Density of location + scale * t(df)."""
    z = (x - location) / scale
    log_norm = (
        math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - math.log(scale)
    )
    return np.exp(log_norm - (df + 1) / 2 * np.log1p(z * z / df))


def bucket_width_ms(span_ms: int, target: int = TARGET_BUCKETS) -> int:
    """A round bucket width giving at most `target` buckets over the span."""
    for width in NICE_BUCKETS_MS:
        if span_ms / width <= target:
            return width
    return NICE_BUCKETS_MS[-1] * math.ceil(span_ms / (NICE_BUCKETS_MS[-1] * target))


def render_charts(data: ReportData) -> Charts:
    """Figure key -> base64 PNG (the page gives each its title and caption), and the figures left out."""
    builders: dict[str, Callable[[ReportData], Figure | str]] = {
        "posteriors": _posteriors,
        "lift": lambda view: lift_figure(against_control(view.arms), view.control),
        "traffic": _traffic,
        "reward": _reward,
        "holdout": _holdout,
        "values": _values,
        "guardrails": _guardrails,
    }
    if data.contextual is not None:
        builders["contextual"] = contextual_figure
    omitted = figure_omissions(data)
    images = {}
    for key, build in builders.items():
        if key in omitted:
            continue
        drawn = build(data)
        if isinstance(drawn, str):  # found empty only while drawing (e.g. every bucket too thin)
            omitted[key] = drawn
        else:
            images[key] = png_base64(drawn)
    return Charts(images, omitted)


def _posteriors(data: ReportData) -> Figure:
    figure = new_figure()
    ax = figure.add_subplot()
    bernoulli = data.reward is RewardKind.BERNOULLI
    spans = []
    for arm in data.arms:
        first, second, df = arm.density
        if bernoulli:
            total = first + second
            spread = math.sqrt(first * second / (total * total * (total + 1)))
        else:
            spread = second * (math.sqrt(df / (df - 2)) if df > 2 else 3.0)
        spans.append((arm.summary.mean - 6 * spread, arm.summary.mean + 6 * spread))
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    if bernoulli:
        low, high = max(low, 1e-6), min(high, 1 - 1e-6)
    x = np.linspace(low, high, 800)
    for index, arm in enumerate(data.arms):
        first, second, df = arm.density
        y = beta_pdf(x, first, second) if bernoulli else student_t_pdf(x, first, second, df)
        style = "--" if arm.killed else (":" if arm.spec.shadow else "-")
        ax.plot(x, y, linestyle=style, color=colour(index), label=arm.label, linewidth=1.8)
        inside = (x >= arm.summary.ci_low) & (x <= arm.summary.ci_high)
        ax.fill_between(x, 0, y, where=inside, color=colour(index), alpha=0.2, linewidth=0)
    trials = sum(arm.summary.trials for arm in data.arms)
    ax.set_title("posterior densities" + ("" if trials else " (prior only: no trials yet)"))
    ax.set_xlabel("conversion rate" if bernoulli else "mean reward")
    ax.set_ylabel("density")
    ax.set_ylim(bottom=0)
    legend_outside(ax)
    return figure


def _time_unit(span_ms: int) -> tuple[str, float]:
    for unit, ms, limit in (
        ("s", 1000.0, 180_000),
        ("min", 60_000.0, 10_800_000),
        ("h", 3_600_000.0, 259_200_000),
    ):
        if span_ms <= limit:
            return unit, ms
    return "d", 86_400_000.0


def _buckets(data: ReportData, target: int) -> tuple[IntArray, int, int, str, float]:
    """Bucket of each decision, bucket count, width (ms), time unit and its length (ms)."""
    ts = data.exposure.ts_ms
    start = int(ts.min())
    width = bucket_width_ms(int(ts.max()) - start + 1, target)
    index = (ts - start) // width
    count = int(index.max()) + 1
    unit, unit_ms = _time_unit(count * width)
    return index, count, width, unit, unit_ms


def _time_axis(ax: Axes, data: ReportData, unit: str, width: int) -> None:
    first = utc_text(int(data.exposure.ts_ms.min()))
    ax.set_xlabel(f"{unit} since the first decision in the window ({first}); buckets of {width / 1000:g} s")


def _traffic(data: ReportData) -> Figure:
    figure = new_figure(4.4)
    share_ax, volume_ax = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    index, count, width, unit, unit_ms = _buckets(data, TARGET_BUCKETS)
    exposure = data.exposure
    totals = np.bincount(index, minlength=count).astype(np.float64)
    layers, labels, colours = [], [], []
    for arm in range(len(exposure.arms)):
        served = np.bincount(index[exposure.counted & (exposure.arm == arm)], minlength=count)
        if served.any():
            layers.append(served / np.maximum(totals, 1))
            labels.append(exposure.arms[arm])
            colours.append(colour(arm))
    unsampled = np.bincount(index[~exposure.counted], minlength=count)
    if unsampled.any():
        layers.append(unsampled / np.maximum(totals, 1))
        labels.append("control, not sampled")
        colours.append("0.75")
    edges = np.repeat(np.arange(count + 1) * width / unit_ms, 2)[1:-1]
    if layers:
        share_ax.stackplot(edges, [np.repeat(layer, 2) for layer in layers], labels=labels, colors=colours)
    share_ax.set_ylim(0, 1)
    share_ax.set_ylabel("share of decisions")
    legend_outside(share_ax)
    volume_ax.bar(
        np.arange(count) * width / unit_ms, totals, width=width / unit_ms, align="edge", color="0.5"
    )
    volume_ax.set_ylabel("decisions")
    _time_axis(volume_ax, data, unit, width)
    return figure


def _reward(data: ReportData) -> Figure | str:
    figure = new_figure()
    ax = figure.add_subplot()
    exposure = data.exposure
    value = per_decision_reward(exposure.reward, data.reward)
    index, count, width, unit, unit_ms = _buckets(data, REWARD_BUCKETS)
    centres = (np.arange(count) + 0.5) * width / unit_ms
    groups = [
        (exposure.arms[a], colour(a), "-", exposure.counted & (exposure.arm == a))
        for a in range(len(exposure.arms))
    ]
    groups.append(("holdout (control)", HOLDOUT_COLOUR, "--", exposure.holdout()))
    drawn = False
    for label, tint, style, group in groups:
        chosen = group & np.isfinite(value)
        n = np.bincount(index[chosen], minlength=count).astype(np.float64)
        if not (n >= MIN_BUCKET_DECISIONS).any():
            continue
        means = np.bincount(index[chosen], weights=value[chosen], minlength=count) / np.maximum(n, 1)
        squares = np.bincount(index[chosen], weights=value[chosen] ** 2, minlength=count) / np.maximum(n, 1)
        means[n < MIN_BUCKET_DECISIONS] = np.nan
        se = np.sqrt(np.maximum(squares - means**2, 0.0) / np.maximum(n - 1, 1))
        ax.plot(centres, means, style, marker="o", markersize=3, color=tint, label=label)
        ax.fill_between(centres, means - 1.96 * se, means + 1.96 * se, color=tint, alpha=0.08, linewidth=0)
        drawn = True
    if not drawn:
        return f"no time bucket has {MIN_BUCKET_DECISIONS} decisions of one arm with an outcome yet"
    ax.set_ylabel("mean outcome per decision")
    if data.reward is RewardKind.BERNOULLI:
        ax.set_ylim(bottom=0)
    legend_outside(ax)
    _time_axis(ax, data, unit, width)
    return figure


def _holdout(data: ReportData) -> Figure | str:
    found = data.holdout
    if found is None:  # figure_omissions left it out already, with the reason
        return "no holdout comparison"
    figure = new_figure(3.2)
    ax = figure.add_subplot()
    ax.hist(found.draws, bins=80, density=True, color="0.55")
    ax.axvspan(found.ci_low, found.ci_high, color="C0", alpha=0.15, label="95% interval")
    ax.axvline(0.0, color="red", linewidth=1.5, label="no difference")
    ax.axvline(found.difference, color="C0", linewidth=1.5, label=f"observed {found.difference:+.4f}")
    ax.set_title(
        f"bandit {found.bandit_mean:.4f} (n={found.bandit_n:,}) - holdout {found.holdout_mean:.4f} "
        f"(n={found.holdout_n:,}); P(bandit better) = {found.p_bandit_better:.3f}"
    )
    ax.set_xlabel("difference in mean outcome per decision (bandit - holdout)")
    ax.set_yticks([])
    legend_outside(ax)
    return figure


def _values(data: ReportData) -> Figure:
    figure = new_figure(0.9 + 0.6 * len(data.arms))
    ax = figure.add_subplot()
    estimates = {e.arm: e for e in data.ipw}
    for row, arm in enumerate(data.arms):
        y = len(data.arms) - 1 - row
        tint = colour(row)
        if arm.spec.expected is not None:
            band = arm.spec.expected
            ax.barh(y, 2 * band.tolerance, left=band.mean - band.tolerance, height=0.8, color="0.88")
        ax.hlines(y, arm.summary.ci_low, arm.summary.ci_high, color=tint, linewidth=7, alpha=0.4)
        ax.plot([arm.summary.mean], [y], "o", color=tint)
        found = estimates.get(arm.name)
        for offset, marker, mean, se in (
            (0.25, "s", found.ips, found.ips_se) if found else (0.25, "s", math.nan, math.nan),
            (-0.25, "^", found.snips, found.snips_se) if found else (-0.25, "^", math.nan, math.nan),
        ):
            if math.isfinite(mean):
                error = 1.96 * se if math.isfinite(se) else 0.0
                ax.errorbar([mean], [y + offset], xerr=[error], fmt=marker, color=tint, capsize=3)
    for marker, label in (
        ("o", "posterior mean, 95% CI"),
        ("s", "IPS +/- 1.96 SE"),
        ("^", "SNIPS +/- 1.96 SE"),
    ):
        ax.plot([], [], marker, color="0.35", label=label)
    legend_outside(ax)
    ax.set_yticks(range(len(data.arms)), [arm.label for arm in reversed(data.arms)])
    ax.set_xlabel("value (mean outcome per decision)")
    ax.grid(axis="x", alpha=0.3)
    return figure


def _guardrails(data: ReportData) -> Figure:
    rows = data.guardrails
    figure = new_figure(0.9 + 0.45 * len(rows))
    ax = figure.add_subplot()
    colours = {"breached": "red", "killed by guardrail": "darkred", "ok": "C2"}
    for row_index, row in enumerate(rows):
        y = len(rows) - 1 - row_index
        p = row.probability if math.isfinite(row.probability) else 0.0
        ax.barh(y, p, color=colours.get(row.status, "0.7"), height=0.6)
        ax.plot([row.guardrail.probability] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(min(p, 1.0) + 0.01, y, f"{row.status} (n={row.observed.n:,})", va="center", fontsize="small")
    ax.set_yticks(range(len(rows)), [f"{r.arm} / {r.guardrail.metric}" for r in reversed(rows)])
    ax.set_xlim(0, 1.35)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("posterior probability of breach")
    return figure
