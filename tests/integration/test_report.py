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
from typing import Any

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


def figure_ids(page: str) -> set[str]:
    return set(re.findall(r'<figure id="figure-([a-z]+)"', page))


def section_ids(page: str) -> set[str]:
    return set(re.findall(r'<section id="([a-z]+)"', page))


def percent(text: str) -> float:
    return float(text.rstrip("%")) / 100


def assert_lift_matches_status(page: str, status: dict[str, Any]) -> None:
    """The lift section shows `mabrouter status --json`'s numbers: the same estimator on the same stored
    posteriors. Each command draws its own 20,000 samples, so they agree within Monte Carlo noise: over 200
    seeds on posteriors like these, the lift and the lower bound moved by 0.3% of the interval's width at
    most (sd 0.2%), the heavy-tailed upper bound by up to 6%. A different estimator (the mean of the ratio
    draws instead of the ratio of the means) is off by 5 to 10% of the width in the lift."""
    compared = [arm for arm in status["arms"] if arm["arm"] != status["control"]]
    assert compared
    tolerance = {"lift": 0.015, "lift-low": 0.015, "lift-high": 0.12}  # of the interval's width
    for arm in compared:
        name = arm["arm"]
        assert float(keyed(page, f"p-beats-{name}")) == pytest.approx(arm["p_beats_control"], abs=0.02)
        if arm["lift_vs_control"] is None:
            assert keyed(page, f"lift-{name}") == "-"
            continue
        width = arm["lift_ci_high"] - arm["lift_ci_low"]
        assert width > 0
        for key, field in (
            ("lift", "lift_vs_control"),
            ("lift-low", "lift_ci_low"),
            ("lift-high", "lift_ci_high"),
        ):
            shown = percent(keyed(page, f"{key}-{name}"))  # printed to 0.01%: 5e-5 of rounding
            assert shown == pytest.approx(arm[field], abs=tolerance[key] * width + 5e-5), (name, key)


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
    assert_lift_matches_status(page, status)
    assert {"lift", "holdout"} <= figure_ids(page)  # a holdout with data: its panel is drawn
    assert {"lift", "holdout", "srm", "ipw", "guardrails", "audit"} <= section_ids(page)
    assert 'id="omitted"' not in page  # every panel had something to show

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

    sampled = [r for r in rows if r["reason"] == "SAMPLED"]  # IPW weighs what sampling drew
    for arm in ("a", "b", "c", "d"):
        served = [r for r in sampled if r["arm"] == arm]
        ips = sum(reward(r) / float(r["propensity"]) for r in served) / len(sampled)
        weights = sum(1 / float(r["propensity"]) for r in served)
        assert number(keyed(page, f"ipw-{arm}-ips")) == pytest.approx(ips, abs=6e-5)
        if served:
            snips = sum(reward(r) / float(r["propensity"]) for r in served) / weights
            assert number(keyed(page, f"ipw-{arm}-snips")) == pytest.approx(snips, abs=6e-5)
    assert "Inverse-propensity-weighted" in page
    assert "count as reward 0" in page  # the conversion-style choice is written down


def test_the_lift_is_the_one_status_shows(shop: RedisServer, tmp_path: Path) -> None:
    """On stored statistics with tight posteriors, where Monte Carlo noise is a small part of the interval:
    a lift 5% off (0.01 here) is far outside the tolerance (about 0.002)."""
    conversions = {"a": 2000, "b": 2400, "c": 1700, "d": 2000}  # of 20,000 trials each
    client = shop.client()
    try:
        for arm, successes in conversions.items():
            fields = {"trials": 20_000, "count": 20_000, "sum": successes, "sumsq": successes}
            client.hset("mabrouter:{shop}:stats", mapping={f"{arm}:{k}": v for k, v in fields.items()})
    finally:
        client.close()
    out = tmp_path / "lift.html"
    cli("report", "shop", "--out", str(out), redis_url=shop.url)
    page = out.read_text(encoding="utf-8")
    status = json.loads(cli("status", "shop", "--json", redis_url=shop.url).stdout)
    assert_lift_matches_status(page, status)
    assert percent(keyed(page, "lift-b")) == pytest.approx(0.2, abs=0.01)  # 12% against 10%
    assert float(keyed(page, "p-beats-b")) > 0.999
    assert percent(keyed(page, "lift-high-c")) < 0  # 8.5% against 10%: worse, and sure of it
    assert "lift" in figure_ids(page)


def test_an_unknown_experiment_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / "nope.html"
    result = cli("report", "nope", "--out", str(out), redis_url=redis_server.url, check=False)
    assert result.returncode == 2
    assert "unknown experiment 'nope'" in result.stderr
    assert not out.exists()


def test_an_experiment_without_traffic_shows_only_what_it_has(shop: RedisServer, tmp_path: Path) -> None:
    """Before: empty boxes saying "no data yet" for traffic, reward and the holdout."""
    out = tmp_path / "empty.html"
    cli("report", "shop", "--out", str(out), redis_url=shop.url)
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert figure_ids(page) == {"posteriors", "values", "guardrails"}  # priors, and the guardrail to watch
    assert len(png_images(page)) == 3
    assert section_ids(page) == {"pictures", "omitted", "arms", "guardrails", "audit"}
    assert "no data yet" not in page
    assert "Bandit vs holdout (chart), Holdout comparison: fewer than 2 holdout or bandit decisions" in page
    assert (
        "Lift against the control (chart), Lift against the control: no trials on the control arm a yet"
        in page
    )
    assert 'class="banner"' not in page


GAUSSIAN = """
name: basket
description: Basket value; the control's mean is about 0, so a relative lift means nothing
reward: gaussian
control: a
arms:
  - name: a
  - name: b
"""


def test_no_holdout_panel_without_a_holdout_and_no_lift_around_a_zero_mean(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    apply_experiments(redis_server.url, tmp_path, GAUSSIAN)
    rng = np.random.default_rng(11)
    with InProcessRouter(router_settings(redis_server.url)).start() as router:
        channel, router_stub = open_stub(router.address)
        with channel:
            outcomes = []
            for i in range(300):
                reply = router_stub.Route(pb.RouteRequest(experiment="basket", unit_id=f"u{i}"), timeout=5)
                reward = float(rng.normal(0.0 if reply.arm == "a" else 0.3, 1.0))
                outcomes.append(pb.OutcomeRequest(decision_id=reply.decision_id, reward=reward))
            for first in range(0, len(outcomes), 100):
                batch = pb.ReportOutcomesRequest(outcomes=outcomes[first : first + 100])
                assert all(r.code == 0 for r in router_stub.ReportOutcomes(batch, timeout=5).results)
        client = redis_server.client()
        try:
            wait_until(lambda: client.xlen("mabrouter:{basket}:outcomes") == 300, 10, what="outcomes logged")
        finally:
            client.close()
    out = tmp_path / "basket.html"
    cli("report", "basket", "--out", str(out), redis_url=redis_server.url)
    page = out.read_text(encoding="utf-8")
    status = json.loads(cli("status", "basket", "--json", redis_url=redis_server.url).stdout)

    assert "holdout" not in figure_ids(page) | section_ids(page)
    assert "Bandit vs holdout (chart), Holdout comparison: no holdout configured (holdout: 0)" in page
    (b,) = [arm for arm in status["arms"] if arm["arm"] == "b"]
    assert b["lift_vs_control"] is None  # status agrees: the control's draws cross 0
    assert_lift_matches_status(page, status)
    assert "lift undefined: the control&#x27;s mean may be zero or negative" in page
    assert {"lift", "traffic", "reward", "values"} <= figure_ids(page)


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
