"""A reference model of the engine: calls, legs and transfers, written plainly from the contract.

Theory of operation
===================

Model-based testing needs a second opinion that is simple enough to be
obviously right.  This module is that opinion.  It implements, in the most
direct way we could write it, what ``service-contract.md`` §3.2/§4 and the
state × stimulus table in :mod:`engine.chart` say the engine must do:

* **Calls and legs** (:class:`RefRegistry`): one dict of legs keyed by channel
  id, one dict of calls; a hung-up channel is remembered for five minutes so
  a late frame cannot bring it back; a reconciliation snapshot is the truth.
* **Transfers** (:class:`RefTransfer`): the facts a transfer keeps (target
  answered, transferee gone, one complete sent …), a plain dict of the
  chart's moves (:data:`MOVES`) instead of python-statemachine, the ignore
  cells of the table written out by hand (:func:`ignored`), and the decision
  rules of contract §4 as one ordered list of ``if`` s (:meth:`RefTransfer.decide`).
* **Routing** (:class:`RefEngine`): which transfer a leg change concerns, how
  a consultation's target leg is recognised (the start's call id, the dialled
  number), what a snapshot settles.

It shares nothing with ``engine/`` but the vocabulary (the event and command
dataclasses of :mod:`engine.model`, :class:`~engine.model.Policy` and the
pure number comparison :func:`engine.engine.numbers_match`): no table, no
chart, no constant is imported from the code under test, so a change there
that the contract does not allow shows up as a disagreement.

:mod:`chaos.model` drives this model and the real engine with the same events
and compares them after every step.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.engine import numbers_match
from engine.errors import Rejected
from engine.model import (
    CallChanged,
    CallEnded,
    CallFailed,
    CallsSnapshot,
    CallUpdated,
    CancelTimer,
    Command,
    Event,
    Member,
    OperatorRequested,
    PbxRequest,
    Policy,
    QueryCalls,
    RequestFinished,
    StartTimer,
    TimerFired,
    TransferChanged,
    TransferRequested,
)

#: A hung-up channel id is remembered this long (event-time seconds).
REMEMBER_DEAD_S = 300.0
#: "It did not happen" is looked at again this much later.
SECOND_LOOK_S = 5.0
#: A decision that could not be sent is taken again this much later.
RETRY_UNSENT_S = 1.0

FINAL = ("completed", "aborted")
RINGING_AS_CALLEE = ("RING", "EARLYMEDIA")
TALKING = ("ANSWER", "ANSWERED")
OPS = ("complete", "abort", "swap", "threeway")

#: The chart: event → {from state: to state}.  Contract §3.2: completed and aborted are final.
MOVES: dict[str, dict[str, str]] = {
    "consult_started": {"idle": "consulting"},
    "swap_away": {"consulting": "swapped"},
    "swap_back": {"swapped": "consulting"},
    "join": {"consulting": "threeway", "swapped": "threeway"},
    "retry": {"consulting": "idle", "swapped": "idle"},
    "finish_completed": {s: "completed" for s in ("idle", "consulting", "swapped", "threeway")},
    "finish_aborted": {s: "aborted" for s in ("idle", "consulting", "swapped", "threeway")},
}


def ignored(state: str, stimulus: str) -> bool:
    """The table's idempotent-ignore cells for the stimuli that consult it."""
    if state in FINAL:
        return True  # final states absorb everything
    if state == "threeway" and stimulus in ("target_ringing", "target_answered", "target_busy", "timeout"):
        return True  # the target answered long ago; nothing to time
    return state == "idle" and stimulus == "timeout"


def abort_reason(pbx_text: str | None) -> str:
    """Contract reasons for a failed consultation: a timeout is no answer, a
    hang-up with no text is a hang-up, anything else is busy."""
    if pbx_text is None:
        return "target_hangup"
    text = pbx_text.lower()
    if any(word in text for word in ("408", "timeout", "time out", "no answer")):
        return "no_answer"
    return "target_busy"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------
# calls and legs
# ----------------------------------------------------------------------------


@dataclass
class RefLeg:
    channel: str
    call: str
    kind: str
    number: str
    status: str
    created: float


@dataclass(frozen=True)
class Change:
    """A leg appeared (``old`` None), changed, moved to another call, or ended (``new`` BYE)."""

    channel: str
    call: str
    kind: str
    number: str
    old: str | None
    new: str
    moved: bool = False
    failed: str | None = None


