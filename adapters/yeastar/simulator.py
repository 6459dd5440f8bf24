"""A protocol-faithful Yeastar P-Series PBX simulator (OpenAPI v1.0 over HTTP + WebSocket).

The Yeastar client adapter, the demo, the benchmarks and the black-box tests
all run against this instead of a real PBX, so it answers the way the
reference (``shared/reference/yeastar-openapi.md``) says a P-Series does:
HTTP 200 with ``errcode`` for everything, ``Connection: close`` after each
response, the token only from the query string, ``User-Agent`` required, an
IP block after 5 bad logins, at most 8 live access tokens, event frames whose
``msg`` is a JSON-encoded string.  The call world itself (legs, transfers,
phones) lives in :mod:`adapters.yeastar.sim_world`; this module is the server
around it and the fault switches that make it misbehave on purpose.

It runs in-process on the caller's event loop (uvicorn's ``serve()`` in a
task), so a test can change the world, flip a fault and await the client
under test on one loop, or standalone through :func:`serve_forever`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from adapters.yeastar.sim_world import ERRMSG, SERIAL, Phone, SimConfig, SimError, World

__all__ = ["PbxSimulator", "Phone", "SimConfig", "SimError", "SimRequest", "serve_forever"]

API_PREFIX = "/openapi/v1.0"
#: Consecutive bad logins after which get_token answers 70004 for good.
MAX_AUTH_FAILURES = 5
#: Live access tokens per application before get_token answers 60002.
MAX_ACCESS_TOKENS = 8
#: How long reordered frames may wait for their window to fill.
REORDER_FLUSH_S = 0.05
_REDACTED = "<redacted>"
_SECRET_KEYS = frozenset({"password", "access_token", "refresh_token"})
_CALL_TYPES = ("inbound", "outbound", "internal")
_METHODS = ("GET", "POST", "PUT", "DELETE")


def _json(value: Any) -> str:
    """Compact JSON, as the PBX writes it."""
    return json.dumps(value, separators=(",", ":"))


def _error(errcode: int, invalid_param_list: list[dict[str, str]] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"errcode": errcode, "errmsg": ERRMSG.get(errcode, "FAILURE")}
    if invalid_param_list:
        answer["invalid_param_list"] = invalid_param_list
    return answer


def _redact(data: dict[str, Any]) -> dict[str, Any]:
    return {key: _REDACTED if key in _SECRET_KEYS else value for key, value in data.items()}


def _require(body: dict[str, Any], *fields: str) -> list[str]:
    """The named string fields, or 40002 listing the missing ones (as the PBX does)."""
    missing = [name for name in fields if not isinstance(body.get(name), str) or not body[name]]
    if missing:
        raise SimError(40002, [{"field": name, "validation_type": "required"} for name in missing])
    return [body[name] for name in fields]


def _seconds(ttl: float) -> float | int:
    """Token lifetimes are whole seconds on a PBX; keep sub-second test values exact."""
    return int(ttl) if ttl == int(ttl) else ttl


@dataclass(slots=True)
class SimRequest:
    """One HTTP request as the simulator saw it.  ``body`` and ``answer`` have
    passwords and tokens redacted; ``answer`` is None while a ``time_out``
    fault still holds the request.  ``at`` is wall-clock time of arrival."""

    endpoint: str
    body: dict[str, Any]
    answer: dict[str, Any] | None
    at: float


@dataclass(frozen=True, slots=True)
class _Timeout:
    act: bool
    seconds: float


@dataclass(eq=False, slots=True)
class _Socket:
    """One subscribed websocket.  Frames go through ``outbox`` and a single sender
    task, so event frames, acks and the closing frame never interleave."""

    ws: WebSocket
    token: str
    last_rx: float
    topics: frozenset[int] = frozenset()
    outbox: deque[str] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    close_with: tuple[int, str | None] | None = None

    def push(self, text: str) -> None:
        if self.close_with is None:
            self.outbox.append(text)
            self.wake.set()

    def close(self, code: int, last_frame: str | None = None) -> None:
        """Close soon, dropping frames not yet sent (a dropped link loses them too)."""
        if self.close_with is None:
            self.close_with = (code, last_frame)
            self.wake.set()


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the program hosting the simulator
    (a test, the demo, the CLI) owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class PbxSimulator:
    """A Yeastar P-Series PBX on loopback, with a scriptable call world and fault switches.

    Fault switches (set them at any time): ``frame_delay_s`` delays every event
    frame; ``duplicate_frames`` sends each frame twice with that probability;
    ``reorder_window`` holds back frames in groups of that size and shuffles
    them; ``accept_then_close`` closes every new websocket right after the
    handshake.  Randomness comes from ``SimConfig.seed``.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.world = World(self.config, self._publish)
        self.requests: list[SimRequest] = []
        self.port = 0
        self.base_url = ""
        self.frame_delay_s = 0.0
        self.duplicate_frames = 0.0
        self.reorder_window = 0
        self.accept_then_close = False
        self._rng = random.Random(self.config.seed)
        self._access: dict[str, float] = {}  # token -> expiry on the loop clock
        self._refresh: dict[str, float] = {}
        self._auth_failures = 0
        self._operates: Counter[str] = Counter()
        self._refusals: dict[str, deque[int]] = {}
        self._timeouts: dict[str, deque[_Timeout]] = {}
        self._sockets: set[_Socket] = set()
        self._held: list[tuple[int, str]] = []
        self._flush: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._routes: dict[str, tuple[str, bool, Callable[[dict[str, Any], str], dict[str, Any]]]] = {
            # endpoint: (method, needs a token, handler)
            "get_token": ("POST", False, self._get_token),
            "refresh_token": ("POST", False, self._refresh_token),
            "del_token": ("GET", True, self._del_token),
            "call/transfer": ("POST", True, self._transfer),
            "call/hangup": ("POST", True, self._hangup),
            "call/hold": ("POST", True, self._hold),
            "call/unhold": ("POST", True, self._unhold),
            "call/dial": ("POST", True, self._dial),
            "call/query": ("GET", True, self._query),
            "call/listen": ("POST", True, self._listen),
            "call/park": ("POST", True, self._park),
            "call/park_status": ("GET", True, self._park_status),
        }
        self._app = Starlette(
            routes=[
                WebSocketRoute(f"{API_PREFIX}/subscribe", self._subscribe),
                # Every method reaches _http so a wrong one gets the PBX's 10001, not a 405.
                Route(f"{API_PREFIX}/{{endpoint:path}}", self._http, methods=_METHODS),
            ]
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        """Serve on ``host:port`` (0 = any free port); TLS when a certificate is given."""
        # Binding here (not in uvicorn) turns "port in use" into an OSError for the
        # caller instead of uvicorn's sys.exit inside a task.
        self._stopping.clear()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly, so asyncio sets TCP_NODELAY (no Nagle delay on frames).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(
            self._app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            http="h11",
            ws="websockets-sansio",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(10):
                while not self._server.started:
                    if self._serving.done():
                        self._serving.result()  # raises what stopped it (a bad certificate file…)
                        raise RuntimeError("the simulator's server stopped during start-up")
                    await asyncio.sleep(0.005)
        except BaseException:
            sock.close()
            self._serving.cancel()
            raise
        self.port = sock.getsockname()[1]
        scheme = "https" if certfile else "http"
        self.base_url = f"{scheme}://{'[' + host + ']' if family == socket.AF_INET6 else host}:{self.port}"

    async def stop(self) -> None:
        """Close every socket, forget the calls and shut the server down; requests
        held by ``time_out`` are let go so shutdown does not wait for them."""
        self._stopping.set()
        self.drop_sockets()
        self.world.clear()
        self._held.clear()
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await self._serving

    # ------------------------------------------------------------------ the world

    def add_extension(self, number: str, phone: Phone | None = None) -> None:
        self.world.add_extension(number, phone)

    def set_phone(self, number: str, phone: Phone) -> None:
        """Script ``number``'s phone (an extension, or an external number)."""
        self.world.set_phone(number, phone)

    def place_call(
        self, caller: str, callee: str, *, answered: bool = True, inbound_trunk: str | None = None
    ) -> str:
        """Start a call and return its call id; its frames are queued on return."""
        return self.world.place_call(caller, callee, answered=answered, inbound_trunk=inbound_trunk)

    def channel_of(self, number: str) -> str:
        """The most recent live channel of an extension or external number (KeyError if none)."""
        return self.world.channel_of(number)

    def hangup(self, channel_id: str) -> None:
        """That party puts the phone down (SimError 60001 if the channel is gone)."""
        self.world.hangup(channel_id)

    def answer(self, channel_id: str) -> None:
        """A ringing leg answers now, whatever its phone script says."""
        self.world.answer(channel_id)

    def forbid_monitoring(self, number: str) -> None:
        """Extension ``number`` may not be monitored: ``call/listen`` on its calls is refused."""
        self.world.forbid_monitoring(number)

    def parked(self) -> list[dict[str, Any]]:
        """What ``call/park_status`` returns: the parked calls."""
        return self.world.park_status()

    def calls(self) -> list[dict[str, Any]]:
        """What ``call/query`` without a filter returns: every live call and its members."""
        return self.world.query()

    def operate_count(self, op: str) -> int:
        """How many ``attended_operate=<op>`` requests the PBX accepted."""
        return self._operates[op]

    @property
    def subscribers(self) -> int:
        """Websockets connected and subscribed to at least one topic."""
        return sum(1 for sock in self._sockets if sock.topics and sock.close_with is None)

    @property
    def live_tokens(self) -> int:
        """Access tokens alive now (revoked and expired ones do not count): at
        :data:`MAX_ACCESS_TOKENS` a login is refused with 60002."""
        now = self._now()
        return sum(1 for expiry in self._access.values() if expiry > now)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds; TimeoutError after ``timeout`` s.

        A poll, because the predicate can be anything a test asks about the
        simulator or the client under test; the name ``timeout`` is the agreed API.
        """
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ faults

    def drop_sockets(self) -> None:
        """Every websocket goes away now (frames not yet sent are lost)."""
        for sock in self._sockets:
            sock.close(1001)

    def restart(self) -> None:
        """A PBX restart: every call vanishes without an event and the sockets drop."""
        self.world.clear()
        self._held.clear()
        self.drop_sockets()

    def expire_tokens(self) -> None:
        """Every access and refresh token is dead; subscribed sockets get 10004 and close."""
        self._access.clear()
        self._refresh.clear()
        for sock in self._sockets:
            sock.close(1000, _json(_error(10004)))

    def refuse(self, endpoint: str, errcode: int, count: int = 1) -> None:
        """Answer the next ``count`` requests to ``endpoint`` (``"call/transfer"``,
        ``"get_token"``, ``"subscribe"``…) with ``errcode`` without acting."""
        self._refusals.setdefault(endpoint, deque()).extend([errcode] * count)

    def time_out(self, endpoint: str, count: int = 1, *, act: bool = False, seconds: float = 30) -> None:
        """Hold the next ``count`` requests to ``endpoint`` for ``seconds`` (longer than
        the client waits).  ``act=True`` performs the request first ("did act"),
        otherwise nothing happens ("did not act") and the late answer is -2."""
        self._timeouts.setdefault(endpoint, deque()).extend([_Timeout(act, seconds)] * count)

    # ------------------------------------------------------------------ HTTP

    async def _http(self, request: Request) -> JSONResponse:
        endpoint = request.path_params["endpoint"]
        body: dict[str, Any] | None
        if request.method == "GET":
            body = {key: value for key, value in request.query_params.items() if key != "access_token"}
        else:
            try:
                raw = await request.body()
                parsed = json.loads(raw) if raw.strip() else {}
            except ValueError:
                parsed = None
            body = parsed if isinstance(parsed, dict) else None
        record = SimRequest(endpoint, _redact(body or {}), None, time.time())
        self.requests.append(record)
        answer = self._check(request, endpoint)
        timeout = self._take(self._timeouts, endpoint) if answer is None else None
        if answer is None and (timeout is None or timeout.act):
            answer = self._act(request, endpoint, body)
        if answer is not None:
            record.answer = _redact(answer)
        if timeout is not None:
            await self._stall(timeout.seconds)
        if answer is None:  # held without acting: a late failure nobody waits for any more
            answer = record.answer = _error(-2)
        return JSONResponse(answer, headers={"Connection": "close"})

    def _check(self, request: Request, endpoint: str) -> dict[str, Any] | None:
        """The refusals that come before any work: no User-Agent, no such endpoint, a fault."""
        if not request.headers.get("user-agent"):
            return _error(40002)
        route = self._routes.get(endpoint)
        if route is None or route[0] != request.method:
            return _error(10001)
        refusal = self._take(self._refusals, endpoint)
        return None if refusal is None else _error(refusal)

    def _act(self, request: Request, endpoint: str, body: dict[str, Any] | None) -> dict[str, Any]:
        _, needs_token, handler = self._routes[endpoint]
        token = request.query_params.get("access_token", "")
        if needs_token and not self._token_valid(token):
            return _error(10004)
        if body is None:
            return _error(40001)
        try:
            return {"errcode": 0, "errmsg": "SUCCESS", **handler(body, token)}
        except SimError as exc:
            return _error(exc.errcode, exc.invalid_param_list)

    async def _stall(self, seconds: float) -> None:
        """Sleep like a stuck PBX, but let stop() end it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    @staticmethod
    def _take(queues: dict[str, deque[Any]], endpoint: str) -> Any:
        queue = queues.get(endpoint)
        return queue.popleft() if queue else None

    # ------------------------------------------------------------------ tokens

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _token_valid(self, token: str) -> bool:
        return self._access.get(token, float("-inf")) > self._now()

    def _issue_tokens(self) -> dict[str, Any]:
        now = self._now()
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self._access[access] = now + self.config.access_token_ttl
        self._refresh[refresh] = now + self.config.refresh_token_ttl
        return {
            "access_token_expire_time": _seconds(self.config.access_token_ttl),
            "access_token": access,
            "refresh_token_expire_time": _seconds(self.config.refresh_token_ttl),
            "refresh_token": refresh,
        }

    def _get_token(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        if self._auth_failures >= MAX_AUTH_FAILURES:
            raise SimError(70004)
        if body.get("username") != self.config.client_id or body.get("password") != self.config.client_secret:
            self._auth_failures += 1
            raise SimError(-1, [{"field": "username or password", "value": "error"}])
        self._auth_failures = 0
        now = self._now()
        self._access = {token: expiry for token, expiry in self._access.items() if expiry > now}
        if len(self._access) >= MAX_ACCESS_TOKENS:
            raise SimError(60002)
        return self._issue_tokens()

    def _refresh_token(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        (refresh,) = _require(body, "refresh_token")
        if self._refresh.pop(refresh, float("-inf")) <= self._now():
            raise SimError(10004)
        return self._issue_tokens()

    def _del_token(self, _body: dict[str, Any], token: str) -> dict[str, Any]:
        del self._access[token]
        for sock in self._sockets:
            if sock.token == token:
                sock.close(1000, _json(_error(10004)))
        return {}

    # ------------------------------------------------------------------ call control

    def _transfer(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        kind, channel_id = _require(body, "type", "channel_id")
        if kind == "blind":
            number, _ = _require(body, "number", "dial_permission")
            self._check_dial_permission(body)
            return {"call_id": self.world.blind_transfer(channel_id, number)}
        if kind != "attended":
            raise SimError(40002, [{"field": "type", "value": kind}])
        op = body.get("attended_operate")
        if op is None:
            number, _ = _require(body, "number", "dial_permission")
            self._check_dial_permission(body)
            return {"call_id": self.world.attended_start(channel_id, number)}
        call_id = self.world.attended_operate(channel_id, str(op))
        self._operates[str(op)] += 1
        return {"call_id": call_id}

    def _check_dial_permission(self, body: dict[str, Any]) -> None:
        """The PBX dials with that extension's permissions, so it must be one."""
        if not self.world.is_extension(body["dial_permission"]):
            raise SimError(40002, [{"field": "dial_permission", "value": body["dial_permission"]}])

    def _hangup(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        (channel_id,) = _require(body, "channel_id")
        call_id = self.world.leg(channel_id).report_call_id
        self.world.hangup(channel_id)
        return {"call_id": call_id}

    def _hold(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        (channel_id,) = _require(body, "channel_id")
        self.world.hold(channel_id)
        return {"call_id": self.world.leg(channel_id).report_call_id}

    def _unhold(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        (channel_id,) = _require(body, "channel_id")
        self.world.unhold(channel_id)
        return {"call_id": self.world.leg(channel_id).report_call_id}

    def _dial(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        caller, callee = _require(body, "caller", "callee")
        return {"call_id": self.world.dial(caller, callee, auto_answer=body.get("auto_answer") == "yes")}

    # ------------------------------------------------------------------ supervisor actions

    def _listen(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        monitor, channel_id, mode = _require(body, "monitor", "channel_id", "type")
        return {"call_id": self.world.monitor(channel_id, monitor, mode)}

    def _park(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        (channel_id,) = _require(body, "channel_id")
        slot = body.get("parking_slot")
        if slot is not None and not isinstance(slot, str):
            raise SimError(40002, [{"field": "parking_slot", "value": str(slot)}])
        call_id, parked_in = self.world.park(channel_id, slot)
        return {"call_id": call_id, "parking_slot": parked_in}

    def _park_status(self, _body: dict[str, Any], _token: str) -> dict[str, Any]:
        return {"data": self.world.park_status()}

    def _query(self, body: dict[str, Any], _token: str) -> dict[str, Any]:
        call_type = body.get("type")
        if call_type is not None and call_type not in _CALL_TYPES:
            raise SimError(40002, [{"field": "type", "value": call_type}])
        return {"data": self.world.query(body.get("call_id"), body.get("extension"), call_type)}

    # ------------------------------------------------------------------ websocket

    async def _subscribe(self, ws: WebSocket) -> None:
        token = ws.query_params.get("access_token", "")
        record = SimRequest("subscribe", {}, None, time.time())
        self.requests.append(record)
        await ws.accept()
        if self.accept_then_close:
            record.answer = {}
            await ws.close(1000)
            return
        refusal = self._take(self._refusals, "subscribe")
        if not ws.headers.get("user-agent"):
            refusal = 40002
        elif refusal is None and not self._token_valid(token):
            refusal = 10004
        if refusal is not None:
            record.answer = _error(refusal)
            await ws.send_text(_json(record.answer))
            await ws.close(1000)
            return
        record.answer = _error(0)
        sock = _Socket(ws, token, self._now())
        self._sockets.add(sock)
        sender = asyncio.create_task(self._send_loop(sock))
        try:
            await self._receive_loop(sock)
        finally:
            self._sockets.discard(sock)
            sender.cancel()

    async def _receive_loop(self, sock: _Socket) -> None:
        """Read client frames until the socket is gone, closing it when it idles
        for ``idle_close_s`` or its token expires."""
        while True:
            timeout = None
            if sock.close_with is None:
                deadline = min(sock.last_rx + self.config.idle_close_s, self._access.get(sock.token, 0.0))
                timeout = max(0.0, deadline - self._now())
            try:
                message = await asyncio.wait_for(sock.ws.receive(), timeout)
            except TimeoutError:
                expired = not self._token_valid(sock.token)
                sock.close(1000, _json(_error(10004)) if expired else None)
                continue
            if message["type"] == "websocket.disconnect":
                return
            sock.last_rx = self._now()
            text = message.get("text")
            if text is not None:
                reply = self._client_frame(sock, text)
                if reply is not None:
                    sock.push(reply)

    def _client_frame(self, sock: _Socket, text: str) -> str | None:
        """The PBX's reply to a client text frame: heartbeat, or a topic_list to (re)subscribe."""
        if text.strip() == "heartbeat":
            return "heartbeat response"
        try:
            message = json.loads(text)
        except ValueError:
            return None
        topics = message.get("topic_list") if isinstance(message, dict) else None
        if not isinstance(topics, list) or not all(isinstance(topic, int) for topic in topics):
            return _json(_error(40002, [{"field": "topic_list", "validation_type": "invalid"}]))
        sock.topics = frozenset(topics)
        return _json(_error(0))

    @staticmethod
    async def _send_loop(sock: _Socket) -> None:
        try:
            while True:
                await sock.wake.wait()
                sock.wake.clear()
                while sock.outbox and sock.close_with is None:
                    await sock.ws.send_text(sock.outbox.popleft())
                if sock.close_with is not None:
                    code, last_frame = sock.close_with
                    if last_frame is not None:
                        await sock.ws.send_text(last_frame)
                    await sock.ws.close(code)
                    return
        except (WebSocketDisconnect, RuntimeError):
            return  # the client went away first

    # ------------------------------------------------------------------ event frames

    def _publish(self, topic: int, msg: dict[str, Any]) -> None:
        """The world's frame leaves: reordered, duplicated and delayed as the faults say."""
        frame = _json({"type": topic, "sn": SERIAL, "msg": _json(msg)})
        if self.reorder_window <= 1:
            self._fan_out(topic, frame)
            return
        self._held.append((topic, frame))
        if len(self._held) >= self.reorder_window:
            self._flush_held()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(REORDER_FLUSH_S, self._flush_held)

    def _flush_held(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        held, self._held = self._held, []
        self._rng.shuffle(held)
        for topic, frame in held:
            self._fan_out(topic, frame)

    def _fan_out(self, topic: int, frame: str) -> None:
        copies = 2 if self.duplicate_frames > 0 and self._rng.random() < self.duplicate_frames else 1
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if topic not in sock.topics:
                continue
            for _ in range(copies):
                if self.frame_delay_s > 0:
                    loop.call_later(self.frame_delay_s, sock.push, frame)
                else:
                    sock.push(frame)


async def serve_forever(port: int, host: str = "127.0.0.1") -> None:
    """``xferd simulate``: a simulator with extensions 2000, 2005 and 2008 until cancelled."""
    sim = PbxSimulator()
    for number in ("2000", "2005", "2008"):
        sim.add_extension(number)
    await sim.start(host, port)
    # Throwaway credentials of a local simulator: printing them is the point.
    print(f"Yeastar P-Series simulator at {sim.base_url}", flush=True)
    print(f"client_id={sim.config.client_id} client_secret={sim.config.client_secret}", flush=True)
    print("extensions 2000, 2005, 2008; any other number is external and answers after 0.5 s", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
