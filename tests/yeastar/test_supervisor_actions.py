"""Supervisor call actions through the Yeastar adapter against the simulator: call/listen,
call/park, call/park_status, retrieve by call/dial of the slot, call/hangup, and refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.base import CALL_ACTIONS, CallAction
from adapters.yeastar.adapter import YeastarAdapter
from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig
from engine.model import CallUpdated, Event
from tests.yeastar.client_support import wait_until

AUTO = Phone(answer_after=0.01)


async def running(
    config: SimConfig, request_timeout_s: float = 5.0
) -> tuple[PbxSimulator, YeastarAdapter, list[Event]]:
    sim = PbxSimulator(config)
    await sim.start()
    for number in ("2000", "2005", "2008"):
        sim.add_extension(number)
    sim.add_extension("2001", AUTO)  # the supervisor's phone answers a monitor at once
    adapter = YeastarAdapter(
        sim.base_url, config.client_id, config.client_secret, request_timeout_s=request_timeout_s
    )
    events: list[Event] = []
    await adapter.start(events.append)
    await wait_until(lambda: adapter.connected)
    return sim, adapter, events


@pytest.fixture(params=["monitored", "new"])
async def world(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[PbxSimulator, YeastarAdapter, list[Event]]]:
    sim, adapter, events = await running(SimConfig(monitor_call_id=request.param))
    try:
        yield sim, adapter, events
    finally:
        await adapter.close()
        await sim.stop()


def members(sim: PbxSimulator) -> list[dict[str, str]]:
    """Every live member the simulated PBX reports, whatever its kind."""
    return [next(iter(member.values())) for call in sim.calls() for member in call["members"]]


def statuses(events: list[Event], number: str) -> list[tuple[str, str]]:
    return [
        (event.call_id, member.status)
        for event in events
        if isinstance(event, CallUpdated)
        for member in event.members
        if member.number == number
    ]


async def test_capabilities_list_every_action(
    world: tuple[PbxSimulator, YeastarAdapter, list[Event]],
) -> None:
    _, adapter, _ = world
    assert adapter.capabilities == ("blind", "attended", "swap", "threeway", *CALL_ACTIONS)


async def test_listen_rings_the_monitor_in_the_call_the_answer_names(
    world: tuple[PbxSimulator, YeastarAdapter, list[Event]],
) -> None:
    sim, adapter, events = world
    call_id = sim.place_call("2000", "2005")
    agent = sim.channel_of("2005")
    result = await adapter.act(CallAction("monitor", channel_id=agent, extension="2001", mode="whisper"))
    assert result.outcome == "ok" and result.call_id
    assert sim.requests[-1].body == {"monitor": "2001", "channel_id": agent, "type": "whisper"}
    if sim.config.monitor_call_id == "monitored":
        assert result.call_id == call_id
    else:
        assert result.call_id != call_id
    await wait_until(lambda: (result.call_id, "ANSWER") in statuses(events, "2001"))
    # The spy is nobody's partner: the agent can still transfer, and the spy ends with the agent.
    spy = sim.channel_of("2001")
    sim.hangup(agent)
    await wait_until(lambda: (result.call_id, "BYE") in statuses(events, "2001"))
    assert spy not in {m["channel_id"] for m in members(sim)}


async def test_monitor_refusals_carry_the_pbx_errcode_and_the_field(
    world: tuple[PbxSimulator, YeastarAdapter, list[Event]],
) -> None:
    sim, adapter, _ = world
    sim.place_call("2000", "2005")
    agent = sim.channel_of("2005")
    not_an_extension = await adapter.act(
        CallAction("monitor", channel_id=agent, extension="2999", mode="listen")
    )
    assert (not_an_extension.outcome, not_an_extension.errcode, not_an_extension.invalid) == (
        "refused",
        40002,
        ("monitor",),
    )
    gone = await adapter.act(
        CallAction("monitor", channel_id="PJSIP/2005-0000ffff", extension="2001", mode="listen")
    )
    assert (gone.outcome, gone.errcode) == ("refused", 60001)
    sim.forbid_monitoring("2005")
    forbidden = await adapter.act(CallAction("monitor", channel_id=agent, extension="2001", mode="barge"))
    assert (forbidden.outcome, forbidden.errcode, forbidden.errmsg) == ("refused", 10009, "OPERATION FAILED")
    assert "2001" not in {m.get("number") for m in members(sim)}


async def test_park_then_retrieve_by_dialling_the_slot(
    world: tuple[PbxSimulator, YeastarAdapter, list[Event]],
) -> None:
    sim, adapter, events = world
    sim.place_call("5551234", "2005", inbound_trunk="stc")
    caller, agent = sim.channel_of("5551234"), sim.channel_of("2005")
    parked = await adapter.act(CallAction("park", channel_id=caller))
    assert (parked.outcome, parked.slot) == ("ok", "6000")
    await wait_until(lambda: any(s == "BYE" for _, s in statuses(events, "2005")))
    listed = await adapter.act(CallAction("parked"))
    assert listed.outcome == "ok"
    (row,) = listed.parked
    assert (row.slot, row.channel_id, row.parked_party, row.parker) == ("6000", caller, "5551234", "2005")
    busy = await adapter.act(CallAction("park", channel_id=caller, slot="6000"))
    assert (busy.outcome, busy.errcode) == ("refused", 10009)  # not talking to anyone any more
    retrieved = await adapter.act(CallAction("retrieve", extension="2008", slot="6000", auto_answer=True))
    assert retrieved.outcome == "ok"
    await wait_until(lambda: sim.parked() == [])
    assert sorted((m["channel_id"], m["member_status"]) for m in members(sim)) == sorted(
        [(sim.channel_of("2008"), "ANSWERED"), (caller, "ANSWER")]
    )
    empty = await adapter.act(CallAction("retrieve", extension="2008", slot="6000"))
    assert (empty.outcome, empty.errcode) == ("refused", 60001)
    assert agent not in str(sim.calls())


async def test_hangup_of_any_leg(world: tuple[PbxSimulator, YeastarAdapter, list[Event]]) -> None:
    sim, adapter, _ = world
    sim.place_call("2000", "2005")
    result = await adapter.act(CallAction("hangup", channel_id=sim.channel_of("2000")))
    assert result.outcome == "ok"
    assert sim.calls() == []
    again = await adapter.act(CallAction("hangup", channel_id="PJSIP/2000-0000ffff"))
    assert (again.outcome, again.errcode) == ("refused", 60001)


async def test_no_answer_in_time_is_an_unknown_outcome() -> None:
    sim, adapter, _ = await running(SimConfig(), request_timeout_s=0.2)
    try:
        sim.time_out("call/park", act=False, seconds=2)
        unknown = await adapter.act(CallAction("park", channel_id="PJSIP/2000-00000001"))
        assert unknown.outcome == "unknown" and unknown.errcode is None
    finally:
        await adapter.close()
        await sim.stop()
