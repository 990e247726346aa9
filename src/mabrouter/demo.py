"""`mabrouter demo`: the main job end to end on this machine, with nothing shared.

Starts a private redis-server on a free port in a temp dir, applies the 3-arm `ranker` experiment,
starts a real router process, drives simulated traffic with known true reward rates through real gRPC
calls, and shows traffic moving to the best arm.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mabrouter.client.wire import RouterWire
from mabrouter.errors import RouterCallError
from mabrouter.store.admin_store import AdminStore

TRUE_RATES = {"ranker-v1": 0.10, "ranker-v2": 0.12, "ranker-v3": 0.20}
WINDOW = 500
console = Console()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "redis-server is not installed: run `sudo apt-get install -y redis-server` (or `make demo`)"
        )
    directory = tempfile.mkdtemp(prefix="mabrouter-demo-")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            directory,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    store = AdminStore.from_url(url)

    try:
        _wait(store.ping, 10, "redis-server")
        yield url
    finally:
        store.close()
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def router_process(redis_url: str) -> Iterator[str]:
    address = f"127.0.0.1:{_free_port()}"
    # Every port the demo opens is its own: the default metrics port (9464) is often held by a router
    # already running on this machine, and the demo's router would exit on it.
    env = {
        **os.environ,
        "MABROUTER_REDIS_URL": redis_url,
        "MABROUTER_DECISION_SECRET": secrets.token_hex(32),
        "MABROUTER_METRICS_LISTEN": f"127.0.0.1:{_free_port()}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mabrouter", "serve", "--listen", address],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def serving() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"the router exited: {process.stderr.read() if process.stderr else ''}")
        with RouterWire(address) as wire:
            try:
                return wire.health(timeout=0.5) == "SERVING"
            except RouterCallError:
                return False

    try:
        _wait(serving, 20, "the router to serve")
        yield address
    finally:
        process.terminate()
        process.wait(20)


def _apply_example(redis_url: str) -> None:
    example = resources.files("mabrouter") / "examples" / "ranker.yaml"
    subprocess.run(
        [sys.executable, "-m", "mabrouter", "experiment", "apply", str(example)],
        env={**os.environ, "MABROUTER_REDIS_URL": redis_url},
        check=True,
    )


def _one_request(wire: RouterWire, unit: int, rng: np.random.Generator) -> str:
    reply = wire.route("ranker", f"user-{unit}", timeout=2)
    if rng.random() < TRUE_RATES[reply.arm]:  # the simulated user clicked
        wire.report_outcome(reply.decision_id, 1.0, timeout=2)
    return str(reply.arm)


def _drive(address: str, decisions: int) -> list[Counter[str]]:
    """Send `decisions` requests from 4 threads; return the arm counts of each window of 500."""
    windows: list[Counter[str]] = []
    rngs = [np.random.default_rng(seed) for seed in range(4)]
    with (
        RouterWire(address) as wire,
        ThreadPoolExecutor(4) as pool,
        Progress(
            TextColumn("[bold]routing"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[shares]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("route", total=decisions, shares="")
        for start in range(0, decisions, WINDOW):
            size = min(WINDOW, decisions - start)
            arms = pool.map(lambda i: _one_request(wire, i, rngs[i % 4]), range(start, start + size))
            window = Counter(arms)
            windows.append(window)
            shares = "  ".join(f"{arm[-2:]} {window[arm] / size:5.1%}" for arm in TRUE_RATES)
            progress.update(task, advance=size, shares=shares)
    return windows


def run_demo(decisions: int = 6000) -> int:
    console.print(f"[bold]mabrouter demo[/]: 3 arms with true click rates {TRUE_RATES}")
    with private_redis() as redis_url:
        console.print(f"private Redis at {redis_url}")
        _apply_example(redis_url)
        with router_process(redis_url) as address:
            console.print(f"router serving on {address}")
            started = time.monotonic()
            windows = _drive(address, decisions)
            elapsed = time.monotonic() - started
            time.sleep(0.5)  # let the router flush its last trial counts before reading status
            subprocess.run(
                [sys.executable, "-m", "mabrouter", "status", "ranker"],
                env={**os.environ, "MABROUTER_REDIS_URL": redis_url},
                check=True,
            )
    table = Table(title="traffic share per window of 500 decisions")
    table.add_column("decisions")
    for arm, rate in TRUE_RATES.items():
        table.add_column(f"{arm} (p={rate})", justify="right")
    for index, window in enumerate(windows):
        total = sum(window.values())
        table.add_row(
            f"{index * WINDOW}-{index * WINDOW + total}",
            *(f"{window[arm] / total:.1%}" for arm in TRUE_RATES),
        )
    console.print(table)
    best = max(TRUE_RATES, key=lambda arm: TRUE_RATES[arm])
    last = windows[-1]
    share = last[best] / sum(last.values())
    console.print(
        f"{decisions} decisions in {elapsed:.1f} s ({decisions / elapsed:.0f}/s including outcome reports)"
    )
    if share > 0.5:
        console.print(
            f"[green]OK[/]: the best arm {best} got {share:.0%} of the last {sum(last.values())} decisions"
        )
        return 0
    console.print(f"[red]UNEXPECTED[/]: the best arm {best} got only {share:.0%} of the last window")
    return 1
