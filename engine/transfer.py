"""One transfer: its facts, its chart, and the decisions taken from them.

Read :mod:`engine.chart` first: it holds the theory of operation and the
state × stimulus table this class implements.  In short, every stimulus is
looked up in :data:`~engine.chart.TABLE` (record / ignore / reject / move the
chart), then :meth:`Transfer._decide` issues at most one PBX request from
the facts if none is in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from engine.chart import FINAL_STATES, STATES, TABLE, shared_chart
from engine.errors import Rejected
from engine.model import (
    OPS,
    Action,
    CancelTimer,
    Command,
    Op,
    PbxRequest,
    Policy,
    QueryCalls,
    RequestFinished,
    StartTimer,
    TransferType,
)

TargetStatus = str  # "dialing" | "ringing" | "answered" | "held" | "gone"

#: An unknown outcome that looks "not carried out" is looked at again this
#: many seconds later before the transfer acts on it.
RECHECK_S = 5.0
#: After a decision of ours could not be sent (the runtime could not make it
#: durable), decide again this many seconds later.
UNSENT_RETRY_S = 1.0


@lru_cache(maxsize=1024)
def iso(at: float) -> str:
    """Event time → the contract's ISO-8601 UTC form with milliseconds.

    Cached: a transfer's resource is rebuilt on every change and repeats its
    creation and history times each time (formatting is 4 µs, a hit 0.1 µs).
    """
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failure_reason(pbx_reason: str | None) -> str:
    """Map a 30015 failure text to the contract's abort reason."""
    text = (pbx_reason or "").lower()
    if "408" in text or "timeout" in text or "time out" in text or "no answer" in text:
        return "no_answer"
    if pbx_reason is None:
        return "target_hangup"
    return "target_busy"  # 486 Busy Here, User Busy, DND, 603 Declined, unreachable…


@dataclass(slots=True)
class Pending:
    """The request in flight and what its success means.

    ``then`` is ``(outcome, reason)``: ``("completed", "policy")``,
    ``("aborted", "operator")``, ``("retry", "no_answer")`` (abort, then the
    next fallback) …; ``by`` is ``operator`` or ``auto``.
    """

    request_id: str
    action: Action
    then: tuple[str, str]
    by: str
    unknown: bool = False
    channel_id: str = ""  # the leg a request acts on
    rechecked: bool = False  # a "did not happen" verdict awaits its second look

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "action": self.action,
            "then": list(self.then),
            "by": self.by,
            "unknown": self.unknown,
            "channel_id": self.channel_id,
            "rechecked": self.rechecked,
        }


