"""The calls registry: what the PBX says is going on, merged into one view.

Yeastar's 30011 frames usually carry only the member that changed, may carry
the whole member list, may arrive twice or out of order, and a channel can
move to another call id during a transfer.  The registry therefore keys every
leg by its channel id (the one id that identifies a leg for its whole life)
and groups legs under the call id they were last reported in.

Rules that keep it right and small:

* A frame is never taken as a snapshot unless it says so (``full``); legs not
  mentioned stay as they were.
* ``BYE`` removes a leg.  Its channel id is remembered (a *tombstone*) for
  :data:`TOMBSTONE_TTL` seconds so that a late or duplicated update for a
  dead channel cannot resurrect it: channel ids are never reused.
* A call with no legs left is forgotten, so memory follows the live calls,
  not the history.
* A reconciliation snapshot is the truth: calls and legs absent from it end,
  legs present in it live (even if tombstoned by a reordered frame).

:meth:`CallRegistry.apply` returns the :class:`LegChange` list that the
transfer engine reacts to.  It never raises on odd input.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

from engine.errors import Rejected
from engine.memory import give_back
from engine.model import (
    TALKING_STATUSES,
    CallEnded,
    CallFailed,
    CallsSnapshot,
    CallUpdated,
    Member,
)


def shrinkable(size: int, peak: int) -> bool:
    """Whether a dict that once held ``peak`` entries and now holds ``size``
    is worth rebuilding to give its memory back (Python dicts never shrink)."""
    return peak > 4096 and size * 8 < peak


#: Statuses of a leg being called (not of a caller hearing ringback).
CALLEE_RINGING = frozenset({"RING", "EARLYMEDIA"})
#: How long (event-time seconds) a hung-up channel id is remembered.
TOMBSTONE_TTL = 300.0


class Leg:
    """One live leg.  Mutable, slotted: there may be 100,000 of these."""

    __slots__ = ("call_id", "channel_id", "created", "kind", "number", "peer", "since", "status", "trunk")

    def __init__(self, call_id: str, member: Member, at: float) -> None:
        self.call_id = call_id
        self.channel_id = member.channel_id
        self.kind = member.kind
        self.number = member.number
        self.status = member.status
        self.since = at  # last status change
        self.created = at  # first seen
        self.trunk = member.trunk
        self.peer = member.peer

    def as_member(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "number": self.number,
            "channel_id": self.channel_id,
            "status": self.status,
        }


class LegChange(NamedTuple):
    """A leg appeared, changed status, moved to another call, or ended.

    ``old_status`` is None for a leg first seen; ``status`` is ``"BYE"`` when
    the leg has gone.  ``failed`` carries a 30015 reason when the change was
    caused by a failed call attempt.  A named tuple, not a frozen dataclass:
    one is made per frame, and a tuple is made four times faster.
    """

    channel_id: str
    call_id: str
    kind: str
    number: str
    old_status: str | None
    status: str
    moved: bool = False
    failed: str | None = None


class CallRegistry:
    """Calls and legs keyed by channel id; see the module docstring."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Leg]] = {}
        self.legs: dict[str, Leg] = {}
        self._tombstones: OrderedDict[str, float] = OrderedDict()
        self._peak = 0  # most legs held at once since the last shrink
        self._tombstone_peak = 0
        self._prune_at = 0.0  # no tombstone expires before this (event time)
        #: Legs that are nobody's call of their own — a supervisor's monitor legs
        #: (engine.supervision keeps this mapping) — with the fields their call view
        #: adds.  They are never another leg's party nor an extension's active call.
        self.hidden: Mapping[str, Mapping[str, str]] = {}

    # -- updates -----------------------------------------------------------

    def apply(self, event: CallUpdated | CallEnded | CallFailed | CallsSnapshot) -> list[LegChange]:
        """Merge one PBX event; return what changed (possibly nothing)."""
        self._prune(event.at)
        if type(event) is CallUpdated and len(event.members) == 1 and not event.full:
            # The common frame (a single-member delta): no list to build for it.
            change = self._merge(event.call_id, event.members[0], event.at, trusted=False)
            changes = [change] if change is not None else []
        elif isinstance(event, CallUpdated):
            changes = self._update(event.call_id, event.members, event.at, full=event.full)
        elif isinstance(event, CallEnded):
            changes = self._end_call(event.call_id, event.at)
        elif isinstance(event, CallFailed):
            changes = self._failed(event)
        else:
            changes = self._snapshot(event)
        self._shrink()
        return changes

    def _shrink(self) -> None:
        """Python dicts never give memory back: after a peak (a busy hour, a
        benchmark) rebuild them once they hold under an eighth of it, then
        hand the freed pages back to the system (see :mod:`engine.memory`)."""
        rebuilt = False
        size = len(self.legs)
        if size > self._peak:
            self._peak = size
        elif shrinkable(size, self._peak):
            self.legs = dict(self.legs)
            self.calls = dict(self.calls)
            self._peak = size
            rebuilt = True
        size = len(self._tombstones)
        if size > self._tombstone_peak:
            self._tombstone_peak = size
        elif shrinkable(size, self._tombstone_peak):
            self._tombstones = OrderedDict(self._tombstones)
            self._tombstone_peak = size
            rebuilt = True
        if rebuilt:
            give_back()

    def _update(
        self, call_id: str, members: tuple[Member, ...], at: float, *, full: bool, trusted: bool = False
    ) -> list[LegChange]:
        changes: list[LegChange] = []
        for member in members:
            change = self._merge(call_id, member, at, trusted=trusted)
            if change is not None:
                changes.append(change)
        if full:
            listed = {m.channel_id for m in members}
            for channel_id in [c for c in self.calls.get(call_id, {}) if c not in listed]:
                changes.append(self._remove(self.legs[channel_id], at))
        return changes

    def _merge(self, call_id: str, member: Member, at: float, *, trusted: bool) -> LegChange | None:
        channel_id = member.channel_id
        leg = self.legs.get(channel_id)
        if member.status == "BYE":
            if leg is not None:
                return self._remove(leg, at)
            if channel_id in self._tombstones:
                return None  # duplicate BYE
            self._tombstones[channel_id] = at
            # A BYE for a leg never seen still matters: a target that failed
            # before its RING frame reached us.
            return LegChange(channel_id, call_id, member.kind, member.number, None, "BYE")
        if leg is None:
            if channel_id in self._tombstones:
                if not trusted:
                    return None  # late frame for a dead channel
                del self._tombstones[channel_id]
            leg = Leg(call_id, member, at)
            self.legs[channel_id] = leg
            self.calls.setdefault(call_id, {})[channel_id] = leg
            return LegChange(channel_id, call_id, leg.kind, leg.number, None, leg.status)
        moved = leg.call_id != call_id
        if moved:
            self._detach(leg)
            leg.call_id = call_id
            self.calls.setdefault(call_id, {})[channel_id] = leg
        if leg.status == member.status and not moved:
            return None  # duplicate
        old = leg.status
        leg.status = member.status
        leg.since = at
        if member.number and member.number != leg.number:
            leg.number = member.number
        return LegChange(channel_id, call_id, leg.kind, leg.number, old, leg.status, moved=moved)

    def _failed(self, event: CallFailed) -> list[LegChange]:
        """A failed attempt: legs of that call still ringing cannot ring on.

        Talking legs of the same call id are left alone: with some PBX
        variants the transferor is reported under the consultation's call id.
        """
        changes: list[LegChange] = []
        for member in event.members:
            if member.status in CALLEE_RINGING or member.status == "BYE":
                leg = self.legs.get(member.channel_id)
                if leg is not None:
                    changes.append(self._remove(leg, event.at, failed=event.reason))
                elif member.channel_id not in self._tombstones:
                    self._tombstones[member.channel_id] = event.at
                    changes.append(
                        LegChange(
                            member.channel_id,
                            event.call_id,
                            member.kind,
                            member.number,
                            None,
                            "BYE",
                            failed=event.reason,
                        )
                    )
        for leg in list(self.calls.get(event.call_id, {}).values()):
            # RING/EARLYMEDIA are callee legs; ALERT is a caller hearing
            # ringback (the transferor, with some PBX variants): it stays.
            if leg.status in CALLEE_RINGING:
                changes.append(self._remove(leg, event.at, failed=event.reason))
        return changes

    def _end_call(self, call_id: str, at: float) -> list[LegChange]:
        return [self._remove(leg, at) for leg in list(self.calls.get(call_id, {}).values())]

    def _snapshot(self, event: CallsSnapshot) -> list[LegChange]:
        changes: list[LegChange] = []
        alive = {m.channel_id for call in event.calls for m in call.members if m.status != "BYE"}
        for leg in [leg for leg in self.legs.values() if leg.channel_id not in alive]:
            changes.append(self._remove(leg, event.at))
        for call in event.calls:
            changes.extend(self._update(call.call_id, call.members, event.at, full=False, trusted=True))
        return changes

    def _remove(self, leg: Leg, at: float, failed: str | None = None) -> LegChange:
        self._detach(leg)
        del self.legs[leg.channel_id]
        self._tombstones[leg.channel_id] = at
        return LegChange(leg.channel_id, leg.call_id, leg.kind, leg.number, leg.status, "BYE", failed=failed)

    def _detach(self, leg: Leg) -> None:
        call = self.calls.get(leg.call_id)
        if call is not None:
            call.pop(leg.channel_id, None)
            if not call:
                del self.calls[leg.call_id]

    def _prune(self, now: float) -> None:
        if now < self._prune_at:
            return  # the oldest tombstone is younger than the TTL (checked once per event)
        tombstones = self._tombstones
        while tombstones:
            channel_id, at = next(iter(tombstones.items()))
            if now - at < TOMBSTONE_TTL:
                # Tombstones are filed oldest first and a refiled one only gets younger,
                # so nothing expires before this one does.
                self._prune_at = at + TOMBSTONE_TTL
                return
            del tombstones[channel_id]
        self._prune_at = 0.0

    # -- queries -----------------------------------------------------------

    def leg(self, channel_id: str) -> Leg | None:
        return self.legs.get(channel_id)

    def others_in_call(self, channel_id: str) -> list[Leg]:
        """The legs sharing a call with ``channel_id`` (not itself, nor monitor legs)."""
        leg = self.legs.get(channel_id)
        if leg is None:
            return []
        hidden = self.hidden
        return [
            other
            for other in self.calls.get(leg.call_id, {}).values()
            if other.channel_id != channel_id and other.channel_id not in hidden
        ]

    def active_channel(self, extension: str) -> Leg:
        """The channel of ``extension`` a person means by "its call".

        One live leg: that one.  Several: the single talking one (ANSWER or
        ANSWERED — not held, not ringing).  Otherwise the request is
        ambiguous and the caller must name the channel.  A monitor leg (the
        extension listening to someone else's call) is never "its call".
        """
        hidden = self.hidden
        legs = [
            leg
            for leg in self.legs.values()
            if leg.kind == "extension" and leg.number == extension and leg.channel_id not in hidden
        ]
        if not legs:
            raise Rejected("no_active_call", f"extension {extension} has no call the service tracks")
        if len(legs) == 1:
            return legs[0]
        talking = [leg for leg in legs if leg.status in TALKING_STATUSES]
        if len(talking) == 1:
            return talking[0]
        channels = ", ".join(sorted(leg.channel_id for leg in legs))
        raise Rejected(
            "ambiguous",
            f"extension {extension} has {len(legs)} calls ({channels}) and none is clearly the talking one; "
            "name the call by channel_id",
        )

    def view(self, call_id: str) -> dict[str, object] | None:
        """Contract §3.5 shape of one call."""
        legs = self.calls.get(call_id)
        if legs is None:
            return None
        return {"call_id": call_id, "members": self._members(legs)}

    def views(self) -> list[dict[str, object]]:
        if self.hidden:
            return [{"call_id": cid, "members": self._members(legs)} for cid, legs in self.calls.items()]
        return [
            {"call_id": cid, "members": [leg.as_member() for leg in legs.values()]}
            for cid, legs in self.calls.items()
        ]

    def _members(self, legs: dict[str, Leg]) -> list[dict[str, str]]:
        """Members of a call; a monitor leg also says whom it monitors (``monitoring``, ``mode``)."""
        hidden = self.hidden
        members = []
        for leg in legs.values():
            member = leg.as_member()
            extra = hidden.get(leg.channel_id)
            if extra:
                member.update(extra)
            members.append(member)
        return members
