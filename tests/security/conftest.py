"""Test PKI: a throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(subject_cn, key, issuer_cert=None, issuer_key=None, *, ca=False, server=False):
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("lungsearch-test-ca", ca_key, ca=True)
    srv_key = _key()
    srv = _cert("localhost", srv_key, ca, ca_key, server=True)
    cli_key = _key()
    cli = _cert("test-client", cli_key, ca, ca_key)
    files = {}
    for name, data in {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "server.crt": srv.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(srv_key),
        "client.crt": cli.public_bytes(serialization.Encoding.PEM),
        "client.key": _pem_key(cli_key),
    }.items():
        (d / name).write_bytes(data)
        files[name] = d / name
    return files
