"""Webex call objects → engine legs, checked cell by cell against the table
in ``adapters.webex.events``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.webex.events import (
    NOT_ANSWERED,
    WebexCall,
    call_ended,
    call_id_of,
    call_members,
    engine_legs,
    parse_calls,
    parse_delivery,
    remote_channel,
)
from engine.model import CallEnded, CallFailed, Member

USER = "+15550001000"

# The real "answered" delivery quoted in reference/webex-calling.md.
REAL_DELIVERY: dict[str, Any] = {
    "data": {
        "callId": "Y2lzY29zcGFyazovL3VzL0NBTEwvY2FsbGhhbGYtOTYwNTQyMDI5NDow",
        "endpointType": "APPLICATION",
        "answered": "2025-08-05T16:48:21.154Z",
        "created": "2025-08-05T16:48:19.359Z",
        "eventType": "answered",
        "callSessionId": "ZmEzMmU1MzQtYzNhMi00NjVkLWJjZTgtNTI1OWZlODlmNWZi",
        "completedElsewhere": False,
        "appearance": 1,
        "personality": "terminator",
        "remoteParty": {
            "name": "x",
            "privacyEnabled": False,
            "number": "+19059227700",
            "callType": "external",
        },
        "muteCapable": True,
        "state": "connected",
        "muted": False,
        "eventTimestamp": "2025-08-05T16:48:21.240Z",
    },
    "resource": "telephony_calls",
    "event": "updated",
    "orgId": "o",
    "actorId": "a",
    "name": "n",
    "id": "d",
    "targetUrl": "https://example.invalid/telephony",
    "ownedBy": "creator",
    "status": "active",
}


def make_call(state: str, personality: str, number: str = "+15550003000") -> WebexCall:
    return WebexCall.model_validate(
        {"id": "C1", "state": state, "personality": personality, "remoteParty": {"number": number}}
    )


def test_real_delivery_maps_to_an_answered_inbound_call() -> None:
    call = parse_delivery(json.dumps(REAL_DELIVERY).encode())
    assert isinstance(call, WebexCall)
    call_id = REAL_DELIVERY["data"]["callId"]
    assert call_members(call, USER) == (
        Member("extension", USER, call_id, "ANSWER"),
        Member("inbound", "+19059227700", call_id + "/remote", "ANSWERED"),
    )
    assert call.event_seconds is not None and call.was_answered


@pytest.mark.parametrize(
    ("state", "personality", "expected"),
    [
        ("connecting", "clickToDial", ("ALERT", "RING")),
        ("connecting", "originator", ("ALERT", "RING")),
        ("alerting", "terminator", ("RING", "ALERT")),
        ("connected", "clickToDial", ("ANSWERED", "ANSWER")),
        ("connected", "terminator", ("ANSWER", "ANSWERED")),
        ("held", "clickToDial", ("HOLD", "HOLD")),
        ("held", "terminator", ("HOLD", "HOLD")),
        ("remoteHeld", "originator", ("HOLD", "ANSWER")),
        ("remoteHeld", "terminator", ("HOLD", "ANSWERED")),
    ],
)
def test_state_table(state: str, personality: str, expected: tuple[str, str]) -> None:
    members = call_members(make_call(state, personality), USER)
    assert members is not None
    assert tuple(m.status for m in members) == expected
    user, remote = members
    assert (user.kind, user.channel_id, user.number) == ("extension", "C1", USER)
    assert remote.kind == ("inbound" if personality == "terminator" else "outbound")
    assert (remote.channel_id, remote.number) == ("C1/remote", "+15550003000")


def test_click_to_dial_ringing_the_user_has_no_remote_leg_yet() -> None:
    members = call_members(make_call("alerting", "clickToDial"), USER)
    assert members == (Member("extension", USER, "C1", "RING"),)


@pytest.mark.parametrize("state", ["disconnected", "parked", ""])
def test_states_without_legs_are_not_guessed(state: str) -> None:
    assert call_members(make_call(state, "originator"), USER) is None


def test_private_remote_party_has_empty_number() -> None:
    call = WebexCall.model_validate(
        {"callId": "C9", "state": "connected", "remoteParty": {"privacyEnabled": True}}
    )
    members = call_members(call, USER)
    assert members is not None and members[1].number == ""


def test_channel_helpers_round_trip() -> None:
    assert remote_channel("abc") == "abc/remote"
    assert call_id_of(remote_channel("abc")) == "abc"
    assert call_id_of("abc") == "abc"


def test_failed_attempt_precedes_end() -> None:
    assert call_ended(5.0, "C1", failed=True) == [
        CallFailed(at=5.0, call_id="C1", reason=NOT_ANSWERED),
        CallEnded(at=5.0, call_id="C1"),
    ]
    assert call_ended(5.0, "C1", failed=False) == [CallEnded(at=5.0, call_id="C1")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (json.dumps({"resource": "messages", "data": {"id": "m"}}).encode(), "wrong_resource"),
        (
            json.dumps({"resource": "telephony_calls", "data": {"state": "connected"}}).encode(),
            "bad_call_data",
        ),
        (json.dumps({"resource": "telephony_calls"}).encode(), "bad_call_data"),
    ],
)
def test_unusable_deliveries_name_their_reason(body: bytes, reason: str) -> None:
    assert parse_delivery(body) == reason


def test_unknown_keys_are_tolerated() -> None:
    delivery = dict(
        REAL_DELIVERY, brandNewKey=1, data=dict(REAL_DELIVERY["data"], eventType="forwarded", x={})
    )
    assert isinstance(parse_delivery(json.dumps(delivery).encode()), WebexCall)


def test_parse_calls_skips_unreadable_items() -> None:
    calls, skipped = parse_calls({"items": [{"id": "A", "state": "connected"}, {"state": "held"}, "x"]})
    assert [c.call_id for c in calls] == ["A"]
    assert skipped == 2
    assert parse_calls(None) == ([], 1)


def test_engine_gets_the_remote_leg_first_and_nothing_before_dialling() -> None:
    """The engine takes the first new leg of a consult call for the target."""
    members = call_members(make_call("connecting", "clickToDial"), USER)
    assert members is not None
    assert engine_legs(make_call("connecting", "clickToDial"), USER) == (members[1], members[0])
    assert engine_legs(make_call("alerting", "clickToDial"), USER) == ()
    assert engine_legs(make_call("parked", "clickToDial"), USER) is None
