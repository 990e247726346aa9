"""Static checks of the container files: structure of the Dockerfile and docker-compose.yml (hadolint,
which runs as a process: integration/test_hadolint.py).

No Docker engine is needed (or used): the image is checked, not built.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import ROOT

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"

BASE_IMAGE = "python:3.11-slim-bookworm"
PORT = 50051
METRICS_PORT = 9464
HEALTH_ARGV = ["mabrouter", "health", "--address", f"127.0.0.1:{PORT}"]


# ---------------------------------------------------------------- Dockerfile parsing


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    """The JSON (exec form) argv of CMD / ENTRYPOINT / HEALTHCHECK CMD; fail on the shell form."""
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"expected the exec (JSON array) form, got shell form: {arguments!r}")
    assert isinstance(argv, list)
    assert all(isinstance(item, str) for item in argv)
    return argv


# ---------------------------------------------------------------- Dockerfile


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if "hadolint ignore" in line:
            previous = lines[number - 2].strip() if number >= 2 else ""
            why = f"Dockerfile:{number}: an ignore pragma needs a comment line above it saying why"
            assert previous.startswith("#"), why
            assert "hadolint" not in previous, why


def test_stages_use_the_pinned_base_image() -> None:
    images = [arguments.split()[0] for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(images) >= 2, "expected a multi-stage build (builder + runtime)"
    assert all(image == BASE_IMAGE for image in images), images


def test_runtime_stage_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the runtime stage sets no USER, so the router would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the runtime stage runs as {users[-1]!r}"


def test_runtime_stage_gets_the_venv_not_the_sources() -> None:
    copies = [arguments for keyword, arguments in final_stage() if keyword in {"COPY", "ADD"}]
    assert copies, "the runtime stage copies nothing"
    assert all(arguments.startswith("--from=") for arguments in copies), (
        f"the runtime stage should only copy build results from the builder stage: {copies}"
    )


def test_healthcheck_asks_the_router_itself() -> None:
    checks = [arguments for keyword, arguments in final_stage() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    options, marker, command = checks[0].partition(" CMD ")
    assert marker, f"HEALTHCHECK without CMD: {checks[0]!r}"
    assert exec_form(command) == HEALTH_ARGV
    assert "--timeout=" in options
    assert "--start-period=" in options


def test_entrypoint_cmd_and_port() -> None:
    stage = final_stage()
    by_keyword = dict(stage)
    assert exec_form(by_keyword["ENTRYPOINT"]) == ["mabrouter"]
    assert exec_form(by_keyword["CMD"]) == ["serve", "--listen", f"0.0.0.0:{PORT}", "--log-format", "json"]
    assert str(PORT) in by_keyword["EXPOSE"].split()


def test_metrics_listen_on_every_interface_of_the_container() -> None:
    """The router's own default is loopback (right for a process on a host); in a container that would
    hide the metrics from every scraper."""
    stage = final_stage()
    env = " ".join(arguments for keyword, arguments in stage if keyword == "ENV")
    assert f"MABROUTER_METRICS_LISTEN=0.0.0.0:{METRICS_PORT}" in env.split()
    exposed = {port for keyword, arguments in stage if keyword == "EXPOSE" for port in arguments.split()}
    assert exposed == {str(PORT), str(METRICS_PORT)}


def test_the_sidecar_image_installs_no_extra_and_the_tools_image_names_real_ones() -> None:
    """EXTRAS is empty by default (the sidecar); compose builds the tools image with the report and
    loadtest extras, which pyproject.toml must define."""
    args = [arguments for keyword, arguments in instructions() if keyword == "ARG"]
    assert 'EXTRAS=""' in args
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    kit = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    asked = {
        extra
        for service in kit["services"].values()
        for extra in str(service.get("build", {}).get("args", {}).get("EXTRAS", "")).split(",")
        if extra
    }
    assert {"report", "loadtest"} <= asked
    assert asked <= set(extras)


def test_pip_never_keeps_a_cache() -> None:
    for keyword, arguments in instructions():
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", arguments):
            argv = shlex.split(command)
            if "pip" in {Path(word).name for word in argv[:1]} and ("install" in argv or "wheel" in argv):
                assert "--no-cache-dir" in argv, f"pip without --no-cache-dir: {command.strip()!r}"


def test_copied_sources_exist_and_are_not_dockerignored() -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".git", "benchmarks", "tests", ".env"):
        assert required in ignored, f".dockerignore should exclude {required}"
    for keyword, arguments in instructions():
        if keyword != "COPY" or arguments.startswith("--from="):
            continue
        *sources, _destination = arguments.split()
        for source in sources:
            if any(char in source for char in "*?["):
                continue  # optional by design (a wildcard may match nothing)
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
            assert source.rstrip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"


# ---------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    assert isinstance(document.get("services"), dict)
    return document


def _argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_compose_declares_the_three_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "init", "router"}
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"


def test_redis_is_durable_healthchecked_and_private(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    argv = _argv(redis["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert "redis-cli" in _argv(redis["healthcheck"]["test"])
    assert "ports" not in redis, "Redis must not be published on the host"


def test_init_applies_the_packaged_example(compose: dict[str, Any]) -> None:
    init = compose["services"]["init"]
    assert _argv(init["command"]) == ["experiment", "apply", "/examples/ranker.yaml"]
    assert init["depends_on"]["redis"]["condition"] == "service_healthy"
    assert _environment(init)["MABROUTER_REDIS_URL"] == "redis://redis:6379/0"
    mounts = [volume for volume in init["volumes"] if isinstance(volume, str)]
    example_mounts = [m for m in mounts if m.split(":")[1] == "/examples"]
    assert len(example_mounts) == 1, mounts
    source, _, mode = example_mounts[0].split(":")
    assert mode == "ro"
    assert (ROOT / source / "ranker.yaml").is_file(), f"{source}/ranker.yaml is missing"


def test_router_depends_on_healthy_redis_and_completed_init(compose: dict[str, Any]) -> None:
    depends = compose["services"]["router"]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["init"]["condition"] == "service_completed_successfully"


def test_router_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = compose["services"]["router"]["ports"]
    published = set()
    for port in ports:
        if isinstance(port, dict):  # long syntax
            assert port.get("host_ip") == "127.0.0.1", port
            published.add(int(port["target"]))
        else:
            host, _, target = str(port).rpartition(":")
            assert host.startswith("127.0.0.1:"), f"{port!r} is not bound to 127.0.0.1"
            published.add(int(target))
    assert published == {PORT, METRICS_PORT}


def test_router_healthcheck_and_environment(compose: dict[str, Any]) -> None:
    router = compose["services"]["router"]
    test = _argv(router["healthcheck"]["test"])
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert test[1:] == HEALTH_ARGV
    env = _environment(router)
    assert env["MABROUTER_REDIS_URL"] == "redis://redis:6379/0"
    secret = env["MABROUTER_DECISION_SECRET"]
    assert secret.startswith("${MABROUTER_DECISION_SECRET"), "the secret must come from the environment"
    # `${VAR:?message}`: compose refuses to start without it; a placeholder would be a public secret
    assert secret.startswith("${MABROUTER_DECISION_SECRET:?"), "an unset secret must be an error"
    assert "openssl rand" in secret, "the error says how to make a secret"
