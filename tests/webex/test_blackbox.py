"""Black box: ``xferd run`` as a subprocess against the Webex simulator, driven only over HTTP.

The same contract §4 scenarios as ``tests/service/test_blackbox.py`` runs on
Yeastar (three-way aside: Webex has no three-way call control), plus what is
Webex's own: signed webhooks, start-up registration, polling, throttling and
a refused token.

One simulator and one webhook-mode service serve most tests (each test ends
every call it made, so the next one starts from a quiet user); start-up
registration, polling, a refused token and a vanished call each get their
own simulator and service, because they change how the service is wired.

How Webex differs, and what that means for the scenarios (see
:mod:`adapters.webex.events`): Webex reports only the user's side of each
call and never says why a call ended.  So a target that rejects or hangs up
before answering looks exactly like a busy one (``target_busy``), and the
user (the transferor) hanging up is indistinguishable from the party on that
call hanging up — ``on_transferor_hangup`` cannot apply on Webex; the test
for it pins down what happens instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from adapters.webex import WebexSimulator
from adapters.webex.simulator import SimRequest
from tests.service.conftest import API_TOKEN, XFERD
from tests.webex.conftest import WebexXferd, free_loopback_port, webex_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

_numbers = itertools.count(1)
REMOTE = "/remote"


# -- fixtures ---------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[WebexSimulator]:
    simulator = WebexSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def xf(sim: WebexSimulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebexXferd]:
    """The shared service: webhook mode, deliveries from the simulator, the
    user's number configured (so the resource shows it)."""
    tmp = tmp_path_factory.mktemp("webex-blackbox")
    config = webex_config(
        tmp / "xferd.toml",
        sim,
        tmp / "xferd.sqlite3",
        extra_pbx={"user_number": sim.user_number},
        no_answer_timeout_s=1,
    )
    service = await WebexXferd(config, sim).start()
    yield service
    assert await service.terminate() == 0
    await service.close()


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def quiet_user(sim: WebexSimulator, xf: WebexXferd) -> AsyncIterator[None]:
    """After each test: every call of the shared simulator ended, and the
    shared service has seen it (no tracked call, no active transfer)."""
    yield
    sim.duplicate_deliveries = sim.reorder_deliveries = False
    for call in sim.calls():
        sim.hangup_remote(call.id)
    await sim.drained()
    await xf.tracked(lambda members: not members)
    assert (await xf.get("/v1/transfers?state=active")).json()["items"] == []


@pytest_asyncio.fixture(loop_scope="module")
async def own_sim() -> AsyncIterator[WebexSimulator]:
    """A simulator of its own, for a test that wires a service differently."""
    simulator = WebexSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


# -- helpers ------------------------------------------------------------------------------


def caller() -> str:
    return f"+1555200{next(_numbers):04d}"


def party(sim: WebexSimulator, answer_after: float | None = 0.1, *, busy: bool = False) -> str:
    """A fresh remote number that behaves as told when dialled."""
    number = f"+1555300{next(_numbers):04d}"
    sim.set_party(number, answer_after=answer_after, busy=busy)
    return number


NEVER: float | None = None  # a party that rings until hung up


def ops(sim: WebexSimulator, since: int) -> list[tuple[str, dict[str, Any]]]:
    """The call-control requests Webex accepted since request number ``since``."""
    return [
        (r.path.rsplit("/", 1)[1], dict(r.body or {}))
        for r in sim.requests[since:]
        if r.method == "POST" and "/telephony/calls/" in r.path and r.status < 300
    ]


def transfers(sim: WebexSimulator, since: int) -> list[SimRequest]:
    """Every ``POST /telephony/calls/transfer`` since ``since``, whatever its answer."""
    return [r for r in sim.requests[since:] if r.path.endswith("/telephony/calls/transfer")]


def consult_of(resource: dict[str, Any]) -> str:
    """The consult call's callId (the target's leg is ``callId/remote``)."""
    channel = resource["target"]["channel_id"]
    assert channel and channel.endswith(REMOTE), resource
    return str(channel.removesuffix(REMOTE))


