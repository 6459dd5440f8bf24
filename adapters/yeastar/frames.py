"""Yeastar wire vocabulary: websocket frames, ``call/query`` answers, errcodes.

The errors of talking to the PBX live here too, at the bottom of the
package, so that ``tokens`` and ``rest`` can share them without importing
each other.

Pure functions, no I/O, no clock: the caller passes the arrival time ``at``.
That keeps parsing testable frame by frame and lets a replay feed recorded
frames through the very same code the live consumer uses.

What a frame can be (:attr:`Parsed.kind`):

======================  ==========================================================
``"30011"``             call status changed → :class:`~engine.model.CallUpdated`
``"30012"``             call end (CDR) → :class:`~engine.model.CallEnded`
``"30015"``             call failed → :class:`~engine.model.CallFailed`
other numeric type      tolerated (e.g. 30013 transfer report), no events
``"ack"``               ``{"errcode":0,...}`` without ``type``: topic_list accepted
``"heartbeat"``         the text ``heartbeat response``
``"token_expired"``     any frame carrying ``errcode`` 10004
``"error"``             any other non-zero ``errcode``
``"bad"``               dropped; :attr:`Parsed.bad` says why
======================  ==========================================================

Reasons (stable: they are metric labels).  A frame is dropped for
``not_json``, ``not_object``, ``bad_type`` (no or non-numeric ``type``),
``msg_not_json``, ``msg_not_object``, ``missing_call_id`` or ``bad_members``
(``members`` neither a list nor null on 30011).  One bad *member* does not
spoil the others: it is skipped with ``bad_member`` (not an object with one
known kind key, no ``channel_id``, odd ``number``), ``unknown_member_kind``
or ``unknown_status``, the frame still applies with the members that are
left, and :attr:`Parsed.bad` carries the first such reason so the consumer
counts it.  Skipping (rather than guessing) an unknown status is deliberate:
the engine only reasons about the statuses in
:data:`~engine.model.MEMBER_STATUSES`, and a later frame or reconciliation
snapshot brings the leg back once it is in a known state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from engine.model import (
    MEMBER_STATUSES,
    CallEnded,
    CallFailed,
    CallsSnapshot,
    CallState,
    CallUpdated,
    Event,
    Member,
    MemberKind,
)

#: errcodes with a meaning of their own (see reference/yeastar-openapi.md).
FAILURE = -1
TOKEN_EXPIRED = 10004
DATA_NOT_FOUND = 60001
MAX_LIMITATION_EXCEEDED = 60002
ACCOUNT_IP_BLOCKED = 70004
IP_FORBIDDEN = 70087


class Parsed(NamedTuple):
    """One frame, understood.

    ``bad`` is set when the frame was dropped (``kind == "bad"``) or when part
    of it (a member) was skipped; ``errcode`` when the frame carried a
    non-zero one.  A named tuple: one is made per frame on the ingest path,
    four times faster than a frozen dataclass.
    """

    kind: str
    events: tuple[Event, ...]
    bad: str | None = None
    errcode: int | None = None


class PbxUnreachable(Exception):
    """The request never reached the PBX (connect error, connect/pool
    timeout): it certainly did not act, so trying again later is safe."""


class TlsVerifyError(PbxUnreachable):
    """The PBX's TLS certificate is not trusted.  Retrying will not help;
    the message says what to configure."""


class OutcomeUnknown(Exception):
    """The request may have reached the PBX but no usable answer came back
    (read timeout, connection lost after sending): it may or may not have
    acted.  Never resend blindly; reconcile first."""


class YeastarError(Exception):
    """The PBX answered with a non-zero ``errcode`` (it received the request
    and did not do it).  The message is the PBX's own; no secret is in it."""

    def __init__(self, errcode: int, errmsg: str, invalid: tuple[str, ...] = ()) -> None:
        super().__init__(f"PBX errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        #: the request fields the PBX named in ``invalid_param_list``
        self.invalid = invalid


class TokenExpiredError(YeastarError):
    """10004: the access token is no longer valid (expired or revoked)."""


class NotFoundError(YeastarError):
    """60001: the call or channel does not exist (any more)."""


class LimitExceededError(YeastarError):
    """60002: too many live access tokens for this application."""


_ERROR_TYPES: dict[int, type[YeastarError]] = {
    TOKEN_EXPIRED: TokenExpiredError,
    DATA_NOT_FOUND: NotFoundError,
    MAX_LIMITATION_EXCEEDED: LimitExceededError,
}


def answer_error(answer: Mapping[str, Any]) -> YeastarError | None:
    """The typed error an HTTP answer carries, or None for ``errcode`` 0.

    An answer without an integer ``errcode`` is treated as a failure
    (``-1``): success must be stated, never assumed.
    """
    errcode = answer.get("errcode")
    if errcode == 0 and type(errcode) is int:
        return None
    errmsg = answer.get("errmsg")
    msg = errmsg if isinstance(errmsg, str) else ""
    if type(errcode) is not int:
        return YeastarError(FAILURE, msg or "answer without errcode")
    return _ERROR_TYPES.get(errcode, YeastarError)(errcode, msg, _invalid_fields(answer))


def _invalid_fields(answer: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``field`` names of ``invalid_param_list`` (what the PBX says was wrong), if any."""
    listed = answer.get("invalid_param_list")
    if not isinstance(listed, list):
        return ()
    return tuple(str(item["field"]) for item in listed if isinstance(item, dict) and "field" in item)


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------

_STATUSES = frozenset(MEMBER_STATUSES)
#: which field of each member kind holds the number a person would name.
_NUMBER_FIELD: dict[str, str] = {"extension": "number", "inbound": "from", "outbound": "to"}
_Members = tuple[tuple[Member, ...], str | None]

_HEARTBEAT = Parsed("heartbeat", ())
_ACK = Parsed("ack", ())
_TOKEN_EXPIRED = Parsed("token_expired", (), None, TOKEN_EXPIRED)


def _bad(reason: str) -> Parsed:
    return Parsed("bad", (), reason)


def _member(item: Any) -> Member | str:
    """One ``{<kind>: {...}}`` member, or the reason it is skipped."""
    if type(item) is not dict:
        return "bad_member"
    if len(item) == 1:
        ((kind, leg),) = item.items()
        field = _NUMBER_FIELD.get(kind)
        if field is None:
            return "unknown_member_kind"
    else:
        # Tolerate extra keys a later firmware might add, as long as exactly
        # one of them names the member kind.
        kinds = [k for k in item if k in _NUMBER_FIELD]
        if len(kinds) != 1:
            return "bad_member" if kinds else "unknown_member_kind"
        kind = kinds[0]
        leg = item[kind]
        field = _NUMBER_FIELD[kind]
    if type(leg) is not dict:
        return "bad_member"
    channel_id = leg.get("channel_id")
    if type(channel_id) is not str or not channel_id:
        return "bad_member"
    status = leg.get("member_status")
    if type(status) is not str or status not in _STATUSES:
        return "unknown_status"
    number = leg.get(field)
    if type(number) is not str:
        if number is None:
            number = ""  # an anonymous caller has no number; the leg still counts
        elif type(number) is int:
            number = str(number)
        else:
            return "bad_member"
    member_kind: MemberKind = kind
    if kind == "extension":
        return Member(member_kind, number, channel_id, status)
    # Trunk legs: the trunk and the number at our end (the DID called, the caller id used).
    trunk = leg.get("trunk_name")
    peer = leg.get("to" if kind == "inbound" else "from")
    return Member(
        member_kind,
        number,
        channel_id,
        status,
        trunk if type(trunk) is str else "",
        peer if type(peer) is str else "",
    )


def _members(raw: Any) -> _Members | None:
    """Members that parse plus the first skip reason; None if not a list."""
    if raw is None:
        return (), None
    if type(raw) is not list:
        return None
    members: list[Member] = []
    bad: str | None = None
    for item in raw:
        member = _member(item)
        if isinstance(member, str):
            bad = bad or member
        else:
            members.append(member)
    return tuple(members), bad


def _call_id(body: dict[str, Any]) -> str | None:
    call_id = body.get("call_id")
    return call_id if type(call_id) is str and call_id else None


def _call_updated(body: dict[str, Any], at: float) -> Parsed:
    call_id = body.get("call_id")  # _call_id(), inlined: this is every 30011 frame
    if type(call_id) is not str or not call_id:
        return _bad("missing_call_id")
    parsed = _members(body.get("members"))
    if parsed is None:
        return _bad("bad_members")
    members, bad = parsed
    return Parsed("30011", (CallUpdated(at, call_id, members),), bad)


def _call_ended(body: dict[str, Any], at: float) -> Parsed:
    call_id = _call_id(body)
    if call_id is None:
        return _bad("missing_call_id")
    return Parsed("30012", (CallEnded(at, call_id),))


def _call_failed(body: dict[str, Any], at: float) -> Parsed:
    call_id = _call_id(body)
    if call_id is None:
        return _bad("missing_call_id")
    reason = body.get("reason")
    # The failure itself matters more than its members: keep it even when
    # ``members`` is malformed, and say so.
    parsed = _members(body.get("members"))
    members, bad = parsed if parsed is not None else ((), "bad_members")
    return Parsed("30015", (CallFailed(at, call_id, reason if type(reason) is str else "", members),), bad)


#: ``type`` may come as a number (documented) or a numeric string (tolerated).
_HANDLERS: dict[object, Callable[[dict[str, Any], float], Parsed]] = {
    30011: _call_updated,
    "30011": _call_updated,
    30012: _call_ended,
    "30012": _call_ended,
    30015: _call_failed,
    "30015": _call_failed,
}


def parse_event(type_: object, body: dict[str, Any], at: float) -> Parsed | None:
    """Parse an already-decoded event body (``msg`` as an object) of frame type ``type_``.

    The same handlers :func:`parse_frame` uses, for callers that hold the frame
    decoded already (the replay reads recorded frames as JSON); None when the
    type has no events, so the caller falls back to :func:`parse_frame`.
    """
    handler = _HANDLERS.get(type_)
    return handler(body, at) if handler is not None else None


def parse_frame(text: str | bytes, at: float) -> Parsed:
    """Understand one websocket frame that arrived at ``at``.

    Never raises for bad input: a frame that cannot be used comes back as
    ``kind="bad"`` with a stable reason.  This is on the ingest hot path, so
    it does the two ``json.loads`` an event needs and little else.
    """
    if text == "heartbeat response" or text == b"heartbeat response":
        return _HEARTBEAT
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _bad("not_json")
    if type(obj) is not dict:
        return _bad("not_object")
    errcode = obj.get("errcode")
    if errcode is not None and errcode != 0:
        if errcode == TOKEN_EXPIRED:
            return _TOKEN_EXPIRED
        return Parsed("error", (), None, errcode if type(errcode) is int else None)
    type_ = obj.get("type")
    try:
        handler = _HANDLERS.get(type_)
    except TypeError:  # an unhashable ``type`` (list, object)
        return _bad("bad_type")
    if handler is None:
        if type_ is None and errcode == 0:
            return _ACK
        if type(type_) is int:
            return Parsed(str(type_), ())
        if type(type_) is str and type_.isdigit():
            return Parsed(type_, ())
        return _bad("bad_type")
    msg = obj.get("msg")
    if type(msg) is str:
        try:
            body = json.loads(msg)
        except (ValueError, RecursionError):
            return _bad("msg_not_json")
    elif type(msg) is dict:
        body = msg  # at least one event type is documented with ``msg`` as an object
    else:
        return _bad("msg_not_json")
    if type(body) is not dict:
        return _bad("msg_not_object")
    return handler(body, at)


def parse_query(
    answer: Mapping[str, Any], at: float, on_bad: Callable[[str], None] | None = None
) -> CallsSnapshot:
    """A ``call/query`` answer as a :class:`CallsSnapshot` taken at ``at``.

    Assumption (unconfirmed by Yeastar's docs): a non-zero ``errcode`` means
    "no such calls", so it gives an empty snapshot.  Malformed rows and
    members are skipped and reported through ``on_bad``; rows naming the
    same call are merged by channel id.
    """
    rows = answer.get("data") if answer.get("errcode") == 0 else None
    if rows is None:
        return CallsSnapshot(at, ())
    if type(rows) is not list:
        _report(on_bad, "bad_data")
        return CallsSnapshot(at, ())
    calls: dict[str, dict[str, Member]] = {}
    for row in rows:
        call_id = _call_id(row) if type(row) is dict else None
        if call_id is None:
            _report(on_bad, "missing_call_id")
            continue
        parsed = _members(row.get("members"))
        if parsed is None:
            _report(on_bad, "bad_members")
            continue
        members, bad = parsed
        if bad is not None:
            _report(on_bad, bad)
        legs = calls.setdefault(call_id, {})
        for member in members:
            legs[member.channel_id] = member
    return CallsSnapshot(at, tuple(CallState(cid, tuple(legs.values())) for cid, legs in calls.items()))


def _report(on_bad: Callable[[str], None] | None, reason: str) -> None:
    if on_bad is not None:
        on_bad(reason)


# --------------------------------------------------------------------------
# Parked calls (``call/park_status``)
# --------------------------------------------------------------------------


def parse_parked(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a ``call/park_status`` answer as ``{slot, channel_id, parked_party,
    parker, parked_s}``; a row without a slot or a channel is skipped (never guessed)."""
    data = answer.get("data")
    rows = data if isinstance(data, list) else []
    parked = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        slot, channel = row.get("parking_slot"), row.get("channel_id")
        if not isinstance(slot, str | int) or not isinstance(channel, str) or not channel:
            continue
        seconds = row.get("park_time")
        parked.append(
            {
                "slot": str(slot),
                "channel_id": channel,
                "parked_party": str(row.get("parked_party") or ""),
                "parker": str(row.get("parker") or ""),
                "parked_s": float(seconds) if isinstance(seconds, int | float) else None,
            }
        )
    return parked
