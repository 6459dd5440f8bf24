"""Webex call objects → engine legs: the mapping and why.

Webex Calling reports *calls from one user's point of view*: each call of
the user (the transferor) has a ``callId``, a ``state`` and a
``remoteParty``.  The engine thinks in calls made of legs keyed by channel
id (Yeastar's model).  Each Webex call therefore becomes one engine call
with two legs:

===========  ============================  ==============================
engine       user's leg                    remote party's leg
===========  ============================  ==============================
call_id      ``callId``                    ``callId``
channel_id   ``callId``                    ``callId + "/remote"``
kind         ``extension``                 ``inbound`` (the user was called,
                                           personality ``terminator``) or
                                           ``outbound`` (``originator``,
                                           ``clickToDial``)
number       the user's number (config)    ``remoteParty.number``
===========  ============================  ==============================

The engine receives the legs of :func:`engine_legs`: the same members, but
the remote party's leg *first*, and none at all while a click-to-dial call
still rings only the user's own device.  The engine recognises a
consultation's target as the first new leg of the call the start request
returned (or, before that answer, as the new leg carrying the dialled
number); listed user-first — or user-only while the user's device rings —
the user's own leg of the consult call would be taken for the target, so
``target.channel_id`` would name the user's call instead of the target's leg
(and which one it named would depend on whether the delivery or the dial's
answer came first).

Why ``callId`` and not ``callSessionId`` as the engine's call id: the start
request returns the consult call's ``callId`` and the engine correlates the
target's leg by that id; a session id would add nothing for one user's calls.
Why the user's leg is keyed by the bare ``callId``: the contract says a Webex
``channel_id`` *is* the callId of the user's call, so a transfer request names
the transferor by exactly that.  Thus in an attended transfer the transferor
is ``callId1``, the transferee ``callId1/remote`` and the target
``callId2/remote``.

Status mapping (Yeastar ``member_status`` semantics: ``ALERT`` = the caller
hears ringback, ``RING`` = the callee rings, ``ANSWERED`` = the caller's call
was answered, ``ANSWER`` = the callee answered, ``HOLD`` = not talking on this
call because it is held).  These are the combinations of ``state`` and
``personality`` the reference names (:data:`DOCUMENTED`), and only these:

==============  ==============  ============  ==========================
Webex state     personality     user's leg    remote leg
==============  ==============  ============  ==========================
``connecting``  ``originator``, ``ALERT``     ``RING`` (being placed)
                ``clickToDial``
``alerting``    ``terminator``  ``RING``      ``ALERT`` (observed:
                                              ``received``)
``alerting``    ``clickToDial`` ``RING``      — click-to-dial rings the
                                              user's own device first:
                                              nothing dialled yet
``connected``   out: both       ``ANSWERED``  ``ANSWER``
``connected``   ``terminator``  ``ANSWER``    ``ANSWERED``
``held``        any of the 3    ``HOLD``      ``HOLD``
``remoteHeld``  any of the 3    ``HOLD``      talking status
==============  ==============  ============  ==========================

No guessing beyond that table (:func:`call_legs`).  Real clouds send other
combinations (an outgoing call reported ``alerting`` while the far end
rings, an unknown personality, a state the reference does not list), and
reading one as "nothing dialled yet" made the target's leg vanish from the
call, which the engine rightly takes for the target gone — an abort on a
guess.  So: **a live call (any state but ``disconnected``) never ends and
never loses a leg.**  A combination the table does not name keeps the legs
last shown for the call (a call never seen before shows both legs ringing,
in its direction) and is reported ``unmapped`` — the adapter counts it and
logs it once per call — so it can never by itself trigger a decision.  The
table's "nothing dialled yet" is likewise not applied to a call whose remote
party was already shown: that cannot be what it means there.  Only
``disconnected``, or the call's absence from a fresh ``GET
/telephony/calls``, ends a leg.

``held`` (the user held the call) marks *both* legs ``HOLD``: nobody talks on
a held call, so the transferee shows as held while consulting, the target
shows as held after a swap (``target.status`` "held"), and the user's held
call is never mistaken for the talking one.  ``remoteHeld`` (the remote party
held the user) marks only the user's leg: the remote party is still answered,
it is merely the one holding.  ``disconnected`` is not a leg status: the call
is over (:class:`~engine.model.CallEnded`); an *outgoing* call that ends
without ever being answered is also a failed attempt
(:class:`~engine.model.CallFailed` first) — that is how a busy or rejecting
target shows on Webex, which gives no cause.

Every update is a full two-leg snapshot of that call (``full=True``): Webex
always sends the whole call object, and ``data.state`` is the truth.

``at`` on events is the adapter's clock at arrival, not Webex's
``eventTimestamp``: the engine's timers run on the runtime clock, and the two
clocks may disagree.  ``eventTimestamp`` is only used to order deliveries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from engine.model import CallEnded, CallFailed, Event, Member

#: Where the control API receives deliveries (contract §3.7); the adapter registers it.
WEBHOOK_PATH = "/v1/webhooks/webex"
#: Suffix that turns a user's callId into the channel id of the remote party.
REMOTE_SUFFIX = "/remote"
#: The reason carried by :class:`CallFailed` — Webex does not say why.
NOT_ANSWERED = "disconnected before answer"
#: Webex states in which the call has been answered.
ANSWERED_STATES = frozenset({"connected", "held", "remoteHeld"})
_OUTGOING_PERSONALITIES = frozenset({"originator", "clickToDial"})
_PERSONALITIES = ("originator", "clickToDial", "terminator")
#: The (state, personality) combinations the reference names -> (user's leg, remote leg);
#: None for the remote leg: nothing dialled yet (click-to-dial ringing the user's device).
DOCUMENTED: dict[tuple[str, str], tuple[str, str | None]] = {
    ("connecting", "originator"): ("ALERT", "RING"),
    ("connecting", "clickToDial"): ("ALERT", "RING"),
    ("alerting", "terminator"): ("RING", "ALERT"),
    ("alerting", "clickToDial"): ("RING", None),
    ("connected", "originator"): ("ANSWERED", "ANSWER"),
    ("connected", "clickToDial"): ("ANSWERED", "ANSWER"),
    ("connected", "terminator"): ("ANSWER", "ANSWERED"),
    **{("held", personality): ("HOLD", "HOLD") for personality in _PERSONALITIES},
    ("remoteHeld", "originator"): ("HOLD", "ANSWER"),
    ("remoteHeld", "clickToDial"): ("HOLD", "ANSWER"),
    ("remoteHeld", "terminator"): ("HOLD", "ANSWERED"),
}


class RemoteParty(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    number: str | None = None
    name: str | None = None


class WebexCall(BaseModel):
    """A Webex call as the user sees it.

    ``GET /telephony/calls`` items name the id ``id``; webhook ``data`` names
    it ``callId`` and adds ``eventType``/``eventTimestamp``.  Both parse here;
    unknown keys are ignored.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    call_id: str = Field(validation_alias=AliasChoices("callId", "id"), min_length=1)
    state: str
    personality: str = ""
    remote_party: RemoteParty = Field(default_factory=RemoteParty, validation_alias="remoteParty")
    answered: datetime | None = None
    event_timestamp: datetime | None = Field(default=None, validation_alias="eventTimestamp")

    @property
    def outgoing(self) -> bool:
        """The user placed this call (so the remote party is the callee)."""
        return self.personality in _OUTGOING_PERSONALITIES

    @property
    def was_answered(self) -> bool:
        return self.answered is not None or self.state in ANSWERED_STATES

    @property
    def event_seconds(self) -> float | None:
        """``eventTimestamp`` as epoch seconds (comparable whatever its zone)."""
        return None if self.event_timestamp is None else self.event_timestamp.timestamp()


