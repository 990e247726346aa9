"""Contextual experiments in the calibration suite: the numbers a contextual experiment shows, held against
the truth of a simulated world whose rates are linear in the features (issue 17's method, issue 16's policy).

Each seed runs a 3-arm Bernoulli experiment with a `contextual:` block (a standardized number and a 3-valued
string) whose true rate for arm a at context x is exactly theta_a . x. As in `simulate`, every request is
decided by `core.decide.decide` from a state `build_experiment_state` built on the sums so far, counted by
the runtime's `TrialBuffer` (trials, sampled counts, each decision's own allocation as expected counts, and
its x x^T), and answered from the truth; the batch's x x^T and each reward's r x are then added to the sums
as the store's scripts add them.

Held against the truth:
- the sample-ratio check, from the counts routers write: alarms (p < 0.001) on healthy runs at its nominal
  rate, so a contextual experiment's split is checked like any other's;
- the logged propensities: inverse-propensity-weighted value of always serving each arm (SAMPLED rows), an
  unbiased estimate of E_x[theta_a . x] over the traffic;
- the 95 % credible bands of each arm's predicted reward that `report` draws: how often they cover the
  true rate, at every region and three loads. Measured over 400 seeds (10 batches of 150): 93.9 % of 10,800
  bands (nominal 95 %): slightly narrow, as bands from adaptively collected data with one pooled noise
  variance for rates between 0.2 and 0.6 tend to be. The SRM check raised no alarm in 400 runs and the IPW
  values were unbiased (mean error -0.007, z -0.95).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mabrouter.calibration.measures import Bias, Rate, bias
from mabrouter.calibration.scenarios import Size
from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.evidence import sample_ratio_check
from mabrouter.core.features import FeatureEncoder
from mabrouter.core.linear import LinearSums
from mabrouter.core.model import (
    ArmSpec,
    ArmStats,
    AttributeValue,
    BetaPrior,
    CategoricalFeature,
    ContextualSpec,
    ExperimentSpec,
    NumericFeature,
    Reason,
    RewardKind,
)
from mabrouter.core.snapshot import Snapshot, build_experiment_state
from mabrouter.runtime.trials import TrialBuffer

REGIONS = ("eu", "us", "apac")
CONTEXT = ContextualSpec(
    (NumericFeature("load", "standardize", mean=50.0, scale=20.0), CategoricalFeature("region", REGIONS))
)
SPEC = ExperimentSpec(
    "contextual",
    RewardKind.BERNOULLI,
    "a",
    tuple(ArmSpec(arm, BetaPrior()) for arm in ("a", "b", "c")),
    contextual=CONTEXT,
)
# True coefficients per arm on (intercept, load, region=eu, region=us, region=apac); `load` is drawn within
# 2 sd of its mean, so every rate stays inside [0.05, 0.95]: the world is exactly linear.
THETA = np.array(
    [
        [0.40, 0.10, 0.00, 0.05, -0.05],
        [0.45, -0.08, 0.05, -0.05, 0.00],
        [0.35, 0.00, -0.05, 0.10, 0.15],
    ]
)


# Contexts the report's bands are checked at: every region at low, middle and high load. Coefficients one
# by one are not: the one-hot columns of every listed value plus the intercept are collinear when all
# traffic has a listed value, so only their sums (the predictions) are identified; the ridge prior
# settles the rest, and `status` shows that split.
PROBES = np.array(
    [
        [1.0, z, *(1.0 if r == region else 0.0 for r in REGIONS)]
        for z in (-1.5, 0.0, 1.5)
        for region in REGIONS
    ]
)
Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class ContextualReport:
    srm_alarms: Rate  # healthy runs whose traffic-split check alarms (p < 0.001, as status warns)
    ipw: Bias  # IPW value of always serving an arm, against the truth (every arm, every seed)
    coverage: Rate  # the report's 95 % bands of an arm's predicted reward covering the true rate

    def as_json(self) -> dict[str, object]:
        return {
            "srm_alarms": self.srm_alarms.as_json(),
            "ipw": self.ipw.as_json(),
            "coverage": self.coverage.as_json(),
        }


def _request(rng: np.random.Generator, unit: int) -> RouteInput:
    attributes: dict[str, AttributeValue] = {
        "load": float(rng.uniform(10.0, 90.0)),
        "region": REGIONS[int(rng.integers(0, 3))],
    }
    return RouteInput("contextual", f"u{unit}", attributes)


def _run(seed: int, size: Size) -> tuple[bool, list[float], list[float], list[bool]]:
    """One healthy run: (SRM alarm, IPW estimates, true values, band coverage) for every arm."""
    rng, world = np.random.default_rng(seed), np.random.default_rng(10_000 + seed)
    encoder = FeatureEncoder(CONTEXT)
    d, k = encoder.dimension, len(SPEC.arms)
    xx, rx, rr = np.zeros((k, d, d)), np.zeros((k, d)), np.zeros(k)
    trials, sampled, expected = np.zeros(k), np.zeros(k), np.zeros(k)
    weighted, rows, truth = np.zeros(k), 0, np.zeros(k)
    names = [arm.name for arm in SPEC.arms]
    for batch in range(size.batches):
        sums = tuple(LinearSums(xx[a].copy(), rx[a].copy(), float(rr[a])) for a in range(k))
        stats = tuple(ArmStats(trials=trials[a]) for a in range(k))
        state = build_experiment_state(SPEC, 1, stats, linear_sums=sums)
        snapshot, buffer = Snapshot({"contextual": state}, loaded_at=0.0), TrialBuffer()
        for i in range(size.batch_size):
            request = _request(world, batch * size.batch_size + i)
            decision = decide(request, snapshot, rng)
            buffer.record("contextual", decision, state, request.unit_id)
            arm = names.index(decision.arm)
            assert decision.context is not None  # every decision of this world is sampled
            rates = THETA @ decision.context.vector
            reward = float(world.random() < rates[arm])
            rx[arm] += reward * decision.context.vector
            rr[arm] += reward
            truth += rates
            if decision.reason is Reason.SAMPLED:
                weighted[arm] += reward / decision.propensity
                rows += 1
        counts = buffer.drain(0)["contextual"]
        for a, name in enumerate(names):
            trials[a] += counts.trials.get(name, 0.0)
            sampled[a] += counts.sampled.get(name, 0.0)
            expected[a] += counts.expected.get(name, 0.0)
            found = counts.contextual.get((encoder.signature, name))
            if found is not None:
                xx[a] += found
    check = sample_ratio_check(sampled.tolist(), expected.tolist())
    total = size.batches * size.batch_size
    covered = []
    final = build_experiment_state(
        SPEC,
        1,
        tuple(ArmStats(trials=trials[a]) for a in range(k)),
        linear_sums=tuple(LinearSums(xx[a], rx[a], float(rr[a])) for a in range(k)),
    ).contextual
    assert final is not None
    for a in range(k):
        means, sds = final.posteriors[a].predict(PROBES)
        truths = PROBES @ THETA[a]
        covered += [bool(abs(m - t) <= Z95 * sd) for m, t, sd in zip(means, truths, sds, strict=True)]
    alarm = check is not None and check.mismatch
    return alarm, list(weighted / max(rows, 1)), list(truth / total), covered


def contextual(size: Size) -> ContextualReport:
    alarms, estimates, truths, covered = 0, [], [], []
    for seed in range(size.seeds):
        alarm, found, true, hits = _run(seed, size)
        alarms += alarm
        estimates += found
        truths += true
        covered += hits
    return ContextualReport(
        srm_alarms=Rate(alarms, size.seeds, 0.001),
        ipw=bias(estimates, truths),
        coverage=Rate(sum(covered), len(covered), 0.95),
    )
