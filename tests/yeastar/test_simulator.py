"""The Yeastar P-Series simulator, driven over loopback HTTP and WebSocket as a client would.

Frames are read up to a ``heartbeat`` barrier: the simulator queues every
frame of a world change before it answers the request that caused it, and the
heartbeat reply is queued after them on the same socket, so "the frames before
``heartbeat response``" is exactly what the PBX sent — no sleeps, no guessing.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig, serve_forever
from tests.support import make_certs

TOPICS = [30011, 30012, 30015]
Frame = tuple[Any, ...]
MakeSim = Callable[..., Awaitable[PbxSimulator]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    """Started simulators with extensions 2000, 2005 (answer fast) and 2008 (answers only when told)."""
    sims: list[PbxSimulator] = []

    async def make(**config: Any) -> PbxSimulator:
        sim = PbxSimulator(SimConfig(**config))
        sim.add_extension("2000", Phone(answer_after=0.02))
        sim.add_extension("2005", Phone(answer_after=0.02))
        sim.add_extension("2008", Phone(answer_after=None))
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


class Client:
    """A bare OpenAPI client: just enough to drive the simulator."""

    def __init__(self, sim: PbxSimulator, timeout: float = 5.0) -> None:
        self.sim = sim
        self.token = ""
        self.http = httpx.AsyncClient(
            base_url=f"{sim.base_url}/openapi/v1.0", headers={"User-Agent": "OpenAPI"}, timeout=timeout
        )

    async def login(self) -> dict[str, Any]:
        answer = await self.post("get_token", {"username": "xferd-sim", "password": "sim-secret"}, token=None)
        self.token = answer.get("access_token", "")
        return answer

    async def post(self, endpoint: str, body: dict[str, Any], token: str | None = "") -> dict[str, Any]:
        params = {} if token is None else {"access_token": token or self.token}
        response = await self.http.post(endpoint, json=body, params=params)
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    async def get(self, endpoint: str, **params: str) -> dict[str, Any]:
        response = await self.http.get(endpoint, params={"access_token": self.token, **params})
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    async def transfer(self, channel_id: str, **body: str) -> dict[str, Any]:
        return await self.post("call/transfer", {"type": "attended", "channel_id": channel_id, **body})

    async def subscribe(self, topics: list[int] = TOPICS) -> ClientConnection:
        url = f"{self.sim.base_url.replace('http', 'ws', 1)}/openapi/v1.0/subscribe?access_token={self.token}"
        ws = await connect(url, ssl=None)
        await ws.send(json.dumps({"topic_list": topics}))
        assert json.loads(await recv(ws)) == {"errcode": 0, "errmsg": "SUCCESS"}
        return ws


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[PbxSimulator], Awaitable[Client]]]:
    clients: list[Client] = []

    async def make(sim: PbxSimulator) -> Client:
        client = Client(sim)
        clients.append(client)
        await client.login()
        return client

    yield make
    for client in clients:
        await client.http.aclose()


async def recv(ws: ClientConnection) -> str:
    message = await asyncio.wait_for(ws.recv(), 2.0)
    assert isinstance(message, str)
    return message


async def frames(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame the PBX sent before our heartbeat's answer, ``msg`` decoded."""
    await ws.send("heartbeat")
    result = []
    while (text := await recv(ws)) != "heartbeat response":
        frame = json.loads(text)
        assert isinstance(frame["msg"], str)  # JSON-encoded string, as the real PBX sends
        frame["msg"] = json.loads(frame["msg"])
        result.append(frame)
    return result


def member_number(member: dict[str, Any]) -> str:
    ((kind, fields),) = member.items()
    return str(fields["number"] if kind == "extension" else fields["from" if kind == "inbound" else "to"])


def brief(frame_list: list[dict[str, Any]], calls: dict[str, str]) -> list[Frame]:
    """Frames as (type, call label, number, status); ``calls`` names the call ids."""
    out: list[Frame] = []
    for frame in frame_list:
        msg = frame["msg"]
        label = calls.get(msg["call_id"], msg["call_id"])
        if frame["type"] == 30011:
            for member in msg["members"]:
                ((_, fields),) = member.items()
                out.append((30011, label, member_number(member), fields["member_status"]))
        elif frame["type"] == 30015:
            out.append((30015, label, msg["reason"]))
        else:
            out.append((frame["type"], label))
    return out


