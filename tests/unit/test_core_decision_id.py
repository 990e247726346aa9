"""Decision ids: unforgeable, bound to their experiment, expiring, rotatable."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mabrouter.core.decision_id import (
    MAC_BYTES,
    MAX_CLOCK_SKEW_MS,
    DecisionToken,
    KeyedMac,
    decode,
    encode,
    nonce_factory,
)
from mabrouter.errors import ExpiredDecisionIdError, InvalidDecisionIdError

from wire import sign

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


# -- signed ids whose fields are not what encode() writes ---------------------------------------------
# These are what a holder of the secret (a leaked key, a buggy or newer router) could send: the signature
# verifies, so every field must be checked, and refused with its name, never parsed into a ValueError.

FIELDS = ["1", "ranker", "ranker-v2", "7", str(TOKEN.issued_ms), "abc123", "1"]
TRACE = "0123456789abcdef" * 3


def with_field(index: int, value: str, fields: list[str] = FIELDS) -> str:
    changed = [*fields]
    changed[index] = value
    return sign("|".join(changed).encode(), KEY)


def test_a_hand_signed_id_in_the_router_format_decodes() -> None:
    # the reference for the refusals below: only the altered field makes them fail
    assert decode(sign("|".join(FIELDS).encode(), KEY), [KEY], NOW, DAY_MS) == TOKEN
    segmented = [*FIELDS, "", "gold"]
    assert decode(sign("|".join(segmented).encode(), KEY), [KEY], NOW, DAY_MS).segment == "gold"


@pytest.mark.parametrize(
    ("index", "value", "field"),
    [
        (0, "2", "format version"),
        (1, "", "experiment"),
        (1, "has space", "experiment"),
        (1, "-leading-dash", "experiment"),
        (1, "x" * 65, "experiment"),
        (2, "arm/../x", "arm"),
        (2, "", "arm"),
        (3, "x", "config_version"),
        (3, "-1", "config_version"),
        (3, "1_000", "config_version"),  # int() would accept it
        (3, " 7", "config_version"),  # int() would accept it
        (3, "\u0663", "config_version"),  # an Arabic-Indic 3: int() would accept it
        (3, "9" * 19, "config_version"),
        (4, "1.7e12", "issued_ms"),
        (4, "", "issued_ms"),
        (4, "+1700000000000", "issued_ms"),
        (5, "", "nonce"),
        (5, 'a"b', "nonce"),
        (5, "n" * 65, "nonce"),
        (6, "2", "flags"),
        (6, "3", "flags"),
        (6, "01", "flags"),
        (6, "x", "flags"),
    ],
)
def test_a_signed_id_with_a_field_not_as_routers_write_it_names_the_field(
    index: int, value: str, field: str
) -> None:
    with pytest.raises(InvalidDecisionIdError, match=field):
        decode(with_field(index, value), [KEY], NOW, DAY_MS)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["short"], "trace"),
        ([TRACE.upper()], "trace"),
        ([TRACE + "0"], "trace"),
        ([""], "trace"),  # an empty trace is written only before a segment
        ([TRACE, ""], "segment"),
        ([TRACE, "bad segment"], "segment"),
        (["xyz", "gold"], "trace"),
        ([TRACE, "gold", "more"], "context"),
        ([TRACE, "gold", "0123abcd:AAAA", "more"], "11 fields"),
    ],
)
def test_trace_and_segment_are_checked_when_present(extra: list[str], field: str) -> None:
    with pytest.raises(InvalidDecisionIdError, match=field):
        decode(sign("|".join([*FIELDS, *extra]).encode(), KEY), [KEY], NOW, DAY_MS)


def test_a_signed_payload_that_is_not_utf8_is_invalid() -> None:
    payload = "|".join(FIELDS).encode().replace(b"ranker-v2", b"ranker-\xff")
    with pytest.raises(InvalidDecisionIdError, match="UTF-8"):
        decode(sign(payload, KEY), [KEY], NOW, DAY_MS)


def test_an_id_issued_further_ahead_than_the_clock_skew_is_refused() -> None:
    ahead = DecisionToken("ranker", "ranker-v2", 7, NOW + MAX_CLOCK_SKEW_MS, "abc123", counted=True)
    assert decode(encode(ahead, KEY), [KEY], NOW, DAY_MS) == ahead  # a replica whose clock runs ahead
    too_far = ahead._replace(issued_ms=NOW + MAX_CLOCK_SKEW_MS + 1)
    with pytest.raises(InvalidDecisionIdError, match="future"):
        decode(encode(too_far, KEY), [KEY], NOW, DAY_MS)
    year_2500 = ahead._replace(issued_ms=16_725_225_600_000)
    with pytest.raises(InvalidDecisionIdError, match="future"):
        decode(encode(year_2500, KEY), [KEY], NOW, DAY_MS)


FIELD_TEXT = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["", "0", "-1", "1e3", "1_0", " 1", "\u0661", "ranker", "x|y", TRACE, "9" * 20]),
)


@given(
    st.lists(st.one_of(st.none(), FIELD_TEXT), min_size=7, max_size=10),
)
@example([None] * 4 + ["x", None, None])
@example([None] * 7 + [TRACE, "gold"])
def test_any_signed_payload_decodes_to_a_token_that_re_encodes_to_it_or_is_invalid(
    replacements: list[str | None],
) -> None:
    """Every field altered (None keeps the valid one), re-signed with the test key. Whatever decodes
    is exactly what encode() writes; anything else is InvalidDecisionIdError, never another exception."""
    valid = [*FIELDS, TRACE, "gold", "extra"]
    fields = [valid[i] if value is None else value for i, value in enumerate(replacements)]
    decision_id = sign("|".join(fields).encode(), KEY)
    if len(decision_id) > 512:
        return
    try:
        token = decode(decision_id, [KEY], NOW, 10**15)
    except InvalidDecisionIdError as exc:
        message = str(exc)
    else:
        assert encode(token, KEY) == decision_id
        return
    assert message.startswith("decision_id ")


@given(st.binary(max_size=300))
def test_any_signed_bytes_are_a_token_or_invalid(payload: bytes) -> None:
    try:
        token = decode(sign(payload, KEY), [KEY], NOW, 10**15)
    except (InvalidDecisionIdError, ExpiredDecisionIdError):
        return
    assert encode(token, KEY) == sign(payload, KEY)
