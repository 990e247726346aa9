"""The report's numbered sections, below the pictures: arms, lift against the control, guardrails and
ramps, sample ratio, holdout comparison, inverse-propensity-weighted values, audit trail. A section with
nothing to show is left out (`panels.section_omissions` says why; the page names it once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from mabrouter.core.evidence import SampleRatioCheck
from mabrouter.core.model import ArmSpec, Controls, RewardKind
from mabrouter.core.summary import SUMMARY_DRAWS
from mabrouter.reporting.data import ReportData, utc_text
from mabrouter.reporting.estimators import ipw_rows
from mabrouter.reporting.lift import UNDEFINED_WHY, LiftRow, against_control
from mabrouter.reporting.markup import Cell, num, table
from mabrouter.reporting.panels import section_omissions


def render_sections(data: ReportData) -> tuple[str, dict[str, str]]:
    """The sections that have something to show, in page order, and the ids of those left out -> why."""
    omitted = section_omissions(data)
    # A section that does not apply to this kind of experiment renders nothing, and is not named.
    shown = [html for key, (_, render) in SECTIONS.items() if key not in omitted if (html := render(data))]
    return "\n".join(shown), omitted


def ramp_text(arm: ArmSpec, controls: Controls, now_ms: int) -> str:
    if not arm.ramp:
        return ""
    step, since = controls.ramp_steps.get(arm.name, 0), controls.ramp_since_ms.get(arm.name)
    steps = " -> ".join(f"{s.share:.0%}" for s in arm.ramp)
    if since is None:
        return f"not started (steps {steps})"
    if step >= len(arm.ramp):
        return f"complete: uncapped since {utc_text(since)} (steps {steps})"
    held = max(now_ms - since, 0) / 1000
    return (
        f"step {step + 1} of {len(arm.ramp)}: capped at {arm.ramp[step].share:.0%}, held {held:,.0f} s "
        f"of {arm.ramp[step].min_seconds:,.0f} s (steps {steps})"
    )


def _arms(data: ReportData) -> str:
    total = "successes" if data.reward is RewardKind.BERNOULLI else "reward sum"
    headers = ["arm", "state", "trials", "outcomes", total, "mean", "95% CI", "P(best)", "share", "expected"]
    rows: list[list[Cell]] = []
    for arm in data.arms:
        s, band = arm.summary, arm.spec.expected
        state = "killed by guardrail" if arm.guardrail_kill else ("killed" if arm.killed else "live")
        state += " (control)" if arm.control else (" (shadow)" if arm.spec.shadow else "")
        expected = f"{band.mean:g} +/- {band.tolerance:g}" if band else ""
        rows.append([arm.name, state, f"{s.trials:,}", f"{s.reward_count:,}", f"{s.reward_sum:,.1f}"])
        rows[-1] += [(num(s.mean), f"mean-{arm.name}"), f"[{s.ci_low:.4f}, {s.ci_high:.4f}]"]
        rows[-1] += [f"{s.p_best:.3f}", f"{s.share:.1%}", expected + (" DIVERGES" if arm.divergent else "")]
    shown = table(headers, "llrrrrrrrl", rows, [arm.killed or arm.divergent for arm in data.arms])
    return f'<section id="arms"><h2>Arms</h2>{shown}</section>'


def _contextual(data: ReportData) -> str:
    """Each arm's coefficients with 95% intervals, one column per arm (nothing for other experiments)."""
    view = data.contextual
    if view is None:
        return ""
    headers = ["column", *(arm.arm for arm in view.arms)]
    rows: list[list[Cell]] = [["decisions", *(f"{arm.decisions:,.0f}" for arm in view.arms)]]
    rows.append(["noise sd", *(num(arm.noise_sd) for arm in view.arms)])
    for c, column in enumerate(view.columns):
        rows.append(
            [column, *(f"{arm.mean[c]:+.4f} [{arm.low[c]:+.4f}, {arm.high[c]:+.4f}]" for arm in view.arms)]
        )
    note = (
        '<p class="note">Posterior mean and 95% credible interval of each coefficient of the linear model '
        "of the reward (numeric features after their transform; one column per listed value). The traffic "
        "share and P(best) of the arms table are at the typical context only: the allocation depends on "
        "each request's attributes.</p>"
    )
    shown = table(headers, "l" + "r" * len(view.arms), rows)
    return f'<section id="contextual"><h2>Contextual model</h2>{note}{shown}</section>'


