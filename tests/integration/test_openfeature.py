"""mabrouter.openfeature: the OpenFeature provider against a real router and a real Redis.

Tests taking `flags` or `mode` run twice: a provider calling a sidecar, and one deciding in this process
(MabrouterProvider.in_process, as flagd's in-process resolver): the same evaluations, the same mapping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, Reason
from openfeature.provider import ProviderStatus
from openfeature.track import TrackingEventDetails

from mabrouter.client import OutcomeReporter, RouterClient
from mabrouter.openfeature import MabrouterProvider
from mabrouter.openfeature._mapping import route_attributes

from support import (
    EXAMPLE,
    ROOT,
    InProcessRouter,
    RedisServer,
    cli,
    free_port,
    router_settings,
    stats_hash,
    wait_until,
)

ARMS = {"ranker-v1", "ranker-v2", "ranker-v3"}
CONTROL_ARM = "ranker-v1"
FAIL_OPEN_BOUND = 1.0  # generous wall-clock bound for a 50 ms fail-open


@pytest.fixture(autouse=True)
def _reset_openfeature() -> Iterator[None]:
    """Each test starts and ends with OpenFeature's global state cleared (providers shut down)."""
    api.shutdown()
    yield
    api.shutdown()


def use(provider: MabrouterProvider) -> OpenFeatureClient:
    """Register `provider` as the default provider and wait until OpenFeature says it is READY."""
    api.set_provider(provider)
    flags = api.get_client()
    wait_until(lambda: flags.get_provider_status() == ProviderStatus.READY, 10, what="provider READY")
    return flags


@pytest.fixture
def flags(mode: str, request: pytest.FixtureRequest) -> OpenFeatureClient:
    if mode == "embedded":  # the provider's own in-process router, on the example's Redis
        return use(
            MabrouterProvider.in_process(router_settings(request.getfixturevalue("applied_ranker").url))
        )
    router: InProcessRouter = request.getfixturevalue("router")
    # A 2 s deadline: the assertions are about the mapping, not about a loaded CI machine's latency.
    return use(MabrouterProvider(target=router.address, timeout=2.0))


def context(unit: str = "user-1", **attributes: object) -> EvaluationContext:
    return EvaluationContext(targeting_key=unit, attributes=attributes)  # type: ignore[arg-type]


def reward(decision_id: object, value: float | None = 1.0) -> TrackingEventDetails:
    return TrackingEventDetails(value=value, attributes={"decision_id": decision_id})  # type: ignore[dict-item]


# -- evaluation -------------------------------------------------------------------------------------


def test_string_flag_resolves_a_real_arm_with_its_decision(flags: OpenFeatureClient) -> None:
    details = flags.get_string_details(
        "ranker",
        "ranker-v1",
        context(country="DE", age=31, score=0.5, premium=True, tags=["a", "b"], user={"tier": "gold"}),
    )
    assert details.value in ARMS
    assert details.variant == details.value
    assert details.reason == Reason.SPLIT
    assert details.error_code is None
    metadata = details.flag_metadata
    assert isinstance(metadata["decision_id"], str)
    assert metadata["decision_id"]
    assert 0 < float(metadata["propensity"]) <= 1
    assert int(metadata["config_version"]) >= 1
    assert metadata["mabrouter_reason"] == "SAMPLED"
    assert metadata["payload.endpoint"] == f"http://{details.value}:8080"
    assert api.get_provider_metadata().name == "mabrouter"


def test_async_evaluation_routes_too(flags: OpenFeatureClient) -> None:
    details = asyncio.run(flags.get_string_details_async("ranker", "ranker-v1", context("user-async")))
    assert details.value in ARMS
    assert details.reason == Reason.SPLIT
    assert details.flag_metadata["decision_id"]


def test_missing_targeting_key_serves_the_default(flags: OpenFeatureClient) -> None:
    for evaluation_context in (None, EvaluationContext(attributes={"country": "DE"}), context("")):
        details = flags.get_string_details("ranker", "ranker-v2", evaluation_context)
        assert details.value == "ranker-v2"
        assert details.reason == Reason.ERROR
        assert details.error_code == ErrorCode.TARGETING_KEY_MISSING


def test_unknown_experiment_is_flag_not_found(flags: OpenFeatureClient) -> None:
    for flag_key in ("no-such-experiment", "not a valid name!"):
        details = flags.get_string_details(flag_key, "ranker-v2", context())
        assert (details.value, details.reason) == ("ranker-v2", Reason.ERROR)
        assert details.error_code == ErrorCode.FLAG_NOT_FOUND
        assert details.error_message is not None
        assert details.flag_metadata["mabrouter_reason"] == "CLIENT_FALLBACK"
        assert details.flag_metadata["decision_id"] == ""


