"""TLS with certificates made by openssl for the test: gRPC over TLS and mutual TLS to the router, and the
router and the CLI over TLS to Redis (rediss://)."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from faults import books_of, route
from support import (
    NOT_SERVING,
    InProcessRouter,
    RedisServer,
    RouterProcess,
    apply_ranker,
    cli,
    free_port,
    health_status,
    open_stub,
    router_settings,
    running_redis,
    wait_until,
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return d


def _route(channel: grpc.Channel) -> pb.RouteResponse:
    return router_pb2_grpc.RouterStub(channel).Route(
        pb.RouteRequest(experiment="ranker", unit_id="u"), timeout=5
    )


@pytest.fixture
def tls_router(
    applied_ranker: RedisServer, pki: Path, request: pytest.FixtureRequest
) -> Iterator[InProcessRouter]:
    mutual = request.param == "mtls"
    settings = router_settings(
        applied_ranker.url,
        tls_cert_file=pki / "server.pem",
        tls_key_file=pki / "server.key",
        tls_client_ca_file=pki / "ca.pem" if mutual else None,
    )
    with InProcessRouter(settings).start() as router:
        yield router


@pytest.mark.parametrize("tls_router", ["tls"], indirect=True)
def test_tls_serves_verified_clients_and_refuses_plaintext(tls_router: InProcessRouter, pki: Path) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    with grpc.secure_channel(tls_router.address, credentials) as channel:
        assert _route(channel).arm.startswith("ranker-")
    with grpc.insecure_channel(tls_router.address) as channel, pytest.raises(grpc.RpcError) as info:
        _route(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("tls_router", ["mtls"], indirect=True)
def test_mtls_requires_a_client_certificate(tls_router: InProcessRouter, pki: Path) -> None:
    ca = (pki / "ca.pem").read_bytes()
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.pem").read_bytes(),
    )
    with grpc.secure_channel(tls_router.address, with_cert) as channel:
        assert _route(channel).arm.startswith("ranker-")
    with (
        grpc.secure_channel(
            tls_router.address, grpc.ssl_channel_credentials(root_certificates=ca)
        ) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        _route(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    health = cli(
        "health",
        "--address",
        tls_router.address,
        "--tls-ca",
        str(pki / "ca.pem"),
        "--tls-cert",
        str(pki / "client.pem"),
        "--tls-key",
        str(pki / "client.key"),
        redis_url="redis://unused",
        check=False,
    )
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")


def test_half_configured_tls_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set both tls_cert_file and tls_key_file"):
        router_settings("redis://unused", tls_cert_file=Path("server.pem"))


# -- TLS to Redis (rediss://) ---------------------------------------------------------------------------


def test_redis_over_tls_with_a_rediss_url_and_an_unverifiable_server_is_refused(pki: Path) -> None:
    tls_port = free_port()
    tls = (
        *("--tls-port", str(tls_port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(pki / "server.pem"), "--tls-key-file", str(pki / "server.key")),
        *("--tls-ca-cert-file", str(pki / "ca.pem")),
    )
    with running_redis(*tls) as redis_server:
        verified = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={pki / 'ca.pem'}&ssl_cert_reqs=required"
        apply_ranker(verified)  # the CLI over TLS
        router = RouterProcess(verified)
        untrusted = RouterProcess(f"rediss://127.0.0.1:{tls_port}/0")  # system CAs: cannot verify the server
        try:
            router.wait_serving()
            channel, stub = open_stub(router.address)
            with channel:
                decision = route(stub, "u")
                assert not stub.ReportOutcome(
                    pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0), timeout=5
                ).duplicate
            wait_until(lambda: books_of(redis_server).trials == 1, 5, what="a trial over TLS")
            assert books_of(redis_server).counts == Counter({decision.arm: 1})
            wait_until(lambda: "certificate verify failed" in untrusted.output(), 10, what="a TLS refusal")
            assert health_status(untrusted.address) == NOT_SERVING
        finally:
            router.kill()
            untrusted.kill()
