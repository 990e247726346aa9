"""The report's lift panel and the rule that a panel with nothing to show is left out (and named), on
hand-built views: no Redis, no CLI (the page from a real router's traffic: integration/test_report.py)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from mabrouter.core.model import ArmSpec, BetaPrior, Controls, GlobalControls, RewardKind
from mabrouter.core.summary import ArmSummary, ControlComparison, compare_with_control
from mabrouter.reporting.charts import render_charts
from mabrouter.reporting.data import ArmView, ReportData
from mabrouter.reporting.decode import AuditRow, decode_exposure
from mabrouter.reporting.estimators import holdout_difference
from mabrouter.reporting.html import render
from mabrouter.reporting.lift import against_control, why_no_lift
from mabrouter.reporting.lift_chart import lift_figure
from mabrouter.reporting.panels import figure_omissions, section_omissions
from mabrouter.reporting.sections import lift_table

NOW_MS = 1_700_000_000_000
RATES = {"a": 0.10, "b": 0.12, "c": 0.20}


def comparisons(trials: int, seed: int = 1) -> dict[str, ControlComparison]:
    """Paired Beta posterior draws per arm at RATES, compared with the control `a` by the core's function."""
    rng = np.random.default_rng(seed)
    draws = {arm: rng.beta(1 + rate * trials, 1 + (1 - rate) * trials, 20_000) for arm, rate in RATES.items()}
    return {arm: compare_with_control(draws[arm], draws["a"]) for arm in ("b", "c")}


def arm_view(name: str, trials: int, lift: ControlComparison | None) -> ArmView:
    alpha, beta = 1 + RATES[name] * trials, 1 + (1 - RATES[name]) * trials
    mean = alpha / (alpha + beta)
    summary = ArmSummary(
        name, trials, trials, RATES[name] * trials, mean, mean - 0.01, mean + 0.01, 0.3, 0.3, lift
    )
    return ArmView(
        name, ArmSpec(name, BetaPrior()), summary, (alpha, beta, 0.0), name == "a", False, "", False
    )


def decisions(count: int, holdout_every: int = 0) -> tuple[list[dict[str, str]], dict[str, float]]:
    """`count` decisions a second apart, round robin over the arms; every one rewarded."""
    logged, rewards = [], {}
    for i in range(count):
        held = bool(holdout_every) and i % holdout_every == 0
        arm = "a" if held else "abc"[i % 3]
        reason = "HOLDOUT" if held else "SAMPLED"
        logged.append({"ts": str(NOW_MS - 3_600_000 + 1000 * i), "arm": arm, "reason": reason, "p": "0.33"})
        logged[-1] |= {"counted": "0" if held else "1", "d": f"n{i}"}
        rewards[f"n{i}"] = float(i % 4 == 0)
    return logged, rewards


def view(trials: int = 0, decided: int = 0, holdout_percent: float = 0.0) -> ReportData:
    lifts = comparisons(trials)
    arms = tuple(arm_view(name, trials, lifts.get(name)) for name in RATES)
    logged, rewards = decisions(decided, holdout_every=5 if holdout_percent else 0)
    exposure = decode_exposure(tuple(RATES), logged, rewards)
    rng = np.random.default_rng(2)
    held, bandit = exposure.reward[exposure.holdout()], exposure.reward[exposure.bandit()]
    holdout = holdout_difference(held, bandit, RewardKind.BERNOULLI, rng)
    return ReportData(
        experiment="shop", description="", version=1, updated_ms=NOW_MS, reward=RewardKind.BERNOULLI,
        control="a", generated_ms=NOW_MS, since_ms=NOW_MS - 86_400_000, controls=Controls(),
        global_controls=GlobalControls(), rollout=100.0, holdout_percent=holdout_percent, arms=arms,
        guardrails=(), srm=None, srm_counts=tuple((name, decided / 3, decided / 3) for name in RATES),
        holdout_srm=None, holdout_split=(0.0, 0.0), exposure=exposure, outcomes_in_window=len(rewards),
        holdout=holdout, ipw=(), ipw_dropped=0, audit=(), warnings=(),
    )  # fmt: skip


