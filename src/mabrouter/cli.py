"""`mabrouter`: serve, health, demo, experiment apply/list/validate/show/diff/archive/unarchive/delete,
status, kill/unkill/rollout, audit, export, report, loadtest.

Exit codes, the same for every command: 0 done; 1 the command ran but found a problem (a stored document
the routers cannot use, changes shown by `experiment diff`, an unhealthy router); 2 bad input (flags, files,
an unknown experiment or arm); 3 Redis unreachable or refusing. Errors and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from mabrouter.commands import controls, experiments, export, lifecycle, loadtest, report, server
from mabrouter.errors import ConfigError, StoreUnavailableError

# What a shell reports for a process that SIGPIPE ended (128 + 13): how `yes | head -1` ends.
CLOSED_PIPE_EXIT = 141


def _version() -> str:
    try:
        return metadata.version("mabrouter")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mabrouter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    server.register(commands)
    lifecycle.register(experiments.register(commands))  # validate, show, diff join `experiment`
    controls.register(commands)
    export.register(commands)
    loadtest.register(commands)
    report.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit (an "ignored" traceback)
    except BrokenPipeError:
        # Before the Redis mapping below: BrokenPipeError is a ConnectionError, but it is the reader of our
        # output that went away (`| head -1`), not Redis. End quietly, as Unix tools do.
        _silence_stdout()
        return CLOSED_PIPE_EXIT
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailableError as exc:  # the message says which: unreachable, or the command refused
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered does not
    raise again (Python's documented way to handle SIGPIPE)."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (captured in a test): nothing will flush to a pipe
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
