"""deploy/kubernetes/: every manifest is valid for the pinned Kubernetes version (kubernetes-validate, in
strict mode: an unknown field is an error), and says what docs/deployment.md promises. The router is a
native sidecar that its inference container reaches on loopback; readiness asks gRPC health for the
Router service, never the alert-only `mabrouter.snapshot`; the decision secret comes from a Secret; the
containers run as non-root on read-only root filesystems; requests cover the measured memory; metrics
are annotated for a plain Prometheus and admitted by the NetworkPolicy; and names, ports and settings
agree with the code. Files only: no cluster is needed (or used)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mabrouter.config import Settings
from mabrouter.schema import parse_experiment
from mabrouter.service.server import ROUTER_SERVICE, SNAPSHOT_HEALTH

from support import EXAMPLE, ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes where native sidecars (an init container with restartPolicy: Always) are GA.
KUBERNETES_VERSION = "1.33.0"
IMAGE_UID = 10001  # the Dockerfile's USER
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SETTINGS_VARIABLES = {f"MABROUTER_{name.upper()}" for name in Settings.model_fields}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    found = [
        (path, document)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    ]
    assert found, f"no manifests in {KUBERNETES}"
    return found


def resource(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, document in documents():
        if document["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield document["metadata"]["name"], document["spec"]["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def inference_pod() -> dict[str, Any]:
    template: dict[str, Any] = resource("Deployment", "inference")["spec"]["template"]
    return template


def sidecar() -> dict[str, Any]:
    (router,) = [c for c in inference_pod()["spec"]["initContainers"] if c["name"] == "mabrouter"]
    return router


def listen_port(router: dict[str, Any]) -> int:
    args = router["args"]
    host, _, port = args[args.index("--listen") + 1].rpartition(":")
    assert host == "0.0.0.0", "the kubelet's gRPC probes connect to the pod IP"
    return int(port)


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * (1024 if unit == "Gi" else 1)


@pytest.mark.parametrize(
    ("path", "document"),
    documents(),
    ids=lambda value: value.name if isinstance(value, Path) else value["metadata"]["name"],
)
def test_each_manifest_is_valid_for_the_pinned_kubernetes(path: Path, document: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name}: {document['kind']}/{document['metadata']['name']}: {exc.message}")


def test_the_router_is_a_native_sidecar_the_app_reaches_on_loopback() -> None:
    router = sidecar()
    assert router["restartPolicy"] == "Always"
    port = listen_port(router)
    assert {"name": "grpc", "containerPort": port} in router["ports"]
    (app,) = inference_pod()["spec"]["containers"]
    assert f"127.0.0.1:{port}" in environment(app).values()
    services = [d for _, d in documents() if d["kind"] == "Service"]
    exposed = {p.get("targetPort") for s in services for p in s["spec"]["ports"]} | {
        p["port"] for s in services for p in s["spec"]["ports"]
    }
    assert port not in exposed
    assert "grpc" not in exposed


def test_readiness_asks_for_the_router_service_and_nothing_asks_for_the_alert_only_health() -> None:
    router = sidecar()
    port = listen_port(router)
    for probe in ("startupProbe", "readinessProbe"):
        assert router[probe]["grpc"] == {"port": port, "service": ROUTER_SERVICE}, probe
    assert "livenessProbe" not in router  # a router without Redis still answers: a restart cannot help
    for workload, pod in pod_templates():
        for container in containers(pod):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probed = container.get(kind, {}).get("grpc", {}).get("service")
                # A stale or degraded router still answers from memory: it must stay in rotation.
                assert probed != SNAPSHOT_HEALTH, f"{workload}/{container['name']} {kind}: for alerts only"


def test_the_decision_secret_comes_from_a_kubernetes_secret() -> None:
    router = sidecar()
    env = environment(router)
    assert "MABROUTER_DECISION_SECRET" not in env
    assert "MABROUTER_DEV_INSECURE_SECRET" not in env
    secret_file = Path(env["MABROUTER_DECISION_SECRET_FILE"])
    volumes = {v["name"]: v for v in inference_pod()["spec"]["volumes"]}
    (mount,) = [m for m in router["volumeMounts"] if secret_file.parent == Path(m["mountPath"])]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert [item["path"] for item in secret["items"]] == [secret_file.name]
    assert not [d for _, d in documents() if d["kind"] == "Secret"], "a committed secret is a public one"


@pytest.mark.parametrize("workload", [name for name, _ in pod_templates()])
def test_every_container_runs_as_non_root_on_a_read_only_root_filesystem(workload: str) -> None:
    pod = dict(pod_templates())[workload]
    pod_context = pod["spec"].get("securityContext", {})
    assert pod["spec"].get("automountServiceAccountToken") is False
    for container in containers(pod):
        context = container["securityContext"]
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        if container["image"].startswith("mabrouter:"):
            assert context["runAsUser"] == IMAGE_UID
            assert container["image"] == f"mabrouter:{VERSION}", "the image tag names the release"


def test_the_sidecars_requests_cover_the_measured_memory() -> None:
    """README's performance table gives the measured resident memory per router process."""
    readme = (ROOT / "README.md").read_text()
    row = re.search(r"\| resident memory per worker \|([^|]+)\|", readme)
    assert row is not None, "README's performance table has no resident-memory row"
    measured = max(float(n) for n in re.findall(r"(\d+) MiB", row.group(1)))
    resources = sidecar()["resources"]
    assert mebibytes(resources["requests"]["memory"]) >= measured
    assert mebibytes(resources["limits"]["memory"]) >= 2 * measured
    assert "cpu" in resources["requests"]
    assert "cpu" not in resources.get("limits", {}), "a CPU limit throttles Route"


