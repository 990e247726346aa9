"""deploy/grafana/dashboards/mabrouter.json: the dashboard answers the questions docs/deployment.md promises,
each panel is well formed for Grafana (an id, a place on the grid that overlaps no other, the Prometheus
of the `datasource` variable, queries with a refId), and every variable a query uses is defined. That its
queries parse and its metrics exist: tests/integration/test_prometheus_rules.py and
test_metrics_contract.py. Grafana itself does not run here."""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

import pytest

from support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mabrouter.json"
# question -> what a query must contain to answer it
QUESTIONS = {
    "traffic share per arm over time": r"sum by \(arm\) \(rate\(mabrouter_decisions_total\{.*\}\[.*\]\)\) / ",
    "posterior means with intervals": (
        r"mabrouter_arm_posterior_mean\{.*\} \+ 1\.96 \* mabrouter_arm_posterior_sd"
    ),
    "decisions per second": r"rate\(mabrouter_decisions_total",
    "outcomes per second": r"rate\(mabrouter_outcomes_total",
    "Route latency percentiles": (
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(mabrouter_route_latency_seconds_bucket"
    ),
    "stale snapshot": r"mabrouter_snapshot_age_seconds",
    "Redis errors": r"mabrouter_redis_errors_total",
    "guardrail actions": r"mabrouter_guardian_actions_total",
    "kills": r"mabrouter_killed",
    "sample-ratio mismatch": r"mabrouter_sample_ratio_p_value",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


@pytest.mark.parametrize("question", sorted(QUESTIONS))
def test_the_dashboard_answers(dashboard: dict[str, Any], question: str) -> None:
    assert any(re.search(QUESTIONS[question], query) for query in queries(dashboard)), question


def test_panels_have_ids_and_places_that_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((panel["title"], grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"]))
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in combinations(boxes, 2):
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"


def test_every_panel_queries_the_prometheus_of_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_every_variable_a_query_uses_is_defined(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    texts = [
        *queries(dashboard),
        *(v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"),
    ]
    texts += [panel["title"] for panel in dashboard["panels"]]
    used = {name for text in texts for name in re.findall(r"\$\{?(\w+)", text) if not name.startswith("__")}
    assert used <= defined, used - defined
    assert {"experiment", "job"} <= used
