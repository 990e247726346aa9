"""gRPC server wiring: the Router service, the standard health service and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mabrouter.service.servicer import RouterServicer
from mabrouter.v1 import router_pb2, router_pb2_grpc

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
MAX_MESSAGE_BYTES = 1024 * 1024


class HealthReporter:
    """Sets the same status on the overall ("") and the Router service names."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped submodule
        self.serving = False

    async def set_serving(self, serving: bool) -> None:
        if serving == self.serving:
            return
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", ROUTER_SERVICE):
            await self.servicer.set(name, status)

    async def start_not_serving(self) -> None:
        for name in ("", ROUTER_SERVICE):
            await self.servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def build_server(
    servicer: RouterServicer, health_reporter: HealthReporter, listen: str
) -> tuple[grpc.aio.Server, int]:
    """Create the server bound to `listen` (host:port or unix:PATH); return it and the bound TCP port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    router_pb2_grpc.add_RouterServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_reporter.servicer, server)
    reflection.enable_server_reflection(
        (ROUTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(listen)
    if port == 0 and not listen.startswith("unix:"):
        raise OSError(f"cannot listen on {listen}: address in use or invalid")
    return server, port
