"""Rollout buckets: the golden vectors, checked by two murmur3 implementations, and the properties (that
the generator still writes the golden file: integration/test_generated_code.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mabrouter.core.hashing import BUCKETS, bucket_of, in_rollout
from mabrouter.errors import InvalidRequestError

from support import ROOT

VECTORS = json.loads((ROOT / "tests" / "data" / "hash_vectors.json").read_text(encoding="utf-8"))

_MASK = 0xFFFFFFFF


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def _scramble(k: int) -> int:
    return (_rotl((k * 0xCC9E2D51) & _MASK, 15) * 0x1B873593) & _MASK


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """Independent pure-Python MurmurHash3_x86_32 (after Appleby's reference C++), used to check mmh3."""
    h = seed & _MASK
    body = len(data) - len(data) % 4
    for start in range(0, body, 4):
        h ^= _scramble(int.from_bytes(data[start : start + 4], "little"))
        h = (_rotl(h, 13) * 5 + 0xE6546B64) & _MASK
    if body < len(data):
        h ^= _scramble(int.from_bytes(data[body:], "little"))
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)


def reference_bucket(salt: str, unit_id: str) -> int:
    return (murmur3_x86_32(f"{salt}:{unit_id}".encode()) * 10_000) >> 32


# Published MurmurHash3_x86_32 test vectors (SMHasher / the widely copied reference list).
@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0),
        (b"", 1, 0x514E28B7),
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
        (b"\xff\xff\xff\xff", 0, 0x76293B50),
        (b"\x21\x43\x65\x87", 0, 0xF55B516B),
        (b"\x21\x43\x65", 0, 0x7E4A8634),
        (b"\x21\x43", 0, 0xA0F7B07A),
        (b"\x21", 0, 0x72661CF4),
        (b"aaaa", 0x9747B28C, 0x5A97808A),
        (b"abc", 0, 0xB3DD93FA),
        (b"Hello, world!", 0x9747B28C, 0x24884CBA),
        (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
    ],
)
def test_reference_implementation_matches_published_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_x86_32(data, seed) == expected


def test_golden_file_shape() -> None:
    assert isinstance(VECTORS, list)
    assert len(VECTORS) >= 40
    for vector in VECTORS:
        assert set(vector) == {"salt", "unit_id", "bucket"}
    pairs = {(vector["salt"], vector["unit_id"]) for vector in VECTORS}
    assert len(pairs) == len(VECTORS), "duplicate vectors pin nothing new"


def test_golden_file_has_the_edge_cases() -> None:
    ids = [vector["unit_id"] for vector in VECTORS]
    salts = {vector["salt"] for vector in VECTORS}
    assert any(len(unit_id) >= 500 for unit_id in ids)
    assert any(":" in unit_id for unit_id in ids)
    assert any(unit_id.isdigit() for unit_id in ids)
    assert any(any(ord(char) > 0xFFFF for char in unit_id) for unit_id in ids), "an astral-plane emoji"
    assert any(any(0x4E00 <= ord(char) <= 0x9FFF for char in unit_id) for unit_id in ids), "a CJK id"
    assert any(any(0xC0 <= ord(char) <= 0xFF for char in unit_id) for unit_id in ids), "an accented id"
    assert {"checkout", "Checkout", "CHECKOUT"} <= salts


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: f"{vector['salt']}|{vector['unit_id'][:20]}")
def test_golden_vectors(vector: dict[str, str | int]) -> None:
    salt, unit_id = str(vector["salt"]), str(vector["unit_id"])
    assert bucket_of(salt, unit_id) == vector["bucket"]
    assert reference_bucket(salt, unit_id) == vector["bucket"]


def test_case_only_salt_changes_move_the_bucket() -> None:
    buckets = {bucket_of(salt, "user-42") for salt in ("checkout", "Checkout", "CHECKOUT")}
    assert len(buckets) == 3


def test_unicode_is_not_normalised() -> None:
    assert bucket_of("ranker", "caf\u00e9") != bucket_of("ranker", "cafe\u0301")


def test_the_separator_is_not_escaped() -> None:
    # Documented limitation: salts must not contain ':' (experiment names cannot).
    assert bucket_of("ranker:v2", "user-42") == bucket_of("ranker", "v2:user-42")