def history(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h["from"], h["to"]) for h in resource["history"]]


async def start(
    xf: WebexXferd,
    target: str,
    *,
    by_extension: bool = False,
    fails_at_once: bool = False,
    **policy: Any,
) -> tuple[str, str, int]:
    """A caller talks to the user, who starts an attended transfer to ``target``.

    Returns (transfer id, the original call's callId, the simulator's request
    count before the transfer — for :func:`ops`).  A target that fails at once
    (busy) may already have ended the attempt when the 201 comes back.
    """
    number = caller()
    original = await xf.call_in(number)
    mark = len(xf.sim.requests)
    body: dict[str, Any] = {"number": target}
    body |= {"extension": xf.sim.user_number} if by_extension else {"channel_id": original}
    if policy:
        body["policy"] = policy
    response = await xf.post("/v1/transfers", body)
    assert response.status_code == 201, response.text
    resource = response.json()
    assert resource["state"] == "consulting" or fails_at_once
    assert resource["transferor"] == {"channel_id": original, "number": xf.sim.user_number}
    assert resource["transferee"] == {"channel_id": original + REMOTE, "number": number}
    return resource["id"], original, mark


def state_of(sim: WebexSimulator, call_id: str) -> str:
    call = sim.call(call_id)
    assert call is not None
    return call.state


# -- platform surface -----------------------------------------------------------------------


async def test_healthz_shows_webex_without_threeway(xf: WebexXferd) -> None:
    async with httpx.AsyncClient(base_url=xf.base_url) as anonymous:
        health = (await anonymous.get("/healthz")).json()
    assert health["status"] == "ok" and health["pbx"] == "connected" and health["platform"] == "webex"
    assert health["capabilities"] == ["blind", "attended", "swap", "barge", "park", "retrieve", "hangup"]
    assert "webhook" in health["detail"]


# -- contract §4: what the service does by itself -------------------------------------------


async def test_target_answers_complete_by_extension(xf: WebexXferd) -> None:
    """Nominal: hold + dial, the target answers, one transfer(callId1, callId2)."""
    target = party(xf.sim, 0.2)
    transfer_id, original, mark = await start(xf, target, by_extension=True)
    calls = (await xf.get("/v1/calls")).json()["items"]
    members = {m["channel_id"]: m for call in calls for m in call["members"]}
    assert members[original]["kind"] == "extension" and members[original]["status"] == "HOLD"
    assert members[original + REMOTE]["kind"] == "inbound"
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert final["target"]["status"] == "answered" and final["target"]["number"] == target
    assert history(final) == [("idle", "consulting"), ("consulting", "completed")]
    consult = consult_of(final)
    assert ops(xf.sim, mark) == [
        ("hold", {"callId": original}),
        ("dial", {"destination": target}),
        ("transfer", {"callId1": original, "callId2": consult}),
    ]
    assert len(transfers(xf.sim, mark)) == 1
    assert state_of(xf.sim, original) == state_of(xf.sim, consult) == "disconnected"


async def test_target_answers_hold_waits_for_the_operator(xf: WebexXferd) -> None:
    transfer_id, original, mark = await start(xf, party(xf.sim, 0.1), on_answer="hold")
    answered = await xf.state(transfer_id, "consulting", "answered")
    assert transfers(xf.sim, mark) == []
    response = await xf.post(f"/v1/transfers/{transfer_id}/complete")
    assert response.status_code == 200, response.text
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "operator")
    assert [r.body for r in transfers(xf.sim, mark)] == [
        {"callId1": original, "callId2": consult_of(answered)}
    ]


