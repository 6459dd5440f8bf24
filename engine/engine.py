"""The engine facade: one object the runtime feeds events to.

``Engine.handle(event)`` merges PBX events into the calls registry, routes
the resulting leg changes to the transfers they concern (correlating each
consultation's target leg), and returns the commands that follow.  It is
pure: no I/O, no clock, no logging.  Same events in, same commands out.

Command order within one ``handle`` result is meaningful: call changes come
first (the cause), then for each transfer its
:class:`~engine.model.TransferChanged` comes before its PBX requests, so a
runtime that persists it first has every decision on disk before the request
leaves (write-ahead), and requests of one transfer appear in the order they
must be executed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from engine.errors import Rejected
from engine.model import (
    TALKING_STATUSES,
    CallChanged,
    CallEnded,
    CallFailed,
    CallsSnapshot,
    CallUpdated,
    Command,
    Event,
    HangupRequested,
    MonitorAnswered,
    MonitorRequested,
    OperatorRequested,
    ParkRequested,
    Policy,
    QueryCalls,
    RequestFinished,
    RuleAnswered,
    StartTimer,
    TimerFired,
    TransferChanged,
    TransferRequested,
)
from engine.registry import CallRegistry, Leg, LegChange, shrinkable
from engine.rules import TIMER_PREFIX, RuleEngine
from engine.supervision import Monitors, supervise
from engine.transfer import Transfer

_NON_DIGITS = re.compile(r"[^0-9]")


def _tail(number: str) -> str:
    """The key under which :func:`numbers_match` candidates are filed: two
    matching numbers always share their last four digits (or are equal)."""
    digits = _NON_DIGITS.sub("", number)
    return digits[-4:] if digits else number


def numbers_match(reported: str, wanted: str) -> bool:
    """Whether a leg's number is the dialled target.

    Trunk legs report the number as sent (a dialling prefix, ``+``, spaces
    may differ), so compare digits and accept one being a suffix of the other
    when the shorter has at least 4 digits.  Non-numeric targets (SIP URIs)
    compare exactly.
    """
    if reported == wanted:
        return True
    a, b = _NON_DIGITS.sub("", reported), _NON_DIGITS.sub("", wanted)
    if not a or not b:
        return False
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long_.endswith(short)


class Engine:
    """Calls registry + one transfer chart per transfer.

    For a :class:`~engine.model.TransferRequested` or
    :class:`~engine.model.OperatorRequested` the engine may raise
    :class:`~engine.errors.Rejected` instead of returning: nothing changed.
    """

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.registry = CallRegistry()
        self._transfers: dict[str, Transfer] = {}
        self._by_channel: dict[str, str] = {}  # channel → active transfer id
        self._indexed: dict[str, set[str]] = {}  # transfer id → channels indexed for it
        self._awaiting: dict[str, Transfer] = {}  # transfers with no target leg yet
        # Index of those by what can correlate a new leg with them (the start's
        # call id, the dialled number's last digits): a new leg is checked
        # against a few candidates, not every waiting transfer.
        self._awaiting_by: dict[str, set[str]] = {}
        self._awaiting_keys: dict[str, tuple[str, ...]] = {}
        self._peak = 0  # most transfers held at once since the indexes were last rebuilt
        #: Routing rules fed by the same events (engine.rules); None: no rules file.
        self.rules: RuleEngine | None = None
        #: Supervisors' monitor legs, kept out of transfers and rules (engine.supervision).
        self.monitors = Monitors(self.registry)

    # ------------------------------------------------------------------
    # the one entry point
    # ------------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        touched: dict[str, Transfer] = {}
        calls_out: list[Command] = []
        changes: list[LegChange] = []
        if isinstance(event, (CallUpdated, CallEnded, CallFailed, CallsSnapshot)):
            all_changes = self.registry.apply(event)
            # Monitor legs are shown in calls but never routed to transfers or rules.
            changes = self.monitors.observe(event.at, all_changes)
            if isinstance(event, CallsSnapshot):
                self._snapshot(event.at, changes, touched)
            else:
                self._route(event.at, changes, touched)
                if isinstance(event, CallFailed):
                    self._failed(event, touched)
            calls = self.registry.calls
            if len(all_changes) == 1:  # the common case: one leg of one call changed
                call_id = all_changes[0].call_id
                calls_out.append(CallChanged(call_id, ended=call_id not in calls))
            else:
                for call_id in dict.fromkeys([change.call_id for change in all_changes]):
                    calls_out.append(CallChanged(call_id, ended=call_id not in calls))
        elif isinstance(event, TransferRequested):
            transfer = self._create(event)
            touched[transfer.id] = transfer
        elif isinstance(event, OperatorRequested):
            transfer = self._get(event.transfer_id)
            transfer.operate(event.at, event.op)
            touched[transfer.id] = transfer
        elif isinstance(event, RequestFinished):
            found = self._transfers.get(event.transfer_id)
            if found is not None:
                found.result(event)
                if found.state == "consulting" and found.target_channel is None:
                    self._correlate_existing(event.at, found)
                touched[found.id] = found
        elif isinstance(event, TimerFired):
            found = self._transfers.get(event.transfer_id)
            if found is not None:
                found.timer(event.at, event.timer)
                touched[found.id] = found
        elif isinstance(event, (MonitorRequested, MonitorAnswered, HangupRequested, ParkRequested)):
            found = supervise(self, event)
            if found is not None:
                touched[found.id] = found
        # Call changes first: a timeline then reads cause before effect.
        out = calls_out + self._collect(touched) if touched else calls_out
        if self.rules is not None:
            out += self._rules(event, changes, out)
        return out

    # ------------------------------------------------------------------
    # routing rules (engine.rules): fed after the transfers, by the same event
    # ------------------------------------------------------------------

    def active_transfer(self, channel_id: str) -> str | None:
        """The active transfer ``channel_id`` takes part in, if any."""
        return self._by_channel.get(channel_id)

    def other_party(self, leg: Leg) -> Leg | None:
        return self._other_party(leg)

    def _rules(self, event: Event, changes: list[LegChange], out: list[Command]) -> list[Command]:
        rules = self.rules
        assert rules is not None
        requests: list[TransferRequested] = []
        commands: list[Command] = []
        if changes and not isinstance(event, CallsSnapshot):
            requests, commands = rules.changes(event.at, changes, self)
        elif isinstance(event, TimerFired) and event.transfer_id.startswith(TIMER_PREFIX):
            requests, commands = rules.timer(event.at, event.transfer_id.removeprefix(TIMER_PREFIX), self)
        elif isinstance(event, RuleAnswered):
            requests, commands = rules.answered(event, self)
        for command in out:
            if isinstance(command, TransferChanged) and command.final:
                ended = self._transfers.get(command.transfer_id)
                if ended is not None:
                    more, notes = rules.ended(event.at, ended, self)
                    requests += more
                    commands += notes
        touched: dict[str, Transfer] = {}
        for request in requests:
            try:
                transfer = self._create(request)
            except Rejected as exc:
                commands.append(rules.refused(request, exc.code, exc.detail))
            else:
                touched[transfer.id] = transfer
        return commands + self._collect(touched) if touched else commands

    # ------------------------------------------------------------------
    # read side
    # ------------------------------------------------------------------

    def transfer(self, transfer_id: str) -> Mapping[str, Any] | None:
        """The contract's transfer resource (§3.2) as a JSON-ready dict."""
        found = self._transfers.get(transfer_id)
        return found.resource() if found is not None else None

    def transfers(self, active_only: bool = False) -> list[Mapping[str, Any]]:
        """Resources of transfers the engine holds, newest first."""
        items = [t for t in self._transfers.values() if not (active_only and t.final)]
        items.sort(key=lambda t: t.created_at, reverse=True)
        return [t.resource() for t in items]

    def get(self, transfer_id: str) -> Transfer | None:
        return self._transfers.get(transfer_id)

    def calls(self) -> list[dict[str, object]]:
        """Tracked calls as in contract §3.5."""
        return self.registry.views()

    def call(self, call_id: str) -> Mapping[str, Any] | None:
        return self.registry.view(call_id)

    # ------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------

    def export(self, transfer_id: str) -> dict[str, Any]:
        return self._get(transfer_id).export()

    def restore(self, records: Iterable[Mapping[str, Any]]) -> list[Command]:
        """Load exported transfers without re-running entry actions.

        Returns the commands that resume them: armed timers again (a past
        deadline fires at once), and a reconciliation query for every
        transfer whose request was in flight — its outcome is unknown, and
        it is settled from the PBX's view, never re-sent.
        """
        out: list[Command] = []
        for record in records:
            transfer = Transfer.restore(dict(record))
            self._transfers[transfer.id] = transfer
            self._reindex(transfer)
            if self.rules is not None and transfer.rule:
                self.rules.restore(transfer.rule, transfer)
            for tag, deadline in transfer.timers.items():
                out.append(StartTimer(transfer.id, tag, deadline))
            if transfer.pending is not None and not transfer.final:
                transfer.pending.unknown = True
                out.append(QueryCalls(transfer.id, f"restart with {transfer.pending.action} in flight"))
        return out

    def forget(self, transfer_id: str) -> None:
        """Drop a final transfer from memory (the store keeps it)."""
        transfer = self._transfers.get(transfer_id)
        if transfer is not None and transfer.final:
            del self._transfers[transfer_id]
            size = len(self._transfers)
            if shrinkable(size, self._peak):
                # After a peak, give the indexes' memory back (dicts never shrink).
                self._transfers = dict(self._transfers)
                self._by_channel = dict(self._by_channel)
                self._indexed = dict(self._indexed)
                self._awaiting = dict(self._awaiting)
                self._peak = size

    def _count(self) -> None:
        self._peak = max(self._peak, len(self._transfers))

    # ------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------

    def _get(self, transfer_id: str) -> Transfer:
        found = self._transfers.get(transfer_id)
        if found is None:
            raise Rejected("not_found", f"no transfer with id {transfer_id}")
        return found

    def _create(self, event: TransferRequested) -> Transfer:
        if event.transfer_id in self._transfers:
            raise Rejected("conflict", f"transfer id {event.transfer_id} is already in use")
        number = event.number.strip()
        if not number:
            raise Rejected("invalid", "number must name the transfer target")
        leg: Leg | None
        if event.channel_id:
            leg = self.registry.leg(event.channel_id)
            if leg is None:
                raise Rejected(
                    "no_active_call", f"channel {event.channel_id} is not in any call the service tracks"
                )
        elif event.extension:
            leg = self.registry.active_channel(event.extension)
        else:
            raise Rejected("invalid", "name the party by channel_id or extension")
        busy = self._by_channel.get(leg.channel_id)
        if busy is not None:
            raise Rejected(
                "transfer_in_progress",
                f"channel {leg.channel_id} already takes part in active transfer {busy}",
            )
        other = self._other_party(leg)
        policy = self.policy.merged(event.policy)
        if event.type == "blind":
            # The member moved is the transferee; the party left is the transferor.
            transferee: tuple[str | None, str | None] = (leg.channel_id, leg.number)
            transferor: tuple[str | None, str | None] = (
                (other.channel_id, other.number) if other else (None, None)
            )
            permission: str | None = event.dial_permission or (
                other.number if other and other.kind == "extension" else leg.number
            )
            numbers = [number]
        else:
            transferor = (leg.channel_id, leg.number)
            transferee = (other.channel_id, other.number) if other else (None, None)
            permission = event.dial_permission or (leg.number if leg.kind == "extension" else None)
            numbers = [number, *policy.fallback_numbers]
        transfer = Transfer(
            event.transfer_id,
            event.type,
            policy,
            numbers,
            transferor,
            transferee,
            permission,
            leg.call_id,
            event.at,
        )
        transfer.initiated_by = event.initiated_by
        if event.rule:
            # The rule's decision opens the history and is persisted with the transfer.
            transfer.rule = dict(event.rule)
            transfer.history.append(
                {
                    "at": event.at,
                    "from": "idle",
                    "to": "idle",
                    "trigger": event.initiated_by,
                    "rule": dict(event.rule),
                }
            )
        self._transfers[transfer.id] = transfer
        self._count()
        transfer.begin(event.at)
        if self.rules is not None:
            self.rules.created(transfer)
        return transfer

    def _other_party(self, leg: Leg) -> Leg | None:
        """The one other leg of ``leg``'s call (the talking one if several)."""
        others = self.registry.others_in_call(leg.channel_id)
        if len(others) > 1:
            others = [o for o in others if o.status in TALKING_STATUSES or o.status == "HOLD"]
        return others[0] if len(others) == 1 else None

    def _route(self, at: float, changes: list[LegChange], touched: dict[str, Transfer]) -> None:
        for change in changes:
            transfer_id = self._by_channel.get(change.channel_id)
            if transfer_id is not None:
                transfer = self._transfers[transfer_id]
                self._apply(at, transfer, change)
                touched[transfer.id] = transfer
            elif self._awaiting and (change.old_status is None or change.moved):
                for transfer in self._candidates(f"call:{change.call_id}", f"tail:{_tail(change.number)}"):
                    if self._is_target(transfer, change):
                        transfer.target_channel = change.channel_id
                        self._reindex(transfer)
                        transfer.note_target(at, change.status, change.failed)
                        touched[transfer.id] = transfer
                        break

    def _apply(self, at: float, transfer: Transfer, change: LegChange) -> None:
        channel = change.channel_id
        if channel == transfer.target_channel:
            transfer.note_target(at, change.status, change.failed)
        elif change.status == "BYE":
            transfer.party_left(at, "transferor" if channel == transfer.transferor_channel else "transferee")

    def _is_target(self, transfer: Transfer, change: LegChange) -> bool:
        """Correlate a new leg with a consultation awaiting its target.

        Three independent clues, because the PBX's behaviour is unconfirmed
        (see the reference notes): the call id the start request returned
        (when it is a new call), the dialled number within the calls the
        transferor is part of, and the dialled number on a leg that appeared
        after this attempt began.
        """
        channel = change.channel_id
        if (
            channel in (transfer.transferor_channel, transfer.transferee_channel)
            or channel in self._by_channel
            or channel in self.monitors.legs  # a supervisor listening in is nobody's target
        ):
            return False
        if change.kind == "extension" and change.number == (transfer.transferor_number or ""):
            # The transferor's own side of the consultation under a new channel
            # (Webex reports the user's leg of every call): never the target.
            return False
        start = transfer.start_call_id
        if start and start != transfer.original_call_id and change.call_id == start:
            return True
        if not numbers_match(change.number, transfer.number):
            return False
        transferor_leg = self.registry.leg(transfer.transferor_channel or "")
        related = {start, transfer.original_call_id, transferor_leg.call_id if transferor_leg else None}
        return change.call_id in related or change.old_status is None

    def _correlate_existing(self, at: float, transfer: Transfer) -> None:
        """After the start was accepted (or a snapshot), look for a target leg
        that arrived before we could recognise it."""
        registry = self.registry
        for call_id in (transfer.start_call_id, transfer.original_call_id):
            for leg in list(registry.calls.get(call_id or "", {}).values()):
                if self._claim(at, transfer, leg, strong=True):
                    return
        # Legs are kept in the order they appeared: walk back only over those
        # that appeared during this attempt (a handful), not every live leg.
        for leg in reversed(registry.legs.values()):
            if leg.created < transfer.attempt_started_at:
                return
            if self._claim(at, transfer, leg, strong=False):
                return

    def _claim(self, at: float, transfer: Transfer, leg: Leg, *, strong: bool) -> bool:
        change = LegChange(leg.channel_id, leg.call_id, leg.kind, leg.number, None, leg.status)
        if not strong and not numbers_match(leg.number, transfer.number):
            return False
        if not self._is_target(transfer, change):
            return False
        transfer.target_channel = leg.channel_id
        self._reindex(transfer)
        transfer.note_target(at, leg.status)
        return True

    def _failed(self, event: CallFailed, touched: dict[str, Transfer]) -> None:
        """A 30015 for a consultation whose target leg we never saw."""
        for transfer in self._candidates(f"call:{event.call_id}"):
            start = transfer.start_call_id
            if start and start != transfer.original_call_id and event.call_id == start:
                transfer.target_failed(event.at, event.reason)
                touched[transfer.id] = transfer

    def _snapshot(self, at: float, changes: list[LegChange], touched: dict[str, Transfer]) -> None:
        alive = {channel: leg.status for channel, leg in self.registry.legs.items()}
        vanished = {c.channel_id for c in changes if c.status == "BYE"}
        for transfer in [t for t in self._transfers.values() if not t.final]:
            channels = transfer.channels()
            pending = transfer.pending
            if (
                channels
                and not channels & alive.keys()
                and (channels & vanished or pending is not None)
                # A complete (or blind) whose outcome is unknown: all legs gone is what success looks
                # like where the PBX reports only the user's calls (Webex); reconcile decides.
                and not (pending is not None and pending.unknown and pending.action in ("complete", "blind"))
            ):
                transfer.lost(at)
                touched[transfer.id] = transfer
        self._route(
            at,
            [
                c
                for c in changes
                if self._by_channel.get(c.channel_id) not in _ids(touched) or c.status != "BYE"
            ],
            touched,
        )
        for transfer in [t for t in self._transfers.values() if not t.final]:
            if transfer.awaiting_target() and transfer.state != "idle":
                self._correlate_existing(at, transfer)
            if transfer.pending is not None and transfer.pending.unknown:
                candidate = transfer.target_channel
                if candidate is None and transfer.pending.action == "start":
                    self._correlate_existing(at, transfer)
                    candidate = transfer.target_channel
                transfer.reconcile(at, alive, candidate)
                touched[transfer.id] = transfer

    def _reindex(self, transfer: Transfer) -> None:
        old = self._indexed.get(transfer.id, set())
        new = set() if transfer.final else transfer.channels()
        for channel in old - new:
            if self._by_channel.get(channel) == transfer.id:
                del self._by_channel[channel]
        for channel in new - old:
            self._by_channel[channel] = transfer.id
        if new:
            self._indexed[transfer.id] = new
        else:
            self._indexed.pop(transfer.id, None)
        keys: tuple[str, ...] = ()
        if transfer.awaiting_target():
            self._awaiting[transfer.id] = transfer
            keys = (f"tail:{_tail(transfer.number)}",)
            if transfer.start_call_id:
                keys += (f"call:{transfer.start_call_id}",)
        else:
            self._awaiting.pop(transfer.id, None)
        old_keys = self._awaiting_keys.pop(transfer.id, ())
        if keys != old_keys:
            for key in old_keys:
                ids = self._awaiting_by[key]
                ids.discard(transfer.id)
                if not ids:
                    del self._awaiting_by[key]
            for key in keys:
                self._awaiting_by.setdefault(key, set()).add(transfer.id)
        if keys:
            self._awaiting_keys[transfer.id] = keys

    def _candidates(self, *keys: str) -> list[Transfer]:
        """Waiting transfers filed under any of ``keys``, oldest first (deterministic)."""
        ids: set[str] = set()
        for key in keys:
            ids |= self._awaiting_by.get(key, set())
        found = [self._awaiting[i] for i in ids if i in self._awaiting]
        found.sort(key=lambda t: (t.created_at, t.id))
        return found

    def _collect(self, touched: dict[str, Transfer]) -> list[Command]:
        out: list[Command] = []
        for transfer in touched.values():
            self._reindex(transfer)
            if transfer.dirty:
                transfer.dirty = False
                out.append(TransferChanged(transfer.id, transfer.resource(), transfer.final))
            out.extend(transfer.out)
            transfer.out = []
        return out


def _ids(touched: dict[str, Transfer]) -> set[str]:
    return {tid for tid, t in touched.items() if t.final}
