"""Sample-ratio counters edited by hand mid-traffic (1e308, -1e308, odd bytes): a real `mabrouter serve`
keeps answering and obeys a kill, `/metrics` still scrapes, and `status --json` still gives valid JSON.
The checks read counters the router writes and an operator can overwrite; before this, a stored 1e308
made them raise (x ** 2 overflowing), which took `status` and the whole metrics scrape down."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import RedisServer, RouterProcess, apply_experiments, cli, free_port, redis_cli

STATS = "mabrouter:{held}:stats"


@pytest.mark.parametrize(
    ("field", "value"),
    [("_split:cell:3", "1e308"), ("a:sampled", "1e308"), ("b:expected", "1e308"),
     ("_split:cell:50", "-1e308"), ("_split:cell:7", "\xff\xfe"), ("a:sampled", "inf")],
)  # fmt: skip
def test_routers_answer_and_obey_kills_whatever_the_split_counters_hold(
    redis_server: RedisServer, tmp_path: Path, field: str, value: str
) -> None:
    apply_experiments(
        redis_server.url,
        tmp_path,
        {"name": "held", "control": "a", "holdout": 10, "arms": [{"name": "a"}, {"name": "b"}]},
    )
    metrics_port = free_port()
    router = RouterProcess(redis_server.url, MABROUTER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    router.wait_serving()
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for i in range(200):
                stub.Route(pb.RouteRequest(experiment="held", unit_id=f"u{i}"), timeout=2)
            time.sleep(0.3)  # the trial counts flushed
            redis_cli(redis_server, "HSET", STATS, field, value)
            time.sleep(0.5)  # a few refreshes over the edited hash
            for i in range(50):
                reply = stub.Route(pb.RouteRequest(experiment="held", unit_id=f"v{i}"), timeout=2)
                assert reply.arm in {"a", "b"}
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
                assert page.status == 200
            status = cli("status", "held", "--json", redis_url=redis_server.url, check=False)
            assert status.returncode in {0, 1}, status.stderr  # 1: the stored statistics cannot be used
            if status.returncode == 0:
                json.loads(status.stdout, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
            assert "Traceback" not in status.stderr
            cli("kill", "held", "--reason", "hostile counters", redis_url=redis_server.url)
            deadline = time.monotonic() + 1.0
            while stub.Route(pb.RouteRequest(experiment="held", unit_id="w"), timeout=2).reason != pb.KILLED:
                assert time.monotonic() < deadline, "kill not obeyed within 1 s"
                time.sleep(0.01)
    finally:
        router.kill()
