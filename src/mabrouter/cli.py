"""`mabrouter` command line: serve, experiment apply/list, status, health, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from mabrouter.config import (
    Settings,
    describe_validation_error,
    experiment_to_json,
    load_experiment_file,
    parse_experiment,
)
from mabrouter.core.snapshot import build_experiment_state
from mabrouter.core.summary import summarize
from mabrouter.errors import ConfigError
from mabrouter.store.admin_store import AdminStore
from mabrouter.store.stats_codec import arm_stats

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_url(args: argparse.Namespace) -> str:
    if args.redis_url:
        return str(args.redis_url)
    return Settings().redis_url  # honours MABROUTER_REDIS_URL


def cmd_serve(args: argparse.Namespace) -> int:
    from mabrouter import logs  # noqa: PLC0415 - only the server needs these
    from mabrouter.app import serve  # noqa: PLC0415

    overrides = {
        key: value
        for key, value in {
            "redis_url": args.redis_url,
            "listen": args.listen,
            "refresh_interval_ms": args.refresh_interval_ms,
            "flush_interval_ms": args.flush_interval_ms,
            "log_format": args.log_format,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"invalid settings:\n{describe_validation_error(exc)}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(serve(settings))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    doc = load_experiment_file(Path(args.file))  # ConfigError names the field; nothing is written
    store = AdminStore.from_url(_redis_url(args))
    try:
        version = store.apply(doc.name, experiment_to_json(doc), int(time.time() * 1000))
    finally:
        store.close()
    print(f"applied experiment {doc.name} (version {version}, {len(doc.arms)} arms, reward {doc.reward})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = AdminStore.from_url(_redis_url(args))
    try:
        for name in store.names():
            stored = store.get(name)
            print(f"{name}\tversion {stored.version if stored else '?'}")
    finally:
        store.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = AdminStore.from_url(_redis_url(args))
    try:
        stored = store.get(args.experiment)
    finally:
        store.close()
    if stored is None:
        print(f"unknown experiment {args.experiment!r} (see `mabrouter experiment list`)", file=sys.stderr)
        return 1
    doc = parse_experiment(json.loads(stored.doc_json), f"experiment {stored.name} in Redis")
    spec = doc.to_spec()
    stats = arm_stats(spec, stored.stats)
    rng = np.random.default_rng()
    state = build_experiment_state(spec, stored.version, stats, rng)
    summaries = summarize(spec, stats, state.shares, rng)
    if args.json:
        print(
            json.dumps(
                {
                    "experiment": spec.name,
                    "version": stored.version,
                    "reward": doc.reward,
                    "arms": [s.as_json(spec.reward) for s in summaries],
                },
                indent=2,
            )
        )
        return 0
    total = "successes" if doc.reward == "bernoulli" else "reward sum"
    table = Table(title=f"{spec.name} (version {stored.version}, {doc.reward}, control {spec.control})")
    for column in ("arm", "trials", total, "mean", "95% CI", "P(best)", "share"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for s in summaries:
        table.add_row(
            s.arm,
            f"{s.trials:,}",
            f"{s.reward_sum:,.1f}",
            f"{s.mean:.4f}",
            f"[{s.ci_low:.4f}, {s.ci_high:.4f}]",
            f"{s.p_best:.3f}",
            f"{s.share:.1%}",
        )
    Console().print(table)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from mabrouter.demo import run_demo  # noqa: PLC0415

    return run_demo(decisions=args.decisions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mabrouter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the router (settings also from MABROUTER_* env vars)")
    serve.add_argument("--redis-url", help="e.g. redis://host:6379/0 (env MABROUTER_REDIS_URL)")
    serve.add_argument("--listen", help="host:port or unix:PATH (env MABROUTER_LISTEN)")
    serve.add_argument("--refresh-interval-ms", type=int, help="snapshot refresh period (default 200)")
    serve.add_argument("--flush-interval-ms", type=int, help="trial-count flush period (default 100)")
    serve.add_argument("--log-format", choices=["json", "text"])
    serve.set_defaults(handler=cmd_serve)

    experiment = commands.add_parser("experiment", help="manage experiments").add_subparsers(
        dest="action", required=True
    )
    apply = experiment.add_parser("apply", help="validate an experiment file and store it in Redis")
    apply.add_argument("file")
    apply.set_defaults(handler=cmd_apply)
    listing = experiment.add_parser("list", help="list experiments and their versions")
    listing.set_defaults(handler=cmd_list)
    for sub in (apply, listing):
        sub.add_argument("--redis-url", help="env MABROUTER_REDIS_URL")

    status = commands.add_parser("status", help="per-arm trials, mean, 95%% CI, P(best), traffic share")
    status.add_argument("experiment")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--redis-url", help="env MABROUTER_REDIS_URL")
    status.set_defaults(handler=cmd_status)

    health = commands.add_parser("health", help="ask a router's gRPC health service; exit 0 when SERVING")
    health.add_argument("--address", default="127.0.0.1:50051", help="host:port or unix:PATH")
    health.add_argument("--service", default="", help="service name ('' = overall)")
    health.add_argument("--timeout", type=float, default=2.0)
    health.set_defaults(handler=cmd_health)

    demo = commands.add_parser("demo", help="private Redis + router + simulated traffic, end to end")
    demo.add_argument("--decisions", type=int, default=6000)
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"error: cannot reach Redis: {exc}", file=sys.stderr)
        return 3
