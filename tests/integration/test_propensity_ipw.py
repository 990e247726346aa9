"""Logged propensities are the probabilities the policy really had, so off-policy (IPW) estimates work.

Every decision carries the propensity of its arm: the arm's probability of winning the Thompson draw,
estimated once per snapshot from M = 4,000 joint posterior draws with add-1/2 smoothing,
p = (wins + 1/2) / (M + k/2) for k live arms, and (decision 0019) the arm is drawn from exactly those
probabilities. Three checks, from the pure core to the whole system:

1. Pure core, one frozen snapshot, 50,000 decisions: observed arm counts against the logged propensities
   (plain Pearson: the draw uses the logged values themselves), and a side check of the estimate against
   the exact win probabilities, computed by numerical integration.
2. The real router, with posteriors frozen by huge seeded statistics: observed shares in the exposure log
   against the mean logged propensity per arm.
3. IPW through the real router: known Bernoulli truths, adaptive Thompson sampling with every outcome
   reported, and the (self-normalised) inverse-propensity estimate of each arm's mean from `mabrouter export`.

Every statistical assertion uses a false-alarm probability of ALPHA = 1e-4 (or 4 standard errors).
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.model import ArmSpec, ArmStats, BetaPrior, ExperimentSpec, Reason, RewardKind
from mabrouter.core.snapshot import Snapshot, build_experiment_state
from mabrouter.core.thompson import PROPENSITY_DRAWS
from mabrouter.v1 import router_pb2 as pb

from support import RedisServer, RouterProcess, cli, free_port, open_stub, wait_until
from wire import nonce_of

ALPHA = 1e-4
M = PROPENSITY_DRAWS
EXPERIMENT = "ranker"
ARMS = ("ranker-v1", "ranker-v2", "ranker-v3")
STATS_KEY = f"mabrouter:{{{EXPERIMENT}}}:stats"
DECISIONS_KEY = f"mabrouter:{{{EXPERIMENT}}}:decisions"
OUTCOMES_KEY = f"mabrouter:{{{EXPERIMENT}}}:outcomes"
FloatArray = npt.NDArray[np.float64]


# --- statistics ------------------------------------------------------------------------------------------


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with integer `df` degrees of freedom (closed forms)."""
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        term = total = math.exp(-half)
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return total
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(2 * x / math.pi) * math.exp(-half)
    for i in range(1, (df + 1) // 2):
        total += term
        term *= x / (2 * i + 1)
    return total


def test_chi2_sf_matches_known_critical_values() -> None:
    # Tabulated upper-tail critical values: (df, x, P(X >= x)).
    for df, x, p in [
        (1, 3.841, 0.05),
        (2, 5.991, 0.05),
        (3, 16.266, 0.001),
        (4, 13.277, 0.01),
        (5, 20.515, 0.001),
    ]:
        assert chi2_sf(x, df) == pytest.approx(p, rel=2e-3)


def exact_win_probabilities(alpha: FloatArray, beta: FloatArray, grid: int = 20_001) -> FloatArray:
    """P(arm i has the largest draw) for independent Beta(alpha_i, beta_i): the integral over x of
    pdf_i(x) * prod_{j != i} cdf_j(x), by the trapezoid rule on a fine grid (moderate parameters only)."""
    x = np.linspace(0.0, 1.0, grid)[1:-1]
    dx = float(x[1] - x[0])
    log_norm = np.array(
        [math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b) for a, b in zip(alpha, beta, strict=True)]
    )
    pdf = np.exp((alpha[:, None] - 1) * np.log(x) + (beta[:, None] - 1) * np.log1p(-x) - log_norm[:, None])
    cdf = np.concatenate(
        [np.zeros((len(alpha), 1)), np.cumsum((pdf[:, 1:] + pdf[:, :-1]) / 2, axis=1) * dx], axis=1
    )
    wins = [
        np.trapezoid(pdf[i] * np.prod(np.delete(cdf, i, axis=0), axis=0), dx=dx) for i in range(len(alpha))
    ]
    return np.array(wins)