class RefRegistry:
    def __init__(self) -> None:
        self.legs: dict[str, RefLeg] = {}
        self.calls: dict[str, dict[str, RefLeg]] = {}
        self.dead: dict[str, float] = {}  # channel → when it hung up, oldest first

    def apply(self, event: CallUpdated | CallEnded | CallFailed | CallsSnapshot) -> list[Change]:
        for channel, at in list(self.dead.items()):  # forget the dead, oldest first, up to a fresh one
            if event.at - at < REMEMBER_DEAD_S:
                break
            del self.dead[channel]
        if isinstance(event, CallUpdated):
            changes = [c for m in event.members if (c := self.merge(event.call_id, m, event.at)) is not None]
            if event.full:
                listed = {m.channel_id for m in event.members}
                for channel in [c for c in self.calls.get(event.call_id, {}) if c not in listed]:
                    changes.append(self.remove(self.legs[channel], event.at))
            return changes
        if isinstance(event, CallEnded):
            return [self.remove(leg, event.at) for leg in list(self.calls.get(event.call_id, {}).values())]
        if isinstance(event, CallFailed):
            changes = []
            for m in event.members:
                if m.status in RINGING_AS_CALLEE or m.status == "BYE":
                    leg = self.legs.get(m.channel_id)
                    if leg is not None:
                        changes.append(self.remove(leg, event.at, event.reason))
                    elif m.channel_id not in self.dead:
                        self.dead[m.channel_id] = event.at
                        changes.append(
                            Change(
                                m.channel_id,
                                event.call_id,
                                m.kind,
                                m.number,
                                None,
                                "BYE",
                                failed=event.reason,
                            )
                        )
            for leg in list(self.calls.get(event.call_id, {}).values()):
                if leg.status in RINGING_AS_CALLEE:
                    changes.append(self.remove(leg, event.at, event.reason))
            return changes
        # a snapshot: the truth
        alive = {m.channel_id for call in event.calls for m in call.members if m.status != "BYE"}
        changes = [self.remove(leg, event.at) for leg in list(self.legs.values()) if leg.channel not in alive]
        for call in event.calls:
            for m in call.members:
                change = self.merge(call.call_id, m, event.at, trusted=True)
                if change is not None:
                    changes.append(change)
        return changes

    def merge(self, call: str, m: Member, at: float, trusted: bool = False) -> Change | None:
        leg = self.legs.get(m.channel_id)
        if m.status == "BYE":
            if leg is not None:
                return self.remove(leg, at)
            if m.channel_id in self.dead:
                return None
            self.dead[m.channel_id] = at
            return Change(m.channel_id, call, m.kind, m.number, None, "BYE")
        if leg is None:
            if m.channel_id in self.dead:
                if not trusted:
                    return None  # a late frame for a dead channel
                del self.dead[m.channel_id]
            leg = RefLeg(m.channel_id, call, m.kind, m.number, m.status, at)
            self.legs[m.channel_id] = leg
            self.calls.setdefault(call, {})[m.channel_id] = leg
            return Change(m.channel_id, call, m.kind, m.number, None, m.status)
        moved = leg.call != call
        if moved:
            self.detach(leg)
            leg.call = call
            self.calls.setdefault(call, {})[m.channel_id] = leg
        if leg.status == m.status and not moved:
            return None
        old, leg.status = leg.status, m.status
        if m.number and m.number != leg.number:
            leg.number = m.number
        return Change(m.channel_id, call, leg.kind, leg.number, old, m.status, moved=moved)

    def remove(self, leg: RefLeg, at: float, failed: str | None = None) -> Change:
        self.detach(leg)
        del self.legs[leg.channel]
        self.dead[leg.channel] = at
        return Change(leg.channel, leg.call, leg.kind, leg.number, leg.status, "BYE", failed=failed)

    def detach(self, leg: RefLeg) -> None:
        call = self.calls.get(leg.call)
        if call is not None:
            call.pop(leg.channel, None)
            if not call:
                del self.calls[leg.call]


# ----------------------------------------------------------------------------
# transfers
# ----------------------------------------------------------------------------


@dataclass
class RefRequest:
    request_id: str
    action: str
    then: tuple[str, str]  # (what success leads to, the reason)
    by: str  # "auto" | "operator"
    channel: str
    unknown: bool = False
    rechecked: bool = False


