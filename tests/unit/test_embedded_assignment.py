"""The in-process router's Assignment is built positionally (a keyword build cost 0.45 us per decision):
each field must still land where its name says, as RouterClient's does from a RouteResponse."""

from __future__ import annotations

from mabrouter.core.decide import Decision
from mabrouter.core.model import Reason
from mabrouter.embedded._convert import assignment_of
from mabrouter.runtime.engine import Routed


def test_every_field_of_the_assignment_comes_from_its_source() -> None:
    decision = Decision(
        "arm-b", Reason.STICKY, 0.25, 7, {"model": "v2"}, counted=True, shadow_arm="arm-c", segment="FR"
    )
    assignment = assignment_of(Routed(decision, "signed-id", stale=True))
    assert assignment.arm == "arm-b"
    assert assignment.decision_id == "signed-id"
    assert assignment.reason == "STICKY"
    assert assignment.propensity == 0.25
    assert assignment.config_version == 7
    assert assignment.payload == {"model": "v2"}
    assert assignment.payload is not decision.payload  # the caller may change its copy
    assert assignment.fallback is False
    assert assignment.error is None
    assert assignment.stale is True
    assert assignment.shadow_arm == "arm-c"


def test_a_fallback_default_is_marked_as_a_fallback() -> None:
    decision = Decision("mine", Reason.FALLBACK_DEFAULT, 1.0, 0, {}, counted=False)
    assignment = assignment_of(Routed(decision, "", stale=False))
    assert (assignment.fallback, assignment.reason, assignment.stale) == (True, "FALLBACK_DEFAULT", False)
