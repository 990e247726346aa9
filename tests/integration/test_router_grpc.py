"""The Router over real gRPC, against a real redis-server."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mabrouter.v1 import router_pb2 as pb

from support import InProcessRouter, RedisServer, open_stub, stats_hash, wait_until
from wire import b64, unb64

ARMS = {"ranker-v1", "ranker-v2", "ranker-v3"}


def test_route_answers_with_a_signed_decision(router: InProcessRouter) -> None:
    channel, router_stub = open_stub(router.address)
    with channel:
        reply = router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id="user-1"), timeout=2)
    assert reply.arm in ARMS
    assert reply.reason == pb.SAMPLED
    assert 0 < reply.propensity <= 1
    assert reply.config_version == 1
    assert reply.payload["endpoint"] == f"http://{reply.arm}:8080"
    assert reply.decision_id


def test_trials_are_flushed_and_an_outcome_counts_exactly_once(
    router: InProcessRouter, applied_ranker: RedisServer
) -> None:
    channel, router_stub = open_stub(router.address)
    with channel:
        replies = [
            router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id=f"u{i}")) for i in range(20)
        ]
        first = replies[0]
        reply = router_stub.ReportOutcome(pb.OutcomeRequest(decision_id=first.decision_id, reward=1.0))
        again = router_stub.ReportOutcome(pb.OutcomeRequest(decision_id=first.decision_id, reward=1.0))
    assert (reply.duplicate, reply.arm, reply.experiment) == (False, first.arm, "ranker")
    assert again.duplicate
    wait_until(
        lambda: sum(int(v) for k, v in stats_hash(applied_ranker).items() if k.endswith(":trials")) == 20,
        5,
        what="20 trials flushed",
    )
    saved = stats_hash(applied_ranker)
    assert saved[f"{first.arm}:count"] == "1"
    assert float(saved[f"{first.arm}:sum"]) == 1.0


def test_outcomes_in_a_batch_get_results_in_order(
    router: InProcessRouter, applied_ranker: RedisServer
) -> None:
    channel, router_stub = open_stub(router.address)
    with channel:
        good = router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u"))
        reply = router_stub.ReportOutcomes(
            pb.ReportOutcomesRequest(
                outcomes=[
                    pb.OutcomeRequest(decision_id=good.decision_id, reward=0.5),
                    pb.OutcomeRequest(decision_id="forged.id", reward=1.0),
                    pb.OutcomeRequest(decision_id=good.decision_id, reward=0.5),
                    pb.OutcomeRequest(decision_id=good.decision_id, reward=3.0),
                ]
            )
        )
    codes = [(r.code, r.duplicate) for r in reply.results]
    assert codes == [
        (0, False),
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], False),
        (0, True),
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], False),
    ]
    assert "outside [0, 1]" in reply.results[3].message
    assert float(stats_hash(applied_ranker)[f"{good.arm}:sum"]) == 0.5


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (
            pb.RouteRequest(experiment="", unit_id="u"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "experiment is empty",
        ),
        (
            pb.RouteRequest(experiment="missing", unit_id="u"),
            grpc.StatusCode.NOT_FOUND,
            "unknown experiment 'missing'",
        ),
        (
            pb.RouteRequest(experiment="ranker", unit_id=""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unit_id is empty",
        ),
        (
            pb.RouteRequest(experiment="ranker", unit_id="u" * 10_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit",
        ),
        (
            pb.RouteRequest(
                experiment="ranker",
                unit_id="u",
                attributes=struct_pb2.Struct(
                    fields={"nested": struct_pb2.Value(struct_value=struct_pb2.Struct())}
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "nested objects",
        ),
    ],
)
def test_bad_route_requests_get_clear_statuses(
    router: InProcessRouter, request_: pb.RouteRequest, code: grpc.StatusCode, needle: str
) -> None:
    channel, router_stub = open_stub(router.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        router_stub.Route(request_, timeout=2)
    assert info.value.code() == code
    assert needle in info.value.details()


@pytest.mark.parametrize(
    ("reward", "needle"),
    [(math.nan, "finite"), (math.inf, "finite"), (-0.1, "outside [0, 1]"), (1.5, "outside [0, 1]")],
)
def test_bad_rewards_are_refused(router: InProcessRouter, reward: float, needle: str) -> None:
    channel, router_stub = open_stub(router.address)
    with channel:
        decision = router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u"))
        with pytest.raises(grpc.RpcError) as info:
            router_stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, reward=reward))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()


def test_a_tampered_decision_id_is_rejected(router: InProcessRouter) -> None:
    channel, router_stub = open_stub(router.address)
    with channel:
        decision = router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u"))
        body, mac = decision.decision_id.split(".")
        payload = unb64(body).decode()
        other_arm = next(arm for arm in sorted(ARMS) if arm != decision.arm)
        claimed = b64(payload.replace(decision.arm, other_arm).encode())
        with pytest.raises(grpc.RpcError) as info:
            router_stub.ReportOutcome(pb.OutcomeRequest(decision_id=f"{claimed}.{mac}", reward=1.0))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature" in info.value.details()


def test_health_and_reflection(router: InProcessRouter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(router.address) as channel:
        for service in ("", "mabrouter.v1.Router"):
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"mabrouter.v1.Router", "grpc.health.v1.Health"} <= names


def test_without_redis_health_is_not_serving_and_default_arm_is_served() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from support import free_port, router_settings

    dead = InProcessRouter(router_settings(f"redis://127.0.0.1:{free_port()}/0")).start(wait_ready=False)
    try:
        with grpc.insecure_channel(dead.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            router_stub = pb_stub(channel)
            reply = router_stub.Route(
                pb.RouteRequest(experiment="ranker", unit_id="u", default_arm="ranker-v1")
            )
            assert (reply.arm, reply.reason, reply.decision_id) == ("ranker-v1", pb.FALLBACK_DEFAULT, "")
            with pytest.raises(grpc.RpcError) as info:
                router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        dead.stop()


def pb_stub(channel: grpc.Channel) -> object:
    from mabrouter.v1 import router_pb2_grpc

    return router_pb2_grpc.RouterStub(channel)


def test_route_batch_answers_each_request(router: InProcessRouter) -> None:
    channel, router_stub = open_stub(router.address)
    with channel:
        reply = router_stub.RouteBatch(
            pb.RouteBatchRequest(
                requests=[
                    pb.RouteRequest(experiment="ranker", unit_id="a"),
                    pb.RouteRequest(experiment="missing", unit_id="b"),
                    pb.RouteRequest(experiment="ranker", unit_id=""),
                    pb.RouteRequest(experiment="ranker", unit_id="c"),
                ]
            )
        )
    codes = [result.code for result in reply.results]
    assert codes == [0, grpc.StatusCode.NOT_FOUND.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    assert reply.results[0].response.arm in ARMS
    assert reply.results[0].response.decision_id != reply.results[3].response.decision_id
    assert "unit_id is empty" in reply.results[2].message


@pytest.mark.parametrize(
    ("policy", "reason"), [("serve_stale", pb.SAMPLED), ("serve_control", pb.STALE_CONTROL)]
)
def test_a_stale_router_follows_its_policy_and_says_so(policy: str, reason: int) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from support import EXAMPLE, cli, router_settings, running_redis

    with running_redis() as redis_server:
        cli("experiment", "apply", str(EXAMPLE), redis_url=redis_server.url)
        settings = router_settings(redis_server.url, max_staleness_seconds=0.5, stale_policy=policy)
        router = InProcessRouter(settings).start()
        try:
            with grpc.insecure_channel(router.address) as channel:
                router_stub = pb_stub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                fresh = router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u"))
                assert (fresh.stale, fresh.reason) == (False, pb.SAMPLED)
                redis_server.stop(kill=True)

                def snapshot_health() -> int:
                    request = health_pb2.HealthCheckRequest(service="mabrouter.snapshot")
                    return health.Check(request).status

                wait_until(
                    lambda: snapshot_health() == health_pb2.HealthCheckResponse.NOT_SERVING,
                    10,
                    what="snapshot health to report staleness",
                )
                stale = router_stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u"))
                assert (stale.stale, stale.reason) == (True, reason)
                overall = health.Check(health_pb2.HealthCheckRequest()).status
                assert overall == health_pb2.HealthCheckResponse.SERVING  # still answering: stay in rotation
        finally:
            router.stop()
