"""What tracing costs a Route call: the real servicer over real gRPC, with tracing off, on, and sampled at 1%.

    .venv/bin/python benchmarks/bench_tracing.py [--calls 150] [--rounds 30] [--output PATH]

Setup: a private redis-server on a free port (tests/support.py), the example experiment applied, and three
RouterApp instances in this process (tests/support.InProcessRouter: each serves gRPC from its own event-loop
thread on a free loopback port), identical but for the tracer:

    off        no tracer (the OTEL_* variables are removed first, so RouterApp configures none); the
               servicer skips every tracing line
    on-100%    TracerProvider(ALWAYS_ON) + BatchSpanProcessor(an exporter that counts and discards)
    ratio-1%   TracerProvider(ParentBased(TraceIdRatioBased(0.01))) + the same processor: the requests
               carry no traceparent, so 1% of them are sampled as new root spans

One synchronous Python gRPC client per router calls Route one request at a time (concurrency 1), with a
distinct unit id per call. The cases are interleaved: every round runs `--calls` calls against each router,
in an order shuffled per round, so machine noise (a shared VM) lands on all three alike. Each call is timed
on the client with perf_counter; the table shows the median and p90 per-call latency in microseconds over
every call of a case, and the overhead vs `off` as a ratio of medians and as a difference in us; "paired x"
is the median over rounds of (this case's round median / the same round's `off` median), which cancels
drifts of the machine's load that last longer than a round (a round is ~0.15 s per case); "handler us" is
the mean time spent inside the Route handler, from each router's own mabrouter_route_latency_seconds
histogram (sum/count over the measured calls): the part of the latency the servicer itself adds. It also
shows the CPU time the whole process (client, gRPC, servers, the span processor's thread) spent per call
(time.process_time over a round, median over rounds): on a shared machine, wall-clock latency includes
time spent waiting for a CPU, while CPU time is what tracing adds to the work, and is far less sensitive to
other processes. The client, the gRPC stack and the servers share one Python process (and its GIL):
absolute numbers are those of a Python caller, and the ratios are the comparable part.

Then, without gRPC: the in-process cost of one Route span as the servicer makes it, timed with
timeit (garbage collector off, 7 runs, once with the wall clock and once with the process CPU clock,
which also counts the batch processor's export thread): mabrouter.service.tracing.Tracing.span() +
record_decision() (11 attributes) + end, when sampled into a BatchSpanProcessor and when not sampled;
and the bare SDK equivalent (start_as_current_span with the same attributes). The exporter counts what
reached it, so spans dropped by a full queue would show.

Results (every round's median, machine info, load average) go to benchmarks/results/tracing.json.
Not a test: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
import timeit
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk import version as otel_version
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from prometheus_client.parser import text_string_to_metric_families

from mabrouter.cli import main as cli_main
from mabrouter.core.decide import Decision
from mabrouter.core.model import Reason
from mabrouter.runtime.engine import Routed
from mabrouter.service.tracing import Tracing
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import EXAMPLE, InProcessRouter, router_settings, running_redis  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tracing.json"
CASES = ("off", "on-100%", "ratio-1%")


class CountingExporter(SpanExporter):
    """Discards spans, counting them (a stand-in for a collector that costs nothing)."""

    def __init__(self) -> None:
        self.exported = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def provider_with(sampler: Sampler) -> tuple[TracerProvider, CountingExporter]:
    exporter = CountingExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_calls(stub: router_pb2_grpc.RouterStub, prefix: str, calls: int) -> tuple[list[float], float]:
    """Per-call wall-clock latencies (us), and the process's CPU time per call (us, every thread)."""
    latencies = []
    cpu_start = time.process_time()
    for i in range(calls):
        request = pb.RouteRequest(experiment="ranker", unit_id=f"{prefix}-{i}")
        start = time.perf_counter()
        stub.Route(request, timeout=5)
        latencies.append((time.perf_counter() - start) * 1e6)
    return latencies, (time.process_time() - cpu_start) / calls * 1e6


def handler_seconds(router: InProcessRouter) -> tuple[float, float]:
    """(sum, count) of the router's own mabrouter_route_latency_seconds histogram: time inside Route."""
    assert router.app is not None
    url = f"http://127.0.0.1:{router.app.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:  # a fixed loopback URL
        text = reply.read().decode()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("mabrouter_route_latency_seconds_")
    }
    return values["mabrouter_route_latency_seconds_sum"], values["mabrouter_route_latency_seconds_count"]


