"""Webex call objects → engine legs, checked cell by cell against the table
in ``adapters.webex.events``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.webex.events import (
    DOCUMENTED,
    NOT_ANSWERED,
    Legs,
    WebexCall,
    call_ended,
    call_id_of,
    call_legs,
    call_members,
    engine_legs,
    parse_calls,
    parse_delivery,
    remote_channel,
)
from engine.model import CallEnded, CallFailed, Member
from tests.webex.conftest import statuses

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


#: Every combination the reference names: (state, personality) -> (user's leg, remote leg or None).
DOCUMENTED_TABLE = [
    ("connecting", "originator", ("ALERT", "RING")),
    ("connecting", "clickToDial", ("ALERT", "RING")),
    ("alerting", "terminator", ("RING", "ALERT")),
    ("alerting", "clickToDial", ("RING", None)),
    ("connected", "originator", ("ANSWERED", "ANSWER")),
    ("connected", "clickToDial", ("ANSWERED", "ANSWER")),
    ("connected", "terminator", ("ANSWER", "ANSWERED")),
    ("held", "originator", ("HOLD", "HOLD")),
    ("held", "clickToDial", ("HOLD", "HOLD")),
    ("held", "terminator", ("HOLD", "HOLD")),
    ("remoteHeld", "originator", ("HOLD", "ANSWER")),
    ("remoteHeld", "clickToDial", ("HOLD", "ANSWER")),
    ("remoteHeld", "terminator", ("HOLD", "ANSWERED")),
]
#: Combinations real clouds send that the reference does not name.
UNDOCUMENTED = [
    ("alerting", "originator"),  # an outgoing call whose far end rings
    ("connecting", "terminator"),
    ("connected", ""),  # no personality
    ("connected", "forwarded"),  # a personality the reference does not list
    ("parked", "terminator"),  # a state the reference does not list
    ("earlyMedia", "clickToDial"),
    ("", "originator"),
]


def test_the_table_is_the_reference_and_nothing_else() -> None:
    assert {(state, personality) for state, personality, _ in DOCUMENTED_TABLE} == set(DOCUMENTED)


@pytest.mark.parametrize(("state", "personality", "expected"), DOCUMENTED_TABLE)
def test_documented_combination(state: str, personality: str, expected: tuple[str, str | None]) -> None:
    call = make_call(state, personality)
    members = call_members(call, USER)
    assert members is not None
    user = members[0]
    assert (user.kind, user.channel_id, user.number, user.status) == ("extension", "C1", USER, expected[0])
    if expected[1] is None:
        assert len(members) == 1
    else:
        remote = members[1]
        assert remote.kind == ("inbound" if personality == "terminator" else "outbound")
        assert (remote.channel_id, remote.number, remote.status) == ("C1/remote", "+15550003000", expected[1])
    # the same, whatever was shown before (a documented combination is never "kept")
    for previous in (None, call_legs(make_call("connecting", "originator"), USER).members):
        legs = call_legs(call, USER, previous)
        if expected[1] is None and previous is not None:
            continue  # "nothing dialled yet" cannot be true of a dialled call: see below
        assert legs == Legs(members)


@pytest.mark.parametrize(("state", "personality"), UNDOCUMENTED)
def test_undocumented_combination_keeps_the_legs_as_they_were(state: str, personality: str) -> None:
    for before in ("connecting", "connected", "held"):
        previous = call_legs(make_call(before, "clickToDial"), USER).members
        legs = call_legs(make_call(state, personality), USER, previous)
        assert legs == Legs(previous, unmapped=True)
    assert call_members(make_call(state, personality), USER) is None


@pytest.mark.parametrize(("state", "personality"), UNDOCUMENTED)
def test_undocumented_combination_of_a_new_call_shows_it_ringing(state: str, personality: str) -> None:
    outgoing = personality in ("originator", "clickToDial")
    legs = call_legs(make_call(state, personality), USER)
    assert legs.unmapped
    assert statuses(legs.members) == (("ALERT", "RING") if outgoing else ("RING", "ALERT"))
    dialled = call_legs(make_call(state, personality), USER, dialled=True)
    if personality != "terminator":  # a call the adapter dialled is outgoing whatever it reports
        assert statuses(dialled.members) == ("ALERT", "RING")
        assert dialled.members[1].kind == "outbound"


def test_a_dialled_call_never_loses_its_remote_leg() -> None:
    """The guess this table replaced: click-to-dial ``alerting`` read as "nothing
    dialled yet" made a ringing target's leg vanish — an abort on a guess."""
    ringing = call_legs(make_call("connecting", "clickToDial"), USER).members
    legs = call_legs(make_call("alerting", "clickToDial"), USER, ringing)
    assert legs == Legs(ringing, unmapped=True)
    assert engine_legs(legs.members) == (ringing[1], ringing[0])
    # before anything was dialled, the documented meaning holds: the user's device rings
    assert call_legs(make_call("alerting", "clickToDial"), USER) == Legs(
        (Member("extension", USER, "C1", "RING"),)
    )


def test_private_remote_party_has_empty_number() -> None:
    call = WebexCall.model_validate(
        {
            "callId": "C9",
            "state": "connected",
            "personality": "terminator",
            "remoteParty": {"privacyEnabled": True},
        }
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
    assert engine_legs(members) == (members[1], members[0])
    not_dialled = call_members(make_call("alerting", "clickToDial"), USER)
    assert not_dialled is not None and engine_legs(not_dialled) == ()
