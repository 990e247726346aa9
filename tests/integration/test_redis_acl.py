"""Least-privilege Redis ACL users (docs/reliability.md shows these lines): the router's and the operator's
users are enough end to end, and each is refused what only the other, or neither, may do.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from faults import books, redis_errors, route
from support import EXAMPLE, RouterProcess, cli, cli_parallel, free_port, open_stub, running_redis, wait_until

# Everything the router does: read config/stats/controls, run its Lua scripts (which call SET, GET,
# HMGET, TYPE, HGET, HSET, XADD inside: scripts run with the caller's permissions), append the
# exposure log, subscribe to change notices. It reads every mabrouter key (%R~) but writes only the keys it
# owns: it cannot change an experiment's config or its kill switches. Only the change channel.
ROUTER_ACL = (
    "resetkeys %R~mabrouter:* ~mabrouter:{*}:stats ~mabrouter:{*}:seen:* ~mabrouter:{*}:batch:* "
    "~mabrouter:{*}:sticky:* ~mabrouter:{*}:decisions ~mabrouter:{*}:outcomes ~mabrouter:{*}:audit "
    "~mabrouter:{*}:audited resetchannels &mabrouter:changes -@all "
    "+ping +smembers +hgetall +hget +hmget +type +hset +hincrby +hincrbyfloat +get +set +xadd "
    "+evalsha +eval +script|load +script|exists +subscribe +unsubscribe"
)


# Everything the CLI does: apply/list/status/kill/unkill/rollout/audit/export. It writes configs, switches
# and the audit log, publishes change notices, and only reads counters and logs.
OPERATOR_ACL = (
    "resetkeys %R~mabrouter:* ~mabrouter:experiments ~mabrouter:{*}:config ~mabrouter:{*}:control "
    "~mabrouter:{*}:audit ~mabrouter:{*}:audited resetchannels &mabrouter:changes -@all "
    "+ping +smembers +sadd +hgetall +hget +type +hset +hdel +hincrby +xadd +xrange +xrevrange "
    "+publish +evalsha +eval +script|load +script|exists"
)


STICKY_EXPERIMENT = """\
name: sticky-exp
control: a
arms:
  - name: a
  - name: b
