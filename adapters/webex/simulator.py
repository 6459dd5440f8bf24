"""A Webex Calling API on loopback, for tests, the demo and integrators.

It simulates the call world of ONE user (the transferor, default number
``+15550001000``) with scripted remote parties, speaks the subset of the
API the adapter uses (``/v1/telephony/calls`` dial, answer, hold, resume,
hangup, transfer, list, and the supervisor's bargeIn, park, retrieve;
``/v1/webhooks`` create, list, delete) with the real
error shape, delivers signed ``telephony_calls`` webhooks, and plays an
integration's OAuth endpoints: ``GET /v1/authorize`` (consent is granted at
once: a redirect to ``redirect_uri`` with a code) and ``POST
/v1/access_token`` (``authorization_code`` and ``refresh_token`` grants).
Faults are on demand: an expired or revoked token, revoked refresh tokens,
429 + ``Retry-After``, stalled answers (the action happens, the answer
comes late: an "unknown outcome" for the client), duplicated and reordered
deliveries, a state the reference does not name.

Variants of what the reference leaves open (:class:`SimVariant`): how the
remote party ringing is reported (``connecting`` throughout, or
``connecting`` then ``alerting``), and whether ``dial`` first rings the
user's own device (``clickToDial`` + ``alerting`` until the device answers)
or goes straight to the remote party (a device that auto-answers
click-to-dial).  The remote party can hold the user (``remoteHeld``).

Simplifications (each marked **[unconfirmed]** in the reference where it
matters): only connected calls can be held; a mute (blind) transfer shows the
new call to nobody and ends the user's call when the destination answers; a
busy party makes the consult call go ``disconnected`` quickly without ever
being answered; a barge-in needs a colleague marked on a call
(:meth:`WebexSimulator.colleague_on_call`), else 404 [unconfirmed: Webex's
answer then], and connects like a dial; a parked call waits against its
destination (the user's number by default) until retrieved, as a new call of
the user's, connected at once.

Besides the Webex API, ``/sim/...`` routes script the world over HTTP for
``xferd simulate --pbx webex`` (no token; loopback only): ``POST /sim/incoming
{"from"}``, ``POST /sim/hangup {"callId"}``, ``POST /sim/party {"number",
"answer_after", "busy"}``.

Usage::

    sim = WebexSimulator()
    await sim.start()                      # sim.base_url == "http://127.0.0.1:<port>/v1"
    sim.set_party("+15550003000", answer_after=0.2)
    call_id = sim.incoming_call("+15550002000")
    ...
    await sim.stop()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode

import httpx
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from adapters.webex.events import WEBHOOK_PATH

log = structlog.get_logger(__name__)

USER_NUMBER = "+15550001000"


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the host program
    (the service, the demo, pytest): an embedded server must not steal
    SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LoopbackServer:
    """Serve an ASGI app on 127.0.0.1 (an OS-chosen port) inside this event loop."""

    def __init__(self, app: Starlette, port: int = 0) -> None:
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                log_config=None,  # never reconfigure the host's logging
                lifespan="off",
                timeout_graceful_shutdown=1,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("loopback server stopped before it started")
            await asyncio.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None


class WebhookReceiver:
    """The control API's ``POST /v1/webhooks/webex`` alone, on loopback,
    forwarding each delivery to :attr:`adapter` (anything with the Webex
    adapter's ``handle_webhook``): for tests and live recordings that run an
    adapter without the whole service."""

    def __init__(self) -> None:
        self.adapter: Any = None
        self._server = LoopbackServer(
            Starlette(routes=[Route(WEBHOOK_PATH, self._receive, methods=["POST"])])
        )

    async def _receive(self, request: Request) -> Response:
        assert self.adapter is not None, "set the adapter before deliveries can arrive"
        status = await self.adapter.handle_webhook(
            await request.body(), request.headers.get("x-spark-signature")
        )
        return Response(status_code=int(status))

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    @property
    def public_url(self) -> str:
        """What the adapter's ``public_url`` should be for deliveries to reach it."""
        return f"http://127.0.0.1:{self._server.port}"


@dataclass(slots=True)
class Party:
    """How a remote number behaves when called.  ``answer_after`` None:
    rings until hung up; ``busy``: the call fails after ``busy_after``."""

    answer_after: float | None = 0.05
    busy: bool = False
    busy_after: float = 0.05


@dataclass(frozen=True, slots=True)
class SimVariant:
    """What the simulated cloud does where the reference is silent.

    ``remote_ringing``: the consultation's state while the remote party rings —
    ``connecting`` throughout, or ``connecting`` then ``alerting`` once it rings
    (``ringback_after`` later).  ``device_first``: ``dial`` rings the user's own
    device first (``clickToDial`` + ``alerting``) and places the call only when
    the device answers, ``device_answer_after`` later (None: only ``POST
    /telephony/calls/answer`` answers it).
    """

    remote_ringing: Literal["connecting", "alerting"] = "connecting"
    device_first: bool = False
    device_answer_after: float | None = 0.05
    ringback_after: float = 0.02


#: States in which a call has not been answered yet and may still be.
_UNANSWERED = frozenset({"connecting", "alerting"})


@dataclass(slots=True)
class SimCall:
    """One call of the simulated user, in the API's terms."""

    id: str
    session_id: str
    personality: str
    state: str
    remote_number: str
    created: str
    answered: str | None = None
    #: the remote party is being rung (click-to-dial: after the user's device answered)
    placed: bool = True

    def as_json(self, id_key: str = "id") -> dict[str, Any]:
        body: dict[str, Any] = {
            id_key: self.id,
            "callSessionId": self.session_id,
            "personality": self.personality,
            "state": self.state,
            "remoteParty": {"number": self.remote_number, "privacyEnabled": False, "callType": "external"},
            "created": self.created,
            "appearance": 1,
        }
        if self.answered is not None:
            body["answered"] = self.answered
        return body


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request as the simulator received and answered it."""

    method: str
    path: str
    body: dict[str, Any] | None
    tracking_id: str | None
    status: int
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook POST the simulator made (status 0: no answer)."""

    url: str
    body: bytes
    status: int


@dataclass(slots=True)
class _Target:
    url: str
    secret: str | None
    webhook: dict[str, Any] | None = None


@dataclass(slots=True)
class _Fault:
    count: int = 0
    seconds: float = 0.0
    status: int = 429


@dataclass(slots=True)
class _OAuth:
    """The integration's tokens as the simulated Webex knows them (epoch expiries)."""

    access: dict[str, float] = field(default_factory=dict)
    refresh: dict[str, float] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)  # code -> redirect_uri
    issued: list[str] = field(default_factory=list)  # every token handed out


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


