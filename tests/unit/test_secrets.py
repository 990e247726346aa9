"""The decision secret: no router signs decision ids with a missing, short or public key by accident.

Settings-level tests call `config.decision_keys`; real `mabrouter serve` processes refusing or using a
secret are in integration/test_serve_secrets.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from mabrouter.app import RouterApp
from mabrouter.config import (
    DEV_INSECURE_SECRET,
    MIN_DECISION_SECRET_BYTES,
    Settings,
    decision_keys,
)
from mabrouter.errors import SecretError, StartupError

from support import DECISION_SECRET

GOOD = "g" * MIN_DECISION_SECRET_BYTES
SHORT = "s" * (MIN_DECISION_SECRET_BYTES - 1)


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
        RouterApp(settings(redis_url="redis://127.0.0.1:1/0", listen="127.0.0.1:0"))
    with pytest.raises(StartupError, match="31 bytes"):
        RouterApp(settings(decision_secret=SHORT, listen="127.0.0.1:0"))
