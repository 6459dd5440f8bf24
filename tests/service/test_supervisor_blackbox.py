"""Black box: supervisor call actions through ``xferd run`` against the Yeastar simulator.

Listen, whisper, barge, park, the parked list, retrieve and hang-up, each with
its refusals (unknown channel 404, not an extension 422, the PBX refusing
502 with its errcode and nothing changed on our side, a transfer's leg 409),
the role they need and the audit entries they leave.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from adapters.service.roles import hash_token
from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.service.conftest import API_TOKEN, Xferd, until_http, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

SUPERVISOR_TOKEN = "supervisor-token-0123456789"
OPERATOR_TOKEN = "operator-token-0123456789"
AUTO = Phone(answer_after=0.02)  # a supervisor's phone that answers a monitor at once

_numbers = itertools.count(3100)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def xf(sim: PbxSimulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Xferd]:
    tmp = tmp_path_factory.mktemp("supervisor")
    config = write_config(tmp / "xferd.toml", sim, tmp / "xferd.sqlite3", no_answer_timeout_s=5)
    users = [("sue", "supervisor", SUPERVISOR_TOKEN), ("otto", "operator", OPERATOR_TOKEN)]
    with config.open("a") as out:
        for name, role, token in users:
            out.write(
                f'[[api.users]]\nname = "{name}"\nrole = "{role}"\ntoken_hash = "{hash_token(token)}"\n'
            )
    service = await Xferd(config, sim).start()
    service.http.headers["Authorization"] = f"Bearer {SUPERVISOR_TOKEN}"
    yield service
    assert await service.terminate() == 0
    await service.close()


def extension(sim: PbxSimulator, phone: Phone | None = None) -> str:
    number = str(next(_numbers))
    sim.add_extension(number, phone or Phone(answer_after=0.1))
    return number


def members(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for call in body["items"] for m in call["members"]]


async def calls(xf: Xferd) -> list[dict[str, Any]]:
    return members((await xf.get("/v1/calls")).json())


async def leg_of(xf: Xferd, number: str, status: str = "ANSWER") -> dict[str, Any]:
    """Wait until xferd tracks a leg of ``number`` in ``status``; that member."""

    def found(r: httpx.Response) -> bool:
        return any(m["number"] == number and m["status"] == status for m in members(r.json()))

    response = await until_http(found, xf.http, "/v1/calls", 5)
    return next(m for m in members(response.json()) if m["number"] == number and m["status"] == status)


async def gone(xf: Xferd, channel: str) -> None:
    await until_http(
        lambda r: channel not in {m["channel_id"] for m in members(r.json())}, xf.http, "/v1/calls", 5
    )


def pbx_requests(sim: PbxSimulator, endpoint: str) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if r.endpoint == endpoint]


# -- monitor ----------------------------------------------------------------------------


async def test_listen_then_barge(xf: Xferd) -> None:
    agent, boss = extension(xf.sim), extension(xf.sim, AUTO)
    channel = await xf.call_in(agent)
    response = await xf.post(f"/v1/calls/{channel}/monitor", {"mode": "listen", "monitor": boss})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["channel_id"], body["monitor"], body["mode"], body["pbx"]) == (
        channel,
        boss,
        "listen",
        "default",
    )
    assert pbx_requests(xf.sim, "call/listen")[-1] == {
        "monitor": boss,
        "channel_id": channel,
        "type": "listen",
    }
    spy = await leg_of(xf, boss)
    assert (spy["monitoring"], spy["mode"]) == (channel, "listen")
    # The supervisor puts the phone down, then barges in (by the agent's extension this time).
    xf.sim.hangup(spy["channel_id"])
    await gone(xf, spy["channel_id"])
    response = await xf.post("/v1/calls/monitor", {"mode": "barge", "monitor": boss, "extension": agent})
    assert response.status_code == 200, response.text
    barge = await leg_of(xf, boss)
    assert (barge["monitoring"], barge["mode"]) == (channel, "barge")
    # The agent's call is still one call to transfer: the monitor leg is nobody's party.
    target = extension(xf.sim)
    started = await xf.post("/v1/transfers", {"extension": agent, "number": target})
    assert started.status_code == 201, started.text
    assert started.json()["transferee"]["number"] == "5550100"
    done = await xf.final(started.json()["id"])
    assert (done["state"], done["reason"]) == ("completed", "policy")


async def test_whisper_by_extension_and_monitor_refusals(xf: Xferd) -> None:
    agent, boss, other = extension(xf.sim), extension(xf.sim, AUTO), extension(xf.sim)
    channel = await xf.call_in(agent)
    unknown = await xf.post("/v1/calls/PJSIP/9999-0000abcd/monitor", {"mode": "listen", "monitor": boss})
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    not_digits = await xf.post(f"/v1/calls/{channel}/monitor", {"mode": "listen", "monitor": "boss"})
    assert not_digits.status_code == 422 and "monitor" in not_digits.json()["detail"]
    not_on_pbx = await xf.post(f"/v1/calls/{channel}/monitor", {"mode": "listen", "monitor": "3999"})
    assert not_on_pbx.status_code == 422, not_on_pbx.text
    assert "monitor" in not_on_pbx.json()["detail"] and "40002" in not_on_pbx.json()["detail"]
    bad_mode = await xf.post(f"/v1/calls/{channel}/monitor", {"mode": "spy", "monitor": boss})
    assert bad_mode.status_code == 422 and "mode" in bad_mode.json()["detail"]
    no_call = await xf.post("/v1/calls/monitor", {"mode": "listen", "monitor": boss, "extension": other})
    assert no_call.status_code == 409 and no_call.json()["error"] == "no_active_call"
    both = await xf.post(
        "/v1/calls/monitor", {"mode": "listen", "monitor": boss, "extension": agent, "channel_id": channel}
    )
    assert both.status_code == 422
    # The PBX refuses (the agent's extension does not allow monitoring): 502, nothing on our side.
    xf.sim.forbid_monitoring(agent)
    refused = await xf.post("/v1/calls/monitor", {"mode": "whisper", "monitor": boss, "extension": agent})
    assert refused.status_code == 502, refused.text
    assert refused.json()["error"] == "pbx_error" and "errcode 10009" in refused.json()["detail"]
    assert boss not in {m["number"] for m in await calls(xf)}
    # An operator may not monitor.
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    forbidden = await xf.http.post(
        f"/v1/calls/{channel}/monitor", json={"mode": "listen", "monitor": boss}, headers=operator
    )
    assert forbidden.status_code == 403 and "supervisor" in forbidden.json()["detail"]


# -- park and retrieve ------------------------------------------------------------------


async def test_park_list_and_retrieve(xf: Xferd) -> None:
    agent, colleague = extension(xf.sim), extension(xf.sim, AUTO)
    agent_channel = await xf.call_in(agent)
    items = (await xf.get("/v1/calls")).json()["items"]
    (call,) = [c for c in items if agent_channel in {m["channel_id"] for m in c["members"]}]
    (caller,) = [m for m in call["members"] if m["channel_id"] != agent_channel]
    response = await xf.post("/v1/calls/park", {"extension": agent})  # parks the party 2xxx talks to
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["channel_id"] == caller["channel_id"] and body["slot"]
    slot = body["slot"]
    await gone(xf, agent_channel)  # the parker heard the slot and left
    await until_http(
        lambda r: (
            {"channel_id": caller["channel_id"], "status": "HOLD"}.items()
            <= next((m for m in members(r.json()) if m["channel_id"] == caller["channel_id"]), {}).items()
        ),
        xf.http,
        "/v1/calls",
        5,
    )
    parked = (await xf.get("/v1/parked")).json()["items"]
    (row,) = [p for p in parked if p["slot"] == slot]
    assert (row["channel_id"], row["parker"], row["pbx"]) == (caller["channel_id"], agent, "default")
    retrieved = await xf.post(f"/v1/parked/{slot}/retrieve", {"extension": colleague})
    assert retrieved.status_code == 200, retrieved.text
    assert pbx_requests(xf.sim, "call/dial")[-1] == {"caller": colleague, "callee": slot}
    retriever = await leg_of(xf, colleague, "ANSWERED")
    items = (await xf.get("/v1/calls")).json()["items"]
    (call,) = [c for c in items if retriever["channel_id"] in {m["channel_id"] for m in c["members"]}]
    assert {(m["channel_id"], m["status"]) for m in call["members"]} == {
        (retriever["channel_id"], "ANSWERED"),
        (caller["channel_id"], "ANSWER"),
    }
    assert slot not in {p["slot"] for p in (await xf.get("/v1/parked")).json()["items"]}
    empty = await xf.post(f"/v1/parked/{slot}/retrieve", {"extension": colleague})
    assert empty.status_code == 404 and empty.json()["error"] == "not_found"
    not_ext = await xf.post(f"/v1/parked/{slot}/retrieve", {"extension": "bob"})
    assert not_ext.status_code == 422


async def test_park_refusals(xf: Xferd) -> None:
    agent = extension(xf.sim)
    channel = await xf.call_in(agent)
    unknown = await xf.post("/v1/calls/PJSIP/9999-0000abce/park")
    assert unknown.status_code == 404
    bad_slot = await xf.post(f"/v1/calls/{channel}/park", {"slot": "lot-1"})
    assert bad_slot.status_code == 422
    parks = len(pbx_requests(xf.sim, "call/park"))
    refused = await xf.post(f"/v1/calls/{channel}/park", {"slot": "7000"})  # not a parking slot
    assert refused.status_code == 502 and "errcode 40002" in refused.json()["detail"]
    assert len(pbx_requests(xf.sim, "call/park")) == parks + 1
    await leg_of(xf, agent, "ANSWER")  # nothing changed


async def test_parking_a_transfer_leg_is_refused_and_sends_nothing(xf: Xferd) -> None:
    agent, target = extension(xf.sim), extension(xf.sim, Phone(answer_after=None))
    await xf.call_in(agent)
    started = await xf.post("/v1/transfers", {"extension": agent, "number": target})
    assert started.status_code == 201, started.text
    transfer = started.json()
    parks = len(pbx_requests(xf.sim, "call/park"))
    transferee = transfer["transferee"]["channel_id"]
    refused = await xf.post(f"/v1/calls/{transferee}/park")
    assert refused.status_code == 409 and refused.json()["error"] == "transfer_in_progress"
    assert transfer["id"] in refused.json()["detail"]
    assert len(pbx_requests(xf.sim, "call/park")) == parks
    aborted = await xf.post(f"/v1/transfers/{transfer['id']}/abort")
    assert aborted.status_code == 200


# -- hang up ----------------------------------------------------------------------------


async def test_hangup_of_a_plain_leg_and_refusals(xf: Xferd) -> None:
    agent = extension(xf.sim)
    channel = await xf.call_in(agent)
    unknown = await xf.post("/v1/calls/PJSIP/9999-0000abcf/hangup")
    assert unknown.status_code == 404
    xf.sim.refuse("call/hangup", 10009)
    refused = await xf.post(f"/v1/calls/{channel}/hangup")
    assert refused.status_code == 502 and "errcode 10009: OPERATION FAILED" in refused.json()["detail"]
    await leg_of(xf, agent, "ANSWER")  # still there
    response = await xf.post("/v1/calls/hangup", {"extension": agent})
    assert response.status_code == 200, response.text
    assert response.json() == {"channel_id": channel, "pbx": "default", "transfer": None}
    await gone(xf, channel)


async def test_hanging_up_the_transferor_goes_through_the_transfer(xf: Xferd) -> None:
    agent, target = extension(xf.sim), extension(xf.sim, Phone(answer_after=None))
    channel = await xf.call_in(agent)
    started = await xf.post("/v1/transfers", {"channel_id": channel, "number": target})
    assert started.status_code == 201, started.text
    transfer_id = started.json()["id"]
    await xf.state(transfer_id, "consulting", "ringing")
    response = await xf.post(f"/v1/calls/{channel}/hangup")
    assert response.status_code == 200, response.text
    assert response.json()["transfer"]["id"] == transfer_id
    done = await xf.final(transfer_id)
    # The PBX completes an attended transfer whose transferor hangs up (a "blond" transfer).
    assert (done["state"], done["reason"]) == ("completed", "transferor_hangup")
    entries = (await xf.get(f"/v1/audit?transfer_id={transfer_id}")).json()["items"]
    hangup = next(e for e in entries if e["action"] == "call.hangup")
    assert (hangup["actor"], hangup["channel_id"], hangup["status"]) == ("sue", channel, 200)


async def test_a_hangup_waits_for_the_transfers_request_in_flight(xf: Xferd) -> None:
    agent, target = extension(xf.sim), extension(xf.sim, Phone(answer_after=None))
    channel = await xf.call_in(agent)
    xf.sim.time_out("call/transfer", act=True, seconds=1.0)  # the start's answer comes late
    starting = asyncio.create_task(xf.post("/v1/transfers", {"channel_id": channel, "number": target}))
    await until_http(lambda r: bool(r.json()["items"]), xf.http, "/v1/transfers?state=active", 5)
    refused = await xf.post(f"/v1/calls/{channel}/hangup")
    assert refused.status_code == 409 and refused.json()["error"] == "not_allowed"
    assert "start" in refused.json()["detail"]
    started = await starting
    if started.status_code == 201:
        await xf.post(f"/v1/transfers/{started.json()['id']}/abort")
    await until_http(lambda r: not r.json()["items"], xf.http, "/v1/transfers?state=active", 10)


# -- health and audit -------------------------------------------------------------------


async def test_capabilities_schema_and_the_audit_trail(xf: Xferd) -> None:
    schema = (await xf.get("/openapi.json")).json()
    monitor = schema["paths"]["/v1/calls/{channel_id}/monitor"]["post"]
    assert {"200", "404", "409", "422", "502"} <= set(monitor["responses"])
    assert {"/v1/calls/monitor", "/v1/calls/park", "/v1/calls/hangup", "/v1/parked"} <= set(schema["paths"])
    assert "/v1/parked/{slot}/retrieve" in schema["paths"]
    health = (await xf.get("/healthz")).json()
    for action in ("listen", "whisper", "barge", "park", "parked", "retrieve", "hangup"):
        assert action in health["capabilities"]
    admin = {"Authorization": f"Bearer {API_TOKEN}"}
    entries = (await xf.http.get("/v1/audit?actor=sue&limit=1000", headers=admin)).json()["items"]
    actions = {e["action"] for e in entries}
    assert {"call.monitor.listen", "call.monitor.barge", "call.monitor.whisper", "call.park"} <= actions
    assert {"call.retrieve", "call.hangup"} <= actions
    refused = next(e for e in entries if e["action"] == "call.monitor.whisper" and e["status"] == 502)
    assert refused["outcome"] == "pbx_error" and refused["channel_id"]
