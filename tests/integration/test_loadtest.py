"""`mabrouter loadtest`: real runs against a real router (its statistics and simulated environment:
unit/test_loadtest_stats.py)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from mabrouter.loadtest.chart import build_figure

from support import InProcessRouter, RedisServer, cli, free_port

ARMS = ("--arm-rate", "ranker-v1=0.1", "--arm-rate", "ranker-v2=0.12", "--arm-rate", "ranker-v3=0.3")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the real command against a real router ----------------------------------------------------------


def _run(tmp_path: Path, router: InProcessRouter, *args: str, name: str = "run") -> dict[str, Any]:
    json_out = tmp_path / f"{name}.json"
    cli(
        "loadtest",
        "--target",
        router.address,
        "--experiment",
        "ranker",
        "--json-out",
        str(json_out),
        "--seed",
        "1",
        "--timeout",
        "5",  # generous: a loaded CI machine must not turn slow calls into errors
        *args,
        redis_url=router.settings.redis_url,  # the arms are checked against the stored experiment
    )
    report: dict[str, Any] = json.loads(json_out.read_text())
    return report


def test_open_loop_run_reports_latency_shares_regret_and_a_chart(
    router: InProcessRouter, tmp_path: Path
) -> None:
    report = _run(tmp_path, router, "--duration", "3", "--rate", "300", *ARMS)
    assert report["decisions"] > 0
    assert report["throughput_per_second"] > 0
    assert report["decisions"] == pytest.approx(900, rel=0.1)
    latency = report["latency_us"]
    assert latency["count"] == report["decisions"]
    ordered = [latency[key] for key in ("p50", "p90", "p99", "p99.9", "max")]
    assert ordered == sorted(ordered)
    assert ordered[0] > 0
    assert report["errors"] == {}
    assert report["error_total"] == 0
    assert sum(report["reasons"].values()) == report["decisions"]
    rows = report["timeline"]
    assert len(rows) == 10  # 3 s in buckets of 0.3 s
    assert sum(row["decisions"] for row in rows) == report["decisions"]
    for row in rows:
        if row["decisions"]:
            assert sum(row["shares"].values()) == pytest.approx(1.0)
    regret = [row["cumulative_regret"] for row in rows]
    assert regret[0] >= 0
    assert regret == sorted(regret)
    assert report["regret"]["total"] == pytest.approx(regret[-1])
    assert 0 <= report["regret"]["per_decision"] <= 0.2  # the worst arm loses 0.2 per decision
    assert report["outcomes"]["reported"] == report["decisions"]
    srm = report["srm"]
    assert "median propensity" in srm["method"]
    assert srm["p_value"] is None or 0.0 <= srm["p_value"] <= 1.0
    png = tmp_path / "run.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 10_000
    assert_latency_over_time(report, png)


def assert_latency_over_time(report: dict[str, Any], png: Path) -> None:
    """Each bucket's latencies add up to the run's, and the PNG the command wrote is the figure whose
    middle panel draws them (rendered again here from the JSON, byte for byte)."""
    rows, latency = report["timeline"], report["latency_us"]
    buckets = [row["latency_us"] for row in rows]
    assert sum(bucket["count"] for bucket in buckets) == latency["count"]
    answered = [bucket for bucket in buckets if bucket["count"]]
    assert len(answered) >= len(rows) / 2  # an open loop sends in every bucket (unless it stalls)
    for bucket in answered:
        assert 0 < bucket["p50"] <= bucket["p90"] <= bucket["p99"] <= bucket["max"] <= latency["max"]
    # the run's median lies between the buckets' medians (within rounding: 3 significant digits each)
    assert min(b["p50"] for b in answered) * 0.99 <= latency["p50"] <= max(b["p50"] for b in answered) * 1.01

    figure = build_figure(report)
    assert [ax.get_label() for ax in figure.axes] == ["shares", "latency", "regret"]
    (latency_ax,) = [ax for ax in figure.axes if ax.get_label() == "latency"]
    scale = 1000 if max(b["p99"] for b in answered) >= 1000 else 1
    p99 = next(line for line in latency_ax.get_lines() if line.get_label() == "p99")
    drawn = [float(y) for y in p99.get_ydata()]
    assert drawn == pytest.approx(
        [b["p99"] / scale if b["count"] else math.nan for b in buckets], nan_ok=True
    )
    redrawn = io.BytesIO()
    figure.savefig(redrawn, format="png")
    assert redrawn.getvalue() == png.read_bytes()


def test_processes_merge_their_results(router: InProcessRouter, tmp_path: Path) -> None:
    report = _run(tmp_path, router, "--duration", "2", "--rate", "400", "--processes", "2", "--no-png", *ARMS)
    workers = [worker["decisions"] for worker in report["workers"]]
    assert len(workers) == 2
    assert all(count > 0 for count in workers)
    assert report["decisions"] == sum(workers)
    # At most the schedule (400/s for 2 s); how close a loaded machine gets to it is the generator's
    # lag, which the report states (generator.max_dispatch_lag_us), not something to assert on here.
    assert report["decisions"] <= 800 * 1.1
    assert report["latency_us"]["count"] == report["decisions"]  # the HDR histograms were merged
    assert report["error_total"] == 0
    assert not (tmp_path / "run.png").exists()


def test_closed_loop_with_drift_and_delayed_rewards(router: InProcessRouter, tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        router,
        "--duration",
        "2",
        "--concurrency",
        "4",
        "--reward-delay",
        "0.5",
        "--drift-at",
        "1",
        "--drift",
        "ranker-v1=0.9",
        "--report-fraction",
        "0.5",
        *ARMS,
    )
    assert report["config"]["mode"] == "closed-loop"
    assert report["decisions"] > 100
    assert report["error_total"] == 0
    assert [phase["start"] for phase in report["config"]["environment"]["phases"]] == [0.0, 1.0]
    assert 0 < report["outcomes"]["reported"] < report["decisions"]
    assert report["outcomes"]["sent_early_at_end"] > 0  # the last 0.5 s of rewards were not due yet
    regret = [row["cumulative_regret"] for row in report["timeline"]]
    assert regret == sorted(regret)


def test_unreachable_router_exits_2_with_a_clear_message(applied_ranker: RedisServer, tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    result = cli(
        "loadtest",
        "--target",
        target,
        "--experiment",
        "ranker",
        "--duration",
        "1",
        "--rate",
        "10",
        "--connect-timeout",
        "1",
        "--json-out",
        str(tmp_path / "never.json"),
        *ARMS,
        redis_url=applied_ranker.url,
        check=False,
    )
    assert result.returncode == 2
    assert f"cannot reach the router at {target}" in result.stderr
    assert not (tmp_path / "never.json").exists()


def test_unknown_experiment_and_bad_flags_exit_2(router: InProcessRouter, tmp_path: Path) -> None:
    base = ("loadtest", "--target", router.address, "--duration", "1", "--rate", "10")
    url = router.settings.redis_url
    result = cli(*base, "--experiment", "nope", *ARMS, redis_url=url, check=False)
    assert result.returncode == 2
    assert "unknown experiment 'nope'" in result.stderr
    result = cli(
        *base,
        "--experiment",
        "ranker",
        "--arm-rate",
        "ranker-v1=2",
        redis_url=url,
        check=False,
    )
    assert result.returncode == 2
    assert "a rate must be in [0, 1]" in result.stderr


def test_arms_the_experiment_does_not_have_are_refused(router: InProcessRouter, tmp_path: Path) -> None:
    """Before: accepted, sending zero rewards to real arms and reporting zero regret."""
    result = cli(
        "loadtest",
        "--target",
        router.address,
        "--experiment",
        "ranker",
        "--duration",
        "1",
        "--rate",
        "10",
        "--json-out",
        str(tmp_path / "never.json"),
        "--arm-rate",
        "ranker-v1=0.1",
        "--arm-rate",
        "zz=0.5",
        redis_url=router.settings.redis_url,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "experiment ranker has no arm 'zz' (arms: ranker-v1, ranker-v2, ranker-v3)" in result.stderr
    assert not (tmp_path / "never.json").exists()
    unreachable = cli(
        "loadtest",
        "--target",
        router.address,
        "--experiment",
        "ranker",
        "--rate",
        "10",
        *ARMS,
        redis_url="redis://127.0.0.1:1/0",
        check=False,
    )
    assert unreachable.returncode == 3
    assert "cannot reach Redis" in unreachable.stderr
