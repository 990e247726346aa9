"""The metrics contract, against a real `mabrouter serve` process: what /metrics exposes is exactly what
docs/metrics.md lists (names, types, labels), in Prometheus's conventions (no `_created` series), with the
numbers the rest of the system agrees on (RPC errors by status, the sample-ratio p-values of `mabrouter
status`); and every metric the Grafana dashboard and the alert rules use is one the router exposes.

One router serves the whole module: two experiments (the example, and a copy with a 20 % holdout), a few
hundred decisions and outcomes, and a handful of refused calls of known statuses.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mabrouter.v1 import router_pb2 as pb

from support import (
    EXAMPLE,
    ROOT,
    RedisServer,
    RouterProcess,
    apply_experiments,
    cli,
    free_port,
    open_stub,
    running_redis,
    wait_until,
)

DOCS = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mabrouter.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
HOLDOUT_EXPERIMENT = "ranker-holdout"
# Series names each type of family exposes, from its name in the text format's `# TYPE` line.
SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}
# Labels a family's samples carry that are not the family's own (the histogram's bucket bound).
SERIES_LABELS = {"le", "quantile"}
METRIC_NAME = re.compile(r"\b((?:mabrouter|process|python)_[a-zA-Z0-9_]+)")
SELECTOR = re.compile(r"\b((?:mabrouter|process|python)_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@dataclass(frozen=True)
class Scrape:
    text: str
    types: dict[str, str]  # family name as in `# TYPE` -> type
    labels: dict[str, set[str]]  # family name -> label names seen on its samples (SERIES_LABELS left out)
    samples: dict[str, list[tuple[dict[str, str], float]]]  # sample name -> [(labels, value)]

    def series_names(self) -> set[str]:
        return {name + suffix for name, kind in self.types.items() for suffix in SUFFIXES[kind]}

    def value(self, name: str, **labels: str) -> float:
        matching = [v for got, v in self.samples.get(name, []) if got == labels]
        assert len(matching) == 1, f"{name}{labels}: {self.samples.get(name)}"
        return matching[0]


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    types = {
        parts[2]: parts[3]
        for line in text.splitlines()
        if line.startswith("# TYPE ") and len(parts := line.split()) == 4
    }
    labels: dict[str, set[str]] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        exposed = family.name + "_total" if family.type == "counter" else family.name
        for sample in family.samples:
            labels.setdefault(exposed, set()).update(set(sample.labels) - SERIES_LABELS)
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Scrape(text, types, labels, samples)


def documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's tables: metric -> (type, label names)."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`[a-z_]+`", cells[0]):
            continue
        name = cells[0].strip("`")
        assert name not in rows, f"docs/metrics.md lists {name} twice"
        rows[name] = (cells[1], set(re.findall(r"`([a-z_]+)`", cells[2])))
    return rows


@dataclass
class Served:
    router: RouterProcess
    redis: RedisServer
    metrics_port: int
    refused: Counter[tuple[str, str]]  # (method, code) -> calls refused on purpose


def drive(address: str) -> Counter[tuple[str, str]]:
    """Decisions, outcomes and refused calls of known statuses; how many of each refusal was sent."""
    refused: Counter[tuple[str, str]] = Counter()
    channel, stub = open_stub(address)
    with channel:
        for experiment in ("ranker", HOLDOUT_EXPERIMENT):
            replies = [
                stub.Route(pb.RouteRequest(experiment=experiment, unit_id=f"u{i}")) for i in range(300)
            ]
            for reply in replies[:40]:
                if reply.decision_id:
                    stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0))
        calls: list[tuple[str, Any, Any, str]] = [
            ("Route", stub.Route, pb.RouteRequest(experiment="no-such-experiment", unit_id="u"), "NOT_FOUND"),
            ("Route", stub.Route, pb.RouteRequest(experiment="ranker", unit_id=""), "INVALID_ARGUMENT"),
            (
                "ReportOutcome",
                stub.ReportOutcome,
                pb.OutcomeRequest(decision_id="forged", reward=1.0),
                "INVALID_ARGUMENT",
            ),
            (
                "RouteBatch",
                stub.RouteBatch,
                pb.RouteBatchRequest(requests=[pb.RouteRequest(experiment="ranker", unit_id="u")] * 1001),
                "INVALID_ARGUMENT",
            ),
        ]
        for method, call, request, code in calls * 2:
            with pytest.raises(grpc.RpcError) as refusal:
                call(request, timeout=10)
            assert refusal.value.code().name == code, (method, refusal.value)
            refused[method, code] += 1
    return refused


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with running_redis() as redis_server:
        holdout = yaml.safe_load(EXAMPLE.read_text()) | {"name": HOLDOUT_EXPERIMENT, "holdout": 20}
        apply_experiments(
            redis_server.url, tmp_path_factory.mktemp("experiments"), EXAMPLE.read_text(), holdout
        )
        metrics_port = free_port()
        router = RouterProcess(redis_server.url, MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
        try:
            router.wait_serving()
            refused = drive(router.address)
            yield Served(router, redis_server, metrics_port, refused)
        finally:
            router.terminate()


@pytest.fixture(scope="module")
def settled(served: Served) -> Scrape:
    """A scrape once the traffic's counts are in Redis and in the router's snapshot (the holdout's
    p-value appears only then)."""

    def holdout_checked() -> Scrape | None:
        result = scrape(served.metrics_port)
        p_values = result.samples.get("mabrouter_sample_ratio_p_value", [])
        return result if any(labels["split"] == "holdout" for labels, _ in p_values) else None

    found: Scrape = wait_until(holdout_checked, 15, interval=0.2, what="the holdout's p-value")
    return found


def test_every_metric_exposed_is_documented_and_every_one_documented_is_exposed(settled: Scrape) -> None:
    docs = documented()
    assert set(settled.types) - set(docs) == set(), "exposed but not in docs/metrics.md"
    assert set(docs) - set(settled.types) == set(), "in docs/metrics.md but not exposed"
    wrong = {name: (kind, docs[name][0]) for name, kind in settled.types.items() if docs[name][0] != kind}
    assert not wrong, f"(exposed type, documented type): {wrong}"


def test_labels_are_the_documented_ones(settled: Scrape) -> None:
    docs = documented()
    wrong = {
        name: (sorted(seen), sorted(docs[name][1]))
        for name, seen in settled.labels.items()
        if seen != docs[name][1]
    }
    assert not wrong, f"(labels on the samples, documented labels): {wrong}"
    # The traffic gave samples to every family but those nothing here provokes: their labels are
    # checked wherever another test makes them appear (the guardian's, the failures').
    without_samples = set(settled.types) - set(settled.labels)
    assert without_samples <= {
        "mabrouter_guardian_actions_total",
        "mabrouter_redis_errors_total",
        "mabrouter_buffer_dropped_total",
        "mabrouter_telemetry_errors_total",
        "mabrouter_state_build_failures_total",
        "mabrouter_experiment_degraded",
    }, without_samples


def test_counters_end_in_total_and_no_created_series_are_exposed(settled: Scrape) -> None:
    assert all(name.endswith("_total") for name, kind in settled.types.items() if kind == "counter")
    created = [line for line in settled.text.splitlines() if "_created" in line]
    assert not created, created[:5]


def test_build_info_names_this_build(settled: Scrape) -> None:
    python = settled.samples["python_info"][0][0]["version"]
    labels = {
        "version": metadata.version("mabrouter"),
        "python": python,
        "grpcio": metadata.version("grpcio"),
    }
    assert settled.value("mabrouter_build_info", **labels) == 1


def test_refused_calls_are_counted_by_method_and_status_code(served: Served) -> None:
    def counted() -> dict[tuple[str, str], float]:
        samples = scrape(served.metrics_port).samples.get("mabrouter_rpc_errors_total", [])
        return {(labels["method"], labels["code"]): value for labels, value in samples}

    # context.abort sends the status before it raises, and the count is made when it raises: a client
    # may read its refusal a moment before the router has counted it.
    expected = dict(served.refused)  # and none of the hundreds of calls answered OK
    wait_until(lambda: counted() == expected, 5, what=f"{expected} counted, not {counted()}")


def test_sample_ratio_p_values_are_the_ones_status_shows(served: Served) -> None:
    def agree() -> bool:
        exposed = {
            (labels["experiment"], labels["split"]): value
            for labels, value in scrape(served.metrics_port).samples["mabrouter_sample_ratio_p_value"]
        }
        shown = {}
        for experiment in ("ranker", HOLDOUT_EXPERIMENT):
            status = json.loads(cli("status", experiment, "--json", redis_url=served.redis.url).stdout)
            for split, key in (("arms", "srm"), ("holdout", "holdout_srm")):
                if status[key] is not None:
                    shown[experiment, split] = status[key]["p_value"]
        assert set(shown) == {
            ("ranker", "arms"),
            (HOLDOUT_EXPERIMENT, "arms"),
            (HOLDOUT_EXPERIMENT, "holdout"),
        }
        return exposed == pytest.approx(shown, rel=1e-9)

    # Status reads Redis now; the router, its snapshot of up to a second ago: the same once both settle.
    wait_until(agree, 15, interval=0.5, what="the router's p-values to match mabrouter status")


def used_metrics(expression: str) -> set[str]:
    return set(METRIC_NAME.findall(expression))


def selector_labels(expression: str) -> dict[str, set[str]]:
    """metric -> label names its selectors in `expression` match on."""
    found: dict[str, set[str]] = {}
    for name, matchers in SELECTOR.findall(expression):
        found.setdefault(name, set()).update(MATCHER.findall(matchers))
    return found


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return [target["expr"] for panel in panels for target in panel["targets"]] + variables


def alert_expressions(path: Path = ALERTS) -> list[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_the_dashboard_and_alerts_use_is_exposed_with_those_labels(
    settled: Scrape, source: str
) -> None:
    expressions = dashboard_expressions() if source == "dashboard" else alert_expressions()
    assert expressions
    used = set().union(*(used_metrics(e) for e in expressions))
    assert used - settled.series_names() == set(), "used but not exposed"
    docs = documented()
    by_series = {name + suffix: name for name, kind in settled.types.items() for suffix in SUFFIXES[kind]}
    for expression in expressions:
        for name, labels in selector_labels(expression).items():
            known = (
                docs[by_series[name]][1]
                | {"job", "instance"}
                | ({"le"} if name.endswith("_bucket") else set())
            )
            assert labels <= known, f"{name} has no label {labels - known}: {expression}"