@dataclass
class RefTransfer:
    id: str
    policy: Policy
    numbers: list[str]
    transferor: str | None
    transferor_number: str | None
    transferee: str | None
    transferee_number: str | None
    dial_permission: str | None
    original_call: str | None
    created_at: float
    updated_at: float = 0.0
    state: str = "idle"
    reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # facts
    attempt: int = 0
    attempt_started_at: float = 0.0
    target: str | None = None
    target_status: str = "dialing"
    start_call: str | None = None
    answered: bool = False
    fail_reason: str | None = None
    no_answer_due: bool = False
    answer_due: bool = False
    auto_done: bool = False
    took_over: bool = False
    transferor_gone: bool = False
    transferee_gone: bool = False
    complete_sent: bool = False
    abort_resent: bool = False
    unsent: RefRequest | None = None  # an automatic request that never left
    pending: RefRequest | None = None
    timers: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    # what the current event produced
    dirty: bool = False
    out: list[Command] = field(default_factory=list)

    # -- reading ---------------------------------------------------------------------
    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def number(self) -> str:
        return self.numbers[self.attempt]

    def channels(self) -> set[str]:
        return {c for c in (self.transferor, self.transferee, self.target) if c}

    def awaiting_target(self) -> bool:
        return not self.final and self.target is None

    def allowed_ops(self) -> list[str]:
        if self.final or self.state == "idle" or self.pending is not None:
            return []
        if self.state == "threeway":
            return ["complete", "abort"]
        up = self.target_status != "gone"
        allowed = {"abort"}
        if up and not self.complete_sent:
            allowed.add("complete")
        if up:
            allowed.add("swap")
            if self.answered:
                allowed.add("threeway")
        return [op for op in OPS if op in allowed]

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "attended",
            "state": self.state,
            "reason": self.reason,
            "transferor": {"channel_id": self.transferor, "number": self.transferor_number},
            "transferee": {"channel_id": self.transferee, "number": self.transferee_number},
            "target": {"number": self.number, "channel_id": self.target, "status": self.target_status},
            "policy": self.policy.as_dict(),
            "attempt": self.attempt + 1,
            "initiated_by": "api",
            # the console's fields: what may be asked now, what is on its way, the countdown
            "allowed_ops": self.allowed_ops(),
            "in_flight": self.pending.action if self.pending is not None else None,
            "no_answer_at": next(
                (
                    iso(at)
                    for at in sorted(at for t, at in self.timers.items() if t.split("#")[0] == "no_answer")
                ),
                None,
            ),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "history": [{**h, "at": iso(h["at"])} for h in self.history],
        }

    # -- stimuli ---------------------------------------------------------------------
    def begin(self, at: float) -> None:
        self.request(at, "start", ("consulting", "initiated"), "auto", number=self.number)

    def note_target(self, at: float, status: str, failed: str | None = None) -> None:
        if status == "BYE":
            stimulus = "target_busy" if failed else "target_hangup"
        elif status in TALKING:
            stimulus = "target_answered"
        else:
            stimulus = "target_ringing"  # RING, ALERT, EARLYMEDIA — and HOLD, which only changes the status
        if ignored(self.state, stimulus):
            return
        self.touch(at)
        if status == "BYE":
            if self.target_status != "gone":
                if not self.answered and self.fail_reason is None:
                    self.fail_reason = abort_reason(failed)
                self.target_status = "gone"
                self.cancel_timers()
        elif status in TALKING:
            self.target_answered(at)
        elif status == "HOLD":
            if self.answered:
                self.target_status = "held"
        elif self.target_status == "dialing":
            self.target_status = "ringing"
        self.decide(at)

    def target_failed(self, at: float, text: str) -> None:
        if ignored(self.state, "target_busy"):
            return
        self.touch(at)
        if self.fail_reason is None:
            self.fail_reason = abort_reason(text)
        self.target_status = "gone"
        self.cancel_timers()
        self.decide(at)

    def party_left(self, at: float, role: str) -> None:
        if ignored(self.state, f"{role}_hangup"):
            return
        self.touch(at)
        if role == "transferor":
            self.transferor_gone = True
        else:
            self.transferee_gone = True
        self.decide(at)

    def timer(self, at: float, tag: str) -> None:
        if tag not in self.timers:
            return  # stale
        del self.timers[tag]
        kind = tag.split("#")[0]
        if kind == "retry":  # decide again; if that calls for nothing, send what never left
            if self.final or self.pending is not None:
                return
            self.touch(at)
            self.decide(at)
            if self.unsent is not None and self.pending is None and not self.final:
                u = self.unsent
                number = self.number if u.action == "start" else None
                self.request(at, u.action, u.then, "auto", number=number, channel=u.channel)
        elif kind == "recheck":
            if self.pending is not None and self.pending.unknown and not self.final:
                self.out.append(QueryCalls(self.id, ""))
        elif ignored(self.state, "timeout"):
            if kind == "answer_delay" and self.state == "idle":
                self.touch(at)
                self.answer_due = True  # the answer came before the start's: act once it is accepted
        else:
            self.touch(at)
            if kind == "no_answer" and not self.answered and self.target_status != "gone":
                self.no_answer_due = True
            elif kind == "answer_delay":
                self.answer_due = True
            self.decide(at)

    def operate(self, at: float, op: str) -> None:
        allowed = self.allowed_ops()
        if op not in allowed:
            raise Rejected("not_allowed", f"allowed now: {', '.join(allowed) or 'none'}")
        self.touch(at)
        if self.state == "threeway":  # all three talk: complete = the transferor leaves, abort = the target
            leaving = self.transferor if op == "complete" else self.target
            outcome = "completed" if op == "complete" else "aborted"
            self.request(at, "hangup", (outcome, "operator"), "operator", channel=leaving)
            return
        then = {
            "complete": "completed",
            "abort": "aborted",
            "swap": "swapped" if self.state == "consulting" else "consulting",
            "threeway": "threeway",
        }[op]
        if op in ("swap", "threeway"):
            self.took_over = True
        self.request(at, op, (then, "operator"), "operator")

    def result(self, event: RequestFinished) -> None:
        pending = self.pending
        if pending is None or pending.request_id != event.request_id or self.final:
            return
        self.touch(event.at)
        if not event.sent:
            self.never_sent(event.at, pending)
            return
        if event.outcome == "unknown":
            pending.unknown = True
            self.out.append(QueryCalls(self.id, ""))
            return
        self.pending = None
        if event.outcome == "ok" or (event.gone and pending.action in ("abort", "hangup")):
            self.succeeded(event.at, pending, event.call_id)
        else:
            self.refused(event.at, pending, gone=event.gone)
        self.decide(event.at)

    def reconcile(self, at: float, alive: dict[str, str], candidate: str | None) -> None:
        pending = self.pending
        if pending is None or not pending.unknown or self.final:
            return
        self.touch(at)
        done = self.happened(pending, alive, candidate)
        if not done and not pending.rechecked:
            pending.rechecked = True
            self.arm("recheck", at + SECOND_LOOK_S)
            return
        self.pending = None
        if done:
            self.succeeded(at, pending, None)
        elif pending.action == "start":
            more = self.attempt > 0 and self.attempt + 1 < len(self.numbers)
            self.request(at, "abort", ("retry" if more else "aborted", "pbx_error"), "auto")
            return
        elif pending.action == "complete":
            self.request(at, "abort", ("aborted", "pbx_error"), "auto")  # never a second complete
            return
        elif pending.action == "abort" and not self.abort_resent:
            self.abort_resent = True
            self.request(at, "abort", pending.then, "auto")
            return
        elif pending.action == "abort" and self.target in alive:
            self.request(at, "hangup", pending.then, "auto", channel=self.target)
            return
        elif pending.action == "abort":
            self.succeeded(at, pending, None)
        else:
            self.refused(at, pending, gone=False)
        self.decide(at)

    def happened(self, pending: RefRequest, alive: dict[str, str], candidate: str | None) -> bool:
        """Whether the PBX's view shows the request carried out."""
        action = pending.action
        if action == "start":
            return candidate is not None
        if action == "complete":
            return self.transferor not in alive
        if action == "abort":
            return self.target not in alive and alive.get(self.transferee or "") != "HOLD"
        if action == "hangup":
            return pending.channel not in alive
        if action == "swap":
            target_held = alive.get(self.target or "") == "HOLD"
            return target_held if pending.then[0] == "swapped" else not target_held
        return self.target_status == "answered" and not self.transferor_gone  # threeway

    def lost(self, at: float) -> None:
        self.touch(at)
        self.pending = None
        self.finish(at, "aborted", "lost")

    # -- what follows ---------------------------------------------------------------
    def succeeded(self, at: float, pending: RefRequest, call_id: str | None) -> None:
        outcome, reason = pending.then
        if pending.action == "start":
            self.start_call = call_id
            self.move("consult_started", at, reason)
            if self.target_status != "gone" and not self.answered:
                self.arm("no_answer", at + self.policy.no_answer_timeout_s)
        elif pending.action == "swap" and outcome == "swapped":
            self.move("swap_away", at, reason)
            if self.target_status == "answered":
                self.target_status = "held"
        elif pending.action == "swap":
            self.move("swap_back", at, reason)
            if self.target_status == "held":
                self.target_status = "answered"
        elif pending.action == "threeway":
            self.move("join", at, reason)
            self.target_status = "answered"
        elif outcome == "retry":
            self.next_attempt(at, reason)
        else:
            self.finish(at, outcome, reason)

    def refused(self, at: float, pending: RefRequest, *, gone: bool) -> None:
        action, (outcome, reason) = pending.action, pending.then
        if action == "start":
            if 0 < self.attempt < len(self.numbers) - 1:
                self.next_attempt(at, "pbx_error", from_idle=True)
            elif self.transferee_gone:
                self.finish(at, "aborted", "transferee_hangup")
            elif self.transferor_gone:
                self.finish(at, "aborted", "transferor_hangup")
            else:
                self.finish(at, "aborted", "pbx_error")
        elif action == "complete" and gone and reason == "transferor_hangup":
            self.finish(at, "completed", "transferor_hangup")  # the PBX joined them itself
        elif pending.by == "auto" and action == "hangup":
            self.finish(at, outcome, reason)
        elif pending.by == "auto" and action == "abort":
            self.finish(at, "aborted", reason)
        elif pending.by == "auto":
            self.request(at, "abort", ("aborted", "pbx_error"), "auto")  # give the caller back
        # an operator's op: nothing changes (the operator is told)

    def never_sent(self, at: float, pending: RefRequest) -> None:
        self.pending = None
        if pending.action == "complete":
            self.complete_sent = False
        if pending.then[1] == "policy":
            self.auto_done = False
        if pending.action == "start" and self.attempt == 0:
            self.finish(at, "aborted", "pbx_error")
        elif pending.by == "auto":
            self.unsent = pending
            self.arm("retry", at + RETRY_UNSENT_S)

    def next_attempt(self, at: float, reason: str, *, from_idle: bool = False) -> None:
        if self.attempt + 1 >= len(self.numbers):
            self.finish(at, "aborted", reason)
            return
        if not from_idle and self.state != "idle":
            self.move("retry", at, reason)
        self.attempt += 1
        self.attempt_started_at = at
        self.target, self.target_status, self.start_call = None, "dialing", None
        self.answered, self.fail_reason = False, None
        self.no_answer_due = self.answer_due = self.auto_done = self.took_over = False
        self.request(at, "start", ("consulting", "fallback"), "auto", number=self.number)

    def finish(self, at: float, state: str, reason: str) -> None:
        self.cancel_timers()
        self.reason = reason
        self.move("finish_completed" if state == "completed" else "finish_aborted", at, reason)
        self.pending = None

    def decide(self, at: float) -> None:
        """Contract §4, in order; at most one request, never while one is in flight."""
        if self.final or self.pending is not None or self.state == "idle":
            return
        gone = self.target_status == "gone"
        if self.state == "threeway":
            if self.transferor_gone:
                self.finish(at, "completed", "transferor_hangup")
            elif self.transferee_gone:
                self.finish(at, "aborted", "transferee_hangup")
            elif gone:
                self.finish(at, "aborted", "target_hangup")
        elif self.transferee_gone and self.transferor_gone and gone:
            self.finish(at, "aborted", "transferee_hangup")
        elif self.transferee_gone:
            self.request(at, "abort", ("aborted", "transferee_hangup"), "auto")
        elif self.transferor_gone and gone:
            self.finish(at, "aborted", "transferor_hangup")
        elif (
            self.transferor_gone and self.policy.on_transferor_hangup == "complete" and not self.complete_sent
        ):
            self.request(at, "complete", ("completed", "transferor_hangup"), "auto")
        elif self.transferor_gone and self.target is not None:
            self.request(at, "hangup", ("aborted", "transferor_hangup"), "auto", channel=self.target)
        elif self.transferor_gone:
            self.request(at, "abort", ("aborted", "transferor_hangup"), "auto")
        elif gone and self.answered:
            self.request(at, "abort", ("aborted", "target_hangup"), "auto")
        elif gone:
            self.request(at, "abort", ("retry", self.fail_reason or "target_hangup"), "auto")
        elif self.no_answer_due and not self.answered:
            self.request(at, "abort", ("retry", "no_answer"), "auto")
        elif (
            self.state == "consulting"
            and self.target_status == "answered"
            and self.answer_due
            and not (self.auto_done or self.took_over)
        ):
            self.auto_done = True
            if self.policy.on_answer == "complete" and not self.complete_sent:
                self.request(at, "complete", ("completed", "policy"), "auto")
            elif self.policy.on_answer == "threeway":
                self.request(at, "threeway", ("threeway", "policy"), "auto")

    # -- mechanics -------------------------------------------------------------------
    def move(self, event: str, at: float, trigger: str) -> None:
        to = MOVES[event][self.state]  # a KeyError is a move the chart does not have
        self.history.append({"at": at, "from": self.state, "to": to, "trigger": trigger})
        self.state = to

    def request(
        self,
        at: float,
        action: str,
        then: tuple[str, str],
        by: str,
        *,
        number: str | None = None,
        channel: str | None = None,
    ) -> None:
        self.seq += 1
        self.unsent = None
        request_id = f"{self.id}/{self.seq}"
        channel = channel or self.transferor or ""
        self.pending = RefRequest(request_id, action, then, by, channel)
        if action == "complete":
            self.complete_sent = True
        self.out.append(
            PbxRequest(
                request_id,
                self.id,
                action,  # type: ignore[arg-type]
                channel,
                number,
                self.dial_permission if action == "start" else None,
                self.target,
                self.transferee,
            )
        )
        self.touch(at)

    def arm(self, kind: str, at: float) -> None:
        tag = f"{kind}#{self.attempt}#{self.seq}"
        self.timers[tag] = at
        self.out.append(StartTimer(self.id, tag, at))

    def cancel_timers(self, kind: str | None = None) -> None:
        for tag in [t for t in self.timers if kind is None or t.split("#")[0] == kind]:
            del self.timers[tag]
            self.out.append(CancelTimer(self.id, tag))

    def touch(self, at: float) -> None:
        self.updated_at = max(self.updated_at, at)
        self.dirty = True

    def target_answered(self, at: float) -> None:
        if self.answered and self.target_status in ("answered", "held"):
            return  # heard already
        self.answered = True
        self.fail_reason = None
        self.cancel_timers("no_answer")
        self.no_answer_due = False
        self.target_status = "held" if self.state == "swapped" else "answered"
        if self.policy.on_answer != "hold":
            if self.policy.answer_delay_s > 0:
                self.arm("answer_delay", at + self.policy.answer_delay_s)
            else:
                self.answer_due = True


