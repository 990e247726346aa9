"""deploy/compose/: the kit's compose file, checked as data because Docker does not run here. Every file it
mounts exists, every service it names is defined, what is published is on loopback only, our containers
are hardened, the router refuses to start without a decision secret, and the pieces point at each other:
Prometheus scrapes the router's metrics port, the router sends traces where the collector listens, Grafana
reads that Prometheus and loads the dashboard, the traffic generator routes the experiment the init job
applies, with its arms. The other configuration files (Prometheus, alerts) are checked by promtool in
tests/integration/test_prometheus_rules.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mabrouter.config import Settings

from support import ROOT

KIT = ROOT / "deploy" / "compose"
COMPOSE = KIT / "compose.yaml"
SETTINGS_VARIABLES = {f"MABROUTER_{name.upper()}" for name in Settings.model_fields}
OUR_SERVICES = ("init", "router", "traffic")  # built from this repository's Dockerfile


@pytest.fixture(scope="module")
def kit() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def service(kit: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = kit["services"][name]
    return found


def environment(entry: dict[str, Any]) -> dict[str, str]:
    env = entry.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def bind_mounts(entry: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount (short syntax, relative to the compose file)."""
    mounts = []
    for volume in entry.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/")):
            mounts.append(((KIT / source).resolve(), target))
    return mounts


def host_file(entry: dict[str, Any], container_path: str) -> Path:
    """The file on this machine a container path of `entry` is mounted from."""
    for source, target in bind_mounts(entry):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not in a bind mount")


def image_env(name: str) -> str:
    """A variable's value set by the Dockerfile's ENV."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(rf"\b{name}=(\S+)", text)
    assert match is not None, f"the Dockerfile sets no {name}"
    return match.group(1)


def test_the_kit_has_its_services_and_every_reference_resolves(kit: dict[str, Any]) -> None:
    services = kit["services"]
    assert set(services) == {"redis", "init", "router", "traffic", "otel-collector", "prometheus", "grafana"}
    declared = set(kit.get("volumes", {}))
    for name, entry in services.items():
        assert "image" in entry, name
        assert ":" in entry["image"], f"{name}: tag the image"
        assert not entry["image"].endswith(":latest"), f"{name}: pin a version"
        for dependency in entry.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for source, _ in bind_mounts(entry):
            assert source.exists(), f"{name} mounts {source}, which does not exist"
        for volume in entry.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
        if "build" in entry:
            assert (KIT / entry["build"]["context"] / "Dockerfile").is_file(), name


def test_redis_keeps_an_append_only_file_and_is_not_published(kit: dict[str, Any]) -> None:
    redis = service(kit, "redis")
    argv = redis["command"]
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "ports" not in redis
    assert "ports" not in service(kit, "otel-collector")


def test_what_is_published_is_on_loopback_only(kit: dict[str, Any]) -> None:
    for name, entry in kit["services"].items():
        for port in entry.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_our_containers_are_hardened(kit: dict[str, Any], name: str) -> None:
    entry = service(kit, name)
    assert entry["read_only"] is True
    assert entry["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in entry["security_opt"]
    unknown = {var for var in environment(entry) if var.startswith("MABROUTER_")} - SETTINGS_VARIABLES
    assert not unknown, f"{name}: not settings: {unknown}"


def test_the_router_refuses_to_start_without_a_decision_secret(kit: dict[str, Any]) -> None:
    secret = environment(service(kit, "router"))["MABROUTER_DECISION_SECRET"]
    # `${VAR:?message}`: compose refuses to start without it; a default would be a public secret.
    assert secret.startswith("${MABROUTER_DECISION_SECRET:?")
    assert "openssl rand" in secret
    assert "$" not in secret[2:-1], "compose would interpolate a $ in the message"
    assert ".env" in (KIT / ".gitignore").read_text().split(), "the env file holding it is never committed"


def test_prometheus_scrapes_the_routers_metrics_port_and_loads_the_rules(kit: dict[str, Any]) -> None:
    prometheus = service(kit, "prometheus")
    (config_flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_path = host_file(prometheus, config_flag.partition("=")[2])
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    (targets,) = job["static_configs"]
    port = image_env("MABROUTER_METRICS_LISTEN").rpartition(":")[2]
    assert image_env("MABROUTER_METRICS_LISTEN").startswith("0.0.0.0:")
    assert targets["targets"] == [f"router:{port}"]
    for rules in config["rule_files"]:
        assert (config_path.parent / rules).is_file()


def test_the_router_sends_traces_where_the_collector_receives_them(kit: dict[str, Any]) -> None:
    env = environment(service(kit, "router"))
    collector = service(kit, "otel-collector")
    config = yaml.safe_load(host_file(collector, "/etc/otelcol/config.yaml").read_text())
    assert "--config=/etc/otelcol/config.yaml" in collector["command"]
    receivers = config["receivers"]["otlp"]["protocols"]
    protocol = {"http/protobuf": "http", "grpc": "grpc"}[env["OTEL_EXPORTER_OTLP_PROTOCOL"]]
    port = receivers[protocol]["endpoint"].rpartition(":")[2]
    assert (
        env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        == f"{'http://' if protocol == 'http' else ''}otel-collector:{port}"
    )
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]


def test_grafana_reads_that_prometheus_and_loads_the_dashboard(kit: dict[str, Any]) -> None:
    grafana = service(kit, "grafana")
    datasources = yaml.safe_load(
        host_file(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    (prometheus_source,) = datasources
    assert prometheus_source["type"] == "prometheus"
    assert prometheus_source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(
        host_file(grafana, "/etc/grafana/provisioning/dashboards/mabrouter.yml").read_text()
    )["providers"]
    dashboards = host_file(grafana, provider["options"]["path"])
    assert dashboards == ROOT / "deploy" / "grafana" / "dashboards"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_file(grafana, home).is_file()


def test_the_traffic_routes_the_experiment_the_init_job_applies(kit: dict[str, Any]) -> None:
    init = service(kit, "init")
    assert init["command"][:2] == ["experiment", "apply"]
    experiment = yaml.safe_load(host_file(init, init["command"][2]).read_text())
    traffic = service(kit, "traffic")
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in traffic["command"][1:] if "=" in arg)
    assert traffic["command"][0] == "loadtest"
    assert flags["experiment"] == experiment["name"]
    (command,) = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    argv = json.loads(command.removeprefix("CMD "))  # the router's: serve --listen HOST:PORT ...
    assert flags["target"] == "router:" + argv[argv.index("--listen") + 1].rpartition(":")[2]
    arms = {arm["name"] for arm in experiment["arms"]}
    rates = [arg.split("=", 2)[1] for arg in traffic["command"] if arg.startswith("--arm-rate=")]
    assert set(rates) == arms
    for name in ("init", "traffic"):
        assert environment(service(kit, name))["MABROUTER_REDIS_URL"] == "redis://redis:6379/0"
