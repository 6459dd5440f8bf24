"""Events in, commands out: the engine's whole vocabulary.

Everything the engine learns arrives as one of the *event* dataclasses below,
stamped with the time it happened (``at``, seconds since the epoch on the
runtime's clock, or on the virtual clock of a replay).  Everything it wants
done leaves as one of the *command* dataclasses.  The engine never reads a
clock, never sleeps and never does I/O, so the same events always give the
same commands: that is what makes recorded scenarios replayable.

Vocabulary (used the same way everywhere in xferd):

* **transferor** — the party who asks for the transfer and consults the target
  (for a blind transfer: the member being moved, as in the PBX's API).
* **transferee** — the party being handed over (held while consulting).
* **target** — the number the transferee is handed to.
* **leg** / **member** — one party's channel in a call (Yeastar ``members``).
* **channel** — a leg's PBX channel id (``PJSIP/2005-000000a6``; on Webex the
  ``callId``).  Legs are keyed by channel id everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

# --------------------------------------------------------------------------
# Shared value types
# --------------------------------------------------------------------------

MemberKind: TypeAlias = Literal["extension", "inbound", "outbound"]
#: Yeastar 30011 ``member_status`` values.  Other platforms map onto these.
MEMBER_STATUSES = ("ALERT", "RING", "EARLYMEDIA", "ANSWERED", "ANSWER", "HOLD", "BYE")
RINGING_STATUSES = frozenset({"ALERT", "RING", "EARLYMEDIA"})
TALKING_STATUSES = frozenset({"ANSWERED", "ANSWER"})

TransferType: TypeAlias = Literal["attended", "blind"]
Op: TypeAlias = Literal["complete", "abort", "swap", "threeway"]
OPS: tuple[Op, ...] = ("complete", "abort", "swap", "threeway")
Outcome: TypeAlias = Literal["ok", "refused", "unknown"]
Action: TypeAlias = Literal["start", "complete", "abort", "swap", "threeway", "blind", "hangup"]


@dataclass(frozen=True, slots=True)
class Member:
    """One leg of a call as the PBX reports it.

    ``number`` is the extension number for ``extension`` legs, the remote
    (``from``) number for ``inbound`` trunk legs and the dialled (``to``)
    number for ``outbound`` trunk legs: the number a person would name.
    """

    kind: MemberKind
    number: str
    channel_id: str
    status: str
    #: trunk legs: the trunk's name and the number at our end (the dialled DID
    #: of an inbound call, the caller id of an outbound one); "" if unknown
    trunk: str = ""
    peer: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """How a transfer decides its second request by itself (contract §2/§4)."""

    on_answer: Literal["complete", "threeway", "hold"] = "complete"
    answer_delay_s: float = 0.0
    no_answer_timeout_s: float = 20.0
    on_transferor_hangup: Literal["complete", "abort"] = "complete"
    fallback_numbers: tuple[str, ...] = ()

    def merged(self, overrides: Mapping[str, Any] | None) -> Policy:
        """This policy with per-transfer ``overrides`` applied (already validated)."""
        if not overrides:
            return self
        values = self.as_dict()
        values.update(overrides)
        values["fallback_numbers"] = tuple(values["fallback_numbers"])
        return Policy(**values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "on_answer": self.on_answer,
            "answer_delay_s": self.answer_delay_s,
            "no_answer_timeout_s": self.no_answer_timeout_s,
            "on_transferor_hangup": self.on_transferor_hangup,
            "fallback_numbers": list(self.fallback_numbers),
        }


# --------------------------------------------------------------------------
# Events (stimuli).  Every event carries ``at``: when it happened.
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallUpdated:
    """A 30011-style update: some members of a call changed.

    ``members`` usually holds only the legs that changed (single-member
    deltas); when ``full`` is true it is the complete list and any leg of the
    call not listed has gone.
    """

    at: float
    call_id: str
    members: tuple[Member, ...]
    full: bool = False


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over (Yeastar 30012 CDR, Webex ``disconnected``)."""

    at: float
    call_id: str


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call attempt failed (Yeastar 30015): busy, declined, unreachable…"""

    at: float
    call_id: str
    reason: str
    members: tuple[Member, ...] = ()


@dataclass(frozen=True, slots=True)
class CallState:
    """One call in a reconciliation snapshot."""

    call_id: str
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class CallsSnapshot:
    """The PBX's complete view of live calls (``call/query`` after a reconnect,
    a restart or an unknown request outcome).  Calls and legs absent from it
    are gone."""

    at: float
    calls: tuple[CallState, ...]


@dataclass(frozen=True, slots=True)
class TransferRequested:
    """A client asks for a transfer (control API, routing rule, replay).

    Exactly one of ``channel_id`` / ``extension`` names the party (for
    ``attended`` the transferor, for ``blind`` the member to be moved).
    ``policy`` holds already-validated overrides of the engine's defaults.
    ``initiated_by`` says who asked, for the resource and the audit trail:
    ``api:<user>`` (control API), ``console:<user>`` (the supervisor
    console), ``rule:<name>`` (a routing rule).
    """

    at: float
    transfer_id: str
    number: str
    type: TransferType = "attended"
    channel_id: str | None = None
    extension: str | None = None
    dial_permission: str | None = None
    policy: Mapping[str, Any] | None = None
    initiated_by: str = "api"
    #: a routing rule's decision (rule, trigger, call_id, at, decision): kept on the
    #: transfer, so the "fired" mark is written ahead with it (engine.rules)
    rule: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class OperatorRequested:
    """An operator (supervisor, API client) asks for ``op`` on a transfer."""

    at: float
    transfer_id: str
    op: Op


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """The answer to a :class:`PbxRequest`.

    ``outcome`` is ``ok`` (the PBX accepted), ``refused`` (the PBX answered
    with an error: ``errcode``/``errmsg``) or ``unknown`` (timeout or lost
    connection after the request may have reached the PBX: it may or may not
    have acted).  ``call_id`` is the call id the PBX returned, if any.
    ``gone`` is true when the refusal means the call/channel no longer exists
    (Yeastar 60001, Webex 404): the adapter knows its PBX's codes, the engine
    does not.  ``sent`` is false when the request never left (the runtime
    could not make the decision durable first): it did not happen, and may be
    decided again.
    """

    at: float
    transfer_id: str
    request_id: str
    outcome: Outcome
    call_id: str | None = None
    errcode: int | None = None
    errmsg: str = ""
    gone: bool = False
    sent: bool = True


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer the engine asked for expired.  ``timer`` is the tag it was
    started with; a tag the transfer no longer arms is stale and ignored."""

    at: float
    transfer_id: str
    timer: str


