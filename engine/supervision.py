"""Supervisor call actions and the engine: monitor legs stay out of transfers.

Theory of operation
===================

A supervisor can listen to a call, whisper to the agent, barge into the
call (Yeastar ``call/listen``), park a call for someone else to retrieve,
and hang up any leg.  None of these is a transfer decision: they are not
looked up in the transfer chart, and most of them change nothing in the
engine.  The engine needs to hear of them for three reasons only.

1. **Monitor legs.**  Monitoring makes the PBX ring the supervisor's
   extension and connect it to the monitored call: a new leg that 30011
   events report like any other, under a call id the documentation does not
   settle (the monitored call's, or a new one the request returns).  Left
   alone it would be taken for a consultation's target (it appears during a
   consultation, in a call the transferor is part of), for the other party
   of the monitored leg (a transfer from that leg would find two parties and
   no transferee), for an extension's "active call", or for a rule's
   ``call.answered``.  So the service tells the engine before the request
   leaves (:class:`~engine.model.MonitorRequested`: extension X is about to
   monitor leg Y) and once the PBX answered
   (:class:`~engine.model.MonitorAnswered`).  From the request on:

   * the first new leg of extension X within :data:`MONITOR_CLAIM_S` is the
     monitor's leg (whatever call it is reported in: the answer naming the
     call may come after the leg's first frame);
   * where the monitor's leg carries no number to know it by (Webex, whose
     barge-in is a call of its own: ``monitor`` is None), every leg of the
     call the PBX returned belongs to the session.  Not on Yeastar, where
     that call id may well be the consultation's: its target is no monitor.

   A monitor leg is kept in the registry and shown in the calls (with
   ``monitoring`` and ``mode``), but it is never routed to a transfer, never
   a transfer's party, never an extension's active call, never a rule
   trigger (:meth:`Monitors.observe` filters it out of the leg changes).  A
   refused request releases what it claimed; an unknown outcome keeps the
   session (the PBX may have acted) until its claim window has passed.  A
   session ends with its legs.

2. **Hanging up a transfer's leg.**  :class:`~engine.model.HangupRequested`
   on a leg of an active transfer becomes that transfer's own ``hangup``
   request (:meth:`engine.transfer.Transfer.hangup_leg`), so a transfer still
   has one request in flight at most and none after a final state.  Once the
   PBX confirms, the leg's departure is the transfer's hang-up stimulus
   (transferor / transferee / target hang-up), decided by the chart exactly
   as if that person had put the phone down.  While the transfer has a
   request in flight (or is idle) the hang-up is refused (409), as operator
   ops are.  A leg no active transfer holds is the service's to hang up
   directly: no command.

3. **Parking a transfer's leg** is refused (``transfer_in_progress``):
   parking would pull the leg out from under the consultation.  Any other
   leg may be parked; the engine then just sees its frames.

Sessions live in memory only: after a restart the monitor legs still up are
ordinary legs again (they end with the monitored call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import Rejected
from engine.model import HangupRequested, MonitorAnswered, MonitorRequested, ParkRequested
from engine.registry import CallRegistry, LegChange

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.transfer import Transfer

#: How long (event-time seconds) after the request a new leg of the monitor's
#: extension is taken for its monitor leg.  The PBX rings the monitor at once;
#: a phone that is not answered within this time was not part of it.
MONITOR_CLAIM_S = 30.0

SupervisorEvent = MonitorRequested | MonitorAnswered | HangupRequested | ParkRequested


@dataclass(slots=True)
class MonitorSession:
    """One monitor session, from the request until its legs have gone."""

    session_id: str
    monitor: str | None
    channel_id: str | None
    mode: str
    requested_at: float
    #: the monitored leg's call when the request was made
    monitored_call: str | None
    #: the call id the PBX's answer named (None: not answered yet, or none given)
    call_id: str | None = None
    refused: bool = False
    #: the monitor's own extension leg has been seen
    seen: bool = False
    legs: set[str] = field(default_factory=set)

    def claims(self, change: LegChange, at: float) -> bool:
        """Whether a new leg belongs to this session (see the module docstring)."""
        if self.refused:
            return False
        if (
            not self.seen
            and self.monitor is not None
            and change.kind == "extension"
            and change.number == self.monitor
            and at - self.requested_at <= MONITOR_CLAIM_S
        ):
            return True
        return self.own_call() is not None and change.call_id == self.call_id

    def own_call(self) -> str | None:
        """The call the PBX returned when it is the monitor's own call, all of whose legs are
        the session's: only for a monitor known by no number (see the module docstring)."""
        return self.call_id if self.monitor is None else None


