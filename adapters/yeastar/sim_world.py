"""The call world of the Yeastar P-Series simulator: calls, legs and phones, no I/O.

Theory of operation
-------------------
The world models what an Asterisk-based PBX does to its channels and reports
it the way Yeastar's OpenAPI does: every status change of a leg becomes a
30011 frame (one member by default, the whole call with
``full_member_lists``), a failed ring becomes a 30015, and a call whose last
member has gone becomes a 30012 CDR.  Frames leave through the ``emit``
callback in the order the PBX would send them; the server around the world
(:mod:`adapters.yeastar.simulator`) owns sockets, tokens and fault injection.

Each live :class:`Leg` has two call ids:

* ``call_id`` — the conversation it is in (who talks to whom once no
  consultation is going on).  When a leg hangs up, a lone partner left in the
  same conversation is hung up too (Asterisk tears down a two-party bridge).
* ``report_call_id`` — the call id frames and ``call/query`` name it under.
  The two differ only for the transferor with ``consult_call_id="unreturned"``,
  the variant in which the PBX keeps reporting the transferor under the
  original call while it consults the target under a new call id.

An attended transfer is a :class:`Consult` keyed by the transferor's channel
while it can still be operated (Asterisk's CALLING_TARGET / HESITANT /
CONSULTING / DOUBLECHECKING).  Every way out of it (complete, abort,
threeway, blond, the transferee hanging up, the PBX rebridging after a
failure) removes it, so a later operate on that transferor answers 60001
exactly as a PBX with no such transfer would.  Whatever is still ringing at
that point is moved into the transferee's call and finishes as an ordinary
ringing leg (answered → the ``ALERT`` members there become ``ANSWERED``;
failed → the two-party rule hangs up a lone transferee).

Unconfirmed PBX behaviour is chosen by :class:`SimConfig` (see
``consult_call_id``, ``hold_reported``, ``auto_rebridge_on_failure``); the
choices the simulator makes where no source says anything are noted where
they are made.

Supervisor actions (``call/listen``, ``call/park``, retrieving by dialling a
slot) are played the way Asterisk does them: a monitor is a spy channel of
the supervisor's extension, never a member of anyone's bridge (so it is not
a partner for the two-party rule nor for a transfer), reported under the
monitored call's id or a new call id (``monitor_call_id``) and hung up when
the monitored leg goes; a parked party stays on HOLD in its call, alone, its
parker hung up, until someone dials the slot (its leg then moves into the
retriever's call, answered) or it hangs up.

Time: scripted phones run on the running event loop's clock
(``loop.call_later``), so tests can use answer delays of a few tens of ms.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from engine.model import OPS, RINGING_STATUSES, TALKING_STATUSES, MemberKind

#: The serial number the simulated PBX puts in every event frame's ``sn``.
SERIAL = "3631A0SIM001"
#: The trunk external numbers are dialled through (channel ``PJSIP/trunk-<name>-endpoint-…``).
OUTBOUND_TRUNK = "siptrunk"

ERRMSG: dict[int, str] = {
    -2: "INTERNAL SERVER ERROR",
    -1: "FAILURE",
    0: "SUCCESS",
    10001: "INTERFACE NOT EXISTED",
    10004: "TOKEN EXPIRED",
    10005: "ACCESS DENIED",
    10009: "OPERATION FAILED",
    40001: "PARAMETER SYNTAX ERROR",
    40002: "PARAMETER ERROR",
    60001: "DATA NOT FOUND",
    60002: "MAX LIMITATION EXCEEDED",
    70004: "ACCOUNT IP BLOCKED",
    70087: "IP FORBIDDEN",
}

ConsultCallId: TypeAlias = Literal["new", "original", "unreturned"]
MonitorCallId: TypeAlias = Literal["monitored", "new"]
MONITOR_MODES = ("listen", "whisper", "barge")
Emit: TypeAlias = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Phone:
    """How a scripted phone behaves when it rings.

    ``answer_after=None`` never answers; ``reject_after`` declines (603) after
    that many seconds if it has not answered by then; ``busy`` and ``dnd``
    fail at once; ``hangup_after_answer`` hangs up that long after answering.
    Frozen so it can be the default of :class:`SimConfig`.
    """

    answer_after: float | None = 0.5
    busy: bool = False
    reject_after: float | None = None
    hangup_after_answer: float | None = None
    dnd: bool = False


@dataclass(slots=True)
class SimConfig:
    """What the simulated PBX is, including its unconfirmed behaviour.

    ``consult_call_id``: where the consultation (target) leg of an attended
    transfer is reported — under a ``"new"`` call id that the start request
    returns (the transferor is re-reported there too), under the
    ``"original"`` call id, or under a new call id that is ``"unreturned"``
    (the start returns the original call id and the transferor is not
    re-reported).  ``hold_reported``: whether HOLD statuses are emitted at
    all.  ``auto_rebridge_on_failure``: whether the PBX itself puts the
    transferor back with the transferee when the target fails or hangs up.
    ``monitor_call_id``: where a supervisor's monitor leg (``call/listen``) is
    reported — under the ``"monitored"`` leg's call id (the answer returns it)
    or under a ``"new"`` call id the answer returns.  ``parking_slots``: the
    numbers ``call/park`` parks in (lowest idle one when none is named).
    """

    client_id: str = "xferd-sim"
    client_secret: str = "sim-secret"
    access_token_ttl: float = 1800
    refresh_token_ttl: float = 86400
    idle_close_s: float = 60
    full_member_lists: bool = False
    consult_call_id: ConsultCallId = "new"
    hold_reported: bool = True
    auto_rebridge_on_failure: bool = False
    external: Phone = Phone(answer_after=0.5)
    seed: int = 0
    monitor_call_id: MonitorCallId = "monitored"
    parking_slots: tuple[str, ...] = tuple(str(slot) for slot in range(6000, 6010))
    #: ``Connection: close`` after each HTTP answer, as a P-Series does; False keeps
    #: connections open (to measure what reusing them would save).
    close_after_answer: bool = True


class SimError(Exception):
    """A request the PBX refuses: becomes ``{"errcode", "errmsg"}`` in the answer."""

    def __init__(self, errcode: int, invalid_param_list: list[dict[str, str]] | None = None) -> None:
        self.errcode = errcode
        self.errmsg = ERRMSG.get(errcode, "FAILURE")
        self.invalid_param_list = invalid_param_list
        super().__init__(f"{errcode} {self.errmsg}")


@dataclass(eq=False, slots=True)
class Leg:
    """One party's channel.  ``number`` is the extension for extension legs
    and the far end for trunk legs (inbound ``from``, outbound ``to``);
    ``peer`` is the trunk leg's other end (inbound ``to``, outbound ``from``)."""

    channel_id: str
    kind: MemberKind
    number: str
    call_id: str
    report_call_id: str
    status: str
    peer: str = ""
    trunk: str = ""
    #: what the leg was before HOLD (restored by unhold; shown while holds are not reported)
    before_hold: str = "ANSWER"
    #: call/dial: the callee to ring once this (caller) leg has answered
    dialing: str | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    #: a supervisor's monitor leg: the channel it monitors (its ``call_id`` is its own)
    monitoring: str | None = None

    @property
    def ringing(self) -> bool:
        return self.status in RINGING_STATUSES


