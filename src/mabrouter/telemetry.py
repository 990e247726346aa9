"""The only place that configures the OpenTelemetry SDK, from the standard OTEL_* environment variables.

OTEL_TRACES_EXPORTER: comma-separated `otlp`, `console`, `none`. Unset means `otlp` when an OTLP endpoint
is configured (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), else `none`, so a
sidecar with no collector does not log export failures forever.
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: `grpc` or `http/protobuf` (the default, as the spec says).
OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (e.g. parentbased_traceidratio, 0.01), OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES and OTEL_BSP_* (batch processor) are read by the SDK itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    configured = env.get("OTEL_TRACES_EXPORTER")
    if configured is None:
        has_endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT" in env or "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in env
        return ["otlp"] if has_endpoint else []
    return [name.strip() for name in configured.split(",") if name.strip() and name.strip() != "none"]


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r}; use otlp, console or none")
    protocol = env.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol!r}; use grpc or http/protobuf")


def configure_tracing(env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install a TracerProvider with batching exporters; None (tracing off) when none is configured."""
    env = os.environ if env is None else env
    names = _exporter_names(env)
    if not names:
        return None
    resource = Resource.create({} if "OTEL_SERVICE_NAME" in env else {"service.name": "mabrouter"})
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    trace.set_tracer_provider(provider)
    log.info("tracing on: exporters %s", ", ".join(names))
    return provider
