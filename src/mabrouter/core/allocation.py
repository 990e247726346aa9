"""Traffic allocation with exposure limits: caps (canaries), floors (exploration), burn-in, ramps.

Without limits the router samples Thompson winners directly. With limits it computes the Thompson
allocation p (each live arm's probability of being best), projects it onto [floor, cap] per arm, and
samples arms from that allocation q. The logged propensity of an arm is then exactly q[arm], which is what
inverse-propensity estimates need (GrowthBook's bandits work the same way, with a 1% floor).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_EPSILON = 1e-12


def constrained_allocation(
    p: FloatArray, live: tuple[int, ...], floors: FloatArray, caps: FloatArray
) -> FloatArray:
    """The allocation q = clip(lambda * p, floor, cap) over live arms that sums to 1.

    The sum is non-decreasing in lambda, so bisection finds it; arms keep p's proportions except where a
    bound binds. If the bounds cannot all hold (floors summing above 1, or caps below 1), floors win
    over caps and the remaining mass is spread evenly: the result always sums to 1 over live arms.
    """
    q = np.zeros_like(p)
    live_index, lo, hi = _live_bounds(live, floors, caps)
    forced = _decided_by_bounds(lo, hi)
    if forced is not None:
        q[live_index] = forced
        return q
    weights = np.maximum(p[live_index], _EPSILON)
    low, high = 0.0, 1.0
    while np.clip(high * weights, lo, hi).sum() < 1.0:
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2.0
        if np.clip(middle * weights, lo, hi).sum() < 1.0:
            low = middle
        else:
            high = middle
    values = np.clip(high * weights, lo, hi)
    q[live_index] = values / values.sum()
    return q


def exact_projection(
    p: FloatArray, live: tuple[int, ...], floors: FloatArray, caps: FloatArray
) -> FloatArray:
    """`constrained_allocation` solved exactly rather than by bisection: per request (contextual).

    sum_i clip(lambda p_i, lo_i, hi_i) is piecewise linear in lambda with breakpoints lo_i / p_i and
    hi_i / p_i: evaluate it at every breakpoint, then solve the linear piece that crosses 1."""
    q = np.zeros_like(p)
    index, lo, hi = _live_bounds(live, floors, caps)
    forced = _decided_by_bounds(lo, hi)
    if forced is not None:
        q[index] = forced
        return q
    weights = np.maximum(p[index], _EPSILON)
    breaks = np.sort(np.concatenate((lo / weights, hi / weights)))
    totals = np.clip(breaks[:, None] * weights, lo, hi).sum(axis=1)
    j = int(np.searchsorted(totals, 1.0))  # totals[0] = sum(lo) < 1 <= sum(hi) = totals[-1]
    j = min(max(j, 1), len(breaks) - 1)
    rise = totals[j] - totals[j - 1]
    scale = (
        breaks[j - 1] + (1.0 - totals[j - 1]) * (breaks[j] - breaks[j - 1]) / rise if rise > 0 else breaks[j]
    )
    values = np.clip(scale * weights, lo, hi)
    q[index] = values / values.sum()
    return q


def _live_bounds(
    live: tuple[int, ...], floors: FloatArray, caps: FloatArray
) -> tuple[npt.NDArray[np.intp], FloatArray, FloatArray]:
    """The live arms' indices and their floors and caps (a floor above 1 is 1; a cap below its floor is
    the floor)."""
    index = np.array(live, dtype=np.intp)
    lo = np.minimum(floors[index], 1.0)
    return index, lo, np.maximum(caps[index], lo)


def _decided_by_bounds(lo: FloatArray, hi: FloatArray) -> FloatArray | None:
    """The live arms' shares when the bounds alone decide them, else None: floors summing to 1 or more
    win (scaled to sum to 1); caps summing below 1 are filled and the rest spread evenly."""
    shares: FloatArray | None = None
    if lo.sum() >= 1.0 - _EPSILON:
        shares = lo / lo.sum()
    elif hi.sum() <= 1.0 + _EPSILON:
        shares = hi + (1.0 - hi.sum()) / len(hi)
    return shares


def thompson_allocation(
    win_probabilities: Callable[[tuple[int, ...]], FloatArray],
    live: tuple[int, ...],
    floors: FloatArray,
    caps: FloatArray,
    project: Callable[[FloatArray, tuple[int, ...], FloatArray, FloatArray], FloatArray] | None = None,
) -> FloatArray:
    """Thompson's allocation under floors and caps, with a capped arm's excess going where Thompson would.

    `project`: the projection onto the bounds (default `constrained_allocation`; a contextual decision,
    which projects per request, passes an exact one that needs no bisection).

    `win_probabilities(arms)` gives each arm's probability of being best among `arms`. Projecting it
    once would split a capped favourite's excess in proportion to the others' P(best) among *all*
    arms, which is ~0 for each of them (noise and smoothing), so a clearly bad arm could get as much as
    a good one. Instead, in rounds: arms held at their cap keep it, and the rest of the traffic follows
    P(best) among the arms that are not capped, as Thompson sampling restricted to them would.
    """
    project = project or constrained_allocation
    p = win_probabilities(live)
    q = project(p, live, floors, caps)
    capped: set[int] = set()
    for _ in range(len(live)):
        newly = {i for i in live if i not in capped and caps[i] < 1.0 and q[i] >= caps[i] - 1e-9}
        free = tuple(i for i in live if i not in capped | newly)
        if not newly or not free:
            break
        capped |= newly
        held = float(sum(min(caps[i], 1.0) for i in capped))
        p = np.zeros_like(p)
        p[list(capped)] = 1.0  # at any scale the projection clips these at their caps
        p[list(free)] = win_probabilities(free)[list(free)] * max(1.0 - held, _EPSILON)
        q = project(p, live, floors, caps)
    return q


class CategoricalSampler:
    """Draws arm indices from a fixed allocation, a block of uniform draws at a time."""

    __slots__ = ("_block", "_cumulative", "_indices", "_winners")

    def __init__(self, allocation: FloatArray, block: int = 128) -> None:
        indices = np.flatnonzero(allocation > 0)
        self._indices = indices.astype(np.intp)
        cumulative = np.cumsum(allocation[indices])
        self._cumulative = cumulative / cumulative[-1]
        self._block = block
        self._winners: list[int] = []

    def next_arm(self, rng: np.random.Generator) -> int:
        if not self._winners:
            picks = np.searchsorted(self._cumulative, rng.random(self._block), side="right")
            self._winners = self._indices[np.minimum(picks, len(self._indices) - 1)].tolist()
        return self._winners.pop()

    def draw_once(self, rng: np.random.Generator) -> int:
        pick = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        return int(self._indices[min(pick, len(self._indices) - 1)])


def ramp_cap(steps_shares: tuple[float, ...], step: int) -> float:
    """The cap of a ramping arm on `step` (past the last step: uncapped)."""
    return steps_shares[step] if 0 <= step < len(steps_shares) else 1.0
