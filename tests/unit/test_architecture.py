"""Layering rules, checked by scanning imports (the AST, so lazy imports inside functions count too).

The pure core stays pure; only `store` touches Redis and knows its keys; the runtime talks to the
store's ports, never to an adapter; only `service` and `client` touch the wire; only `telemetry.py`
configures the OpenTelemetry SDK. Each rule names the files that break it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from support import ROOT

SRC = ROOT / "src" / "mabrouter"


def imports_of(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            # `from mabrouter.store import keys` imports the module mabrouter.store.keys
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def modules_in(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py")) if (SRC / package).is_dir() else [SRC / f"{package}.py"]


def source_files() -> Iterable[Path]:
    return (path for path in SRC.rglob("*.py") if "v1" not in path.relative_to(SRC).parts)


def matches(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def where(path: Path) -> str:
    return str(path.relative_to(SRC))


FORBIDDEN = {
    # package: modules (and their submodules) it must never import
    "core": (
        "grpc",
        "redis",
        "opentelemetry",
        "prometheus_client",
        "pydantic",
        "yaml",
        "mabrouter.v1",
        "mabrouter.store",
        "mabrouter.runtime",
        "mabrouter.service",
        "mabrouter.client",
        "mabrouter.config",
        "mabrouter.schema",
        "mabrouter.app",
        # No I/O, no clock, no global randomness: decisions replay exactly in tests.
        "time",
        "random",
        "os",
        "io",
        "pathlib",
        "socket",
        "subprocess",
        "asyncio",
        "threading",
    ),
    "store": (
        "grpc",
        "mabrouter.v1",
        "mabrouter.service",
        "mabrouter.runtime",
        "mabrouter.app",
        "mabrouter.cli",
        "mabrouter.commands",
        "mabrouter.client",
        "mabrouter.reporting",
        "mabrouter.loadtest",
        "opentelemetry",
    ),
    "runtime": (
        "grpc",
        "redis",
        "mabrouter.v1",
        "mabrouter.service",
        "mabrouter.app",
        # The adapters and what only they may know: the runtime gets them as ports, from app.py.
        "mabrouter.store.router_store",
        "mabrouter.store.admin_store",
        "mabrouter.store.connect",
        "mabrouter.store.spool",
        "mabrouter.store.errors",
        "mabrouter.store.keys",
        "mabrouter.store.scripts",
        "mabrouter.store.stats_scripts",
    ),
    "errors": ("mabrouter", "grpc", "redis"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package: str) -> None:
    offenders = sorted(
        f"{where(path)} imports {module}"
        for path in modules_in(package)
        for module in imports_of(path)
        if matches(module, FORBIDDEN[package])
    )
    assert not offenders, offenders


def only_in(allowed: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Files outside `allowed` (packages or top-level modules) that import any of `forbidden`."""
    allowed = tuple(allowed)
    return sorted(
        f"{where(path)} imports {module}"
        for path in source_files()
        if path.relative_to(SRC).parts[0] not in allowed
        for module in imports_of(path)
        if matches(module, forbidden)
    )


def test_only_store_touches_redis() -> None:
    """Redis clients and exceptions alike: the store raises StoreUnavailableError instead."""
    assert not only_in({"store"}, {"redis"})


def test_only_store_knows_the_keys() -> None:
    assert not only_in({"store"}, {"mabrouter.store.keys", "mabrouter.store.scripts"})


def test_only_service_and_client_touch_the_wire() -> None:
    assert not only_in({"service", "client"}, {"mabrouter.v1"})


def test_only_telemetry_configures_the_opentelemetry_sdk() -> None:
    assert not only_in({"telemetry.py"}, {"opentelemetry.sdk"})


def test_modules_stay_small() -> None:
    big = {where(p): n for p in source_files() if (n := len(p.read_text().splitlines())) > 320}
    assert not big, f"split these modules: {big}"