def lift_table(rows: Sequence[LiftRow], control: str) -> str:
    """The lift section: each comparison `summarize` made, as `mabrouter status` shows it."""
    cells: list[list[Cell]] = []
    for row in rows:
        c, arm = row.comparison, row.arm
        note = "" if row.defined else f"lift undefined: {UNDEFINED_WHY}"
        note = note or ("no trials on this arm yet: its prior against the control" if not row.trials else "")
        cells.append([arm, (num(c.lift, "+.2%"), f"lift-{arm}"), (num(c.ci_low, "+.2%"), f"lift-low-{arm}")])
        cells[-1] += [(num(c.ci_high, "+.2%"), f"lift-high-{arm}")]
        cells[-1] += [(f"{c.p_beats_control:.3f}", f"p-beats-{arm}"), note]
    headers = ["arm", "lift", "95% CI low", "95% CI high", "P(beats control)", ""]
    return (
        f'<section id="lift"><h2>Lift against the control {escape(control)}</h2>'
        + table(headers, "lrrrrl", cells)
        + '<p class="note">Lift: the relative difference of posterior means, (arm - control) / control; its '
        "95% credible interval and P(arm's mean &gt; control's) from paired posterior draws "
        f"({SUMMARY_DRAWS:,}, with the discounting of a half-life when the experiment has one). The same "
        "estimator as <code>mabrouter status</code>, whose numbers differ only by Monte Carlo noise (each "
        "run draws anew).</p></section>"
    )


def _guardrails(data: ReportData) -> str:
    rows: list[list[Cell]] = []
    for r in data.guardrails:
        g = r.guardrail
        limit = f"+{g.max_increase:g} over control" if g.max_increase is not None else f"> {g.max_value:g}"
        base = f"{num(r.control.mean)} (n={r.control.n:,})" if r.control is not None else ""
        observed = f"{num(r.observed.mean)} (n={r.observed.n:,})"
        rows.append([r.arm, g.metric, f"{g.kind} {limit}", observed, base])
        rows[-1] += [(num(r.probability, ".3f"), f"guard-{r.arm}-{g.metric}"), f">= {g.probability:g}"]
        rows[-1] += [f"{g.min_samples:,}", r.status]
    headers = ["arm", "metric", "limit", "arm (n)", "control (n)", "P(breach)", "kills at", "min n", "status"]
    bad = [r.status in ("breached", "killed by guardrail") for r in data.guardrails]
    shown = table(headers, "lllrrrrrl", rows, bad) if rows else '<p class="note">No guardrails.</p>'
    killed = [a for a in data.arms if a.guardrail_kill]
    kills = "".join(f"<li>{escape(a.name)}: {escape(a.guardrail_kill)}</li>" for a in killed)
    ramps = [[a.name, ramp_text(a.spec, data.controls, data.generated_ms)] for a in data.arms if a.spec.ramp]
    return (
        f'<section id="guardrails"><h2>Guardrails and ramps</h2>{shown}'
        + (f"<p>Killed by a guardrail (evidence at the time):</p><ul>{kills}</ul>" if kills else "")
        + (table(["arm", "ramp position"], "ll", ramps) if ramps else "")
        + "</section>"
    )


def _verdict(check: SampleRatioCheck | None, key: str) -> str:
    if check is None:
        return '<p class="note">Not enough data for a chi-square test yet.</p>'
    verdict = '<b style="color:#c62828">SAMPLE RATIO MISMATCH</b>' if check.mismatch else "ok"
    return (
        f"<p>chi2 = {check.statistic:.3f} (df {check.degrees_of_freedom}), "
        f'p = <span data-k="{key}">{check.p_value:.4g}</span>: {verdict}</p>'
    )


def _srm(data: ReportData) -> str:
    rows = [
        [arm, f"{o:,.0f}", f"{e:,.1f}", f"{(o - e) / e:+.1%}" if e > 0 else "-"]
        for arm, o, e in data.srm_counts
    ]
    parts = [
        '<section id="srm"><h2>Sample ratio</h2><p class="note">Decisions sampling served to each arm against'
        " what the allocations in force expected, since the experiment started (counters in Redis).</p>",
        table(["arm", "sampled", "expected", "difference"], "lrrr", rows),
        _verdict(data.srm, "srm-p"),
    ]
    if data.holdout_percent > 0 and sum(data.holdout_split) > 0:  # a split of nothing shows nothing
        held, bandit = data.holdout_split
        fraction, total = data.holdout_percent / 100, held + bandit
        split = [
            ["holdout", f"{held:,.0f}", f"{total * fraction:,.1f}"],
            ["bandit", f"{bandit:,.0f}", f"{total * (1 - fraction):,.1f}"],
        ]
        parts += ["<h3>Holdout split</h3>", table(["group", "observed", "expected"], "lrr", split)]
        parts.append(_verdict(data.holdout_srm, "holdout-srm-p"))
    return "".join(parts) + "</section>"