async def test_no_answer_aborts_hangs_up_consult_and_resumes_original(xf: WebexXferd) -> None:
    transfer_id, original, mark = await start(xf, party(xf.sim, NEVER))  # config: timeout 1 s
    ringing = await xf.state(transfer_id, "consulting", "ringing")
    consult = consult_of(ringing)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "no_answer")
    assert ops(xf.sim, mark)[2:] == [("hangup", {"callId": consult}), ("resume", {"callId": original})]
    assert state_of(xf.sim, consult) == "disconnected"
    assert state_of(xf.sim, original) == "connected"  # the caller talks to the user again
    assert transfers(xf.sim, mark) == []


async def test_no_answer_then_fallback_answers(xf: WebexXferd) -> None:
    fallback = party(xf.sim, 0.1)
    transfer_id, _, mark = await start(
        xf, party(xf.sim, NEVER), fallback_numbers=[fallback], no_answer_timeout_s=0.5
    )
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"], final["target"]["number"]) == ("completed", "policy", fallback)
    names = [name for name, _ in ops(xf.sim, mark)]
    assert names == ["hold", "dial", "hangup", "resume", "hold", "dial", "transfer"]
    assert [body["destination"] for name, body in ops(xf.sim, mark) if name == "dial"][1] == fallback
    assert len(transfers(xf.sim, mark)) == 1


async def test_busy_target_falls_back(xf: WebexXferd) -> None:
    fallback = party(xf.sim, 0.1)
    transfer_id, _, mark = await start(
        xf, party(xf.sim, busy=True), fails_at_once=True, fallback_numbers=[fallback]
    )
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"], final["target"]["number"]) == ("completed", "policy", fallback)
    assert len(transfers(xf.sim, mark)) == 1


async def test_busy_target_without_fallback_is_target_busy(xf: WebexXferd) -> None:
    transfer_id, original, mark = await start(xf, party(xf.sim, busy=True), fails_at_once=True)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "target_busy")
    assert state_of(xf.sim, original) == "connected"
    assert transfers(xf.sim, mark) == []


async def test_target_hangs_up_before_answering(xf: WebexXferd) -> None:
    """Webex gives no cause for a call's end: a target that rejects or hangs
    up while ringing looks exactly like a busy one, so the reason is
    ``target_busy`` (Yeastar may say ``target_hangup``; the contract's row
    is the same: abort, then fallback or aborted)."""
    transfer_id, original, mark = await start(xf, party(xf.sim, NEVER), no_answer_timeout_s=30)
    consult = consult_of(await xf.state(transfer_id, "consulting", "ringing"))
    xf.sim.hangup_remote(consult)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "target_busy")
    assert ("resume", {"callId": original}) in ops(xf.sim, mark)
    assert state_of(xf.sim, original) == "connected"
    assert transfers(xf.sim, mark) == []


async def test_target_hangs_up_after_answering(xf: WebexXferd) -> None:
    """Webex never puts the user back with the held caller by itself, so the
    clean-up abort matters here: its hangup of the consultation finds the call
    gone (404, fine) and its resume gives the caller back to the user."""
    transfer_id, original, mark = await start(xf, party(xf.sim, 0.1), on_answer="hold")
    consult = consult_of(await xf.state(transfer_id, "consulting", "answered"))
    xf.sim.hangup_remote(consult)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "target_hangup")
    assert ops(xf.sim, mark)[2:] == [("resume", {"callId": original})]
    assert state_of(xf.sim, original) == "connected"
    assert transfers(xf.sim, mark) == []


async def test_transferee_hangs_up_while_consulting(xf: WebexXferd) -> None:
    transfer_id, original, mark = await start(xf, party(xf.sim, NEVER), no_answer_timeout_s=30)
    consult = consult_of(await xf.state(transfer_id, "consulting", "ringing"))
    xf.sim.hangup_remote(original)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "transferee_hangup")
    assert ("hangup", {"callId": consult}) in ops(xf.sim, mark)  # the consultation is cleaned up
    assert state_of(xf.sim, consult) == "disconnected"
    assert transfers(xf.sim, mark) == []


