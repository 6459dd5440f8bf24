"""REST client: request shapes, errcode mapping, and how each failure is classified.

The classification is what keeps transfers safe: a refusal or an
unreachable PBX did not act; a timeout after sending may have acted and
must never be retried blindly.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.yeastar.frames import (
    NotFoundError,
    OutcomeUnknown,
    PbxUnreachable,
    TokenExpiredError,
    YeastarError,
)
from adapters.yeastar.rest import YeastarRest
from adapters.yeastar.simulator import PbxSimulator, SimConfig
from tests.yeastar.client_support import FakeClock, FakePbx, RecordingObserver, Seen

EXPIRED = {"errcode": 10004, "errmsg": "TOKEN EXPIRED"}
OK = {"errcode": 0, "errmsg": "SUCCESS", "call_id": "1650029138.338"}


def raiser(exc: Exception) -> Any:
    def reply(seen: Seen) -> None:
        raise exc

    return reply


async def test_call_control_bodies_and_token_placement() -> None:
    pbx = FakePbx()
    rest = pbx.rest(clock=FakeClock())
    await rest.transfer_blind("PJSIP/2000-000000ae", "2008", "2000")
    await rest.transfer_attended("PJSIP/2005-000000a6", "5503301", "2005")
    await rest.transfer_operate("PJSIP/2005-000000a6", "complete")
    await rest.hangup("PJSIP/2008-1")
    await rest.hold("PJSIP/2008-1")
    await rest.unhold("PJSIP/2008-1")
    await rest.query(type="inbound")
    calls = pbx.seen[1:]
    assert [(seen.method, seen.endpoint, seen.body) for seen in calls] == [
        (
            "POST",
            "call/transfer",
            {
                "type": "blind",
                "channel_id": "PJSIP/2000-000000ae",
                "number": "2008",
                "dial_permission": "2000",
            },
        ),
        (
            "POST",
            "call/transfer",
            {
                "type": "attended",
                "channel_id": "PJSIP/2005-000000a6",
                "number": "5503301",
                "dial_permission": "2005",
            },
        ),
        (
            "POST",
            "call/transfer",
            {"type": "attended", "channel_id": "PJSIP/2005-000000a6", "attended_operate": "complete"},
        ),
        ("POST", "call/hangup", {"channel_id": "PJSIP/2008-1"}),
        ("POST", "call/hold", {"channel_id": "PJSIP/2008-1"}),
        ("POST", "call/unhold", {"channel_id": "PJSIP/2008-1"}),
        ("GET", "call/query", None),
    ]
    assert calls[-1].params == {"type": "inbound", "access_token": "access-1"}
    for seen in pbx.seen:
        assert seen.headers["user-agent"] == "xferd/0.1"
        assert "access-1" not in str(seen.headers)
    assert all(seen.params["access_token"] == "access-1" for seen in calls)


async def test_token_expired_is_renewed_and_the_request_sent_once_more() -> None:
    pbx = FakePbx()
    pbx.script("call/transfer", EXPIRED, OK)
    rest = pbx.rest(clock=FakeClock())
    answer = await rest.transfer_operate("PJSIP/2005-1", "complete")
    assert answer["call_id"] == OK["call_id"]
    sent = pbx.calls_to("call/transfer")
    assert [seen.params["access_token"] for seen in sent] == ["access-1", "access-2"]
    assert len(pbx.calls_to("refresh_token")) == 1


async def test_token_expired_twice_is_an_error_after_one_retry() -> None:
    pbx = FakePbx()
    pbx.script("call/transfer", EXPIRED, EXPIRED, OK)
    rest = pbx.rest(clock=FakeClock())
    with pytest.raises(TokenExpiredError):
        await rest.transfer_operate("PJSIP/2005-1", "complete")
    assert len(pbx.calls_to("call/transfer")) == 2


@pytest.mark.parametrize(
    ("answer", "error", "errcode"),
    [
        ({"errcode": 60001, "errmsg": "DATA NOT FOUND"}, NotFoundError, 60001),
        ({"errcode": 40002, "errmsg": "PARAMETER ERROR", "invalid_param_list": []}, YeastarError, 40002),
        ({"errcode": 10009, "errmsg": "OPERATION FAILED"}, YeastarError, 10009),
    ],
)
async def test_errcodes_become_typed_errors(
    answer: dict[str, Any], error: type[YeastarError], errcode: int
) -> None:
    pbx = FakePbx()
    pbx.script("call/transfer", answer)
    observer = RecordingObserver()
    rest = pbx.rest(clock=FakeClock(), observer=observer)
    with pytest.raises(error) as caught:
        await rest.transfer_operate("PJSIP/2005-1", "abort")
    assert type(caught.value) is error and caught.value.errcode == errcode
    assert caught.value.errmsg == answer["errmsg"]
    assert observer.requests[-1][0] == "call/transfer" and observer.requests[-1][3] == "refused"


@pytest.mark.parametrize(
    "reply",
    [
        raiser(httpx.ReadTimeout("timed out")),
        raiser(httpx.RemoteProtocolError("Server disconnected without sending a response.")),
        raiser(httpx.ReadError("connection reset")),
        lambda seen: httpx.Response(500, text="oops"),
        lambda seen: httpx.Response(200, text="<html>not json</html>"),
        lambda seen: httpx.Response(200, json=[1, 2]),
        lambda seen: httpx.Response(200, json={"status": "ok"}),
    ],
    ids=["read-timeout", "disconnected", "read-error", "http-500", "not-json", "not-object", "no-errcode"],
)
async def test_no_usable_answer_after_sending_is_unknown_and_never_retried(reply: Any) -> None:
    pbx = FakePbx()
    pbx.script("call/transfer", reply)
    observer = RecordingObserver()
    rest = pbx.rest(clock=FakeClock(), observer=observer)
    with pytest.raises(OutcomeUnknown):
        await rest.transfer_operate("PJSIP/2005-1", "complete")
    assert len(pbx.calls_to("call/transfer")) == 1
    assert observer.requests[-1][3] == "unknown"


@pytest.mark.parametrize(
    "reply",
    [
        raiser(httpx.ConnectError("[Errno 111] Connection refused")),
        raiser(httpx.ConnectTimeout("timed out")),
        lambda seen: httpx.Response(404, text="not here"),
    ],
    ids=["connect-error", "connect-timeout", "http-404"],
)
async def test_a_request_that_never_reached_the_api_is_unreachable(reply: Any) -> None:
    pbx = FakePbx()
    pbx.script("call/transfer", reply)
    observer = RecordingObserver()
    rest = pbx.rest(clock=FakeClock(), observer=observer)
    with pytest.raises(PbxUnreachable):
        await rest.transfer_blind("PJSIP/2000-1", "2008", "2000")
    assert observer.requests[-1][3] == "error"


# --------------------------------------------------------------------------
# Over real loopback sockets, against the simulator
# --------------------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[PbxSimulator]:
    sim = PbxSimulator(SimConfig(client_id="xferd-sim", client_secret="sim-secret"))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def sim_rest(sim: PbxSimulator, **kwargs: Any) -> YeastarRest:
    return YeastarRest(sim.base_url, sim.config.client_id, sim.config.client_secret, **kwargs)


async def test_many_requests_work_although_the_pbx_closes_tcp_after_each(sim: PbxSimulator) -> None:
    rest = sim_rest(sim)
    try:
        for _ in range(5):
            answer = await rest.query(type="internal")
            assert answer["errcode"] == 0
    finally:
        await rest.aclose()
    assert [request.endpoint for request in sim.requests] == ["get_token"] + ["call/query"] * 5 + [
        "del_token"
    ]


async def test_a_pbx_that_answers_too_late_gives_an_unknown_outcome(sim: PbxSimulator) -> None:
    sim.add_extension("2000")
    sim.add_extension("2005")
    sim.place_call("2000", "2005")
    rest = sim_rest(sim, timeout_s=0.3)
    sim.time_out("call/transfer", act=True)
    try:
        with pytest.raises(OutcomeUnknown):
            await rest.transfer_operate(sim.channel_of("2005"), "complete")
    finally:
        await rest.aclose()


async def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as probe:  # a loopback port that is certainly closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rest = YeastarRest(f"http://127.0.0.1:{port}", "id", "secret", timeout_s=1.0)
    try:
        with pytest.raises(PbxUnreachable, match="cannot reach the PBX"):
            await rest.query(type="inbound")
    finally:
        await rest.aclose()
