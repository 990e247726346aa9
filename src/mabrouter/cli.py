"""`mabrouter`: serve, health, demo, experiment apply/list, status, kill/unkill/rollout, audit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mabrouter.commands import controls, experiments, export, loadtest, report, server
from mabrouter.errors import ConfigError, StoreUnavailableError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mabrouter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    server.register(commands)
    experiments.register(commands)
    controls.register(commands)
    export.register(commands)
    loadtest.register(commands)
    report.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailableError as exc:  # the message says which: unreachable, or the command refused
        print(f"error: {exc}", file=sys.stderr)
        return 3
