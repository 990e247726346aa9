"""Observability against a real router and a real redis-server: spans, Prometheus metrics, the exposure and
outcome log, `mabrouter export`, and health.

Spans go to the OpenTelemetry SDK's InMemorySpanExporter through a SimpleSpanProcessor (exported when the
span ends, before the RPC's reply is sent). Metrics are scraped over HTTP from the router's own endpoint and
parsed with prometheus_client's parser. Log streams are read with XRANGE.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import secrets
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from mabrouter.config import Settings
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from modes import Stub, serving
from support import (
    EXAMPLE,
    NOT_SERVING,
    SERVING,
    InProcessRouter,
    RedisServer,
    apply_experiments,
    cli,
    cli_in_process,
    health_status,
    open_stub,
    router_settings,
    running_redis,
    wait_until,
)
from wire import nonce_of

EXPERIMENT = "ranker"
ARMS = ("ranker-v1", "ranker-v2", "ranker-v3")
DECISIONS = f"mabrouter:{{{EXPERIMENT}}}:decisions"
OUTCOMES = f"mabrouter:{{{EXPERIMENT}}}:outcomes"
ROUTE_SPAN = "mabrouter.v1.Router/Route"
OUTCOME_SPAN = "mabrouter.v1.Router/ReportOutcome"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --- helpers ---------------------------------------------------------------------------------------------


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"),)


def new_ids() -> tuple[int, int]:
    return secrets.randbits(128) | 1, secrets.randbits(64) | 1


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def country(value: str) -> struct_pb2.Struct:
    return struct_pb2.Struct(fields={"country": struct_pb2.Value(string_value=value)})


def scrape(router: InProcessRouter) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from the router's /metrics endpoint."""
    assert router.app is not None
    assert router.app.metrics_port
    url = f"http://127.0.0.1:{router.app.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    matching = [v for got, v in samples.get(name, []) if labels.items() <= got.items()]
    assert len(matching) == 1, f"{name}{labels}: {len(matching)} samples in {samples.get(name)}"
    return matching[0]


def stream(redis_server: RedisServer, key: str) -> list[dict[str, str]]:
    client = redis_server.client()
    try:
        return [fields for _, fields in client.xrange(key)]
    finally:
        client.close()


def wait_for_stream(redis_server: RedisServer, key: str, count: int) -> list[dict[str, str]]:
    wait_until(lambda: len(stream(redis_server, key)) >= count, 10, what=f"{count} entries in {key}")
    time.sleep(0.1)  # a few more flush intervals: nothing beyond `count` may arrive
    return stream(redis_server, key)