def test_other_flag_types_are_type_mismatches(flags: OpenFeatureClient) -> None:
    assert flags.get_boolean_value("ranker", True, context()) is True
    results: list[FlagEvaluationDetails[object]] = [
        flags.get_boolean_details("ranker", False, context()),
        flags.get_integer_details("ranker", 7, context()),
        flags.get_float_details("ranker", 0.5, context()),
        flags.get_object_details("ranker", {"arm": "ranker-v1"}, context()),
    ]
    assert [details.value for details in results] == [False, 7, 0.5, {"arm": "ranker-v1"}]
    for details in results:
        assert details.reason == Reason.ERROR
        assert details.error_code == ErrorCode.TYPE_MISMATCH


def test_operator_answers_map_to_openfeature_reasons(
    flags: OpenFeatureClient, applied_ranker: RedisServer, tmp_path: Path
) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    # Targeting on a nested context attribute, which the provider flattens to `user.tier`.
    doc.update(
        targeting={"attribute": "user.tier", "op": "in", "value": ["gold"]},
        allow={"ranker-v2": ["qa-1"]},
        deny=["vip-1"],
    )
    path = tmp_path / "ranker.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli("experiment", "apply", str(path), redis_url=applied_ranker.url)

    def evaluate(unit: str, tier: str = "gold") -> FlagEvaluationDetails[str]:
        # A datetime cannot be sent: it is dropped, and the evaluation still routes.
        seen = datetime(2026, 1, 1, tzinfo=UTC)
        return flags.get_string_details("ranker", "ranker-v3", context(unit, user={"tier": tier}, seen=seen))

    wait_until(lambda: evaluate("u-1", "silver").reason == Reason.DEFAULT, what="the targeting file")
    gold = evaluate("u-1")
    assert (gold.reason, gold.flag_metadata["mabrouter_reason"]) == (Reason.SPLIT, "SAMPLED")
    for unit, tier, arm, reason, mabrouter_reason in (
        ("u-1", "silver", CONTROL_ARM, Reason.DEFAULT, "NOT_TARGETED"),
        ("qa-1", "silver", "ranker-v2", Reason.TARGETING_MATCH, "FORCED"),
        ("vip-1", "gold", CONTROL_ARM, Reason.DEFAULT, "DENIED"),
    ):
        details = evaluate(unit, tier)
        assert (details.value, details.variant, details.reason) == (arm, arm, reason), unit
        assert details.flag_metadata["mabrouter_reason"] == mabrouter_reason
        assert details.error_code is None

    cli("kill", "ranker", "--reason", "incident", redis_url=applied_ranker.url)
    wait_until(lambda: evaluate("u-1").reason == Reason.DISABLED, what="the kill")
    killed = evaluate("u-2")
    assert (killed.value, killed.reason, killed.flag_metadata["mabrouter_reason"]) == (
        CONTROL_ARM,
        Reason.DISABLED,
        "KILLED",
    )


def test_attribute_conversion() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    converted = route_attributes(
        {
            "country": "DE",
            "age": 31,
            "score": 0.5,
            "premium": True,
            "tags": ["a", "b"],
            "user": {"tier": "gold", "plan": {"seats": 3}, "since": moment},
            "seen": moment,
            "numbers": [1, 2],
            "nan": float("nan"),
            "huge": 10**400,
        }
    )
    assert converted == {
        "country": "DE",
        "age": 31,
        "score": 0.5,
        "premium": True,
        "tags": ["a", "b"],
        "user.tier": "gold",
        "user.plan.seats": 3,
    }


# -- fail-open --------------------------------------------------------------------------------------


