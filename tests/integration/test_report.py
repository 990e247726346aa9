"""`mabrouter report`: the HTML page from a real router's traffic, and the estimators behind it."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mabrouter.cli import main
from mabrouter.core.model import RewardKind
from mabrouter.reporting.charts import beta_pdf, bucket_width_ms, student_t_pdf
from mabrouter.reporting.estimators import holdout_difference, ipw_estimates
from mabrouter.v1 import router_pb2 as pb

from support import InProcessRouter, RedisServer, cli, router_settings, stub, wait_until

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
    path = tmp_path / "shop.yaml"
    path.write_text(EXPERIMENT)
    cli("experiment", "apply", str(path), redis_url=redis_server.url)
    return redis_server


@pytest.fixture
def shop_router(shop: RedisServer) -> Iterator[InProcessRouter]:
    router = InProcessRouter(router_settings(shop.url)).start()
    try:
        yield router
    finally:
        router.stop()


def drive_traffic(router: InProcessRouter, rng: np.random.Generator) -> tuple[int, int]:
    """Route DECISIONS requests; report outcomes (with the error metric) for about 90% of them."""
    reported = holdout = 0
    channel, router_stub = stub(router.address)
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


# --- the estimators, on synthetic data with a known truth ------------------------------------------------


def test_ipw_recovers_arm_values_that_the_naive_mean_gets_wrong() -> None:
    """Rewards and the policy both change halfway: the naive mean over-weights the phase where an arm was
    favoured; IPS and SNIPS recover the value over the whole population of decisions."""
    rng = np.random.default_rng(1)
    n = 40_000
    late = np.arange(n) >= n // 2
    propensity = np.where(late[:, None], [0.1, 0.9], [0.9, 0.1])
    rates = np.where(late[:, None], [0.2, 0.1], [0.6, 0.4])
    arm = (rng.random(n) >= propensity[:, 0]).astype(np.int64)
    reward = (rng.random(n) < rates[np.arange(n), arm]).astype(np.float64)
    served = propensity[np.arange(n), arm]
    truth = {"x": 0.4, "y": 0.25}

    estimates, dropped = ipw_estimates(("x", "y"), arm, served, reward)

    assert dropped == 0
    for estimate in estimates:
        assert abs(estimate.ips - truth[estimate.arm]) < 4 * estimate.ips_se
        assert abs(estimate.snips - truth[estimate.arm]) < 4 * estimate.snips_se
        assert abs(estimate.naive_mean - truth[estimate.arm]) > 0.1
        assert estimate.max_weight == pytest.approx(10.0)
    assert [e.served for e in estimates] == [int((arm == 0).sum()), int((arm == 1).sum())]


def test_ipw_standard_errors_match_the_spread_of_the_estimates() -> None:
    rng = np.random.default_rng(2)
    p, rates, n = np.array([0.7, 0.3]), np.array([0.3, 0.5]), 2000
    ips, ses, snips, snips_ses = [], [], [], []
    for _ in range(300):
        arm = (rng.random(n) >= p[0]).astype(np.int64)
        reward = (rng.random(n) < rates[arm]).astype(np.float64)
        estimate = ipw_estimates(("x", "y"), arm, p[arm], reward)[0][1]
        ips.append(estimate.ips)
        ses.append(estimate.ips_se)
        snips.append(estimate.snips)
        snips_ses.append(estimate.snips_se)
    assert np.mean(ips) == pytest.approx(0.5, abs=0.005)
    assert np.std(ips) == pytest.approx(np.mean(ses), rel=0.15)
    assert np.std(snips) == pytest.approx(np.mean(snips_ses), rel=0.15)


def test_ipw_drops_decisions_without_propensity_or_reward() -> None:
    arm = np.array([0, 0, 1, 1], dtype=np.int64)
    propensity = np.array([0.5, 0.0, 0.5, np.nan])
    reward = np.array([1.0, 1.0, np.nan, 0.0])
    estimates, dropped = ipw_estimates(("x", "y"), arm, propensity, reward)
    assert dropped == 3
    assert estimates[0].ips == pytest.approx(2.0)  # one decision left: 1 / 0.5
    assert estimates[1].served == 0
    assert math.isnan(estimates[1].naive_mean)


def test_holdout_difference_bernoulli_known_truth() -> None:
    rng = np.random.default_rng(3)
    held = (rng.random(20_000) < 0.10).astype(np.float64)
    bandit = (rng.random(80_000) < 0.13).astype(np.float64)
    found = holdout_difference(held, bandit, RewardKind.BERNOULLI, rng)
    assert found is not None
    assert (found.holdout_n, found.bandit_n) == (20_000, 80_000)
    assert found.difference == pytest.approx(bandit.mean() - held.mean())
    assert found.ci_low < 0.03 < found.ci_high
    assert found.ci_low > 0
    assert found.p_bandit_better > 0.99
    se = math.sqrt(0.1 * 0.9 / 20_000 + 0.13 * 0.87 / 80_000)
    assert found.ci_high - found.ci_low == pytest.approx(2 * 1.96 * se, rel=0.05)


def test_holdout_difference_intervals_cover_the_truth_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(4)
    covered = 0
    for _ in range(400):
        held = (rng.random(300) < 0.2).astype(np.float64)
        bandit = (rng.random(1200) < 0.25).astype(np.float64)
        found = holdout_difference(held, bandit, RewardKind.BERNOULLI, rng)
        assert found is not None
        covered += found.ci_low <= 0.05 <= found.ci_high
    assert 0.92 <= covered / 400 <= 0.98


def test_holdout_difference_gaussian_normal_approximation() -> None:
    rng = np.random.default_rng(5)
    held = rng.normal(1.0, 2.0, 5000)
    bandit = np.concatenate([rng.normal(1.3, 2.0, 20_000), [np.nan] * 50])  # no outcome: left out
    found = holdout_difference(held, bandit, RewardKind.GAUSSIAN, rng)
    assert found is not None
    assert found.bandit_n == 20_000
    se = math.sqrt(held.var(ddof=1) / 5000 + np.nanvar(bandit, ddof=1) / 20_000)
    assert found.ci_low == pytest.approx(found.difference - 1.96 * se, rel=1e-3)
    assert found.ci_low < 0.3 < found.ci_high
    assert found.p_bandit_better > 0.99


def test_holdout_difference_needs_both_groups() -> None:
    rng = np.random.default_rng(6)
    assert holdout_difference(np.array([]), np.ones(10), RewardKind.BERNOULLI, rng) is None
    assert holdout_difference(np.ones(10), np.array([1.0]), RewardKind.GAUSSIAN, rng) is None


def test_densities_integrate_to_one() -> None:
    x = np.linspace(1e-6, 1 - 1e-6, 200_001)
    for alpha, beta in ((1.0, 1.0), (3.0, 40.0), (120.5, 880.5)):
        density = beta_pdf(x, alpha, beta)
        assert np.trapezoid(density, x) == pytest.approx(1.0, abs=1e-3)
        assert np.trapezoid(x * density, x) == pytest.approx(alpha / (alpha + beta), abs=1e-4)
    t = np.linspace(-60, 60, 400_001)
    density = student_t_pdf(t, 2.0, 0.5, 7.0)
    assert np.trapezoid(density, t) == pytest.approx(1.0, abs=1e-4)
    assert np.trapezoid(t * density, t) == pytest.approx(2.0, abs=1e-4)


def test_buckets_are_round_and_few() -> None:
    assert bucket_width_ms(3_000) == 100
    assert bucket_width_ms(86_400_000) == 3_600_000
    assert 86_400_000 * 30 / bucket_width_ms(86_400_000 * 30) <= 40
