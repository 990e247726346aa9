"""Thompson sampling over the live arms of one experiment snapshot.

Winners are drawn in blocks: within one snapshot the posteriors do not change, so the winners of N
independent posterior draws are exactly N i.i.d. Thompson decisions. Drawing them 128 at a time costs
one vectorised numpy call instead of 128, which takes the per-decision cost from ~13 us to ~1 us
(see docs/decisions/0002-block-thompson-draws.md). A new snapshot builds a new sampler, so no
decision is ever drawn from a stale posterior once the refresher has swapped the snapshot in.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mabrouter.core.posterior import Posteriors

DEFAULT_BLOCK = 128
# Monte Carlo draws used to estimate each arm's probability of winning (its propensity).
PROPENSITY_DRAWS = 4_000


class ThompsonSampler:
    """Yields Thompson-sampled arm indices among `live` arms; never yields a non-live arm."""

    __slots__ = ("_block", "_live", "_posteriors", "_winners")

    def __init__(self, posteriors: Posteriors, live: tuple[int, ...], block: int = DEFAULT_BLOCK) -> None:
        if not live:
            raise ValueError("a sampler needs at least one live arm")
        self._posteriors = posteriors
        self._live = np.array(live, dtype=np.intp)
        self._block = block
        self._winners: list[int] = []

    def next_arm(self, rng: np.random.Generator) -> int:
        if not self._winners:
            self._winners = winners(self._posteriors, self._live, rng, self._block).tolist()
        return self._winners.pop()

    def draw_once(self, rng: np.random.Generator) -> int:
        """One independent draw from `rng`, outside the shared block (for hash-seeded decisions)."""
        return int(winners(self._posteriors, self._live, rng, 1)[0])


def winners(
    posteriors: Posteriors, live: npt.NDArray[np.intp], rng: np.random.Generator, size: int
) -> npt.NDArray[np.intp]:
    """Arm indices of the best draw among `live` arms, for `size` independent posterior draws."""
    draws = posteriors.draw(rng, size)[:, live]
    result: npt.NDArray[np.intp] = live[np.argmax(draws, axis=1)]
    return result


def win_probabilities(
    posteriors: Posteriors, live: tuple[int, ...], rng: np.random.Generator, draws: int = PROPENSITY_DRAWS
) -> npt.NDArray[np.float64]:
    """Probability that each arm has the highest draw among `live` arms (0 for the others).

    Estimated by Monte Carlo, with add-one-half smoothing so that no live arm's propensity is exactly
    zero: an arm Thompson sampling can still pick must never get an infinite inverse-propensity weight.
    """
    n_arms = posteriors.mean().shape[0]
    live_index = np.array(live, dtype=np.intp)
    counts = np.bincount(winners(posteriors, live_index, rng, draws), minlength=n_arms).astype(np.float64)
    smoothed = np.zeros(n_arms, dtype=np.float64)
    smoothed[live_index] = (counts[live_index] + 0.5) / (draws + 0.5 * len(live))
    return smoothed
