"""Frame parsing: every kind of frame, every way a frame can be bad.

Pure in/out checks against ``adapters.yeastar.frames``; the two captured
frames come from reference/yeastar-openapi.md ("Captured on live PBXs").
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.yeastar.frames import (
    LimitExceededError,
    NotFoundError,
    TokenExpiredError,
    YeastarError,
    answer_error,
    parse_frame,
    parse_query,
)
from engine.model import CallEnded, CallFailed, CallsSnapshot, CallState, CallUpdated, Member

AT = 1_700_000_000.25

CAPTURED_EXTENSION = (
    '{"type":30011,"sn":"3633D2199067","msg":"{\\"call_id\\":\\"1702285525.16\\",\\"members\\":'
    '[{\\"extension\\":{\\"number\\":\\"703\\",\\"channel_id\\":\\"PJSIP/703-00000008\\",'
    '\\"member_status\\":\\"ANSWERED\\",\\"call_path\\":\\"\\"}}]}"}'
)
CAPTURED_INBOUND = (
    '{"type":30011,"sn":"3631B4444099","msg":"{\\"call_id\\":\\"1725446451.243\\",\\"members\\":'
    '[{\\"inbound\\":{\\"from\\":\\"94424722\\",\\"to\\":\\"6402\\",\\"trunk_name\\":\\"stc\\",'
    '\\"channel_id\\":\\"PJSIP/trunk-stc-endpoint-0000008f\\",\\"member_status\\":\\"BYE\\",'
    '\\"call_path\\":\\"\\"}}]}"}'
)


def ext(number: str, channel: str, status: str) -> dict[str, Any]:
    return {"extension": {"number": number, "channel_id": channel, "member_status": status, "call_path": ""}}


def frame(type_: Any, msg: Any, *, encode: bool = True) -> str:
    return json.dumps({"type": type_, "sn": "3631A0SIM001", "msg": json.dumps(msg) if encode else msg})


# --------------------------------------------------------------------------
# Captured frames
# --------------------------------------------------------------------------


def test_captured_extension_frame() -> None:
    parsed = parse_frame(CAPTURED_EXTENSION, AT)
    assert parsed.kind == "30011" and parsed.bad is None
    assert parsed.events == (
        CallUpdated(AT, "1702285525.16", (Member("extension", "703", "PJSIP/703-00000008", "ANSWERED"),)),
    )


def test_captured_inbound_trunk_frame_names_the_remote_caller() -> None:
    parsed = parse_frame(CAPTURED_INBOUND, AT)
    assert parsed.events == (
        CallUpdated(
            AT,
            "1725446451.243",
            (Member("inbound", "94424722", "PJSIP/trunk-stc-endpoint-0000008f", "BYE", "stc", "6402"),),
        ),
    )


def test_bytes_frame_parses_like_text() -> None:
    assert parse_frame(CAPTURED_EXTENSION.encode(), AT) == parse_frame(CAPTURED_EXTENSION, AT)


# --------------------------------------------------------------------------
# Event kinds
# --------------------------------------------------------------------------


def test_outbound_member_is_named_by_the_dialled_number() -> None:
    leg = {"outbound": {"from": "2005", "to": "5503301", "trunk_name": "x", "channel_id": "PJSIP/trunk-x-1"}}
    leg["outbound"]["member_status"] = "EARLYMEDIA"
    parsed = parse_frame(frame(30011, {"call_id": "1.2", "members": [leg]}), AT)
    assert parsed.events[0] == CallUpdated(
        AT, "1.2", (Member("outbound", "5503301", "PJSIP/trunk-x-1", "EARLYMEDIA", "x", "2005"),)
    )


def test_msg_may_be_an_object() -> None:
    body = {"call_id": "1.2", "members": [ext("2005", "PJSIP/2005-1", "RING")]}
    assert parse_frame(frame(30011, body, encode=False), AT) == parse_frame(frame(30011, body), AT)


def test_type_may_be_a_numeric_string() -> None:
    parsed = parse_frame(frame("30012", {"call_id": "1.2"}), AT)
    assert parsed.events == (CallEnded(AT, "1.2"),)


@pytest.mark.parametrize("members", [None, "absent", []])
def test_members_null_missing_or_empty(members: Any) -> None:
    body: dict[str, Any] = {"call_id": "1.2"}
    if members != "absent":
        body["members"] = members
    parsed = parse_frame(frame(30011, body), AT)
    assert parsed.events == (CallUpdated(AT, "1.2", ()),) and parsed.bad is None


def test_call_end() -> None:
    cdr = {"call_id": "1.2", "time_start": "2024-01-01 10:00:00", "call_from": "2000", "status": "ANSWERED"}
    parsed = parse_frame(frame(30012, cdr), AT)
    assert (parsed.kind, parsed.events) == ("30012", (CallEnded(AT, "1.2"),))


def test_call_failed_with_and_without_members() -> None:
    with_members = {
        "call_id": "1.3",
        "reason": "486 Busy Here",
        "members": [ext("2008", "PJSIP/2008-2", "BYE")],
    }
    parsed = parse_frame(frame(30015, with_members), AT)
    assert parsed.events == (
        CallFailed(AT, "1.3", "486 Busy Here", (Member("extension", "2008", "PJSIP/2008-2", "BYE"),)),
    )
    parsed = parse_frame(frame(30015, {"call_id": "1.3", "reason": "DND", "members": None}), AT)
    assert parsed.events == (CallFailed(AT, "1.3", "DND", ()),)


def test_call_failed_keeps_the_failure_when_members_are_malformed() -> None:
    parsed = parse_frame(frame(30015, {"call_id": "1.3", "reason": "DND", "members": "??"}), AT)
    assert parsed.events == (CallFailed(AT, "1.3", "DND", ()),) and parsed.bad == "bad_members"


def test_other_numeric_types_are_tolerated_without_events() -> None:
    parsed = parse_frame(frame(30013, {"call_id": "1.2", "whatever": 1}), AT)
    assert (parsed.kind, parsed.events, parsed.bad) == ("30013", (), None)


def test_ack_heartbeat_token_expired_and_error() -> None:
    assert parse_frame('{"errcode":0,"errmsg":"SUCCESS"}', AT).kind == "ack"
    assert parse_frame("heartbeat response", AT).kind == "heartbeat"
    assert parse_frame(b"heartbeat response", AT).kind == "heartbeat"
    expired = parse_frame('{"errcode":10004,"errmsg":"TOKEN EXPIRED"}', AT)
    assert (expired.kind, expired.errcode) == ("token_expired", 10004)
    # 10004 wins even on a frame that also looks like an event
    assert parse_frame('{"type":30011,"errcode":10004,"msg":"{}"}', AT).kind == "token_expired"
    error = parse_frame('{"errcode":40002,"errmsg":"PARAMETER ERROR"}', AT)
    assert (error.kind, error.errcode, error.events) == ("error", 40002, ())


# --------------------------------------------------------------------------
# Bad frames: dropped with a stable reason
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("hello", "not_json"),
        ("", "not_json"),
        ('{"type":30011,', "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        ("[" * 100_000, "not_json"),
        ("[1,2]", "not_object"),
        ('"30011"', "not_object"),
        ("null", "not_object"),
        ('{"sn":"x","msg":"{}"}', "bad_type"),
        ('{"type":"call","msg":"{}"}', "bad_type"),
        ('{"type":[30011],"msg":"{}"}', "bad_type"),
        ('{"type":30011,"msg":"{not json"}', "msg_not_json"),
        ('{"type":30011}', "msg_not_json"),
        ('{"type":30011,"msg":42}', "msg_not_json"),
        ('{"type":30011,"msg":"[1]"}', "msg_not_object"),
        ('{"type":30011,"msg":"{\\"members\\":[]}"}', "missing_call_id"),
        ('{"type":30011,"msg":"{\\"call_id\\":\\"\\"}"}', "missing_call_id"),
        ('{"type":30012,"msg":"{\\"call_id\\":17}"}', "missing_call_id"),
        ('{"type":30015,"msg":"{}"}', "missing_call_id"),
        ('{"type":30011,"msg":"{\\"call_id\\":\\"1.2\\",\\"members\\":{}}"}', "bad_members"),
    ],
)
def test_bad_frames_are_dropped_with_a_reason(text: str | bytes, reason: str) -> None:
    parsed = parse_frame(text, AT)
    assert (parsed.kind, parsed.events, parsed.bad) == ("bad", (), reason)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (
            {"conference": {"number": "1", "channel_id": "PJSIP/x-1", "member_status": "RING"}},
            "unknown_member_kind",
        ),
        (ext("2008", "PJSIP/2008-9", "PARKED"), "unknown_status"),
        (ext("2008", "PJSIP/2008-9", None), "unknown_status"),  # type: ignore[arg-type]
        ({"extension": {"number": "2008", "member_status": "RING"}}, "bad_member"),
        ({"extension": "2008"}, "bad_member"),
        ("2008", "bad_member"),
        (
            {"extension": {"number": ["2008"], "channel_id": "PJSIP/2008-9", "member_status": "RING"}},
            "bad_member",
        ),
        ({"extension": {}, "inbound": {}}, "bad_member"),
    ],
)
def test_a_bad_member_is_skipped_and_the_rest_applies(member: Any, reason: str) -> None:
    good = ext("2005", "PJSIP/2005-1", "ANSWER")
    parsed = parse_frame(frame(30011, {"call_id": "1.2", "members": [member, good]}), AT)
    assert parsed.kind == "30011" and parsed.bad == reason
    assert parsed.events == (
        CallUpdated(AT, "1.2", (Member("extension", "2005", "PJSIP/2005-1", "ANSWER"),)),
    )


def test_member_tolerances() -> None:
    anonymous = {
        "inbound": {"from": None, "to": "6402", "channel_id": "PJSIP/trunk-a-1", "member_status": "RING"}
    }
    numeric = {"extension": {"number": 2005, "channel_id": "PJSIP/2005-1", "member_status": "ANSWER"}}
    extra_key = {**ext("2008", "PJSIP/2008-2", "RING"), "call_path": ""}
    parsed = parse_frame(frame(30011, {"call_id": "1.2", "members": [anonymous, numeric, extra_key]}), AT)
    assert parsed.bad is None
    assert parsed.events[0] == CallUpdated(
        AT,
        "1.2",
        (
            Member("inbound", "", "PJSIP/trunk-a-1", "RING", "", "6402"),
            Member("extension", "2005", "PJSIP/2005-1", "ANSWER"),
            Member("extension", "2008", "PJSIP/2008-2", "RING"),
        ),
    )


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_frame_never_raises(text: str | bytes) -> None:
    parsed = parse_frame(text, AT)
    assert parsed.kind in {"bad", "ack", "heartbeat", "error", "token_expired"} or parsed.kind.isdigit()


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "call_id",
                        "members",
                        "extension",
                        "inbound",
                        "number",
                        "channel_id",
                        "member_status",
                        "from",
                        "to",
                    ]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_parse_frame_never_raises_on_odd_json_shapes(msg: Any) -> None:
    for type_ in (30011, 30015):
        parse_frame(frame(type_, msg), AT)
        parse_frame(frame(type_, msg, encode=False), AT)


# --------------------------------------------------------------------------
# call/query answers and errcodes
# --------------------------------------------------------------------------


def test_parse_query_merges_rows_of_one_call_and_reports_bad_rows() -> None:
    answer = {
        "errcode": 0,
        "data": [
            {"call_id": "1.1", "members": [ext("2000", "PJSIP/2000-1", "ANSWERED")]},
            {
                "call_id": "1.1",
                "members": [ext("2005", "PJSIP/2005-1", "ANSWER"), ext("2000", "PJSIP/2000-1", "HOLD")],
            },
            {"members": []},
            {"call_id": "1.2", "members": [{"odd": {}}]},
        ],
    }
    reasons: list[str] = []
    snapshot = parse_query(answer, AT, reasons.append)
    assert snapshot == CallsSnapshot(
        AT,
        (
            CallState(
                "1.1",
                (
                    Member("extension", "2000", "PJSIP/2000-1", "HOLD"),
                    Member("extension", "2005", "PJSIP/2005-1", "ANSWER"),
                ),
            ),
            CallState("1.2", ()),
        ),
    )
    assert reasons == ["missing_call_id", "unknown_member_kind"]


@pytest.mark.parametrize(
    "answer", [{"errcode": 60001, "errmsg": "DATA NOT FOUND"}, {"errcode": 0}, {"errcode": 0, "data": None}]
)
def test_parse_query_without_calls_is_an_empty_snapshot(answer: dict[str, Any]) -> None:
    assert parse_query(answer, AT) == CallsSnapshot(AT, ())


def test_answer_error_maps_errcodes_to_types() -> None:
    assert answer_error({"errcode": 0, "errmsg": "SUCCESS"}) is None
    assert type(answer_error({"errcode": 10004, "errmsg": "TOKEN EXPIRED"})) is TokenExpiredError
    assert type(answer_error({"errcode": 60001, "errmsg": "DATA NOT FOUND"})) is NotFoundError
    assert type(answer_error({"errcode": 60002, "errmsg": "MAX LIMITATION EXCEEDED"})) is LimitExceededError
    err = answer_error({"errcode": 40002, "errmsg": "PARAMETER ERROR"})
    assert type(err) is YeastarError and (err.errcode, err.errmsg) == (40002, "PARAMETER ERROR")
    missing = answer_error({"errmsg": "?"})
    assert missing is not None and missing.errcode == -1


# --------------------------------------------------------------------------
# Speed: the hot path should cost little more than the two json.loads it needs
# --------------------------------------------------------------------------


def test_parse_frame_costs_little_more_than_decoding_twice() -> None:
    def bare(text: str) -> None:
        json.loads(json.loads(text)["msg"])

    def best_of(fn: Any, rounds: int = 5, n: int = 2000) -> float:
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(n):
                fn(CAPTURED_INBOUND)
            best = min(best, time.perf_counter() - start)
        return best

    ratio = best_of(lambda text: parse_frame(text, AT)) / best_of(bare)
    # Generous bound so a loaded CI machine does not flake; typically ~1.5-2x.
    assert ratio < 4, f"parse_frame is {ratio:.1f}x bare json.loads twice"
