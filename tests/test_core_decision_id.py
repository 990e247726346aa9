"""Decision ids: unforgeable, bound to their experiment, expiring, rotatable."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mabrouter.core.decision_id import MAC_BYTES, DecisionToken, KeyedMac, decode, encode, nonce_factory
from mabrouter.errors import ExpiredDecisionIdError, InvalidDecisionIdError

KEY = b"k" * 32
TOKEN = DecisionToken("ranker", "ranker-v2", 7, 1_700_000_000_000, "abc123", counted=True)
NOW = TOKEN.issued_ms + 1000
DAY_MS = 86_400_000


def test_round_trip() -> None:
    assert decode(encode(TOKEN, KEY), [KEY], NOW, DAY_MS) == TOKEN


@given(st.integers(min_value=0), st.characters(codec="ascii", exclude_characters="="))
def test_any_single_character_change_is_rejected(position: int, replacement: str) -> None:
    original = encode(TOKEN, KEY)
    index = position % len(original)
    tampered = original[:index] + replacement + original[index + 1 :]
    if tampered == original:
        return
    with pytest.raises(InvalidDecisionIdError):
        decode(tampered, [KEY], NOW, DAY_MS)


def test_an_id_cannot_be_moved_to_another_experiment() -> None:
    forged = encode(DecisionToken("other", "ranker-v2", 7, TOKEN.issued_ms, "abc123", True), b"attacker-key")
    with pytest.raises(InvalidDecisionIdError, match="signature"):
        decode(forged, [KEY], NOW, DAY_MS)


def test_previous_key_is_accepted_during_rotation() -> None:
    old = encode(TOKEN, b"old-key-old-key-old")
    assert decode(old, [KEY, b"old-key-old-key-old"], NOW, DAY_MS) == TOKEN
    with pytest.raises(InvalidDecisionIdError):
        decode(old, [KEY], NOW, DAY_MS)


def test_expired_ids_are_refused_with_their_age() -> None:
    with pytest.raises(ExpiredDecisionIdError, match="expired"):
        decode(encode(TOKEN, KEY), [KEY], TOKEN.issued_ms + DAY_MS + 1, DAY_MS)


@pytest.mark.parametrize("garbage", ["", "....", "no-dot", "x" * 600, "%%%.%%%", "YQ.YQ"])
def test_garbage_is_invalid_not_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidDecisionIdError):
        decode(garbage, [KEY], NOW, DAY_MS)


def test_nonces_are_unique_within_a_process() -> None:
    make = nonce_factory("p1")
    assert len({make() for _ in range(10_000)}) == 10_000


@given(st.binary(min_size=1, max_size=100), st.binary(max_size=300))
def test_keyed_mac_is_truncated_hmac_sha256(key: bytes, payload: bytes) -> None:
    assert KeyedMac(key)(payload) == hmac.digest(key, payload, "sha256")[:MAC_BYTES]


def test_encoding_with_a_keyed_mac_or_the_raw_key_gives_the_same_id() -> None:
    assert encode(TOKEN, KeyedMac(KEY)) == encode(TOKEN, KEY)
    assert decode(encode(TOKEN, KeyedMac(KEY)), [KEY], NOW, DAY_MS) == TOKEN
