"""Startup settings: every field is a MABROUTER_<FIELD> environment variable (and some are serve flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
