"""Linear Thompson sampling per request: the allocation a contextual decision is drawn from.

Built when the statistics change (core/snapshot.py), from each arm's posterior (core/linear.py): the
live arms' means and covariances stacked, so that per request the scores x . theta of all arms cost two
matrix-vector products. Each score is a 1-D normal (mean x . mu, variance x^T Sigma x); their race gives
each live arm's probability of having the best draw (core/normal_race.py), i.e. Thompson sampling's
allocation at x. The decision is drawn from that allocation (after floors, caps, ramps and burn-in, as
for every experiment), and the allocation travels with the decision: its propensity is the exact
probability of the draw, and the sample-ratio check expects what it says (docs/decisions/0019, 0020).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from mabrouter.core.allocation import exact_projection, thompson_allocation
from mabrouter.core.features import FeatureEncoder
from mabrouter.core.linear import LinearPosterior
from mabrouter.core.model import AttributeValue
from mabrouter.core.normal_race import win_probabilities
from mabrouter.core.posterior import FloatArray

# Every live arm keeps at least this probability (mixed in before the limits): an arm the policy may
# still serve never gets an infinite inverse-propensity weight. Thompson's allocations elsewhere are
# smoothed to about the same floor (core/thompson.py: ~1.25e-4 with 3 arms).
MIN_PROBABILITY = 1e-4
_EPSILON = 1e-12  # the smallest variance a prediction is given (a column never seen)


class ContextDraw(NamedTuple):
    """What a contextual decision carries beyond the arm: the model it was drawn under (its signature),
    the request's feature vector and the allocation the arm was drawn from (every arm, in arm order)."""

    signature: str
    vector: FloatArray
    shares: FloatArray


class LinearPolicy:
    """The per-request side of a contextual experiment's state. Immutable once built."""

    __slots__ = (
        "_all_live",
        "_caps",
        "_d",
        "_fixed",
        "_floors",
        "_limited",
        "_live",
        "_live_index",
        "_n_arms",
        "_stacked",
        "encoder",
        "posteriors",
    )

    def __init__(
        self,
        encoder: FeatureEncoder,
        posteriors: tuple[LinearPosterior, ...],
        live: tuple[int, ...],
        *,
        floors: FloatArray | None = None,
        caps: FloatArray | None = None,
        fixed: FloatArray | None = None,
    ) -> None:
        """`posteriors`: one per arm, in arm order; `live`: the arms sampling may choose; `floors`/`caps`:
        bounds on each arm's share (None: none); `fixed`: an allocation that does not depend on the
        request (burn-in), used instead of the posteriors'."""
        self.encoder = encoder
        self.posteriors = posteriors
        self._n_arms = len(posteriors)
        self._live = live
        self._live_index = np.array(live, dtype=np.intp)
        # One (arms * (d + 1), d) matrix: each live arm's covariance rows, then its mean. Its product
        # with x gives every arm's Sigma x and mean . x in one matrix-vector product (two products
        # over a stack of matrices cost twice the numpy calls).
        d = encoder.dimension
        self._stacked = np.concatenate(
            [np.vstack((posteriors[i].covariance, posteriors[i].mean)) for i in live]
        )
        self._d = d
        n = self._n_arms
        self._floors = floors if floors is not None else np.zeros(n)
        self._caps = caps if caps is not None else np.ones(n)
        self._limited = bool(
            np.any(self._floors[self._live_index] > 0) or np.any(self._caps[self._live_index] < 1)
        )
        self._fixed = fixed
        self._all_live = len(live) == self._n_arms

    def scores(self, vector: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Mean and standard deviation of each live arm's score x . theta at `vector`."""
        products = (self._stacked @ vector).reshape(-1, self._d + 1)
        variances = products[:, : self._d] @ vector
        return products[:, self._d], np.sqrt(np.maximum(variances, _EPSILON))

    def _race(self, vector: FloatArray, arms: tuple[int, ...]) -> FloatArray:
        """P(best) among `arms` (indices into the experiment's arms), as a full-length vector."""
        positions = [self._live.index(arm) for arm in arms]
        means, sds = self.scores(vector)
        p = np.zeros(self._n_arms)
        p[list(arms)] = win_probabilities(means[positions], sds[positions])
        return p

    def allocation(self, vector: FloatArray) -> FloatArray:
        """Each arm's probability of being served at `vector` (0 for arms that are not live)."""
        if self._fixed is not None:
            return self._fixed
        means, sds = self.scores(vector)
        live_p = win_probabilities(means, sds, MIN_PROBABILITY)
        if self._all_live:
            p = live_p
        else:
            p = np.zeros(self._n_arms)
            p[self._live_index] = live_p
        if not self._limited:
            return p

        def race(arms: tuple[int, ...]) -> FloatArray:
            return p if arms == self._live else self._race(vector, arms)

        return thompson_allocation(race, self._live, self._floors, self._caps, project=exact_projection)

    def draw(
        self, attributes: Mapping[str, AttributeValue], rng: np.random.Generator
    ) -> tuple[int, ContextDraw]:
        """The arm served at the request's context, and what the decision records of it."""
        vector = self.encoder.vector(attributes)
        shares = self.allocation(vector)
        return self.pick(shares, rng), ContextDraw(self.encoder.signature, vector, shares)

    def context(self, attributes: Mapping[str, AttributeValue]) -> ContextDraw:
        """The context record of a decision the policy did not draw here (a sticky unit's repeat)."""
        vector = self.encoder.vector(attributes)
        return ContextDraw(self.encoder.signature, vector, self.allocation(vector))

    @staticmethod
    def pick(shares: FloatArray, rng: np.random.Generator) -> int:
        """One arm drawn from `shares` with one uniform from `rng`."""
        # A loop over a handful of floats costs less than cumsum + searchsorted (two numpy calls).
        values = shares.tolist()
        target = rng.random() * sum(values)
        last = 0
        for index, share in enumerate(values):
            if share > 0:
                last = index
                target -= share
                if target < 0:
                    return index
        return last  # rounding left target >= 0: the last arm that can be served, never a 0-share one

    def best_draw(self, vector: FloatArray, arms: tuple[int, ...], rng: np.random.Generator) -> int:
        """Thompson's pick among `arms` by one drawn score per arm (the shadow policy's choice)."""
        means = np.array([self.posteriors[i].mean @ vector for i in arms])
        variances = np.array([vector @ self.posteriors[i].covariance @ vector for i in arms])
        drawn = means + np.sqrt(np.maximum(variances, 0.0)) * rng.standard_normal(len(arms))
        return arms[int(np.argmax(drawn))]