def test_metrics_are_annotated_for_prometheus_and_admitted_by_the_network_policy() -> None:
    router = sidecar()
    metrics_port = int(environment(router)["MABROUTER_METRICS_LISTEN"].rpartition(":")[2])
    assert environment(router)["MABROUTER_METRICS_LISTEN"] == f"0.0.0.0:{metrics_port}"
    assert {"name": "metrics", "containerPort": metrics_port} in router["ports"]
    annotations = inference_pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    policy = resource("NetworkPolicy", "inference")
    admitted = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert "metrics" in admitted
    assert "grpc" not in admitted
    assert listen_port(router) not in admitted


def test_settings_names_and_the_redis_address_agree_with_the_code() -> None:
    redis_service = resource("Service", "mabrouter-redis")
    (port,) = redis_service["spec"]["ports"]
    expected_url = f"redis://{redis_service['metadata']['name']}:{port['port']}/0"
    for workload, pod in pod_templates():
        for container in containers(pod):
            env = environment(container)
            unknown = {name for name in env if name.startswith("MABROUTER_")} - SETTINGS_VARIABLES
            if container["image"].startswith("mabrouter:"):
                assert not unknown, f"{workload}/{container['name']}: not settings: {unknown}"
                assert env["MABROUTER_REDIS_URL"] == expected_url


def test_the_experiments_job_applies_the_packaged_example() -> None:
    config = resource("ConfigMap", "mabrouter-experiments")
    assert config["data"], "no experiment files"
    for name, text in config["data"].items():
        parse_experiment(yaml.safe_load(text), name)  # raises on an invalid experiment
    assert yaml.safe_load(config["data"]["ranker.yaml"]) == yaml.safe_load(EXAMPLE.read_text())
    pod = resource("Job", "mabrouter-apply-experiments")["spec"]["template"]
    (apply,) = pod["spec"]["containers"]
    (mount,) = apply["volumeMounts"]
    assert apply["args"] == ["experiment", "apply", mount["mountPath"]]
    (volume,) = pod["spec"]["volumes"]
    assert volume["configMap"]["name"] == "mabrouter-experiments"
