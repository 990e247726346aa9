"""A decision's exposure-log entry is valid JSON with every field, whatever callers and operators named;
a log that refuses its entries drops those alone."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mabrouter.core.decide import Decision, RouteInput
from mabrouter.core.decision_id import DecisionToken
from mabrouter.core.model import Reason
from mabrouter.runtime.exposure import ExposureLog, decision_entry

import fakes

# Anything a caller may send or an operator may name: quotes, backslashes, control characters, non-ASCII.
text = st.text(st.characters(codec="utf-8"), max_size=20)
attribute = st.one_of(text, st.floats(allow_nan=False), st.booleans(), st.tuples(text, text))


@given(
    unit=text,
    arm=text,
    reason=st.sampled_from(Reason),
    propensity=st.floats(0, 1),
    version=st.integers(0, 2**53),
    counted=st.booleans(),
    attributes=st.dictionaries(text, attribute, max_size=3),
    absent=text,
)
def test_an_entry_decodes_to_the_fields_of_its_decision(
    unit: str,
    arm: str,
    reason: Reason,
    propensity: float,
    version: int,
    counted: bool,
    attributes: dict[str, str | float | bool | tuple[str, str]],
    absent: str,
) -> None:
    request = RouteInput("ranker", "user-1", attributes)
    decision = Decision(arm, reason, propensity, version, {}, counted)
    token = DecisionToken("ranker", arm, version, 1_795_325_470_556, "Ab-_0123456789xy", counted)
    segments = (*attributes, absent) if absent not in attributes else tuple(attributes)

    fields = json.loads(decision_entry(request, decision, token, unit, segments))

    expected = [
        "d", token.nonce, "ts", "1795325470556", "unit", unit, "arm", arm, "reason", reason.name,
        "p", repr(propensity), "v", str(version), "counted", "1" if counted else "0",
    ]  # fmt: skip
    for name, value in attributes.items():  # a segment the request lacks is left out
        expected += [f"seg.{name}", ",".join(value) if isinstance(value, tuple) else str(value)]
    assert fields == expected


def test_a_log_of_the_wrong_type_drops_its_own_entries_only(caplog: pytest.LogCaptureFixture) -> None:
    store = fakes.FakeStore()
    store.refuse_log["broken"] = "mabrouter:{broken}:decisions is a string, not a stream"
    dropped: list[int] = []
    exposure = ExposureLog(store, 1000, str, on_drop=dropped.append)
    with caplog.at_level(logging.ERROR, logger="mabrouter.runtime.exposure"):
        for _ in range(2):
            exposure._append(("broken", "[]"))
            exposure._append(("fine", "[]"))
            exposure._append(("broken", "[]"))
            asyncio.run(exposure.flush())
    assert store.decisions == [("fine", "[]"), ("fine", "[]")]
    assert dropped == [2, 2]
    assert exposure.pending() == 0  # not kept for a retry that cannot succeed
    assert sum("decision log of broken" in r.getMessage() for r in caplog.records) == 1
