"""Real infrastructure for tests: private redis-server processes and real routers. No mocks."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from mabrouter.app import RouterApp
from mabrouter.cli import main as cli_main
from mabrouter.config import Settings
from mabrouter.v1 import router_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "src" / "mabrouter" / "examples" / "ranker.yaml"
# The decision secret every test router gets (routers refuse secrets under 32 bytes). Tests that sign or
# decode decision ids themselves import it, so they always agree with the routers.
DECISION_SECRET = "test-decision-secret-0123456789abcdef"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            (self.process.kill if kill else self.process.terminate)()
            self.process.wait(10)

    def start(self) -> None:
        """(Re)start on the same port and directory (so AOF/RDB persistence carries over)."""
        self.process = _spawn_redis(self.port, self.directory, self.extra_args)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: run `apt-get install -y redis-server` (tests never mock Redis)"
        )
    return binary


def redis_server_argv(port: int, directory: Path, *extra_args: str) -> list[str]:
    """A private redis-server on loopback: its own port and directory, persistence off unless
    `extra_args` turn it on (later arguments win). Every redis-server the tests start uses it."""
    return [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        *extra_args,
    ]


def _spawn_redis(port: int, directory: Path, extra_args: tuple[str, ...]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        redis_server_argv(port, directory, *extra_args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}") from None
            return False

    wait_until(ready, 10, what=f"redis-server on port {port}")
    client.close()
    return process


@contextmanager
def running_redis(*extra_args: str) -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="mabrouter-redis-"))
    port = free_port()
    server = RedisServer(port, directory, _spawn_redis(port, directory, extra_args), extra_args)
    try:
        yield server
    finally:
        server.stop(kill=True)
        shutil.rmtree(directory, ignore_errors=True)


def stats_hash(redis_server: RedisServer, experiment: str = "ranker") -> dict[str, str]:
    """An experiment's statistics hash as Redis holds it (field -> value)."""
    client = redis_server.client()
    try:
        return {
            str(key): str(value) for key, value in client.hgetall(f"mabrouter:{{{experiment}}}:stats").items()
        }
    finally:
        client.close()


class InProcessRouter:
    """A real RouterApp serving gRPC on a free port from a background thread's event loop."""

    def __init__(self, settings: Settings, tracer: Any = None) -> None:
        self.settings = settings
        self.tracer = tracer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app: RouterApp | None = None

    def start(self, wait_ready: bool = True) -> InProcessRouter:
        """Start serving; with wait_ready, return once the first snapshot is loaded (health SERVING)."""
        self.thread.start()

        async def boot() -> RouterApp:
            app = RouterApp(self.settings, self.tracer)
            await app.start()
            return app

        self.app = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)
        if wait_ready:
            app = self.app
            wait_until(lambda: app.health.serving, 10, what="first snapshot")
        return self

    @property
    def address(self) -> str:
        assert self.app is not None
        return f"127.0.0.1:{self.app.port}"

    def call(self, coroutine_factory: Callable[[RouterApp], Any], timeout: float = 10) -> Any:
        assert self.app is not None
        return asyncio.run_coroutine_threadsafe(coroutine_factory(self.app), self.loop).result(timeout)

    def stop(self) -> None:
        if self.app is not None:
            self.call(lambda app: app.stop(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> InProcessRouter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def router_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "listen": "127.0.0.1:0",
        "refresh_interval_ms": 50,
        "flush_interval_ms": 20,
        "decision_secret": DECISION_SECRET,
        "metrics_listen": "127.0.0.1:0",
    }
    values.update(overrides)
    return Settings(**values)


# Clients reconnect quickly to a router restarted on the same port (gRPC's default backoff starts at 1 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def open_stub(address: str) -> tuple[grpc.Channel, router_pb2_grpc.RouterStub]:
    channel = grpc.insecure_channel(address, options=FAST_RECONNECT)
    return channel, router_pb2_grpc.RouterStub(channel)


def cli(*args: str, redis_url: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real `mabrouter` console entry point in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "mabrouter", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env={**os.environ, "MABROUTER_REDIS_URL": redis_url, **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"mabrouter {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def redis_cli(redis_server: RedisServer, *args: str) -> str:
    """One command through the real `redis-cli`, as an operator types it; its reply (an error reply fails)."""
    result = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert not result.stdout.startswith(("ERR", "WRONGTYPE", "(error)")), result.stdout
    return result.stdout.strip()


def cli_in_process(*args: str, redis_url: str) -> str:
    """The real CLI (`mabrouter.cli.main`) run in this process, without an interpreter start-up; its stdout.
    Asserts it exits 0 (`cli` runs it as a process)."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main([*args, "--redis-url", redis_url])
    assert code == 0, f"mabrouter {' '.join(args)} exited {code}:\n{out.getvalue()}"
    return out.getvalue()


def apply_experiments(redis_url: str, directory: Path, *documents: Mapping[str, Any] | str) -> None:
    """Write each experiment (a document, or its YAML text) to DIRECTORY/NAME.yaml and apply it with the
    CLI's own code, in this process."""
    for document in documents:
        text = document if isinstance(document, str) else yaml.safe_dump(dict(document))
        path = directory / f"{yaml.safe_load(text)['name']}.yaml"
        path.write_text(text)
        cli_in_process("experiment", "apply", str(path), redis_url=redis_url)


def cli_parallel(redis_url: str, *commands: Sequence[str]) -> list[str]:
    """Run several CLI commands at once (each is a process of its own); their stdout, in order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: cli(*command, redis_url=redis_url).stdout, commands))


def apply_ranker(redis_url: str) -> None:
    """`mabrouter experiment apply` of the packaged example (experiment "ranker")."""
    cli("experiment", "apply", str(EXAMPLE), redis_url=redis_url)


def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The health status the router at `address` answers for `service`; None when it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return int(reply.status)


def health_serving(address: str, service: str = "") -> bool:
    """Whether the router at `address` answers SERVING for `service` (False when it does not answer)."""
    return health_status(address, service, timeout=0.5) == SERVING


def scrape(port: int) -> dict[str, float]:
    """A router's Prometheus metrics as `name{label=value,...}` -> value (labels sorted, `name{}` without)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        text = reply.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


class RouterProcess:
    """A real `mabrouter serve` process."""

    def __init__(self, redis_url: str, port: int | None = None, **env: str) -> None:
        """On `port` (a restarted router reuses its predecessor's), else on a free one."""
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="mabrouter-router-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mabrouter", "serve", "--listen", self.address],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "MABROUTER_REDIS_URL": redis_url,
                "MABROUTER_DECISION_SECRET": DECISION_SECRET,
                "MABROUTER_REFRESH_INTERVAL_MS": "50",
                "MABROUTER_FLUSH_INTERVAL_MS": "20",
                "MABROUTER_METRICS_LISTEN": "127.0.0.1:0",
                **env,
            },
        )

    def wait_serving(self, timeout: float = 20) -> RouterProcess:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited early ({self.process.returncode}):\n{self.output()}")
            return health_serving(self.address)

        wait_until(serving, timeout, interval=0.05, what=f"router on {self.address} to serve")
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def terminate(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def cli_commands(
    parser: argparse.ArgumentParser, name: str = "mabrouter"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command of the CLI with its parser, subcommands included ("mabrouter experiment apply")."""
    yield name, parser
    for action in parser._actions:  # argparse has no public walk of its subcommands
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from cli_commands(sub, f"{name} {sub_name}")
