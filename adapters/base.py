"""The seam between the runtime and a PBX platform.

A platform adapter (``adapters.yeastar``, ``adapters.webex``) turns the PBX's
events into engine events and the engine's :class:`~engine.model.PbxRequest`
commands into the platform's HTTP calls.  The runtime only knows this
protocol, so the same engine and control API drive every platform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from engine.model import CallsSnapshot, Event, MonitorMode, Outcome, PbxRequest, RequestFinished

#: Where an adapter delivers engine events, in arrival order.  Called from
#: the event loop's thread; must not block.
EventSink = Callable[[Event], None]
#: The clock adapters stamp events with (``time.time`` in production).
Clock = Callable[[], float]


class Observer:
    """Hooks an adapter calls so the runtime can count, log and record.

    The defaults do nothing, so an adapter can be used bare (tests, bench).
    Secrets must already be redacted from anything passed here.
    """

    def frame(self, kind: str) -> None:
        """A frame/delivery of ``kind`` (e.g. ``"30011"``) was accepted."""

    def bad_frame(self, reason: str, sample: str) -> None:
        """A frame was skipped; ``reason`` is short and stable (a metric label)."""

    def raw_frame(self, text: str, at: float) -> None:
        """A raw frame as received (for recording scenarios)."""

    def pbx_request(
        self,
        endpoint: str,
        body: dict[str, Any],
        answer: dict[str, Any] | None,
        result: str,
        seconds: float,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """A PBX HTTP request was made.  ``result`` is ``ok``, ``refused``,
        ``unknown`` or ``error``; ``body``/``answer`` are redacted.  Platforms
        whose errors are HTTP statuses (Webex) also give ``status`` and, for a
        throttled request, the ``retry_after`` seconds it was told to wait."""

    def unmapped_state(self, state: str, personality: str) -> None:
        """A call reported a state the platform reference does not name; its
        legs were kept as they were (Webex: see :mod:`adapters.webex.events`)."""

    def reconnect(self) -> None:
        """The event link was re-established after a loss."""

    def link(self, connected: bool, detail: str) -> None:
        """The PBX link went up or down; ``detail`` says why, for /healthz."""


#: Supervisor call actions a platform may support; each it supports is listed in
#: its ``capabilities`` (``parked``: listing parked calls).
CALL_ACTIONS = ("listen", "whisper", "barge", "park", "parked", "retrieve", "hangup")
CallActionKind: TypeAlias = Literal["monitor", "park", "parked", "retrieve", "hangup"]


@dataclass(frozen=True, slots=True)
class CallAction:
    """A supervisor's action on a call — not a transfer decision (see ``engine.supervision``).

    * ``monitor``: extension ``extension`` listens to / whispers to / barges into
      (``mode``) leg ``channel_id`` (Webex: the colleague ``target`` instead);
    * ``park``: park leg ``channel_id`` (the parked party), in ``slot`` if given;
    * ``parked``: list the parked calls;
    * ``retrieve``: extension ``extension`` picks up the call parked in ``slot``;
    * ``hangup``: hang up leg ``channel_id`` (a leg no active transfer holds).
    """

    kind: CallActionKind
    channel_id: str | None = None
    extension: str | None = None
    mode: MonitorMode | None = None
    slot: str | None = None
    target: str | None = None
    auto_answer: bool = False


@dataclass(frozen=True, slots=True)
class ParkedCall:
    """One parked call: in ``slot``, the party ``parked_party`` (leg ``channel_id``),
    parked by ``parker``, for ``parked_s`` seconds (None: not said)."""

    slot: str
    channel_id: str
    parked_party: str
    parker: str
    parked_s: float | None = None


@dataclass(frozen=True, slots=True)
class ActionResult:
    """How a :class:`CallAction` ended; ``outcome`` as for transfer requests.

    ``errcode``/``errmsg`` carry a refusal (the PBX's errcode, Webex's HTTP
    status); ``invalid`` the request fields the PBX named as invalid
    (Yeastar ``invalid_param_list``); ``call_id`` / ``slot`` / ``parked``
    what a successful action answered.
    """

    outcome: Outcome
    errcode: int | None = None
    errmsg: str = ""
    call_id: str | None = None
    slot: str | None = None
    parked: tuple[ParkedCall, ...] = ()
    invalid: tuple[str, ...] = ()
    #: False when the request never left because the decision could not be recorded first
    sent: bool = True


class PbxAdapter(Protocol):
    """What the runtime needs from a platform."""

    #: ``"yeastar"`` or ``"webex"``
    platform: str
    #: subset of ``("blind", "attended", "swap", "threeway")`` and :data:`CALL_ACTIONS`
    capabilities: tuple[str, ...]

    @property
    def connected(self) -> bool:
        """True while events are flowing (Yeastar: a subscribed websocket;
        Webex: the last API call succeeded and the token was accepted)."""

    @property
    def detail(self) -> str:
        """A sentence about the link for ``/healthz`` (never a secret)."""

    async def start(self, sink: EventSink) -> None:
        """Log in and begin delivering events to ``sink`` in the background.

        Returns once started (not necessarily connected).  Raises
        :class:`FatalPbxError` for what no retry can fix (bad credentials,
        IP blocked): the service reports it and stops.  After every
        (re)connect the adapter delivers a :class:`CallsSnapshot` so events
        lost while disconnected are reconciled.
        """

    async def execute(self, request: PbxRequest) -> RequestFinished:
        """Perform ``request``.  Never raises for PBX-side trouble: refusals
        are ``outcome="refused"`` with errcode/errmsg, timeouts after the
        request may have been sent are ``outcome="unknown"``."""

    async def query_calls(self) -> CallsSnapshot | None:
        """The PBX's current calls, or None if it cannot be asked now."""

    async def act(self, action: CallAction) -> ActionResult:
        """Perform a supervisor's call action.  Never raises for PBX-side
        trouble (as :meth:`execute`); an action the platform lacks (not in
        ``capabilities``) is ``refused`` with a sentence saying so."""

    async def close(self) -> None:
        """Stop background tasks, close the link, revoke credentials."""


class CredentialStore(Protocol):
    """Where one PBX connection keeps credentials that change while it runs
    (a Webex integration's latest refresh token), so a restart uses the newest.

    One per PBX connection, handed to the adapter by the service.  Values are
    secrets: implementations never log them.
    """

    async def load(self) -> dict[str, Any] | None:
        """The value last saved, or None."""

    async def save(self, value: dict[str, Any]) -> None:
        """Replace the value (durably: it may be the only valid refresh token)."""


class FatalPbxError(Exception):
    """Nothing will fix this by retrying; the message says what the admin
    must do (and never contains a secret)."""