def test_empty_unit_id_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="unit_id"):
        bucket_of("ranker", "")


def test_lone_surrogate_is_refused_as_a_request_error() -> None:
    with pytest.raises(InvalidRequestError, match="unit_id"):
        bucket_of("ranker", "user-\ud800")


_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
_IDS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=80)


@given(_TEXT, _IDS)
def test_bucket_in_range_deterministic_and_equal_to_the_reference(salt: str, unit_id: str) -> None:
    bucket = bucket_of(salt, unit_id)
    assert 0 <= bucket < BUCKETS
    assert bucket_of(salt, unit_id) == bucket
    assert reference_bucket(salt, unit_id) == bucket


@given(st.integers(0, BUCKETS - 1), st.floats(0, 100), st.floats(0, 100))
def test_rollout_is_monotonic(bucket: int, first: float, second: float) -> None:
    low, high = sorted((first, second))
    if in_rollout(bucket, low):
        assert in_rollout(bucket, high)


@given(_TEXT, _IDS, st.floats(0, 100), st.floats(0, 100))
def test_raising_the_rollout_never_unexposes_a_unit(
    salt: str, unit_id: str, first: float, second: float
) -> None:
    low, high = sorted((first, second))
    bucket = bucket_of(salt, unit_id)
    assert not in_rollout(bucket, low) or in_rollout(bucket, high)


@given(st.integers(0, BUCKETS))
def test_a_percent_with_two_decimals_exposes_exactly_that_many_buckets(hundredths: int) -> None:
    percent = hundredths / 100  # e.g. 0.29, whose * 100 is 28.999999999999996 in floating point
    exposed = sum(1 for bucket in range(BUCKETS) if in_rollout(bucket, percent))
    assert exposed == hundredths


@pytest.mark.parametrize(
    ("percent", "first_unexposed"),
    [(0, 0), (0.01, 1), (0.1, 10), (0.29, 29), (12.5, 1250), (12.345, 1235), (33.33, 3333), (99.99, 9999)],
)
def test_rollout_boundaries(percent: float, first_unexposed: int) -> None:
    if first_unexposed > 0:
        assert in_rollout(first_unexposed - 1, percent)
    assert not in_rollout(first_unexposed, percent)


def test_full_rollout_exposes_every_bucket() -> None:
    assert all(in_rollout(bucket, 100) for bucket in range(BUCKETS))


@pytest.mark.parametrize("percent", [-0.01, 100.01, float("nan"), float("inf")])
def test_rollout_percent_out_of_range_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match="rollout_percent"):
        in_rollout(0, percent)


UNITS = 100_000
IDS = [f"user-{index}" for index in range(UNITS)]


def test_buckets_are_uniform_chi_square() -> None:
    # 100 bins of 100 buckets each, 1,000 expected ids per bin. Chi-square with 99 degrees of freedom:
    # P(X > 148.23) = 0.001 and P(X < 61.14) = 0.001 (computed from the regularised incomplete gamma
    # function). The ids are fixed, so this is deterministic; the lower bound catches a "too perfect"
    # spread, e.g. a bug that counts ids round-robin instead of hashing them.
    counts = [0] * 100
    for unit_id in IDS:
        counts[bucket_of("ranker", unit_id) // 100] += 1
    expected = UNITS / 100
    chi_square = sum((count - expected) ** 2 / expected for count in counts)
    assert 61.14 < chi_square < 148.23, chi_square


def test_share_exposed_at_25_percent() -> None:
    # Binomial(100_000, 0.25): standard deviation sqrt(n p (1 - p)) = 136.9 ids = 0.137 percentage
    # points. Allow 5 standard deviations, 685 ids: a correct hash fails with probability < 1e-6.
    exposed = sum(1 for unit_id in IDS if in_rollout(bucket_of("ranker", unit_id), 25))
    assert abs(exposed - 25_000) <= 685, exposed


def test_salts_give_independent_buckets() -> None:
    # Exposure at 50% under two salts should be independent: both exposed ~25% of the time.
    # Same 5-sigma bound as above (sd of the joint count is also 136.9).
    both = sum(
        1 for unit_id in IDS if bucket_of("ranker", unit_id) < 5000 and bucket_of("search", unit_id) < 5000
    )
    assert abs(both - 25_000) <= 685, both
