"""A real nginx terminates TLS in front of a real plaintext gRPC server on loopback."""

from __future__ import annotations

import socket
from concurrent import futures

import grpc
import pytest
from _ports import free_port
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lungsearch.errors import ConfigError
from lungsearch.security import TLSProxy, nginx_available

pytestmark = pytest.mark.skipif(not nginx_available(), reason="nginx not installed (apt-get install nginx-light)")


@pytest.fixture(scope="module")
def upstream():
    server = grpc.server(futures.ThreadPoolExecutor(2))
    svc = health.HealthServicer()
    svc.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(svc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def _check(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_tls_round_trip(pki, upstream):
    port = free_port()
    with TLSProxy(listen_port=port, upstream=upstream, cert_file=pki["server.crt"], key_file=pki["server.key"]):
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.crt"].read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as ch:
            assert _check(ch) == health_pb2.HealthCheckResponse.SERVING
        # A plaintext client cannot talk to the TLS port.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError):
            _check(ch)


def test_mtls_requires_client_certificate(pki, upstream):
    port = free_port()
    with TLSProxy(
        listen_port=port,
        upstream=upstream,
        cert_file=pki["server.crt"],
        key_file=pki["server.key"],
        client_ca_file=pki["ca.crt"],
    ):
        anon = grpc.ssl_channel_credentials(root_certificates=pki["ca.crt"].read_bytes())
        with grpc.secure_channel(f"localhost:{port}", anon) as ch, pytest.raises(grpc.RpcError) as err:
            _check(ch)
        # Not INTERNAL (nginx's bare 400): the caller learns it is an authentication problem.
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        mutual = grpc.ssl_channel_credentials(
            root_certificates=pki["ca.crt"].read_bytes(),
            private_key=pki["client.key"].read_bytes(),
            certificate_chain=pki["client.crt"].read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{port}", mutual) as ch:
            assert _check(ch) == health_pb2.HealthCheckResponse.SERVING


def test_missing_cert_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cert_file"):
        TLSProxy(listen_port=1, upstream="127.0.0.1:2", cert_file=tmp_path / "nope.crt", key_file=tmp_path / "nope.key")


def test_stop_is_clean(pki, upstream):
    port = free_port()
    proxy = TLSProxy(
        listen_port=port, upstream=upstream, cert_file=pki["server.crt"], key_file=pki["server.key"]
    ).start()
    assert proxy.running
    proxy.stop()
    assert not proxy.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 0.5).close()
