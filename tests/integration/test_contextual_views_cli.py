"""What operators see of a contextual experiment, against a real router and redis-server: the load test
simulates contextual rewards and measures regret against the best arm per request; `status` shows each
arm's coefficients with intervals; `report` draws which arm wins where (issue 16)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import InProcessRouter, RedisServer, apply_experiments, cli, router_settings

DOC = """
name: sizes
control: small
arms: [{name: small}, {name: large}]
contextual:
  features:
    - {attribute: prompt_tokens, transform: standardize, mean: 1000, scale: 500}
"""
WORLD = (
    "--context",
    "prompt_tokens=0:2000",
    "--arm-rate",
    "small=0.8",
    "--above",
    "small=0.2",
    "--arm-rate",
    "large=0.2",
    "--above",
    "large=0.8",
)


@pytest.fixture
def trained(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[RedisServer, dict[str, object]]]:
    """The crossing problem after a 4-second load test at 400 decisions/s (its JSON report)."""
    apply_experiments(redis_server.url, tmp_path, DOC)
    router = InProcessRouter(router_settings(redis_server.url)).start()
    try:
        out = tmp_path / "run.json"
        cli(
            "loadtest",
            "--target",
            router.address,
            "--experiment",
            "sizes",
            "--duration",
            "4",
            "--rate",
            "400",
            "--seed",
            "3",
            "--timeout",
            "5",
            "--no-png",
            "--json-out",
            str(out),
            *WORLD,
            redis_url=redis_server.url,
        )
        yield redis_server, json.loads(out.read_text())
    finally:
        router.stop()


def test_loadtest_status_and_report_of_a_contextual_experiment(
    trained: tuple[RedisServer, dict[str, object]], tmp_path: Path
) -> None:
    redis_server, run = trained
    assert run["config"]["environment"]["context"]["threshold"] == 1000.0  # type: ignore[index]
    rows = run["timeline"]
    assert isinstance(rows, list)
    half = len(rows) // 2
    early = rows[half - 1]["cumulative_regret"] / max(sum(r["decisions"] for r in rows[:half]), 1)
    late_decisions = sum(r["decisions"] for r in rows[half:])
    late = (rows[-1]["cumulative_regret"] - rows[half - 1]["cumulative_regret"]) / late_decisions
    # any one arm for everyone loses 0.6 on half the requests: 0.3 per decision
    print(f"regret per decision: first half {early:.3f}, second half {late:.3f}")
    assert late < 0.12
    assert late < early
    assert "left out with --context" in run["srm"]["warning"]  # type: ignore[index]

    status = json.loads(cli("status", "sizes", "--json", redis_url=redis_server.url).stdout)
    model = {arm["arm"]: arm for arm in status["contextual"]["arms"]}
    assert status["contextual"]["columns"] == ["intercept", "prompt_tokens"]
    assert model["small"]["decisions"] > 100
    assert model["large"]["decisions"] > 100
    assert model["small"]["coefficients"]["prompt_tokens"]["ci_high"] < 0  # small loses as prompts grow
    assert model["large"]["coefficients"]["prompt_tokens"]["ci_low"] > 0
    assert status["srm"]["mismatch"] is False  # the router's own split check: every decision's allocation
    table = cli("status", "sizes", redis_url=redis_server.url).stdout
    assert "contextual model" in table
    assert "prompt_tokens" in table

    page = tmp_path / "report.html"
    cli("report", "sizes", "--out", str(page), redis_url=redis_server.url)
    html = page.read_text()
    assert 'id="figure-contextual"' in html
    assert 'id="contextual"' in html
    assert "Which arm wins where" in html
