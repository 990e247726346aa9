"""`mabrouter serve`, `mabrouter health` and `mabrouter demo`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mabrouter.config import Settings
from mabrouter.validation_messages import describe_validation_error


def cmd_serve(args: argparse.Namespace) -> int:
    from mabrouter import logs  # noqa: PLC0415 - only the server needs these
    from mabrouter.app import serve  # noqa: PLC0415

    try:
        settings = Settings(**{key: value for key, value in _flags(args).items() if value is not None})
    except ValidationError as exc:
        print(f"invalid settings:\n{describe_validation_error(exc)}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    if args.workers > 1:
        return _supervise(args, settings)
    from mabrouter.errors import StartupError  # noqa: PLC0415

    try:
        asyncio.run(serve(settings))
    except (StartupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _supervise(args: argparse.Namespace, settings: Settings) -> int:
    from mabrouter.config import decision_keys  # noqa: PLC0415
    from mabrouter.errors import SecretError  # noqa: PLC0415
    from mabrouter.workers import supervise  # noqa: PLC0415

    if settings.listen.startswith("unix:") or settings.listen.endswith(":0"):
        print("error: --workers needs a TCP host:port with a fixed port (SO_REUSEPORT)", file=sys.stderr)
        return 2
    try:
        decision_keys(settings)  # once here, rather than N workers failing the same way
    except SecretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return supervise(args.workers, _argv(_flags(args)), settings.metrics_listen)


def _argv(flags: dict[str, Any]) -> list[str]:
    """The serve flags that were given, as workers' argv (a switch set to True takes no value)."""
    return [
        f"--{flag.replace('_', '-')}" + ("" if value is True else f"={value}")
        for flag, value in flags.items()
        if value is not None
    ]


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "redis_url": args.redis_url,
        "listen": args.listen,
        "refresh_interval_ms": args.refresh_interval_ms,
        "flush_interval_ms": args.flush_interval_ms,
        "log_format": args.log_format,
        "dev_insecure_secret": args.dev_insecure_secret,
    }


def cmd_health(args: argparse.Namespace) -> int:
    from mabrouter.client.wire import ClientTls, RouterWire  # noqa: PLC0415
    from mabrouter.errors import RouterCallError  # noqa: PLC0415

    tls = None
    if args.tls_ca:
        tls = ClientTls(
            root_certificates=Path(args.tls_ca).read_bytes(),
            private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
            certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
        )
    with RouterWire(args.address, tls=tls) as wire:
        try:
            status = wire.health(args.service, timeout=args.timeout)
        except RouterCallError as exc:
            print(f"unhealthy: {exc}")
            return 1
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from mabrouter.demo import run_demo  # noqa: PLC0415

    return run_demo(decisions=args.decisions)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the router (settings also from MABROUTER_* env vars)")
    serve.add_argument("--redis-url", help="e.g. redis://host:6379/0 (env MABROUTER_REDIS_URL)")
    serve.add_argument("--listen", help="host:port or unix:PATH (env MABROUTER_LISTEN)")
    serve.add_argument("--refresh-interval-ms", type=int, help="snapshot refresh period (default 200)")
    serve.add_argument("--flush-interval-ms", type=int, help="trial-count flush period (default 100)")
    serve.add_argument(
        "--log-format", choices=["json", "text"], help="log lines as text or JSON (default text)"
    )
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    serve.add_argument(
        "--dev-insecure-secret",
        action="store_true",
        default=None,  # None: leave MABROUTER_DEV_INSECURE_SECRET in charge
        help="DEVELOPMENT ONLY: serve without MABROUTER_DECISION_SECRET (a public built-in one: anyone "
        "can forge decision ids) or with one under 32 bytes (env MABROUTER_DEV_INSECURE_SECRET=1)",
    )
    serve.set_defaults(handler=cmd_serve)

    health = commands.add_parser("health", help="ask a router's gRPC health service; exit 0 when SERVING")
    health.add_argument("--address", default="127.0.0.1:50051", help="host:port or unix:PATH")
    health.add_argument("--service", default="", help="service name ('' = overall)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    health.add_argument("--tls-ca", help="CA bundle to verify a TLS router (enables TLS)")
    health.add_argument("--tls-cert", help="client certificate, for a router requiring mTLS")
    health.add_argument("--tls-key", help="client private key, for a router requiring mTLS")
    health.set_defaults(handler=cmd_health)

    demo = commands.add_parser("demo", help="private Redis + router + simulated traffic, end to end")
    demo.add_argument("--decisions", type=int, default=6000, help="requests to route (default 6000)")
    demo.set_defaults(handler=cmd_demo)
