"""gRPC server wiring: the Router service, the standard health service and reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mabrouter.service.requests import add_router_service
from mabrouter.service.servicer import RouterServicer
from mabrouter.v1 import router_pb2

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
MAX_MESSAGE_BYTES = 1024 * 1024


SNAPSHOT_HEALTH = "mabrouter.snapshot"


def _status(ok: bool) -> int:
    return int(health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING)


class HealthReporter:
    """Health by service name.

    "" and mabrouter.v1.Router: SERVING once a snapshot is loaded (the router can answer; point
    readiness probes here). mabrouter.snapshot: SERVING while the snapshot is fresher than the maximum
    staleness and every experiment in Redis could be used (point alerts here: a stale router, or one
    serving an experiment from its last good state, keeps answering, so it must not leave the load
    balancer).
    """

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped submodule
        self.serving = False
        self.fresh = False

    async def update(self, loaded: bool, fresh: bool) -> None:
        if loaded != self.serving:
            self.serving = loaded
            for name in ("", ROUTER_SERVICE):
                await self.servicer.set(name, _status(loaded))
        fresh = loaded and fresh
        if fresh != self.fresh:
            self.fresh = fresh
            await self.servicer.set(SNAPSHOT_HEALTH, _status(fresh))

    async def start_not_serving(self) -> None:
        for name in ("", ROUTER_SERVICE, SNAPSHOT_HEALTH):
            await self.servicer.set(name, _status(False))


def build_server(
    servicer: RouterServicer,
    health_reporter: HealthReporter,
    listen: str,
    *,
    reuse_port: bool = False,
    max_concurrent_rpcs: int | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Create the server bound to `listen` (host:port or unix:PATH); return it and the bound TCP port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    # Not the generated add_RouterServicer_to_server: its deserializers raise on undecodable bytes, which
    # grpc answers with UNKNOWN and a logged traceback; these answer INVALID_ARGUMENT (service.requests).
    add_router_service(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_reporter.servicer, server)
    reflection.enable_server_reflection(
        (ROUTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = (
            server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
        )
    except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
        raise OSError(f"cannot listen on {listen}: address in use or invalid") from exc
    if port == 0 and not listen.startswith("unix:") and not listen.endswith(":0"):
        raise OSError(f"cannot listen on {listen}: address in use or invalid")
    return server, port


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with the given certificate; with a client CA, mutual TLS (clients must present a cert)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
