"""Layering rules, checked by scanning imports: the pure core stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "mabrouter"


def imports_of(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def modules_in(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py")) if (SRC / package).is_dir() else [SRC / f"{package}.py"]


FORBIDDEN = {
    # package: prefixes it must never import
    "core": (
        "grpc",
        "redis",
        "opentelemetry",
        "pydantic",
        "yaml",
        "mabrouter.v1",
        "mabrouter.store",
        "mabrouter.runtime",
        "mabrouter.service",
        "mabrouter.config",
        "mabrouter.app",
        "time",
        "random",
        "os",
    ),
    "store": (
        "grpc",
        "mabrouter.v1",
        "mabrouter.service",
        "mabrouter.runtime",
        "mabrouter.app",
        "opentelemetry",
    ),
    "runtime": ("grpc", "mabrouter.v1", "mabrouter.service", "mabrouter.app"),
    "errors": ("mabrouter.", "grpc", "redis"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package: str) -> None:
    offenders = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in modules_in(package)
        for module in imports_of(path)
        if any(
            module == bad.rstrip(".")
            or module.startswith(bad if bad.endswith(".") else bad + ".")
            or module == bad
            for bad in FORBIDDEN[package]
        )
    ]
    assert not offenders, offenders


def test_only_store_touches_redis() -> None:
    allowed = {"store", "cli.py", "demo.py", "app.py", "runtime"}  # runtime only catches RedisError
    offenders = []
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0]
        if top in allowed:
            continue
        if any(m == "redis" or m.startswith("redis.") for m in imports_of(path)):
            offenders.append(str(path.relative_to(SRC)))
    assert not offenders, offenders


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if "v1" not in p.parts and (n := len(p.read_text().splitlines())) > 320
    }
    assert not big, f"split these modules: {big}"