# ----------------------------------------------------------------------------
# the engine around them
# ----------------------------------------------------------------------------


def _tail(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    return digits[-4:] if digits else number


class RefEngine:
    """Routing, correlation, snapshots and restarts around :class:`RefTransfer`."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.registry = RefRegistry()
        self.transfers: dict[str, RefTransfer] = {}
        self.index: dict[str, str] = {}  # channel → active transfer
        self.indexed: dict[str, set[str]] = {}
        self.awaiting: dict[str, RefTransfer] = {}

    def handle(self, event: Event) -> list[Command]:
        touched: dict[str, RefTransfer] = {}
        calls_out: list[Command] = []
        if isinstance(event, (CallUpdated, CallEnded, CallFailed, CallsSnapshot)):
            changes = self.registry.apply(event)
            if isinstance(event, CallsSnapshot):
                self.snapshot(event.at, changes, touched)
            else:
                self.route(event.at, changes, touched)
                if isinstance(event, CallFailed):
                    for t in self.candidates(lambda t: t.start_call == event.call_id):
                        if t.start_call and t.start_call != t.original_call:
                            t.target_failed(event.at, event.reason)
                            touched[t.id] = t
            for call in dict.fromkeys(c.call for c in changes):
                calls_out.append(CallChanged(call, ended=call not in self.registry.calls))
        elif isinstance(event, TransferRequested):
            t = self.create(event)
            touched[t.id] = t
        elif isinstance(event, OperatorRequested):
            found = self.transfers.get(event.transfer_id)
            if found is None:
                raise Rejected("not_found", event.transfer_id)
            found.operate(event.at, event.op)
            touched[found.id] = found
        elif isinstance(event, RequestFinished):
            found = self.transfers.get(event.transfer_id)
            if found is not None:
                found.result(event)
                if found.state == "consulting" and found.target is None:
                    self.look_for_target(event.at, found)
                touched[found.id] = found
        elif isinstance(event, TimerFired):
            found = self.transfers.get(event.transfer_id)
            if found is not None:
                found.timer(event.at, event.timer)
                touched[found.id] = found
        out = calls_out
        for t in touched.values():
            self.reindex(t)
            if t.dirty:
                t.dirty = False
                out.append(TransferChanged(t.id, t.resource(), t.final))
            out.extend(t.out)
            t.out = []
        return out

    def create(self, event: TransferRequested) -> RefTransfer:
        if event.transfer_id in self.transfers:
            raise Rejected("conflict", event.transfer_id)
        assert event.channel_id is not None and event.type == "attended"  # what the machine sends
        leg = self.registry.legs.get(event.channel_id)
        if leg is None:
            raise Rejected("no_active_call", event.channel_id)
        if leg.channel in self.index:
            raise Rejected("transfer_in_progress", leg.channel)
        others = [o for o in self.registry.calls[leg.call].values() if o.channel != leg.channel]
        if len(others) > 1:
            others = [o for o in others if o.status in TALKING or o.status == "HOLD"]
        other = others[0] if len(others) == 1 else None
        policy = self.policy.merged(event.policy)
        t = RefTransfer(
            event.transfer_id,
            policy,
            [event.number.strip(), *policy.fallback_numbers],
            leg.channel,
            leg.number,
            other.channel if other else None,
            other.number if other else None,
            event.dial_permission or (leg.number if leg.kind == "extension" else None),
            leg.call,
            event.at,
            updated_at=event.at,
            attempt_started_at=event.at,
        )
        self.transfers[t.id] = t
        t.begin(event.at)
        return t

    def route(self, at: float, changes: list[Change], touched: dict[str, RefTransfer]) -> None:
        for change in changes:
            owner = self.index.get(change.channel)
            if owner is not None:
                t = self.transfers[owner]
                if change.channel == t.target:
                    t.note_target(at, change.new, change.failed)
                elif change.new == "BYE":
                    t.party_left(at, "transferor" if change.channel == t.transferor else "transferee")
                touched[t.id] = t
            elif self.awaiting and (change.old is None or change.moved):
                for t in self.candidates(
                    lambda t, c=change: t.start_call == c.call or _tail(t.number) == _tail(c.number)
                ):
                    if self.is_target(t, change):
                        self.claim(at, t, change.channel, change.new, change.failed)
                        touched[t.id] = t
                        break

    def candidates(self, keep: Any) -> list[RefTransfer]:
        return sorted((t for t in self.awaiting.values() if keep(t)), key=lambda t: (t.created_at, t.id))

    def is_target(self, t: RefTransfer, change: Change) -> bool:
        """Is this new leg the consultation's target?  Never one of the transfer's own parties
        or another transfer's leg; the start's own call, or the dialled number on a leg of
        the transferor's calls or one that just appeared."""
        if change.channel in (t.transferor, t.transferee) or change.channel in self.index:
            return False
        if change.kind == "extension" and change.number == (t.transferor_number or ""):
            return False
        if t.start_call and t.start_call != t.original_call and change.call == t.start_call:
            return True
        if not numbers_match(change.number, t.number):
            return False
        transferor_leg = self.registry.legs.get(t.transferor or "")
        related = {t.start_call, t.original_call, transferor_leg.call if transferor_leg else None}
        return change.call in related or change.old is None

    def claim(self, at: float, t: RefTransfer, channel: str, status: str, failed: str | None = None) -> None:
        t.target = channel
        self.reindex(t)
        t.note_target(at, status, failed)

    def look_for_target(self, at: float, t: RefTransfer) -> bool:
        """A target leg that came before we could recognise it: in the start's or the
        original call, or one that appeared during this attempt with the dialled number."""
        for call in (t.start_call, t.original_call):
            for leg in list(self.registry.calls.get(call or "", {}).values()):
                if self.is_target(t, Change(leg.channel, leg.call, leg.kind, leg.number, None, leg.status)):
                    self.claim(at, t, leg.channel, leg.status)
                    return True
        for leg in reversed(list(self.registry.legs.values())):
            if leg.created < t.attempt_started_at:
                return False
            change = Change(leg.channel, leg.call, leg.kind, leg.number, None, leg.status)
            if numbers_match(leg.number, t.number) and self.is_target(t, change):
                self.claim(at, t, leg.channel, leg.status)
                return True
        return False

    def snapshot(self, at: float, changes: list[Change], touched: dict[str, RefTransfer]) -> None:
        alive = {leg.channel: leg.status for leg in self.registry.legs.values()}
        vanished = {c.channel for c in changes if c.new == "BYE"}
        for t in [t for t in self.transfers.values() if not t.final]:
            mine, pending = t.channels(), t.pending
            settling_a_complete = pending is not None and pending.unknown and pending.action == "complete"
            if (
                mine
                and not mine & alive.keys()
                and (mine & vanished or pending is not None)
                and not settling_a_complete
            ):
                t.lost(at)
                touched[t.id] = t
        just_lost = {tid for tid, t in touched.items() if t.final}
        self.route(
            at, [c for c in changes if self.index.get(c.channel) not in just_lost or c.new != "BYE"], touched
        )
        for t in [t for t in self.transfers.values() if not t.final]:
            if t.awaiting_target() and t.state != "idle" and self.look_for_target(at, t):
                touched[t.id] = t
            if t.pending is not None and t.pending.unknown:
                if t.target is None and t.pending.action == "start":
                    self.look_for_target(at, t)
                t.reconcile(at, alive, t.target)
                touched[t.id] = t

    def reindex(self, t: RefTransfer) -> None:
        old = self.indexed.get(t.id, set())
        new = set() if t.final else t.channels()
        for channel in old - new:
            if self.index.get(channel) == t.id:
                del self.index[channel]
        for channel in new - old:
            self.index[channel] = t.id
        if new:
            self.indexed[t.id] = new
        else:
            self.indexed.pop(t.id, None)
        if t.awaiting_target():
            self.awaiting[t.id] = t
        else:
            self.awaiting.pop(t.id, None)

    # -- persistence -------------------------------------------------------------------
    def restart(self, order: list[str]) -> list[Command]:
        """What a restart from the store does (the transfers as saved, in ``order``; no calls
        known yet): every armed timer again, and a request in flight is of unknown outcome."""
        saved = self.transfers
        self.registry = RefRegistry()
        self.transfers, self.index, self.indexed, self.awaiting = {}, {}, {}, {}
        out: list[Command] = []
        for tid in order:
            t = copy.deepcopy(saved[tid])
            t.dirty, t.out = False, []
            self.transfers[tid] = t
            self.reindex(t)
            out.extend(StartTimer(tid, tag, at) for tag, at in t.timers.items())
            if t.pending is not None and not t.final:
                t.pending.unknown = True
                out.append(QueryCalls(tid, ""))
        return out

    def forget(self, transfer_id: str) -> None:
        t = self.transfers.get(transfer_id)
        if t is not None and t.final:
            del self.transfers[transfer_id]


def normal(commands: list[Command]) -> list[tuple[Any, ...]]:
    """Commands as comparable tuples (reasons and resources are compared elsewhere)."""
    out: list[tuple[Any, ...]] = []
    for c in commands:
        if isinstance(c, PbxRequest):
            out.append(
                ("request", c.transfer_id, c.request_id, c.action, c.channel_id, c.number,
                 c.dial_permission, c.target_channel_id, c.transferee_channel_id)
            )  # fmt: skip
        elif isinstance(c, QueryCalls):
            out.append(("query", c.transfer_id))
        elif isinstance(c, StartTimer):
            out.append(("timer", c.transfer_id, c.timer, c.at))
        elif isinstance(c, CancelTimer):
            out.append(("cancel", c.transfer_id, c.timer))
        elif isinstance(c, TransferChanged):
            out.append(("changed", c.transfer_id, c.final, json.dumps(c.resource, sort_keys=True)))
        elif isinstance(c, CallChanged):
            out.append(("call", c.call_id, c.ended))
    return out