@pytest.fixture
def traced(applied_ranker: RedisServer) -> Iterator[tuple[InProcessRouter, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    router = InProcessRouter(router_settings(applied_ranker.url), tracer=provider.get_tracer("test")).start()
    try:
        yield router, exporter
    finally:
        router.stop()
        provider.shutdown()


@pytest.fixture
def segmented(redis_server: RedisServer, tmp_path: Path) -> RedisServer:
    """The example experiment, plus `segments: [country]` (logged with each decision)."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["segments"] = ["country"]
    apply_experiments(redis_server.url, tmp_path, doc)
    return redis_server


@pytest.fixture
def segmented_router(mode: str, segmented: RedisServer) -> Iterator[Stub]:
    """A sidecar or an in-process router serving the segmented example (the log is the same from both)."""
    with serving(mode, router_settings(segmented.url)) as router_stub:
        yield router_stub


# --- spans -----------------------------------------------------------------------------------------------


def test_route_span_joins_the_callers_trace_and_the_outcome_span_links_back_to_it(
    traced: tuple[InProcessRouter, InMemorySpanExporter],
) -> None:
    router, exporter = traced
    trace_id, parent_id = new_ids()
    outcome_trace, outcome_parent = new_ids()
    channel, router_stub = open_stub(router.address)
    with channel:
        reply = router_stub.Route(
            pb.RouteRequest(experiment=EXPERIMENT, unit_id="user-42"),
            metadata=traceparent(trace_id, parent_id),
            timeout=5,
        )
        (span,) = wait_until(lambda: spans_named(exporter, ROUTE_SPAN), 5, what="the Route span")
        # The outcome arrives later, in another trace (another request of the caller's).
        outcome = router_stub.ReportOutcome(
            pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0),
            metadata=traceparent(outcome_trace, outcome_parent),
            timeout=5,
        )
    assert span.context.trace_id == trace_id
    assert span.parent is not None
    assert (span.parent.trace_id, span.parent.span_id) == (trace_id, parent_id)
    assert span.parent.is_remote
    attributes = dict(span.attributes or {})
    assert attributes["feature_flag.key"] == EXPERIMENT
    assert attributes["feature_flag.result.variant"] == reply.arm
    assert attributes["feature_flag.result.reason"] == "split"  # SAMPLED, in the semantic conventions
    assert attributes["feature_flag.context.id"] == "user-42"  # unit_id_privacy defaults to raw
    assert attributes["feature_flag.provider.name"] == "mabrouter"
    assert attributes["mabrouter.decision_id"] == reply.decision_id
    assert attributes["mabrouter.propensity"] == pytest.approx(reply.propensity)
    assert attributes["mabrouter.config_version"] == reply.config_version == 1
    assert attributes["rpc.method"] == "Route"

    assert not outcome.duplicate
    (outcome_span,) = wait_until(lambda: spans_named(exporter, OUTCOME_SPAN), 5, what="the outcome span")
    assert outcome_span.context.trace_id == outcome_trace != trace_id
    assert outcome_span.parent is not None
    assert outcome_span.parent.span_id == outcome_parent
    links = list(outcome_span.links)
    assert len(links) == 1
    assert (links[0].context.trace_id, links[0].context.span_id) == (
        span.context.trace_id,
        span.context.span_id,
    )
    assert dict(links[0].attributes or {}) == {"mabrouter.link": "decision"}
    outcome_attributes = dict(outcome_span.attributes or {})
    assert outcome_attributes["feature_flag.key"] == EXPERIMENT
    assert outcome_attributes["feature_flag.result.variant"] == reply.arm
    assert outcome_attributes["mabrouter.duplicate"] is False


def test_a_decision_in_an_unsampled_trace_is_not_recorded_and_its_outcome_has_no_link(
    traced: tuple[InProcessRouter, InMemorySpanExporter],
) -> None:
    """The default sampler follows the caller's sampled flag: no span, and nothing for an outcome to link."""
    router, exporter = traced
    channel, router_stub = open_stub(router.address)
    with channel:
        reply = router_stub.Route(
            pb.RouteRequest(experiment=EXPERIMENT, unit_id="u"),
            metadata=traceparent(*new_ids(), sampled=False),
        )
        router_stub.ReportOutcome(
            pb.OutcomeRequest(decision_id=reply.decision_id, reward=0.0), metadata=traceparent(*new_ids())
        )
    (outcome_span,) = wait_until(lambda: spans_named(exporter, OUTCOME_SPAN), 5, what="the outcome span")
    assert spans_named(exporter, ROUTE_SPAN) == []
    assert list(outcome_span.links) == []


def test_hashed_unit_ids_are_stable_keyed_pseudonyms_in_spans_and_the_exposure_log(
    applied_ranker: RedisServer,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = router_settings(applied_ranker.url, unit_id_privacy="hash")
    router = InProcessRouter(settings, tracer=provider.get_tracer("test")).start()
    try:
        channel, router_stub = open_stub(router.address)
        with channel:
            for unit in ("alice@example.com", "alice@example.com", "bob@example.com"):
                router_stub.Route(pb.RouteRequest(experiment=EXPERIMENT, unit_id=unit))
        logged = wait_for_stream(applied_ranker, DECISIONS, 3)
    finally:
        router.stop()
        provider.shutdown()
    ids = [
        dict(span.attributes or {})["feature_flag.context.id"] for span in spans_named(exporter, ROUTE_SPAN)
    ]
    assert len(ids) == 3
    assert all(isinstance(i, str) and HEX32.match(i) for i in ids), ids
    assert "alice@example.com" not in ids
    assert "bob@example.com" not in ids
    assert ids[0] == ids[1] != ids[2]  # stable per unit, different across units
    for unit, pseudonym in (("alice@example.com", ids[0]), ("bob@example.com", ids[2])):
        for algorithm in ("sha256", "sha1", "md5"):  # keyed: not a dictionary-reversible plain digest
            assert hashlib.new(algorithm, unit.encode()).hexdigest()[:32] != pseudonym
    assert [entry["unit"] for entry in logged] == ids  # the same pseudonym in the exposure log


# --- metrics ---------------------------------------------------------------------------------------------


def test_prometheus_metrics_count_decisions_outcomes_and_describe_the_snapshot(
    router: InProcessRouter,
) -> None:
    routes = 30
    channel, router_stub = open_stub(router.address)
    with channel:
        replies = [
            router_stub.Route(pb.RouteRequest(experiment=EXPERIMENT, unit_id=f"u{i}")) for i in range(routes)
        ]
        rewarded = replies[:5]
        for reply in rewarded:
            router_stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=0.75))
        router_stub.ReportOutcome(pb.OutcomeRequest(decision_id=rewarded[0].decision_id, reward=0.75))
    samples = scrape(router)

    served = Counter(reply.arm for reply in replies)
    for arm in ARMS:
        counted = [
            v
            for labels, v in samples.get("mabrouter_decisions_total", [])
            if labels == {"experiment": EXPERIMENT, "arm": arm, "reason": "SAMPLED"}
        ]
        assert sum(counted) == served[arm], (arm, counted)
    assert value(samples, "mabrouter_route_latency_seconds_count") == routes
    assert value(samples, "mabrouter_outcomes_total", experiment=EXPERIMENT, result="applied") == 5
    assert value(samples, "mabrouter_outcomes_total", experiment=EXPERIMENT, result="duplicate") == 1
    rewards: dict[str, float] = {}
    for reply in rewarded:
        rewards[reply.arm] = rewards.get(reply.arm, 0.0) + 0.75
    for arm, total in rewards.items():
        assert value(samples, "mabrouter_reward_sum", experiment=EXPERIMENT, arm=arm) == pytest.approx(total)

    assert 0 <= value(samples, "mabrouter_snapshot_age_seconds") < 2.0  # refreshed every 50 ms here
    assert value(samples, "mabrouter_snapshot_loaded") == 1
    assert value(samples, "mabrouter_config_version", experiment=EXPERIMENT) == 1
    shares = {arm: value(samples, "mabrouter_arm_share", experiment=EXPERIMENT, arm=arm) for arm in ARMS}
    assert all(0 < share < 1 for share in shares.values())
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
    for arm in ARMS:
        assert 0 < value(samples, "mabrouter_arm_posterior_mean", experiment=EXPERIMENT, arm=arm) < 1
        assert value(samples, "mabrouter_killed", experiment=EXPERIMENT, arm=arm) == 0
    assert value(samples, "mabrouter_killed", experiment=EXPERIMENT, arm="") == 0


def test_metrics_listen_on_loopback_by_default(
    router: InProcessRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MABROUTER_METRICS_LISTEN", raising=False)
    assert Settings().metrics_listen.startswith("127.0.0.1:")
    # The test router asked for 127.0.0.1:0: its listening socket is bound to loopback only.
    assert router.app is not None
    port = router.app.metrics_port
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                listening.append(address)
    if not listening:
        pytest.skip("no /proc/net/tcp listing for the metrics port on this platform")
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian; no wildcard or v6 socket


# --- the exposure and outcome log ------------------------------------------------------------------------


def test_decisions_and_applied_outcomes_are_logged_once_with_segments(
    segmented: RedisServer, segmented_router: Stub
) -> None:
    replies = [
        segmented_router.Route(
            pb.RouteRequest(experiment=EXPERIMENT, unit_id=f"u{i}", attributes=country("DE"))
        )
        for i in range(12)
    ]
    rewarded = replies[::3]
    for reply in rewarded:
        segmented_router.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0))
    for reply in rewarded[:2]:  # duplicates: acknowledged, not logged again
        assert segmented_router.ReportOutcome(
            pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0)
        ).duplicate
    decisions = wait_for_stream(segmented, DECISIONS, len(replies))
    outcomes = wait_for_stream(segmented, OUTCOMES, len(rewarded))

    assert len(decisions) == len(replies)
    now_ms = time.time() * 1000
    for entry, reply in zip(decisions, replies, strict=True):
        assert set(entry) == {"d", "ts", "unit", "arm", "reason", "p", "v", "counted", "seg.country"}
        assert entry["d"] == nonce_of(reply.decision_id)
        assert now_ms - 60_000 < int(entry["ts"]) <= now_ms
        assert entry["unit"] == f"u{replies.index(reply)}"
        assert entry["arm"] == reply.arm
        assert entry["reason"] == "SAMPLED"
        assert float(entry["p"]) == pytest.approx(reply.propensity, rel=1e-12)
        assert entry["v"] == "1"
        assert entry["counted"] == "1"
        assert entry["seg.country"] == "DE"

    assert len(outcomes) == len(rewarded)  # the two duplicates were not logged
    by_nonce = {entry["d"]: entry for entry in decisions}
    for entry, reply in zip(outcomes, rewarded, strict=True):
        assert set(entry) == {"d", "ts", "arm", "reward"}
        assert entry["d"] == nonce_of(reply.decision_id)
        assert entry["arm"] == reply.arm == by_nonce[entry["d"]]["arm"]
        assert float(entry["reward"]) == 1.0
        assert int(entry["ts"]) >= int(by_nonce[entry["d"]]["ts"])


