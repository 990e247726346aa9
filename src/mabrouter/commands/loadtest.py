"""`mabrouter loadtest`: drive a running router with simulated traffic; report latency, errors, learning."""

from __future__ import annotations

import argparse
import importlib.util
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mabrouter.commands.common import add_redis_url, admin_store, unknown_experiment
from mabrouter.store.experiment_decoder import decode_document

EPILOG = """\
examples:
  mabrouter loadtest --experiment ranker --duration 30 --rate 2000 \\
      --arm-rate ranker-v1=0.10 --arm-rate ranker-v2=0.12 --arm-rate ranker-v3=0.20
  mabrouter loadtest --target unix:/run/mabrouter.sock --experiment ranker --duration 60 \\
      --concurrency 64 --processes 2 --arm-rate ranker-v1=0.1 --arm-rate ranker-v2=0.3 \\
      --drift-at 30 --drift ranker-v1=0.5 --reward-delay 2
  mabrouter loadtest --experiment sizes --duration 30 --rate 500 --context prompt_tokens=0:2000 \\
      --arm-rate small=0.8 --above small=0.2 --arm-rate large=0.2 --above large=0.8

The run sends real decisions and outcomes: they update the experiment's statistics, so point it at a
test experiment. Regret is expected-reward regret against the best arm at the true rates at decision time.
The sample-ratio check compares served counts (SAMPLED decisions) with the counts expected from the
median propensity the router reported per arm and time bucket: an approximation, see the report.
The arms named by --arm-rate/--arm-mean are checked against the experiment stored in Redis
(--redis-url, env MABROUTER_REDIS_URL) before anything is sent.
Exit status: 0 when the run happened (look at the report), 2 when it could not start, 3 when Redis
cannot be reached.
"""


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def _missing_dependencies() -> list[str]:
    needed = {"hdrh": "hdrhistogram", "matplotlib": "matplotlib"}
    return [package for module, package in needed.items() if importlib.util.find_spec(module) is None]


def _config(args: argparse.Namespace) -> Any:
    from mabrouter.loadtest.driver import RunConfig  # noqa: PLC0415 - only this command needs them
    from mabrouter.loadtest.environment import build_environment  # noqa: PLC0415

    environment = build_environment(
        args.arm_rate, args.arm_mean, args.drift_at, args.drift, args.context, args.above
    )
    if args.drift_at is not None and args.drift_at >= args.duration:
        raise ValueError(f"--drift-at {args.drift_at:g} is not within the --duration of {args.duration:g} s")
    if args.concurrency is not None and args.concurrency < args.processes:
        raise ValueError(f"--concurrency {args.concurrency} is below --processes {args.processes}")
    bucket = args.bucket if args.bucket is not None else (1.0 if args.duration >= 10 else args.duration / 10)
    return RunConfig(
        target=args.target,
        experiment=args.experiment,
        duration=args.duration,
        environment=environment,
        rate=args.rate,
        concurrency=args.concurrency,
        processes=args.processes,
        units=args.units,
        timeout=args.timeout,
        reward_delay=args.reward_delay,
        report_fraction=args.report_fraction,
        bucket_seconds=bucket,
        default_arm=args.default_arm or "",
        max_inflight=args.max_inflight,
        seed=args.seed,
    )


def _check_arms(args: argparse.Namespace, modelled: tuple[str, ...]) -> None:
    """ValueError when the simulated arms do not fit the stored experiment. An arm the experiment does not
    have would never be served, so its rate would silently not matter: refuse it."""
    with admin_store(args) as store:
        stored = store.get(args.experiment)
    if stored is None:
        raise ValueError(unknown_experiment(args.experiment))
    arms = [arm.name for arm in decode_document(args.experiment, stored.config).spec.arms]
    unknown = [arm for arm in modelled if arm not in arms]
    if unknown:
        raise ValueError(
            f"experiment {args.experiment} has no arm {', '.join(map(repr, unknown))} "
            f"(arms: {', '.join(arms)})"
        )