@dataclass(eq=False, slots=True)
class Call:
    """What the 30012 CDR needs about a call id."""

    call_id: str
    call_from: str
    call_to: str
    type: Literal["Inbound", "Outbound", "Internal"]
    started: float
    answered: float | None = None
    failure: str | None = None


@dataclass(eq=False, slots=True)
class Parked:
    """A parked party waiting in a slot (``call/park_status``'s row)."""

    leg: Leg
    parker: str
    since: float


@dataclass(eq=False, slots=True)
class Consult:
    """An attended transfer that can still be operated (Asterisk's states with T present)."""

    transferor: Leg
    transferee: Leg
    target: Leg | None  # None once the target leg has gone (busy, declined, hung up)
    home: str  # the transferee's call id
    transferor_status: str  # the transferor's status in the home call, restored on rebridge
    with_target: bool = True  # whom the transferor talks to; swap toggles it


class World:
    """The PBX's calls.  Every public method changes the world synchronously and
    emits the frames that follow before it returns."""

    def __init__(self, config: SimConfig, emit: Emit) -> None:
        if config.consult_call_id not in ("new", "original", "unreturned"):
            raise ValueError(f"consult_call_id {config.consult_call_id!r} is not new, original or unreturned")
        self.config = config
        self._emit = emit
        self._extensions: dict[str, Phone] = {}
        self._external: dict[str, Phone] = {}
        self._legs: dict[str, Leg] = {}  # live legs in creation order
        self._calls: dict[str, Call] = {}  # by report call id
        self._consults: dict[str, Consult] = {}  # by transferor channel
        self._parked: dict[str, Parked] = {}  # by slot
        self._unmonitorable: set[str] = set()  # extensions whose Call Monitor is off
        self._channel_seq = itertools.count(1)
        self._call_seq = itertools.count(1)

    # ------------------------------------------------------------------ setup

    def add_extension(self, number: str, phone: Phone | None = None) -> None:
        self._extensions[number] = phone or Phone()

    def set_phone(self, number: str, phone: Phone) -> None:
        if number in self._extensions:
            self._extensions[number] = phone
        else:
            self._external[number] = phone

    def is_extension(self, number: str) -> bool:
        return number in self._extensions

    def forbid_monitoring(self, number: str) -> None:
        """Extension ``number`` may not be monitored (Extension › Features › Call Monitor off)."""
        self._unmonitorable.add(number)

    def clear(self) -> None:
        """Everything vanishes without a frame (a PBX restart)."""
        for leg in self._legs.values():
            _cancel_timers(leg)
        self._legs.clear()
        self._calls.clear()
        self._consults.clear()
        self._parked.clear()

    # ------------------------------------------------------------------ lookups

    def channel_of(self, number: str) -> str:
        for leg in reversed(self._legs.values()):
            if leg.number == number:
                return leg.channel_id
        raise KeyError(f"no live channel for {number}")

    def leg(self, channel_id: str) -> Leg:
        """The live leg, or 60001 (what the PBX answers for an unknown channel)."""
        try:
            return self._legs[channel_id]
        except KeyError:
            raise SimError(60001) from None

    def query(
        self, call_id: str | None = None, extension: str | None = None, call_type: str | None = None
    ) -> list[dict[str, Any]]:
        """``call/query``'s ``data``; an unknown ``call_id`` is 60001."""
        if call_id is not None and call_id not in self._calls:
            raise SimError(60001)
        result = []
        for call in self._calls.values():
            if call_id is not None and call.call_id != call_id:
                continue
            if call_type is not None and call.type.lower() != call_type:
                continue
            members = self._members(call.call_id)
            if extension is not None and not any(
                leg.kind == "extension" and leg.number == extension for leg in members
            ):
                continue
            result.append({"call_id": call.call_id, "members": [self._member(leg) for leg in members]})
        return result

    # ------------------------------------------------------------------ placing calls

    def place_call(
        self, caller: str, callee: str, *, answered: bool = True, inbound_trunk: str | None = None
    ) -> str:
        """A call from ``caller`` (an extension, or an external number coming in on
        ``inbound_trunk``) to ``callee``; answered at once or left to the callee's phone."""
        if inbound_trunk is None and caller not in self._extensions:
            raise ValueError(
                f"caller {caller} is not an extension (pass inbound_trunk for an external caller)"
            )
        call_type: Literal["Inbound", "Outbound", "Internal"] = (
            "Inbound" if inbound_trunk else "Internal" if callee in self._extensions else "Outbound"
        )
        call_id = self._new_call(caller, callee, call_type)
        if inbound_trunk is None:
            self._new_leg("extension", caller, call_id, "ALERT")
        else:
            self._new_leg("inbound", caller, call_id, "ALERT", peer=callee, trunk=inbound_trunk)
        callee_leg = self._new_callee(callee, call_id, caller_number=caller)
        if answered:
            self._answer(callee_leg)
        else:
            self._ring(callee_leg)
        return call_id

    def dial(self, caller: str, callee: str, *, auto_answer: bool = False) -> str:
        """``call/dial``: ring the caller's extension first, then the callee (a parking
        slot: the call parked there, which an empty slot does not have: 60001)."""
        if caller not in self._extensions:
            raise SimError(40002, [{"field": "caller", "value": caller}])
        if callee in self.config.parking_slots and callee not in self._parked:
            raise SimError(60001)  # [unconfirmed] what a PBX answers for an empty slot
        call_type: Literal["Outbound", "Internal"] = "Internal" if callee in self._extensions else "Outbound"
        call_id = self._new_call(caller, callee, call_type)
        leg = self._new_leg("extension", caller, call_id, "RING")
        leg.dialing = callee
        if auto_answer:
            self._answer(leg)
        else:
            self._ring(leg)
        return call_id

    # ------------------------------------------------------------------ per-leg control

    def answer(self, channel_id: str) -> None:
        leg = self.leg(channel_id)
        if not leg.ringing:
            raise SimError(10009)
        self._answer(leg)

    def hold(self, channel_id: str) -> None:
        leg = self.leg(channel_id)
        if leg.status not in TALKING_STATUSES:
            raise SimError(10009)
        self._set(leg, "HOLD")

    def unhold(self, channel_id: str) -> None:
        leg = self.leg(channel_id)
        if leg.status != "HOLD":
            raise SimError(10009)
        self._set(leg, leg.before_hold)

    def hangup(self, channel_id: str) -> None:
        """A party hangs up (``call/hangup`` or the person putting the phone down)."""
        leg = self.leg(channel_id)
        consult = self._consult_involving(leg)
        if consult is None:
            self._hangup_plain(leg)
        elif leg is consult.transferor:
            if consult.target is None:
                del self._consults[leg.channel_id]
                self._bye(leg)
                self._bye(consult.transferee)
            else:
                # Asterisk: complete when consulting, "blond" when the target still rings.
                self._complete(consult)
        elif leg is consult.transferee:
            # Asterisk FAIL: the transferor stays with the target, if there is one.
            del self._consults[consult.transferor.channel_id]
            self._bye(leg)
            if consult.target is None:
                self._bye(consult.transferor)
            elif consult.target.status == "HOLD":
                self._set(consult.target, "ANSWER")
        else:
            self._bye(leg)
            consult.target = None
            if self.config.auto_rebridge_on_failure:
                del self._consults[consult.transferor.channel_id]
                self._rebridge(consult)

    # ------------------------------------------------------------------ supervisor actions

    def monitor(self, channel_id: str, monitor: str, mode: str) -> str:
        """``call/listen``: extension ``monitor`` is rung and, once it answers, spies on
        ``channel_id`` in ``mode``.  Returns the call id the answer carries (see
        ``monitor_call_id``).  Refusals: a bad mode or a monitor that is not an
        extension 40002 naming the field, an unknown channel 60001, a channel that is
        not an extension's leg in a call (still ringing), is not allowed to be monitored or is already
        monitored 10009 ([unconfirmed]: the PBX's errcode for these is not documented)."""
        if mode not in MONITOR_MODES:
            raise SimError(40002, [{"field": "type", "value": mode}])
        if monitor not in self._extensions:
            raise SimError(40002, [{"field": "monitor", "value": monitor}])
        watched = self.leg(channel_id)
        if (
            watched.kind != "extension"
            or watched.monitoring is not None
            or watched.status in ("RING", "EARLYMEDIA")  # a phone still ringing is in no call yet
            or watched.number in self._unmonitorable
            or watched.number == monitor
            or any(leg.monitoring == channel_id for leg in self._legs.values())
        ):
            raise SimError(10009)
        if self.config.monitor_call_id == "new":
            report = self._new_call(monitor, watched.number, "Internal")
        else:
            report = watched.report_call_id
        leg = self._new_leg("extension", monitor, report, "RING", monitoring=channel_id)
        self._ring(leg)
        return report

    def park(self, channel_id: str, slot: str | None) -> tuple[str, str]:
        """``call/park``: the party ``channel_id`` waits on HOLD in ``slot`` (or the lowest
        idle one); its partner, having heard the slot number, is hung up.  Returns (call
        id, slot).  A leg that is not talking to exactly one party, or takes part in an
        attended transfer, is 10009; a slot not configured 40002; a busy slot or no idle
        one 10009."""
        leg = self.leg(channel_id)
        if slot is not None and slot not in self.config.parking_slots:
            raise SimError(40002, [{"field": "parking_slot", "value": slot}])
        parker = self._only_partner(leg) if leg.monitoring is None else None
        if parker is None:
            raise SimError(10009)
        free = [s for s in self.config.parking_slots if s not in self._parked]
        if slot is None:
            slot = free[0] if free else None
        if slot is None or slot not in free:
            raise SimError(10009)
        self._parked[slot] = Parked(leg, parker.number, time.time())
        leg.call_id = f"park:{slot}"
        self._set(leg, "HOLD")
        self._bye(parker)
        return leg.report_call_id, slot

    def park_status(self) -> list[dict[str, Any]]:
        """``call/park_status``'s ``data``."""
        now = time.time()
        return [
            {
                "parker": parked.parker,
                "parked_party": parked.leg.number,
                "parking_slot": slot,
                "park_time": round(now - parked.since),
                "channel_id": parked.leg.channel_id,
            }
            for slot, parked in self._parked.items()
        ]

    def _retrieve(self, caller: Leg, slot: str) -> None:
        """The retriever answered its ``call/dial`` of ``slot``: it talks to the parked party."""
        parked = self._parked.pop(slot, None)
        if parked is None:  # the parked party hung up meanwhile
            self.hangup(caller.channel_id)
            return
        self._set(caller, "ANSWERED")
        call = self._calls.get(caller.report_call_id)
        if call is not None and call.answered is None:
            call.answered = time.time()
        parked.leg.call_id = caller.call_id
        self._move(parked.leg, caller.report_call_id, "ANSWER")

    # ------------------------------------------------------------------ transfers

    def blind_transfer(self, channel_id: str, number: str) -> str:
        """Move member ``channel_id`` to ``number``; its partner leaves the call."""
        moved = self.leg(channel_id)
        partner = self._only_partner(moved)
        self._bye(partner)
        self._set(moved, "ALERT")
        self._ring(self._new_callee(number, moved.call_id, caller_number=moved.number))
        return moved.report_call_id

    def attended_start(self, channel_id: str, number: str) -> str:
        """The transferor consults ``number``; the transferee is held.  Returns the
        call id the start request answers with (see ``consult_call_id``)."""
        transferor = self.leg(channel_id)
        transferee = self._only_partner(transferor)
        home = transferor.call_id
        variant = self.config.consult_call_id
        if variant == "original":
            consult_call = home
        else:
            consult_call = self._new_call(
                transferor.number, number, "Internal" if number in self._extensions else "Outbound"
            )
        consult = Consult(transferor, transferee, None, home, transferor.status)
        self._consults[channel_id] = consult
        self._set(transferee, "HOLD")
        if variant == "new":
            self._move(transferor, consult_call, "ALERT")
        elif variant == "unreturned":
            transferor.call_id = consult_call
        consult.target = self._new_callee(number, consult_call, caller_number=transferor.number)
        self._ring(consult.target)
        return consult_call if variant == "new" else home

    def attended_operate(self, channel_id: str, op: str) -> str:
        """``attended_operate`` on the transferor's channel; returns the transferee's call id."""
        if op not in OPS:
            raise SimError(40002, [{"field": "attended_operate", "value": op}])
        consult = self._consults.get(channel_id)
        if consult is None:
            raise SimError(60001)
        if op == "abort":
            del self._consults[channel_id]
            self._rebridge(consult)
            return consult.home
        target = consult.target
        if target is None:
            raise SimError(10009)  # only abort makes sense once the target has gone
        if op == "complete":
            self._complete(consult)
        elif op == "swap":
            consult.with_target = not consult.with_target
            self._set(consult.transferee, "HOLD" if consult.with_target else "ANSWER")
            if not target.ringing:
                self._set(target, "ANSWER" if consult.with_target else "HOLD")
        else:  # threeway: everyone in the transferee's call; a ringing target joins when it answers
            del self._consults[channel_id]
            self._set(consult.transferee, "ANSWER")
            self._return_transferor(consult)
            self._move(target, consult.home, target.status if target.ringing else "ANSWER")
        return consult.home

    # ------------------------------------------------------------------ internals: transfers

    def _complete(self, consult: Consult) -> None:
        """The transferor leaves; the transferee and the target talk in the transferee's
        call.  A target still ringing is a blond transfer: the transferee hears ringback
        (ALERT) and is answered by the target's answer."""
        target = consult.target
        assert target is not None
        del self._consults[consult.transferor.channel_id]
        self._bye(consult.transferor)
        if target.ringing:
            self._set(consult.transferee, "ALERT")
            self._move(target, consult.home, target.status)
        else:
            self._set(consult.transferee, "ANSWER")
            self._move(target, consult.home, "ANSWER")

    def _rebridge(self, consult: Consult) -> None:
        """Asterisk REBRIDGE/RESUME: the target goes, the transferor is back with the transferee."""
        if consult.target is not None:
            self._bye(consult.target)
        self._return_transferor(consult)
        self._set(consult.transferee, "ANSWER")

    def _return_transferor(self, consult: Consult) -> None:
        transferor = consult.transferor
        if transferor.report_call_id != consult.home:
            self._move(transferor, consult.home, consult.transferor_status)
        transferor.call_id = consult.home

    def _consult_involving(self, leg: Leg) -> Consult | None:
        for consult in self._consults.values():
            if leg in (consult.transferor, consult.transferee, consult.target):
                return consult
        return None

    def _only_partner(self, leg: Leg) -> Leg:
        """The one party ``leg`` talks to; a transfer needs exactly that (else 10009)."""
        partners = self._partners(leg)
        if (
            leg.status not in TALKING_STATUSES
            or len(partners) != 1
            or self._consult_involving(leg) is not None
            or self._consult_involving(partners[0]) is not None
        ):
            raise SimError(10009)
        return partners[0]

    # ------------------------------------------------------------------ internals: legs

    def _ring(self, leg: Leg) -> None:
        """Run the leg's phone script: fail at once, or arm answer/decline timers."""
        phone = self._phone(leg)
        if phone.dnd:
            self._ring_failed(leg, "DND", report_member=False)
        elif phone.busy:
            self._ring_failed(leg, "486 Busy Here")
        else:
            if phone.answer_after is not None:
                self._later(leg, phone.answer_after, self._answer)
            if phone.reject_after is not None:
                self._later(leg, phone.reject_after, lambda leg: self._ring_failed(leg, "603 Declined"))

    def _answer(self, leg: Leg) -> None:
        if not leg.ringing:
            return
        _cancel_timers(leg)
        call = self._calls.get(leg.report_call_id)
        if leg.dialing is not None:
            # call/dial: the caller picked up; now the PBX calls the callee.
            callee, leg.dialing = leg.dialing, None
            if callee in self.config.parking_slots:
                self._retrieve(leg, callee)
                return
            self._set(leg, "ALERT")
            self._ring(self._new_callee(callee, leg.call_id, caller_number=leg.number))
        else:
            self._set(leg, "ANSWER")
            if call is not None and call.answered is None:
                call.answered = time.time()
            for other in self._partners(leg):
                if other.status == "ALERT":
                    self._set(other, "ANSWERED")
            consult = self._consult_involving(leg)
            if consult is not None and not consult.with_target:
                self._set(leg, "HOLD")  # answered while the transferor is back with the transferee
        hangup_after = self._phone(leg).hangup_after_answer
        if hangup_after is not None:
            self._later(leg, hangup_after, lambda leg: self.hangup(leg.channel_id))

    def _ring_failed(self, leg: Leg, reason: str, *, report_member: bool = True) -> None:
        if not leg.ringing:
            return
        call = self._calls.get(leg.report_call_id)
        if call is not None:
            call.failure = "BUSY" if reason in ("486 Busy Here", "DND") else "NO ANSWER"
        members = [self._member(leg)] if report_member else None
        self._emit(30015, {"call_id": leg.report_call_id, "reason": reason, "members": members})
        self.hangup(leg.channel_id)

    def _hangup_plain(self, leg: Leg) -> None:
        partners = self._partners(leg)
        self._bye(leg)
        if len(partners) == 1:
            self._bye(partners[0])

    def _partners(self, leg: Leg) -> list[Leg]:
        return [other for other in self._legs.values() if other.call_id == leg.call_id and other is not leg]

    def _set(self, leg: Leg, status: str, *, moved: bool = False) -> None:
        """Change a leg's status and report it; no frame when nothing changed."""
        if status == leg.status and not moved:
            return
        if status == "HOLD" and leg.status != "HOLD":
            leg.before_hold = leg.status
        leg.status = status
        if status != "HOLD" or self.config.hold_reported:
            self._report(leg)

    def _move(self, leg: Leg, call_id: str, status: str) -> None:
        """Re-report ``leg`` under ``call_id`` (bridges merged); its old call may end."""
        old = leg.report_call_id
        leg.call_id = leg.report_call_id = call_id
        self._set(leg, status, moved=old != call_id)
        self._end_if_empty(old)

    def _bye(self, leg: Leg) -> None:
        if self._legs.pop(leg.channel_id, None) is None:
            return
        _cancel_timers(leg)
        leg.status = "BYE"
        self._report(leg, gone=True)
        for slot in [slot for slot, parked in self._parked.items() if parked.leg is leg]:
            del self._parked[slot]
        # A monitor's spy channel ends with the leg it monitors.
        for spy in [other for other in self._legs.values() if other.monitoring == leg.channel_id]:
            self._bye(spy)
        self._end_if_empty(leg.report_call_id)

    def _end_if_empty(self, call_id: str) -> None:
        if call_id not in self._calls or self._members(call_id):
            return
        call = self._calls.pop(call_id)
        now = time.time()
        self._emit(
            30012,
            {
                "call_id": call.call_id,
                "time_start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(call.started)),
                "call_from": call.call_from,
                "call_to": call.call_to,
                "call_duration": round(now - call.started),
                "talk_duration": round(now - call.answered) if call.answered is not None else 0,
                "status": "ANSWERED" if call.answered is not None else call.failure or "NO ANSWER",
                "type": call.type,
                "recording": "",
                "did_number": "",
            },
        )

    def _report(self, leg: Leg, *, gone: bool = False) -> None:
        if self.config.full_member_lists:
            members = [self._member(other) for other in self._members(leg.report_call_id)]
            if gone:
                members.append(self._member(leg))
        else:
            members = [self._member(leg)]
        self._emit(30011, {"call_id": leg.report_call_id, "members": members})

    def _member(self, leg: Leg) -> dict[str, Any]:
        status = leg.status
        if status == "HOLD" and not self.config.hold_reported:
            status = leg.before_hold
        if leg.kind == "extension":
            fields: dict[str, str] = {"number": leg.number}
        elif leg.kind == "inbound":
            fields = {"from": leg.number, "to": leg.peer, "trunk_name": leg.trunk}
        else:
            fields = {"from": leg.peer, "to": leg.number, "trunk_name": leg.trunk}
        fields.update(channel_id=leg.channel_id, member_status=status, call_path="")
        return {leg.kind: fields}

    def _members(self, call_id: str) -> list[Leg]:
        return [leg for leg in self._legs.values() if leg.report_call_id == call_id]

    def _phone(self, leg: Leg) -> Phone:
        if leg.kind == "extension":
            return self._extensions.get(leg.number, Phone())
        return self._external.get(leg.number, self.config.external)

    def _later(self, leg: Leg, delay: float, action: Callable[[Leg], None]) -> None:
        """Run ``action(leg)`` after ``delay`` s on the loop's clock, unless the leg has gone."""

        def fire() -> None:
            if self._legs.get(leg.channel_id) is leg:
                action(leg)

        leg.timers.append(asyncio.get_running_loop().call_later(delay, fire))

    def _new_call(
        self, call_from: str, call_to: str, call_type: Literal["Inbound", "Outbound", "Internal"]
    ) -> str:
        call_id = f"{int(time.time())}.{next(self._call_seq)}"
        self._calls[call_id] = Call(call_id, call_from, call_to, call_type, time.time())
        return call_id

    def _new_callee(self, number: str, call_id: str, *, caller_number: str) -> Leg:
        """A ringing leg for ``number``: an extension, or an outbound trunk leg for anything else."""
        if number in self._extensions:
            return self._new_leg("extension", number, call_id, "RING")
        return self._new_leg("outbound", number, call_id, "RING", peer=caller_number, trunk=OUTBOUND_TRUNK)

    def _new_leg(
        self,
        kind: MemberKind,
        number: str,
        call_id: str,
        status: str,
        *,
        peer: str = "",
        trunk: str = "",
        monitoring: str | None = None,
    ) -> Leg:
        seq = next(self._channel_seq)
        endpoint = number if kind == "extension" else f"trunk-{trunk}-endpoint"
        channel = f"PJSIP/{endpoint}-{seq:08x}"
        # A monitor is in a conversation of its own (nobody's partner), reported under call_id.
        conversation = f"monitor:{channel}" if monitoring is not None else call_id
        leg = Leg(channel, kind, number, conversation, call_id, status, peer, trunk, monitoring=monitoring)
        self._legs[leg.channel_id] = leg
        self._report(leg)
        return leg


def _cancel_timers(leg: Leg) -> None:
    for handle in leg.timers:
        handle.cancel()
    leg.timers.clear()