def remote_channel(call_id: str) -> str:
    """The channel id of the remote party of the user's call ``call_id``."""
    return call_id + REMOTE_SUFFIX


def call_id_of(channel_id: str) -> str:
    """The Webex callId behind either leg's channel id (the engine may name
    the remote party's leg where Webex needs the user's call)."""
    return channel_id.removesuffix(REMOTE_SUFFIX)


def call_members(call: WebexCall, user_number: str) -> tuple[Member, ...] | None:
    """The legs of a live call per :data:`DOCUMENTED`, user's leg first (only
    the user's while nothing is dialled yet); None for a combination the
    reference does not name."""
    statuses = DOCUMENTED.get((call.state, call.personality))
    if statuses is None:
        return None
    return _members(call, user_number, *statuses, outgoing=call.outgoing)


@dataclass(frozen=True, slots=True)
class Legs:
    """What one Webex call shows: its legs, user's leg first, and whether
    they come from :data:`DOCUMENTED` (``unmapped`` False) or were kept
    because the combination is not one the reference names."""

    members: tuple[Member, ...]
    unmapped: bool = False


def call_legs(
    call: WebexCall, user_number: str, previous: tuple[Member, ...] | None = None, *, dialled: bool = False
) -> Legs:
    """The legs of a live call, never guessed: see the module docstring.

    ``previous``: the legs last shown for this call (None: never seen);
    ``dialled``: the adapter dialled this call itself, so a never-seen call
    whose combination is unmapped is taken as outgoing.
    """
    statuses = DOCUMENTED.get((call.state, call.personality))
    dialled_before = previous is not None and len(previous) > 1
    if statuses is not None and not (statuses[1] is None and dialled_before):
        return Legs(_members(call, user_number, *statuses, outgoing=call.outgoing))
    if previous is not None:
        return Legs(previous, unmapped=True)
    outgoing = call.outgoing or (dialled and call.personality != "terminator")
    ringing = ("ALERT", "RING") if outgoing else ("RING", "ALERT")
    return Legs(_members(call, user_number, *ringing, outgoing=outgoing), unmapped=True)


