"""HTTPS + WSS to a PBX with a self-signed certificate.

A throwaway CA and a server certificate for 127.0.0.1 are made in the test
with the ``cryptography`` package (a dev dependency); the simulator serves
with them.  Trusting the CA through ``ca_file`` works; without it the
adapter refuses with advice, and never
falls back to an unverified connection.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.base import FatalPbxError
from adapters.yeastar.adapter import YeastarAdapter, subscribe_url
from adapters.yeastar.consumer import EventConsumer
from adapters.yeastar.rest import tls_context
from adapters.yeastar.simulator import PbxSimulator, SimConfig
from engine.model import CallsSnapshot, Event, PbxRequest
from tests.yeastar.client_support import FakePbx, wait_until


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """ca.pem (the CA to trust), server.pem + server.key (for 127.0.0.1)."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("xferd test CA", ca_key, "xferd test CA", ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, "xferd test CA", ca_key, ca=False)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {name: str(d / f"{name}.pem") for name in ("ca", "server")} | {"key": str(d / "server.key")}


@pytest.fixture
async def sim(certs: dict[str, str]) -> AsyncIterator[PbxSimulator]:
    sim = PbxSimulator(SimConfig(client_id="xferd-sim", client_secret="sim-secret"))
    await sim.start(certfile=certs["server"], keyfile=certs["key"])
    sim.add_extension("2000")
    sim.add_extension("2005")
    try:
        yield sim
    finally:
        await sim.stop()


async def test_trusting_the_ca_file_gives_https_and_wss(sim: PbxSimulator, certs: dict[str, str]) -> None:
    assert sim.base_url.startswith("https://127.0.0.1:")
    call_id = sim.place_call("2000", "2005")
    events: list[Event] = []
    adapter = YeastarAdapter(sim.base_url, "xferd-sim", "sim-secret", ca_file=certs["ca"])
    try:
        await adapter.start(events.append)
        await wait_until(lambda: adapter.connected)
        assert isinstance(events[0], CallsSnapshot) and events[0].calls[0].call_id == call_id
        finished = await adapter.execute(_hangup(sim.channel_of("2005")))
        assert finished.outcome == "ok"
    finally:
        await adapter.close()
    assert sim.requests[-1].endpoint == "del_token"


async def test_an_untrusted_certificate_is_refused_with_advice(sim: PbxSimulator) -> None:
    adapter = YeastarAdapter(sim.base_url, "xferd-sim", "sim-secret")
    try:
        with pytest.raises(FatalPbxError) as caught:
            await adapter.start(lambda event: None)
    finally:
        await adapter.close()
    message = str(caught.value)
    assert "TLS certificate is not trusted" in message and "set ca_file" in message
    assert "certificate" in message and "sim-secret" not in message
    assert sim.requests == []  # nothing was sent over the untrusted connection


async def test_the_websocket_refuses_an_untrusted_certificate_too(sim: PbxSimulator) -> None:
    tokens = FakePbx().rest().tokens  # tokens from elsewhere: only the socket meets the certificate
    consumer = EventConsumer(
        subscribe_url(sim.base_url), tokens, _never, lambda event: None, ssl_context=tls_context()
    )
    consumer.start()
    try:
        await wait_until(lambda: "not trusted" in consumer.detail)
        assert "set ca_file" in consumer.detail and not consumer.connected
        assert sim.subscribers == 0
    finally:
        await consumer.close()


async def test_verification_can_be_switched_off_explicitly(sim: PbxSimulator) -> None:
    adapter = YeastarAdapter(sim.base_url, "xferd-sim", "sim-secret", verify_tls=False)
    try:
        await adapter.start(lambda event: None)
        await wait_until(lambda: adapter.connected)
    finally:
        await adapter.close()


async def _never() -> CallsSnapshot | None:
    raise AssertionError("no snapshot without a verified connection")


def _hangup(channel_id: str) -> PbxRequest:
    return PbxRequest("r1", "t1", "hangup", channel_id)
