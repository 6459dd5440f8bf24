"""Transfer operations against the simulated Webex API, with events arriving
as signed webhooks through a loopback receiver."""

from __future__ import annotations

import itertools
import time

import httpx
import pytest
import structlog

from adapters.base import FatalPbxError
from adapters.webex import WEBHOOK_PATH, WebexAdapter, WebexSimulator
from adapters.webex.adapter import NO_THREEWAY, TOKEN_REFUSED
from engine.model import Action, CallsSnapshot, CallUpdated, PbxRequest
from tests.webex.conftest import MakeAdapter, RecordingObserver, Sink, WebhookReceiver, statuses

CUSTOMER = "+15550002000"  # the transferee
AGENT = "+15550003000"  # the target

LEFTOVER = {"name": "old", "resource": "telephony_calls", "event": "all", "secret": "old-secret"}
INCOMING = ("ANSWER", "ANSWERED")
HELD = ("HOLD", "HOLD")
RINGING = ("ALERT", "RING")
ANSWERED = ("ANSWERED", "ANSWER")


def start(call_id: str, number: str = AGENT, transfer_id: str = "t1") -> PbxRequest:
    return PbxRequest(
        request_id="r-start", transfer_id=transfer_id, action="start", channel_id=call_id, number=number
    )


def op(action: Action, call_id: str, transfer_id: str = "t1", **kw: str) -> PbxRequest:
    return PbxRequest(
        request_id=f"r-{action}", transfer_id=transfer_id, action=action, channel_id=call_id, **kw
    )


def calls_to(sim: WebexSimulator, operation: str) -> list[dict[str, object] | None]:
    return [r.body for r in sim.requests if r.path == f"/v1/telephony/calls/{operation}"]


async def incoming(sim: WebexSimulator, sink: Sink, number: str = CUSTOMER) -> str:
    call_id = sim.incoming_call(number)
    await sink.wait_last(call_id, INCOMING)
    return call_id


async def consult(sim: WebexSimulator, sink: Sink, adapter: WebexAdapter, original: str) -> str:
    finished = await adapter.execute(start(original))
    assert finished.outcome == "ok" and finished.call_id
    return finished.call_id


async def test_start_snapshots_calls_and_registers_the_webhook(
    sim: WebexSimulator, receiver: WebhookReceiver, make_adapter: MakeAdapter, sink: Sink
) -> None:
    existing = sim.incoming_call(CUSTOMER)
    adapter = await make_adapter()
    assert adapter.connected and adapter.platform == "webex" and "threeway" not in adapter.capabilities
    snapshot = sink.events[0]
    assert isinstance(snapshot, CallsSnapshot)
    assert [(c.call_id, statuses(c.members)) for c in snapshot.calls] == [(existing, INCOMING)]
    [hook] = sim.webhooks.values()
    assert hook["targetUrl"] == receiver.public_url + WEBHOOK_PATH
    assert (hook["resource"], hook["event"], hook["secret"]) == ("telephony_calls", "all", sim.webhook_secret)
    await adapter.close()
    assert sim.webhooks == {}
    assert not adapter.connected


async def test_a_webhook_left_by_an_earlier_run_is_replaced(
    sim: WebexSimulator, receiver: WebhookReceiver, make_adapter: MakeAdapter
) -> None:
    # An earlier process died without close(): its registration would double every delivery.
    target = receiver.public_url + WEBHOOK_PATH
    headers = {"Authorization": f"Bearer {sim.access_token}"}
    async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as http:
        leftover = (await http.post("/webhooks", json=dict(LEFTOVER, targetUrl=target))).json()["id"]
        other = (await http.post("/webhooks", json=dict(LEFTOVER, targetUrl="http://127.0.0.1:9/x"))).json()[
            "id"
        ]

    await make_adapter()

    assert leftover not in sim.webhooks
    assert other in sim.webhooks  # someone else's webhook is left alone
    assert [hook["targetUrl"] for hook in sim.webhooks.values()] == ["http://127.0.0.1:9/x", target]


async def test_a_refused_token_at_start_is_fatal(sim: WebexSimulator, sink: Sink) -> None:
    adapter = WebexAdapter(sim.base_url, access_token="wrong", webhook_secret="s")
    with pytest.raises(FatalPbxError) as caught:
        await adapter.start(sink)
    assert "wrong" not in str(caught.value)
    await adapter.close()