def _members(
    call: WebexCall, user_number: str, user_status: str, remote_status: str | None, *, outgoing: bool
) -> tuple[Member, ...]:
    user = Member(kind="extension", number=user_number, channel_id=call.call_id, status=user_status)
    if remote_status is None:
        return (user,)
    remote = Member(
        kind="outbound" if outgoing else "inbound",
        number=call.remote_party.number or "",
        channel_id=remote_channel(call.call_id),
        status=remote_status,
    )
    return (user, remote)


def engine_legs(members: tuple[Member, ...]) -> tuple[Member, ...]:
    """The legs the engine is given for a call's ``members`` (user's leg
    first): the remote party's leg first, and ``()`` while nothing is dialled
    yet (click-to-dial ringing the user).  Why: see the module docstring —
    the engine takes the first new leg of a consult call for the target."""
    if len(members) < 2:
        return ()
    return tuple(reversed(members))


def call_ended(at: float, call_id: str, *, failed: bool) -> list[Event]:
    """Events for a call that went ``disconnected``; ``failed`` when it was
    an outgoing attempt nobody answered (and not one we ended ourselves)."""
    events: list[Event] = []
    if failed:
        events.append(CallFailed(at=at, call_id=call_id, reason=NOT_ANSWERED))
    events.append(CallEnded(at=at, call_id=call_id))
    return events


def parse_delivery(body: bytes) -> WebexCall | str:
    """The call in a (signature-checked) webhook delivery, or the reason it
    is skipped — short and stable, a metric label."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return "bad_json"
    if not isinstance(envelope, dict):
        return "bad_json"
    if envelope.get("resource") != "telephony_calls":
        return "wrong_resource"
    try:
        return WebexCall.model_validate(envelope.get("data"))
    except ValueError:
        return "bad_call_data"


def parse_calls(payload: dict[str, Any] | None) -> tuple[list[WebexCall], int]:
    """Calls in a ``GET /telephony/calls`` answer, and how many items were
    unreadable (skipped so one odd call never hides the others)."""
    items = (payload or {}).get("items")
    if not isinstance(items, list):
        return [], 1
    calls: list[WebexCall] = []
    skipped = 0
    for item in items:
        try:
            calls.append(WebexCall.model_validate(item))
        except ValueError:
            skipped += 1
    return calls, skipped