def grpc_cases(calls: int, rounds: int, warmup: int) -> dict[str, Any]:
    for key in [key for key in os.environ if key.startswith("OTEL_")]:
        del os.environ[key]  # case "off" must configure no tracing from the environment
    with running_redis() as redis_server:
        assert cli_main(["experiment", "apply", str(EXAMPLE), "--redis-url", redis_server.url]) == 0
        providers = {
            "on-100%": provider_with(ALWAYS_ON),
            "ratio-1%": provider_with(ParentBased(TraceIdRatioBased(0.01))),
        }
        settings = router_settings(redis_server.url, refresh_interval_ms=200, flush_interval_ms=100)
        routers = {
            case: InProcessRouter(
                settings,
                tracer=providers[case][0].get_tracer("bench") if case in providers else None,
            ).start()
            for case in CASES
        }
        try:
            assert routers["off"].app is not None
            assert routers["off"].app.tracer_provider is None  # really off
            channels = {case: grpc.insecure_channel(router.address) for case, router in routers.items()}
            stubs = {case: router_pb2_grpc.RouterStub(channel) for case, channel in channels.items()}
            for case in CASES:
                time_calls(stubs[case], f"warm-{case}", warmup)
            handler_before = {case: handler_seconds(router) for case, router in routers.items()}
            latencies: dict[str, list[float]] = {case: [] for case in CASES}
            round_medians: dict[str, list[float]] = {case: [] for case in CASES}
            round_cpu: dict[str, list[float]] = {case: [] for case in CASES}
            order = list(CASES)
            for r in range(rounds):
                random.shuffle(order)
                for case in order:
                    sample, cpu_per_call = time_calls(stubs[case], f"r{r}-{case}", calls)
                    latencies[case].extend(sample)
                    round_medians[case].append(statistics.median(sample))
                    round_cpu[case].append(cpu_per_call)
            handler_us = {}
            for case, router in routers.items():
                (sum_after, count_after), (sum_before, count_before) = (
                    handler_seconds(router),
                    handler_before[case],
                )
                handler_us[case] = (sum_after - sum_before) / (count_after - count_before) * 1e6
            for channel in channels.values():
                channel.close()
        finally:
            for router in routers.values():
                router.stop()
        for provider, _ in providers.values():
            provider.shutdown()  # flushes the batch processors into the counting exporters
        exported = {case: exporter.exported for case, (_, exporter) in providers.items()}
    total_calls = warmup + calls * rounds
    summary: dict[str, Any] = {}
    base = statistics.median(latencies["off"])
    base_cpu = statistics.median(round_cpu["off"])
    for case in CASES:
        values = latencies[case]
        median = statistics.median(values)
        cpu = statistics.median(round_cpu[case])
        summary[case] = {
            "calls": len(values),
            "median_us": median,
            "p90_us": percentile(values, 0.9),
            "mean_us": statistics.fmean(values),
            "round_medians_us": round_medians[case],
            "overhead_ratio_median": median / base,
            "overhead_us_median": median - base,
            # Each round's median over the same round's `off` median: pairs in time, so slow drifts of the
            # machine's load cancel; the median over rounds of these paired ratios.
            "paired_ratio_median": statistics.median(
                m / o for m, o in zip(round_medians[case], round_medians["off"], strict=True)
            ),
            "paired_cpu_ratio_median": statistics.median(
                c / o for c, o in zip(round_cpu[case], round_cpu["off"], strict=True)
            ),
            "handler_mean_us": handler_us[case],
            "handler_overhead_us": handler_us[case] - handler_us["off"],
            "cpu_us_per_call": cpu,
            "round_cpu_us_per_call": round_cpu[case],
            "cpu_overhead_ratio": cpu / base_cpu,
            "cpu_overhead_us": cpu - base_cpu,
            "spans_exported": exported.get(case, 0),
            "spans_expected": {"off": 0, "on-100%": total_calls, "ratio-1%": round(total_calls * 0.01)}[case],
        }
    return summary


def _routed() -> Routed:
    decision = Decision("ranker-v2", Reason.SAMPLED, 0.4125, 3, {"endpoint": "http://ranker-v2:8080"}, True)
    return Routed(decision, "x" * 120, False)