def keyed(page: str, key: str) -> str:
    match = re.search(rf'data-k="{re.escape(key)}">([^<]*)<', page)
    assert match, f"no data-k={key}"
    return match.group(1)


def section_ids(page: str) -> set[str]:
    return set(re.findall(r'<section id="([a-z]+)"', page))


def figure_ids(page: str) -> set[str]:
    return set(re.findall(r'<figure id="figure-([a-z]+)"', page))


def annotations(figure: Figure) -> list[Annotation]:
    return [child for ax in figure.axes for child in ax.get_children() if isinstance(child, Annotation)]


# --- lift against the control ------------------------------------------------------------------------------


def test_lift_rows_are_the_summaries_own_comparisons() -> None:
    data = view(trials=2000)
    rows = against_control(data.arms)
    assert [row.arm for row in rows] == ["b", "c"]  # the control is not compared with itself
    for row, arm in zip(rows, data.arms[1:], strict=True):
        assert row.comparison is arm.summary.lift  # no second estimator
        assert row.index == data.arms.index(arm)  # the arm's colour in every figure


def test_the_lift_table_prints_the_comparisons_numbers() -> None:
    data = view(trials=2000)
    page = lift_table(against_control(data.arms), "a")
    for arm in ("b", "c"):
        c = data.arms["abc".index(arm)].summary.lift
        assert c is not None
        assert c.lift is not None
        assert c.ci_low is not None
        assert c.ci_high is not None
        assert keyed(page, f"lift-{arm}") == f"{c.lift:+.2%}"
        assert keyed(page, f"lift-low-{arm}") == f"{c.ci_low:+.2%}"
        assert keyed(page, f"lift-high-{arm}") == f"{c.ci_high:+.2%}"
        assert keyed(page, f"p-beats-{arm}") == f"{c.p_beats_control:.3f}"
    assert keyed(page, "lift-c").startswith("+")  # c converts at twice the control's rate
    assert float(keyed(page, "p-beats-c")) > 0.99


def test_an_undefined_lift_shows_p_beats_control_only_and_why() -> None:
    rng = np.random.default_rng(3)
    control = rng.normal(0.0, 1.0, 20_000)  # a gaussian mean around 0: a ratio means nothing
    arm = control + rng.normal(0.5, 0.2, 20_000)
    comparison = compare_with_control(arm, control)
    assert comparison.lift is None
    data = view(trials=500)
    arms = (data.arms[0], replace(data.arms[1], summary=replace(data.arms[1].summary, lift=comparison)))
    rows = against_control(arms)
    page = lift_table(rows, "a")
    assert keyed(page, "lift-b") == keyed(page, "lift-low-b") == keyed(page, "lift-high-b") == "-"
    assert keyed(page, "p-beats-b") == f"{comparison.p_beats_control:.3f}"
    assert "lift undefined: the control&#x27;s mean may be zero or negative" in page

    figure = lift_figure(rows, "a")  # no arm has a lift: P(beats control) as bars, and why
    (ax,) = figure.axes
    assert [bar.get_width() for bar in ax.patches] == [pytest.approx(comparison.p_beats_control)]
    assert "mean may be zero or negative" in ax.get_title()