def smoothing_bias_bound(k: int) -> float:
    """max |p - wins/M| over wins in [0, M], for p = (wins + 1/2) / (M + k/2)."""
    return 0.5 * max(1, k - 1) / (M + k / 2)


def observed_vs_logged(observed: Sequence[int], logged: Sequence[float], mc_snapshots: int = 1) -> float:
    """Chi-square statistic of arm counts against N * logged propensity, corrected for the propensity's own
    Monte Carlo error; ~ chi-square(k - 1) when the logged propensities are right.

    Given the true win probabilities q, counts O ~ Multinomial(N, q), covariance N (diag q - q q^T); a
    logged p = wins/M (+ smoothing) with wins ~ Multinomial(M, q) makes N*p vary with covariance
    (N^2/M) (diag q - q q^T), independently. So O - N*p has (1 + N/(M*S)) times the covariance Pearson's
    statistic assumes, where S is the number of independent propensity estimates averaged (1 for one
    snapshot; pass 1 whenever unsure: it only widens the tolerance). The smoothing adds a deterministic
    bias of at most `smoothing_bias_bound(k)` per arm; each |O - N*p| is shrunk by N times that bound
    first, which can only lower the statistic.
    """
    n = sum(observed)
    k = len(observed)
    inflation = 1 + n / (M * mc_snapshots)
    slack = n * smoothing_bias_bound(k)
    statistic = 0.0
    for count, p in zip(observed, logged, strict=True):
        deviation = max(abs(count - n * p) - slack, 0.0)
        statistic += deviation**2 / (n * p)
    return statistic / inflation


# --- 1. pure core ----------------------------------------------------------------------------------------


def test_a_frozen_snapshot_serves_each_arm_as_often_as_its_logged_propensity() -> None:
    names = ("a", "b", "c", "d")
    trials = (200, 240, 220, 260)
    successes = (40, 52, 50, 48)
    spec = ExperimentSpec(
        name="frozen",
        reward=RewardKind.BERNOULLI,
        control="a",
        arms=tuple(ArmSpec(name, BetaPrior()) for name in names),
    )
    stats = tuple(ArmStats(t, s, float(s), float(s)) for t, s in zip(trials, successes, strict=True))
    rng = np.random.default_rng(20_240_601)  # seeded: the test is reproducible; the thresholds stay honest
    state = build_experiment_state(spec, 1, stats)
    snapshot = Snapshot(experiments={"frozen": state}, loaded_at=0.0)
    n = 50_000
    decisions = [decide(RouteInput("frozen", f"unit-{i}"), snapshot, rng) for i in range(n)]

    assert {d.reason for d in decisions} == {Reason.SAMPLED}
    assert all(d.counted for d in decisions)
    logged = {name: {d.propensity for d in decisions if d.arm == name} for name in names}
    assert all(len(values) == 1 for values in logged.values()), logged  # one snapshot: one value per arm
    p = np.array([logged[name].pop() for name in names])
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    # The documented estimator: (wins + 1/2) / (M + k/2) with whole numbers of wins out of M draws.
    wins = p * (M + len(names) / 2) - 0.5
    assert np.allclose(wins, np.round(wins), atol=1e-6), wins
    assert round(wins.sum()) == M

    counts = Counter(d.arm for d in decisions)
    observed = [counts[name] for name in names]
    # The arm is drawn from the logged probabilities themselves: no Monte Carlo slack is needed.
    statistic = sum((o - n * q) ** 2 / (n * q) for o, q in zip(observed, p, strict=True))
    df = len(names) - 1
    p_value = chi2_sf(statistic, df)

    # Side check: the logged estimate against the exact win probabilities of the same Beta posteriors.
    alpha = np.array([1.0 + s for s in successes])
    beta = np.array([1.0 + t - s for t, s in zip(trials, successes, strict=True)])
    exact = exact_win_probabilities(alpha, beta)
    assert exact.sum() == pytest.approx(1.0, abs=1e-5)  # the integration is accurate
    estimate_statistic = sum(M * (w / M - q) ** 2 / q for w, q in zip(np.round(wins), exact, strict=True))
    print(
        f"\npure core: N={n} observed={observed}"
        f"\n  logged={np.round(p, 5).tolist()} exact={np.round(exact, 5).tolist()}"
        f"\n  observed vs logged: chi2={statistic:.2f} df={df} p={p_value:.3g}"
        f"\n  logged vs exact (M={M}): chi2={estimate_statistic:.2f} p={chi2_sf(estimate_statistic, df):.3g}"
    )
    assert p_value > ALPHA
    assert chi2_sf(estimate_statistic, df) > ALPHA