@dataclass(frozen=True, slots=True)
class RuleAnswered:
    """The answer to an :class:`AskRule`: the service's JSON (``answer``), or
    None and ``error`` when the URL could not give one (timeouts, refusals, a
    malformed answer, after the retries)."""

    at: float
    ask_id: str
    answer: Mapping[str, Any] | None = field(default=None, hash=False)
    error: str = ""


# Supervisor call actions (engine.supervision): not transfer decisions, but the engine
# must know of them so monitor legs stay out of transfers and a transfer's legs are
# hung up or parked only through (or not at all past) the transfer.

MonitorMode: TypeAlias = Literal["listen", "whisper", "barge"]
MONITOR_MODES: tuple[MonitorMode, ...] = ("listen", "whisper", "barge")


@dataclass(frozen=True, slots=True)
class MonitorRequested:
    """The service is about to ask the PBX to let extension ``monitor`` listen to,
    whisper to or barge into leg ``channel_id`` (Yeastar ``call/listen``).

    Fed *before* the request leaves: the monitor's own leg may be reported
    before the PBX's answer.  ``monitor`` is None where the monitor's leg
    carries no usable number (Webex); ``channel_id`` None where the monitored
    call is not one the service tracks (Webex barge-in on a colleague).
    """

    at: float
    session_id: str
    monitor: str | None
    channel_id: str | None
    mode: MonitorMode = "listen"