def test_dead_router_serves_the_default_fast(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mabrouter"):
        flags = use(MabrouterProvider(target=f"127.0.0.1:{free_port()}", timeout=0.05, ready_timeout=0.1))
    assert any("not reachable yet" in record.getMessage() for record in caplog.records)
    for attempt in range(3):  # the first call connects; later ones meet a channel in backoff
        started = time.monotonic()
        details = flags.get_string_details("ranker", "ranker-v1", context(f"user-{attempt}"))
        assert time.monotonic() - started < FAIL_OPEN_BOUND
        assert (details.value, details.variant, details.reason) == ("ranker-v1", None, Reason.ERROR)
        assert details.error_code == ErrorCode.GENERAL
        assert details.error_message is not None
        assert details.error_message.split(":")[0] in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert details.flag_metadata["decision_id"] == ""
    # Tracking a fallback evaluation (empty decision id) is ignored without a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mabrouter"):
        flags.track("reward", context(), reward(details.flag_metadata["decision_id"]))
    assert caplog.records == []


def test_router_without_configuration_is_provider_not_ready(mode: str) -> None:
    # A real router whose Redis is unreachable has no snapshot: it serves the default (FALLBACK_DEFAULT).
    settings = router_settings(f"redis://127.0.0.1:{free_port()}/0")
    if mode == "embedded":
        flags = use(MabrouterProvider.in_process(settings, ready_timeout=0))
        details = flags.get_string_details("ranker", "ranker-v3", context())
    else:
        instance = InProcessRouter(settings).start(wait_ready=False)
        try:
            flags = use(MabrouterProvider(target=instance.address, timeout=2.0))
            details = flags.get_string_details("ranker", "ranker-v3", context())
        finally:
            instance.stop()
    assert (details.value, details.reason) == ("ranker-v3", Reason.ERROR)
    assert details.error_code == ErrorCode.PROVIDER_NOT_READY
    assert details.flag_metadata["mabrouter_reason"] == "FALLBACK_DEFAULT"


# -- tracking ---------------------------------------------------------------------------------------


def test_track_reports_the_reward_exactly_once(flags: OpenFeatureClient, applied_ranker: RedisServer) -> None:
    details = flags.get_string_details("ranker", "ranker-v1", context())
    arm, decision_id = details.value, details.flag_metadata["decision_id"]
    flags.track("reward", context(), reward(decision_id, 0.75))
    flags.track("reward", context(), reward(decision_id, 0.75))  # a retry: counted once by the router
    api.shutdown()  # the provider's shutdown flushes its reporter before closing
    assert stats_hash(applied_ranker)[f"{arm}:count"] == "1"
    assert float(stats_hash(applied_ranker)[f"{arm}:sum"]) == pytest.approx(0.75)


def test_track_with_a_shared_client_and_reporter(
    router: InProcessRouter, applied_ranker: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with RouterClient(router.address, timeout=2.0) as client, OutcomeReporter(client) as reporter:
        flags = use(MabrouterProvider(client, reporter=reporter, tracking_events={"click"}))
        details = flags.get_string_details("ranker", "ranker-v1", context())
        arm, decision_id = details.value, details.flag_metadata["decision_id"]
        flags.track("page_view", context(), reward(decision_id, 0.0))  # not a reward event: ignored
        flags.track("click", context(), TrackingEventDetails(attributes={"decision_id": decision_id}))
        with caplog.at_level(logging.WARNING, logger="mabrouter"):
            for _ in range(3):
                flags.track("click", context(), TrackingEventDetails(value=1.0))  # no decision id
        warnings = [r.getMessage() for r in caplog.records if "decision_id" in r.getMessage()]
        assert len(warnings) == 1, warnings
        api.shutdown()  # flushes the caller's reporter, closes neither it nor the client
        assert reporter.stats().sent == 1
        assert reporter.stats().pending == 0
        assert stats_hash(applied_ranker)[f"{arm}:count"] == "1"
        assert float(stats_hash(applied_ranker)[f"{arm}:sum"]) == 1.0  # no value: a conversion, reward 1
        assert client.route("ranker", "user-2", default_arm="ranker-v1").decision_id  # still open


def test_provider_can_be_registered_again_after_shutdown(mode: str, request: pytest.FixtureRequest) -> None:
    if mode == "embedded":  # shutdown closed its router: registering again starts a new one
        provider = MabrouterProvider.in_process(
            router_settings(request.getfixturevalue("applied_ranker").url)
        )
    else:
        router: InProcessRouter = request.getfixturevalue("router")
        provider = MabrouterProvider(target=router.address, timeout=2.0)
    for round_ in range(2):
        flags = use(provider)
        details = flags.get_string_details("ranker", "ranker-v1", context(f"user-{round_}"))
        assert details.reason == Reason.SPLIT, details
        api.shutdown()


# -- the example ------------------------------------------------------------------------------------


def test_openfeature_example_evaluates_and_tracks(
    router: InProcessRouter, applied_ranker: RedisServer
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "openfeature_example.py"),
            *("--address", router.address, "--unit-id", "user-7", "--reward", "1", "--timeout", "2"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout.splitlines()[0])
    assert evaluation["arm"] in ARMS
    assert evaluation["reason"] == "SPLIT"
    assert evaluation["metadata"]["decision_id"]
    assert stats_hash(applied_ranker)[f"{evaluation['arm']}:count"] == "1"  # shutdown flushed the reward