async def talking(sim: PbxSimulator, client: Client) -> tuple[str, ClientConnection]:
    """2000 called 2005 (answered); a subscribed socket.  2005 will be the transferor."""
    call_id = sim.place_call("2000", "2005")
    return call_id, await client.subscribe()


# ---------------------------------------------------------------------- tokens and requests


async def test_token_lifecycle_refresh_and_revoke(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    first = await client.post("get_token", {"username": "xferd-sim", "password": "sim-secret"}, token=None)
    assert first["errcode"] == 0 and first["errmsg"] == "SUCCESS"
    assert first["access_token_expire_time"] == 1800 and first["refresh_token_expire_time"] == 86400
    refreshed = await client.post("refresh_token", {"refresh_token": first["refresh_token"]}, token=None)
    assert refreshed["errcode"] == 0
    assert {refreshed["access_token"], refreshed["refresh_token"]}.isdisjoint(
        {first["access_token"], first["refresh_token"]}
    )
    again = await client.post("refresh_token", {"refresh_token": first["refresh_token"]}, token=None)
    assert again["errcode"] == 10004  # the old refresh token died with the refresh
    client.token = refreshed["access_token"]
    assert (await client.get("call/query"))["errcode"] == 0
    assert (await client.get("del_token"))["errcode"] == 0
    assert await client.get("call/query") == {"errcode": 10004, "errmsg": "TOKEN EXPIRED"}


async def test_access_token_expires(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(access_token_ttl=0.3)
    client = await client_for(sim)
    assert (await client.get("call/query"))["errcode"] == 0
    await asyncio.sleep(0.35)  # past the lifetime on the same loop clock the simulator reads
    assert (await client.get("call/query"))["errcode"] == 10004


async def test_bad_credentials_block_the_ip_after_five(make_sim: MakeSim) -> None:
    sim = await make_sim()
    client = Client(sim)
    wrong = {"username": "xferd-sim", "password": "nope"}
    for _ in range(5):
        answer = await client.post("get_token", wrong, token=None)
        assert answer == {
            "errcode": -1,
            "errmsg": "FAILURE",
            "invalid_param_list": [{"field": "username or password", "value": "error"}],
        }
    assert (await client.login())["errcode"] == 70004  # even the right password now
    assert all("nope" not in json.dumps(request.body) for request in sim.requests)
    await client.http.aclose()


async def test_at_most_eight_live_access_tokens(make_sim: MakeSim) -> None:
    sim = await make_sim()
    client = Client(sim)
    answers = [await client.login() for _ in range(9)]
    assert [a["errcode"] for a in answers] == [0] * 8 + [60002]
    await client.http.aclose()


async def test_request_rules(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    bare = httpx.AsyncClient(base_url=client.http.base_url)
    del bare.headers["user-agent"]
    answer = (await bare.get("call/query", params={"access_token": client.token})).json()
    assert answer["errcode"] == 40002
    await bare.aclose()
    by_header = await client.http.get("call/query", headers={"Authorization": f"Bearer {client.token}"})
    assert by_header.json()["errcode"] == 10004  # the token counts only in the query string
    assert (await client.get("call/nothing"))["errcode"] == 10001
    assert (await client.get("call/transfer"))["errcode"] == 10001  # wrong method
    bad_json = await client.http.post("call/hangup", content=b"{", params={"access_token": client.token})
    assert bad_json.json()["errcode"] == 40001
    assert bad_json.headers["connection"] == "close"
    missing = await client.post("call/transfer", {"type": "attended"})
    assert missing["invalid_param_list"] == [{"field": "channel_id", "validation_type": "required"}]
    assert (await client.post("call/hangup", {"channel_id": "PJSIP/2000-deadbeef"}))["errcode"] == 60001
    recorded = json.dumps([(r.endpoint, r.body, r.answer) for r in sim.requests])
    assert client.token not in recorded and "sim-secret" not in recorded
    assert sim.requests[0].endpoint == "get_token" and sim.requests[0].answer is not None
    assert sim.requests[0].answer["access_token"] == "<redacted>"


# ---------------------------------------------------------------------- websocket


async def test_subscribe_heartbeat_and_topic_replacement(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    ws = await client.subscribe([30012])
    assert sim.subscribers == 1
    await ws.send("not json at all")  # tolerated, no answer
    call_id = sim.place_call("2000", "2005")
    sim.hangup(sim.channel_of("2000"))
    got = await frames(ws)
    assert [(f["type"], f["msg"]["call_id"]) for f in got] == [(30012, call_id)]
    assert got[0]["msg"]["status"] == "ANSWERED" and got[0]["msg"]["type"] == "Internal"
    await ws.send(json.dumps({"topic_list": []}))
    assert json.loads(await recv(ws)) == {"errcode": 0, "errmsg": "SUCCESS"}
    sim.place_call("2000", "2005")
    assert await frames(ws) == []
    assert sim.subscribers == 0  # an empty list is no subscription
    await ws.close()


async def test_idle_socket_is_closed(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(idle_close_s=0.2)
    client = await client_for(sim)
    ws = await client.subscribe()
    with pytest.raises(ConnectionClosed):
        await recv(ws)
    await sim.wait_for(lambda: sim.subscribers == 0)


async def test_token_expiry_closes_the_socket_with_10004(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(access_token_ttl=0.3)
    client = await client_for(sim)
    ws = await client.subscribe()
    assert json.loads(await recv(ws)) == {"errcode": 10004, "errmsg": "TOKEN EXPIRED"}
    with pytest.raises(ConnectionClosed):
        await recv(ws)


async def test_subscribe_with_a_bad_token_is_refused(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    client.token = "forged"
    ws = await connect(f"{sim.base_url.replace('http', 'ws')}/openapi/v1.0/subscribe?access_token=forged")
    assert json.loads(await recv(ws))["errcode"] == 10004
    with pytest.raises(ConnectionClosed):
        await recv(ws)
    assert sim.requests[-1].endpoint == "subscribe"


# ---------------------------------------------------------------------- attended transfer


@pytest.mark.parametrize(
    ("variant", "expected", "returned"),
    [
        (
            "new",
            [
                (30011, "C", "2000", "HOLD"),
                (30011, "N", "2005", "ALERT"),
                (30011, "N", "2008", "RING"),
                (30011, "N", "2008", "ANSWER"),
                (30011, "N", "2005", "ANSWERED"),
                (30011, "N", "2005", "BYE"),
                (30011, "C", "2000", "ANSWER"),
                (30011, "C", "2008", "ANSWER"),
                (30012, "N"),
            ],
            "N",
        ),
        (
            "original",
            [
                (30011, "C", "2000", "HOLD"),
                (30011, "C", "2008", "RING"),
                (30011, "C", "2008", "ANSWER"),
                (30011, "C", "2005", "BYE"),
                (30011, "C", "2000", "ANSWER"),
            ],
            "C",
        ),
        (
            "unreturned",
            [
                (30011, "C", "2000", "HOLD"),
                (30011, "N", "2008", "RING"),
                (30011, "N", "2008", "ANSWER"),
                (30011, "C", "2005", "BYE"),
                (30011, "C", "2000", "ANSWER"),
                (30011, "C", "2008", "ANSWER"),
                (30012, "N"),
            ],
            "C",
        ),
    ],
)
async def test_attended_complete_frames(
    make_sim: MakeSim, client_for: Any, variant: str, expected: list[Frame], returned: str
) -> None:
    sim = await make_sim(consult_call_id=variant)
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    start = await client.transfer(transferor, number="2008", dial_permission="2005")
    assert start["errcode"] == 0
    sim.answer(sim.channel_of("2008"))
    complete = await client.transfer(transferor, attended_operate="complete")
    assert complete == {"errcode": 0, "errmsg": "SUCCESS", "call_id": call_id}
    got = await frames(ws)
    names = {call_id: "C"}
    names.update({f["msg"]["call_id"]: "N" for f in got if f["msg"]["call_id"] != call_id})
    assert brief(got, names) == expected
    assert names.get(start["call_id"]) == returned
    (call,) = sim.calls()
    assert call["call_id"] == call_id
    assert sorted(member_number(m) for m in call["members"]) == ["2000", "2008"]
    again = await client.transfer(transferor, attended_operate="complete")
    assert again["errcode"] == 60001
    assert sim.operate_count("complete") == 1
    await ws.close()


async def test_hold_not_reported(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(hold_reported=False)
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    start = await client.transfer(sim.channel_of("2005"), number="2008", dial_permission="2005")
    assert brief(await frames(ws), {call_id: "C", start["call_id"]: "N"}) == [
        (30011, "N", "2005", "ALERT"),
        (30011, "N", "2008", "RING"),
    ]
    members = (await client.get("call/query", call_id=call_id))["data"][0]["members"]
    assert [m["extension"]["member_status"] for m in members] == ["ANSWERED"]  # HOLD hidden here too
    await ws.close()


async def test_full_member_lists(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(full_member_lists=True, consult_call_id="original")
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    await client.transfer(sim.channel_of("2005"), number="2008", dial_permission="2005")
    hold, ring = (await frames(ws))[:2]
    assert [(member_number(m), next(iter(m.values()))["member_status"]) for m in ring["msg"]["members"]] == [
        ("2000", "HOLD"),
        ("2005", "ANSWER"),
        ("2008", "RING"),
    ]
    assert len(hold["msg"]["members"]) == 2 and hold["msg"]["call_id"] == call_id
    await ws.close()


async def test_abort_returns_the_transferee(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    start = await client.transfer(transferor, number="2008", dial_permission="2005")
    await frames(ws)
    assert (await client.transfer(transferor, attended_operate="abort"))["errcode"] == 0
    assert brief(await frames(ws), {call_id: "C", start["call_id"]: "N"}) == [
        (30011, "N", "2008", "BYE"),
        (30011, "C", "2005", "ANSWER"),
        (30012, "N"),
        (30011, "C", "2000", "ANSWER"),
    ]
    assert (await client.transfer(transferor, attended_operate="abort"))["errcode"] == 60001
    assert sim.operate_count("abort") == 1
    await ws.close()


async def test_swap_toggles_who_is_held(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(consult_call_id="original")
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    await client.transfer(transferor, number="2008", dial_permission="2005")
    sim.answer(sim.channel_of("2008"))
    await frames(ws)
    await client.transfer(transferor, attended_operate="swap")
    assert brief(await frames(ws), {call_id: "C"}) == [
        (30011, "C", "2000", "ANSWER"),
        (30011, "C", "2008", "HOLD"),
    ]
    await client.transfer(transferor, attended_operate="swap")
    assert brief(await frames(ws), {call_id: "C"}) == [
        (30011, "C", "2000", "HOLD"),
        (30011, "C", "2008", "ANSWER"),
    ]
    assert sim.operate_count("swap") == 2
    await ws.close()


async def test_swap_while_ringing_holds_the_target_when_it_answers(
    make_sim: MakeSim, client_for: Any
) -> None:
    sim = await make_sim(consult_call_id="original")
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    await client.transfer(transferor, number="2008", dial_permission="2005")
    await client.transfer(transferor, attended_operate="swap")
    await frames(ws)
    sim.answer(sim.channel_of("2008"))
    assert brief(await frames(ws), {call_id: "C"}) == [
        (30011, "C", "2008", "ANSWER"),
        (30011, "C", "2008", "HOLD"),
    ]
    await ws.close()


async def test_threeway_puts_everyone_in_the_original_call(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    start = await client.transfer(transferor, number="2008", dial_permission="2005")
    sim.answer(sim.channel_of("2008"))
    await frames(ws)
    await client.transfer(transferor, attended_operate="threeway")
    assert brief(await frames(ws), {call_id: "C", start["call_id"]: "N"}) == [
        (30011, "C", "2000", "ANSWER"),
        (30011, "C", "2005", "ANSWER"),
        (30011, "C", "2008", "ANSWER"),
        (30012, "N"),
    ]
    sim.hangup(transferor)  # the transferor leaves; the other two go on talking
    assert brief(await frames(ws), {call_id: "C"}) == [(30011, "C", "2005", "BYE")]
    assert (await client.transfer(transferor, attended_operate="abort"))["errcode"] == 60001
    await ws.close()


@pytest.mark.parametrize(
    ("phone", "reason", "with_member"),
    [
        (Phone(busy=True), "486 Busy Here", True),
        (Phone(dnd=True), "DND", False),
        (Phone(answer_after=None, reject_after=0.05), "603 Declined", True),
    ],
)
async def test_target_failure_leaves_the_consultation_until_abort(
    make_sim: MakeSim, client_for: Any, phone: Phone, reason: str, with_member: bool
) -> None:
    sim = await make_sim(consult_call_id="unreturned")
    sim.set_phone("2008", phone)
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    await client.transfer(transferor, number="2008", dial_permission="2005")
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(2):
        while not any(f["type"] == 30012 for f in got):
            got += await frames(ws)
    consult_id = got[1]["msg"]["call_id"]
    assert brief(got, {call_id: "C", consult_id: "N"}) == [
        (30011, "C", "2000", "HOLD"),
        (30011, "N", "2008", "RING"),
        (30015, "N", reason),
        (30011, "N", "2008", "BYE"),
        (30012, "N"),
    ]
    failed = got[2]["msg"]
    assert (failed["members"] is not None) == with_member
    assert got[-1]["msg"]["status"] == ("BUSY" if reason != "603 Declined" else "NO ANSWER")
    assert (await client.transfer(transferor, attended_operate="complete"))["errcode"] == 10009
    assert (await client.transfer(transferor, attended_operate="abort"))["errcode"] == 0
    assert brief(await frames(ws), {call_id: "C"}) == [(30011, "C", "2000", "ANSWER")]
    await ws.close()


async def test_auto_rebridge_on_failure(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(auto_rebridge_on_failure=True)
    sim.set_phone("2008", Phone(busy=True))
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    start = await client.transfer(transferor, number="2008", dial_permission="2005")
    assert brief(await frames(ws), {call_id: "C", start["call_id"]: "N"}) == [
        (30011, "C", "2000", "HOLD"),
        (30011, "N", "2005", "ALERT"),
        (30011, "N", "2008", "RING"),
        (30015, "N", "486 Busy Here"),
        (30011, "N", "2008", "BYE"),
        (30011, "C", "2005", "ANSWER"),
        (30012, "N"),
        (30011, "C", "2000", "ANSWER"),
    ]
    assert (await client.transfer(transferor, attended_operate="abort"))["errcode"] == 60001
    await ws.close()


async def test_transferor_hangs_up_while_target_rings_blond(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    start = await client.transfer(transferor, number="2008", dial_permission="2005")
    await frames(ws)
    sim.hangup(transferor)
    sim.answer(sim.channel_of("2008"))
    assert brief(await frames(ws), {call_id: "C", start["call_id"]: "N"}) == [
        (30011, "N", "2005", "BYE"),
        (30011, "C", "2000", "ALERT"),
        (30011, "C", "2008", "RING"),
        (30012, "N"),
        (30011, "C", "2008", "ANSWER"),
        (30011, "C", "2000", "ANSWERED"),
    ]
    assert (await client.transfer(transferor, attended_operate="complete"))["errcode"] == 60001
    await ws.close()


async def test_transferor_hangs_up_after_answer_completes(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(consult_call_id="original")
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    await client.transfer(transferor, number="2008", dial_permission="2005")
    sim.answer(sim.channel_of("2008"))
    await frames(ws)
    assert (await client.post("call/hangup", {"channel_id": transferor}))["call_id"] == call_id
    assert brief(await frames(ws), {call_id: "C"}) == [
        (30011, "C", "2005", "BYE"),
        (30011, "C", "2000", "ANSWER"),
    ]
    await ws.close()


async def test_transferee_hangs_up_during_consultation(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    transferor = sim.channel_of("2005")
    start = await client.transfer(transferor, number="2008", dial_permission="2005")
    await frames(ws)
    sim.hangup(sim.channel_of("2000"))
    assert brief(await frames(ws), {call_id: "C", start["call_id"]: "N"}) == [
        (30011, "C", "2000", "BYE"),
        (30012, "C"),
    ]
    assert (await client.transfer(transferor, attended_operate="complete"))["errcode"] == 60001
    assert [c["call_id"] for c in sim.calls()] == [start["call_id"]]  # consultation goes on as a call
    await ws.close()


async def test_operate_and_start_refusals(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    sim.place_call("2000", "2005")
    transferor = sim.channel_of("2005")
    assert (await client.transfer(transferor, attended_operate="complete"))["errcode"] == 60001
    assert (await client.transfer(transferor, attended_operate="jump"))["errcode"] == 40002
    no_permission = await client.transfer(transferor, number="2008")
    assert no_permission["invalid_param_list"] == [
        {"field": "dial_permission", "validation_type": "required"}
    ]
    assert (await client.transfer(transferor, number="2008", dial_permission="9999"))["errcode"] == 40002
    assert (await client.transfer("PJSIP/2005-ffffffff", number="2008", dial_permission="2005"))[
        "errcode"
    ] == 60001
    assert (await client.transfer(transferor, number="2008", dial_permission="2005"))["errcode"] == 0
    assert (await client.transfer(transferor, number="2008", dial_permission="2005"))["errcode"] == 10009
    assert sim.operate_count("complete") == 0


async def test_external_target_rings_on_an_outbound_trunk_leg(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(external=Phone(answer_after=0.02))
    client = await client_for(sim)
    _, ws = await talking(sim, client)
    await client.transfer(sim.channel_of("2005"), number="5503301", dial_permission="2005")
    await sim.wait_for(
        lambda: any(
            "outbound" in m and m["outbound"]["member_status"] == "ANSWER"
            for c in sim.calls()
            for m in c["members"]
        )
    )
    got = await frames(ws)
    outbound = [f["msg"]["members"][0]["outbound"] for f in got if "outbound" in f["msg"]["members"][0]]
    assert [o["member_status"] for o in outbound] == ["RING", "ANSWER"]
    assert outbound[0]["to"] == "5503301" and outbound[0]["from"] == "2005"
    assert outbound[0]["channel_id"].startswith("PJSIP/trunk-siptrunk-endpoint-")
    assert sim.channel_of("5503301") == outbound[0]["channel_id"]
    await ws.close()


# ---------------------------------------------------------------------- other calls


async def test_blind_transfer(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    moved = sim.channel_of("2000")
    answer = await client.post(
        "call/transfer", {"type": "blind", "channel_id": moved, "number": "2008", "dial_permission": "2000"}
    )
    assert answer == {"errcode": 0, "errmsg": "SUCCESS", "call_id": call_id}
    sim.answer(sim.channel_of("2008"))
    assert brief(await frames(ws), {call_id: "C"}) == [
        (30011, "C", "2005", "BYE"),
        (30011, "C", "2000", "ALERT"),
        (30011, "C", "2008", "RING"),
        (30011, "C", "2008", "ANSWER"),
        (30011, "C", "2000", "ANSWERED"),
    ]
    await ws.close()


async def test_plain_call_busy_and_hangup_after_answer(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    ws = await client.subscribe()
    sim.set_phone("2008", Phone(busy=True))
    busy = sim.place_call("2000", "2008", answered=False)
    assert brief(await frames(ws), {busy: "B"}) == [
        (30011, "B", "2000", "ALERT"),
        (30011, "B", "2008", "RING"),
        (30015, "B", "486 Busy Here"),
        (30011, "B", "2008", "BYE"),
        (30011, "B", "2000", "BYE"),
        (30012, "B"),
    ]
    sim.set_phone("2008", Phone(answer_after=0.01, hangup_after_answer=0.01))
    short = sim.place_call("2000", "2008", answered=False)
    await sim.wait_for(lambda: not sim.calls())
    assert [f[3] for f in brief(await frames(ws), {short: "S"}) if f[0] == 30011] == [
        "ALERT",
        "RING",
        "ANSWER",
        "ANSWERED",
        "BYE",
        "BYE",
    ]
    await ws.close()


async def test_call_query_and_inbound_members(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    inbound = sim.place_call("94424722", "2005", inbound_trunk="stc")
    internal = sim.place_call("2000", "2008", answered=False)
    assert (await client.get("call/query", call_id=inbound))["data"] == [
        {
            "call_id": inbound,
            "members": [
                {
                    "inbound": {
                        "from": "94424722",
                        "to": "2005",
                        "trunk_name": "stc",
                        "channel_id": sim.channel_of("94424722"),
                        "member_status": "ANSWERED",
                        "call_path": "",
                    }
                },
                {
                    "extension": {
                        "number": "2005",
                        "channel_id": sim.channel_of("2005"),
                        "member_status": "ANSWER",
                        "call_path": "",
                    }
                },
            ],
        }
    ]
    assert sim.channel_of("94424722").startswith("PJSIP/trunk-stc-endpoint-")
    assert [c["call_id"] for c in (await client.get("call/query", type="internal"))["data"]] == [internal]
    assert [c["call_id"] for c in (await client.get("call/query", extension="2005"))["data"]] == [inbound]
    assert (await client.get("call/query", extension="2999"))["data"] == []
    assert (await client.get("call/query", call_id="1.1"))["errcode"] == 60001
    assert (await client.get("call/query", type="sideways"))["errcode"] == 40002
    assert (await client.get("call/query"))["data"] == sim.calls()


async def test_dial_rings_the_caller_first(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    ws = await client.subscribe()
    answer = await client.post("call/dial", {"caller": "2000", "callee": "2005"})
    await sim.wait_for(
        lambda: (
            [m["extension"]["member_status"] for c in sim.calls() for m in c["members"]]
            == [
                "ANSWERED",
                "ANSWER",
            ]
        )
    )
    assert brief(await frames(ws), {answer["call_id"]: "D"}) == [
        (30011, "D", "2000", "RING"),
        (30011, "D", "2000", "ALERT"),
        (30011, "D", "2005", "RING"),
        (30011, "D", "2005", "ANSWER"),
        (30011, "D", "2000", "ANSWERED"),
    ]
    await ws.close()


async def test_hold_and_unhold(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    call_id, ws = await talking(sim, client)
    channel = sim.channel_of("2000")
    assert (await client.post("call/hold", {"channel_id": channel}))["errcode"] == 0
    assert (await client.post("call/hold", {"channel_id": channel}))["errcode"] == 10009
    assert (await client.post("call/unhold", {"channel_id": channel}))["errcode"] == 0
    assert brief(await frames(ws), {call_id: "C"}) == [
        (30011, "C", "2000", "HOLD"),
        (30011, "C", "2000", "ANSWERED"),
    ]
    await ws.close()


# ---------------------------------------------------------------------- faults


async def test_drop_sockets_and_restart(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    _, ws = await talking(sim, client)
    sim.drop_sockets()
    with pytest.raises(ConnectionClosed):
        await recv(ws)
    await sim.wait_for(lambda: sim.subscribers == 0)
    ws = await client.subscribe()
    sim.restart()
    with pytest.raises(ConnectionClosed):
        await recv(ws)  # no BYE frames: the calls just vanished
    assert sim.calls() == [] and (await client.get("call/query"))["data"] == []
    with pytest.raises(KeyError):
        sim.channel_of("2000")


async def test_expire_tokens(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    refresh = (await client.login())["refresh_token"]
    ws = await client.subscribe()
    sim.expire_tokens()
    assert json.loads(await recv(ws))["errcode"] == 10004
    assert (await client.get("call/query"))["errcode"] == 10004
    assert (await client.post("refresh_token", {"refresh_token": refresh}, token=None))["errcode"] == 10004
    assert (await client.login())["errcode"] == 0


async def test_refuse_next_requests(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    sim.place_call("2000", "2005")
    transferor = sim.channel_of("2005")
    sim.refuse("call/transfer", 10009, count=2)
    for _ in range(2):
        assert (await client.transfer(transferor, number="2008", dial_permission="2005"))["errcode"] == 10009
    assert len(sim.calls()) == 1  # nothing happened
    assert (await client.transfer(transferor, number="2008", dial_permission="2005"))["errcode"] == 0
    assert len(sim.calls()) == 2
    sim.refuse("subscribe", 70087)
    ws = await connect(
        f"{sim.base_url.replace('http', 'ws')}/openapi/v1.0/subscribe?access_token={client.token}"
    )
    assert json.loads(await recv(ws))["errcode"] == 70087


@pytest.mark.parametrize("act", [True, False])
async def test_time_out_did_or_did_not_act(make_sim: MakeSim, client_for: Any, act: bool) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    sim.place_call("2000", "2005")
    transferor = sim.channel_of("2005")
    await client.transfer(transferor, number="2008", dial_permission="2005")
    sim.answer(sim.channel_of("2008"))
    sim.time_out("call/transfer", act=act, seconds=30)
    impatient = Client(sim, timeout=0.3)
    impatient.token = client.token
    with pytest.raises(httpx.ReadTimeout):
        await impatient.transfer(transferor, attended_operate="complete")
    await impatient.http.aclose()
    assert sim.operate_count("complete") == (1 if act else 0)
    members = sorted(member_number(m) for c in sim.calls() for m in c["members"])
    assert members == (["2000", "2008"] if act else ["2000", "2005", "2008"])
    assert sim.requests[-1].endpoint == "call/transfer"
    assert (sim.requests[-1].answer is not None) == act  # the did-not-act request is still held
    sim.time_out("call/transfer", act=False, seconds=0.05)
    late = await client.transfer(transferor, attended_operate="complete")
    assert late["errcode"] == -2


async def test_frame_delay_and_duplicates(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    ws = await client.subscribe()
    sim.duplicate_frames = 1.0
    call_id = sim.place_call("2000", "2008", answered=False)
    assert [f[3] for f in brief(await frames(ws), {call_id: "C"})] == ["ALERT", "ALERT", "RING", "RING"]
    sim.duplicate_frames = 0.0
    sim.frame_delay_s = 0.2
    loop = asyncio.get_running_loop()
    sent = loop.time()
    sim.hangup(sim.channel_of("2000"))
    assert await frames(ws) == []  # not there yet: the heartbeat overtakes them
    texts = [json.loads(await recv(ws)) for _ in range(3)]
    assert loop.time() - sent >= 0.2
    assert [t["type"] for t in texts] == [30011, 30011, 30012]
    await ws.close()


async def test_reorder_window_shuffles_within_the_window(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim(seed=3)
    client = await client_for(sim)
    ws = await client.subscribe()
    sim.reorder_window = 4
    call_id = sim.place_call("2000", "2005")  # ALERT, RING, ANSWER, ANSWERED: one full window
    got = brief(await frames(ws), {call_id: "C"})
    expected = [(30011, "C", "2000", "ALERT"), (30011, "C", "2005", "RING")]
    expected += [(30011, "C", "2005", "ANSWER"), (30011, "C", "2000", "ANSWERED")]
    assert sorted(got) == sorted(expected) and got != expected
    sim.hangup(sim.channel_of("2000"))  # 3 frames: flushed by the window timer
    rest: list[Frame] = []
    async with asyncio.timeout(2):
        while len(rest) < 3:
            rest += brief(await frames(ws), {call_id: "C"})
    assert sorted(rest) == sorted([(30011, "C", "2000", "BYE"), (30011, "C", "2005", "BYE"), (30012, "C")])
    await ws.close()


async def test_accept_then_close(make_sim: MakeSim, client_for: Any) -> None:
    sim = await make_sim()
    client = await client_for(sim)
    sim.accept_then_close = True
    ws = await connect(
        f"{sim.base_url.replace('http', 'ws')}/openapi/v1.0/subscribe?access_token={client.token}"
    )
    with pytest.raises(ConnectionClosed):
        await recv(ws)
    assert sim.subscribers == 0


# ---------------------------------------------------------------------- serving


async def test_tls_with_a_ca_file(tmp_path: Path) -> None:
    pki = make_certs(tmp_path)
    cert = pki["ca"]
    sim = PbxSimulator()
    await sim.start(certfile=pki["server"], keyfile=pki["key"])
    try:
        assert sim.base_url == f"https://127.0.0.1:{sim.port}"
        context = ssl.create_default_context(cafile=cert)
        async with httpx.AsyncClient(verify=context, headers={"User-Agent": "OpenAPI"}) as http:
            answer = await http.post(
                f"{sim.base_url}/openapi/v1.0/get_token",
                json={"username": "xferd-sim", "password": "sim-secret"},
            )
            token = answer.json()["access_token"]
        url = f"wss://127.0.0.1:{sim.port}/openapi/v1.0/subscribe?access_token={token}"
        async with connect(url, ssl=context) as ws:
            await ws.send("heartbeat")
            assert await recv(ws) == "heartbeat response"
        async with httpx.AsyncClient(headers={"User-Agent": "OpenAPI"}) as http:  # system CAs only
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{sim.base_url}/openapi/v1.0/call/query")
    finally:
        await sim.stop()


async def test_serve_forever_prints_where_and_how(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(serve_forever(0))
    out = ""
    async with asyncio.timeout(5):
        while "client_secret" not in out:
            await asyncio.sleep(0.01)
            out += capsys.readouterr().out
    base_url = out.split("simulator at ", 1)[1].split()[0]
    async with httpx.AsyncClient(headers={"User-Agent": "OpenAPI"}) as http:
        answer = await http.post(
            f"{base_url}/openapi/v1.0/get_token", json={"username": "xferd-sim", "password": "sim-secret"}
        )
    assert answer.json()["errcode"] == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
