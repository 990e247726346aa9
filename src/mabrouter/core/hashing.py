"""Deterministic rollout buckets: a public contract that every client language must reproduce.

    key    = UTF-8 bytes of (salt + ":" + unit_id)          (no Unicode normalisation: NFC and NFD
                                                              spellings of "café" are different ids)
    hash   = MurmurHash3_x86_32(key, seed=0), as an unsigned 32-bit integer
    bucket = (hash * 10000) >> 32                            (an integer in [0, 10000))

    exposed(bucket, rollout_percent)  <=>  bucket * 100 < round(rollout_percent * 10000)

The multiply-shift maps the hash onto 10,000 buckets without the bias of `hash % 10000` (2**32 is not
a multiple of 10,000, so a modulo would favour the low buckets). Exposure is "bucket < percent * 100",
evaluated in hundredths of a bucket after rounding: a percent with up to 4 decimals is honoured
exactly, and binary floating-point error cannot change the answer (0.1 * 100 is 10.000000000000002
in IEEE doubles, which would otherwise expose 11 buckets for a 0.1% rollout instead of 10). Ties of
the rounding only matter for percents with more than 4 decimals, finer than the bucket resolution.

Raising the rollout only ever adds buckets, so a unit once exposed stays exposed as a rollout grows.
The salt (an experiment name) makes the buckets of different experiments independent. Salts must not
contain ':' -- experiment names cannot (see NAME_PATTERN) -- because salt "a:b" with unit "c" and salt
"a" with unit "b:c" hash the same key. tests/data/hash_vectors.json pins the formula for other
implementations; regenerate it only with scripts/gen_hash_vectors.py, and only on purpose: changing
a bucket reshuffles every running rollout.
"""

from __future__ import annotations

import mmh3

from mabrouter.errors import InvalidRequestError

BUCKETS = 10_000
# in_rollout compares in hundredths of a bucket: percent * 10_000 == buckets * 100.
_PERCENT_SCALE = 10_000


def bucket_of(salt: str, unit_id: str) -> int:
    """The unit's bucket in [0, BUCKETS) for this salt; the same inputs give the same bucket anywhere."""
    if not unit_id:
        raise InvalidRequestError("unit_id is empty: pass the user, session or request id being bucketed")
    try:
        key = f"{salt}:{unit_id}".encode()
    except UnicodeEncodeError as exc:
        # Only a lone surrogate gets here; gRPC strings are always valid UTF-8.
        raise InvalidRequestError(
            "unit_id or salt is not valid Unicode text (it has a lone surrogate)"
        ) from exc
    return (mmh3.hash(key, 0, signed=False) * BUCKETS) >> 32


def in_rollout(bucket: int, rollout_percent: float) -> bool:
    """Whether a unit in `bucket` is exposed at `rollout_percent` (0-100, decimals allowed: 12.5 -> 1250)."""
    if not 0.0 <= rollout_percent <= 100.0:  # also refuses NaN
        raise ValueError(f"rollout_percent must be between 0 and 100, got {rollout_percent!r}")
    return bucket * 100 < round(rollout_percent * _PERCENT_SCALE)


# Units are grouped into this many cells by their holdout bucket (cell k: buckets [100k, 100k + 100), i.e.
# holdout percents [k, k + 1)); the holdout split is checked cell by cell, see core/evidence.py.
HOLDOUT_CELLS = 100


def holdout_cell(bucket: int) -> int:
    """The cell of a unit whose holdout bucket is `bucket`."""
    return bucket * HOLDOUT_CELLS // BUCKETS


def unit_seed(salt: str, unit_id: str) -> int:
    """A 128-bit seed for a unit's own random draw, the same on every replica.

    Used when a sticky experiment cannot reach Redis: the unit still gets a stable assignment.
    """
    return int(mmh3.hash128(f"{salt}:{unit_id}", 0, signed=False))