class WebexSimulator:
    """The simulated Webex Calling API and its webhook deliveries."""

    def __init__(
        self,
        access_token: str = "sim-token",
        webhook_secret: str = "sim-webhook-secret",
        user_number: str = USER_NUMBER,
        *,
        variant: SimVariant | None = None,
        default_party: Party | None = None,
        port: int = 0,
    ) -> None:
        self.access_token = access_token
        self.webhook_secret = webhook_secret
        self.user_number = user_number
        self.variant = variant or SimVariant()
        self.default_party = default_party or Party()
        #: the integration (``xferd webex authorize`` / ``[pbx] client_id``)
        self.client_id = "sim-client-id"
        self.client_secret = "sim-client-secret"
        #: lifetimes of the tokens the token endpoint issues (Webex: 14 and 90 days)
        self.access_token_lifetime_s = 1209599.0
        self.refresh_token_lifetime_s = 7775999.0
        #: hand out a new refresh token with every refresh (whether Webex does is unconfirmed)
        self.rotate_refresh_tokens = True
        #: refuse every access token the token endpoint issues, even a fresh one (a scope problem)
        self.refuse_issued_tokens = False
        self._oauth = _OAuth()
        self.requests: list[SimRequest] = []
        self.deliveries: list[Delivery] = []
        self.webhooks: dict[str, dict[str, Any]] = {}
        #: send every delivery twice (same id)
        self.duplicate_deliveries = False
        #: hold each delivery back until the next one was sent (pairs swap)
        self.reorder_deliveries = False
        self._calls: dict[str, SimCall] = {}
        self._parties: dict[str, Party] = {}
        self._ids = itertools.count(1)
        self._token_expired = False
        self._throttle = _Fault()
        self._stall = _Fault()
        self._refusals: dict[str, tuple[_Fault, str]] = {}
        self._colleagues_on_call: set[str] = set()  # numbers a barge-in may join
        self._parked: dict[str, str] = {}  # destination → the parked party's number
        self._extra_targets: list[_Target] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._last_stamp = datetime.now(UTC)
        self._outbox: asyncio.Queue[tuple[_Target, bytes]] = asyncio.Queue()
        self._held: tuple[_Target, bytes] | None = None
        self._changed = asyncio.Event()
        self._posting = False
        self._worker: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._server = LoopbackServer(self._app(), port)

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        await self._server.start()
        self._http = httpx.AsyncClient(timeout=5.0)
        self._worker = asyncio.create_task(self._deliver_loop())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/v1"

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._http is not None:
            await self._http.aclose()
        await self._server.stop()

    # -- scripting -------------------------------------------------------

    def set_party(
        self, number: str, *, answer_after: float | None = 0.05, busy: bool = False, busy_after: float = 0.05
    ) -> None:
        """How ``number`` behaves when dialled (default: answers after 50 ms)."""
        self._parties[number] = Party(answer_after=answer_after, busy=busy, busy_after=busy_after)

    def issue_refresh_token(self) -> str:
        """A refresh token of the integration, as if the user had authorized it earlier."""
        token = f"sim-refresh-{secrets.token_hex(8)}"
        self._oauth.refresh[token] = time.time() + self.refresh_token_lifetime_s
        self._oauth.issued.append(token)
        return token

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token the simulator handed out (to check none leaks)."""
        return list(self._oauth.issued)

    def revoke_access_tokens(self) -> None:
        """Every access token the token endpoint issued is refused from now on (401)."""
        self._oauth.access.clear()

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token is refused from now on (the user revoked the integration)."""
        self._oauth.refresh.clear()

    def token_requests(self) -> list[SimRequest]:
        """Every ``POST /v1/access_token``, whatever its answer."""
        return [r for r in self.requests if r.path.endswith("/access_token")]

    def incoming_call(self, from_number: str) -> str:
        """``from_number`` calls the user, who answers at once: a connected call."""
        call = self._new_call("terminator", from_number, "alerting")
        self._emit(call, "created", "received")
        self._set_state(call, "connected", "updated", "answered")
        return call.id

    def hangup_remote(self, call_id: str) -> None:
        """The remote party of ``call_id`` hangs up."""
        call = self._calls[call_id]
        if call.state != "disconnected":
            self._set_state(call, "disconnected", "deleted", "disconnected")

    def hold_remote(self, call_id: str) -> None:
        """The remote party of the connected call ``call_id`` holds the user (``remoteHeld``)."""
        call = self._calls[call_id]
        if call.state == "connected":
            self._set_state(call, "remoteHeld", "updated", "held")

    def resume_remote(self, call_id: str) -> None:
        """The remote party stops holding the user."""
        call = self._calls[call_id]
        if call.state == "remoteHeld":
            self._set_state(call, "connected", "updated", "resumed")

    def report(self, call_id: str, state: str, personality: str | None = None) -> None:
        """``call_id`` now reports ``state`` (and ``personality``), whatever they
        mean — as a cloud sending a combination the reference does not name.
        A party still ringing keeps its answer timer."""
        call = self._calls[call_id]
        if personality is not None:
            call.personality = personality
        self._set_state(call, state, "updated", "updated")

    def deliver_to(self, url: str, secret: str | None = None) -> None:
        """Also deliver every event to ``url``, signed with ``secret`` (default:
        the simulator's webhook secret), as if a webhook were registered."""
        self._extra_targets.append(_Target(url, secret if secret is not None else self.webhook_secret))

    def throttle(self, count: int, retry_after: float, status: int = 429) -> None:
        """Answer the next ``count`` API requests ``status`` with ``Retry-After``."""
        self._throttle = _Fault(count, retry_after, status)

    def refuse(self, operation: str, status: int, message: str, count: int = 1) -> None:
        """Answer the next ``count`` requests to ``/telephony/calls/<operation>``
        with ``status`` and ``message``, without acting."""
        self._refusals[operation] = (_Fault(count, status=status), message)

    def stall(self, count: int, seconds: float) -> None:
        """Act on the next ``count`` API requests but answer them ``seconds`` late."""
        self._stall = _Fault(count, seconds)

    def expire_token(self) -> None:
        """From now on the access token is refused (401)."""
        self._token_expired = True

    def calls(self) -> list[SimCall]:
        """The user's live calls."""
        return [call for call in self._calls.values() if call.state != "disconnected"]

    def call(self, call_id: str) -> SimCall | None:
        """Any call the simulator made, live or ended."""
        return self._calls.get(call_id)

    def transfer_count(self) -> int:
        """How many ``POST /telephony/calls/transfer`` requests arrived."""
        return sum(1 for r in self.requests if r.path.endswith("/telephony/calls/transfer"))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds; TimeoutError after ``timeout`` s.

        Re-checked after every change the simulator sees (a request, a call
        state, a delivery), so no polling interval to tune.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def drained(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until every queued webhook delivery has been made."""
        await self.wait_for(
            lambda: self._outbox.empty() and not self._posting and self._held is None, timeout
        )

    def _notify(self) -> None:
        """Wake every :meth:`wait_for`: they wait on the event being replaced."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the call world --------------------------------------------------

    def _new_id(self, kind: str) -> str:
        raw = f"ciscospark://us/{kind}/sim-{next(self._ids)}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _stamp(self) -> str:
        """Now, strictly after the previous stamp (so ordering is total)."""
        now = datetime.now(UTC)
        self._last_stamp = max(now, self._last_stamp + timedelta(milliseconds=1))
        return self._last_stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _new_call(self, personality: str, remote_number: str, state: str) -> SimCall:
        call = SimCall(
            id=self._new_id("CALL"),
            session_id=str(uuid.uuid4()),
            personality=personality,
            state=state,
            remote_number=remote_number,
            created=self._stamp(),
        )
        self._calls[call.id] = call
        return call

    def _set_state(self, call: SimCall, state: str, event: str, event_type: str) -> None:
        call.state = state
        if state == "connected" and call.answered is None:
            call.answered = self._stamp()
        self._emit(call, event, event_type)
        self._notify()

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, action))

    def _ringing(self, call: SimCall) -> bool:
        """The remote party of ``call`` is being rung: not answered, not ended."""
        return call.placed and call.answered is None and call.state != "disconnected"

    def _fail(self, call: SimCall) -> None:
        if self._ringing(call):
            self._set_state(call, "disconnected", "deleted", "disconnected")

    def _answer(self, call: SimCall) -> None:
        if self._ringing(call):
            self._set_state(call, "connected", "updated", "answered")

    def _place(self, call: SimCall) -> None:
        """Ring the remote party of an outgoing call (click-to-dial: once the user's device answered)."""
        if call.state == "disconnected" or call.placed:
            return
        call.placed = True
        if call.state != "connecting":
            self._set_state(call, "connecting", "updated", "updated")
        if self.variant.remote_ringing == "alerting":
            self._later(self.variant.ringback_after, lambda: self._ringback(call))
        party = self._parties.get(call.remote_number, self.default_party)
        if party.busy:
            self._later(party.busy_after, lambda: self._fail(call))
        elif party.answer_after is not None:
            self._later(party.answer_after, lambda: self._answer(call))

    def _ringback(self, call: SimCall) -> None:
        if self._ringing(call) and call.state == "connecting":
            self._set_state(call, "alerting", "updated", "updated")

    def _live(self, body: dict[str, Any], key: str = "callId") -> SimCall:
        call_id = body.get(key)
        if not isinstance(call_id, str) or not call_id:
            raise _ApiError(400, f"{key} is required")
        call = self._calls.get(call_id)
        if call is None or call.state == "disconnected":
            raise _ApiError(404, "Call not found")
        return call

    # -- API handlers ----------------------------------------------------

    async def _dial(self, _: Request, body: dict[str, Any]) -> Response:
        destination = body.get("destination")
        if not isinstance(destination, str) or not destination:
            raise _ApiError(400, "destination is required")
        variant = self.variant
        if variant.device_first:
            # Click-to-dial rings the user's own device; the call is placed when it answers.
            call = self._new_call("clickToDial", destination, "alerting")
            call.placed = False
            self._emit(call, "created", "received")
            if variant.device_answer_after is not None:
                self._later(variant.device_answer_after, lambda: self._place(call))
        else:
            call = self._new_call("clickToDial", destination, "connecting")
            call.placed = False
            self._emit(call, "created", "originated")
            self._place(call)
        return JSONResponse({"callId": call.id, "callSessionId": call.session_id}, status_code=201)

    async def _answer_request(self, _: Request, body: dict[str, Any]) -> Response:
        """``POST /telephony/calls/answer``: the user's device answers a call ringing it."""
        call = self._live(body)
        if call.personality == "clickToDial" and not call.placed:
            self._place(call)
        elif call.personality == "terminator" and call.state == "alerting":
            self._set_state(call, "connected", "updated", "answered")
        else:
            raise _ApiError(409, f"Call cannot be answered in state {call.state}")
        return Response(status_code=204)

    async def _hold(self, _: Request, body: dict[str, Any]) -> Response:
        call = self._live(body)
        if call.state not in ("connected", "remoteHeld"):
            raise _ApiError(409, f"Call cannot be held in state {call.state}")
        self._set_state(call, "held", "updated", "held")
        return Response(status_code=204)

    async def _resume(self, _: Request, body: dict[str, Any]) -> Response:
        call = self._live(body)
        if call.state != "held":
            raise _ApiError(409, f"Call is not held (state {call.state})")
        self._set_state(call, "connected", "updated", "resumed")
        return Response(status_code=204)

    async def _hangup(self, _: Request, body: dict[str, Any]) -> Response:
        self._set_state(self._live(body), "disconnected", "deleted", "disconnected")
        return Response(status_code=204)

    async def _transfer(self, _: Request, body: dict[str, Any]) -> Response:
        first = self._live(body, "callId1")
        if "callId2" in body:
            second = self._live(body, "callId2")
            if second is first:
                raise _ApiError(400, "callId1 and callId2 must differ")
            for call in (first, second):
                self._set_state(call, "disconnected", "deleted", "disconnected")
            return Response(status_code=204)
        destination = body.get("destination")
        if not isinstance(destination, str) or not destination:
            raise _ApiError(400, "callId2 or destination is required")
        if first.answered is None:
            raise _ApiError(409, "Unanswered calls cannot be transferred")
        party = self._parties.get(destination, self.default_party)

        def handed_over() -> None:
            if first.state != "disconnected":
                self._set_state(first, "disconnected", "deleted", "disconnected")

        # A mute transfer happens only once the destination answers.
        if not party.busy and party.answer_after is not None:
            self._later(party.answer_after, handed_over)
        return JSONResponse(
            {"callId": self._new_id("CALL"), "callSessionId": str(uuid.uuid4())}, status_code=201
        )

    # -- supervisor call actions ------------------------------------------

    def colleague_on_call(self, number: str) -> None:
        """Colleague ``number`` is in an answered call the user may barge into."""
        self._colleagues_on_call.add(number)

    def parked(self) -> dict[str, str]:
        """Calls parked and not retrieved: destination → the parked party's number."""
        return dict(self._parked)

    async def _barge_in(self, _: Request, body: dict[str, Any]) -> Response:
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise _ApiError(400, "target is required")
        if target not in self._colleagues_on_call:
            raise _ApiError(404, f"No answered call found for {target}")
        call = self._new_call("originator", target, "connecting")
        call.placed = False
        self._emit(call, "created", "originated")
        self._place(call)  # like a dial: the colleague's side rings and answers as scripted
        return JSONResponse({"callId": call.id, "callSessionId": call.session_id}, status_code=201)

    async def _park(self, _: Request, body: dict[str, Any]) -> Response:
        call = self._live(body)
        if call.state not in ("connected", "held", "remoteHeld"):
            raise _ApiError(409, f"Call cannot be parked in state {call.state}")
        destination = body.get("destination") or self.user_number
        if not isinstance(destination, str):
            raise _ApiError(400, "destination must be a string")
        if destination in self._parked:
            raise _ApiError(409, f"A call is already parked against {destination}")
        self._parked[destination] = call.remote_number
        self._set_state(call, "disconnected", "deleted", "disconnected")
        return JSONResponse({"parkedAgainst": {"number": destination, "callType": "location"}})

    async def _retrieve(self, _: Request, body: dict[str, Any]) -> Response:
        destination = body.get("destination")
        if not isinstance(destination, str) or not destination:
            raise _ApiError(400, "destination is required")
        number = self._parked.pop(destination, None)
        if number is None:
            raise _ApiError(404, f"No call is parked against {destination}")
        call = self._new_call("originator", number, "connecting")
        self._emit(call, "created", "originated")
        self._set_state(call, "connected", "updated", "answered")
        return JSONResponse({"callId": call.id, "callSessionId": call.session_id}, status_code=201)

    async def _list_calls(self, _: Request, __: dict[str, Any]) -> Response:
        return JSONResponse({"items": [call.as_json() for call in self.calls()]})

    async def _create_webhook(self, _: Request, body: dict[str, Any]) -> Response:
        for key in ("name", "targetUrl", "resource", "event"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise _ApiError(400, f"{key} is required")
        hook = {
            "id": self._new_id("WEBHOOK"),
            "name": body["name"],
            "targetUrl": body["targetUrl"],
            "resource": body["resource"],
            "event": body["event"],
            "status": "active",
            "created": self._stamp(),
        }
        if isinstance(body.get("secret"), str):
            hook["secret"] = body["secret"]
        self.webhooks[hook["id"]] = hook
        return JSONResponse(hook)

    async def _list_webhooks(self, _: Request, __: dict[str, Any]) -> Response:
        return JSONResponse({"items": list(self.webhooks.values())})

    async def _delete_webhook(self, request: Request, _: dict[str, Any]) -> Response:
        if self.webhooks.pop(request.path_params["webhook_id"], None) is None:
            raise _ApiError(404, "Webhook not found")
        return Response(status_code=204)

    def _app(self) -> Starlette:
        routes = [
            ("/v1/telephony/calls", "GET", self._list_calls),
            ("/v1/telephony/calls/dial", "POST", self._dial),
            ("/v1/telephony/calls/answer", "POST", self._answer_request),
            ("/v1/telephony/calls/hold", "POST", self._hold),
            ("/v1/telephony/calls/resume", "POST", self._resume),
            ("/v1/telephony/calls/hangup", "POST", self._hangup),
            ("/v1/telephony/calls/transfer", "POST", self._transfer),
            ("/v1/telephony/calls/bargeIn", "POST", self._barge_in),
            ("/v1/telephony/calls/park", "POST", self._park),
            ("/v1/telephony/calls/retrieve", "POST", self._retrieve),
            ("/v1/webhooks", "POST", self._create_webhook),
            ("/v1/webhooks", "GET", self._list_webhooks),
            ("/v1/webhooks/{webhook_id}", "DELETE", self._delete_webhook),
        ]
        plain = [
            Route("/v1/access_token", self._logged(self._access_token), methods=["POST"]),
            Route("/v1/authorize", self._logged(self._authorize), methods=["GET"]),
            Route("/sim/incoming", self._logged(self._sim_incoming), methods=["POST"]),
            Route("/sim/hangup", self._logged(self._sim_hangup), methods=["POST"]),
            Route("/sim/party", self._logged(self._sim_party), methods=["POST"]),
        ]
        api = [Route(path, self._endpoint(h), methods=[m]) for path, m, h in routes]
        return Starlette(routes=api + plain)

    # -- OAuth (an integration) ------------------------------------------

    def _logged(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Routes outside the bearer-checked API: logged in :attr:`requests` (secrets masked)."""

        async def endpoint(request: Request) -> Response:
            arrived = time.monotonic()
            try:
                response = await handler(request)
            except _ApiError as error:
                response = _error(error.status, error.message, None)
            shown = getattr(request.state, "shown", None)
            self.requests.append(
                SimRequest(request.method, request.url.path, shown, None, response.status_code, arrived)
            )
            self._notify()
            return response

        return endpoint

    def _bearer_ok(self, header: str | None) -> bool:
        token = (header or "").removeprefix("Bearer ")
        if token == self.access_token:
            return not self._token_expired
        expires = self._oauth.access.get(token)
        return expires is not None and expires > time.time() and not self.refuse_issued_tokens

    def _grant(self) -> JSONResponse:
        now = time.time()
        access = f"sim-access-{secrets.token_hex(8)}"
        refresh = f"sim-refresh-{secrets.token_hex(8)}"
        self._oauth.access[access] = now + self.access_token_lifetime_s
        self._oauth.refresh[refresh] = now + self.refresh_token_lifetime_s
        self._oauth.issued += [access, refresh]
        return JSONResponse(
            {
                "access_token": access,
                "expires_in": self.access_token_lifetime_s,
                "refresh_token": refresh,
                "refresh_token_expires_in": self.refresh_token_lifetime_s,
                "token_type": "Bearer",
                "scope": "spark:calls_read spark:calls_write",
            }
        )

    async def _access_token(self, request: Request) -> Response:
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
        request.state.shown = {
            key: "***" if key in ("client_secret", "refresh_token", "code") else value
            for key, value in form.items()
        }
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            raise _ApiError(401, "Invalid client credentials")
        grant = form.get("grant_type")
        if grant == "refresh_token":
            token = form.get("refresh_token", "")
            expires = self._oauth.refresh.get(token)
            if expires is None or expires <= time.time():
                raise _ApiError(400, "Invalid or revoked refresh token")
            response = self._grant()
            if not self.rotate_refresh_tokens:
                # Keep handing out the same refresh token, renewed.
                issued = json.loads(bytes(response.body))
                del self._oauth.refresh[issued["refresh_token"]]
                self._oauth.refresh[token] = time.time() + self.refresh_token_lifetime_s
                issued["refresh_token"] = token
                return JSONResponse(issued)
            del self._oauth.refresh[token]
            return response
        if grant == "authorization_code":
            redirect = self._oauth.codes.pop(form.get("code", ""), None)
            if redirect is None or redirect != form.get("redirect_uri"):
                raise _ApiError(400, "Invalid authorization code or redirect_uri")
            return self._grant()
        raise _ApiError(400, "grant_type must be refresh_token or authorization_code")

    async def _authorize(self, request: Request) -> Response:
        """The consent page, consented at once: a redirect carrying a code."""
        query = request.query_params
        shown = ("client_id", "response_type", "redirect_uri", "scope")
        request.state.shown = {key: query[key] for key in shown if key in query}
        if query.get("client_id") != self.client_id:
            raise _ApiError(400, "Unknown client_id")
        redirect = query.get("redirect_uri")
        if query.get("response_type") != "code" or not redirect:
            raise _ApiError(400, "response_type=code and redirect_uri are required")
        code = f"sim-code-{secrets.token_hex(8)}"
        self._oauth.codes[code] = redirect
        params = {"code": code} | ({"state": query["state"]} if "state" in query else {})
        return RedirectResponse(f"{redirect}?{urlencode(params)}", status_code=302)

    # -- scripting over HTTP (xferd simulate) ----------------------------

    async def _sim_body(self, request: Request) -> dict[str, Any]:
        body = _json_object(await request.body())
        if body is None:
            raise _ApiError(400, "The request body must be a JSON object")
        request.state.shown = body
        return body

    async def _sim_incoming(self, request: Request) -> Response:
        number = (await self._sim_body(request)).get("from")
        if not isinstance(number, str) or not number:
            raise _ApiError(400, "from is required")
        return JSONResponse({"callId": self.incoming_call(number)}, status_code=201)

    async def _sim_hangup(self, request: Request) -> Response:
        call = self._live(await self._sim_body(request))
        self.hangup_remote(call.id)
        return Response(status_code=204)

    async def _sim_party(self, request: Request) -> Response:
        body = await self._sim_body(request)
        number, answer_after, busy = (
            body.get("number"),
            body.get("answer_after", 0.5),
            body.get("busy", False),
        )
        if not isinstance(number, str) or not number:
            raise _ApiError(400, "number is required")
        if not (answer_after is None or isinstance(answer_after, int | float)) or not isinstance(busy, bool):
            raise _ApiError(400, "answer_after is seconds or null (never answers); busy is true or false")
        self.set_party(number, answer_after=answer_after, busy=busy)
        return Response(status_code=204)

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler with what every Webex request goes through: the
        request log, the bearer check, throttling, stalls, the error shape."""

        async def endpoint(request: Request) -> Response:
            arrived = time.monotonic()
            tracking_id = request.headers.get("trackingid")
            body = _json_object(await request.body())
            try:
                if not self._bearer_ok(request.headers.get("authorization")):
                    raise _ApiError(
                        401,
                        "The request requires a valid access token set in the Authorization request header.",
                    )
                if self._throttle.count > 0:
                    self._throttle.count -= 1
                    response: Response = _error(self._throttle.status, "Too Many Requests", tracking_id)
                    response.headers["Retry-After"] = f"{self._throttle.seconds:g}"
                elif refusal := self._refusal(request.url.path):
                    response = _error(refusal[0], refusal[1], tracking_id)
                elif request.method == "POST" and body is None:
                    raise _ApiError(400, "The request body must be a JSON object")
                else:
                    response = await handler(request, body or {})
            except _ApiError as error:
                response = _error(error.status, error.message, tracking_id)
            self.requests.append(
                SimRequest(request.method, request.url.path, body, tracking_id, response.status_code, arrived)
            )
            self._notify()
            if self._stall.count > 0:
                self._stall.count -= 1
                await asyncio.sleep(self._stall.seconds)
            return response

        return endpoint

    def _refusal(self, path: str) -> tuple[int, str] | None:
        fault, message = self._refusals.get(path.rsplit("/", 1)[-1], (None, ""))
        if fault is None or fault.count <= 0:
            return None
        fault.count -= 1
        return fault.status, message

    # -- webhook deliveries ----------------------------------------------

    def _targets(self) -> list[_Target]:
        registered = [
            _Target(hook["targetUrl"], hook.get("secret"), hook)
            for hook in self.webhooks.values()
            if hook["resource"] == "telephony_calls"
        ]
        return registered + self._extra_targets

    def _emit(self, call: SimCall, event: str, event_type: str) -> None:
        data = call.as_json("callId") | {"eventType": event_type, "eventTimestamp": self._stamp()}
        for target in self._targets():
            envelope = {
                "id": self._new_id("DELIVERY"),
                "name": (target.webhook or {}).get("name", "sim"),
                "targetUrl": target.url,
                "resource": "telephony_calls",
                "event": event,
                "orgId": "sim-org",
                "actorId": "sim-person",
                "ownedBy": "creator",
                "status": "active",
                "created": (target.webhook or {}).get("created", self._stamp()),
                "data": data,
            }
            self._outbox.put_nowait((target, json.dumps(envelope, separators=(",", ":")).encode()))

    async def _deliver_loop(self) -> None:
        """Deliver in order, one at a time — or, with ``reorder_deliveries``,
        each delivery after the one that follows it."""
        while True:
            item: tuple[_Target, bytes] | None = None
            # A held-back delivery waits for the next one only briefly.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05 if self._held is not None else None):
                    item = await self._outbox.get()
            self._posting = True
            try:
                if item is not None and self.reorder_deliveries and self._held is None:
                    self._held = item
                    continue
                if item is not None:
                    await self._post(*item)
                if self._held is not None:
                    await self._post(*self._held)
                    self._held = None
            finally:
                self._posting = False
                self._notify()

    async def _post(self, target: _Target, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        if target.secret:
            headers["X-Spark-Signature"] = hmac.new(target.secret.encode(), body, hashlib.sha1).hexdigest()
        assert self._http is not None
        for _ in range(2 if self.duplicate_deliveries else 1):
            try:
                response = await self._http.post(target.url, content=body, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                log.warning("webex_sim_delivery_failed", url=target.url, error=type(exc).__name__)
                status = 0
            self.deliveries.append(Delivery(target.url, body, status))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error(status: int, message: str, tracking_id: str | None) -> JSONResponse:
    tracking = tracking_id or f"SIM_{uuid.uuid4()}"
    return JSONResponse(
        {"message": message, "errors": [{"description": message}], "trackingId": tracking},
        status_code=status,
        headers={"TrackingID": tracking},
    )


async def serve_forever(port: int) -> None:
    """``xferd simulate --pbx webex``: the Webex simulator alone until cancelled."""
    sim = WebexSimulator(port=port, default_party=Party(answer_after=0.5))
    await sim.start()
    refresh_token = sim.issue_refresh_token()
    # Throwaway credentials of a local simulator: printing them is the point.
    print(f"Webex Calling simulator at {sim.base_url}", flush=True)
    print(f"access_token={sim.access_token} webhook_secret={sim.webhook_secret}", flush=True)
    print(
        f"client_id={sim.client_id} client_secret={sim.client_secret} refresh_token={refresh_token}",
        flush=True,
    )
    print(f"user {sim.user_number}; any other number answers after 0.5 s", flush=True)
    print(
        'script it: POST /sim/incoming {"from": NUMBER}, POST /sim/hangup {"callId": ID}, '
        'POST /sim/party {"number", "answer_after", "busy"}',
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
