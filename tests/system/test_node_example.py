"""The Node.js example (examples/node/route.js) against a real router and Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support import ROOT, InProcessRouter, RedisServer, free_port

NODE_DIR = ROOT / "examples" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")
ARMS = {"ranker-v1", "ranker-v2", "ranker-v3"}

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node/npm not found on PATH: install Node.js >= 18 to run the Node example test",
)


def installed() -> bool:
    """node_modules holds both packages and is newer than package.json (else reinstall)."""
    marker = NODE_DIR / "node_modules" / ".package-lock.json"  # npm's hidden lockfile, written last
    packages = [
        NODE_DIR / "node_modules" / "@grpc" / name / "package.json" for name in ("grpc-js", "proto-loader")
    ]
    return (
        marker.exists()
        and all(p.exists() for p in packages)
        and marker.stat().st_mtime >= (NODE_DIR / "package.json").stat().st_mtime
    )


@pytest.fixture(scope="module")
def node_example() -> Path:
    """examples/node with its dependencies installed (npm runs only when node_modules is missing/stale)."""
    if not installed():
        assert NPM is not None
        result = subprocess.run(
            [NPM, "install", "--no-package-lock", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm install in {NODE_DIR} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
    return NODE_DIR


def run_example(directory: Path, *args: str, **env: str) -> tuple[int, list[dict[str, Any]], str]:
    assert NODE is not None
    result = subprocess.run(
        [NODE, "route.js", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.returncode, events, result.stderr


def test_node_example_routes_and_reports_an_outcome(
    node_example: Path, router: InProcessRouter, redis_server: RedisServer
) -> None:
    code, events, stderr = run_example(
        node_example,
        router.address,
        "ranker",
        "node-user-1",
        MABROUTER_REWARD="1",
        MABROUTER_ATTRIBUTES=json.dumps({"country": "DE", "age": 31, "premium": True, "tags": ["a", "b"]}),
        # The example's 50 ms default is for a warm service; a cold `node` on a busy CI machine gets 2 s.
        MABROUTER_ROUTE_DEADLINE_MS="2000",
    )
    assert code == 0, stderr
    route, outcome = events
    assert route["event"] == "route"
    assert route["arm"] in ARMS
    assert route["decision_id"]
    assert route["reason"] == "SAMPLED"
    assert route["fallback"] is False
    assert route["payload"] == {"endpoint": f"http://{route['arm']}:8080"}
    assert outcome == {
        "event": "outcome",
        "decision_id": route["decision_id"],
        "reward": 1,
        "duplicate": False,
        "experiment": "ranker",
        "arm": route["arm"],
    }
    client = redis_server.client()
    try:
        stats = client.hgetall("mabrouter:{ranker}:stats")
    finally:
        client.close()
    assert int(stats[f"{route['arm']}:count"]) == 1
    assert float(stats[f"{route['arm']}:sum"]) == 1.0
    assert sum(int(v) for k, v in stats.items() if k.endswith(":count")) == 1


def test_node_example_fails_open_without_a_router(node_example: Path) -> None:
    started = time.monotonic()
    code, events, stderr = run_example(node_example, f"127.0.0.1:{free_port()}", "ranker", "node-user-2")
    elapsed = time.monotonic() - started
    assert code == 0, stderr
    (route,) = events  # a fallback has no decision id: nothing is reported
    assert (route["arm"], route["reason"], route["fallback"], route["decision_id"]) == (
        "ranker-v1",
        "CLIENT_FALLBACK",
        True,
        "",
    )
    assert route["error"].startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
    assert route["elapsed_ms"] < 1000
    assert elapsed < 30  # node start-up + the 1 s connect wait, generously
