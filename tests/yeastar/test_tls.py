"""HTTPS + WSS to a PBX with a self-signed certificate.

A throwaway CA and a server certificate for 127.0.0.1 are made in the test
with the ``cryptography`` package (a dev dependency); the simulator serves
with them.  Trusting the CA through ``ca_file`` works; without it the
adapter refuses with advice, and never
falls back to an unverified connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.base import FatalPbxError
from adapters.yeastar.adapter import YeastarAdapter, subscribe_url
from adapters.yeastar.consumer import EventConsumer
from adapters.yeastar.rest import tls_context
from adapters.yeastar.simulator import PbxSimulator, SimConfig
from engine.model import CallsSnapshot, Event, PbxRequest
from tests.support import make_certs
from tests.yeastar.client_support import FakePbx, wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """ca.pem (the CA to trust), server.pem + server.key (for 127.0.0.1)."""
    return make_certs(tmp_path_factory.mktemp("pki"))


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
