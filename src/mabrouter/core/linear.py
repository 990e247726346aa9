"""Bayesian linear regression of one arm's reward on the context, from sums any replica can add to.

Per arm the store keeps S = sum(x x^T) over the arm's counted decisions, b = sum(r x) and q = sum(r^2)
over their rewards (conversion style, as for trial counts: a decision without an outcome is a reward of
0). With a ridge prior theta ~ N(0, sigma^2 / lambda I) and an Inverse-Gamma(a0, b0) prior on the noise
variance sigma^2 (the Normal-Inverse-Gamma model):

    A = lambda I + S          mu = A^-1 b          n = S[0, 0] (the intercept column is 1: decisions)
    a_n = a0 + n / 2          b_n = b0 + (q - b . mu) / 2          sigma^2 ~= b_n / a_n

and the coefficients' posterior is taken as N(mu, sigma^2 A^-1) with sigma^2 at its estimate (the
Student-t it really is has 2 a_n degrees of freedom: normal within a few hundred decisions). Everything
here runs when the statistics change, never per request; per request a score x . theta is then a 1-D
normal with mean x . mu and variance x^T Sigma x (core/linear_policy.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mabrouter.core.model import RewardKind
from mabrouter.core.posterior import FloatArray

# The noise prior: weight a0 (two pseudo-observations) and a variance guess b0 / a0. A Bernoulli reward's
# variance is at most 1/4; a gaussian reward's scale is unknown, so 1 (MABWiser's LinTS default scale).
NOISE_PRIOR_SHAPE = 1.0
NOISE_PRIOR_VARIANCE = {RewardKind.BERNOULLI: 0.25, RewardKind.GAUSSIAN: 1.0}
# Rewards are within 1e100 and features within 1e6 (core/outcome.py, core/features.py): coefficients far
# beyond can only come from edited sums, and per request a score x . mu must stay far from float range.
MAX_ABS_COEFFICIENT = 1e150


@dataclass(frozen=True, slots=True)
class LinearSums:
    """One arm's sufficient statistics as stored: xx = sum x x^T (symmetric), rx = sum r x, rr = sum r^2."""

    xx: FloatArray
    rx: FloatArray
    rr: float = 0.0

    @property
    def decisions(self) -> float:
        return float(self.xx[0, 0]) if self.xx.size else 0.0

    @staticmethod
    def empty(dimension: int) -> LinearSums:
        return LinearSums(np.zeros((dimension, dimension)), np.zeros(dimension), 0.0)

    @staticmethod
    def of(vectors: FloatArray, rewards: FloatArray) -> LinearSums:
        """The sums of rows `vectors` with `rewards` (0 for a decision without an outcome)."""
        return LinearSums(vectors.T @ vectors, vectors.T @ rewards, float(rewards @ rewards))


@dataclass(frozen=True, slots=True)
class LinearPosterior:
    """N(mean, covariance) over one arm's coefficients; `factor` F has F F^T = covariance."""

    mean: FloatArray
    covariance: FloatArray
    factor: FloatArray
    noise_variance: float
    decisions: float

    def predict(self, vectors: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Mean and standard deviation of the expected reward x . theta for each row of `vectors`."""
        variance = np.einsum("ij,jk,ik->i", vectors, self.covariance, vectors)
        return vectors @ self.mean, np.sqrt(np.maximum(variance, 0.0))

    def draw(self, rng: np.random.Generator, size: int) -> FloatArray:
        """`size` coefficient vectors drawn from the posterior (rows)."""
        standard = rng.standard_normal((size, self.mean.shape[0]))
        drawn: FloatArray = self.mean + standard @ self.factor.T
        return drawn

    def intervals(self, z: float = 1.959963984540054) -> tuple[FloatArray, FloatArray]:
        """Each coefficient's central credible interval (95 % by default): (low, high)."""
        half = z * np.sqrt(np.diag(self.covariance))
        return self.mean - half, self.mean + half


def linear_posterior(sums: LinearSums, prior_precision: float, reward: RewardKind) -> LinearPosterior:
    """The posterior of one arm. ValueError, naming what is wrong, when the sums cannot be one: they are
    data in Redis that anyone may edit (a matrix that is not positive semi-definite, non-finite values)."""
    d = sums.rx.shape[0]
    if sums.xx.shape != (d, d) or not (np.all(np.isfinite(sums.xx)) and np.all(np.isfinite(sums.rx))):
        raise ValueError("the sums are not finite numbers of matching dimensions")
    precision = sums.xx + prior_precision * np.eye(d)
    try:
        lower = np.linalg.cholesky(precision)  # A = L L^T
    except np.linalg.LinAlgError as exc:
        raise ValueError("sum(x x^T) is not positive semi-definite (edited by hand?)") from exc
    # Sums near float range (edited by hand) overflow below: refused after, by the finiteness check.
    with np.errstate(over="ignore", invalid="ignore"):
        lower_inverse = np.linalg.solve(lower, np.eye(d))  # L^-1; A^-1 = L^-T L^-1
        inverse = lower_inverse.T @ lower_inverse
        mean = inverse @ sums.rx
        fit = float(sums.rx @ mean)
        shape = NOISE_PRIOR_SHAPE + sums.decisions / 2.0
        # q - b . mu is the ridge regression's residual sum of squares: >= 0 when the sums are
        # consistent; rewards arriving before their decisions' x x^T is flushed (or an edit) may leave
        # it slightly below.
        residual = max(sums.rr - fit, 0.0)
        noise = (NOISE_PRIOR_SHAPE * NOISE_PRIOR_VARIANCE[reward] + residual / 2.0) / shape
        covariance = noise * inverse
        factor = math.sqrt(noise) * lower_inverse.T if noise >= 0 else lower_inverse
    usable = np.all(np.abs(mean) <= MAX_ABS_COEFFICIENT) and np.all(np.isfinite(covariance))
    if not (usable and math.isfinite(fit) and math.isfinite(noise)):
        raise ValueError("the sums give a posterior that is not finite")
    return LinearPosterior(mean, covariance, factor, noise, sums.decisions)
