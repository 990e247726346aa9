"""Startup settings: every field is a MABROUTER_<FIELD> environment variable (and some are serve flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mabrouter.errors import SecretError

# HMAC-SHA256 keys shorter than its 32-byte output are guessable in practice, and a guessed key lets
# anyone forge decision ids and so outcomes.
MIN_DECISION_SECRET_BYTES = 32
# Public by construction (it is in the source), hence usable only under dev_insecure_secret. Fixed rather
# than random per process so that development routers (and --workers) still verify each other's ids.
DEV_INSECURE_SECRET = b"mabrouter-insecure-local-secret"
_MAKE_ONE = "generate one with `openssl rand -hex 32`"
_NO_SECRET = (
    "no decision secret: set MABROUTER_DECISION_SECRET, or MABROUTER_DECISION_SECRET_FILE (a file holding "
    f"it), to a random value of at least {MIN_DECISION_SECRET_BYTES} bytes shared by every replica, e.g. "
    'export MABROUTER_DECISION_SECRET="$(openssl rand -hex 32)". It signs decision ids: without it anyone '
    "could forge outcomes. For local development only, MABROUTER_DEV_INSECURE_SECRET=1 "
    "(serve --dev-insecure-secret) starts with a public built-in secret"
)


class Settings(BaseSettings):
    """Router settings; every field can be set as MABROUTER_<FIELD> or as a `mabrouter serve` flag."""

    model_config = SettingsConfigDict(env_prefix="MABROUTER_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    listen: str = Field("127.0.0.1:50051", description="host:port, or unix:PATH for a Unix socket")
    refresh_interval_ms: int = Field(200, ge=10, le=60_000, description="snapshot refresh period")
    flush_interval_ms: int = Field(100, ge=5, le=60_000, description="trial-count flush period")
    decision_secret: SecretStr | None = Field(None, description="HMAC key that signs decision ids")
    decision_secret_file: Path | None = Field(None, description="file holding the HMAC key")
    decision_secret_previous: SecretStr | None = Field(
        None, description="previous HMAC key, still accepted while a rotation rolls out"
    )
    dev_insecure_secret: bool = Field(
        False,
        description="DEVELOPMENT ONLY: start without a decision secret (a public built-in one, so anyone "
        "can forge decision ids) or with one shorter than 32 bytes",
    )
    decision_ttl_seconds: int = Field(86_400, ge=60, description="how long a decision accepts an outcome")
    shutdown_grace_seconds: float = Field(5.0, ge=0, description="time in-flight calls get on SIGTERM")
    max_staleness_seconds: float = Field(
        30.0, gt=0, description="a snapshot not refreshed for longer than this is stale"
    )
    stale_policy: Literal["serve_stale", "serve_control"] = Field(
        "serve_stale",
        description="what a stale router does: keep deciding from its last snapshot, or serve control",
    )
    metrics_listen: str = Field(
        "127.0.0.1:9464",
        description="host:port of the Prometheus endpoint (loopback by default); '' disables",
    )
    exposure_log_maxlen: int = Field(
        1_000_000, ge=0, description="entries kept per experiment in each log stream; 0 disables the log"
    )
    unit_id_privacy: Literal["raw", "hash"] = Field(
        "raw", description="how unit ids appear in logs and spans: as sent, or as a keyed hash"
    )
    spool_dir: Path | None = Field(
        None, description="directory for the outcome spool (acknowledge outcomes while Redis is down)"
    )
    spool_max_entries: int = Field(1_000_000, ge=1, description="spooled outcomes kept before refusing")
    tls_cert_file: Path | None = Field(None, description="server certificate (PEM): serve gRPC over TLS")
    tls_key_file: Path | None = Field(None, description="server private key (PEM)")
    tls_client_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) for client certificates: when set, clients must present one (mTLS)"
    )
    reuse_port: bool = Field(False, description="bind with SO_REUSEPORT (set for each worker by --workers)")
    max_concurrent_rpcs: int = Field(
        2000, ge=1, description="calls in flight per process; more get RESOURCE_EXHAUSTED instead of queueing"
    )
    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        return self


@dataclass(frozen=True)
class DecisionKeys:
    """The key that signs new decision ids, every key accepted when verifying one, and what to warn about."""

    signing: bytes
    accepted: tuple[bytes, ...]
    warnings: tuple[str, ...]


def decision_keys(settings: Settings) -> DecisionKeys:
    """Resolve the decision secrets, refusing a missing or short one unless dev_insecure_secret is set.

    Never puts a secret's value in a message: messages reach logs and stderr.
    """
    dev = settings.dev_insecure_secret
    warnings: list[str] = []
    if dev:
        warnings.append(
            "MABROUTER_DEV_INSECURE_SECRET is set: a DEVELOPMENT flag that accepts a missing or short "
            "decision secret. Never set it in production"
        )
    current = _configured_secret(settings)
    if current is None:
        if not dev:
            raise SecretError(_NO_SECRET)
        warnings.append(
            "no decision secret: using the PUBLIC built-in one; anyone can forge decision ids and outcomes"
        )
        current = DEV_INSECURE_SECRET
    else:
        _check_length(current, _current_name(settings), dev, warnings)
    accepted = [current]
    previous = _non_empty(settings.decision_secret_previous)
    if previous is not None:
        _check_length(previous, "MABROUTER_DECISION_SECRET_PREVIOUS", dev, warnings)
        accepted.append(previous)
    return DecisionKeys(current, tuple(accepted), tuple(warnings))


def _non_empty(secret: SecretStr | None) -> bytes | None:
    # An empty variable is how shells and compose files spell "unset".
    value = secret.get_secret_value().encode() if secret is not None else b""
    return value or None


def _current_name(settings: Settings) -> str:
    if settings.decision_secret_file is not None:
        return f"MABROUTER_DECISION_SECRET_FILE ({settings.decision_secret_file})"
    return "MABROUTER_DECISION_SECRET"


def _configured_secret(settings: Settings) -> bytes | None:
    from_env = _non_empty(settings.decision_secret)
    path = settings.decision_secret_file
    if path is None:
        return from_env
    if from_env is not None:
        # Replicas configured both ways could sign with different keys: make the operator choose.
        raise SecretError(
            "both MABROUTER_DECISION_SECRET and MABROUTER_DECISION_SECRET_FILE are set; set only one"
        )
    # A file that was configured but cannot be used is a deployment mistake (an unmounted secret),
    # never a reason to fall back to another key, even in development.
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise SecretError(
            f"cannot read MABROUTER_DECISION_SECRET_FILE ({path}): {exc.strerror or exc}"
        ) from exc
    if not value:
        raise SecretError(
            f"MABROUTER_DECISION_SECRET_FILE ({path}) is empty: put a random value of at least "
            f"{MIN_DECISION_SECRET_BYTES} bytes in it, e.g. openssl rand -hex 32 > {path}"
        )
    return value


def _check_length(secret: bytes, name: str, dev: bool, warnings: list[str]) -> None:
    if len(secret) >= MIN_DECISION_SECRET_BYTES:
        return
    problem = (
        f"{name} is {len(secret)} bytes; a decision secret needs at least {MIN_DECISION_SECRET_BYTES} "
        "(a short one can be guessed, and then anyone can forge decision ids)"
    )
    if not dev:
        raise SecretError(f"{problem}: {_MAKE_ONE}")
    warnings.append(problem)