class Transfer:
    """Facts + chart of one transfer.  Mutated only by the engine."""

    def __init__(
        self,
        transfer_id: str,
        type_: TransferType,
        policy: Policy,
        numbers: list[str],
        transferor: tuple[str | None, str | None],
        transferee: tuple[str | None, str | None],
        dial_permission: str | None,
        original_call_id: str | None,
        created_at: float,
        state: str | None = None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.id = transfer_id
        self.type: TransferType = type_
        self.policy = policy
        self.numbers = numbers
        self.transferor_channel, self.transferor_number = transferor
        self.transferee_channel, self.transferee_number = transferee
        self.dial_permission = dial_permission
        self.original_call_id = original_call_id
        self.created_at = created_at
        self.updated_at = created_at
        # chart: the state value and its history; moves go through the shared chart
        if state is not None and state not in STATES:
            raise ValueError(f"unknown persisted state {state!r}")
        self._state: str = state or "idle"
        self.history: list[dict[str, Any]] = history if history is not None else []
        # facts
        self.attempt = 0
        self.attempt_started_at = created_at
        self.target_channel: str | None = None
        self.target_status: TargetStatus = "dialing"
        self.start_call_id: str | None = None
        self.answered = False
        self.fail_reason: str | None = None
        self.no_answer_due = False
        self.answer_due = False
        self.auto_done = False
        self.operator_took_over = False
        self.transferor_gone = False
        self.transferee_gone = False
        self.complete_sent = False
        self.abort_resent = False  # bounds the re-sent abort of reconcile() to one
        # An automatic request that never left (action, then, channel), to send again
        # when nothing in the facts decides it anew (a start, a clean-up abort in idle).
        self.unsent: tuple[Action, tuple[str, str], str] | None = None
        self.reason: str | None = None
        self.pending: Pending | None = None
        self.timers: dict[str, float] = {}  # armed timer tag → deadline
        self.seq = 0
        self.last_error: dict[str, Any] | None = None
        #: Who asked for it: ``api:<user>``, ``console:<user>``, ``rule:<name>`` (see TransferRequested).
        self.initiated_by = "api"
        #: A routing rule's decision when a rule started it (see engine.rules): persisted with the
        #: transfer, so the rule's "fired" mark is written ahead with the transfer's first save.
        self.rule: dict[str, Any] | None = None
        # output of the current stimulus (collected by the engine)
        self.out: list[Command] = []
        self.dirty = False

    # ------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def model(self) -> Transfer:
        """For code written when each transfer had its own chart model: ``model.state`` and
        ``model.history`` are the transfer's own (the chart is shared now: engine.chart)."""
        return self

    @property
    def final(self) -> bool:
        return self._state in FINAL_STATES

    @property
    def number(self) -> str:
        return self.numbers[self.attempt]

    def channels(self) -> set[str]:
        """Channels whose changes concern this transfer."""
        return {c for c in (self.transferor_channel, self.transferee_channel, self.target_channel) if c}

    def awaiting_target(self) -> bool:
        return self.type == "attended" and not self.final and self.target_channel is None

    def allowed_ops(self) -> list[Op]:
        """The ops an operator may ask for now (named in 409 details)."""
        state = self.state
        if self.final or state == "idle" or self.pending is not None:
            return []
        target_up = self.target_status != "gone"
        allowed: list[Op] = []
        if state == "threeway":
            # The PBX's transfer is over once all three talk: "complete" is the
            # transferor leaving, "abort" the target leaving (both hang-ups).
            return ["complete", "abort"]
        if not self.complete_sent and target_up:
            allowed.append("complete")
        allowed.append("abort")
        if state in ("consulting", "swapped") and target_up:
            allowed.append("swap")
            if self.answered:
                allowed.append("threeway")
        return [op for op in OPS if op in allowed]

    def resource(self) -> dict[str, Any]:
        """Contract §3.2."""
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "reason": self.reason,
            "transferor": {"channel_id": self.transferor_channel, "number": self.transferor_number},
            "transferee": {"channel_id": self.transferee_channel, "number": self.transferee_number},
            "target": {
                "number": self.number,
                "channel_id": self.target_channel,
                "status": self.target_status,
            },
            "policy": self.policy.as_dict(),
            "attempt": self.attempt + 1,
            "initiated_by": self.initiated_by,
            "allowed_ops": self.allowed_ops(),
            "in_flight": self.pending.action if self.pending is not None else None,
            "no_answer_at": self._no_answer_at(),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "history": [{**h, "at": iso(h["at"])} for h in self.history],
        }

    def _no_answer_at(self) -> str | None:
        """When the armed no-answer timer fires (the console's countdown), or None."""
        due = [at for tag, at in self.timers.items() if tag.startswith("no_answer#")]
        return iso(min(due)) if due else None

    # ------------------------------------------------------------------
    # stimuli (called by the engine)
    # ------------------------------------------------------------------

    def cell(self, stimulus: str) -> str:
        return TABLE[(self.state, stimulus)]

    def begin(self, at: float) -> None:
        """The transfer was accepted by the engine: send the first request."""
        if self.type == "blind":
            # For a blind transfer the PBX's channel_id is the member being
            # moved: our transferee.
            self._request(
                at,
                "blind",
                ("completed", "blind"),
                "auto",
                number=self.number,
                channel_id=self.transferee_channel,
            )
        else:
            self._request(at, "start", ("consulting", "initiated"), "auto", number=self.number)

    def note_target(self, at: float, status: str, failed: str | None = None) -> None:
        """A change of the target leg: ``status`` is a PBX member status."""
        stimulus = {"BYE": "target_busy" if failed else "target_hangup"}.get(
            status, "target_answered" if status in ("ANSWER", "ANSWERED") else "target_ringing"
        )
        if status == "HOLD":
            stimulus = "target_ringing"  # not a stimulus of its own: only the status changes
        if self.cell(stimulus) == "ignore":
            return
        self._touch(at)
        if status == "BYE":
            if self.target_status != "gone":
                if not self.answered and self.fail_reason is None:
                    self.fail_reason = failure_reason(failed)
                self.target_status = "gone"
                self._cancel_timers()
        elif status in ("ANSWER", "ANSWERED"):
            self._target_answered(at)
        elif status == "HOLD":
            if self.answered:
                self.target_status = "held"
        elif self.target_status == "dialing":
            self.target_status = "ringing"
        self._decide(at)

    def target_failed(self, at: float, reason: str) -> None:
        """A 30015 for the consultation before its target leg was seen."""
        if self.cell("target_busy") == "ignore":
            return
        self._touch(at)
        if self.fail_reason is None:
            self.fail_reason = failure_reason(reason)
        self.target_status = "gone"
        self._cancel_timers()
        self._decide(at)

    def party_left(self, at: float, role: str) -> None:
        """``role`` is ``transferor`` or ``transferee``: that leg hung up."""
        if self.cell(f"{role}_hangup") == "ignore":
            return
        self._touch(at)
        if role == "transferor":
            self.transferor_gone = True
        else:
            self.transferee_gone = True
        self._decide(at)

    def timer(self, at: float, tag: str) -> None:
        if self.timers.pop(tag, None) is None:
            return  # stale: that timer is no longer armed
        kind = tag.split("#", 1)[0]
        if kind == "retry":
            self._retry_unsent(at)
            return
        if kind == "recheck":
            if self.pending is not None and self.pending.unknown and not self.final:
                self.out.append(QueryCalls(self.id, f"second look at the unknown {self.pending.action}"))
            return
        if self.cell("timeout") == "ignore":
            if kind == "answer_delay" and self.state == "idle":
                # The target answered before the PBX accepted the start: keep the fact;
                # the decision follows once the start is accepted.
                self._touch(at)
                self.answer_due = True
            return  # nothing to time in this state
        self._touch(at)
        if kind == "no_answer" and not self.answered and self.target_status != "gone":
            self.no_answer_due = True
        elif kind == "answer_delay":
            self.answer_due = True
        self._decide(at)

    def operate(self, at: float, op: Op) -> PbxRequest:
        """An operator op: send it, or raise :class:`Rejected` (409)."""
        allowed = self.allowed_ops()
        if op not in allowed:
            raise Rejected("not_allowed", self._not_allowed_detail(op, allowed))
        self._touch(at)
        if self.state == "threeway":
            leaving = self.transferor_channel if op == "complete" else self.target_channel
            outcome = "completed" if op == "complete" else "aborted"
            return self._request(at, "hangup", (outcome, "operator"), "operator", channel_id=leaving)
        then: tuple[str, str]
        if op == "complete":
            then = ("completed", "operator")
        elif op == "abort":
            then = ("aborted", "operator")
        elif op == "swap":
            then = ("swapped" if self.state == "consulting" else "consulting", "operator")
            self.operator_took_over = True
        else:
            then = ("threeway", "operator")
            self.operator_took_over = True
        return self._request(at, op, then, "operator")

    def hangup_leg(self, at: float, channel_id: str) -> PbxRequest:
        """A supervisor hangs up one of this transfer's legs (see :mod:`engine.supervision`).

        Sent as this transfer's own ``hangup`` request, so it is never in
        flight beside another of its requests; once the PBX confirms, the
        leg's departure is decided as that party hanging up (:meth:`_left`).
        Raises :class:`Rejected` (409) while a request is in flight or the
        consultation has not been accepted yet.
        """
        if self.pending is not None or self.state == "idle":
            waiting = self.pending.action if self.pending is not None else "start"
            raise Rejected(
                "not_allowed",
                f"hangup is not allowed: transfer {self.id} is {self.state} and its {waiting} request is "
                "still awaiting the PBX's answer; try again in a moment",
            )
        role = (
            "target"
            if channel_id == self.target_channel
            else "transferor"
            if channel_id == self.transferor_channel
            else "transferee"
        )
        self._touch(at)
        return self._request(at, "hangup", ("left", role), "operator", channel_id=channel_id)

    def result(self, event: RequestFinished) -> None:
        """The answer to a request of ours."""
        pending = self.pending
        if pending is None or pending.request_id != event.request_id or self.final:
            return  # stale or duplicate
        at = event.at
        self._touch(at)
        if not event.sent:
            self._unsent(at, pending, event.errmsg)
            return
        if event.outcome == "unknown":
            pending.unknown = True
            self.out.append(QueryCalls(self.id, f"outcome of {pending.action} unknown"))
            return
        self.pending = None
        if event.outcome == "ok" or (event.gone and pending.action in ("abort", "hangup")):
            self._succeeded(at, pending, event.call_id)
        else:
            self.last_error = {"errcode": event.errcode, "errmsg": event.errmsg, "action": pending.action}
            self._refused(at, pending, gone=event.gone)
        self._decide(at)

    def reconcile(self, at: float, alive: Mapping[str, str], target_candidate: str | None) -> None:
        """A snapshot arrived; settle a request whose outcome was unknown.

        ``alive`` maps the channel ids the PBX reports to their status; ``target_candidate``
        is a correlated target leg, if any (for an unknown ``start``).

        "It happened" is acted on at once.  "It did not happen" is checked
        once more :data:`RECHECK_S` later before acting: a request that timed
        out may still be carried out by a busy PBX after the first look.
        """
        pending = self.pending
        if pending is None or not pending.unknown or self.final:
            return
        self._touch(at)
        done = self._happened(pending, alive, target_candidate)
        if not done and not pending.rechecked:
            pending.rechecked = True
            self._arm("recheck", at + RECHECK_S)
            return
        self.pending = None
        action = pending.action
        if done:
            self._succeeded(at, pending, None)
        elif action == "start":
            # The start may have half happened (Webex: the hold did, the dial's
            # answer was lost): abort as a clean-up — "nothing to abort" counts
            # as done — then fall back or end as a refusal.
            more = self.attempt > 0 and self.attempt + 1 < len(self.numbers)
            self._request(at, "abort", ("retry" if more else "aborted", "pbx_error"), "auto")
            return
        elif action == "complete":
            # The one complete this transfer may send did not happen, and is
            # never sent twice: give the caller back rather than leave the
            # consultation waiting for an operator who was told "unknown".
            self._request(at, "abort", ("aborted", "pbx_error"), "auto")
            return
        elif action == "abort" and not self.abort_resent:
            # The consultation still rings, or the transferee is still held
            # (Webex: the resume of the two-step abort failed).  An abort is safe
            # to repeat on both platforms ("already gone" counts as done): send
            # it once more — not blindly, but once.
            self.abort_resent = True
            self._request(at, "abort", pending.then, "auto")
            return
        elif action == "abort" and self.target_channel in alive:
            # Still ringing after a second abort: hang the target leg up.
            self._request(at, "hangup", pending.then, "auto", channel_id=self.target_channel)
            return
        elif action == "abort":
            self._succeeded(at, pending, None)  # only the hold is left: nothing more to send
        else:
            self.last_error = {
                "errcode": None,
                "errmsg": "outcome unknown; the PBX shows it did not happen",
                "action": action,
            }
            self._refused(at, pending, gone=False)
        self._decide(at)

    def _happened(self, pending: Pending, alive: Mapping[str, str], target_candidate: str | None) -> bool:
        """Whether the PBX's view shows ``pending``'s request carried out."""
        action = pending.action
        if action == "start":
            return target_candidate is not None
        if action in ("complete", "blind"):
            return self.transferor_channel not in alive
        if action == "abort":
            held = alive.get(self.transferee_channel or "") == "HOLD"
            return self.target_channel not in alive and not held
        if action == "hangup":
            return pending.channel_id not in alive
        if action == "swap":
            held = alive.get(self.target_channel or "") == "HOLD"
            return held if pending.then[0] == "swapped" else not held
        return self.target_status == "answered" and not self.transferor_gone  # threeway

    def lost(self, at: float) -> None:
        """Every leg of the transfer vanished in a reconciliation snapshot."""
        self._touch(at)
        self.pending = None
        self._finish(at, "aborted", "lost")

    # ------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------

    def _touch(self, at: float) -> None:
        self.updated_at = max(self.updated_at, at)
        self.dirty = True

    def _not_allowed_detail(self, op: str, allowed: list[Op]) -> str:
        if self.final:
            why = f"transfer {self.id} is {self.state} ({self.reason}), a final state"
        elif self.pending is not None:
            why = (
                f"transfer {self.id} is {self.state} and its {self.pending.action} request is still "
                "awaiting the PBX's answer"
            )
        elif self.state == "idle":
            why = f"transfer {self.id} is idle: the PBX has not accepted the consultation yet"
        elif op == "complete" and self.complete_sent:
            why = f"transfer {self.id} already sent its one complete request"
        elif op == "threeway" and not self.answered:
            why = f"transfer {self.id} is {self.state} and the target has not answered"
        else:
            why = f"transfer {self.id} is {self.state} (target {self.target_status})"
        return f"{op} is not allowed: {why}; allowed now: {', '.join(allowed) or 'none'}"

    def _request(
        self,
        at: float,
        action: Action,
        then: tuple[str, str],
        by: str,
        *,
        number: str | None = None,
        channel_id: str | None = None,
    ) -> PbxRequest:
        self.seq += 1
        self.unsent = None  # whatever never left is superseded by this request
        request_id = f"{self.id}/{self.seq}"
        channel = channel_id or self.transferor_channel or ""
        self.pending = Pending(request_id, action, then, by, channel_id=channel)
        if action == "complete":
            self.complete_sent = True
        request = PbxRequest(
            request_id=request_id,
            transfer_id=self.id,
            action=action,
            channel_id=channel,
            number=number,
            dial_permission=self.dial_permission if action in ("start", "blind") else None,
            target_channel_id=self.target_channel,
            transferee_channel_id=self.transferee_channel,
        )
        self.out.append(request)
        self._touch(at)
        return request

    def _send(self, event: str, at: float, trigger: str) -> None:
        source = self._state
        self._state = shared_chart().move(source, event)
        self.history.append({"at": at, "from": source, "to": self._state, "trigger": trigger})

    def _arm(self, kind: str, at: float) -> None:
        tag = f"{kind}#{self.attempt}#{self.seq}"
        self.timers[tag] = at
        self.out.append(StartTimer(self.id, tag, at))

    def _cancel_timers(self, kind: str | None = None) -> None:
        for tag in [t for t in self.timers if kind is None or t.startswith(kind + "#")]:
            del self.timers[tag]
            self.out.append(CancelTimer(self.id, tag))

    def _target_answered(self, at: float) -> None:
        if self.answered and self.target_status in ("answered", "held"):
            return  # duplicate
        self.answered = True
        self.fail_reason = None
        self._cancel_timers("no_answer")
        self.no_answer_due = False
        self.target_status = "held" if self.state == "swapped" else "answered"
        if self.policy.on_answer != "hold":
            if self.policy.answer_delay_s > 0:
                self._arm("answer_delay", at + self.policy.answer_delay_s)
            else:
                self.answer_due = True

    def _succeeded(self, at: float, pending: Pending, call_id: str | None) -> None:
        outcome, reason = pending.then
        action = pending.action
        if action == "start":
            self.start_call_id = call_id
            self._send("consult_started", at, reason)
            if self.target_status != "gone" and not self.answered:
                self._arm("no_answer", at + self.policy.no_answer_timeout_s)
        elif action == "swap":
            if outcome == "swapped":
                self._send("swap_away", at, reason)
                if self.target_status == "answered":
                    self.target_status = "held"
            else:
                self._send("swap_back", at, reason)
                if self.target_status == "held":
                    self.target_status = "answered"
        elif action == "threeway":
            self._send("join", at, reason)
            self.target_status = "answered"
        elif outcome == "left":
            self._left(at, reason)
        elif outcome == "retry":
            self._next_attempt(at, reason)
        else:
            self._finish(at, outcome, reason)

    def _left(self, at: float, role: str) -> None:
        """A supervisor's hang-up of a leg was carried out: that party has left,
        exactly as if it had hung up (the chart decides what follows)."""
        if role == "target":
            self.note_target(at, "BYE")
        else:
            self.party_left(at, role)

    def _refused(self, at: float, pending: Pending, *, gone: bool) -> None:
        action, (outcome, reason) = pending.action, pending.then
        if action == "start":
            if self.attempt > 0 and self.attempt + 1 < len(self.numbers):
                self._next_attempt(at, "pbx_error", from_idle=True)
            else:
                reason = (
                    "transferee_hangup"
                    if self.transferee_gone
                    else "transferor_hangup"
                    if self.transferor_gone
                    else "pbx_error"
                )
                self._finish(at, "aborted", reason)
        elif action == "complete" and gone and reason == "transferor_hangup":
            self._finish(at, "completed", "transferor_hangup")  # the PBX merged it itself ("blond")
        elif action == "blind":
            self._finish(at, "aborted", "pbx_error")
        elif action == "hangup" and pending.by == "auto":
            self._finish(at, outcome, reason)  # a clean-up the PBX refused: nothing more to do
        elif action == "abort" and pending.by == "auto":
            self._finish(at, "aborted", reason)
        elif pending.by == "auto":
            # A policy's complete/threeway the PBX would not do: give the
            # call back rather than leave everyone waiting.
            self._request(at, "abort", ("aborted", "pbx_error"), "auto")
        # operator ops: nothing changes; the caller is told (502)

    def _unsent(self, at: float, pending: Pending, why: str) -> None:
        """The request never left: as if it had not been decided.

        An operator is told (and may ask again); a decision of our own is
        taken again after :data:`UNSENT_RETRY_S`, from the facts as they are
        then — not in a tight loop while the store is failing.  The first
        start of a transfer that could not even be recorded ends it.
        """
        self.pending = None
        self.last_error = {"errcode": None, "errmsg": why, "action": pending.action}
        if pending.action == "complete":
            self.complete_sent = False
        if pending.then[1] == "policy":
            self.auto_done = False
        if pending.action == "start" and self.attempt == 0:
            self._finish(at, "aborted", "pbx_error")
        elif pending.by == "auto":
            self.unsent = (pending.action, pending.then, pending.channel_id)
            self._arm("retry", at + UNSENT_RETRY_S)

    def _retry_unsent(self, at: float) -> None:
        """Decide again; if the facts call for nothing (a start or a clean-up
        while idle, a give-back abort), send the request that never left."""
        if self.final or self.pending is not None:
            return
        self._touch(at)
        self._decide(at)
        if self.unsent is not None and self.pending is None and not self.final:
            action, then, channel = self.unsent
            number = self.number if action in ("start", "blind") else None
            self._request(at, action, then, "auto", number=number, channel_id=channel)

    def _next_attempt(self, at: float, reason: str, *, from_idle: bool = False) -> None:
        if self.attempt + 1 >= len(self.numbers):
            self._finish(at, "aborted", reason)
            return
        if not from_idle and self.state != "idle":
            self._send("retry", at, reason)
        self.attempt += 1
        self.attempt_started_at = at
        self.target_channel = None
        self.target_status = "dialing"
        self.start_call_id = None
        self.answered = False
        self.fail_reason = None
        self.no_answer_due = self.answer_due = self.auto_done = self.operator_took_over = False
        self._request(at, "start", ("consulting", "fallback"), "auto", number=self.number)

    def _finish(self, at: float, state: str, reason: str) -> None:
        self._cancel_timers()
        self.reason = reason
        self._send("finish_completed" if state == "completed" else "finish_aborted", at, reason)
        self.pending = None

    def _decide(self, at: float) -> None:
        """Issue at most one request (or end) from the facts.  See the chart."""
        if self.final or self.pending is not None:
            return
        state = self.state
        if state == "idle":
            return
        target_gone = self.target_status == "gone"
        if state == "threeway":
            if self.transferor_gone:
                self._finish(at, "completed", "transferor_hangup")
            elif self.transferee_gone:
                self._finish(at, "aborted", "transferee_hangup")
            elif target_gone:
                self._finish(at, "aborted", "target_hangup")
            return
        # consulting / swapped
        if self.transferee_gone:
            if self.transferor_gone and target_gone:
                self._finish(at, "aborted", "transferee_hangup")
            else:
                self._request(at, "abort", ("aborted", "transferee_hangup"), "auto")
        elif self.transferor_gone:
            if target_gone:
                self._finish(at, "aborted", "transferor_hangup")
            elif self.policy.on_transferor_hangup == "complete" and not self.complete_sent:
                self._request(at, "complete", ("completed", "transferor_hangup"), "auto")
            elif self.target_channel is not None:
                self._request(
                    at, "hangup", ("aborted", "transferor_hangup"), "auto", channel_id=self.target_channel
                )
            else:  # no target leg seen yet: abort the consultation instead
                self._request(at, "abort", ("aborted", "transferor_hangup"), "auto")
        elif target_gone:
            if self.answered:
                # Whether the PBX puts transferor and transferee back
                # together by itself is unconfirmed: abort (a "gone" answer
                # counts as done) so the transferee is never left on hold.
                self._request(at, "abort", ("aborted", "target_hangup"), "auto")
            else:
                self._request(at, "abort", ("retry", self.fail_reason or "target_hangup"), "auto")
        elif self.no_answer_due and not self.answered:
            self._request(at, "abort", ("retry", "no_answer"), "auto")
        elif (
            state == "consulting"
            and self.target_status == "answered"
            and self.answer_due
            and not self.auto_done
            and not self.operator_took_over
        ):
            self.auto_done = True
            if self.policy.on_answer == "complete" and not self.complete_sent:
                self._request(at, "complete", ("completed", "policy"), "auto")
            elif self.policy.on_answer == "threeway":
                self._request(at, "threeway", ("threeway", "policy"), "auto")

    # ------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------

    _FACTS = (
        "attempt",
        "attempt_started_at",
        "target_channel",
        "target_status",
        "start_call_id",
        "answered",
        "fail_reason",
        "no_answer_due",
        "answer_due",
        "auto_done",
        "operator_took_over",
        "transferor_gone",
        "transferee_gone",
        "complete_sent",
        "abort_resent",
        "reason",
        "seq",
        "last_error",
        "updated_at",
        "timers",
        "initiated_by",
        "rule",
    )

    def export(self) -> dict[str, Any]:
        """Everything needed to resume: chart state, legs, policy, facts, history."""
        data: dict[str, Any] = {
            "version": 1,
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "history": list(self.history),
            "policy": self.policy.as_dict(),
            "numbers": list(self.numbers),
            "transferor": [self.transferor_channel, self.transferor_number],
            "transferee": [self.transferee_channel, self.transferee_number],
            "dial_permission": self.dial_permission,
            "original_call_id": self.original_call_id,
            "created_at": self.created_at,
            "pending": self.pending.as_dict() if self.pending else None,
            "unsent": [self.unsent[0], list(self.unsent[1]), self.unsent[2]] if self.unsent else None,
        }
        for name in self._FACTS:
            value = getattr(self, name)
            data[name] = dict(value) if isinstance(value, dict) else value
        return data

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Transfer:
        """Rebuild from :meth:`export` without entering any state again."""
        policy = Policy(**{**data["policy"], "fallback_numbers": tuple(data["policy"]["fallback_numbers"])})
        transfer = cls(
            data["id"],
            data["type"],
            policy,
            list(data["numbers"]),
            (data["transferor"][0], data["transferor"][1]),
            (data["transferee"][0], data["transferee"][1]),
            data["dial_permission"],
            data["original_call_id"],
            data["created_at"],
            state=data["state"],
            history=[dict(h) for h in data["history"]],
        )
        for name in cls._FACTS:
            value = data.get(name, getattr(transfer, name))  # facts added later keep defaults
            setattr(transfer, name, dict(value) if isinstance(value, dict) else value)
        unsent = data.get("unsent")
        if unsent:
            transfer.unsent = (unsent[0], (unsent[1][0], unsent[1][1]), unsent[2])
        elif data.get("unsent_start"):  # saved before ``unsent`` replaced it
            transfer.unsent = ("start", ("consulting", "fallback"), transfer.transferor_channel or "")
        pending = data.get("pending")
        if pending:
            transfer.pending = Pending(
                pending["request_id"],
                pending["action"],
                (pending["then"][0], pending["then"][1]),
                pending["by"],
                pending["unknown"],
                pending.get("channel_id", ""),
                pending.get("rechecked", False),
            )
        return transfer