# --- real-router helpers ---------------------------------------------------------------------------------


def route_many(address: str, units: Sequence[str], threads: int = 4) -> list[pb.RouteResponse]:
    """Route one decision per unit over one channel from a few threads; replies in `units` order."""
    channel, router_stub = open_stub(address)
    with channel, ThreadPoolExecutor(threads) as pool:
        return list(
            pool.map(
                lambda unit: router_stub.Route(
                    pb.RouteRequest(experiment=EXPERIMENT, unit_id=unit), timeout=10
                ),
                units,
            )
        )


def flushed_trials(redis_server: RedisServer) -> int:
    client = redis_server.client()
    try:
        return sum(int(v) for k, v in client.hgetall(STATS_KEY).items() if k.endswith(":trials"))
    finally:
        client.close()


def stream_length(redis_server: RedisServer, key: str) -> int:
    client = redis_server.client()
    try:
        return int(client.xlen(key))
    finally:
        client.close()


# --- 2. the real router, frozen posteriors ---------------------------------------------------------------


def test_router_traffic_shares_match_the_mean_logged_propensity(applied_ranker: RedisServer) -> None:
    """Posteriors frozen with 10^9 seeded trials per arm: a posterior's sd is ~9.5e-6, and the ~1,000 extra
    failures each arm gets here move its mean by ~1e-7 (0.01 sd), so every snapshot the router builds while
    the trial counts flush has (almost exactly) the same win probabilities, each estimated afresh."""
    seeded_trials = 10**9
    seeded_successes = {"ranker-v1": 10**8, "ranker-v2": 10**8 + 6_000, "ranker-v3": 10**8 + 12_000}
    client = applied_ranker.client()
    try:
        for arm, successes in seeded_successes.items():
            client.hset(
                STATS_KEY,
                mapping={f"{arm}:trials": seeded_trials, f"{arm}:count": successes, f"{arm}:sum": successes},
            )
    finally:
        client.close()
    router = RouterProcess(applied_ranker.url).wait_serving()
    try:
        n = 3_000
        replies = route_many(router.address, [f"u{i}" for i in range(n)])
        wait_until(
            lambda: stream_length(applied_ranker, DECISIONS_KEY) >= n, 10, what=f"{n} decisions logged"
        )
    finally:
        router.kill()
    client = applied_ranker.client()
    try:
        entries = [fields for _, fields in client.xrange(DECISIONS_KEY)]
    finally:
        client.close()

    assert len(entries) == n
    assert {e["reason"] for e in entries} == {"SAMPLED"}
    assert {e["counted"] for e in entries} == {"1"}
    assert Counter(e["arm"] for e in entries) == Counter(r.arm for r in replies)
    observed = [sum(e["arm"] == arm for e in entries) for arm in ARMS]
    mean_logged = [float(np.mean([float(e["p"]) for e in entries if e["arm"] == arm])) for arm in ARMS]
    total = sum(mean_logged)
    expected_share = [m / total for m in mean_logged]
    snapshots = len({e["p"] for e in entries})
    # Conservatively as if every decision shared one propensity estimate (mc_snapshots=1).
    statistic = observed_vs_logged(observed, expected_share)
    p_value = chi2_sf(statistic, len(ARMS) - 1)
    print(
        f"\nrouter, frozen posteriors: N={n} observed={observed}"
        f" shares={np.round(np.array(observed) / n, 4).tolist()}"
        f"\n  mean logged propensity={np.round(mean_logged, 4).tolist()} (sum {total:.4f}),"
        f" {snapshots} distinct propensity values\n  chi2={statistic:.2f} df=2 p={p_value:.3g}"
    )
    assert total == pytest.approx(1.0, abs=0.05)
    assert all(share > 0.05 for share in expected_share)  # every arm really in play: a meaningful check
    assert p_value > ALPHA