def _holdout(data: ReportData) -> str:
    missing = "count as reward 0 (conversion style: callers may report only successes)"
    note = (
        f'<p class="note">From the exposure log since {utc_text(data.since_ms)}, outcomes joined by decision '
        "nonce. Holdout: decisions with reason HOLDOUT (control served to a randomised fraction of units). "
        "Bandit: SAMPLED and STICKY decisions. Other imposed answers are in neither group. Decisions without "
        f"a reported outcome {missing if data.reward is RewardKind.BERNOULLI else 'are left out'}.</p>"
    )
    found, title = data.holdout, '<section id="holdout"><h2>Holdout comparison</h2>'
    if found is None:  # section_omissions leaves the section out, with the reason
        return ""
    lift = found.difference / found.holdout_mean if found.holdout_mean else math.nan
    rows: list[list[Cell]] = [
        ["holdout", (f"{found.holdout_n:,}", "holdout-n"), (num(found.holdout_mean), "holdout-mean")],
        ["bandit", (f"{found.bandit_n:,}", "bandit-n"), (num(found.bandit_mean), "bandit-mean")],
    ]
    summary = (
        f'<p>Difference (bandit - holdout): <b data-k="holdout-diff">{found.difference:+.4f}</b>, 95% '
        f'interval [<span data-k="holdout-ci-low">{found.ci_low:+.4f}</span>, <span data-k="holdout-ci-high">'
        f"{found.ci_high:+.4f}</span>], relative lift {num(lift, '+.1%')}, P(bandit better) = "
        f"{found.p_bandit_better:.3f}. Method: {escape(found.method)}.</p>"
    )
    shown = table(["group", "decisions", "mean outcome per decision"], "lrr", rows)
    return f"{title}{shown}{summary}{note}</section>"


def _ipw(data: ReportData) -> str:
    rows: list[list[Cell]] = []
    for e in data.ipw:
        values = {
            "naive": e.naive_mean,
            "ips": e.ips,
            "ips-se": e.ips_se,
            "snips": e.snips,
            "snips-se": e.snips_se,
        }
        keyed = [(num(value), f"ipw-{e.arm}-{name}") for name, value in values.items()]
        rows.append([e.arm, f"{e.served:,}", *keyed, num(e.max_weight, ".1f")])
    sampled = int(ipw_rows(data.exposure.reason).sum())
    missing = "count as 0" if data.reward is RewardKind.BERNOULLI else "are left out"
    return (
        '<section id="ipw"><h2>Inverse-propensity-weighted arm values</h2>'
        + table(["arm", "served", "naive mean", "IPS", "SE", "SNIPS", "SE", "max weight"], "lrrrrrrr", rows)
        + f'<p class="note">Over the {sampled:,} sampled decisions (SAMPLED) in the window; '
        f"{data.ipw_dropped:,} dropped (no propensity or no reward). IPS = mean over decisions of "
        "1[arm = a] &middot; reward / propensity; SNIPS divides the same sum by the sum of 1[arm = a] / "
        f"propensity (delta-method SE). Decisions without an outcome {missing}. The propensity is the share "
        "the policy drew the arm with. A sticky unit's repeats (STICKY) are left out: they log the arm's "
        "share at that time, not the probability of the unit's first assignment, which is its SAMPLED "
        "row. Large max weights mean noisy estimates. IPS assumes every arm could be "
        "chosen in every decision: over a window that spans an arm's kill (propensity 0 after it), IPS "
        "understates that arm and SNIPS, which normalises by its own weights, does not.</p></section>"
    )


def _audit(data: ReportData) -> str:
    def short(text: str, limit: int = 60) -> str:
        return (text if len(text) <= limit else text[: limit - 3] + "...") or "(unset)"

    rows = [
        [utc_text(a.ts_ms), a.actor, a.action, a.target, f"{short(a.before)} -> {short(a.after)}", a.reason]
        for a in data.audit
    ]
    shown = table(["time (UTC)", "actor", "action", "target", "before -> after", "reason"], "llllll", rows)
    return f'<section id="audit"><h2>Audit trail (newest first, {len(rows)} shown)</h2>{shown}</section>'


# id -> (title, renderer), in page order; titles name a left-out section in the page's note
SECTIONS: dict[str, tuple[str, Callable[[ReportData], str]]] = {
    "arms": ("Arms", _arms),
    "contextual": ("Contextual model", _contextual),
    "lift": ("Lift against the control", lambda data: lift_table(against_control(data.arms), data.control)),
    "guardrails": ("Guardrails and ramps", _guardrails),
    "srm": ("Sample ratio", _srm),
    "holdout": ("Holdout comparison", _holdout),
    "ipw": ("Inverse-propensity-weighted arm values", _ipw),
    "audit": ("Audit trail", _audit),
}
