"""Decision ids and secrets in use: ids are HMAC-signed with the router's secret, a rotation accepts the
previous key only while it is configured, an id cannot be replayed into another experiment, and no secret
(the Redis password, the decision secrets) ever reaches a log, an error or the CLI's output.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from pathlib import Path

import grpc
import redis

from mabrouter.core import decision_id
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from faults import books, route, rpc_error, stopped
from support import (
    DECISION_SECRET,
    EXAMPLE,
    InProcessRouter,
    RedisServer,
    RouterProcess,
    apply_ranker,
    cli,
    open_stub,
    router_settings,
    running_redis,
    wait_until,
)
from wire import b64, unb64

# -- decision ids: HMAC, rotation, replay ----------------------------------------------------------------


def test_a_decision_id_signed_with_another_secret_is_invalid_argument(router: InProcessRouter) -> None:
    token = decision_id.DecisionToken("ranker", "ranker-v2", 1, int(time.time() * 1000), "forged-1", True)
    forged = decision_id.encode(token, b"not-the-routers-secret-0123456789")
    channel, stub = open_stub(router.address)
    with channel:
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id=forged, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signature does not verify" in error.details()
        genuine = decision_id.encode(token, DECISION_SECRET.encode())  # the fixture router's secret
        assert not stub.ReportOutcome(pb.OutcomeRequest(decision_id=genuine, reward=1.0), timeout=2).duplicate


def test_key_rotation_accepts_the_previous_key_only_while_it_is_configured(redis_server: RedisServer) -> None:
    apply_ranker(redis_server.url)
    old, new = "old-secret-" + secrets.token_hex(16), "new-secret-" + secrets.token_hex(16)
    before = InProcessRouter(router_settings(redis_server.url, decision_secret=old)).start()
    rotating = InProcessRouter(
        router_settings(redis_server.url, decision_secret=new, decision_secret_previous=old)
    ).start()
    after = InProcessRouter(router_settings(redis_server.url, decision_secret=new)).start()
    try:
        with (
            grpc.insecure_channel(before.address) as b,
            grpc.insecure_channel(rotating.address) as r,
            grpc.insecure_channel(after.address) as a,
        ):
            old_stub, rotating_stub, new_stub = (router_pb2_grpc.RouterStub(c) for c in (b, r, a))
            issued_old = [route(old_stub, f"o{i}") for i in range(2)]
            issued_new = route(rotating_stub, "n")
            # During the rotation: ids signed with the old key are accepted ...
            reply = rotating_stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=issued_old[0].decision_id, reward=1.0), timeout=2
            )
            assert (reply.duplicate, reply.arm) == (False, issued_old[0].arm)
            # ... and after it (previous key removed) they are refused,
            error = rpc_error(
                lambda: new_stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=issued_old[1].decision_id, reward=1.0), timeout=2
                )
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "signature does not verify" in error.details()
            # while ids signed with the new key verify everywhere the new key is configured.
            assert not new_stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=issued_new.decision_id, reward=1.0), timeout=2
            ).duplicate
            error = rpc_error(
                lambda: old_stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=issued_new.decision_id, reward=1.0), timeout=2
                )
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for instance in (before, rotating, after):
            instance.stop()


def test_a_decision_id_cannot_be_replayed_into_another_experiment(
    router: InProcessRouter, tmp_path: Path
) -> None:
    other = tmp_path / "ranker-b.yaml"
    other.write_text(EXAMPLE.read_text().replace("name: ranker\n", "name: ranker-b\n"))
    cli("experiment", "apply", str(other), redis_url=router.settings.redis_url)
    channel, stub = open_stub(router.address)
    with channel:
        wait_until(
            lambda: stub.Route(pb.RouteRequest(experiment="ranker-b", unit_id="u"), timeout=2).decision_id,
            5,
            what="the second experiment",
        )
        decision = route(stub, "u")
        body, mac = decision.decision_id.split(".")
        payload = unb64(body).decode()
        assert payload.startswith("1|ranker|")
        replayed = b64(payload.replace("1|ranker|", "1|ranker-b|", 1).encode()) + "." + mac
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id=replayed, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signature does not verify" in error.details()
        # Nor with a non-canonical spelling of the same MAC (spare base64 bits) to dodge the dedup by id.
        respelled = next(
            f"{body}.{mac[:-1]}{c}"
            for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            if c != mac[-1] and unb64(mac[:-1] + c) == unb64(mac)
        )
        error = rpc_error(
            lambda: stub.ReportOutcome(pb.OutcomeRequest(decision_id=respelled, reward=1.0), timeout=2)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "non-canonical" in error.details()
        reply = stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0), timeout=2)
        assert (reply.experiment, reply.duplicate) == ("ranker", False)
    client = redis.Redis.from_url(router.settings.redis_url, decode_responses=True)
    try:
        assert books(client, "ranker-b").counts == Counter()
        assert sum(books(client, "ranker").counts.values()) == 1
    finally:
        client.close()


# -- secrets stay out of logs ----------------------------------------------------------------------------


def test_secrets_never_appear_in_the_router_log_or_errors(tmp_path: Path) -> None:
    password = "redis-pw-" + secrets.token_hex(8)
    secret = "decision-secret-" + secrets.token_hex(16)
    previous = "previous-secret-" + secrets.token_hex(16)
    with running_redis() as redis_server:
        admin = redis_server.client()
        admin.config_set(
            "requirepass", password
        )  # = redis-server --requirepass (support pings unauthenticated)
        admin.close()
        url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"
        apply_ranker(url)
        router = RouterProcess(
            url,
            MABROUTER_DECISION_SECRET=secret,
            MABROUTER_DECISION_SECRET_PREVIOUS=previous,
            MABROUTER_LOG_LEVEL="DEBUG",
            MABROUTER_SPOOL_DIR=str(tmp_path / "spool"),
        )
        details = []
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions = [route(stub, f"u{i}") for i in range(5)]
                stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=decisions[0].decision_id, reward=1.0), timeout=5
                )
                details.extend(
                    rpc_error(
                        lambda bad=bad: stub.ReportOutcome(
                            pb.OutcomeRequest(decision_id=bad, reward=1.0), timeout=2
                        )
                    ).details()
                    for bad in ("garbage", decisions[1].decision_id[:-2] + "AA")
                )
                with stopped(redis_server):  # errors and warnings get logged, outcomes spooled
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[2].decision_id, reward=1.0), timeout=10
                    )
                redis_server.stop(kill=True)
                time.sleep(0.5)
                details.append(rpc_error(lambda: route(stub, "u" * 600)).details())
            assert router.terminate() == 0
        finally:
            router.kill()
        cli_down = cli("experiment", "list", redis_url=url, check=False)
    log = router.output()
    assert f"redis redis://***@127.0.0.1:{redis_server.port}/0" in log  # the URL is logged, redacted
    assert "snapshot refresh failed" in log  # the outage was logged ...
    assert cli_down.returncode == 3
    for text in (log, cli_down.stdout, cli_down.stderr, *details):
        for hidden in (password, secret, previous):
            assert hidden not in text  # ... without a secret
