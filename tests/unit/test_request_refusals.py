"""Hostile requests, the pieces without I/O: the lenient deserializers never raise, and refusals are
logged once per kind per minute. At the wire, against real routers: integration/test_hostile_requests.py."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from mabrouter.runtime.metrics import RouterMetrics
from mabrouter.service.guard import TelemetryGuard
from mabrouter.service.requests import Refusals, Undecodable, lenient
from mabrouter.v1 import router_pb2 as pb

from wire import METHODS

# -- the pieces, without I/O ---------------------------------------------------------------------------------


@given(st.sampled_from(list(METHODS.values())), st.binary(max_size=200))
def test_lenient_deserializers_return_the_message_or_an_undecodable_never_raise(
    message_type: type[pb.RouteRequest], data: bytes
) -> None:
    result = lenient(message_type)(data)
    try:
        expected = message_type.FromString(data)
    except Exception:
        assert isinstance(result, Undecodable)
        assert result.kind in {"invalid_utf8", "too_deep", "malformed"}
        assert result.message.startswith(f"request is not a valid {message_type.DESCRIPTOR.full_name}: ")
    else:
        assert result == expected


def test_refusal_log_lines_are_one_per_kind_per_minute_and_say_how_many_were_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    metrics = RouterMetrics(CollectorRegistry())
    refusals = Refusals(metrics.bad_requests, TelemetryGuard(metrics.telemetry_errors), clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="mabrouter.service.requests")
    for _ in range(5):
        refusals.refused("Route", "invalid_utf8", "first")
    refusals.refused("ReportOutcome", "decision_id", "other kind")
    now[0] += 59.9
    refusals.refused("Route", "invalid_utf8", "still within the minute")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "refused a malformed Route call (invalid_utf8)",
        "refused a malformed ReportOutcome call (decision_id)",
    ]
    now[0] += 0.2
    refusals.refused("RouteBatch", "invalid_utf8", "a minute later")
    assert len(caplog.records) == 3
    assert "a minute later" in caplog.records[-1].getMessage()
    assert "5 more since the last line" in caplog.records[-1].getMessage()
    sample = metrics.registry.get_sample_value
    assert sample("mabrouter_bad_requests_total", {"method": "Route", "kind": "invalid_utf8"}) == 6
    assert sample("mabrouter_bad_requests_total", {"method": "RouteBatch", "kind": "invalid_utf8"}) == 1
