"""The report page: one self-contained HTML document (inline CSS, images as data: URIs, no scripts, nothing
fetched), pictures first and the numbers behind them below. Every value from Redis is escaped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

from mabrouter.core.evidence import SampleRatioCheck
from mabrouter.core.model import ArmSpec, Controls, RewardKind
from mabrouter.reporting.data import ReportData, utc_text

FIGURES = (  # key | id of the section with the numbers | title | caption
    "posteriors|arms|Posterior of each arm's mean reward|Shaded: 95% credible interval. Dashed: killed arms "
    "(no traffic); dotted: shadow arms.",
    "traffic|srm|Traffic share over time|Share of each time bucket's decisions by arm; grey: control served "
    "without sampling (holdout, rollout, kills, targeting). Below: decisions per bucket.",
    "reward|ipw|Reward over time|Mean outcome per decision in each bucket: the policy's decisions by arm, "
    "and the holdout (dashed). The newest buckets may still be waiting for outcomes.",
    "holdout|holdout|Bandit vs holdout|Posterior of the bandit's mean outcome per decision minus the "
    "randomised holdout's. Shaded: 95% interval; red: no difference.",
    "values|ipw|Arm value: posterior and off-policy estimates|Bars: posterior 95% credible interval (dot: "
    "mean). Squares: IPS, triangles: SNIPS, +/- 1.96 SE. Grey: the expected band in the experiment file.",
    "guardrails|guardrails|Guardrails: probability of breach|Posterior probability of breach per arm and "
    "metric; the black tick is where the router kills the arm.",
)
Cell = str | tuple[str, str]  # text, or (text, data-k key that tests and scripts can find)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;margin:0;
background:#f5f6f8}
main{max-width:1280px;margin:0 auto;padding:18px 24px 60px}.meta{color:#5a6372;margin:2px 0 10px}
h1{margin:0 0 4px;font-size:26px}h2{margin:34px 0 10px;font-size:19px;border-bottom:2px solid #dde1e7}
.badge{display:inline-block;border-radius:12px;padding:2px 11px;margin:2px 4px 2px 0;font-weight:600;
font-size:12.5px;background:#e3e7ee}.red{background:#c62828;color:#fff}.amber{background:#ffb300}
.blue{background:#1e63b5;color:#fff}.green{background:#2e7d32;color:#fff}.desc{margin:2px 0}
.warn{background:#fff4d6;border-left:5px solid #ffb300;padding:6px 12px;margin:4px 0}
.banner{background:#c62828;color:#fff;font-size:20px;font-weight:700;padding:16px 20px;margin:14px 0;
border-radius:6px;border:4px solid #7f0000}.banner small{display:block;font-size:14px;font-weight:400}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px}
figure img{width:100%;height:auto}figcaption{font-size:13px;color:#3b4452;margin-bottom:6px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:13px}tr.bad td{background:#fde3e3}
th,td{padding:4px 10px;border-bottom:1px solid #e5e8ed;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.note{color:#5a6372;font-size:13px;max-width:980px}
"""


def render(data: ReportData, charts: Mapping[str, str]) -> str:
    sections = [_header(data), _srm_banner(data), _pictures(charts)]
    sections += [section(data) for section in (_arms, _guardrails, _srm, _holdout, _ipw, _audit)]
    head = f"<title>{escape(data.experiment)}: mabrouter report</title><style>{CSS}</style>"
    body = "\n".join(section for section in sections if section)
    head = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{head}</head>'
    return f"{head}\n<body><main>\n{body}\n</main></body></html>\n"


def _num(value: float, spec: str = ".4f") -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def _td(cell: Cell, numeric: bool) -> str:
    text, key = cell if isinstance(cell, tuple) else (cell, "")
    attributes = (' class="n"' if numeric else "") + (f' data-k="{escape(key)}"' if key else "")
    return f"<td{attributes}>{escape(text)}</td>"


