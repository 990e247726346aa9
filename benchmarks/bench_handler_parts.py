"""Where Route's throughput goes: the real router process with its handler cut after each step.

    .venv/bin/python benchmarks/bench_handler_parts.py [--rounds 5] [--seconds 2.5]

Each variant is `mabrouter serve` (default settings, the 10-arm experiment with rules of bench_grpc.py)
whose Route handler is replaced, at start-up, by a prefix of the real one:

  constant    returns the floor's constant response (what the router process costs around a handler)
  convert     + converts the request (route_input)
  decide      + decides from the live snapshot (rules, rollout hash, Thompson draw)
  sign        + signs the decision id
  route       + the engine's bookkeeping and recording (RoutingEngine.route_now), constant response
  unrecorded  the whole handler, its decisions dropped by the recording timer instead of recorded
  router      the router as shipped

The floor (floor_server.py) and every variant are driven by h2load at one setting, alternating, and
reported as a ratio to the floor and as time per request (1 / throughput: the event-loop thread is the
bottleneck, decision 0015). Decision 0016 reads the result. Not a test: nothing passes or fails.
Writes benchmarks/results/handler_parts.json.

With `--part NAME mabrouter-args...` the script is the launcher of one variant (used by the benchmark).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_grpc
from common import (
    RESULTS_DIR,
    FloorServer,
    RouterServer,
    apply_experiments,
    experiment_doc,
    grpc_frame,
    machine_info,
    running_redis,
    unit_in_rollout,
    write_report,
)
from floor_server import RESPONSE

from mabrouter.cli import main as cli_main
from mabrouter.core.decide import decide
from mabrouter.runtime.engine import RoutingEngine
from mabrouter.service.convert import route_input
from mabrouter.service.servicer import RouterServicer

PARTS = ("constant", "convert", "decide", "sign", "route", "unrecorded", "router")
SETTING = (4, 16)  # h2load -c, -m: the best of bench_grpc.py's sweep on the reference VM for both servers

Handler = Callable[[Any, Any, Any], Coroutine[Any, Any, Any]]


def part_handler(part: str) -> Handler | None:
    """The Route handler cut after `part` (None: the real one). Reaches into the servicer and engine on
    purpose: each variant must run exactly the objects the real handler runs."""

    async def constant(servicer: Any, request: Any, _context: Any) -> Any:
        return RESPONSE

    async def convert(servicer: Any, request: Any, _context: Any) -> Any:
        route_input(request)
        return RESPONSE

    async def decide_only(servicer: Any, request: Any, _context: Any) -> Any:
        engine = servicer._engine
        decide(route_input(request), engine._holder.current, engine._rng)
        return RESPONSE

    async def sign(servicer: Any, request: Any, _context: Any) -> Any:
        engine = servicer._engine
        asked = route_input(request)
        engine._signer.sign(asked.experiment, decide(asked, engine._holder.current, engine._rng))
        return RESPONSE

    async def route(servicer: Any, request: Any, _context: Any) -> Any:
        servicer._engine.route_now(route_input(request))
        return RESPONSE

    handlers: dict[str, Handler] = {
        "constant": constant,
        "convert": convert,
        "decide": decide_only,
        "sign": sign,
        "route": route,
    }
    return handlers.get(part)


def discard_pending(engine: RoutingEngine) -> None:
    """record_pending that records nothing: the recording timer still runs once per batch, as shipped."""
    engine._unrecorded = []


def launch(part: str, argv: list[str]) -> int:
    handler = part_handler(part)
    if handler is not None:
        RouterServicer.Route = handler  # type: ignore[assignment, method-assign]
    if part == "unrecorded":  # the real handler; what it leaves to record is dropped
        RoutingEngine.record_pending = discard_pending  # type: ignore[method-assign]
    return cli_main(argv)


def measure(rounds: int, seconds: float) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": "handler_parts", "machine": machine_info(), "setting": SETTING}
    with running_redis() as redis_server, tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp:
        apply_experiments(redis_server.url, [experiment_doc(bench_grpc.EXPERIMENT)])
        frame = Path(tmp) / "route.bin"
        frame.write_bytes(grpc_frame(bench_grpc.route_request(unit_in_rollout(bench_grpc.EXPERIMENT, 90))))
        servers: dict[str, FloorServer | RouterServer] = {"floor": FloorServer()}
        for part in PARTS:
            launcher = (str(Path(__file__).resolve()), "--part", part)
            servers[part] = RouterServer(redis_server.url, launcher=launcher)
        try:
            for server in servers.values():
                server.wait_serving()
            rates = bench_grpc.alternate(
                servers,
                rounds,
                lambda _name, server: (
                    bench_grpc.run(server, bench_grpc.ROUTE, frame, SETTING, seconds).requests_per_s
                ),
            )
        finally:
            for server in servers.values():
                server.stop()
    floor = statistics.median(rates["floor"])
    report["rounds"] = rates
    report["summary"] = {
        name: {
            "requests_per_s": statistics.median(values),
            "ratio_to_floor": statistics.median(v / f for v, f in zip(values, rates["floor"], strict=True)),
            "us_per_request": 1e6 / statistics.median(values),
        }
        for name, values in rates.items()
    }
    report["floor_requests_per_s"] = floor
    return report


def print_table(report: dict[str, Any]) -> None:
    summary = report["summary"]
    floor_us = summary["floor"]["us_per_request"]
    print(f"\nRoute handler cut after each step, h2load -c {SETTING[0]} -m {SETTING[1]}, medians")
    print(f"{'variant':<12} {'req/s':>8} {'/ floor':>8} {'us/req':>8} {'vs floor':>9}")
    for name, row in summary.items():
        print(
            f"{name:<12} {row['requests_per_s']:>8,.0f} {row['ratio_to_floor']:>8.3f} "
            f"{row['us_per_request']:>8.0f} {row['us_per_request'] - floor_us:>+9.0f}"
        )


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--part":
        return launch(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    parser.add_argument("--seconds", type=float, default=2.5, help="measured seconds per h2load run")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "handler_parts.json")
    args = parser.parse_args()
    started = time.perf_counter()
    report = measure(args.rounds, args.seconds)
    report["elapsed_s"] = time.perf_counter() - started
    print_table(report)
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
