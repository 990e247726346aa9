"""Operator controls end to end: the real CLI and plain redis-cli against real `mabrouter serve` processes.

Every router here is a separate `mabrouter serve` process (refresh every 50 ms, tests/support.py) sharing
one private redis-server; tests taking `mode` run again with in-process routers (mabrouter.embedded,
several in this process, tests/modes.py), which must obey the same controls the same way. A change counts
as propagated when a replica's Route answers reflect it; for changes to one experiment that is when its
RouteResponse.config_version reaches the version the CLI printed. Waits have deadlines
(support.wait_until); "stays in force" is observed by routing for many refresh intervals (`keeps`), never
assumed after a sleep.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2

from mabrouter.core.hashing import bucket_of
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from modes import EmbeddedStub, Stub, embedded
from support import EXAMPLE, RedisServer, RouterProcess, cli, redis_cli, router_settings, wait_until

CONTROL = "mabrouter:{ranker}:control"
CONFIG = "mabrouter:{ranker}:config"
GLOBAL_CONTROL = "mabrouter:{_global}:control"
AUDIT = "mabrouter:{ranker}:audit"
CHANGES = "mabrouter:changes"
ARMS = ("ranker-v1", "ranker-v2", "ranker-v3")
CONTROL_ARM = "ranker-v1"
DEADLINE = 5.0  # seconds a replica gets to obey; the CLI path takes milliseconds, polling 50 ms
KEEP = 0.3  # seconds (6 refresh intervals) a state must stay in force to count as kept
LAST_GOOD = "keeping the last good state of ranker"
UNITS = [f"user-{i}" for i in range(2000)]


class Replica:
    """One router: a `mabrouter serve` process and a channel to it, or an in-process router (no process)."""

    def __init__(self, stub: Stub, process: RouterProcess | None = None) -> None:
        self.process = process
        self.stub = stub
        self.name = process.address if process is not None else "an in-process router"

    def route(self, unit: str = "u-1", experiment: str = "ranker", **attributes: Any) -> pb.RouteResponse:
        struct = struct_pb2.Struct()
        struct.update(attributes)
        request = pb.RouteRequest(experiment=experiment, unit_id=unit, attributes=struct)
        return self.stub.Route(request, timeout=2)

    def route_many(self, units: list[str], experiment: str = "ranker") -> list[pb.RouteResponse]:
        """Route every unit, 50 calls in flight at a time (on the one channel, to a sidecar)."""
        replies: list[pb.RouteResponse] = []
        for start in range(0, len(units), 50):
            calls = [
                self.stub.Route.future(pb.RouteRequest(experiment=experiment, unit_id=unit), timeout=10)
                for unit in units[start : start + 50]
            ]
            replies += [call.result() for call in calls]
        return replies

    def log_count(self, text: str) -> int:
        assert self.process is not None, "only a router process has a log of its own"
        return self.process.output().count(text)

    def output(self) -> str:
        return self.process.output() if self.process is not None else "(in-process: see the test's log)"


@contextmanager
def replicas(
    redis_server: RedisServer, count: int, mode: str = "sidecar", **env: str
) -> Iterator[list[Replica]]:
    """`count` routers sharing `redis_server`: `mabrouter serve` processes, or in-process routers when
    `mode` is "embedded" (`env` as settings: MABROUTER_FLUSH_INTERVAL_MS -> flush_interval_ms)."""
    if mode == "embedded":
        settings = router_settings(
            redis_server.url,
            **{name.removeprefix("MABROUTER_").lower(): value for name, value in env.items()},
        )
        with ExitStack() as stack:
            yield [Replica(EmbeddedStub(stack.enter_context(embedded(settings)))) for _ in range(count)]
        return
    processes = [RouterProcess(redis_server.url, **env) for _ in range(count)]
    channels: list[grpc.Channel] = []
    group: list[Replica] = []
    try:
        for process in processes:
            process.wait_serving(timeout=60)  # generous: CI machines can be loaded
            channels.append(grpc.insecure_channel(process.address))
            group.append(Replica(router_pb2_grpc.RouterStub(channels[-1]), process))
        yield group
    finally:
        for channel in channels:
            channel.close()
        for process in processes:
            process.kill()
            with suppress(OSError):
                process.log.close()
                Path(process.log.name).unlink()


def obeyed(
    group: list[Replica], check: Callable[[Replica], object], what: str, timeout: float = DEADLINE
) -> None:
    """Wait (with a deadline) until `check` holds on every replica; on timeout show their logs."""
    for replica in group:
        try:
            wait_until(lambda r=replica: check(r), timeout, what=f"{what} on {replica.name}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nrouter log:\n{replica.output()[-3000:]}") from None


def keeps(check: Callable[[], None], seconds: float = KEEP) -> int:
    """Run `check` back to back for `seconds` (it asserts); return how many times it ran."""
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        check()
        runs += 1
    return runs


def printed_version(result: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"\(version (\d+)", result.stdout)
    assert match, f"no version in CLI output: {result.stdout!r}"
    return int(match.group(1))


def at_version(version: int) -> Callable[[Replica], bool]:
    """True once the replica answers from config version `version` or later."""
    return lambda replica: replica.route().config_version >= version


def audit(redis_server: RedisServer, scope: str | None = None) -> list[dict[str, str]]:
    args = ["audit", "--json", "--limit", "1000"] + ([scope] if scope else [])
    return [json.loads(line) for line in cli(*args, redis_url=redis_server.url).stdout.splitlines()]


def unattributed_entries(redis_server: RedisServer) -> list[tuple[str, str]]:
    """(before, after) of the raw-edit entries in ranker's audit stream, read straight from Redis."""
    client = redis_server.client()
    try:
        entries = [fields for _, fields in client.xrange(AUDIT)]
    finally:
        client.close()
    return [(e["before"], e["after"]) for e in entries if e["actor"] == "unattributed"]


