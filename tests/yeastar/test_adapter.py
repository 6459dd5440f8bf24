"""The Yeastar adapter end to end against the PBX simulator on loopback."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.base import FatalPbxError
from adapters.yeastar.adapter import YeastarAdapter
from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig
from engine.model import Action, CallsSnapshot, CallUpdated, Event, PbxRequest
from tests.yeastar.client_support import RecordingObserver, wait_until

_ids = itertools.count(1)


def request(action: Action, channel_id: str, **fields: Any) -> PbxRequest:
    return PbxRequest(f"r{next(_ids)}", "t1", action, channel_id, **fields)


@pytest.fixture
async def sim() -> AsyncIterator[PbxSimulator]:
    sim = PbxSimulator(SimConfig(client_id="xferd-sim", client_secret="sim-secret"))
    await sim.start()
    sim.add_extension("2000")
    sim.add_extension("2005")
    sim.add_extension("2008", Phone(answer_after=0.05))
    try:
        yield sim
    finally:
        await sim.stop()


@dataclass
class Running:
    adapter: YeastarAdapter
    events: list[Event]
    observer: RecordingObserver

    def updates(self, number: str, status: str | None = None) -> list[tuple[str, str]]:
        """(call_id, status) of every CallUpdated member with ``number``."""
        return [
            (event.call_id, member.status)
            for event in self.events
            if isinstance(event, CallUpdated)
            for member in event.members
            if member.number == number and (status is None or member.status == status)
        ]


Start = Callable[..., Any]


@pytest.fixture
async def start(sim: PbxSimulator) -> AsyncIterator[Start]:
    """Start an adapter against ``sim`` and wait until it is subscribed."""
    adapters: list[YeastarAdapter] = []

    async def make(**options: Any) -> Running:
        observer = RecordingObserver()
        adapter = YeastarAdapter(sim.base_url, "xferd-sim", "sim-secret", observer=observer, **options)
        adapters.append(adapter)
        events: list[Event] = []
        await adapter.start(events.append)
        await wait_until(lambda: adapter.connected)
        return Running(adapter, events, observer)

    yield make
    for adapter in adapters:
        await adapter.close()


async def test_start_subscribes_and_reconciles_first(sim: PbxSimulator, start: Start) -> None:
    call_id = sim.place_call("2000", "2005")
    run: Running = await start()
    assert run.adapter.platform == "yeastar"
    assert run.adapter.capabilities[:4] == ("blind", "attended", "swap", "threeway")
    first = run.events[0]
    assert isinstance(first, CallsSnapshot)
    assert [call.call_id for call in first.calls] == [call_id]
    assert {m.number for m in first.calls[0].members} == {"2000", "2005"}
    assert sim.subscribers == 1 and run.adapter.detail == "subscribed to the PBX event stream"


async def test_blind_transfer(sim: PbxSimulator, start: Start) -> None:
    sim.place_call("2000", "2005")
    run: Running = await start()
    moved = sim.channel_of("2000")
    finished = await run.adapter.execute(request("blind", moved, number="2008", dial_permission="2000"))
    assert finished.outcome == "ok" and finished.call_id and finished.request_id.startswith("r")
    assert sim.requests[-1].body == {
        "type": "blind",
        "channel_id": moved,
        "number": "2008",
        "dial_permission": "2000",
    }
    await wait_until(lambda: bool(run.updates("2008", "ANSWER")))


@pytest.mark.parametrize("op", ["complete", "abort", "swap", "threeway"])
async def test_attended_start_then_operate(sim: PbxSimulator, start: Start, op: Any) -> None:
    sim.place_call("2000", "2005")
    run: Running = await start()
    transferor = sim.channel_of("2005")
    started = await run.adapter.execute(request("start", transferor, number="2008", dial_permission="2005"))
    assert started.outcome == "ok" and started.call_id
    await wait_until(lambda: bool(run.updates("2008", "ANSWER")))
    finished = await run.adapter.execute(request(op, transferor))
    assert finished.outcome == "ok", finished
    assert sim.requests[-1].body == {"type": "attended", "channel_id": transferor, "attended_operate": op}
    assert sim.operate_count(op) == 1


async def test_attended_start_goes_out_and_the_target_leg_comes_back_as_an_event(
    sim: PbxSimulator, start: Start
) -> None:
    sim.set_phone("2008", Phone(answer_after=None))  # keeps ringing
    sim.place_call("2000", "2005")
    run: Running = await start()
    transferor = sim.channel_of("2005")
    started = await run.adapter.execute(request("start", transferor, number="2008", dial_permission="2005"))
    assert started.outcome == "ok"
    assert sim.requests[-1].endpoint == "call/transfer"
    assert sim.requests[-1].body == {
        "type": "attended",
        "channel_id": transferor,
        "number": "2008",
        "dial_permission": "2005",
    }
    await wait_until(lambda: (started.call_id, "RING") in run.updates("2008"))
    assert "30011" in run.observer.frames
    report = run.observer.requests[-1]
    assert report[0] == "call/transfer" and report[3] == "ok"


async def test_refusals_carry_errcode_and_errmsg(sim: PbxSimulator, start: Start) -> None:
    sim.place_call("2000", "2005")
    run: Running = await start()
    transferor = sim.channel_of("2005")
    sim.refuse("call/transfer", 40002)
    refused = await run.adapter.execute(request("start", transferor, number="2008", dial_permission="2005"))
    assert (refused.outcome, refused.errcode, refused.errmsg, refused.gone) == (
        "refused",
        40002,
        "PARAMETER ERROR",
        False,
    )
    # No attended transfer is going on for this channel: the PBX has nothing to abort.
    gone = await run.adapter.execute(request("abort", transferor))
    assert (gone.outcome, gone.errcode, gone.gone) == ("refused", 60001, True)
    nobody = await run.adapter.execute(request("start", transferor, number=None))
    assert nobody.outcome == "refused" and "needs a number" in nobody.errmsg
    assert sim.operate_count("abort") == 0


async def test_hangup(sim: PbxSimulator, start: Start) -> None:
    call_id = sim.place_call("2000", "2005")
    run: Running = await start()
    leg = sim.channel_of("2005")
    finished = await run.adapter.execute(request("hangup", leg))
    assert (finished.outcome, finished.call_id) == ("ok", call_id)
    assert (sim.requests[-1].endpoint, sim.requests[-1].body) == ("call/hangup", {"channel_id": leg})
    await wait_until(lambda: sim.calls() == [])


async def test_a_timeout_is_an_unknown_outcome_and_is_not_resent(sim: PbxSimulator, start: Start) -> None:
    sim.place_call("2000", "2005")
    run: Running = await start(request_timeout_s=0.3)
    transferor = sim.channel_of("2005")
    sim.time_out("call/transfer", act=True)
    finished = await run.adapter.execute(request("start", transferor, number="2008", dial_permission="2005"))
    assert finished.outcome == "unknown"
    assert [r.endpoint for r in sim.requests].count("call/transfer") == 1
    # It did act: the truth is in the PBX's view of the calls.
    snapshot = await run.adapter.query_calls()
    assert snapshot is not None
    assert any(m.number == "2008" for call in snapshot.calls for m in call.members)


async def test_expired_tokens_are_replaced_for_requests_and_events(sim: PbxSimulator, start: Start) -> None:
    sim.place_call("2000", "2005")
    run: Running = await start()
    sim.expire_tokens()
    await wait_until(lambda: run.observer.reconnects == 1 and run.adapter.connected)
    finished = await run.adapter.execute(
        request("start", sim.channel_of("2005"), number="2008", dial_permission="2005")
    )
    assert finished.outcome == "ok"
    logins = [r.endpoint for r in sim.requests if r.endpoint in ("get_token", "refresh_token")]
    assert logins[0] == "get_token" and logins.count("get_token") == 2  # refresh refused → one new login


async def test_a_refused_subscription_is_retried(sim: PbxSimulator, start: Start) -> None:
    sim.refuse("subscribe", 10005)
    run: Running = await start()
    assert [r.endpoint for r in sim.requests].count("subscribe") == 2
    assert run.observer.links[0] == (False, "the PBX refused the subscription (errcode 10005)")
    assert run.observer.links[-1][0] is True and run.observer.reconnects == 0


async def test_query_merges_every_call_type(sim: PbxSimulator, start: Start) -> None:
    internal = sim.place_call("2000", "2005")
    inbound = sim.place_call("94424722", "2008", inbound_trunk="stc")
    run: Running = await start()
    snapshot = await run.adapter.query_calls()
    assert snapshot is not None
    assert {call.call_id for call in snapshot.calls} == {internal, inbound}
    kinds = {m.kind for call in snapshot.calls for m in call.members}
    assert kinds == {"extension", "inbound"}
    assert [r.body for r in sim.requests if r.endpoint == "call/query"][-3:] == [
        {"type": "inbound"},
        {"type": "outbound"},
        {"type": "internal"},
    ]


async def test_a_pbx_restart_is_reconciled_by_the_next_snapshot(sim: PbxSimulator, start: Start) -> None:
    sim.place_call("2000", "2005")
    run: Running = await start()
    sim.restart()  # every call vanishes without an event
    await wait_until(lambda: run.observer.reconnects == 1 and run.adapter.connected)
    last = [event for event in run.events if isinstance(event, CallsSnapshot)][-1]
    assert last.calls == ()


async def test_close_revokes_the_token_and_closes_the_socket(sim: PbxSimulator, start: Start) -> None:
    run: Running = await start()
    await run.adapter.close()
    assert sim.requests[-1].endpoint == "del_token"
    await wait_until(lambda: sim.subscribers == 0)
    assert not run.adapter.connected


async def test_bad_credentials_stop_start_after_one_login(sim: PbxSimulator) -> None:
    adapter = YeastarAdapter(sim.base_url, "xferd-sim", "wrong-secret")
    try:
        with pytest.raises(FatalPbxError, match="Client ID and Client Secret") as caught:
            await adapter.start(lambda event: None)
    finally:
        await adapter.close()
    assert [r.endpoint for r in sim.requests] == ["get_token"]
    assert "wrong-secret" not in str(caught.value)
