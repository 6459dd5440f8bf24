"""The seam between the runtime and a PBX platform.

A platform adapter (``adapters.yeastar``, ``adapters.webex``) turns the PBX's
events into engine events and the engine's :class:`~engine.model.PbxRequest`
commands into the platform's HTTP calls.  The runtime only knows this
protocol, so the same engine and control API drive every platform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from engine.model import CallsSnapshot, Event, PbxRequest, RequestFinished

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


class PbxAdapter(Protocol):
    """What the runtime needs from a platform."""

    #: ``"yeastar"`` or ``"webex"``
    platform: str
    #: subset of ``("blind", "attended", "swap", "threeway")``
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
