"""Poll mode: the same leg events as webhooks for the same scenario, and a
poller that respects the rate limit and recovers from a lost link."""

from __future__ import annotations

from typing import Literal

import pytest

from adapters.webex import WebexSimulator
from adapters.webex.adapter import TOKEN_REFUSED
from engine.model import Action, CallsSnapshot, PbxRequest
from tests.webex.conftest import MakeAdapter, RecordingObserver, Sink, statuses

CUSTOMER = "+15550002000"
AGENT = "+15550003000"
INCOMING = ("ANSWER", "ANSWERED")
RINGING = ("ALERT", "RING")
ANSWERED = ("ANSWERED", "ANSWER")
HELD = ("HOLD", "HOLD")
ENDED = ("ENDED",)
POLL = 0.02
#: Every scripted state lasts this long: far longer than a poll interval.
STEP = 0.3


def request(action: Action, channel_id: str, **kw: str) -> PbxRequest:
    return PbxRequest(request_id=f"r-{action}", transfer_id="t", action=action, channel_id=channel_id, **kw)


def since(history: list[tuple[str, ...]], first: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``history`` from the first ``first`` on (poll mode never sees the
    instant between an incoming call's alerting and its answer)."""
    return history[history.index(first) :]


@pytest.mark.parametrize("mode", ["webhook", "poll"])
async def test_consult_and_complete_give_the_same_events(
    mode: Literal["webhook", "poll"], sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter(events=mode, poll_interval_s=POLL)
    sim.set_party(AGENT, answer_after=STEP)
    original = sim.incoming_call(CUSTOMER)
    await sink.wait_last(original, INCOMING)

    consult = (await adapter.execute(request("start", original, number=AGENT))).call_id
    assert consult is not None
    await sink.wait_last(consult, ANSWERED)
    assert (await adapter.execute(request("complete", original))).outcome == "ok"
    await sink.wait_for(lambda: sink.last(original) == sink.last(consult) == ENDED)

    assert since(sink.history(original), INCOMING) == [INCOMING, HELD, ENDED]
    assert sink.history(consult) == [RINGING, ANSWERED, ENDED]


@pytest.mark.parametrize("mode", ["webhook", "poll"])
async def test_busy_target_gives_the_same_events(
    mode: Literal["webhook", "poll"], sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink
) -> None:
    adapter = await make_adapter(events=mode, poll_interval_s=POLL)
    sim.set_party(AGENT, busy=True, busy_after=STEP)
    original = sim.incoming_call(CUSTOMER)
    await sink.wait_last(original, INCOMING)

    consult = (await adapter.execute(request("start", original, number=AGENT))).call_id
    assert consult is not None
    await sink.wait_last(consult, ENDED)

    assert sink.history(consult) == [RINGING, ("FAILED",), ENDED]
    assert since(sink.history(original), INCOMING) == [INCOMING, HELD]


async def test_poll_mode_registers_no_webhook_and_tracks_the_link(
    sim: WebexSimulator, make_adapter: MakeAdapter, observer: RecordingObserver
) -> None:
    adapter = await make_adapter(events="poll", poll_interval_s=POLL)
    assert adapter.connected and adapter.detail == "polling Webex every 0.02 s"
    assert sim.webhooks == {}
    sim.expire_token()
    # Polls keep arriving, and each wakes the simulator's waiters.
    await sim.wait_for(lambda: not adapter.connected)
    assert adapter.detail == TOKEN_REFUSED


async def test_throttled_poll_stretches_the_interval(sim: WebexSimulator, make_adapter: MakeAdapter) -> None:
    await make_adapter(events="poll", poll_interval_s=POLL)
    sim.throttle(1, retry_after=0.4)
    await sim.wait_for(lambda: any(r.status == 429 for r in sim.requests))
    throttled = len(sim.requests) - 1
    await sim.wait_for(lambda: len(sim.requests) > throttled + 1)

    gap = sim.requests[throttled + 1].at - sim.requests[throttled].at
    assert 0.4 <= gap < 1.0
    assert [r.status for r in sim.requests[throttled : throttled + 2]] == [429, 200]  # not retried at once


async def test_lost_poll_is_reconciled_by_a_snapshot(
    sim: WebexSimulator, make_adapter: MakeAdapter, sink: Sink, observer: RecordingObserver
) -> None:
    adapter = await make_adapter(events="poll", poll_interval_s=POLL, request_timeout_s=0.1)
    call_id = sim.incoming_call(CUSTOMER)
    await sink.wait_last(call_id, INCOMING)
    sim.stall(1, 0.5)
    await sim.wait_for(lambda: not adapter.connected)
    assert adapter.detail.startswith("Webex API unreachable")

    await sink.wait_for(lambda: isinstance(sink.events[-1], CallsSnapshot))
    assert adapter.connected

    assert observer.reconnects == 1
    snapshot = sink.events[-1]
    assert isinstance(snapshot, CallsSnapshot)
    assert [(c.call_id, statuses(c.members)) for c in snapshot.calls] == [(call_id, INCOMING)]
    assert [connected for connected, _ in observer.links] == [True, False, True]