@pytest.mark.parametrize(
    ("user_ends", "reason"), [("consultation", "target_hangup"), ("original", "transferee_hangup")]
)
@pytest.mark.parametrize("policy", ["complete", "abort"])
async def test_transferor_hangup_cannot_be_told_apart_on_webex(
    xf: WebexXferd, user_ends: str, reason: str, policy: str
) -> None:
    """Why this differs from Yeastar: Webex shows only the user's side of each
    call and says nothing about who ended it.  The user (the transferor)
    hanging up the consultation is the same ``disconnected`` delivery as the
    target hanging up; the user ending the held original is the same as the
    caller hanging up.  So ``on_transferor_hangup`` never applies on Webex:
    whatever it says, the transfer ends as for the party's hang-up, and no
    transfer request is ever sent."""
    transfer_id, original, mark = await start(
        xf, party(xf.sim, 0.1), on_answer="hold", on_transferor_hangup=policy
    )
    consult = consult_of(await xf.state(transfer_id, "consulting", "answered"))
    xf.sim.hangup_remote(consult if user_ends == "consultation" else original)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", reason)
    assert transfers(xf.sim, mark) == []


# -- operator operations ---------------------------------------------------------------------


async def test_swap_back_and_forth_then_abort(xf: WebexXferd) -> None:
    transfer_id, original, mark = await start(xf, party(xf.sim, 0.1), on_answer="hold")
    consult = consult_of(await xf.state(transfer_id, "consulting", "answered"))
    base = f"/v1/transfers/{transfer_id}"
    swapped = await xf.post(f"{base}/swap")
    assert swapped.status_code == 200 and swapped.json()["state"] == "swapped"
    assert (state_of(xf.sim, original), state_of(xf.sim, consult)) == ("connected", "held")
    await xf.state(transfer_id, "swapped", "held")
    back = await xf.post(f"{base}/swap")
    assert back.status_code == 200 and back.json()["state"] == "consulting"
    assert (state_of(xf.sim, original), state_of(xf.sim, consult)) == ("held", "connected")
    aborted = await xf.post(f"{base}/abort")
    assert aborted.status_code == 200
    assert (aborted.json()["state"], aborted.json()["reason"]) == ("aborted", "operator")
    assert ops(xf.sim, mark)[2:] == [
        ("hold", {"callId": consult}),
        ("resume", {"callId": original}),
        ("hold", {"callId": original}),
        ("resume", {"callId": consult}),
        ("hangup", {"callId": consult}),
        ("resume", {"callId": original}),
    ]
    assert state_of(xf.sim, original) == "connected"
    sent = len(xf.sim.requests)
    for op in ("complete", "abort", "swap", "threeway"):
        response = await xf.post(f"{base}/{op}")
        assert response.status_code == 409 and response.json()["error"] == "not_allowed"
    assert len(xf.sim.requests) == sent  # nothing after a final state


async def test_threeway_is_refused_with_409(xf: WebexXferd) -> None:
    transfer_id, _, mark = await start(xf, party(xf.sim, 0.1), on_answer="hold")
    await xf.state(transfer_id, "consulting", "answered")
    sent = len(xf.sim.requests)
    response = await xf.post(f"/v1/transfers/{transfer_id}/threeway")
    assert response.status_code == 409 and response.json()["error"] == "not_allowed"
    assert "Webex Calling has no three-way call control" in response.json()["detail"]
    assert len(xf.sim.requests) == sent
    assert (await xf.get(f"/v1/transfers/{transfer_id}")).json()["state"] == "consulting"
    # a policy asking for three-way is refused before anything is sent
    other = await xf.post(
        "/v1/transfers",
        {"channel_id": "anything", "number": "+15553009999", "policy": {"on_answer": "threeway"}},
    )
    assert other.status_code == 422 and "three-way" in other.json()["detail"]
    assert (await xf.post(f"/v1/transfers/{transfer_id}/abort")).status_code == 200
    assert transfers(xf.sim, mark) == []


