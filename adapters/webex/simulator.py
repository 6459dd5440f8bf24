"""A Webex Calling API on loopback, for tests, the demo and integrators.

It simulates the call world of ONE user (the transferor, default number
``+15550001000``) with scripted remote parties, speaks the subset of the
API the adapter uses (``/v1/telephony/calls`` dial, hold, resume, hangup,
transfer, list, and the supervisor's bargeIn, park, retrieve;
``/v1/webhooks`` create, list, delete) with the real error
shape, and delivers signed ``telephony_calls`` webhooks.  Faults are on
demand: an expired token, 429 + ``Retry-After``, stalled answers (the action
happens, the answer comes late: an "unknown outcome" for the client),
duplicated and reordered deliveries.

Simplifications (each marked **[unconfirmed]** in the reference where it
matters): ``dial`` skips the click-to-dial ring of the user's own device and
goes straight to ``connecting`` (as with a device that auto-answers
click-to-dial); only connected calls can be held; a mute (blind) transfer
shows the new call to nobody and ends the user's call when the destination
answers; a busy party makes the consult call go ``disconnected`` quickly
without ever being answered; a barge-in needs a colleague marked on a call
(:meth:`WebexSimulator.colleague_on_call`), else 404 [unconfirmed: Webex's
answer then], and connects like a dial; a parked call waits against its
destination (the user's number by default) until retrieved, as a new call of
the user's, connected at once.

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
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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

    def __init__(self, app: Starlette) -> None:
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
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


@dataclass(slots=True)
class Party:
    """How a remote number behaves when called.  ``answer_after`` None:
    rings until hung up; ``busy``: the call fails after ``busy_after``."""

    answer_after: float | None = 0.05
    busy: bool = False
    busy_after: float = 0.05


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
    ) -> None:
        self.access_token = access_token
        self.webhook_secret = webhook_secret
        self.user_number = user_number
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
        self._server = LoopbackServer(self._app())

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

    def _fail(self, call: SimCall) -> None:
        if call.state == "connecting":
            self._set_state(call, "disconnected", "deleted", "disconnected")

    def _answer(self, call: SimCall) -> None:
        if call.state == "connecting":
            self._set_state(call, "connected", "updated", "answered")

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
        call = self._new_call("clickToDial", destination, "connecting")
        self._emit(call, "created", "originated")
        party = self._parties.get(destination, Party())
        if party.busy:
            self._later(party.busy_after, lambda: self._fail(call))
        elif party.answer_after is not None:
            self._later(party.answer_after, lambda: self._answer(call))
        return JSONResponse({"callId": call.id, "callSessionId": call.session_id}, status_code=201)

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
        party = self._parties.get(destination, Party())

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
        self._emit(call, "created", "originated")
        self._later(0.05, lambda: self._answer(call))
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
        return Starlette(routes=[Route(path, self._endpoint(h), methods=[m]) for path, m, h in routes])

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler with what every Webex request goes through: the
        request log, the bearer check, throttling, stalls, the error shape."""

        async def endpoint(request: Request) -> Response:
            arrived = time.monotonic()
            tracking_id = request.headers.get("trackingid")
            body = _json_object(await request.body())
            try:
                if (
                    self._token_expired
                    or request.headers.get("authorization") != f"Bearer {self.access_token}"
                ):
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
            self._outbox.put_nowait((target, json.dumps(envelope).encode()))

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
