"""The decision secret, in real `mabrouter serve` processes (one or --workers 2) against a real redis-server:
their exit code, output and decision ids (the settings alone: unit/test_secrets.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mabrouter.config import DEV_INSECURE_SECRET, MIN_DECISION_SECRET_BYTES
from mabrouter.core import decision_id
from mabrouter.errors import InvalidDecisionIdError
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import DECISION_SECRET, RedisServer, free_port, health_serving, wait_until

GOOD = "g" * MIN_DECISION_SECRET_BYTES
SHORT = "s" * (MIN_DECISION_SECRET_BYTES - 1)
STARTUP_ERROR_EXIT = 2


class Serve:
    """A real `mabrouter serve` with chosen flags and only the MABROUTER_* variables given here."""

    def __init__(self, redis_url: str, *flags: str, port: int | None = None, **env: str) -> None:
        self.address = f"127.0.0.1:{port or free_port()}"
        self.log = tempfile.NamedTemporaryFile(prefix="mabrouter-secrets-", suffix=".log", delete=False)  # noqa: SIM115
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("MABROUTER_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mabrouter", "serve", "--listen", self.address, *flags],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={
                **inherited,
                "MABROUTER_REDIS_URL": redis_url,
                "MABROUTER_REFRESH_INTERVAL_MS": "50",
                "MABROUTER_METRICS_LISTEN": "127.0.0.1:0",
                **env,
            },
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def exit_code(self, timeout: float = 20) -> int | None:
        """The exit code, or None if it is still running after `timeout` (then it is killed)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def serving(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the router exited ({self.process.returncode}):\n{self.output()}")
        return health_serving(self.address)

    def signing_key_works(self, key: bytes) -> bool:
        """Route once and check the decision id verifies with `key` (and only then report its outcome)."""
        with grpc.insecure_channel(self.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            # With --workers, health may come from a worker whose first snapshot is loaded while this
            # connection lands on one still loading it (UNAVAILABLE "no configuration loaded yet").
            reply = wait_until(lambda: self._route(stub), 10, interval=0.05, what="a loaded worker")
            try:
                decision_id.decode(reply.decision_id, [key], int(time.time() * 1000), 60_000)
            except InvalidDecisionIdError:
                return False
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0), timeout=5)
            return True

    @staticmethod
    def _route(stub: router_pb2_grpc.RouterStub) -> pb.RouteResponse | None:
        try:
            reply: pb.RouteResponse = stub.Route(
                pb.RouteRequest(experiment="ranker", unit_id="u-1"), timeout=5
            )
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                return None
            raise
        return reply

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def started(applied_ranker: RedisServer) -> Iterator[list[Serve]]:
    processes: list[Serve] = []
    yield processes
    for process in processes:
        process.stop()


def refused(process: Serve) -> str:
    """The router's output, after asserting it refused to start (exit 2) instead of serving."""
    code = process.exit_code()
    output = process.output()
    assert code is not None, f"the router did not refuse to start; it was still running:\n{output}"
    assert code == STARTUP_ERROR_EXIT, f"exit {code}:\n{output}"
    assert "error: " in output, output
    assert "Traceback" not in output, output
    return output


def test_serve_without_a_secret_exits_2_naming_the_variable(
    applied_ranker: RedisServer, started: list[Serve]
) -> None:
    started.append(Serve(applied_ranker.url))
    output = refused(started[-1])
    assert "MABROUTER_DECISION_SECRET" in output, output
    assert "openssl rand -hex 32" in output, output


def test_serve_with_a_31_byte_secret_exits_2(applied_ranker: RedisServer, started: list[Serve]) -> None:
    started.append(Serve(applied_ranker.url, MABROUTER_DECISION_SECRET=SHORT))
    output = refused(started[-1])
    assert "MABROUTER_DECISION_SECRET is 31 bytes" in output, output
    assert SHORT not in output, "the secret is never printed"


def test_serve_with_an_unreadable_secret_file_exits_2(
    applied_ranker: RedisServer, started: list[Serve], tmp_path: Path
) -> None:
    started.append(Serve(applied_ranker.url, MABROUTER_DECISION_SECRET_FILE=str(tmp_path / "missing")))
    assert "cannot read MABROUTER_DECISION_SECRET_FILE" in refused(started[-1])


def test_serve_with_the_development_flag_serves_and_warns(
    applied_ranker: RedisServer, started: list[Serve]
) -> None:
    by_flag = Serve(applied_ranker.url, "--dev-insecure-secret")
    by_env = Serve(applied_ranker.url, MABROUTER_DEV_INSECURE_SECRET="1")
    started.extend([by_flag, by_env])
    for router in (by_flag, by_env):
        wait_until(router.serving, 20, interval=0.05, what="a development router to serve")
        assert router.signing_key_works(DEV_INSECURE_SECRET)
        output = router.output()
        assert "WARNING" in output, output
        assert "INSECURE DECISION SECRET" in output, output
        assert "Never set it in production" in output, output


def test_serve_with_a_good_secret_serves_and_signs_with_it(
    applied_ranker: RedisServer, started: list[Serve], tmp_path: Path
) -> None:
    path = tmp_path / "secret"
    path.write_text(GOOD + "\n")
    from_env = Serve(applied_ranker.url, MABROUTER_DECISION_SECRET=DECISION_SECRET)
    from_file = Serve(applied_ranker.url, MABROUTER_DECISION_SECRET_FILE=str(path))
    started.extend([from_env, from_file])
    for router, key in ((from_env, DECISION_SECRET.encode()), (from_file, GOOD.encode())):
        wait_until(router.serving, 20, interval=0.05, what="a router with a good secret to serve")
        assert router.signing_key_works(key)
        assert not router.signing_key_works(DEV_INSECURE_SECRET)
        assert "INSECURE" not in router.output(), router.output()


def test_workers_without_a_secret_exit_2_before_starting_any(
    applied_ranker: RedisServer, started: list[Serve]
) -> None:
    started.append(Serve(applied_ranker.url, "--workers", "2"))
    output = refused(started[-1])
    assert "MABROUTER_DECISION_SECRET" in output, output
    assert "supervising" not in output, "no worker was started"


def test_workers_stop_instead_of_restarting_a_worker_that_cannot_start(
    applied_ranker: RedisServer, started: list[Serve]
) -> None:
    # Worker 0 cannot bind its metrics port (held here): a restart would fail the same way, forever.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = busy.getsockname()[1]
        started.append(
            Serve(
                applied_ranker.url,
                "--workers",
                "2",
                MABROUTER_DECISION_SECRET=DECISION_SECRET,
                MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
            )
        )
        output = refused(started[-1])
    assert "cannot serve metrics" in output, output
    assert "restarting" not in output, output


def test_workers_pass_the_development_flag_on(applied_ranker: RedisServer, started: list[Serve]) -> None:
    router = Serve(applied_ranker.url, "--workers", "2", "--dev-insecure-secret", port=free_port())
    started.append(router)
    wait_until(router.serving, 30, interval=0.1, what="development workers to serve")
    assert router.signing_key_works(DEV_INSECURE_SECRET)
    time.sleep(1)  # both workers have started (or failed) by now
    assert router.process.poll() is None, router.output()
    assert "restarting" not in router.output(), router.output()
    assert router.output().count("INSECURE DECISION SECRET: MABROUTER_DEV_INSECURE_SECRET is set") == 2