def span_cases(number: int, repeat: int) -> dict[str, Any]:
    routed = _routed()
    metadata = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    attributes = {
        "feature_flag.key": "ranker",
        "feature_flag.provider.name": "mabrouter",
        "feature_flag.result.variant": "ranker-v2",
        "feature_flag.result.reason": "split",
        "feature_flag.context.id": "user-42",
        "feature_flag.version": "3",
        "mabrouter.decision_id": "x" * 120,
        "mabrouter.reason": "SAMPLED",
        "mabrouter.propensity": 0.4125,
        "mabrouter.config_version": 3,
        "mabrouter.stale": False,
    }
    sampled_provider, sampled_exporter = provider_with(ALWAYS_ON)
    unsampled_provider, _ = provider_with(TraceIdRatioBased(0.0))
    sampled = Tracing(sampled_provider.get_tracer("bench"), str)
    unsampled = Tracing(unsampled_provider.get_tracer("bench"), str)
    sdk_tracer = sampled_provider.get_tracer("bench-sdk")

    def mabrouter_span(tracing: Tracing, carrier: list[tuple[str, str]] | None) -> Callable[[], None]:
        def run() -> None:
            with tracing.span("Route", carrier) as span:
                tracing.record_decision(span, "ranker", "user-42", routed)

        return run

    def sdk_span() -> None:
        with sdk_tracer.start_as_current_span("mabrouter.v1.Router/Route", attributes=attributes):
            pass

    cases: dict[str, Callable[[], None]] = {
        "Tracing.span + record_decision, sampled (root)": mabrouter_span(sampled, None),
        "Tracing.span + record_decision, sampled (with traceparent)": mabrouter_span(sampled, metadata),
        "Tracing.span + record_decision, not sampled": mabrouter_span(unsampled, None),
        "SDK start_as_current_span + 11 attributes, sampled": sdk_span,
    }
    results: dict[str, Any] = {}
    for name, fn in cases.items():
        for _ in range(200):
            fn()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            wall = timeit.repeat(fn, number=number, repeat=repeat)
            cpu = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)
        finally:
            if gc_was_enabled:
                gc.enable()
        wall_us = [run / number * 1e6 for run in wall]
        cpu_us = [run / number * 1e6 for run in cpu]
        results[name] = {
            "median_us": statistics.median(wall_us),
            "min_us": min(wall_us),
            "cpu_median_us": statistics.median(cpu_us),
            "cpu_min_us": min(cpu_us),
            "runs_us": wall_us,
            "cpu_runs_us": cpu_us,
        }
    made = (200 + 2 * number * repeat) * 3  # the three sampled cases export into sampled_exporter
    sampled_provider.shutdown()
    unsampled_provider.shutdown()
    results["_sampled_spans"] = {"made": made, "exported": sampled_exporter.exported}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=150, help="Route calls per case per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--span-number", type=int, default=3000, help="spans per timeit run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    started = time.perf_counter()
    grpc_summary = grpc_cases(args.calls, args.rounds, args.warmup)
    spans = span_cases(args.span_number, 7)
    elapsed = time.perf_counter() - started

    print(
        f"\nRoute over gRPC, concurrency 1, {args.rounds} rounds x {args.calls} calls per case (interleaved)"
    )
    print(
        f"{'case':<10} {'median us':>10} {'p90 us':>9} {'x off':>7} {'+us':>7} {'paired x':>9}"
        f" {'cpu us/call':>12} {'x off':>7} {'+us':>7} {'paired x':>9} {'handler us':>11} {'+us':>7}"
        "  spans exported"
    )
    for case in CASES:
        row = grpc_summary[case]
        print(
            f"{case:<10} {row['median_us']:>10.1f} {row['p90_us']:>9.1f}"
            f" {row['overhead_ratio_median']:>7.3f} {row['overhead_us_median']:>+7.1f}"
            f" {row['paired_ratio_median']:>9.3f}"
            f" {row['cpu_us_per_call']:>12.1f} {row['cpu_overhead_ratio']:>7.3f}"
            f" {row['cpu_overhead_us']:>+7.1f} {row['paired_cpu_ratio_median']:>9.3f}"
            f" {row['handler_mean_us']:>11.1f} {row['handler_overhead_us']:>+7.1f}"
            f"  {row['spans_exported']} (expected ~{row['spans_expected']})"
        )
    print(
        "  per-round medians (us): "
        + "; ".join(
            f"{case} " + ", ".join(f"{m:.0f}" for m in grpc_summary[case]["round_medians_us"])
            for case in CASES
        )
    )
    print(
        "  per-round cpu us/call: "
        + "; ".join(
            f"{case} " + ", ".join(f"{m:.0f}" for m in grpc_summary[case]["round_cpu_us_per_call"])
            for case in CASES
        )
    )
    print(f"\nOne span in process (timeit, {args.span_number} spans x 7 runs, gc off): wall / process CPU")
    for name, row in spans.items():
        if not name.startswith("_"):
            print(
                f"  {name:<60} wall median {row['median_us']:6.2f} us (min {row['min_us']:6.2f})"
                f"  cpu median {row['cpu_median_us']:6.2f} us (min {row['cpu_min_us']:6.2f})"
            )
    made, exported = spans["_sampled_spans"]["made"], spans["_sampled_spans"]["exported"]
    print(f"  sampled spans made {made}, exported {exported}, dropped (queue full) {made - exported}")
    print(f"\n{elapsed:.1f} s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "tracing",
                "settings": {"calls": args.calls, "rounds": args.rounds, "warmup": args.warmup},
                "route_grpc": grpc_summary,
                "span_in_process": spans,
                "elapsed_seconds": elapsed,
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "grpcio": grpc.__version__,
                    "opentelemetry_sdk": otel_version.__version__,
                    "cpu_count": os.cpu_count(),
                    "load_average": os.getloadavg(),
                    "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