def test_exposure_log_maxlen_zero_disables_the_log(segmented: RedisServer) -> None:
    router = InProcessRouter(router_settings(segmented.url, exposure_log_maxlen=0)).start()
    try:
        channel, router_stub = open_stub(router.address)
        with channel:
            for i in range(10):
                reply = router_stub.Route(
                    pb.RouteRequest(experiment=EXPERIMENT, unit_id=f"u{i}", attributes=country("FR"))
                )
                router_stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0))
        client = segmented.client()
        try:
            # Trials and the log are written by the same flusher: once the trials are in, the log would be.
            wait_until(
                lambda: (
                    sum(
                        int(v)
                        for k, v in client.hgetall(f"mabrouter:{{{EXPERIMENT}}}:stats").items()
                        if k.endswith(":trials")
                    )
                    == 10
                ),
                5,
                what="10 trials flushed",
            )
            time.sleep(0.1)
            assert client.exists(DECISIONS, OUTCOMES) == 0
        finally:
            client.close()
        assert router.app is not None
        assert router.app.exposure.pending() == 0
    finally:
        router.stop()


# --- mabrouter export ------------------------------------------------------------------------------------


def test_export_joins_each_decision_with_its_outcome_as_jsonl_and_csv_within_the_window(
    segmented: RedisServer, segmented_router: Stub, tmp_path: Path
) -> None:
    countries = ["DE", "FR", "DE", "US"] * 5
    replies = [
        segmented_router.Route(pb.RouteRequest(experiment=EXPERIMENT, unit_id=f"u{i}", attributes=country(c)))
        for i, c in enumerate(countries)
    ]
    rewards = {nonce_of(r.decision_id): 0.25 * (i % 4) for i, r in enumerate(replies) if i % 3 == 0}
    for reply in replies:
        reward = rewards.get(nonce_of(reply.decision_id))
        if reward is not None:
            segmented_router.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=reward))
    wait_for_stream(segmented, DECISIONS, len(replies))
    wait_for_stream(segmented, OUTCOMES, len(rewards))

    result = cli("export", EXPERIMENT, "--since", "1h", "--format", "jsonl", redis_url=segmented.url)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert f"exported {len(replies)} decisions ({len(rewards)} outcomes) of {EXPERIMENT}" in result.stderr
    assert [row["decision"] for row in rows] == [nonce_of(r.decision_id) for r in replies]
    for row, reply, c in zip(rows, replies, countries, strict=True):
        assert row["arm"] == reply.arm
        assert row["seg.country"] == c
        assert float(row["propensity"]) == pytest.approx(reply.propensity, rel=1e-12)
        assert (row["reason"], row["config_version"], row["counted"]) == ("SAMPLED", "1", "1")
        if row["decision"] in rewards:
            assert row["rewarded"] == "1"
            assert float(row["reward"]) == rewards[row["decision"]]  # a reward of 0.0 is still "rewarded"
            assert int(row["outcome_ts_ms"]) >= int(row["ts_ms"])
        else:
            assert (row["rewarded"], row["reward"], row["outcome_ts_ms"]) == ("0", "", "")

    out = tmp_path / "export.csv"
    cli("export", EXPERIMENT, "--since", "1h", "--format", "csv", "--out", str(out), redis_url=segmented.url)
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(table[0]) == [
        "decision",
        "ts_ms",
        "unit",
        "arm",
        "reason",
        "propensity",
        "config_version",
        "counted",
        "seg.country",
        "rewarded",
        "reward",
        "outcome_ts_ms",
    ]
    assert [dict(row) for row in table] == rows  # the same rows, every value as the same text
    assert sum(row["rewarded"] == "1" for row in table) == len(rewards)

    # --since after the last decision: nothing to export.
    future_ms = str(int(time.time() * 1000) + 3_600_000)
    ahead = cli("export", EXPERIMENT, "--since", future_ms, redis_url=segmented.url)
    assert ahead.stdout == ""
    assert f"exported 0 decisions (0 outcomes) of {EXPERIMENT}" in ahead.stderr


