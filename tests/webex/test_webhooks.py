"""Webhook deliveries: signature first, then de-duplication and ordering per
callId — each state change reaches the engine at most once, never backwards."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from adapters.webex import WebexAdapter, WebexSimulator
from engine.model import CallUpdated, PbxRequest
from tests.webex.conftest import MakeAdapter, RecordingObserver, Sink, WebhookReceiver

SECRET = "sim-webhook-secret"
CUSTOMER = "+15550002000"
AGENT = "+15550003000"
RINGING = ("ALERT", "RING")
ANSWERED = ("ANSWERED", "ANSWER")
HELD = ("HOLD", "HOLD")


def delivery(call_id: str, state: str, second: int, *, delivery_id: str = "d", **data: Any) -> bytes:
    """A telephony_calls delivery for an outgoing call, stamped ``second`` s past a fixed minute."""
    body = {
        "id": delivery_id,
        "resource": "telephony_calls",
        "event": "updated",
        "data": {
            "callId": call_id,
            "personality": "clickToDial",
            "state": state,
            "remoteParty": {"number": AGENT},
            "eventTimestamp": f"2026-01-01T10:00:{second:02d}.000Z",
            **data,
        },
    }
    return json.dumps(body).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


async def bare_adapter(make_adapter: MakeAdapter) -> WebexAdapter:
    """An adapter with no webhook registered: the test delivers by hand."""
    return await make_adapter(public_url=None)


async def test_signed_delivery_is_accepted(
    make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    adapter = await bare_adapter(make_adapter)
    body = delivery("C1", "connecting", 1)
    assert await adapter.handle_webhook(body, sign(body)) == 204
    assert (
        await adapter.handle_webhook(
            delivery("C1", "connected", 2), sign(delivery("C1", "connected", 2)).upper()
        )
        == 204
    )
    assert sink.history("C1") == [RINGING, ANSWERED]
    assert observer.frames == ["telephony_calls.connecting", "telephony_calls.connected"]
    assert observer.raw == [body.decode(), delivery("C1", "connected", 2).decode()]


async def test_missing_or_wrong_signature_is_refused_and_counted(
    make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    adapter = await bare_adapter(make_adapter)
    body = delivery("C1", "connecting", 1)
    assert await adapter.handle_webhook(body, None) == 401
    assert await adapter.handle_webhook(body, "") == 401
    assert await adapter.handle_webhook(body, sign(body, "other-secret")) == 401
    assert await adapter.handle_webhook(body, "é" * 40) == 401
    assert await adapter.handle_webhook(body + b" ", sign(body)) == 401  # tampered body
    assert observer.bad_reasons() == ["bad_signature"] * 5
    assert sink.history("C1") == []
    assert observer.raw == []  # nothing unauthenticated is recorded


async def test_without_a_secret_nothing_is_accepted(make_adapter: MakeAdapter, sink: Sink) -> None:
    adapter = await make_adapter(public_url=None, webhook_secret=None)
    body = delivery("C1", "connecting", 1)
    assert await adapter.handle_webhook(body, sign(body)) == 401


async def test_signed_garbage_is_counted_and_acknowledged(
    make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    adapter = await bare_adapter(make_adapter)
    before = len(sink.events)
    bodies = [
        b"{oops",
        json.dumps({"resource": "messages", "data": {"id": "m1"}}).encode(),
        json.dumps({"resource": "telephony_calls", "data": {"state": "connected"}}).encode(),
    ]
    for body in bodies:
        assert await adapter.handle_webhook(body, sign(body)) == 204
    assert observer.bad_reasons() == ["bad_json", "wrong_resource", "bad_call_data"]
    assert len(sink.events) == before
    # The stream goes on after garbage.
    good = delivery("C1", "connecting", 2)
    assert await adapter.handle_webhook(good, sign(good)) == 204
    assert sink.history("C1") == [RINGING]


async def test_unmapped_states_keep_the_legs_and_are_counted(
    make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    """A live call never loses a leg to a state the reference does not name:
    the target rings on, whatever the cloud calls it, until it answers."""
    adapter = await bare_adapter(make_adapter)
    bodies = [
        delivery("C1", "connecting", 1),
        delivery("C1", "alerting", 2),  # after dialling: not "the user's device rings"
        delivery("C1", "alerting", 3, personality="originator"),
        delivery("C1", "parked", 4),
        delivery("C1", "parked", 5),  # the same again: counted once
        delivery("C1", "connected", 6),
        delivery("C2", "earlyMedia", 7),  # never seen before: ringing
    ]
    for body in bodies:
        assert await adapter.handle_webhook(body, sign(body)) == 204
    assert sink.history("C1") == [RINGING, ANSWERED]
    assert sink.history("C2") == [RINGING]
    assert observer.unmapped == [
        ("alerting", "clickToDial"),
        ("alerting", "originator"),
        ("parked", "clickToDial"),
        ("earlyMedia", "clickToDial"),
    ]
    assert observer.bad_reasons() == []


async def test_duplicates_and_late_deliveries_apply_once_in_order(
    make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    adapter = await bare_adapter(make_adapter)
    ringing = delivery("C1", "connecting", 1, delivery_id="a")
    answered = delivery("C1", "connected", 2, delivery_id="b", answered="2026-01-01T10:00:02.000Z")
    held = delivery("C1", "held", 3, delivery_id="c")
    # A second registration's copy of the same event: another delivery id, same content.
    held_copy = delivery("C1", "held", 3, delivery_id="c2")
    ended = delivery("C1", "disconnected", 4, delivery_id="e")
    for body in (answered, ringing, answered, held, held_copy, ended, held, ended):
        assert await adapter.handle_webhook(body, sign(body)) == 204
    assert sink.history("C1") == [ANSWERED, HELD, ("ENDED",)]  # answered once: no failed attempt
    assert observer.bad_reasons() == ["stale", "duplicate", "duplicate", "stale", "stale"]


async def test_update_that_changes_no_leg_is_not_repeated(make_adapter: MakeAdapter, sink: Sink) -> None:
    adapter = await bare_adapter(make_adapter)
    for second, muted in ((1, False), (2, True)):
        body = delivery("C1", "connected", second, muted=muted)
        await adapter.handle_webhook(body, sign(body))
    assert sink.history("C1") == [ANSWERED]


async def test_same_instant_different_state_is_applied(make_adapter: MakeAdapter, sink: Sink) -> None:
    adapter = await bare_adapter(make_adapter)
    for state in ("connecting", "connected"):
        body = delivery("C1", state, 1)
        await adapter.handle_webhook(body, sign(body))
    assert sink.history("C1") == [RINGING, ANSWERED]


async def test_wrongly_signed_deliveries_over_http_get_401(
    sim: WebexSimulator,
    receiver: WebhookReceiver,
    make_adapter: MakeAdapter,
    sink: Sink,
    observer: RecordingObserver,
) -> None:
    await bare_adapter(make_adapter)
    sim.deliver_to(receiver.public_url + "/v1/webhooks/webex", secret="not-the-secret")
    call_id = sim.incoming_call(CUSTOMER)
    await sim.drained()
    assert [d.status for d in sim.deliveries] == [401, 401]
    assert observer.bad_reasons() == ["bad_signature", "bad_signature"]
    assert sink.history(call_id) == []


async def test_duplicated_deliveries_over_http(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    adapter = await make_adapter()
    sim.duplicate_deliveries = True
    original = sim.incoming_call(CUSTOMER)
    finished = await adapter.execute(
        PbxRequest(request_id="r", transfer_id="t", action="start", channel_id=original, number=AGENT)
    )
    assert finished.call_id is not None
    await sink.wait_last(finished.call_id, ANSWERED)
    await sim.drained()

    assert sink.history(original) == [("RING", "ALERT"), ("ANSWER", "ANSWERED"), HELD]
    assert sink.history(finished.call_id) == [RINGING, ANSWERED]
    assert len(sim.deliveries) == 10 and all(d.status == 204 for d in sim.deliveries)
    assert observer.bad_reasons() == ["duplicate"] * 5


async def test_reordered_deliveries_over_http_never_go_backwards(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    await make_adapter()
    sim.reorder_deliveries = True
    call_id = sim.incoming_call(CUSTOMER)  # alerting, connected: delivered connected, alerting
    await sim.drained()
    sim.hangup_remote(call_id)
    await sim.drained()

    first_states = [json.loads(d.body)["data"]["state"] for d in sim.deliveries]
    assert first_states == ["connected", "alerting", "disconnected"]  # the simulator did reorder
    assert sink.history(call_id) == [("ANSWER", "ANSWERED"), ("ENDED",)]
    assert observer.bad_reasons() == ["stale"]


async def test_click_to_dial_ringing_the_user_is_shown_only_once_dialled(
    make_adapter: MakeAdapter, sink: Sink
) -> None:
    """The engine takes the first new leg of a consult call for the target, so
    the user's own leg must not appear alone while click-to-dial rings the
    user's device; once dialled, the target's leg is listed first.  A call
    that ends before it was dialled is still a failed attempt."""
    adapter = await bare_adapter(make_adapter)
    for body in (delivery("C1", "alerting", 1), delivery("C2", "alerting", 1)):
        assert await adapter.handle_webhook(body, sign(body)) == 204
    assert sink.history("C1") == sink.history("C2") == []
    dialled = delivery("C1", "connecting", 2)
    assert await adapter.handle_webhook(dialled, sign(dialled)) == 204
    update = sink.events[-1]
    assert isinstance(update, CallUpdated)
    assert [(m.kind, m.channel_id, m.status) for m in update.members] == [
        ("outbound", "C1/remote", "RING"),
        ("extension", "C1", "ALERT"),
    ]
    dropped = delivery("C2", "disconnected", 2)
    assert await adapter.handle_webhook(dropped, sign(dropped)) == 204
    assert sink.history("C2") == [("FAILED",), ("ENDED",)]


async def test_a_named_pbx_registers_its_own_webhook_path(sim: WebexSimulator, sink: Sink) -> None:
    """With several PBXs, each Webex one has its own path on the control API
    (``/v1/webhooks/webex/<name>``): that is the URL it registers."""
    from adapters.service.config import WebexPbx
    from adapters.service.server import build_adapter

    for name, path in (("default", "/v1/webhooks/webex"), ("globex", "/v1/webhooks/webex/globex")):
        pbx = WebexPbx.model_validate(
            {
                "kind": "webex",
                "name": name,
                "base_url": sim.base_url,
                "access_token": sim.access_token,
                "webhook_secret": sim.webhook_secret,
                "public_url": "https://xferd.example.com",
            }
        )
        adapter = build_adapter(pbx, RecordingObserver())
        await adapter.start(sink)
        try:
            assert [hook["targetUrl"] for hook in sim.webhooks.values()] == [
                "https://xferd.example.com" + path
            ]
        finally:
            await adapter.close()