async def test_blind_transfer_moves_the_caller(xf: WebexXferd) -> None:
    number, target = caller(), party(xf.sim, 0.1)
    original = await xf.call_in(number)
    mark = len(xf.sim.requests)
    response = await xf.post(
        "/v1/transfers", {"type": "blind", "extension": xf.sim.user_number, "number": target}
    )
    assert response.status_code == 201, response.text
    resource = response.json()
    assert (resource["state"], resource["reason"]) == ("completed", "blind")
    assert resource["transferee"] == {"channel_id": original + REMOTE, "number": number}
    assert resource["transferor"]["channel_id"] == original
    assert [r.body for r in transfers(xf.sim, mark)] == [{"callId1": original, "destination": target}]
    await xf.sim.wait_for(lambda: state_of(xf.sim, original) == "disconnected")


# -- the party named by extension --------------------------------------------------------------


async def test_extension_resolves_the_single_connected_call(xf: WebexXferd) -> None:
    target = "+15553008888"
    body = {"extension": xf.sim.user_number, "number": target}
    none = await xf.post("/v1/transfers", body)
    assert none.status_code == 409 and none.json()["error"] == "no_active_call"
    first = await xf.call_in(caller())
    stranger = await xf.post("/v1/transfers", {"extension": "2005", "number": target})
    assert stranger.status_code == 409 and stranger.json()["error"] == "no_active_call"
    assert xf.sim.user_number in stranger.json()["detail"]
    second = await xf.call_in(caller())
    both = await xf.post("/v1/transfers", body)
    assert both.status_code == 409 and both.json()["error"] == "ambiguous"
    assert first in both.json()["detail"] and second in both.json()["detail"]
    xf.sim.hangup_remote(second)
    await xf.tracked(lambda members: all(m["channel_id"] != second for m in members))
    xf.sim.set_party(target, answer_after=0.1)
    started = await xf.post("/v1/transfers", {**body, "policy": {"on_answer": "hold"}})
    assert started.status_code == 201 and started.json()["transferor"]["channel_id"] == first
    transfer_id = started.json()["id"]
    consult = consult_of(await xf.state(transfer_id, "consulting", "answered"))
    # the user's only connected call is now that transfer's consultation
    for again in (body, {"channel_id": consult, "number": "+15553007777"}):
        busy = await xf.post("/v1/transfers", again)
        assert busy.status_code == 409 and busy.json()["error"] == "transfer_in_progress", busy.text
        assert transfer_id in busy.json()["detail"]
    assert (await xf.post(f"/v1/transfers/{transfer_id}/abort")).status_code == 200


# -- what the network does to deliveries and requests -------------------------------------------


async def test_an_undocumented_state_is_counted_and_decides_nothing(xf: WebexXferd) -> None:
    """The consultation reports a combination the reference does not name while
    the target rings: the target stays ringing (never taken for gone), the
    metric counts it, one log line names the call; the answer completes."""
    metric = 'xferd_unmapped_states_total{personality="originator",state="alerting"}'
    before = await xf.metric(metric)
    transfer_id, _, mark = await start(xf, party(xf.sim, NEVER), no_answer_timeout_s=30)
    consult = consult_of(await xf.state(transfer_id, "consulting", "ringing"))
    xf.sim.report(consult, "alerting", personality="originator")
    await xf.sim.drained()
    assert await xf.metric(metric) == before + 1
    assert (await xf.get(f"/v1/transfers/{transfer_id}")).json()["target"]["status"] == "ringing"
    logged = [
        r for r in xf.logs() if r.get("event") == "webex_unmapped_state" and r.get("call_id") == consult
    ]
    assert len(logged) == 1
    xf.sim.report(consult, "connected", personality="clickToDial")
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert len(transfers(xf.sim, mark)) == 1