# --- 3. IPW through the real router ----------------------------------------------------------------------


def scrape_arms(metrics_port: int) -> tuple[dict[str, float], float]:
    """(mabrouter_arm_share per arm, total mabrouter_arm_trials) of the router's current snapshot."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    shares: dict[str, float] = {}
    trials = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("experiment") != EXPERIMENT:
                continue
            if sample.name == "mabrouter_arm_share":
                shares[sample.labels["arm"]] = sample.value
            elif sample.name == "mabrouter_arm_trials":
                trials += sample.value
    return shares, trials


def test_ipw_estimates_from_the_exposure_log_recover_the_true_arm_means(applied_ranker: RedisServer) -> None:
    """Adaptive Thompson sampling in 20 rounds of 250 decisions, every outcome drawn from known truths and
    reported; the policy is updated between rounds (batched Thompson sampling).

    The router polls only every 60 s here; the test wakes it with a change notice after each round's trials
    and outcomes are in Redis, so each round is decided from one snapshot whose full propensity vector is
    read from /metrics (mabrouter_arm_share) and checked against every Route reply of the round. Knowing
    every arm's propensity at every decision -- not only the served arm's, which is all the log holds --
    gives each estimator's exact variance given the propensities the policy had, with the true means:

      IPW  (1/N) sum 1[A=a] R / p:      var = (1/N^2) sum_i (mu/p_i - mu^2), plus the propensity's Monte Carlo
                                        error, (1/N^2) sum_rounds n_r^2 mu^2 (1-p_r)/(M p_r)
      SNIPW sum w R / sum w, w=1[A=a]/p: var ~ (1/N^2) sum_i mu(1-mu)/p_i  (delta method; a round's common
                                        Monte Carlo error cancels to first order in the ratio)

    SNIPW must be within 4 of those standard errors. Plain IPW is heavy-tailed once an arm's propensity
    nears the smoothing floor 1/(2M+3) ~ 1.25e-4, where the 4,000-draw estimate is least reliable: a single
    decision can carry weight 8,000. Its tolerance is 4 standard errors plus its single largest term,
    x_max/N. Replaying this exact design 4,500 times with the core's own winners()/win_probabilities()
    (numpy only, no router), the runs in which some arm failed were: SNIPW at 4 SE, 0; IPW at 4 SE, 22
    (0.5%); IPW at 4 SE + x_max/N, 2 (0.04%); IPW at 4 *sample* standard errors (the estimator's sample
    variance), 429 (9.5%) -- the sample variance misses the rare huge weights that dominate the real
    variance, so it is reported below but not asserted.
    """
    truth = {"ranker-v1": 0.25, "ranker-v2": 0.28, "ranker-v3": 0.31}
    rounds, per_round = 20, 250
    n = rounds * per_round
    rng = np.random.default_rng()
    metrics_port = free_port()
    router = RouterProcess(
        applied_ranker.url,
        MABROUTER_REFRESH_INTERVAL_MS="60000",
        MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    ).wait_serving()
    round_of: dict[str, int] = {}
    round_shares: list[dict[str, float]] = []
    try:
        channel, router_stub = open_stub(router.address)
        with channel:
            for r in range(rounds):
                shares, snapshot_trials = scrape_arms(metrics_port)
                assert snapshot_trials == r * per_round, "the snapshot is not the one after the last round"
                round_shares.append(shares)
                replies = route_many(router.address, [f"r{r}-u{i}" for i in range(per_round)])
                for reply in replies:
                    assert reply.reason == pb.SAMPLED
                    assert reply.propensity == shares[reply.arm], "decided from another snapshot"
                    round_of[nonce_of(reply.decision_id)] = r
                rewards = [float(rng.random() < truth[reply.arm]) for reply in replies]
                result = router_stub.ReportOutcomes(
                    pb.ReportOutcomesRequest(
                        outcomes=[
                            pb.OutcomeRequest(decision_id=reply.decision_id, reward=reward)
                            for reply, reward in zip(replies, rewards, strict=True)
                        ]
                    ),
                    timeout=10,
                )
                assert [(x.code, x.duplicate) for x in result.results] == [(0, False)] * per_round
                done = (r + 1) * per_round
                wait_until(lambda d=done: flushed_trials(applied_ranker) == d, 10, what=f"{done} trials")
                client = applied_ranker.client()
                try:
                    client.publish("mabrouter:changes", EXPERIMENT)  # what the CLI sends after a change
                finally:
                    client.close()
                wait_until(
                    lambda d=done: scrape_arms(metrics_port)[1] == d,
                    10,
                    interval=0.02,
                    what="the new snapshot",
                )
        wait_until(lambda: stream_length(applied_ranker, DECISIONS_KEY) >= n, 10, what="decisions logged")
        wait_until(lambda: stream_length(applied_ranker, OUTCOMES_KEY) >= n, 10, what="outcomes logged")
    finally:
        router.kill()

    exported = cli("export", EXPERIMENT, "--since", "1h", "--format", "jsonl", redis_url=applied_ranker.url)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    rows = [row for row in rows if row["counted"] == "1"]
    assert len(rows) == n
    assert all(row["rewarded"] == "1" for row in rows)  # every outcome was reported, rewards of 0 included
    arms = np.array([row["arm"] for row in rows])
    p = np.array([float(row["propensity"]) for row in rows])
    reward = np.array([float(row["reward"]) for row in rows])
    row_round = np.array([round_of[row["decision"]] for row in rows])
    for row, r in zip(rows, row_round, strict=True):
        assert float(row["propensity"]) == round_shares[r][row["arm"]]

    report = [f"\nIPW over N={n} decisions ({rounds} rounds of {per_round}):"]
    for arm, mu in truth.items():
        # This arm's propensity at every decision, whichever arm was served.
        vector = np.array([round_shares[r][arm] for r in row_round])
        chosen = arms == arm
        terms = np.where(chosen, reward / p, 0.0)
        ipw = float(terms.mean())
        weights = np.where(chosen, 1 / p, 0.0)
        snipw = float((weights * reward).sum() / weights.sum())
        per_round_p = np.array([s[arm] for s in round_shares])
        mc_var = float(np.sum(per_round**2 * mu**2 * (1 - per_round_p) / (M * per_round_p)))
        se_ipw = math.sqrt(float(np.sum(mu / vector - mu**2)) + mc_var) / n
        se_snipw = math.sqrt(float(np.sum(mu * (1 - mu) / vector))) / n
        se_sample = float(terms.std(ddof=1)) / math.sqrt(n)
        largest = float(terms.max()) / n
        report.append(
            f"  {arm}: truth {mu:.3f} | IPW {ipw:.4f} (z={(ipw - mu) / se_ipw:+.2f}, se {se_ipw:.4f},"
            f" sample-se {se_sample:.4f}, largest term {largest:.4f}) | SNIPW {snipw:.4f}"
            f" (z={(snipw - mu) / se_snipw:+.2f}, se {se_snipw:.4f}) | served {int(chosen.sum())},"
            f" naive mean {reward[chosen].mean():.4f}, propensity {vector.min():.4f}..{vector.max():.4f}"
        )
        assert abs(snipw - mu) <= 4 * se_snipw, (arm, snipw, mu, se_snipw)
        assert abs(ipw - mu) <= 4 * se_ipw + largest, (arm, ipw, mu, se_ipw, largest)
    print("\n".join(report))
