"""TLS and mutual TLS on the gRPC port, with certificates made here (no private key lives in the repository)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cachesvc import cli
from cachesvc.config import Settings
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

StartApp = Callable[..., Any]


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return _pem(cert, key), cert, key


def make_leaf(common_name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, server: bool) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return _pem(builder.sign(ca_key, hashes.SHA256()), key)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return Pem(cert.public_bytes(serialization.Encoding.PEM),
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem
    stranger: Pem  # a client certificate from the other CA
    files: dict[str, str]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, ca_cert, ca_key = make_ca("test CA")
    other, other_cert, other_key = make_ca("another CA")
    server = make_leaf("localhost", ca_cert, ca_key, server=True)
    files = {}
    for name, data in (("ca.pem", ca.cert), ("server.pem", server.cert), ("server.key", server.key)):
        (tmp_path / name).write_bytes(data)
        files[name] = str(tmp_path / name)
    return Pki(ca=ca, server=server, client=make_leaf("client", ca_cert, ca_key, server=False), other_ca=other,
               stranger=make_leaf("stranger", other_cert, other_key, server=False), files=files)


async def stats(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (grpc.aio.insecure_channel(target) if credentials is None
               else grpc.aio.secure_channel(target, credentials))
    async with channel:
        try:
            await pb_grpc.SemanticCacheStub(channel).Stats(pb.StatsRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_tls_port_serves_tls_only(start_app: StartApp, pki: Pki) -> None:
    app = await start_app(tls_cert=pki.files["server.pem"], tls_key=pki.files["server.key"])
    target = f"127.0.0.1:{app.port}"
    assert await stats(target, grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)) is grpc.StatusCode.OK
    assert await stats(target, None) is grpc.StatusCode.UNAVAILABLE  # plain text is refused
    # a client that does not trust the server's CA does not talk to it
    assert await stats(target, grpc.ssl_channel_credentials(root_certificates=pki.other_ca.cert)) \
        is grpc.StatusCode.UNAVAILABLE


async def test_the_health_command_speaks_tls(start_app: StartApp, pki: Pki) -> None:
    app = await start_app(tls_cert=pki.files["server.pem"], tls_key=pki.files["server.key"])
    target = f"127.0.0.1:{app.port}"
    assert await asyncio.to_thread(cli.main, ["health", "--target", target, "--tls-ca", pki.files["ca.pem"]]) == 0
    assert await asyncio.to_thread(cli.main, ["health", "--target", target, "--timeout", "1"]) == 1


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(start_app: StartApp, pki: Pki) -> None:
    app = await start_app(tls_cert=pki.files["server.pem"], tls_key=pki.files["server.key"],
                          tls_client_ca=pki.files["ca.pem"])
    target = f"127.0.0.1:{app.port}"
    signed = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert, private_key=pki.client.key,
                                          certificate_chain=pki.client.cert)
    assert await stats(target, signed) is grpc.StatusCode.OK
    assert await stats(target, grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)) \
        is grpc.StatusCode.UNAVAILABLE
    foreign = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert, private_key=pki.stranger.key,
                                           certificate_chain=pki.stranger.cert)
    assert await stats(target, foreign) is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("settings", [{"tls_cert": "c.pem"}, {"tls_key": "k.pem"}, {"tls_client_ca": "ca.pem"}])
def test_tls_settings_must_be_complete(settings: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="tls_"):
        Settings(**settings)