async def test_duplicated_and_reordered_deliveries(xf: WebexXferd) -> None:
    """Every delivery twice, and each pair swapped: still one transfer request;
    the copies and the overtaken deliveries are counted, never applied."""
    duplicates = await xf.metric('xferd_bad_frames_total{reason="duplicate"}')
    stale = await xf.metric('xferd_bad_frames_total{reason="stale"}')
    xf.sim.duplicate_deliveries = xf.sim.reorder_deliveries = True
    transfer_id, _, mark = await start(xf, party(xf.sim, 0.2))
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert len(transfers(xf.sim, mark)) == 1
    await xf.sim.drained()
    assert await xf.metric('xferd_bad_frames_total{reason="duplicate"}') > duplicates
    assert await xf.metric('xferd_bad_frames_total{reason="stale"}') > stale


@pytest.mark.parametrize("status", [429, 423])
async def test_throttled_request_honours_retry_after(xf: WebexXferd, status: int) -> None:
    original = await xf.call_in(caller())
    mark = len(xf.sim.requests)
    xf.sim.throttle(1, 0.5, status)
    began = time.monotonic()
    response = await xf.post("/v1/transfers", {"channel_id": original, "number": party(xf.sim, NEVER)})
    assert response.status_code == 201, response.text
    assert time.monotonic() - began >= 0.5
    refused, retried = xf.sim.requests[mark], xf.sim.requests[mark + 1]
    assert (refused.path, refused.status) == ("/v1/telephony/calls/hold", status)
    assert (retried.path, retried.status) == ("/v1/telephony/calls/hold", 204)
    assert retried.at - refused.at >= 0.5
    assert (await xf.post(f"/v1/transfers/{response.json()['id']}/abort")).status_code == 200


