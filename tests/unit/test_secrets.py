"""The decision secret: no router signs decision ids with a missing, short or public key by accident.

Settings-level tests call `config.decision_keys`; process tests start real `mabrouter serve` processes
(one or --workers 2) against a real redis-server and read their exit code, stderr and decision ids.
"""

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
from pydantic import SecretStr

from mabrouter.app import RouterApp
from mabrouter.config import (
    DEV_INSECURE_SECRET,
    MIN_DECISION_SECRET_BYTES,
    Settings,
    decision_keys,
)
from mabrouter.core import decision_id
from mabrouter.errors import InvalidDecisionIdError, SecretError, StartupError
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import DECISION_SECRET, RedisServer, free_port, health_serving, wait_until

GOOD = "g" * MIN_DECISION_SECRET_BYTES
SHORT = "s" * (MIN_DECISION_SECRET_BYTES - 1)
STARTUP_ERROR_EXIT = 2


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


@pytest.fixture(autouse=True)
def _no_secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read the environment: a developer's own secret must not make a refusal test pass.
    for name in list(os.environ):
        if name.startswith("MABROUTER_DECISION_SECRET") or name == "MABROUTER_DEV_INSECURE_SECRET":
            monkeypatch.delenv(name)


# --- settings ------------------------------------------------------------------------------------------


def test_the_test_secret_is_long_enough() -> None:
    assert len(DECISION_SECRET.encode()) >= MIN_DECISION_SECRET_BYTES


def test_no_secret_is_refused_naming_both_variables_and_how_to_make_one() -> None:
    with pytest.raises(SecretError) as info:
        decision_keys(settings())
    message = str(info.value)
    for needle in ("MABROUTER_DECISION_SECRET,", "MABROUTER_DECISION_SECRET_FILE", "openssl rand -hex 32"):
        assert needle in message, message
    assert "MABROUTER_DEV_INSECURE_SECRET=1" in message, "the development way out is named"


def test_an_empty_variable_counts_as_unset() -> None:
    with pytest.raises(SecretError, match="no decision secret"):
        decision_keys(settings(decision_secret=""))


def test_31_bytes_are_refused_and_32_accepted() -> None:
    with pytest.raises(SecretError) as info:
        decision_keys(settings(decision_secret=SHORT))
    assert "MABROUTER_DECISION_SECRET is 31 bytes" in str(info.value)
    assert SHORT not in str(info.value), "a secret never appears in a message"
    keys = decision_keys(settings(decision_secret=GOOD))
    assert keys.signing == GOOD.encode()
    assert keys.accepted == (GOOD.encode(),)
    assert keys.warnings == ()


def test_length_counts_bytes_not_characters() -> None:
    eleven_characters = "é" * 11  # 22 bytes in UTF-8
    with pytest.raises(SecretError, match="22 bytes"):
        decision_keys(settings(decision_secret=eleven_characters))
    assert decision_keys(settings(decision_secret="é" * 16)).signing == ("é" * 16).encode()


def test_a_short_previous_secret_is_refused_and_a_long_one_accepted() -> None:
    with pytest.raises(SecretError, match="MABROUTER_DECISION_SECRET_PREVIOUS is 31 bytes"):
        decision_keys(settings(decision_secret=GOOD, decision_secret_previous=SHORT))
    previous = "p" * 40
    keys = decision_keys(settings(decision_secret=GOOD, decision_secret_previous=previous))
    assert keys.signing == GOOD.encode()
    assert keys.accepted == (GOOD.encode(), previous.encode())


def test_secret_file_good_missing_empty_short(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(GOOD + "\n")  # `openssl rand -hex 32 > file` ends with a newline
    assert decision_keys(settings(decision_secret_file=path)).signing == GOOD.encode()

    with pytest.raises(SecretError, match=r"cannot read MABROUTER_DECISION_SECRET_FILE \(.*missing\)"):
        decision_keys(settings(decision_secret_file=tmp_path / "missing"))
    with pytest.raises(SecretError, match="cannot read MABROUTER_DECISION_SECRET_FILE"):
        decision_keys(settings(decision_secret_file=tmp_path))  # a directory
    path.write_text(" \n")
    with pytest.raises(SecretError, match=r"MABROUTER_DECISION_SECRET_FILE \(.*\) is empty"):
        decision_keys(settings(decision_secret_file=path))
    path.write_text(SHORT)
    with pytest.raises(SecretError, match=r"MABROUTER_DECISION_SECRET_FILE \(.*\) is 31 bytes"):
        decision_keys(settings(decision_secret_file=path))


def test_an_unreadable_secret_file_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "secret"
    path.write_text(GOOD)
    path.chmod(0)
    with pytest.raises(SecretError, match="Permission denied"):
        decision_keys(settings(decision_secret_file=path))


def test_secret_and_secret_file_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(GOOD)
    with pytest.raises(SecretError, match="set only one"):
        decision_keys(settings(decision_secret=GOOD, decision_secret_file=path))


def test_the_development_flag_allows_no_or_a_short_secret_with_warnings() -> None:
    keys = decision_keys(settings(dev_insecure_secret=True))
    assert keys.signing == DEV_INSECURE_SECRET
    assert any("PUBLIC built-in" in warning for warning in keys.warnings), keys.warnings
    assert any("Never set it in production" in warning for warning in keys.warnings), keys.warnings

    keys = decision_keys(settings(dev_insecure_secret=True, decision_secret=SHORT))
    assert keys.signing == SHORT.encode()
    assert any("31 bytes" in warning for warning in keys.warnings), keys.warnings

    keys = decision_keys(settings(dev_insecure_secret=True, decision_secret=GOOD))
    assert keys.signing == GOOD.encode()
    assert keys.warnings, "the flag is warned about on every start, even when it changes nothing"


def test_the_development_flag_never_excuses_a_broken_secret_file(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot read"):
        decision_keys(settings(dev_insecure_secret=True, decision_secret_file=tmp_path / "missing"))


def test_the_development_flag_comes_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MABROUTER_DEV_INSECURE_SECRET", "1")
    assert Settings().dev_insecure_secret is True
    monkeypatch.setenv("MABROUTER_DEV_INSECURE_SECRET", "0")
    assert Settings().dev_insecure_secret is False
    monkeypatch.delenv("MABROUTER_DEV_INSECURE_SECRET")
    assert Settings().dev_insecure_secret is False, "off unless asked for"


def test_the_secret_is_read_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MABROUTER_DECISION_SECRET", GOOD)
    secret = Settings().decision_secret
    assert isinstance(secret, SecretStr)
    assert decision_keys(Settings()).signing == GOOD.encode()


def test_router_app_refuses_before_touching_redis() -> None:
    # Nothing listens on this port: the refusal must come before any Redis client is used.
    with pytest.raises(StartupError, match="no decision secret"):
        RouterApp(settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", listen="127.0.0.1:0"))
    with pytest.raises(StartupError, match="31 bytes"):
        RouterApp(settings(decision_secret=SHORT, listen="127.0.0.1:0"))


# --- real `mabrouter serve` processes ------------------------------------------------------------------


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
            reply = stub.Route(pb.RouteRequest(experiment="ranker", unit_id="u-1"), timeout=5)
            try:
                decision_id.decode(reply.decision_id, [key], int(time.time() * 1000), 60_000)
            except InvalidDecisionIdError:
                return False
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=reply.decision_id, reward=1.0), timeout=5)
            return True

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