def stored_state(redis_server: RedisServer) -> tuple[dict[str, str], dict[str, str], int, dict[str, str]]:
    client = redis_server.client()
    try:
        return (
            client.hgetall(CONTROL),
            client.hgetall(CONFIG),
            client.xlen(AUDIT),
            client.hgetall(GLOBAL_CONTROL),
        )
    finally:
        client.close()


def write_experiment(path: Path, **changes: Any) -> Path:
    """The example experiment with `changes` applied to its document."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- kill / unkill ----------------------------------------------------------------------------------


def test_cli_kill_arm_kill_and_unkill_reach_every_replica(mode: str, applied_ranker: RedisServer) -> None:
    url = applied_ranker.url
    # Trial counts are never flushed here, so the statistics (and every replica's propensities) only
    # change when a control does: the propensities seen after a change all come from one snapshot.
    with replicas(applied_ranker, 3, mode, MABROUTER_FLUSH_INTERVAL_MS="60000") as group:
        for replica in group:
            assert replica.route().reason == pb.SAMPLED

        version = printed_version(cli("kill", "ranker", "--reason", "incident 42", redis_url=url))
        obeyed(group, at_version(version), "the kill")
        for replica in group:
            for reply in replica.route_many(UNITS[:100]):
                assert (reply.arm, reply.reason, reply.propensity) == (CONTROL_ARM, pb.KILLED, 1.0)
                assert reply.payload["endpoint"] == "http://ranker-v1:8080"

        version = printed_version(cli("unkill", "ranker", redis_url=url))
        obeyed(group, at_version(version), "the unkill")
        for replica in group:
            assert {reply.reason for reply in replica.route_many(UNITS[:100])} == {pb.SAMPLED}

        # One arm killed: it is never served, and the live arms' propensities sum to 1.
        version = printed_version(
            cli("kill", "ranker", "--arm", "ranker-v3", "--reason", "v3 regressed", redis_url=url)
        )
        obeyed(group, at_version(version), "the arm kill")
        for replica in group:
            propensities: dict[str, set[float]] = {}
            for reply in replica.route_many(UNITS[:300]):
                assert reply.reason == pb.SAMPLED
                propensities.setdefault(reply.arm, set()).add(reply.propensity)
            assert set(propensities) == {"ranker-v1", "ranker-v2"}, propensities
            assert all(len(values) == 1 for values in propensities.values()), propensities
            total = sum(values.pop() for values in propensities.values())
            assert total == pytest.approx(1.0, abs=1e-9)

        # Every experimenting arm killed: only the control is left, and the answer says KILLED.
        version = printed_version(
            cli("kill", "ranker", "--arm", "ranker-v2", "--reason", "v2 too", redis_url=url)
        )
        obeyed(group, at_version(version), "the second arm kill")
        for replica in group:
            for reply in replica.route_many(UNITS[:300]):
                assert (reply.arm, reply.reason, reply.propensity) == (CONTROL_ARM, pb.KILLED, 1.0)

        # Bringing one arm back resumes sampling between it and the control; the other stays out.
        version = printed_version(cli("unkill", "ranker", "--arm", "ranker-v2", redis_url=url))
        obeyed(group, at_version(version), "the arm unkill")
        for replica in group:
            replies = replica.route_many(UNITS[:100])
            assert {reply.reason for reply in replies} == {pb.SAMPLED}
            assert {reply.arm for reply in replies} == {"ranker-v1", "ranker-v2"}


def test_global_kill_stops_every_experiment_until_unkilled(
    mode: str, applied_ranker: RedisServer, tmp_path: Path
) -> None:
    url = applied_ranker.url
    search = tmp_path / "search.yaml"
    search.write_text(
        "name: search\ncontrol: search-a\narms:\n  - name: search-a\n  - name: search-b\n  - name: search-c\n"
    )
    cli("experiment", "apply", str(search), redis_url=url)
    with replicas(applied_ranker, 3, mode) as group:

        def answers(replica: Replica, reason: int) -> bool:
            return all(replica.route(experiment=name).reason == reason for name in ("ranker", "search"))

        obeyed(group, lambda r: answers(r, pb.SAMPLED), "both experiments sampling")
        cli("kill", "--all", "--reason", "global incident", "--actor", "oncall", redis_url=url)
        obeyed(group, lambda r: answers(r, pb.KILLED), "the global kill")
        for replica in group:
            for name, control in (("ranker", CONTROL_ARM), ("search", "search-a")):
                replies = replica.route_many(UNITS[:100], name)
                assert {(reply.arm, reply.reason) for reply in replies} == {(control, pb.KILLED)}

        cli("unkill", "--all", "--reason", "resolved", "--actor", "oncall", redis_url=url)
        obeyed(group, lambda r: answers(r, pb.SAMPLED), "the global unkill")
        for replica in group:
            replies = replica.route_many(UNITS[:100], "search")
            assert {reply.reason for reply in replies} == {pb.SAMPLED}
            assert {reply.arm for reply in replies} == {"search-a", "search-b", "search-c"}

    entries = [entry for entry in audit(applied_ranker) if entry["scope"] == "_global"]
    assert [(e["actor"], e["action"], e["target"], e["before"], e["after"]) for e in entries] == [
        ("oncall", "kill", "_global", "", "1"),
        ("oncall", "unkill", "_global", "1", ""),
    ]
    assert int(entries[0]["version"]) < int(entries[1]["version"])


def test_redis_cli_kill_reaches_every_replica_by_polling_and_is_audited_once(
    applied_ranker: RedisServer,
) -> None:
    def audit_is(expected: list[tuple[str, str]]) -> Callable[[], None]:
        def check() -> None:
            assert unattributed_entries(applied_ranker) == expected

        return check

    watcher = applied_ranker.client()
    feed = watcher.pubsub(ignore_subscribe_messages=True)
    feed.subscribe(CHANGES)
    try:
        with replicas(applied_ranker, 3) as group:
            obeyed(group, lambda r: r.route().reason == pb.SAMPLED, "sampling")
            assert redis_cli(applied_ranker, "HSET", CONTROL, "kill", "1") == "1"
            obeyed(group, lambda r: r.route().reason == pb.KILLED, "the raw kill")
            for replica in group:
                assert {reply.reason for reply in replica.route_many(UNITS[:100])} == {pb.KILLED}
            # All three noticed the edit (each logs it, then records it), yet it has one audit entry.
            obeyed(group, lambda r: r.log_count("unattributed change to ranker: '' -> '1'") == 1, "notice")
            wait_until(lambda: unattributed_entries(applied_ranker), DEADLINE, what="the audit entry")
            assert keeps(audit_is([("", "1")])) > 10
            raw = [entry for entry in audit(applied_ranker, "ranker") if entry["actor"] == "unattributed"]
            assert len(raw) == 1, raw
            assert (raw[0]["action"], raw[0]["target"], raw[0]["before"], raw[0]["after"]) == (
                "raw-edit",
                "ranker",
                "",
                "1",
            )

            assert redis_cli(applied_ranker, "HSET", CONTROL, "kill", "0") == "0"
            obeyed(group, lambda r: r.route().reason == pb.SAMPLED, "the raw unkill")
            obeyed(group, lambda r: r.log_count("unattributed change to ranker: '1' -> '0'") == 1, "notice")
            wait_until(lambda: len(unattributed_entries(applied_ranker)) > 1, DEADLINE, what="the entry")
            assert keeps(audit_is([("", "1"), ("1", "0")])) > 10
        # Nothing announced these edits: the replicas found them by polling.
        assert feed.get_message(timeout=0.1) is None
    finally:
        feed.close()
        watcher.close()


# --- audit --------------------------------------------------------------------------------------------


def test_every_cli_change_writes_one_attributed_audit_entry(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    relaunch = write_experiment(tmp_path / "ranker.yaml", description="second launch")
    printed = [
        printed_version(cli(*args, "--actor", "alice", redis_url=url))
        for args in (
            ("experiment", "apply", str(EXAMPLE), "--reason", "launch"),
            ("kill", "ranker", "--reason", "bad latency"),
            ("unkill", "ranker", "--reason", "latency fixed"),
            ("rollout", "ranker", "25", "--reason", "ramp up"),
            ("kill", "ranker", "--arm", "ranker-v2", "--reason", "v2 errors"),
            ("experiment", "apply", str(relaunch), "--reason", "relaunch"),
        )
    ]
    entries = audit(redis_server, "ranker")
    assert len(entries) == 6, entries
    assert all(entry["actor"] == "alice" and entry["scope"] == "ranker" for entry in entries)
    assert [(e["action"], e["target"], e["before"], e["after"], e["reason"]) for e in entries[1:5]] == [
        ("kill", "ranker", "", "1", "bad latency"),
        ("unkill", "ranker", "1", "", "latency fixed"),
        ("rollout", "ranker/rollout", "", "25", "ramp up"),
        ("kill", "ranker/kill:ranker-v2", "", "1", "v2 errors"),
    ]
    first, last = entries[0], entries[5]
    assert (first["action"], first["before"], first["reason"]) == ("apply", "", "launch")
    assert json.loads(first["after"])["description"].startswith("Ranking model v1")
    assert (last["action"], last["before"], last["reason"]) == ("apply", first["after"], "relaunch")
    assert json.loads(last["after"])["description"] == "second launch"
    versions = [int(entry["version"]) for entry in entries]
    assert versions == printed
    assert all(a < b for a, b in itertools.pairwise(versions)), versions
    assert all(int(entry["ts_ms"]) > 0 for entry in entries)


# --- rollout ------------------------------------------------------------------------------------------


def test_rollout_exposes_a_stable_growing_share_of_units(mode: str, applied_ranker: RedisServer) -> None:
    url = applied_ranker.url
    units = UNITS
    with replicas(applied_ranker, 1, mode) as (replica,):

        def exposed_at(percent: str) -> set[str]:
            version = printed_version(cli("rollout", "ranker", percent, redis_url=url))
            obeyed([replica], at_version(version), f"rollout {percent}")
            exposed = set()
            for unit, reply in zip(units, replica.route_many(units), strict=True):
                if reply.reason == pb.SAMPLED:
                    exposed.add(unit)
                else:
                    assert (reply.arm, reply.reason, reply.propensity) == (CONTROL_ARM, pb.NOT_EXPOSED, 1.0)
            return exposed

        assert exposed_at("0") == set()
        at_30 = exposed_at("30")
        # 2000 units at 30%: binomial sd ~20; +-90 is 4.4 sd.
        assert 510 <= len(at_30) <= 690, len(at_30)
        # Exactly the units whose bucket (the cross-language hash contract) is below 30%.
        assert at_30 == {unit for unit in units if bucket_of("ranker", unit) < 3000}
        at_60 = exposed_at("60")
        assert 1110 <= len(at_60) <= 1290, len(at_60)
        assert at_30 <= at_60, f"{len(at_30 - at_60)} units exposed at 30% lost exposure at 60%"


# --- bad input ----------------------------------------------------------------------------------------


def test_cli_refuses_bad_input_and_changes_nothing(applied_ranker: RedisServer) -> None:
    url = applied_ranker.url
    before = stored_state(applied_ranker)
    refused = {
        ("rollout", "ranker", "150"): ["'150'", "percent from 0 to 100"],
        ("rollout", "ranker", "abc"): ["'abc'", "percent from 0 to 100"],
        ("rollout", "ranker", "nan"): ["'nan'", "percent from 0 to 100"],
        ("kill", "ranker", "--arm", "ranker-v1", "--reason", "x"): ["ranker-v1 is the control arm"],
        ("kill", "ranker", "--arm", "nope", "--reason", "x"): [
            "no arm 'nope'",
            "arms: ranker-v1, ranker-v2, ranker-v3",
        ],
        ("kill", "ranker"): ["the following arguments are required: --reason"],
        ("kill", "nosuch", "--reason", "x"): ["unknown experiment 'nosuch'"],
    }
    with ThreadPoolExecutor(4) as pool:
        results = pool.map(lambda args: cli(*args, redis_url=url, check=False), refused)
    for (args, messages), result in zip(refused.items(), results, strict=True):
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        for message in messages:
            assert message in result.stderr, (args, result.stderr)
    assert stored_state(applied_ranker) == before


def test_routers_reject_bad_raw_values_and_keep_the_last_good_state(applied_ranker: RedisServer) -> None:
    url = applied_ranker.url
    with replicas(applied_ranker, 2) as group:

        def all_replies(reason: int) -> Callable[[], None]:
            def check() -> None:
                for replica in group:
                    reply = replica.route()
                    assert reply.reason == reason, (reply, replica.process.output()[-2000:])

            return check

        def rejected(edit: tuple[str, ...], count: int, still: int) -> None:
            redis_cli(applied_ranker, "HSET", *edit)
            obeyed(group, lambda r: r.log_count(LAST_GOOD) == count, f"rejection of {edit}")
            assert keeps(all_replies(still)) > 10
            for replica in group:
                assert replica.log_count(LAST_GOOD) == count, replica.process.output()[-2000:]

        # A kill in force survives a value that does not parse.
        version = printed_version(cli("kill", "ranker", "--reason", "incident", redis_url=url))
        obeyed(group, at_version(version), "the kill")
        rejected((CONTROL, "kill", "maybe"), count=1, still=pb.KILLED)
        assert "control field 'kill' is 'maybe'; use 1 (on) or 0 (off)" in group[0].process.output()
        # A valid edit is obeyed again.
        redis_cli(applied_ranker, "HSET", CONTROL, "kill", "0")
        obeyed(group, lambda r: r.route().reason == pb.SAMPLED, "the raw unkill")

        # Sampling survives an out-of-range rollout, then an unknown field.
        rejected((CONTROL, "rollout", "500"), count=2, still=pb.SAMPLED)
        assert "control field 'rollout' is '500'" in group[0].process.output()
        redis_cli(applied_ranker, "HDEL", CONTROL, "rollout")
        rejected((CONTROL, "kil", "1"), count=3, still=pb.SAMPLED)
        assert "unknown control field 'kil'" in group[0].process.output()
        redis_cli(applied_ranker, "HDEL", CONTROL, "kil")
        redis_cli(applied_ranker, "HSET", CONTROL, "kill", "1")
        obeyed(group, lambda r: r.route().reason == pb.KILLED, "the corrected raw kill")
        redis_cli(applied_ranker, "HSET", CONTROL, "kill", "0")
        obeyed(group, lambda r: r.route().reason == pb.SAMPLED, "the raw unkill")

        # The global switch is validated too.
        redis_cli(applied_ranker, "HSET", GLOBAL_CONTROL, "kill", "maybe")
        obeyed(group, lambda r: r.log_count("keeping the last good state of _global") == 1, "rejection")
        assert keeps(all_replies(pb.SAMPLED)) > 10
        redis_cli(applied_ranker, "HSET", GLOBAL_CONTROL, "kill", "1")
        obeyed(group, lambda r: r.route().reason == pb.KILLED, "the raw global kill")


# --- experiment files ---------------------------------------------------------------------------------


def test_targeting_allow_and_deny_from_an_applied_file(
    mode: str, applied_ranker: RedisServer, tmp_path: Path
) -> None:
    path = write_experiment(
        tmp_path / "ranker.yaml",
        targeting={"attribute": "country", "op": "in", "value": ["US", "CA"]},
        allow={"ranker-v2": ["qa-1"]},
        deny=["vip-1"],
    )
    with replicas(applied_ranker, 1, mode) as (replica,):
        assert replica.route(country="FR").reason == pb.SAMPLED  # version 1 targets everyone
        version = printed_version(cli("experiment", "apply", str(path), redis_url=applied_ranker.url))
        obeyed([replica], at_version(version), "the new file")

        for country in ("US", "CA"):
            replies = [replica.route(f"u-{i}", country=country) for i in range(60)]
            assert {reply.reason for reply in replies} == {pb.SAMPLED}
            assert {reply.arm for reply in replies} == set(ARMS)
        for attributes in ({"country": "FR"}, {}, {"country": "us"}, {"region": "US"}):
            reply = replica.route("u-1", **attributes)
            assert (reply.arm, reply.reason, reply.propensity) == (CONTROL_ARM, pb.NOT_TARGETED, 1.0)
        for attributes in ({}, {"country": "FR"}, {"country": "US"}):
            forced = replica.route("qa-1", **attributes)
            assert (forced.arm, forced.reason, forced.propensity) == ("ranker-v2", pb.FORCED, 1.0)
            assert forced.payload["endpoint"] == "http://ranker-v2:8080"
            denied = replica.route("vip-1", **attributes)
            assert (denied.arm, denied.reason, denied.propensity) == (CONTROL_ARM, pb.DENIED, 1.0)


# --- restarts and versions ----------------------------------------------------------------------------


def test_a_router_restarted_during_a_change_starts_with_it(applied_ranker: RedisServer) -> None:
    with replicas(applied_ranker, 1) as (replica,):
        assert replica.route().reason == pb.SAMPLED
        replica.process.kill()  # SIGKILL: no shutdown of any kind
    cli("kill", "ranker", "--reason", "while it was down", redis_url=applied_ranker.url)
    with replicas(applied_ranker, 1) as (restarted,):
        first = restarted.route()  # the first Route it answers after reporting SERVING
        assert (first.arm, first.reason) == (CONTROL_ARM, pb.KILLED)


def test_config_versions_only_go_forward(applied_ranker: RedisServer) -> None:
    url = applied_ranker.url
    with replicas(applied_ranker, 1) as (replica,):
        seen = [replica.route().config_version]
        for _ in range(2):
            version = printed_version(cli("experiment", "apply", str(EXAMPLE), redis_url=url))
            obeyed([replica], at_version(version), "the new version")
            seen.append(replica.route().config_version)
        assert seen == [1, 2, 3]

        # Someone rewinds the version with redis-cli while changing the document (rollout 0 would make
        # every answer NOT_EXPOSED): the routers keep version 3 and its document.
        client = applied_ranker.client()
        doc = json.loads(client.hget(CONFIG, "doc") or "{}")
        client.close()
        doc["rollout"] = 0
        redis_cli(applied_ranker, "HSET", CONFIG, "version", "1", "doc", json.dumps(doc))
        obeyed(
            [replica],
            lambda r: r.log_count("ignoring document version 1, older than version 3") > 0,
            "warning",
        )

        def still_at_3() -> None:
            reply = replica.route()
            assert (reply.config_version, reply.reason) == (3, pb.SAMPLED), reply

        assert keeps(still_at_3) > 10


# --- regressions: bugs found by these tests and fixed (version rewind, bad field, repeated raw edit) ---


def test_a_cli_kill_is_obeyed_after_the_version_was_rewound(applied_ranker: RedisServer) -> None:
    url = applied_ranker.url
    with replicas(applied_ranker, 1) as (replica,):
        cli("experiment", "apply", str(EXAMPLE), redis_url=url)
        obeyed([replica], at_version(2), "version 2")
        redis_cli(applied_ranker, "HSET", CONFIG, "version", "0")
        obeyed(
            [replica],
            lambda r: r.log_count("ignoring document version 0, older than version 2") > 0,
            "warning",
        )
        assert printed_version(cli("kill", "ranker", "--reason", "incident", redis_url=url)) == 1
        obeyed([replica], lambda r: r.route().reason == pb.KILLED, "the kill", timeout=1)


def test_a_cli_kill_is_not_silently_ignored_when_the_control_hash_has_a_bad_field(
    applied_ranker: RedisServer,
) -> None:
    with replicas(applied_ranker, 1) as (replica,):
        redis_cli(applied_ranker, "HSET", CONTROL, "kil", "1")
        obeyed([replica], lambda r: r.log_count(LAST_GOOD) == 1, "the rejection")
        result = cli("kill", "ranker", "--reason", "incident", redis_url=applied_ranker.url, check=False)
        if result.returncode != 0:  # refusing, and saying why, is a fix too
            assert "kil" in result.stderr, result.stderr
            return
        obeyed([replica], lambda r: r.route().reason == pb.KILLED, "the kill", timeout=1)


def test_every_raw_edit_gets_an_audit_entry_even_when_it_repeats(applied_ranker: RedisServer) -> None:
    with replicas(applied_ranker, 1) as (replica,):
        for value, reason in (("1", pb.KILLED), ("0", pb.SAMPLED), ("1", pb.KILLED), ("0", pb.SAMPLED)):
            redis_cli(applied_ranker, "HSET", CONTROL, "kill", value)
            obeyed([replica], lambda r, want=reason: r.route().reason == want, f"kill {value}")
        obeyed([replica], lambda r: r.log_count("unattributed change to ranker: '1' -> '0'") == 2, "notice")

        with suppress(TimeoutError):
            wait_until(lambda: len(unattributed_entries(applied_ranker)) >= 4, 1)
        assert unattributed_entries(applied_ranker) == [("", "1"), ("1", "0"), ("0", "1"), ("1", "0")]