class Monitors:
    """The live monitor sessions and the legs they claimed."""

    def __init__(self, registry: CallRegistry) -> None:
        self.registry = registry
        self.sessions: dict[str, MonitorSession] = {}
        #: monitor leg → the fields its call view adds; also the registry's ``hidden``
        self.legs: dict[str, dict[str, str]] = {}
        self._owner: dict[str, str] = {}  # monitor leg → session id
        registry.hidden = self.legs

    def is_monitor(self, channel_id: str) -> bool:
        return channel_id in self.legs

    # -- events ------------------------------------------------------------
    def requested(self, event: MonitorRequested) -> None:
        monitored_call: str | None = None
        if event.channel_id is not None:
            leg = self.registry.leg(event.channel_id)
            if leg is None:
                raise Rejected(
                    "not_found", f"channel {event.channel_id} is not in any call the service tracks"
                )
            if leg.channel_id in self.legs:
                raise Rejected("not_allowed", f"channel {event.channel_id} is itself a monitor leg")
            monitored_call = leg.call_id
        if event.session_id in self.sessions:
            raise Rejected("conflict", f"monitor session {event.session_id} is already in use")
        self.sessions[event.session_id] = MonitorSession(
            event.session_id, event.monitor, event.channel_id, event.mode, event.at, monitored_call
        )

    def answered(self, event: MonitorAnswered) -> None:
        session = self.sessions.get(event.session_id)
        if session is None:
            return
        if event.outcome == "refused":
            # The PBX did not act: a leg claimed meanwhile is an ordinary call after all.
            session.refused = True
            for channel in list(session.legs):
                self._release(channel)
            self.sessions.pop(session.session_id, None)
            return
        session.call_id = event.call_id
        own = session.own_call()
        if own is not None:
            # Legs of the monitor's own call reported before the answer named it.
            for leg in list(self.registry.calls.get(own, {}).values()):
                if leg.channel_id not in self.legs and leg.created >= session.requested_at:
                    self._claim(session, leg.channel_id, leg.kind == "extension")

    def observe(self, at: float, changes: list[LegChange]) -> list[LegChange]:
        """``changes`` without those of monitor legs, claiming new legs for sessions on the way."""
        if not self.sessions:
            return changes
        kept: list[LegChange] = []
        for change in changes:
            channel = change.channel_id
            if channel in self.legs:
                if change.status == "BYE":
                    self._release(channel)
                continue
            if change.old_status is None and change.status != "BYE" and self._claimed(change, at):
                continue
            kept.append(change)
        self._expire(at)
        return kept

    # -- internals ---------------------------------------------------------
    def _claimed(self, change: LegChange, at: float) -> bool:
        # Oldest session first: two supervisors of one extension are not told apart anyway.
        for session in self.sessions.values():
            if session.claims(change, at):
                self._claim(session, change.channel_id, change.kind == "extension")
                return True
        return False

    def _claim(self, session: MonitorSession, channel: str, own_leg: bool) -> None:
        if own_leg and session.monitor is not None:
            session.seen = True
        session.legs.add(channel)
        self._owner[channel] = session.session_id
        extra = {"mode": session.mode}
        if session.channel_id is not None:
            extra["monitoring"] = session.channel_id
        self.legs[channel] = extra

    def _release(self, channel: str) -> None:
        self.legs.pop(channel, None)
        session = self.sessions.get(self._owner.pop(channel, ""))
        if session is not None:
            session.legs.discard(channel)
            if not session.legs and (session.seen or session.monitor is None):
                del self.sessions[session.session_id]  # the monitor's legs have gone: the session is over

    def _expire(self, at: float) -> None:
        """Forget sessions that never got their leg within the claim window (memory stays bounded)."""
        stale = [
            s.session_id
            for s in self.sessions.values()
            if not s.legs and at - s.requested_at > MONITOR_CLAIM_S
        ]
        for session_id in stale:
            del self.sessions[session_id]


def supervise(engine: Engine, event: SupervisorEvent) -> Transfer | None:
    """Apply a supervisor action's event; the transfer it touched, if any.

    Raises :class:`~engine.errors.Rejected` (nothing changed) for an unknown
    channel (``not_found``), a park of a transfer's leg
    (``transfer_in_progress``) and a hang-up the transfer cannot take now
    (``not_allowed``).
    """
    monitors = engine.monitors
    if isinstance(event, MonitorRequested):
        monitors.requested(event)
        return None
    if isinstance(event, MonitorAnswered):
        monitors.answered(event)
        return None
    channel = event.channel_id
    if engine.registry.leg(channel) is None:
        raise Rejected("not_found", f"channel {channel} is not in any call the service tracks")
    transfer_id = engine.active_transfer(channel)
    if isinstance(event, ParkRequested):
        if transfer_id is not None:
            raise Rejected(
                "transfer_in_progress",
                f"channel {channel} takes part in active transfer {transfer_id}: parking it would pull it "
                "out of the consultation; operate the transfer (abort) first",
            )
        return None
    if transfer_id is None:
        return None  # not a transfer's leg: the service hangs it up itself
    transfer = engine.get(transfer_id)
    assert transfer is not None
    transfer.hangup_leg(event.at, channel)
    return transfer