def test_the_lift_figure_draws_each_interval_and_writes_p_beats_beside_the_axes() -> None:
    data = view(trials=2000)
    rows = against_control(data.arms)
    figure = lift_figure(rows, "a")
    (ax,) = figure.axes
    assert ax.get_label() == "lift"
    points = sorted(float(line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o")
    assert points == pytest.approx(sorted(row.comparison.lift or 0.0 for row in rows))
    notes = annotations(figure)
    assert sorted(note.get_text() for note in notes) == sorted(
        f"P(beats control) = {row.comparison.p_beats_control:.3f}" for row in rows
    )
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    plot_area, page = ax.get_window_extent(renderer), figure.bbox
    for note in notes:  # beside the data, never over it, and not cut off
        box = note.get_window_extent(renderer)
        assert box.x0 >= plot_area.x1
        assert box.x1 <= page.x1


def test_no_lift_panel_before_the_control_has_trials() -> None:
    assert why_no_lift(view(trials=0).arms) == "no trials on the control arm a yet"
    assert why_no_lift(view(trials=50).arms) is None
    only_control = view(trials=50).arms[:1]
    assert why_no_lift(only_control) == "the experiment has no arm besides the control"


# --- panels with nothing to show ---------------------------------------------------------------------------


def test_a_new_experiment_shows_its_priors_and_names_what_it_leaves_out() -> None:
    data = view(trials=0, decided=0)
    charts = render_charts(data)
    page = render(data, charts)
    assert set(charts.images) == {"posteriors", "values"}
    assert figure_ids(page) == {"posteriors", "values"}
    assert set(charts.omitted) == {"lift", "traffic", "reward", "holdout", "guardrails"}
    assert section_ids(page) == {"pictures", "omitted", "arms"}
    assert "no data yet" not in page  # the old empty boxes
    assert page.count("<img") == 2
    assert "Bandit vs holdout (chart), Holdout comparison: no holdout configured (holdout: 0)" in page
    assert (
        "Lift against the control (chart), Lift against the control: no trials on the control arm a" in page
    )
    assert 'href="#ipw"' not in page  # a figure links to its numbers only when they are shown


def test_the_holdout_panel_appears_with_a_holdout_and_data() -> None:
    without = view(trials=300, decided=300)
    assert "holdout" in figure_omissions(without)
    assert section_omissions(without)["holdout"] == "no holdout configured (holdout: 0)"
    page = render(without, render_charts(without))
    assert "holdout" not in figure_ids(page) | section_ids(page)
    assert {"lift", "traffic", "reward", "values"} <= figure_ids(page)
    assert {"lift", "srm", "ipw"} <= section_ids(page)

    held = view(trials=300, decided=300, holdout_percent=20)
    assert held.holdout is not None
    charts = render_charts(held)
    assert "holdout" in charts.images
    assert "holdout" not in charts.omitted
    assert "holdout" not in section_omissions(held)
    page = render(held, charts)
    assert "holdout" in figure_ids(page)
    assert "holdout" in section_ids(page)
    assert 'data-k="holdout-diff"' in page


def test_a_holdout_without_enough_data_is_left_out_with_the_reason() -> None:
    data = replace(view(trials=300, decided=300), holdout_percent=20.0)  # configured, none logged
    assert data.holdout is None
    assert figure_omissions(data)["holdout"].startswith("fewer than 2 holdout or bandit decisions")


def test_a_reward_chart_with_only_thin_buckets_is_left_out() -> None:
    data = view(trials=30, decided=4)  # 4 decisions: no bucket reaches 5 of one arm
    charts = render_charts(data)
    assert "traffic" in charts.images
    assert charts.omitted["reward"] == "no time bucket has 5 decisions of one arm with an outcome yet"


def test_the_holdout_split_table_is_shown_once_decisions_are_counted() -> None:
    data = view(trials=300, decided=300, holdout_percent=20)
    assert "<h3>Holdout split</h3>" not in render(data, render_charts(data))  # Redis counted none
    counted = replace(data, holdout_split=(60.0, 240.0))
    assert "<h3>Holdout split</h3>" in render(counted, render_charts(counted))


def test_the_audit_section_is_shown_only_with_entries() -> None:
    data = view(trials=30, decided=30)
    assert section_omissions(data)["audit"] == "no audit entries"
    entry = AuditRow(NOW_MS, "shop", "alice", "apply", "experiment", "", "v1", "first", "1")
    assert "audit" not in section_omissions(replace(data, audit=(entry,)))
