"""`mabrouter report`: the HTML page from a real router's traffic (the estimators behind it:
unit/test_report_estimators.py)."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mabrouter.cli import main
from mabrouter.v1 import router_pb2 as pb

from support import (
    InProcessRouter,
    RedisServer,
    apply_experiments,
    cli,
    open_stub,
    router_settings,
    wait_until,
)

EXPERIMENT = """
name: shop
description: Checkout ranking, three candidates against the current model
reward: bernoulli
control: a
holdout: 20
arms:
  - name: a
  - name: b
    expected: {mean: 0.12, tolerance: 0.05}
  - name: c
  - name: d
    ramp: [{share: 0.3, min_seconds: 3600}, {share: 0.6, min_seconds: 3600}]
guardrails:
  - {metric: error, kind: rate, max_increase: 0.05, probability: 0.95, min_samples: 10}
"""
CLICK_RATE = {"a": 0.12, "b": 0.10, "c": 0.25, "d": 0.12}
ERROR_RATE = {"a": 0.0, "b": 0.0, "c": 0.6, "d": 0.0}
DECISIONS = 1500
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r'<img[^>]*\ssrc="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def keyed(page: str, key: str) -> str:
    """The text of the element the page marks with data-k=KEY."""
    match = re.search(rf'data-k="{re.escape(key)}">([^<]*)<', page)
    assert match, f"no data-k={key} in the page"
    return match.group(1)


def number(text: str) -> float:
    return float(text.replace(",", "").replace("+", ""))


def png_images(page: str) -> list[bytes]:
    images = [base64.b64decode(data, validate=True) for data in IMAGE.findall(page)]
    for image in images:
        assert image.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(image)) as opened:
            opened.verify()
    return images


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<html") == 1
    assert page.rstrip().endswith("</html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page
    assert "<link" not in page
    assert "url(" not in page


@pytest.fixture
def shop(redis_server: RedisServer, tmp_path: Path) -> RedisServer:
    apply_experiments(redis_server.url, tmp_path, EXPERIMENT)
    return redis_server


@pytest.fixture
def shop_router(shop: RedisServer) -> Iterator[InProcessRouter]:
    with InProcessRouter(router_settings(shop.url)).start() as router:
        yield router


def drive_traffic(router: InProcessRouter, rng: np.random.Generator) -> tuple[int, int]:
    """Route DECISIONS requests; report outcomes (with the error metric) for about 90% of them."""
    reported = holdout = 0
    channel, router_stub = open_stub(router.address)
    with channel:
        pending: list[pb.OutcomeRequest] = []
        for i in range(DECISIONS):
            reply = router_stub.Route(pb.RouteRequest(experiment="shop", unit_id=f"user-{i}"), timeout=5)
            holdout += reply.reason == pb.HOLDOUT
            if rng.random() < 0.9:
                reward = float(rng.random() < CLICK_RATE[reply.arm])
                error = float(rng.random() < ERROR_RATE[reply.arm])
                pending.append(
                    pb.OutcomeRequest(decision_id=reply.decision_id, reward=reward, metrics={"error": error})
                )
            if len(pending) == 100 or i == DECISIONS - 1:
                results = router_stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=pending), timeout=5)
                assert all(result.code == 0 for result in results.results), results
                reported += len(pending)
                pending = []
    return reported, holdout


def test_report_of_real_traffic(shop: RedisServer, shop_router: InProcessRouter, tmp_path: Path) -> None:
    reported, holdout = drive_traffic(shop_router, np.random.default_rng(7))
    assert 150 < holdout < 450  # holdout: 20 of 1500 units
    client = shop.client()
    try:
        wait_until(
            lambda: client.xlen("mabrouter:{shop}:decisions") == DECISIONS, 10, what="decisions logged"
        )
        wait_until(lambda: client.xlen("mabrouter:{shop}:outcomes") == reported, 10, what="outcomes logged")
        wait_until(
            lambda: client.hget("mabrouter:{shop}:control", "kill:c") == "1", 10, what="guardrail kills c"
        )
    finally:
        client.close()
    kill = ("kill", "shop", "--arm", "b", "--reason", "b regressed on p99 latency", "--actor", "alice")
    cli(*kill, redis_url=shop.url)
    out = tmp_path / "reports" / "shop.html"
    result = cli("report", "shop", "--out", str(out), redis_url=shop.url)
    assert f"wrote {out}" in result.stderr
    page = out.read_text(encoding="utf-8")

    assert_self_contained(page)
    assert len(png_images(page)) >= 4
    assert page.index("<img") < page.index("<table")  # pictures first
    # header: badges for the kills, the ramp, the holdout
    for badge in ("c killed by guardrail", "b killed", "d ramp: step 1 of 2", "holdout 20%", "bernoulli"):
        assert badge in page
    # audit trail, newest first: the operator's kill, then the guardrail's
    assert page.index("b regressed on p99 latency") < page.index("auto-kill")
    assert "alice" in page
    assert "error: rate" in page  # the guardrail's evidence

    status = json.loads(cli("status", "shop", "--json", redis_url=shop.url).stdout)
    assert keyed(page, "srm-p") == f"{status['srm']['p_value']:.4g}"
    assert keyed(page, "holdout-srm-p") == f"{status['holdout_srm']['p_value']:.4g}"

    # the holdout comparison and the IPW table, recomputed here from `mabrouter export`
    exported = cli("export", "shop", redis_url=shop.url).stdout.splitlines()
    rows = [json.loads(line) for line in exported]
    assert len(rows) == DECISIONS

    def reward(row: dict[str, str]) -> float:
        return float(row["reward"]) if row["rewarded"] == "1" else 0.0  # conversion style

    held = [reward(r) for r in rows if r["reason"] == "HOLDOUT"]
    bandit = [reward(r) for r in rows if r["reason"] in ("SAMPLED", "STICKY")]
    assert number(keyed(page, "holdout-n")) == len(held) == holdout
    assert number(keyed(page, "bandit-n")) == len(bandit)
    assert number(keyed(page, "holdout-mean")) == pytest.approx(sum(held) / len(held), abs=6e-5)
    assert number(keyed(page, "bandit-mean")) == pytest.approx(sum(bandit) / len(bandit), abs=6e-5)
    difference = sum(bandit) / len(bandit) - sum(held) / len(held)
    assert number(keyed(page, "holdout-diff")) == pytest.approx(difference, abs=6e-5)
    assert number(keyed(page, "holdout-ci-low")) < difference < number(keyed(page, "holdout-ci-high"))

    counted = [r for r in rows if r["counted"] == "1"]
    for arm in ("a", "b", "c", "d"):
        served = [r for r in counted if r["arm"] == arm]
        ips = sum(reward(r) / float(r["propensity"]) for r in served) / len(counted)
        weights = sum(1 / float(r["propensity"]) for r in served)
        assert number(keyed(page, f"ipw-{arm}-ips")) == pytest.approx(ips, abs=6e-5)
        if served:
            snips = sum(reward(r) / float(r["propensity"]) for r in served) / weights
            assert number(keyed(page, f"ipw-{arm}-snips")) == pytest.approx(snips, abs=6e-5)
    assert "Inverse-propensity-weighted" in page
    assert "count as reward 0" in page  # the conversion-style choice is written down


def test_an_unknown_experiment_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / "nope.html"
    result = cli("report", "nope", "--out", str(out), redis_url=redis_server.url, check=False)
    assert result.returncode == 2
    assert "unknown experiment 'nope'" in result.stderr
    assert not out.exists()


def test_an_experiment_without_traffic_still_renders(shop: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    cli("report", "shop", "--out", str(out), redis_url=shop.url)
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert len(png_images(page)) >= 4
    assert "no data yet" in page
    assert 'class="banner"' not in page


def test_a_sample_ratio_mismatch_gets_a_loud_banner(shop: RedisServer, tmp_path: Path) -> None:
    client = shop.client()
    try:  # sampling served `a` twice what the allocations expected
        client.hset(
            "mabrouter:{shop}:stats",
            mapping={"a:sampled": 1000, "a:expected": 500, "b:sampled": 500, "b:expected": 1000},
        )
    finally:
        client.close()
    out = tmp_path / "srm.html"
    cli("report", "shop", "--out", str(out), redis_url=shop.url)
    page = out.read_text(encoding="utf-8")
    assert 'class="banner">SAMPLE RATIO MISMATCH in the traffic split' in page
    assert page.index('class="banner"') < page.index("<img")
    assert float(keyed(page, "srm-p")) < 0.001


def test_without_matplotlib_the_command_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main(["report", "shop", "--out", "x.html"]) == 2
    assert "pip install 'mabrouter[report]'" in capsys.readouterr().err