def cmd_loadtest(args: argparse.Namespace) -> int:
    missing = _missing_dependencies()
    if missing:
        print(
            f"error: mabrouter loadtest needs {' and '.join(missing)}: pip install 'mabrouter[loadtest]'",
            file=sys.stderr,
        )
        return 2
    from rich.console import Console  # noqa: PLC0415

    from mabrouter.errors import LoadTestStartError  # noqa: PLC0415
    from mabrouter.loadtest.chart import write_chart  # noqa: PLC0415
    from mabrouter.loadtest.report import build_report, print_report, write_json  # noqa: PLC0415
    from mabrouter.loadtest.runner import run  # noqa: PLC0415

    try:
        config = _config(args)
        _check_arms(args, config.environment.arms)  # ConfigError (a broken stored document) exits 2 too
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = Console(stderr=True)
    out = Console() if sys.stdout.isatty() else Console(width=max(shutil.get_terminal_size().columns, 140))
    try:
        result = run(config, progress, connect_timeout=args.connect_timeout)
    except LoadTestStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the workers were stopped, no report", file=sys.stderr)
        return 130
    report = build_report(config, result, ["mabrouter", *sys.argv[1:]])
    print_report(report, out)
    json_out = Path(args.json_out or time.strftime("loadtest-%Y%m%d-%H%M%S.json"))
    png_out = None if args.no_png else Path(args.png_out or json_out.with_suffix(".png"))
    try:
        write_json(report, json_out)
        out.print(f"report: {json_out}")
        if png_out is not None:
            write_chart(report, png_out)
            out.print(f"chart: {png_out}")
    except OSError as exc:
        print(f"error: cannot write the report: {exc}", file=sys.stderr)
        return 1
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser(
        "loadtest",
        help="drive a running router with simulated traffic; latency, errors, shares, regret, SRM",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument(
        "--target", default="127.0.0.1:50051", help="host:port or unix:PATH (default %(default)s)"
    )
    sub.add_argument("--experiment", required=True, help="the experiment to route")
    add_redis_url(sub)
    sub.add_argument(
        "--duration",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="how long to send (default 10)",
    )
    load = sub.add_mutually_exclusive_group(required=True)
    load.add_argument(
        "--rate", type=_positive(float), metavar="N", help="open loop: target decisions/s, paced"
    )
    load.add_argument("--concurrency", type=_positive(int), metavar="N", help="closed loop: calls in flight")
    sub.add_argument(
        "--processes", type=_positive(int), default=1, metavar="P", help="worker processes (default 1)"
    )
    sub.add_argument(
        "--units", type=_positive(int), default=10_000, metavar="N", help="distinct unit ids (default 10000)"
    )
    sub.add_argument(
        "--timeout",
        type=_positive(float),
        default=1.0,
        metavar="SECONDS",
        help="per-call deadline (default 1)",
    )
    world = sub.add_argument_group("simulated environment")
    world.add_argument(
        "--arm-rate",
        action="append",
        default=[],
        metavar="ARM=P",
        help="an arm's true Bernoulli rate; repeatable",
    )
    world.add_argument(
        "--arm-mean",
        action="append",
        default=[],
        metavar="ARM=MU[:SIGMA]",
        help="an arm's gaussian reward (sigma default 1); repeatable",
    )
    world.add_argument(
        "--reward-delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="outcomes are reported this long after the decision",
    )
    world.add_argument("--drift-at", type=_positive(float), metavar="SECONDS", help="when the rates change")
    world.add_argument(
        "--drift",
        action="append",
        default=[],
        metavar="ARM=P",
        help="an arm's rate (or MU[:SIGMA]) from --drift-at on; repeatable",
    )
    world.add_argument(
        "--context",
        metavar="NAME=LOW:HIGH[@T]",
        help="send attribute NAME, uniform on [LOW, HIGH], with every request (contextual experiments)",
    )
    world.add_argument(
        "--above",
        action="append",
        default=[],
        metavar="ARM=P",
        help="an arm's rate (or MU[:SIGMA]) when the --context value is at or above T (default: the "
        "middle); repeatable",
    )
    world.add_argument(
        "--report-fraction", type=_fraction, default=1.0, metavar="F", help="share of outcomes reported"
    )
    world.add_argument("--seed", type=int, help="seed the simulation (unit ids, rewards)")
    output = sub.add_argument_group("output")
    output.add_argument("--json-out", help="report file (default loadtest-<timestamp>.json)")
    output.add_argument("--png-out", help="chart file (default: the JSON path with .png)")
    output.add_argument("--no-png", action="store_true", help="do not draw the chart")
    output.add_argument(
        "--bucket",
        type=_positive(float),
        metavar="SECONDS",
        help="report time bucket (default 1, or duration/10 below 10 s)",
    )
    advanced = sub.add_argument_group("advanced")
    advanced.add_argument(
        "--default-arm", help="sent with every Route (served when the router has no config)"
    )
    advanced.add_argument(
        "--max-inflight", type=_positive(int), default=10_000, metavar="N", help="open-loop cap per process"
    )
    advanced.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the router at start (default 5)",
    )
    sub.set_defaults(handler=cmd_loadtest)
