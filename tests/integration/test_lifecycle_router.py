"""Archive, unarchive and delete as a router sees them: a real router (RouterApp serving gRPC in this
process, refreshing every 200 ms as by default) on a private redis-server, and the real CLI as a process.

An archived experiment is answered, within a second, with the caller's default_arm (reason
FALLBACK_DEFAULT) or FAILED_PRECONDITION; its statistics, logs and switches stay as they were and an
unarchive serves it from them. A deleted experiment leaves no key behind, and the others are untouched.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import grpc
import pytest
import redis
import yaml

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import (
    EXAMPLE,
    SERVING,
    InProcessRouter,
    RedisServer,
    apply_experiments,
    cli,
    health_status,
    open_stub,
    router_settings,
    stats_hash,
    wait_until,
)

# Every key family of an experiment (src/mabrouter/store/keys.py): a delete must leave none of them.
FAMILIES = {
    "config",
    "stats",
    "control",
    "audit",
    "audited",
    "decisions",
    "outcomes",
    "seen:*",
    "batch:*",
    "sticky:*",
}


def route(
    stub: router_pb2_grpc.RouterStub, unit: str, experiment: str = "ranker", default: str = ""
) -> pb.RouteResponse:
    return stub.Route(pb.RouteRequest(experiment=experiment, unit_id=unit, default_arm=default), timeout=2)


def refused(stub: router_pb2_grpc.RouterStub, experiment: str = "ranker") -> grpc.RpcError | None:
    try:
        route(stub, "u-probe", experiment)
    except grpc.RpcError as exc:
        return exc
    return None


def total_trials(server: RedisServer, experiment: str = "ranker") -> float:
    return sum(float(v) for k, v in stats_hash(server, experiment).items() if k.endswith(":trials"))


def code(error: grpc.RpcError | None) -> grpc.StatusCode | None:
    return error.code() if error is not None else None


def family(key: str) -> str:
    """`mabrouter:{exp}:stats` -> `stats`; `mabrouter:{exp}:sticky:salt:unit` -> `sticky:*`."""
    name, _, more = key.split("}:", 1)[1].partition(":")
    return f"{name}:*" if more else name


def printed_version(stdout: str) -> int:
    found = re.search(r"\(version (\d+)\)", stdout)
    assert found, stdout
    return int(found.group(1))


def every_key(client: redis.Redis, pattern: str = "*") -> dict[str, bytes]:
    """Every key matching `pattern` with its serialized value (DUMP): equal dicts, equal contents."""
    return {str(key): client.dump(key) for key in client.scan_iter(pattern)}  # type: ignore[misc]


@pytest.fixture
def fast_router(applied_ranker: RedisServer) -> InProcessRouter:
    """A router refreshing every 200 ms (the default): "within a second" does not lean on a fast poll."""
    with InProcessRouter(router_settings(applied_ranker.url, refresh_interval_ms=200)).start() as router:
        yield router  # type: ignore[misc]


def test_archive_stops_serving_within_a_second_keeps_everything_and_unarchive_restores_it(
    applied_ranker: RedisServer, fast_router: InProcessRouter
) -> None:
    url = applied_ranker.url
    channel, stub = open_stub(fast_router.address)
    try:
        served = [route(stub, f"user-{i}") for i in range(40)]
        for reply in served[:10]:
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0), timeout=2)
        wait_until(lambda: total_trials(applied_ranker) == 40, 5, what="the 40 trials flushed")
        fleet = json.loads(cli("status", "--json", redis_url=url).stdout)
        assert fleet[0]["decisions_last_hour"] == 40  # what the router logged, counted from its log
        cli("kill", "ranker", "--arm", "ranker-v3", "--reason", "slow", redis_url=url)
        stats_before = stats_hash(applied_ranker)

        archived = cli("experiment", "archive", "ranker", "--reason", "done", redis_url=url).stdout
        written = time.monotonic()
        wait_until(lambda: refused(stub) is not None, 1.0, interval=0.005, what="the router to stop serving")
        print(f"archive obeyed {time.monotonic() - written:.3f} s after the CLI returned")
        assert "FAILED_PRECONDITION" in archived

        error = refused(stub)
        assert error is not None
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'ranker' is archived" in (error.details() or "")
        fallback = route(stub, "user-1", default="ranker-v1")
        assert (fallback.arm, fallback.reason, fallback.decision_id) == ("ranker-v1", pb.FALLBACK_DEFAULT, "")
        # Deliberate, not a fault: the snapshot health, which alerts on unusable data, stays SERVING.
        assert health_status(fast_router.address, "mabrouter.snapshot") == SERVING
        assert health_status(fast_router.address) == SERVING
        with pytest.raises(grpc.RpcError) as outcome:  # an outcome reported while archived is not counted
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=served[20].decision_id, reward=1.0), timeout=2)
        assert outcome.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # not NOT_FOUND: it exists
        assert "is archived" in (outcome.value.details() or "")
        for i in range(20):
            route(stub, f"user-{i}", default="ranker-v1")
        time.sleep(0.5)  # 25 flush intervals: anything counted would be in Redis by now
        assert stats_hash(applied_ranker) == stats_before
        listed = cli("experiment", "list", redis_url=url).stdout
        assert "ranker\tversion 3\tarchived" in listed
        status = json.loads(cli("status", "ranker", "--json", redis_url=url).stdout)
        assert (status["state"], status["archived"]) == ("archived", True)
        assert sum(arm["trials"] for arm in status["arms"]) == 40  # statistics kept

        restored = cli("experiment", "unarchive", "ranker", redis_url=url).stdout
        version = printed_version(restored)
        wait_until(lambda: refused(stub) is None, 1.0, interval=0.005, what="the router to serve it again")
        again = [route(stub, f"user-{i}") for i in range(200)]
        assert {reply.config_version for reply in again} == {version}
        assert {reply.reason for reply in again} == {pb.SAMPLED}
        assert "ranker-v3" not in {reply.arm for reply in again}  # its arm kill outlived the archive
        assert stats_hash(applied_ranker)["ranker-v1:count"] == stats_before["ranker-v1:count"]
    finally:
        channel.close()


def test_delete_removes_every_key_of_the_experiment_and_nothing_else(
    applied_ranker: RedisServer, fast_router: InProcessRouter, tmp_path: Path
) -> None:
    url = applied_ranker.url
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc.update(name="doomed", sticky={"ttl_seconds": 3600})  # sticky: its units get keys of their own
    apply_experiments(url, tmp_path, doc)
    client = applied_ranker.client()
    channel, stub = open_stub(fast_router.address)
    try:
        wait_until(lambda: refused(stub, "doomed") is None, 5, what="the router to load doomed")
        replies = [route(stub, f"user-{i}", "doomed") for i in range(30)]
        route(stub, "user-0")  # ranker has traffic too: its keys must survive
        for reply in replies[:10]:
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0), timeout=2)

        cli("kill", "doomed", "--arm", "ranker-v3", "--reason", "slow", redis_url=url)  # its control hash

        def families() -> set[str]:
            return {family(key) for key in client.scan_iter("mabrouter:{doomed}:*")}

        wait_until(lambda: families() >= FAMILIES, 5, what=f"every key family (have {families()})")
        wait_until(lambda: client.xlen("mabrouter:{ranker}:decisions") == 1, 5, what="ranker's decision")
        live = cli("experiment", "delete", "doomed", "--yes", redis_url=url, check=False)
        assert (live.returncode, live.stdout) == (2, "")
        assert "archive it first" in live.stderr

        cli("experiment", "archive", "doomed", redis_url=url)
        others = every_key(client)
        others = {
            key: value
            for key, value in others.items()
            if "{doomed}" not in key and key != "mabrouter:experiments"
        }
        asked = cli("experiment", "delete", "doomed", redis_url=url, check=False)
        assert asked.returncode == 2
        assert "refusing to delete doomed without --yes (nothing deleted)" in asked.stderr
        for wanted in FAMILIES:
            assert f"mabrouter:{{doomed}}:{wanted}  (" in asked.stdout, (wanted, asked.stdout)
        assert families() >= FAMILIES  # nothing deleted

        deleted = cli("experiment", "delete", "doomed", "--yes", "--reason", "gone", redis_url=url)
        assert "deleted experiment doomed" in deleted.stdout
        assert list(client.scan_iter("*doomed*")) == []
        assert client.smembers("mabrouter:experiments") == {"ranker"}
        after = {key: value for key, value in every_key(client).items() if key != "mabrouter:experiments"}
        assert {key: value for key, value in after.items() if key in others} == others
        assert set(after) - set(others) == {"mabrouter:{_global}:audit"}  # where the deletion is recorded
        audit = [json.loads(line) for line in cli("audit", "--json", redis_url=url).stdout.splitlines()]
        assert [(e["action"], e["target"], e["reason"]) for e in audit if e["scope"] == "_global"] == [
            ("delete", "doomed", "gone")
        ]
        wait_until(lambda: code(refused(stub, "doomed")) == grpc.StatusCode.NOT_FOUND, 1.0, what="NOT_FOUND")
        unknown = cli("status", "doomed", redis_url=url, check=False)
        assert unknown.returncode == 2
    finally:
        channel.close()
        client.close()