sticky: {ttl_seconds: 3600}
"""


def acl_user(name: str, password: str, rules: str) -> tuple[str, ...]:
    return ("--user", name, "on", f">{password}", *rules.split())


def _sticky_lookup_works(admin: redis.Redis, stub: router_pb2_grpc.RouterStub, attempt: list[int]) -> bool:
    """A unit assigned in Redis by someone else is served its arm with reason STICKY: the router's GET
    worked (a refused or slow lookup falls back to a hash-seeded draw with reason SAMPLED)."""
    attempt[0] += 1
    unit = f"seeded-{attempt[0]}"
    admin.set(f"mabrouter:{{sticky-exp}}:sticky:sticky-exp:{unit}", "b", ex=3600)
    reply = stub.Route(pb.RouteRequest(experiment="sticky-exp", unit_id=unit), timeout=2)
    return reply.arm == "b" and reply.reason == pb.STICKY


def _assert_denied(client: redis.Redis, attempts: list[Callable[[], Any]]) -> int:
    for attempt in attempts:
        with pytest.raises(redis.exceptions.ResponseError, match=r"permission|can.t run"):
            attempt()
    return len(attempts)


def test_least_privilege_acl_users_are_enough_for_the_router_and_the_cli(tmp_path: Path) -> None:
    router_pw, operator_pw, admin_pw = (secrets.token_hex(12) for _ in range(3))
    args = (
        # The harness probes readiness with an unauthenticated PING; in production use "user default off".
        *("--user", "default", "on", "nopass", "-@all", "+ping"),
        *acl_user("router", router_pw, ROUTER_ACL),
        *acl_user("operator", operator_pw, OPERATOR_ACL),
        *acl_user("admin", admin_pw, "~* &* +@all"),  # the test's own eyes
    )
    with running_redis(*args) as redis_server:
        host = f"127.0.0.1:{redis_server.port}"
        router_url = f"redis://router:{router_pw}@{host}/0"
        operator_url = f"redis://operator:{operator_pw}@{host}/0"
        admin = redis.Redis(
            port=redis_server.port, username="admin", password=admin_pw, decode_responses=True
        )
        sticky_file = tmp_path / "sticky.yaml"
        sticky_file.write_text(STICKY_EXPERIMENT)
        cli_parallel(
            operator_url, ("experiment", "apply", str(EXAMPLE)), ("experiment", "apply", str(sticky_file))
        )
        metrics_port = free_port()
        router = RouterProcess(router_url, MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decisions = [route(stub, f"u{i}") for i in range(30)]
                for i in range(10):
                    stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=decisions[i].decision_id, reward=1.0), timeout=5
                    )
                first = stub.Route(pb.RouteRequest(experiment="sticky-exp", unit_id="s1"), timeout=2)
                wait_until(
                    lambda: admin.get("mabrouter:{sticky-exp}:sticky:sticky-exp:s1") == first.arm,
                    5,
                    what="the sticky assignment written (Lua: GET, SET)",
                )
                wait_until(
                    lambda attempt=[0]: _sticky_lookup_works(admin, stub, attempt),
                    5,
                    what="a sticky lookup (GET)",
                )

                cli("kill", "ranker", "--reason", "acl test", "--actor", "ops", redis_url=operator_url)
                wait_until(
                    lambda: route(stub, "k").reason == pb.KILLED, 5, what="the kill to reach the router"
                )
                cli("unkill", "ranker", "--actor", "ops", redis_url=operator_url)
                wait_until(lambda: route(stub, "k").reason == pb.SAMPLED, 5, what="the unkill")
                # A raw edit (an incident with redis-cli): the router writes the audit entry, as its user.
                admin.hset("mabrouter:{ranker}:control", "rollout", "50")
                wait_until(
                    lambda: any(
                        f.get("actor") == "unattributed" for _, f in admin.xrange("mabrouter:{ranker}:audit")
                    ),
                    5,
                    what="the router to audit the raw edit",
                )
                admin.hdel("mabrouter:{ranker}:control", "rollout")
                sampled = sum(1 for d in decisions if d.reason == pb.SAMPLED)
                wait_until(
                    lambda: books(admin).counts.total() == 10, 5, what="outcomes (Lua: SET, HINCRBY...)"
                )
                wait_until(lambda: books(admin).trials >= sampled, 5, what="trials (Lua: SET, HINCRBYFLOAT)")
                wait_until(lambda: admin.xlen("mabrouter:{ranker}:decisions") >= 30, 5, what="exposure log")
                assert admin.xlen("mabrouter:{ranker}:outcomes") == 10
            errors = redis_errors(metrics_port)
            listed, status, audit, exported = cli_parallel(
                operator_url,
                ("experiment", "list"),
                ("status", "ranker", "--json"),
                ("audit", "ranker", "--json"),
                ("export", "ranker"),
            )
            assert "ranker" in listed
            assert "ranker-v3" in status
            assert '"actor": "ops"' in audit or '"actor":"ops"' in audit
            assert len(exported.splitlines()) >= 30
        finally:
            router.kill()
        log = router.output()
        clients = {
            user: redis.Redis(port=redis_server.port, username=user, password=password)
            for user, password in (("router", router_pw), ("operator", operator_pw))
        }
        denied = 0
        for client in clients.values():
            denied += _assert_denied(
                client,
                [
                    client.flushall,
                    lambda client=client: client.config_get("*"),
                    lambda client=client: client.keys("*"),
                    lambda client=client: client.get("not-mabrouter:key"),
                    lambda client=client: client.hgetall("other:{ranker}:stats"),
                    lambda client=client: client.eval("return redis.call('FLUSHALL')", 0),
                    lambda client=client: client.delete("mabrouter:experiments"),
                    lambda client=client: client.execute_command("SCRIPT", "FLUSH"),
                ],
            )
        # Each user lacks what only the other needs: the router never publishes nor changes a config or a
        # switch; the CLI never counts.
        router_client, operator_client = clients["router"], clients["operator"]
        denied += _assert_denied(
            router_client,
            [
                lambda: router_client.publish("mabrouter:changes", "x"),
                lambda: router_client.hset("mabrouter:{ranker}:control", "kill", "0"),
                lambda: router_client.hset("mabrouter:{_global}:control", "kill", "0"),
                lambda: router_client.hset("mabrouter:{ranker}:config", "doc", "{}"),
                lambda: router_client.sadd("mabrouter:experiments", "evil"),
            ],
        )
        denied += _assert_denied(
            operator_client,
            [
                lambda: operator_client.hincrbyfloat("mabrouter:{ranker}:stats", "ranker-v1:sum", 1),
                lambda: operator_client.hset("mabrouter:{ranker}:stats", "ranker-v1:count", 0),
                lambda: operator_client.set("mabrouter:{ranker}:seen:x", "1"),
            ],
        )
        for client in (router_client, operator_client, admin):
            client.close()
    assert errors == 0
    assert "NOPERM" not in log
    assert "permission" not in log
    print(f"\nACLs: the router and operator users are enough end to end; {denied} forbidden commands refused")