@dataclass(frozen=True, slots=True)
class MonitorAnswered:
    """The PBX's answer to a :class:`MonitorRequested`: ``outcome`` as for
    :class:`RequestFinished`; ``call_id`` the call id the PBX returned."""

    at: float
    session_id: str
    outcome: Outcome
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class HangupRequested:
    """A supervisor asks to hang up leg ``channel_id``.  A leg of an active
    transfer is hung up by that transfer (its own ``hangup`` request); any
    other leg is the service's to hang up directly (no command)."""

    at: float
    channel_id: str


@dataclass(frozen=True, slots=True)
class ParkRequested:
    """A supervisor asks to park leg ``channel_id``: refused while the leg takes
    part in an active transfer, otherwise no command (the service parks it)."""

    at: float
    channel_id: str


Event: TypeAlias = (
    CallUpdated
    | CallEnded
    | CallFailed
    | CallsSnapshot
    | TransferRequested
    | OperatorRequested
    | RequestFinished
    | TimerFired
    | RuleAnswered
    | MonitorRequested
    | MonitorAnswered
    | HangupRequested
    | ParkRequested
)

# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PbxRequest:
    """Ask the PBX to act, in PBX-neutral terms.

    * ``start``: attended consult of ``number`` by the transferor
      ``channel_id`` (Yeastar ``call/transfer`` attended; Webex hold + dial).
    * ``complete``/``abort``/``swap``/``threeway``: the second request
      (Yeastar ``attended_operate`` on the transferor's ``channel_id``; Webex
      uses ``target_channel_id`` as callId2).
    * ``blind``: move member ``channel_id`` to ``number``.
    * ``hangup``: hang up leg ``channel_id`` (clean-up).

    The answer comes back as a :class:`RequestFinished` with ``request_id``.
    """

    request_id: str
    transfer_id: str
    action: Action
    channel_id: str
    number: str | None = None
    dial_permission: str | None = None
    target_channel_id: str | None = None
    transferee_channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueryCalls:
    """Fetch the PBX's view of live calls and feed it back as a
    :class:`CallsSnapshot` (reconciliation after an unknown outcome)."""

    transfer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Deliver ``TimerFired(transfer_id, timer)`` at time ``at``."""

    transfer_id: str
    timer: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """The timer is no longer wanted (delivering it anyway is harmless)."""

    transfer_id: str
    timer: str


@dataclass(frozen=True, slots=True)
class TransferChanged:
    """A transfer's resource changed: persist it, publish it."""

    transfer_id: str
    resource: Mapping[str, Any] = field(hash=False)
    final: bool = False


@dataclass(frozen=True, slots=True)
class CallChanged:
    """A tracked call changed (``ended`` when it is gone)."""

    call_id: str
    ended: bool = False


@dataclass(frozen=True, slots=True)
class AskRule:
    """POST ``facts`` to ``url`` and feed the answer back as :class:`RuleAnswered`
    (``ask_id``): a rule whose action is ``ask``.  At most ``retries`` more
    tries after the first, ``backoff_s`` doubling between them, each bounded
    by ``timeout_s``."""

    ask_id: str
    rule: str
    url: str
    facts: Mapping[str, Any] = field(hash=False)
    timeout_s: float = 2.0
    retries: int = 1
    backoff_s: float = 0.2


@dataclass(frozen=True, slots=True)
class RuleNotice:
    """What a routing rule did about one trigger: for logs, counters, the live
    stream and ``xferd rules test``.

    ``outcome``: ``fired`` (a transfer was requested), ``shadow`` (matched in
    shadow mode: nothing sent), ``delayed`` (fires after ``after_s``),
    ``asked`` (its URL was asked), ``blocked`` (matched, but a safety rule
    said no: ``detail`` says which), ``skipped`` (a delay, an answer or the
    engine said no), ``error`` (the condition or the URL failed).
    ``request`` is what the rule sends (or would send, in shadow mode).
    """

    at: float
    rule: str
    outcome: str
    trigger: str
    call_id: str
    mode: str = "enforce"
    detail: str = ""
    transfer_id: str | None = None
    request: Mapping[str, Any] | None = field(default=None, hash=False)


Command: TypeAlias = (
    PbxRequest | QueryCalls | StartTimer | CancelTimer | TransferChanged | CallChanged | AskRule | RuleNotice
)