def _table(
    headers: Sequence[str], align: str, rows: Sequence[Sequence[Cell]], bad: Sequence[bool] = ()
) -> str:
    """align: one letter per column, l or r (numbers); bad: the rows to highlight."""
    body = "".join(
        ('<tr class="bad">' if i < len(bad) and bad[i] else "<tr>")
        + "".join(_td(cell, align[column] == "r") for column, cell in enumerate(row))
        + "</tr>"
        for i, row in enumerate(rows)
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(text: str, colour: str = "") -> str:
    return f'<span class="badge {colour}">{escape(text)}</span>'


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


def _header(data: ReportData) -> str:
    kills = (("KILLED (global switch)", data.global_controls), ("KILLED", data.controls))
    badges = [_badge(f"{label} {switch.reason}".strip(), "red") for label, switch in kills if switch.killed]
    for arm in data.arms:
        if arm.guardrail_kill:
            badges.append(_badge(f"{arm.name} killed by guardrail", "red"))
        elif arm.killed:
            badges.append(_badge(f"{arm.name} killed", "amber"))
        if arm.divergent:
            badges.append(_badge(f"{arm.name} outside its expected band", "amber"))
        if arm.spec.ramp:
            badges.append(_badge(f"{arm.name} ramp: {ramp_text(arm.spec, data.controls, data.generated_ms)}"))
    breached = [r for r in data.guardrails if r.status == "breached"]
    badges += [_badge(f"{r.arm} breaches {r.guardrail.metric}", "red") for r in breached]
    badges.append(_badge(f"rollout {data.rollout:g}%", "amber" if data.rollout < 100 else "blue"))
    badges.append(_badge(f"holdout {data.holdout_percent:g}%" if data.holdout_percent else "no holdout"))
    if data.warnings:
        badges.append(_badge(f"{len(data.warnings)} data warning(s): see below", "amber"))
    if not data.killed and not any(b.startswith('<span class="badge red') for b in badges):
        badges.append(_badge("live", "green"))
    e = data.exposure
    meta = (
        f"version {data.version} · {data.reward.value} reward · control <b>{escape(data.control)}</b> · "
        f"config updated {utc_text(data.updated_ms)} · generated {utc_text(data.generated_ms)}<br>"
        f"exposure log since {utc_text(data.since_ms)}: {e.size:,} decisions, "
        f"{data.outcomes_in_window:,} outcomes"
    )
    warnings = "".join(f'<div class="warn">&#9888; {escape(w)}</div>' for w in data.warnings)
    description = f'<p class="desc">{escape(data.description)}</p>' if data.description else ""
    return (
        f'<header><h1>{escape(data.experiment)}</h1>{description}<p class="meta">{meta}</p>'
        f"<div>{''.join(badges)}</div>{warnings}</header>"
    )


def _srm_banner(data: ReportData) -> str:
    checks = (("traffic split", data.srm), ("holdout split", data.holdout_srm))
    return "".join(
        f'<div class="banner">SAMPLE RATIO MISMATCH in the {label}: chi2 = {c.statistic:.2f}, p = '
        f"{c.p_value:.4g} &lt; 0.001<small>Traffic did not split as allocated. Find the cause (dropped logs, "
        "assignment bugs, bots, a replica on an old config) before trusting any comparison below.</small>"
        "</div>"
        for label, c in checks
        if c and c.mismatch
    )


def _pictures(charts: Mapping[str, str]) -> str:
    figures = [
        f'<figure><figcaption><b>{escape(title)}.</b> {escape(caption)} <a href="#{section}">numbers</a>'
        f'</figcaption><img alt="{escape(title)}" src="data:image/png;base64,{charts[key]}"></figure>'
        for key, section, title, caption in (figure.split("|", 3) for figure in FIGURES)
        if key in charts
    ]
    return f'<section id="pictures"><div class="grid">{"".join(figures)}</div></section>'


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
        rows[-1] += [(_num(s.mean), f"mean-{arm.name}"), f"[{s.ci_low:.4f}, {s.ci_high:.4f}]"]
        rows[-1] += [f"{s.p_best:.3f}", f"{s.share:.1%}", expected + (" DIVERGES" if arm.divergent else "")]
    table = _table(headers, "llrrrrrrrl", rows, [arm.killed or arm.divergent for arm in data.arms])
    return f'<section id="arms"><h2>Arms</h2>{table}</section>'


def _guardrails(data: ReportData) -> str:
    rows: list[list[Cell]] = []
    for r in data.guardrails:
        g = r.guardrail
        limit = f"+{g.max_increase:g} over control" if g.max_increase is not None else f"> {g.max_value:g}"
        base = f"{_num(r.control.mean)} (n={r.control.n:,})" if r.control is not None else ""
        observed = f"{_num(r.observed.mean)} (n={r.observed.n:,})"
        rows.append([r.arm, g.metric, f"{g.kind} {limit}", observed, base])
        rows[-1] += [(_num(r.probability, ".3f"), f"guard-{r.arm}-{g.metric}"), f">= {g.probability:g}"]
        rows[-1] += [f"{g.min_samples:,}", r.status]
    headers = ["arm", "metric", "limit", "arm (n)", "control (n)", "P(breach)", "kills at", "min n", "status"]
    bad = [r.status in ("breached", "killed by guardrail") for r in data.guardrails]
    table = _table(headers, "lllrrrrrl", rows, bad) if rows else '<p class="note">No guardrails.</p>'
    killed = [a for a in data.arms if a.guardrail_kill]
    kills = "".join(f"<li>{escape(a.name)}: {escape(a.guardrail_kill)}</li>" for a in killed)
    ramps = [[a.name, ramp_text(a.spec, data.controls, data.generated_ms)] for a in data.arms if a.spec.ramp]
    return (
        f'<section id="guardrails"><h2>Guardrails and ramps</h2>{table}'
        + (f"<p>Killed by a guardrail (evidence at the time):</p><ul>{kills}</ul>" if kills else "")
        + (_table(["arm", "ramp position"], "ll", ramps) if ramps else "")
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
        _table(["arm", "sampled", "expected", "difference"], "lrrr", rows),
        _verdict(data.srm, "srm-p"),
    ]
    if data.holdout_percent > 0:
        held, bandit = data.holdout_split
        fraction, total = data.holdout_percent / 100, held + bandit
        split = [
            ["holdout", f"{held:,.0f}", f"{total * fraction:,.1f}"],
            ["bandit", f"{bandit:,.0f}", f"{total * (1 - fraction):,.1f}"],
        ]
        parts += ["<h3>Holdout split</h3>", _table(["group", "observed", "expected"], "lrr", split)]
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
    if found is None:
        configured = "" if data.holdout_percent else " (no holdout configured)"
        return f"{title}<p>no data yet{configured}</p>{note}</section>"
    lift = found.difference / found.holdout_mean if found.holdout_mean else math.nan
    rows: list[list[Cell]] = [
        ["holdout", (f"{found.holdout_n:,}", "holdout-n"), (_num(found.holdout_mean), "holdout-mean")],
        ["bandit", (f"{found.bandit_n:,}", "bandit-n"), (_num(found.bandit_mean), "bandit-mean")],
    ]
    summary = (
        f'<p>Difference (bandit - holdout): <b data-k="holdout-diff">{found.difference:+.4f}</b>, 95% '
        f'interval [<span data-k="holdout-ci-low">{found.ci_low:+.4f}</span>, <span data-k="holdout-ci-high">'
        f"{found.ci_high:+.4f}</span>], relative lift {_num(lift, '+.1%')}, P(bandit better) = "
        f"{found.p_bandit_better:.3f}. Method: {escape(found.method)}.</p>"
    )
    table = _table(["group", "decisions", "mean outcome per decision"], "lrr", rows)
    return f"{title}{table}{summary}{note}</section>"


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
        keyed = [(_num(value), f"ipw-{e.arm}-{name}") for name, value in values.items()]
        rows.append([e.arm, f"{e.served:,}", *keyed, _num(e.max_weight, ".1f")])
    counted = int(data.exposure.counted.sum())
    missing = "count as 0" if data.reward is RewardKind.BERNOULLI else "are left out"
    return (
        '<section id="ipw"><h2>Inverse-propensity-weighted arm values</h2>'
        + _table(["arm", "served", "naive mean", "IPS", "SE", "SNIPS", "SE", "max weight"], "lrrrrrrr", rows)
        + f'<p class="note">Over the {counted:,} counted decisions (SAMPLED, STICKY) in the window; '
        f"{data.ipw_dropped:,} dropped (no propensity or no reward). IPS = mean over decisions of "
        "1[arm = a] &middot; reward / propensity; SNIPS divides the same sum by the sum of 1[arm = a] / "
        f"propensity (delta-method SE). Decisions without an outcome {missing}. The propensity is the share "
        "the policy gave the arm when deciding (a STICKY decision's is the share at that time, not the "
        "unit's first assignment). Large max weights mean noisy estimates. IPS assumes every arm could be "
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
    table = _table(["time (UTC)", "actor", "action", "target", "before -> after", "reason"], "llllll", rows)
    return f'<section id="audit"><h2>Audit trail (newest first, {len(rows)} shown)</h2>{table}</section>'
