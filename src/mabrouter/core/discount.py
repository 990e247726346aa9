"""Forward decay: discounting that is exact with any number of concurrent writers.

An observation at time t is stored scaled by w(t) = 2^((t - epoch) / half_life); a reader at time T
divides the sums by w(T), so each observation counts 2^(-(T - t) / half_life). Scaled increments commute,
so replicas just add them (each inside one atomic script) with no race, unlike decaying stored values in
place. The epoch is moved forward (a rebase, atomic in Lua) before the weights grow large.
(Cormode, Shkapenyuk, Srivastava, Xu: "Forward decay", ICDE 2009.)
"""

from __future__ import annotations

# Rebase once the newest weight exceeds 2^64: far from float overflow, with full relative precision.
REBASE_AFTER_HALF_LIVES = 64.0


def weight(now_ms: int, epoch_ms: int, half_life_seconds: float) -> float:
    return float(2.0 ** ((now_ms - epoch_ms) / (half_life_seconds * 1000.0)))


def needs_rebase(now_ms: int, epoch_ms: int, half_life_seconds: float) -> bool:
    return epoch_ms > 0 and (now_ms - epoch_ms) / (half_life_seconds * 1000.0) > REBASE_AFTER_HALF_LIVES
