"""The Prometheus side of deploy/, checked by promtool (Debian's, installed by scripts/ensure_system_deps.sh
with MABROUTER_NEED_PROMTOOL=1): the alert rules parse (expressions and annotation templates), each alert
fires on the series it is meant for and stays quiet otherwise (`promtool test rules`), the Prometheus
configurations load, and every query of the Grafana dashboard is valid PromQL.

That the metrics these use exist is checked against a real router in test_metrics_contract.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mabrouter.json"
# What Grafana puts in place of the dashboard's variables before it sends a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$experiment": "ranker",
    "$job": ".+",
    "${datasource}": "prometheus",
}


def promtool(*args: str, cwd: Path = ROOT) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed: as root, run "
            "MABROUTER_NEED_PROMTOOL=1 scripts/ensure_system_deps.sh "
            "(it takes the binary out of Debian's prometheus package)"
        )
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd)
    assert done.returncode == 0, (
        f"promtool {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    )
    return done.stdout + done.stderr


def test_the_alert_rules_parse() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", str(ALERTS))


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in {"job": "mabrouter", **labels}.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def fires(alert: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"job": "mabrouter", **labels}} for labels in expected],
    }


# One scenario per alert, on a 1-minute grid: the series, then when the alert must be quiet ([]) and
# when it must fire, with its labels (severity included).
SCENARIOS: list[dict[str, Any]] = [
    {
        "input_series": [
            series("mabrouter_snapshot_age_seconds", "1 1 1 45 60 75 90 105 120", instance="a"),
            series("mabrouter_snapshot_age_seconds", "1x8", instance="b"),
        ],
        "alert_rule_test": [
            fires("MabrouterSnapshotStale", "3m"),  # stale, not yet for a minute
            fires("MabrouterSnapshotStale", "8m", {"instance": "a", "severity": "warning"}),
        ],
    },
    {
        "input_series": [
            series("mabrouter_snapshot_loaded", "0x10", instance="a"),
            series("mabrouter_snapshot_loaded", "0 0 1x8", instance="b"),
        ],
        "alert_rule_test": [
            fires("MabrouterSnapshotNotLoaded", "3m"),
            fires("MabrouterSnapshotNotLoaded", "8m", {"instance": "a", "severity": "critical"}),
        ],
    },
    {
        "input_series": [
            series("mabrouter_experiment_degraded", "1x10", instance="a", experiment="broken"),
            series("mabrouter_experiment_degraded", "1 1 0x8", instance="a", experiment="repaired"),
        ],
        "alert_rule_test": [
            fires("MabrouterExperimentDegraded", "8m", {"experiment": "broken", "severity": "warning"}),
        ],
    },
    {
        "input_series": [
            # Both replicas see the mismatch: it fires. One replica with an older snapshot cannot.
            series("mabrouter_sample_ratio_p_value", "0.0001x20", instance="a", experiment="x", split="arms"),
            series("mabrouter_sample_ratio_p_value", "0.0002x20", instance="b", experiment="x", split="arms"),
            series(
                "mabrouter_sample_ratio_p_value", "0.0001x20", instance="a", experiment="y", split="holdout"
            ),
            series("mabrouter_sample_ratio_p_value", "0.4x20", instance="b", experiment="y", split="holdout"),
            series("mabrouter_sample_ratio_p_value", "0.3x20", instance="a", experiment="z", split="arms"),
        ],
        "alert_rule_test": [
            fires("MabrouterSampleRatioMismatch", "5m"),
            fires(
                "MabrouterSampleRatioMismatch",
                "15m",
                {"experiment": "x", "split": "arms", "severity": "warning"},
            ),
        ],
    },
    {
        "input_series": [
            series(
                "mabrouter_guardian_actions_total",
                "0 0 0 1x30",
                instance="a",
                experiment="x",
                arm="v3",
                action="auto_kill",
            ),
            series(
                "mabrouter_guardian_actions_total",
                "0 1 2 3 4 5 6",
                instance="a",
                experiment="x",
                arm="v2",
                action="ramp_advance",
            ),
        ],
        "alert_rule_test": [
            fires("MabrouterGuardrailKill", "2m"),
            fires("MabrouterGuardrailKill", "5m", {"experiment": "x", "arm": "v3", "severity": "warning"}),
            fires("MabrouterGuardrailKill", "30m"),  # the kill is older than the window
        ],
    },
    {
        "input_series": [
            series("mabrouter_redis_errors_total", "0+5x20", instance="a", operation="refresh"),
            series("mabrouter_redis_errors_total", "0 0 3 3x20", instance="b", operation="flush"),
        ],
        "alert_rule_test": [
            fires("MabrouterRedisErrors", "3m"),
            fires(
                "MabrouterRedisErrors",
                "15m",
                {"instance": "a", "operation": "refresh", "severity": "warning"},
            ),
        ],
    },
    {
        "input_series": [
            series("mabrouter_buffer_dropped_total", "0 0 0 10 10x20", instance="a", buffer="exposure_log"),
            series("mabrouter_buffer_dropped_total", "0x20", instance="a", buffer="outcome_spool"),
        ],
        "alert_rule_test": [
            fires("MabrouterBufferDropped", "2m"),
            fires(
                "MabrouterBufferDropped",
                "4m",
                {"instance": "a", "buffer": "exposure_log", "severity": "warning"},
            ),
            fires("MabrouterBufferDropped", "20m"),
        ],
    },
]


def test_each_alert_fires_on_its_series_and_stays_quiet_otherwise(tmp_path: Path) -> None:
    # promtool compares annotations too; they are prose (their templates parse: test above), so the
    # rules are tested without them.
    rules = yaml.safe_load(ALERTS.read_text())
    tested = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
            tested.add(rule["alert"])
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    scenarios = [{"interval": "1m", **scenario} for scenario in SCENARIOS]
    covered = {test["alertname"] for scenario in SCENARIOS for test in scenario["alert_rule_test"]}
    assert covered == tested, "every alert needs a scenario"
    document = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": scenarios}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(document))
    assert "SUCCESS" in promtool("test", "rules", "tests.yml", cwd=tmp_path)


def test_the_compose_prometheus_configuration_loads() -> None:
    out = promtool("check", "config", str(PROMETHEUS / "prometheus-compose.yml"))
    assert "SUCCESS: 7 rules found" in out


def test_the_kubernetes_prometheus_configuration_loads(tmp_path: Path) -> None:
    """Debian builds Prometheus without Kubernetes discovery, so its promtool refuses
    kubernetes_sd_configs: the rest of the file (relabelling, rules) is checked with the discovery
    swapped for a static target, and the discovery block itself is checked as data."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["10.0.0.1:9464"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    assert "SUCCESS: 7 rules found" in promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query, its variables replaced as Grafana does, as the expression of a recording rule:
    `promtool check rules` parses every one."""
    rules = []
    for index, query in enumerate(dashboard_queries()):
        expression = query
        for variable, value in GRAFANA_VARIABLES.items():
            expression = expression.replace(variable, value)
        assert "$" not in expression, f"a variable the test does not know: {query}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expression})
    assert len(rules) > 10
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    out = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert re.search(rf"SUCCESS: {len(rules)} rules found", out), out