async def test_consult_then_complete_sends_one_attended_transfer(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    sim.set_party(AGENT, answer_after=0.1)
    original = await incoming(sim, sink)

    consult_id = await consult(sim, sink, adapter, original)

    assert [r.path.rsplit("/", 1)[-1] for r in sim.requests if "/telephony/calls/" in r.path] == [
        "hold",
        "dial",
    ]
    assert calls_to(sim, "hold") == [{"callId": original}]
    assert calls_to(sim, "dial") == [{"destination": AGENT}]
    await sink.wait_last(consult_id, ANSWERED)
    assert sink.last(original) == HELD
    assert sink.history(consult_id) == [RINGING, ANSWERED]
    update = next(e for e in sink.events if isinstance(e, CallUpdated) and e.call_id == consult_id)
    # The target's leg first: the engine takes the first new leg of the consult call for the target.
    assert [(m.kind, m.number, m.channel_id) for m in update.members] == [
        ("outbound", AGENT, consult_id + "/remote"),
        ("extension", "+15550001000", consult_id),
    ]

    # The engine need not pass the consult call: the adapter kept it from the start.
    finished = await adapter.execute(op("complete", original))

    assert finished.outcome == "ok"
    assert sim.transfer_count() == 1
    assert calls_to(sim, "transfer") == [{"callId1": original, "callId2": consult_id}]
    assert [r.status for r in sim.requests if r.path.endswith("/transfer")] == [204]
    await sink.wait_for(lambda: sink.last(original) == sink.last(consult_id) == ("ENDED",))
    assert ("FAILED",) not in sink.history(consult_id)


async def test_abort_hangs_up_the_consult_and_resumes_the_original(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    sim.set_party(AGENT, answer_after=None)  # rings forever
    original = await incoming(sim, sink)
    consult_id = await consult(sim, sink, adapter, original)
    await sink.wait_last(consult_id, RINGING)

    finished = await adapter.execute(op("abort", original))

    assert finished.outcome == "ok"
    assert calls_to(sim, "hangup") == [{"callId": consult_id}]
    assert calls_to(sim, "resume") == [{"callId": original}]
    await sink.wait_last(original, INCOMING)
    # We ended the unanswered consult ourselves: that is no failed attempt.
    assert sink.history(consult_id) == [RINGING, ("ENDED",)]


async def test_swap_alternates_which_call_is_held(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    original = await incoming(sim, sink)
    consult_id = await consult(sim, sink, adapter, original)
    await sink.wait_last(consult_id, ANSWERED)

    assert (await adapter.execute(op("swap", original))).outcome == "ok"
    await sink.wait_for(lambda: sink.last(consult_id) == HELD and sink.last(original) == INCOMING)
    assert (await adapter.execute(op("swap", original))).outcome == "ok"
    await sink.wait_for(lambda: sink.last(consult_id) == ANSWERED and sink.last(original) == HELD)

    assert calls_to(sim, "hold") == [{"callId": original}, {"callId": consult_id}, {"callId": original}]
    assert calls_to(sim, "resume") == [{"callId": original}, {"callId": consult_id}]

    # Abort while swapped back: the original is not held, so only the hangup is needed.
    assert (await adapter.execute(op("swap", original))).outcome == "ok"
    assert (await adapter.execute(op("abort", original))).outcome == "ok"
    assert len(calls_to(sim, "resume")) == 3
    await sink.wait_last(consult_id, ("ENDED",))


async def test_threeway_is_refused_without_asking_webex(
    sim: WebexSimulator, make_adapter: MakeAdapter
) -> None:
    adapter = await make_adapter()
    before = len(sim.requests)
    finished = await adapter.execute(op("threeway", "any-call"))
    assert (finished.outcome, finished.errmsg, finished.request_id) == ("refused", NO_THREEWAY, "r-threeway")
    assert len(sim.requests) == before


async def test_blind_transfer_is_a_mute_transfer(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    sim.set_party(AGENT, answer_after=0.05)
    original = await incoming(sim, sink)

    finished = await adapter.execute(op("blind", original, number=AGENT))

    assert finished.outcome == "ok" and finished.call_id
    assert calls_to(sim, "transfer") == [{"callId1": original, "destination": AGENT}]
    assert [r.status for r in sim.requests if r.path.endswith("/transfer")] == [201]
    await sink.wait_last(original, ("ENDED",))


async def test_busy_target_shows_as_a_failed_consult(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    sim.set_party(AGENT, busy=True)
    original = await incoming(sim, sink)

    consult_id = await consult(sim, sink, adapter, original)

    await sink.wait_last(consult_id, ("ENDED",))
    assert sink.history(consult_id) == [RINGING, ("FAILED",), ("ENDED",)]
    assert sink.last(original) == HELD  # the engine decides to abort; Webex does not resume by itself
    finished = await adapter.execute(op("abort", original))
    assert finished.outcome == "ok"  # the consult's 404 means "already gone"
    await sink.wait_last(original, INCOMING)


async def test_refused_dial_gives_the_transferee_back(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    original = await incoming(sim, sink)
    sim.refuse("dial", 403, "Outgoing calls are not allowed")

    finished = await adapter.execute(start(original))

    assert (finished.outcome, finished.errcode, finished.errmsg) == (
        "refused",
        403,
        "Outgoing calls are not allowed",
    )
    assert calls_to(sim, "resume") == [{"callId": original}]
    await sink.wait_for(lambda: sink.history(original)[-2:] == [HELD, INCOMING])


async def test_timeout_after_sending_is_an_unknown_outcome(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter(request_timeout_s=0.2)
    original = await incoming(sim, sink)
    sim.stall(1, 1.0)

    finished = await adapter.execute(op("hangup", original))

    assert finished.outcome == "unknown"
    # Webex did act: the engine must reconcile, not resend.
    acted_on = sim.call(original)
    assert acted_on is not None and acted_on.state == "disconnected"
    await sink.wait_last(original, ("ENDED",))


async def test_throttled_request_waits_for_retry_after(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    original = await incoming(sim, sink)
    sim.throttle(2, retry_after=0.2)

    started = time.monotonic()
    finished = await adapter.execute(op("hangup", original))
    waited = time.monotonic() - started

    assert finished.outcome == "ok"
    attempts = [r for r in sim.requests if r.path.endswith("/hangup")]
    assert [r.status for r in attempts] == [429, 429, 204]
    assert 0.4 <= waited < 2.0
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    assert all(gap >= 0.19 for gap in gaps), gaps


async def test_expired_token_takes_the_link_down(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    adapter = await make_adapter()
    original = await incoming(sim, sink)
    sim.expire_token()

    finished = await adapter.execute(op("hangup", original))

    assert (finished.outcome, finished.errcode) == ("refused", 401)
    assert not adapter.connected
    assert adapter.detail == TOKEN_REFUSED
    assert observer.links[-1] == (False, TOKEN_REFUSED)


async def test_unknown_call_is_gone(sim: WebexSimulator, make_adapter: MakeAdapter) -> None:
    adapter = await make_adapter()
    finished = await adapter.execute(op("hangup", "no-such-call/remote"))
    assert (finished.outcome, finished.errcode, finished.gone) == ("refused", 404, True)
    assert calls_to(sim, "hangup") == [{"callId": "no-such-call"}]


async def test_every_request_carries_its_own_tracking_id(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter()
    original = await incoming(sim, sink)
    await consult(sim, sink, adapter, original)
    await adapter.execute(op("abort", original))
    await adapter.close()

    ids = [r.tracking_id for r in sim.requests]
    assert len(ids) >= 7  # GET calls, GET/POST/DELETE webhooks, hold, dial, hangup, resume
    assert all(i is not None and i.startswith("XFERD_") for i in ids)
    assert len(set(ids)) == len(ids)


async def test_secrets_never_reach_logs_or_observer(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    with structlog.testing.capture_logs() as logs:
        adapter = await make_adapter()
        original = await incoming(sim, sink)
        sim.throttle(1, 0.01)
        await adapter.execute(op("hangup", "nope"))  # 429 then 404: both logged
        await consult(sim, sink, adapter, original)
        sim.expire_token()
        await adapter.execute(op("abort", original))  # 401
        await adapter.close()
    assert any(entry["event"] == "webex_request_failed" for entry in logs)
    assert any(entry.get("tracking_id") for entry in logs)
    recorded = repr(logs) + repr(observer.requests) + repr(observer.links) + repr(sink.events)
    assert sim.access_token not in recorded
    assert sim.webhook_secret not in recorded
