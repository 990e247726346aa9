"""The floor: a bare grpc.aio server for mabrouter.v1.Router that does no work.

    .venv/bin/python benchmarks/floor_server.py --listen 127.0.0.1:PORT [--reuse-port]

Route returns one constant RouteResponse of the router's shape (arm, a decision id as long as the
router's, reason, propensity, config version, a one-entry payload); RouteBatch returns one constant
result per request.
Same server options as the router (service/server.py: 1 MiB message limits, grpc.so_reuseport,
maximum_concurrent_rpcs 2000), the same health and reflection services, the same default asyncio loop.
Whatever the router costs above this server is mabrouter's own work; this server's cost is grpc.aio's.
With --reuse-port several copies can share one port, like `mabrouter serve --workers N`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mabrouter.service.server import MAX_MESSAGE_BYTES, ROUTER_SERVICE
from mabrouter.v1 import router_pb2, router_pb2_grpc

# A real id the router issued for experiment "ranker" (85 characters, not 60): the
# floor's response is byte for byte the size of the router's.
DECISION_ID = "MXxyYW5rZXJ8YXJtLTd8MXwxNzk1MzI1NDcwNTU2fDg1MWFmYmVjYTk1ZTB8MQ.owZN0E3VsxSzjjlwSTO6IQ"
RESPONSE = router_pb2.RouteResponse(
    arm="arm-7",
    decision_id=DECISION_ID,
    reason=router_pb2.SAMPLED,
    propensity=0.123456789,
    config_version=7,
    payload={"endpoint": "http://model-7.svc:8080"},
)
MAX_CONCURRENT_RPCS = 2000  # mabrouter's Settings.max_concurrent_rpcs default


class FloorServicer(router_pb2_grpc.RouterServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self) -> None:
        self._batches: dict[int, router_pb2.RouteBatchResponse] = {}

    async def Route(self, request: router_pb2.RouteRequest, context: Any) -> router_pb2.RouteResponse:  # noqa: N802
        return RESPONSE

    async def RouteBatch(  # noqa: N802
        self, request: router_pb2.RouteBatchRequest, context: Any
    ) -> router_pb2.RouteBatchResponse:
        size = len(request.requests)
        batch = self._batches.get(size)
        if batch is None:
            batch = router_pb2.RouteBatchResponse()
            for _ in range(size):
                batch.results.add(response=RESPONSE)
            self._batches[size] = batch
        return batch


async def serve(listen: str, reuse_port: bool) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    router_pb2_grpc.add_RouterServicer_to_server(FloorServicer(), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (ROUTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    for name in ("", ROUTER_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.reuse_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
