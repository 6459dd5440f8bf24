"""Black box: supervisor call actions through ``xferd run`` against the Webex simulator.

Webex's user-level call control acts only as the token's user: barge-in on a
colleague, park and retrieve the user's calls, hang them up.  Silent listening,
whisper and a list of parked calls do not exist there: 409 with a sentence, and
absent from ``/healthz`` ``capabilities``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from adapters.webex import WebexSimulator
from tests.webex.conftest import WebexXferd, webex_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

_numbers = itertools.count(1)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[WebexSimulator]:
    simulator = WebexSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def xf(sim: WebexSimulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebexXferd]:
    tmp = tmp_path_factory.mktemp("webex-supervisor")
    config = webex_config(
        tmp / "xferd.toml", sim, tmp / "xferd.sqlite3", extra_pbx={"user_number": sim.user_number}
    )
    service = await WebexXferd(config, sim).start()
    yield service
    assert await service.terminate() == 0
    await service.close()


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def quiet_user(sim: WebexSimulator, xf: WebexXferd) -> AsyncIterator[None]:
    """After each test every call of the user has ended, and the service has seen it."""
    yield
    for call in sim.calls():
        sim.hangup_remote(call.id)
    await sim.drained()
    await xf.tracked(lambda members: not members)


def number() -> str:
    return f"+1555400{next(_numbers):04d}"


def bodies(sim: WebexSimulator, operation: str) -> list[dict[str, Any]]:
    return [dict(r.body or {}) for r in sim.requests if r.path.endswith(f"/telephony/calls/{operation}")]


async def test_capabilities_and_what_webex_cannot_do(xf: WebexXferd) -> None:
    health = (await xf.get("/healthz")).json()
    assert health["capabilities"] == ["blind", "attended", "swap", "barge", "park", "retrieve", "hangup"]
    call_id = await xf.call_in(number())
    for mode in ("listen", "whisper"):
        refused = await xf.post(f"/v1/calls/{call_id}/monitor", {"mode": mode, "monitor": xf.sim.user_number})
        assert refused.status_code == 409 and refused.json()["error"] == "not_allowed"
        assert "barge is the only mode" in refused.json()["detail"]
    assert (await xf.get("/v1/parked")).json() == {"items": []}  # no PBX here can list them
    listing = await xf.get("/v1/parked?pbx=default")
    assert listing.status_code == 409 and "cannot list parked calls" in listing.json()["detail"]


async def test_barge_in_on_a_colleague(xf: WebexXferd) -> None:
    colleague = number()
    xf.sim.colleague_on_call(colleague)
    caller = number()
    call_id = await xf.call_in(caller)
    own = await xf.post(f"/v1/calls/{call_id}/monitor", {"mode": "barge", "monitor": xf.sim.user_number})
    assert own.status_code == 409 and "colleague" in own.json()["detail"]
    not_user = await xf.post(
        "/v1/calls/monitor", {"mode": "barge", "monitor": "+15559999999", "extension": colleague}
    )
    assert not_user.status_code == 422 and "monitor" in not_user.json()["detail"]
    nobody = await xf.post(
        "/v1/calls/monitor", {"mode": "barge", "monitor": xf.sim.user_number, "extension": number()}
    )
    assert nobody.status_code == 502 and "errcode 404" in nobody.json()["detail"]
    response = await xf.post(
        "/v1/calls/monitor", {"mode": "barge", "monitor": xf.sim.user_number, "extension": colleague}
    )
    assert response.status_code == 200, response.text
    barge = response.json()["call_id"]
    assert bodies(xf.sim, "bargeIn")[-1] == {"target": colleague}
    await xf.tracked(
        lambda members: any(
            m["channel_id"] == barge and m.get("mode") == "barge" and m["status"] == "ANSWERED"
            for m in members
        )
    )
    # The barge-in is not "the user's call": a transfer by extension still finds the caller's call.
    target = number()
    xf.sim.set_party(target, answer_after=0.05)
    started = await xf.post("/v1/transfers", {"extension": xf.sim.user_number, "number": target})
    assert started.status_code == 201, started.text
    assert started.json()["transferee"]["number"] == caller
    done = await xf.final(started.json()["id"])
    assert (done["state"], done["reason"]) == ("completed", "policy")


async def test_park_and_retrieve(xf: WebexXferd) -> None:
    caller = number()
    call_id = await xf.call_in(caller)
    response = await xf.post("/v1/calls/park", {"extension": xf.sim.user_number})
    assert response.status_code == 200, response.text
    assert response.json()["slot"] == xf.sim.user_number
    assert bodies(xf.sim, "park")[-1] == {"callId": call_id}
    await xf.tracked(lambda members: not members)  # the user's call ended: it is parked
    assert xf.sim.parked() == {xf.sim.user_number: caller}
    retrieved = await xf.post(f"/v1/parked/{xf.sim.user_number}/retrieve", {"extension": xf.sim.user_number})
    assert retrieved.status_code == 200, retrieved.text
    await xf.tracked(lambda members: any(m["number"] == caller and m["status"] == "ANSWER" for m in members))
    again = await xf.post(f"/v1/parked/{xf.sim.user_number}/retrieve", {"extension": xf.sim.user_number})
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    someone_else = await xf.post(f"/v1/parked/{xf.sim.user_number}/retrieve", {"extension": "+15559999999"})
    assert someone_else.status_code == 422


async def test_park_of_a_transfer_leg_is_refused_and_hangup_goes_through_it(xf: WebexXferd) -> None:
    call_id = await xf.call_in(number())
    target = number()
    xf.sim.set_party(target, answer_after=None)
    started = await xf.post("/v1/transfers", {"channel_id": call_id, "number": target})
    assert started.status_code == 201, started.text
    transfer_id = started.json()["id"]
    await xf.state(transfer_id, "consulting")
    parks = len(bodies(xf.sim, "park"))
    refused = await xf.post(f"/v1/calls/{call_id}/remote/park")
    assert refused.status_code == 409 and refused.json()["error"] == "transfer_in_progress"
    assert len(bodies(xf.sim, "park")) == parks
    consult = (await xf.transfer(transfer_id))["target"]["channel_id"]
    response = await xf.post(f"/v1/calls/{consult}/hangup")
    assert response.status_code == 200, response.text
    assert response.json()["transfer"]["id"] == transfer_id
    done = await xf.final(transfer_id)
    assert (done["state"], done["reason"]) == ("aborted", "target_hangup")


async def test_hangup_of_the_users_call(xf: WebexXferd) -> None:
    call_id = await xf.call_in(number())
    unknown = await xf.post("/v1/calls/Y2FsbC1ub3BlZA/hangup")
    assert unknown.status_code == 404
    response = await xf.post(f"/v1/calls/{call_id}/hangup")
    assert response.status_code == 200, response.text
    await xf.tracked(lambda members: not members)