def test_export_rejects_a_bad_since_and_an_unknown_experiment(segmented: RedisServer) -> None:
    bad = cli("export", EXPERIMENT, "--since", "last tuesday", redis_url=segmented.url, check=False)
    assert bad.returncode == 2
    assert "--since 'last tuesday'" in bad.stderr
    assert "24h" in bad.stderr  # says what would work
    assert bad.stdout == ""

    unknown = cli("export", "no-such-experiment", "--since", "1h", redis_url=segmented.url, check=False)
    assert unknown.returncode == 2
    assert "unknown experiment 'no-such-experiment'" in unknown.stderr
    assert unknown.stdout == ""


# --- health ----------------------------------------------------------------------------------------------


def test_health_is_not_serving_until_the_first_snapshot_then_serving() -> None:
    with running_redis() as redis_server:
        redis_server.stop()  # its port stays free until the restart below (nothing here binds it)
        router = InProcessRouter(router_settings(redis_server.url)).start(wait_ready=False)
        try:
            time.sleep(0.3)  # several refresh attempts against the dead port
            for service in ("", "mabrouter.v1.Router", "mabrouter.snapshot"):
                assert health_status(router.address, service, timeout=2) == NOT_SERVING, service
            channel, router_stub = open_stub(router.address)
            with channel, pytest.raises(grpc.RpcError) as info:
                router_stub.Route(pb.RouteRequest(experiment=EXPERIMENT, unit_id="u"), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

            redis_server.start()
            cli_in_process("experiment", "apply", str(EXAMPLE), redis_url=redis_server.url)
            for service in ("", "mabrouter.v1.Router", "mabrouter.snapshot"):
                wait_until(
                    lambda s=service: health_status(router.address, s, timeout=2) == SERVING,
                    15,
                    what=f"{service!r} SERVING",
                )
            # SERVING comes with the first snapshot, which may predate the apply by one refresh.
            with grpc.insecure_channel(router.address) as channel:
                route = router_pb2_grpc.RouterStub(channel).Route
                request = pb.RouteRequest(experiment=EXPERIMENT, unit_id="u")
                wait_until(lambda: _answers(route, request), 5, what="the applied experiment")
                reply = route(request, timeout=2)
            assert reply.arm in ARMS
            assert reply.reason == pb.SAMPLED
        finally:
            router.stop()


def _answers(route: Any, request: pb.RouteRequest) -> bool:
    try:
        route(request, timeout=2)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:  # only "not loaded yet" is expected
            raise
        return False
    return True


def test_snapshot_health_turns_not_serving_when_the_snapshot_goes_stale() -> None:
    with running_redis() as redis_server:
        cli_in_process("experiment", "apply", str(EXAMPLE), redis_url=redis_server.url)
        router = InProcessRouter(router_settings(redis_server.url, max_staleness_seconds=0.5)).start()
        try:
            assert health_status(router.address, "mabrouter.snapshot", timeout=2) == SERVING
            redis_server.stop(kill=True)
            started = time.monotonic()
            wait_until(
                lambda: health_status(router.address, "mabrouter.snapshot", timeout=2) == NOT_SERVING,
                10,
                what="mabrouter.snapshot NOT_SERVING",
            )
            assert time.monotonic() - started >= 0.3  # not before the snapshot could be 0.5 s old
            # Still answering from its last snapshot: readiness stays SERVING, only the alert target flips.
            assert health_status(router.address, timeout=2) == SERVING
            assert health_status(router.address, "mabrouter.v1.Router", timeout=2) == SERVING

            redis_server.start()
            wait_until(
                lambda: health_status(router.address, "mabrouter.snapshot", timeout=2) == SERVING,
                15,
                what="mabrouter.snapshot SERVING again after Redis returns",
            )
        finally:
            router.stop()
