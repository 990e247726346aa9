"""The in-process router (mabrouter.embedded) against a real redis-server and `mabrouter serve` processes.

What is specific to running inside the caller's process: decisions interchangeable with a sidecar's both
ways, kills obeyed while many threads route, what in-process decisions leave in `mabrouter status` and
`export`, failing open (Redis down, bad input, not started, closed, forked), shutdown flushing what was
accepted, and asyncio callers. Behaviour shared with the sidecar (kills, rollouts, targeting, sticky
assignments, holdouts, guardrails, the exposure log) is tested once for both modes: the `mode` fixture.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mabrouter.client import CLIENT_FALLBACK, OutcomeReporter, RouterClient
from mabrouter.embedded import EmbeddedRouter
from mabrouter.errors import StartupError, StoreUnavailableError
from mabrouter.runtime.outcomes import Accepted
from mabrouter.v1 import router_pb2 as pb

from faults import AOF
from modes import embedded
from support import (
    EXAMPLE,
    RedisServer,
    RouterProcess,
    apply_experiments,
    cli,
    cli_in_process,
    open_stub,
    router_settings,
    running_redis,
    stats_hash,
    wait_until,
)
from wire import nonce_of

ARMS = {"ranker-v1", "ranker-v2", "ranker-v3"}
DECISIONS = "mabrouter:{ranker}:decisions"
THREADS = 4


@pytest.fixture
def in_process(applied_ranker: RedisServer) -> Iterator[EmbeddedRouter]:
    with embedded(router_settings(applied_ranker.url)) as router:
        yield router


@pytest.fixture
def sidecar(applied_ranker: RedisServer) -> Iterator[RouterProcess]:
    process = RouterProcess(applied_ranker.url).wait_serving(timeout=60)
    try:
        yield process
    finally:
        process.kill()


def outcome_counts(redis_server: RedisServer) -> Counter[str]:
    return Counter(
        {
            key[: -len(":count")]: int(value)
            for key, value in stats_hash(redis_server).items()
            if key.endswith(":count")
        }
    )


def trial_counts(redis_server: RedisServer) -> Counter[str]:
    return Counter(
        {
            key[: -len(":trials")]: int(value)
            for key, value in stats_hash(redis_server).items()
            if key.endswith(":trials")
        }
    )


# -- interchangeable with a sidecar -------------------------------------------------------------------


def test_an_in_process_decision_is_rewarded_through_a_sidecar_once(
    in_process: EmbeddedRouter, sidecar: RouterProcess, applied_ranker: RedisServer
) -> None:
    assignment = in_process.route("ranker", "user-1", default_arm="ranker-v1")
    assert (assignment.reason, assignment.fallback) == ("SAMPLED", False)
    channel, stub = open_stub(sidecar.address)
    with channel:
        first = stub.ReportOutcome(
            pb.OutcomeRequest(decision_id=assignment.decision_id, reward=1.0), timeout=5
        )
        again = stub.ReportOutcome(
            pb.OutcomeRequest(decision_id=assignment.decision_id, reward=1.0), timeout=5
        )
    assert (first.duplicate, first.experiment, first.arm) == (False, "ranker", assignment.arm)
    assert again.duplicate
    (back_home,) = in_process.record_outcomes([(assignment.decision_id, 1.0, {})])
    assert isinstance(back_home, Accepted)
    assert back_home.duplicate  # the sidecar's acknowledgement counted it: the in-process ledger agrees
    assert outcome_counts(applied_ranker) == Counter({assignment.arm: 1})
    assert float(stats_hash(applied_ranker)[f"{assignment.arm}:sum"]) == 1.0


def test_a_sidecar_decision_is_rewarded_in_process_once(
    in_process: EmbeddedRouter, sidecar: RouterProcess, applied_ranker: RedisServer
) -> None:
    with RouterClient(sidecar.address, timeout=2.0) as client:
        assignments = [client.route("ranker", f"user-{i}", default_arm="ranker-v1") for i in range(20)]
        assert all(a.reason == "SAMPLED" for a in assignments)
        direct = in_process.record_outcomes([(a.decision_id, 1.0, {}) for a in assignments[:5]])
        with OutcomeReporter(in_process) as here:  # OutcomeReporter's semantics, applied in this process
            for assignment in assignments:
                assert here.report(assignment.decision_id, 1.0)
            assert here.flush(10.0)
            local = here.stats()
        with OutcomeReporter(client) as through_the_sidecar:  # and once more the other way
            for assignment in assignments:
                through_the_sidecar.report(assignment.decision_id, 1.0)
            assert through_the_sidecar.flush(10.0)
            remote = through_the_sidecar.stats()
    assert [(r.experiment, r.arm, r.duplicate) for r in direct if isinstance(r, Accepted)] == [
        ("ranker", a.arm, False) for a in assignments[:5]
    ]
    assert (local.sent, local.duplicates, local.rejected) == (20, 5, 0)
    assert (remote.sent, remote.duplicates, remote.rejected) == (20, 20, 0)
    assert outcome_counts(applied_ranker) == Counter(a.arm for a in assignments)


def test_trials_and_exposure_entries_of_in_process_decisions_show_in_status_and_export(
    in_process: EmbeddedRouter, applied_ranker: RedisServer
) -> None:
    assignments = [in_process.route("ranker", f"user-{i}", default_arm="ranker-v1") for i in range(30)]
    rewarded = assignments[::3]
    for assignment in rewarded:
        assert in_process.report(assignment.decision_id, 1.0)
    assert in_process.close()
    status = json.loads(cli("status", "ranker", "--json", redis_url=applied_ranker.url).stdout)
    trials = {row["arm"]: row["trials"] for row in status["arms"]}
    outcomes = {row["arm"]: row["outcomes"] for row in status["arms"]}
    assert trials == {arm: Counter(a.arm for a in assignments)[arm] for arm in ARMS}
    assert outcomes == {arm: Counter(a.arm for a in rewarded)[arm] for arm in ARMS}
    exported = cli("export", "ranker", "--format", "jsonl", redis_url=applied_ranker.url)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [row["decision"] for row in rows] == [nonce_of(a.decision_id) for a in assignments]
    for row, assignment in zip(rows, assignments, strict=True):
        assert (row["arm"], row["reason"], row["counted"]) == (assignment.arm, "SAMPLED", "1")
        assert float(row["propensity"]) == pytest.approx(assignment.propensity, rel=1e-12)
        assert row["rewarded"] == ("1" if assignment in rewarded else "0")


# -- many threads, and asyncio ------------------------------------------------------------------------


def test_decisions_from_many_threads_are_each_recorded_once(
    in_process: EmbeddedRouter, applied_ranker: RedisServer
) -> None:
    per_thread = 500
    ids: list[list[str]] = [[] for _ in range(THREADS)]
    problems: list[str] = []

    def serve(index: int) -> None:
        for n in range(per_thread):
            assignment = in_process.route(
                "ranker", f"t{index}-{n}", attributes={"country": "DE"}, default_arm="ranker-v1"
            )
            if assignment.fallback:
                problems.append(f"{assignment.reason}: {assignment.error}")
            ids[index].append(assignment.decision_id)

    threads = [threading.Thread(target=serve, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert in_process.close()
    assert problems == []
    every_id = [decision_id for thread_ids in ids for decision_id in thread_ids]
    assert len(set(every_id)) == THREADS * per_thread  # no nonce handed out twice
    assert sum(trial_counts(applied_ranker).values()) == THREADS * per_thread  # none lost, none doubled
    client = applied_ranker.client()
    try:
        logged = [fields["d"] for _, fields in client.xrange(DECISIONS)]
    finally:
        client.close()
    assert sorted(logged) == sorted(nonce_of(decision_id) for decision_id in every_id)


def test_a_kill_is_obeyed_within_a_second_while_threads_route(
    in_process: EmbeddedRouter, applied_ranker: RedisServer
) -> None:
    stop = threading.Event()
    first_killed: dict[int, float] = {}
    routed: Counter[int] = Counter()
    problems: list[str] = []

    def serve(index: int) -> None:
        while not stop.is_set():
            assignment = in_process.route("ranker", f"t{index}-{routed[index]}", default_arm="ranker-v2")
            routed[index] += 1
            # The rest of a request (I/O, a model call) leaves the interpreter; threads that never do
            # starve every other thread of the GIL, the router's included (docs/in-process.md).
            time.sleep(0.0005)
            if assignment.reason == "KILLED":
                first_killed.setdefault(index, time.monotonic())
                if assignment.arm != "ranker-v1":
                    problems.append(f"killed but served {assignment.arm}")
            elif index in first_killed:
                problems.append(f"thread {index} served {assignment.reason} after obeying the kill")
            elif assignment.reason != "SAMPLED":
                problems.append(f"{assignment.reason}: {assignment.error}")

    threads = [threading.Thread(target=serve, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(routed[index] >= 100 for index in range(THREADS)), 10, what="threads routing")
        cli_in_process("kill", "ranker", "--reason", "incident", redis_url=applied_ranker.url)
        killed_at = time.monotonic()
        # The promise (README, operator controls): every router obeys within a second.
        wait_until(lambda: len(first_killed) == THREADS, 1.0, what="every thread to serve KILLED")
        after = dict(routed)
        wait_until(lambda: all(routed[i] >= after[i] + 100 for i in range(THREADS)), 10, what="more routing")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == []
    delays_ms = sorted(round((at - killed_at) * 1000, 1) for at in first_killed.values())
    print(
        f"\nkill obeyed by {THREADS} routing threads after {delays_ms} ms ({sum(routed.values())} decisions)"
    )


def test_asyncio_callers_route_sticky_units_with_route_async(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    apply_experiments(
        redis_server.url,
        tmp_path,
        "name: homepage\ncontrol: v1\nsticky: {ttl_seconds: 3600}\n"
        "arms: [{name: v1}, {name: v2}, {name: v3}]\n",
    )

    async def scenario(router: EmbeddedRouter) -> tuple[list[str], list[str], list[str]]:
        first = await asyncio.gather(
            *(router.route_async("homepage", f"u{i}", default_arm="v1", timeout=2) for i in range(20))
        )
        again = [
            await router.route_async("homepage", f"u{i}", default_arm="v1", timeout=2) for i in range(20)
        ]
        return [a.arm for a in first], [a.arm for a in again], [a.reason for a in first + again]

    with embedded(router_settings(redis_server.url)) as router:
        first, again, reasons = asyncio.run(scenario(router))
        threaded = [router.route("homepage", f"u{i}", default_arm="v1", timeout=2).arm for i in range(20)]
    assert first == again == threaded  # each unit keeps its arm
    assert set(reasons) == {"SAMPLED", "STICKY"}
    assert len(set(first)) > 1


# -- failing open --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("experiment", "unit", "attributes", "status"),
    [
        ("nope", "u", None, "NOT_FOUND: unknown experiment 'nope'"),
        ("not a name!", "u", None, "INVALID_ARGUMENT: experiment 'not a name!' is not a valid name"),
        ("ranker", "", None, "INVALID_ARGUMENT: unit_id is empty"),
        ("ranker", "u" * 600, None, "INVALID_ARGUMENT: unit_id is 600 characters"),
        (
            "ranker",
            "u",
            {"user": {"tier": "gold"}},
            "INVALID_ARGUMENT: attribute 'user': dict is not supported",
        ),
        ("ranker", "u", {"seen": None}, "INVALID_ARGUMENT: attribute 'seen': NoneType is not supported"),
        ("ranker", "u", {"tags": ["a", 1]}, "INVALID_ARGUMENT: attribute 'tags': list is not supported"),
        ("ranker", "u", {"big": 10**400}, "INVALID_ARGUMENT: int too large to convert to float"),
        ("ranker", "u", {"name": "x" * 2000}, "INVALID_ARGUMENT: attribute 'name' is 2000 characters"),
        (
            "ranker",
            "u",
            {f"a{i}": i for i in range(65)},
            "INVALID_ARGUMENT: 65 attributes sent; the limit is 64",
        ),
        ("ranker", "u", {1: "x"}, "INVALID_ARGUMENT: attribute name 1 is not a string"),
    ],
)
def test_bad_input_serves_the_default_arm_and_says_why(
    in_process: EmbeddedRouter,
    experiment: str,
    unit: str,
    attributes: dict[object, object] | None,
    status: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="mabrouter"):
        answers = [
            in_process.route(experiment, unit, attributes=attributes, default_arm="ranker-v2")  # type: ignore[arg-type]
            for _ in range(3)
        ]
    for assignment in answers:
        assert (assignment.arm, assignment.fallback, assignment.reason) == (
            "ranker-v2",
            True,
            CLIENT_FALLBACK,
        )
        assert (assignment.decision_id, assignment.propensity, assignment.payload) == ("", 1.0, {})
        assert assignment.error is not None
        assert assignment.error.startswith(status), assignment.error
    assert (
        len([r for r in caplog.records if "failed open" in r.getMessage() or "refused" in r.getMessage()])
        == 1
    )


def test_programming_errors_raise_as_in_the_client(in_process: EmbeddedRouter) -> None:
    with pytest.raises(ValueError, match="default_arm is empty"):
        in_process.route("ranker", "u", default_arm="")
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        in_process.route("ranker", "u", default_arm="ranker-v1", timeout=0)


def test_a_missing_secret_is_refused_at_construction(applied_ranker: RedisServer) -> None:
    with pytest.raises(StartupError, match="MABROUTER_DECISION_SECRET"):
        EmbeddedRouter(router_settings(applied_ranker.url, decision_secret=None))


def test_settings_come_from_the_environment_as_for_serve(
    applied_ranker: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MABROUTER_REDIS_URL", applied_ranker.url)
    monkeypatch.setenv("MABROUTER_DECISION_SECRET", "x" * 32)
    monkeypatch.setenv("MABROUTER_REFRESH_INTERVAL_MS", "50")
    router = EmbeddedRouter()
    try:
        assert router.start(10.0)
        assert router.route("ranker", "u", default_arm="ranker-v1").reason == "SAMPLED"
    finally:
        router.close()
    assert router.settings.refresh_interval_ms == 50


def test_not_started_and_closed_routers_serve_the_default_arm(applied_ranker: RedisServer) -> None:
    router = EmbeddedRouter(router_settings(applied_ranker.url))
    early = router.route("ranker", "u", default_arm="ranker-v3")
    assert (early.arm, early.fallback) == ("ranker-v3", True)
    assert early.error == "UNAVAILABLE: the in-process router is not started: call start()"
    assert not router.report("anything", 1.0)
    assert router.start(10.0)
    assert router.route("ranker", "u", default_arm="ranker-v3").reason == "SAMPLED"
    assert router.close()
    assert router.close()  # idempotent
    late = router.route("ranker", "u", default_arm="ranker-v3")
    assert (late.arm, late.fallback, late.error) == (
        "ranker-v3",
        True,
        "UNAVAILABLE: the in-process router is closed",
    )
    with pytest.raises(RuntimeError, match="closed"):
        router.start()


def test_redis_down_keeps_routing_and_outcomes_wait_for_it() -> None:
    with running_redis(*AOF) as redis_server:
        cli_in_process("experiment", "apply", str(EXAMPLE), redis_url=redis_server.url)
        with embedded(router_settings(redis_server.url)) as router:
            before = router.route("ranker", "before", default_arm="ranker-v1")
            redis_server.stop(kill=True)
            during = [router.route("ranker", f"during-{i}", default_arm="ranker-v1") for i in range(50)]
            assert {a.reason for a in during} == {"SAMPLED"}  # from the snapshot in memory
            with pytest.raises(StoreUnavailableError):  # no spool configured: acknowledged means applied
                router.record_outcomes([(before.decision_id, 1.0, {})], timeout=10)
            assert router.report(before.decision_id, 1.0)  # kept and retried by the background thread
            redis_server.start()
            wait_until(
                lambda: outcome_counts(redis_server) == Counter({before.arm: 1}), 20, what="the outcome"
            )
        assert sum(trial_counts(redis_server).values()) == 51  # the outage's decisions too, once


def test_redis_down_at_start_serves_the_default_then_recovers() -> None:
    with running_redis() as redis_server:
        port_url = redis_server.url
        redis_server.stop(kill=True)
        router = EmbeddedRouter(router_settings(port_url))
        try:
            assert not router.start(timeout=0.2)
            down = router.route("ranker", "u", default_arm="ranker-v2")
            assert (down.arm, down.reason, down.fallback, down.decision_id) == (
                "ranker-v2",
                "FALLBACK_DEFAULT",
                True,
                "",
            )
            redis_server.start()
            cli_in_process("experiment", "apply", str(EXAMPLE), redis_url=port_url)
            assert router.wait_ready(20)
            wait_until(
                lambda: router.route("ranker", "u", default_arm="ranker-v2").reason == "SAMPLED",
                10,
                what="routing",
            )
        finally:
            router.close()


# -- shutdown and fork ----------------------------------------------------------------------------------


def test_close_flushes_every_decision_and_outcome_it_accepted(applied_ranker: RedisServer) -> None:
    # Intervals long enough that nothing but close() writes: what reaches Redis is what it flushed.
    settings = router_settings(applied_ranker.url, flush_interval_ms=60_000)
    router = EmbeddedRouter(settings)
    assert router.start(10.0)
    assignments = [router.route("ranker", f"user-{i}", default_arm="ranker-v1") for i in range(200)]
    for assignment in assignments[:50]:
        assert router.report(assignment.decision_id, 1.0)
    assert router.close()
    assert sum(trial_counts(applied_ranker).values()) == 200
    assert outcome_counts(applied_ranker) == Counter(a.arm for a in assignments[:50])
    client = applied_ranker.client()
    try:
        assert client.xlen(DECISIONS) == 200
    finally:
        client.close()


def _route_in_child(
    started: EmbeddedRouter, constructed: EmbeddedRouter, answers: multiprocessing.Queue[tuple[str, str]]
) -> None:
    inherited = started.route("ranker", "child", default_arm="ranker-v3")
    answers.put((inherited.reason, inherited.error or ""))
    try:  # built before the fork (e.g. at import under gunicorn --preload), started after it: works
        assert constructed.start(10.0)
        after_fork = constructed.route("ranker", "child", default_arm="ranker-v3")
    finally:
        constructed.close()
    answers.put((after_fork.reason, after_fork.error or ""))


def test_a_router_started_before_fork_fails_open_in_the_child(
    in_process: EmbeddedRouter, applied_ranker: RedisServer
) -> None:
    constructed = EmbeddedRouter(router_settings(applied_ranker.url))
    context = multiprocessing.get_context("fork")
    answers: multiprocessing.Queue[tuple[str, str]] = context.Queue()
    child = context.Process(target=_route_in_child, args=(in_process, constructed, answers))
    child.start()
    inherited, after_fork = answers.get(timeout=60), answers.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert inherited[0] == CLIENT_FALLBACK
    assert "started before fork()" in inherited[1]
    assert after_fork == ("SAMPLED", "")
    assert (
        in_process.route("ranker", "parent", default_arm="ranker-v3").reason == "SAMPLED"
    )  # parent unaffected


def test_metrics_use_the_sidecars_names(in_process: EmbeddedRouter) -> None:
    for i in range(5):
        in_process.route("ranker", f"u{i}", default_arm="ranker-v1")
    registry = in_process.metrics_registry
    assert registry is not None

    def decisions() -> float:
        return sum(
            sample.value
            for metric in registry.collect()
            if metric.name == "mabrouter_decisions"
            for sample in metric.samples
            if sample.name == "mabrouter_decisions_total"
        )

    wait_until(lambda: decisions() == 5, 5, what="the decisions counted")
    assert registry.get_sample_value("mabrouter_snapshot_loaded") == 1


def test_refusals_read_the_same_as_through_a_sidecar(
    in_process: EmbeddedRouter, sidecar: RouterProcess
) -> None:
    """The fallback a caller gets for its mistake is the same whichever way it routes."""
    with RouterClient(sidecar.address, timeout=2.0) as client:
        for experiment, unit in (("nope", "u"), ("ranker", "")):
            remote = client.route(experiment, unit, default_arm="ranker-v1")
            local = in_process.route(experiment, unit, default_arm="ranker-v1")
            assert (local.arm, local.reason, local.error) == (remote.arm, remote.reason, remote.error)
