"""Startup settings (MABROUTER_* environment variables) and the experiment document schema.

The same schema validates an experiment file on its way into Redis (CLI) and on its way out (router),
so a document that one side accepts the other accepts too.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from mabrouter.core.model import (
    NAME_PATTERN,
    ArmSpec,
    BetaPrior,
    ExperimentSpec,
    NormalPrior,
    RewardKind,
)
from mabrouter.errors import ConfigError
from mabrouter.targeting_schema import TargetingDoc, to_rule

MAX_ARMS = 100
MAX_PAYLOAD_ENTRIES = 32
MAX_PAYLOAD_VALUE_CHARS = 2048
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_LISTED_UNITS = 10_000
DEFAULT_STICKY_TTL_SECONDS = 7 * 86_400

Name = Annotated[str, Field(pattern=NAME_PATTERN.pattern, description="letters, digits, . _ -; max 64")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BetaPriorDoc(_Strict):
    alpha: Positive = 1.0
    beta: Positive = 1.0


class NormalPriorDoc(_Strict):
    mean: Finite = 0.0
    kappa: Positive = 1.0
    alpha: Positive = 1.0
    beta: Positive = 1.0


class ArmDoc(_Strict):
    name: Name
    payload: dict[str, str] = Field(default_factory=dict)
    prior: BetaPriorDoc | NormalPriorDoc | None = None

    @field_validator("payload")
    @classmethod
    def _bounded_payload(cls, payload: dict[str, str]) -> dict[str, str]:
        if len(payload) > MAX_PAYLOAD_ENTRIES:
            raise ValueError(f"at most {MAX_PAYLOAD_ENTRIES} payload entries, got {len(payload)}")
        for key, value in payload.items():
            if len(value) > MAX_PAYLOAD_VALUE_CHARS:
                raise ValueError(
                    f"payload {key!r} is {len(value)} characters; the limit is {MAX_PAYLOAD_VALUE_CHARS}"
                )
        return payload


class StickyDoc(_Strict):
    ttl_seconds: int = Field(default=DEFAULT_STICKY_TTL_SECONDS, ge=60, le=366 * 86_400)


Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
UnitId = Annotated[str, Field(min_length=1, max_length=512)]


class ExperimentDoc(_Strict):
    """An experiment file (YAML or JSON). Unknown fields are errors."""

    name: Name
    description: str = Field(default="", max_length=1000)
    reward: Literal["bernoulli", "gaussian"] = "bernoulli"
    control: Name
    arms: list[ArmDoc] = Field(min_length=2, max_length=MAX_ARMS)
    salt: str = Field(default="", max_length=128, description="hash salt; defaults to the name")
    rollout: Percent = 100.0
    targeting: TargetingDoc | None = None
    allow: dict[Name, list[UnitId]] = Field(default_factory=dict, description="arm -> unit ids forced to it")
    deny: list[UnitId] = Field(default_factory=list, description="unit ids that always get control")
    sticky: StickyDoc | None = None
    segments: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=16, description="attributes logged with each decision"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentDoc:
        names = [arm.name for arm in self.arms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(duplicates)}")
        if self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the arms ({', '.join(names)})")
        self._check_lists(names)
        wanted = BetaPriorDoc if self.reward == "bernoulli" else NormalPriorDoc
        for arm in self.arms:
            if arm.prior is not None and not isinstance(arm.prior, wanted):
                fields = "alpha, beta" if wanted is BetaPriorDoc else "mean, kappa, alpha, beta"
                raise ValueError(f"arm {arm.name!r}: a {self.reward} experiment takes a prior with {fields}")
        return self

    def _check_lists(self, names: list[str]) -> None:
        unknown = sorted(set(self.allow) - set(names))
        if unknown:
            raise ValueError(f"allow names arms that do not exist: {', '.join(unknown)}")
        allowed = [unit for units in self.allow.values() for unit in units]
        listed = len(allowed) + len(self.deny)
        if listed > MAX_LISTED_UNITS:
            raise ValueError(f"allow and deny list {listed} units; the limit is {MAX_LISTED_UNITS}")
        twice = sorted(unit for unit, n in Counter([*allowed, *self.deny]).items() if n > 1)
        if twice:
            raise ValueError(f"units listed more than once in allow/deny: {', '.join(twice[:10])}")

    def to_spec(self) -> ExperimentSpec:
        kind = RewardKind(self.reward)
        return ExperimentSpec(
            name=self.name,
            reward=kind,
            control=self.control,
            arms=tuple(
                ArmSpec(name=arm.name, prior=_prior(kind, arm.prior), payload=dict(arm.payload))
                for arm in self.arms
            ),
            salt=self.salt,
            rollout=self.rollout,
            targeting=to_rule(self.targeting) if self.targeting is not None else None,
            allow={unit: arm for arm, units in self.allow.items() for unit in units},
            deny=frozenset(self.deny),
            sticky_ttl_seconds=self.sticky.ttl_seconds if self.sticky is not None else 0,
            segments=tuple(self.segments),
        )


def _prior(kind: RewardKind, doc: BetaPriorDoc | NormalPriorDoc | None) -> BetaPrior | NormalPrior:
    if isinstance(doc, BetaPriorDoc):
        return BetaPrior(doc.alpha, doc.beta)
    if isinstance(doc, NormalPriorDoc):
        return NormalPrior(doc.mean, doc.kappa, doc.alpha, doc.beta)
    return BetaPrior() if kind is RewardKind.BERNOULLI else NormalPrior()


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field path, e.g. `arms.1.name: String should match...`."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(document)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see README 'Experiment files')"
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


def parse_experiment(data: Any, source: str) -> ExperimentDoc:
    try:
        return ExperimentDoc.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not a valid experiment:\n{describe_validation_error(exc)}") from exc


def load_experiment_file(path: Path) -> ExperimentDoc:
    """Read and validate a YAML or JSON experiment file; ConfigError names the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    return parse_experiment(data, str(path))


def experiment_to_json(doc: ExperimentDoc) -> str:
    return doc.model_dump_json(exclude_none=True)