async def test_bad_signature_is_401_and_counted(xf: WebexXferd) -> None:
    before = await xf.metric('xferd_bad_frames_total{reason="bad_signature"}')
    body = b'{"resource": "telephony_calls", "data": {}}'
    async with httpx.AsyncClient(base_url=xf.base_url) as webex:  # no bearer token: Webex has none
        wrong = await webex.post("/v1/webhooks/webex", content=body, headers={"X-Spark-Signature": "0" * 40})
        missing = await webex.post("/v1/webhooks/webex", content=body)
        with_api_token = await webex.post(
            "/v1/webhooks/webex", content=body, headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        good = hmac.new(xf.sim.webhook_secret.encode(), body, hashlib.sha1).hexdigest()
        signed = await webex.post("/v1/webhooks/webex", content=body, headers={"X-Spark-Signature": good})
    for response in (wrong, missing, with_api_token):
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert signed.status_code == 204
    assert await xf.metric('xferd_bad_frames_total{reason="bad_signature"}') == before + 3


async def test_logs_are_json_and_hold_no_secret(xf: WebexXferd) -> None:
    records = xf.logs()
    assert records and all("timestamp" in r and "level" in r for r in records)
    text = "\n".join(xf.lines)
    for secret in (API_TOKEN, xf.sim.access_token, xf.sim.webhook_secret):
        assert secret not in text


# -- services wired differently -------------------------------------------------------------------


async def test_webhook_registered_at_start_and_deleted_at_shutdown(
    own_sim: WebexSimulator, tmp_path: Path
) -> None:
    """``public_url`` set: xferd registers its own webhook (replacing one a
    crashed run left for the same URL), events arrive through it, and
    SIGTERM deletes it."""
    sim = own_sim
    port = free_loopback_port()
    public_url = f"http://127.0.0.1:{port}"
    target_url = public_url + "/v1/webhooks/webex"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {sim.access_token}"}) as admin:
        left_over = await admin.post(
            sim.base_url + "/webhooks",
            json={"name": "old", "targetUrl": target_url, "resource": "telephony_calls", "event": "all"},
        )
    assert left_over.status_code == 200
    config = webex_config(
        tmp_path / "x.toml",
        sim,
        tmp_path / "x.db",
        listen=f"127.0.0.1:{port}",
        extra_pbx={"public_url": public_url, "user_number": sim.user_number},
    )
    service = await WebexXferd(config, sim).start(deliver=False)
    try:
        hooks = list(sim.webhooks.values())
        assert len(hooks) == 1 and hooks[0]["id"] != left_over.json()["id"]
        assert hooks[0]["targetUrl"] == target_url and hooks[0]["resource"] == "telephony_calls"
        assert hooks[0]["secret"] == sim.webhook_secret
        transfer_id, _, mark = await start(service, party(sim, 0.1))
        final = await service.final(transfer_id)
        assert (final["state"], final["reason"]) == ("completed", "policy")
        assert len(transfers(sim, mark)) == 1
        assert await service.terminate() == 0
        assert sim.webhooks == {}
        deleted = [r for r in sim.requests if r.method == "DELETE" and r.status == 204]
        assert [r.path for r in deleted][-1] == f"/v1/webhooks/{hooks[0]['id']}"
        assert sim.webhook_secret not in "\n".join(service.lines)
    finally:
        await service.close()


async def test_polling_mode_transfers_and_respects_rate_limits(
    own_sim: WebexSimulator, tmp_path: Path
) -> None:
    """No public URL: ``GET /telephony/calls`` every ``poll_interval_s``.
    No ``user_number`` either: the user's legs carry no number, and any
    ``extension`` means the user's single connected call."""
    sim = own_sim
    config = webex_config(
        tmp_path / "x.toml", sim, tmp_path / "x.db", events="poll", extra_pbx={"poll_interval_s": 0.2}
    )
    service = await WebexXferd(config, sim).start(deliver=False)
    try:
        assert "polling Webex every 0.2 s" in (await service.get("/healthz")).json()["detail"]
        original = await service.call_in("+15552000001")
        mark = len(sim.requests)
        target = party(sim, 0.3)
        response = await service.post("/v1/transfers", {"extension": "2005", "number": target})
        assert response.status_code == 201, response.text
        assert response.json()["transferor"] == {"channel_id": original, "number": ""}
        final = await service.final(response.json()["id"])
        assert (final["state"], final["reason"]) == ("completed", "policy")
        assert len(transfers(sim, mark)) == 1
        assert sim.deliveries == []  # everything came from polls
        # the poll rate is the configured one...
        polls = [r.at for r in sim.requests if r.method == "GET" and r.path == "/v1/telephony/calls"]
        gaps = [b - a for a, b in itertools.pairwise(polls[-6:])]
        assert min(gaps) >= 0.15, gaps
        # ...and a 429 stretches it to the Retry-After
        throttled_at = len(sim.requests)
        sim.throttle(1, 1.0)
        await sim.wait_for(lambda: any(r.status == 429 for r in sim.requests[throttled_at:]))
        refused = next(r for r in sim.requests[throttled_at:] if r.status == 429)
        await sim.wait_for(lambda: sim.requests[-1].at > refused.at and sim.requests[-1].status == 200)
        assert sim.requests[-1].at - refused.at >= 1.0
        assert await service.terminate() == 0
    finally:
        await service.close()


async def test_vanished_call_is_reconciled_not_crashed(own_sim: WebexSimulator, tmp_path: Path) -> None:
    """A 404 on a call id means the call is gone and we missed its end.  Here
    polls are 30 s apart, so the service cannot know the caller hung up; the
    operator's complete gets Webex's 404 (502 to the operator), the service
    re-reads the calls at once, sees the caller gone and aborts the
    consultation — without waiting for the next poll."""
    sim = own_sim
    number = "+15552000002"
    original = sim.incoming_call(number)  # before start: the start-up snapshot has it
    config = webex_config(
        tmp_path / "x.toml", sim, tmp_path / "x.db", events="poll", extra_pbx={"poll_interval_s": 30}
    )
    service = await WebexXferd(config, sim).start(deliver=False)
    try:
        await service.tracked(lambda members: any(m["channel_id"] == original for m in members))
        mark = len(sim.requests)
        response = await service.post(
            "/v1/transfers",
            {"channel_id": original, "number": party(sim, 0.05), "policy": {"on_answer": "hold"}},
        )
        assert response.status_code == 201, response.text
        transfer_id = response.json()["id"]
        consult = next(c.id for c in sim.calls() if c.personality == "clickToDial")
        await sim.wait_for(lambda: state_of(sim, consult) == "connected")
        sim.hangup_remote(original)  # unseen: no deliveries, next poll in 30 s
        complete = await service.post(f"/v1/transfers/{transfer_id}/complete")
        assert complete.status_code == 502 and "errcode 404" in complete.json()["detail"], complete.text
        final = await service.final(transfer_id, within_s=5)
        assert (final["state"], final["reason"]) == ("aborted", "transferee_hangup")
        assert state_of(sim, consult) == "disconnected"  # the consultation was cleaned up
        assert [r.status for r in transfers(sim, mark)] == [404]
        assert (await service.get("/healthz")).status_code == 200
        assert await service.terminate() == 0
    finally:
        await service.close()


async def test_refused_token_shows_in_healthz(own_sim: WebexSimulator, tmp_path: Path) -> None:
    sim = own_sim
    service = await WebexXferd(webex_config(tmp_path / "x.toml", sim, tmp_path / "x.db"), sim).start()
    try:
        original = await service.call_in("+15552000003")
        sim.expire_token()
        response = await service.post("/v1/transfers", {"channel_id": original, "number": party(sim)})
        assert response.status_code == 502 and "errcode 401" in response.json()["detail"], response.text
        health = await service.get("/healthz")
        assert health.status_code == 503
        assert (health.json()["pbx"], health.json()["detail"]) == ("disconnected", "token expired or invalid")
        again = await service.post("/v1/transfers", {"channel_id": original, "number": party(sim)})
        assert again.status_code == 503 and again.json()["error"] == "pbx_unavailable"
        assert "token expired or invalid" in again.json()["detail"]
        assert state_of(sim, original) == "connected"  # the hold was refused: nothing changed
        assert await service.terminate() == 0
        assert sim.access_token not in "\n".join(service.lines)
    finally:
        await service.close()


async def test_bad_token_at_start_exits_1_with_one_line(own_sim: WebexSimulator, tmp_path: Path) -> None:
    service = WebexXferd(webex_config(tmp_path / "x.toml", own_sim, tmp_path / "x.db"), own_sim)
    service.access_token = "wrong-token-5577"
    done = await asyncio.create_subprocess_exec(
        *XFERD, "run", "--config", str(service.config), env=service.env(), stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(15):
        _, err = await done.communicate()
    await service.http.aclose()
    assert done.returncode == 1
    assert err.decode().splitlines()[-1] == (
        "xferd: PBX: Webex refused the access token (HTTP 401): set a valid pbx.access_token"
    )
    assert "wrong-token-5577" not in err.decode()


@pytest.mark.parametrize(
    ("pbx", "policy", "problem"),
    [
        (
            {},
            {"on_answer": "threeway"},
            "[policy].on_answer: 'complete' or 'hold' (Webex has no three-way calls)",
        ),
        (
            {"poll_interval_s": 0.01},
            {},
            "[pbx].poll_interval_s: at least 0.1 seconds (Webex rate-limits the API)",
        ),
    ],
)
async def test_config_mistakes_are_exit_2_with_one_line(
    own_sim: WebexSimulator, tmp_path: Path, pbx: dict[str, Any], policy: dict[str, Any], problem: str
) -> None:
    config = webex_config(tmp_path / "x.toml", own_sim, tmp_path / "x.db", extra_pbx=pbx, **policy)
    service = WebexXferd(config, own_sim)
    await service.http.aclose()
    done = await asyncio.create_subprocess_exec(
        *XFERD, "run", "--config", str(config), env=service.env(), stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(15):
        _, err = await done.communicate()
    assert done.returncode == 2
    assert err.decode().splitlines() == [f"xferd: config error in {config}: {problem}"]
