"""The report page: one self-contained HTML document (inline CSS, images as data: URIs, no scripts, nothing
fetched), pictures first and the numbers behind them below (`sections`). Panels with nothing to show are
left out and named once, with the reason. Every value from Redis is escaped."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from html import escape

from mabrouter.reporting.data import ReportData, utc_text
from mabrouter.reporting.markup import badge
from mabrouter.reporting.panels import Charts
from mabrouter.reporting.sections import SECTIONS, ramp_text, render_sections

FIGURES = (  # key | id of the section with the numbers | title | caption
    "posteriors|arms|Posterior of each arm's mean reward|Shaded: 95% credible interval. Dashed: killed arms "
    "(no traffic); dotted: shadow arms.",
    "lift|lift|Lift against the control|Relative difference of each arm's posterior mean from the "
    "control's, (arm - control) / control, with its 95% credible interval; right: P(arm beats control). "
    "The numbers of mabrouter status.",
    "contextual|contextual|Which arm wins where|Each arm's predicted reward across one numeric feature, "
    "the other features held at their typical value. Shaded: 95% credible band; where an arm's band lies "
    "above the others', the model sends it that traffic.",
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
.note{color:#5a6372;font-size:13px;max-width:980px}.omitted{margin:10px 0 0 18px;padding:0}
"""


def render(data: ReportData, charts: Charts) -> str:
    sections, omitted_sections = render_sections(data)
    shown = set(SECTIONS) - set(omitted_sections)
    parts = [_header(data), _srm_banner(data), _pictures(charts.images, shown)]
    parts += [_omissions(charts.omitted, omitted_sections), sections]
    head = f"<title>{escape(data.experiment)}: mabrouter report</title><style>{CSS}</style>"
    body = "\n".join(part for part in parts if part)
    head = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{head}</head>'
    return f"{head}\n<body><main>\n{body}\n</main></body></html>\n"


def _header(data: ReportData) -> str:
    kills = (("KILLED (global switch)", data.global_controls), ("KILLED", data.controls))
    badges = [badge(f"{label} {switch.reason}".strip(), "red") for label, switch in kills if switch.killed]
    for arm in data.arms:
        if arm.guardrail_kill:
            badges.append(badge(f"{arm.name} killed by guardrail", "red"))
        elif arm.killed:
            badges.append(badge(f"{arm.name} killed", "amber"))
        if arm.divergent:
            badges.append(badge(f"{arm.name} outside its expected band", "amber"))
        if arm.spec.ramp:
            badges.append(badge(f"{arm.name} ramp: {ramp_text(arm.spec, data.controls, data.generated_ms)}"))
    breached = [r for r in data.guardrails if r.status == "breached"]
    badges += [badge(f"{r.arm} breaches {r.guardrail.metric}", "red") for r in breached]
    badges.append(badge(f"rollout {data.rollout:g}%", "amber" if data.rollout < 100 else "blue"))
    badges.append(badge(f"holdout {data.holdout_percent:g}%" if data.holdout_percent else "no holdout"))
    if data.warnings:
        badges.append(badge(f"{len(data.warnings)} data warning(s): see below", "amber"))
    if not data.killed and not any(b.startswith('<span class="badge red') for b in badges):
        badges.append(badge("live", "green"))
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


def _pictures(images: Mapping[str, str], sections: set[str]) -> str:
    """The drawn figures; each links to the section with its numbers when that section is shown."""
    figures = [
        f'<figure id="figure-{key}"><figcaption><b>{escape(title)}.</b> {escape(caption)}'
        + (f' <a href="#{section}">numbers</a>' if section in sections else "")
        + f'</figcaption><img alt="{escape(title)}" src="data:image/png;base64,{images[key]}"></figure>'
        for key, section, title, caption in (figure.split("|", 3) for figure in FIGURES)
        if key in images
    ]
    return f'<section id="pictures"><div class="grid">{"".join(figures)}</div></section>'


def _omissions(figures: Mapping[str, str], sections: Mapping[str, str]) -> str:
    """One note naming every left-out panel, grouped by why, so nothing disappears unexplained."""
    titles = {figure.split("|", 3)[0]: figure.split("|", 3)[2] for figure in FIGURES}
    by_reason: defaultdict[str, list[str]] = defaultdict(list)
    for key, why in figures.items():
        by_reason[why].append(f"{titles[key]} (chart)")
    for key, why in sections.items():
        by_reason[why].append(SECTIONS[key][0])
    if not by_reason:
        return ""
    items = "".join(f"<li>{escape(', '.join(names))}: {escape(why)}</li>" for why, names in by_reason.items())
    return (
        '<section id="omitted"><p class="note">Not shown, with nothing to show yet:</p>'
        f'<ul class="note omitted">{items}</ul></section>'
    )
