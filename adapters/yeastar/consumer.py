"""The PBX's event websocket: subscribe, keep alive, reconnect, reconcile.

One session is: take a valid token → open
``ws[s]://…/openapi/v1.0/subscribe?access_token=…`` → send the topic list
and wait for its acknowledgement → fetch a ``call/query`` snapshot and
deliver it → deliver live events until the link ends.

Why the snapshot comes *after* subscribing: the PBX does not queue events
for a disconnected client, so whatever happened while we were away is only
visible in ``call/query``.  Subscribing first means no event can fall in the
gap between the snapshot and the stream; frames that arrive while the
snapshot is fetched wait in the socket's buffer and reach the sink after it.
(One of them may describe a moment just before the snapshot; the next frame
for that leg corrects it, whereas a lost event would never be corrected.)
A session whose snapshot cannot be fetched is abandoned and retried: without
it the engine could act on calls that no longer exist.

Reconnects back off exponentially with jitter (``backoff_s``, e.g. 0.2 s →
10 s).  The backoff resets only after a session stayed subscribed for
``stable_s``: a server that accepts and closes at once must not make us
spin.  Two reconnects are planned rather than failures: shortly before the
access token is due for refresh (the socket must not outlive its token) and
after a 10004 frame; they happen at once when the session had been stable.

A frame never stops the stream: unusable ones are counted through the
observer and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from adapters.base import Clock, EventSink, FatalPbxError, Observer
from adapters.yeastar.frames import OutcomeUnknown, Parsed, PbxUnreachable, YeastarError, parse_frame
from adapters.yeastar.rest import tls_advice
from adapters.yeastar.tokens import TokenManager, install_log_redaction, redact
from engine.model import CallsSnapshot, Event

log = structlog.get_logger(__name__)

#: How much of a bad frame goes into the observer's sample.
SAMPLE_CHARS = 200
#: Session end reasons that are planned, not failures.
_TOKEN_REFRESH = "token refresh"
_TOKEN_EXPIRED = "token expired (10004)"


class _SessionError(Exception):
    """A session step failed in a way worth a sentence on /healthz."""


class EventConsumer:
    """Keeps one subscribed websocket to the PBX and feeds its events to a sink."""

    def __init__(
        self,
        ws_url: str,
        tokens: TokenManager,
        snapshot: Callable[[], Awaitable[CallsSnapshot | None]],
        sink: EventSink,
        *,
        observer: Observer | None = None,
        clock: Clock = time.time,
        topics: Sequence[int] = (30011, 30012, 30015),
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "xferd/0.1",
        heartbeat_s: float = 25.0,
        ack_timeout_s: float = 5.0,
        open_timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        stable_s: float = 5.0,
    ) -> None:
        """``ws_url`` is the subscribe URL without token; ``snapshot`` fetches
        the PBX's calls (None when it cannot); ``clock`` stamps events."""
        install_log_redaction()  # websockets logs the handshake path, token included, at DEBUG
        self._ws_url = ws_url
        self._tokens = tokens
        self._snapshot = snapshot
        self._sink = sink
        self._observer = observer or Observer()
        self._clock = clock
        self._topic_list = json.dumps({"topic_list": list(topics)})
        self._ssl = ssl_context if ws_url.startswith("wss:") else None
        self._user_agent = user_agent
        self._heartbeat_s = heartbeat_s
        self._ack_timeout_s = ack_timeout_s
        self._open_timeout_s = open_timeout_s
        self._backoff_min, self._backoff_max = backoff_s
        self._stable_s = stable_s
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._ever_up = False
        self._up_since: float | None = None
        self._connected = False
        self._detail = "not connected yet"

    @property
    def connected(self) -> bool:
        """True while subscribed and reconciled."""
        return self._connected

    @property
    def detail(self) -> str:
        return self._detail

    def start(self) -> None:
        """Run sessions in the background until :meth:`close`."""
        self._task = asyncio.create_task(self.run(), name="yeastar-events")

    async def close(self) -> None:
        """Close the socket cleanly (1000) and stop reconnecting."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # unlike ``await task``, keeps our own cancellation
        self._set_down("closed")

    async def run(self) -> None:
        """Sessions back to back, until closed or a :class:`FatalPbxError`."""
        delay = self._backoff_min
        while not self._closing.is_set():
            self._up_since = None
            try:
                reason = await self._session()
            except FatalPbxError as exc:
                self._set_down(str(exc))
                return
            except Exception as exc:
                reason = self._describe(exc)
            if self._closing.is_set():
                return
            self._set_down(reason)
            if self._was_stable():
                delay = self._backoff_min
                if reason in (_TOKEN_REFRESH, _TOKEN_EXPIRED):
                    continue
            log.info("yeastar.reconnect_wait", reason=reason, delay_s=round(delay, 3))
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._backoff_max)

    async def _session(self) -> str:
        """One connection, from token to close; returns why it ended."""
        token = await self._tokens.token()
        # Never schedule the planned reconnect sooner than ``stable_s``: if a
        # refresh keeps failing, the old token is reused until it expires.
        reconnect_in = max(self._tokens.refresh_in(), self._stable_s)
        ws = await connect(
            f"{self._ws_url}?access_token={token}",
            ssl=self._ssl,
            user_agent_header=self._user_agent,
            open_timeout=self._open_timeout_s,
            close_timeout=2.0,
            proxy=None,
        )
        self._ws = ws
        early: list[Event] = []
        try:
            reason = await self._subscribe(ws, early)
            if reason is None:
                snapshot = await self._snapshot()
                if snapshot is None:
                    raise _SessionError("call/query failed: cannot reconcile, will retry")
                for event in (snapshot, *early):
                    self._deliver(event)
                self._set_up()
                reason = await self._pump(ws, reconnect_in)
        finally:
            self._ws = None
            await ws.close()
        if reason == _TOKEN_EXPIRED:
            await self._tokens.renew(token)
        return reason

    async def _subscribe(self, ws: ClientConnection, early: list[Event]) -> str | None:
        """Send the topic list; None once acknowledged, else why not.

        Events that come before the acknowledgement go to ``early``, to be
        delivered after the snapshot like every other live event.
        """
        # A PBX refusing the socket says why, then closes: if sending fails,
        # still read that reason below.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(self._topic_list)
        try:
            async with asyncio.timeout(self._ack_timeout_s):
                while True:
                    parsed = self._take(await ws.recv())
                    early.extend(parsed.events)
                    if parsed.kind == "ack":
                        return None
                    if parsed.kind == "token_expired":
                        return _TOKEN_EXPIRED
                    if parsed.kind == "error":
                        raise _SessionError(f"the PBX refused the subscription (errcode {parsed.errcode})")
        except TimeoutError:
            raise _SessionError(f"no topic_list acknowledgement within {self._ack_timeout_s:g} s") from None

    async def _pump(self, ws: ClientConnection, reconnect_in: float) -> str:
        """Deliver frames until the link ends or the token is due."""
        heartbeat = asyncio.create_task(self._heartbeat(ws))
        try:
            async with asyncio.timeout(reconnect_in):
                async for message in ws:
                    parsed = self._take(message)
                    for event in parsed.events:
                        self._deliver(event)
                    if parsed.kind == "token_expired":
                        return _TOKEN_EXPIRED
        except TimeoutError:
            return _TOKEN_REFRESH
        finally:
            heartbeat.cancel()
        return f"the PBX closed the connection ({ws.close_code})"

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """The PBX drops a socket idle for 60 s; its ``heartbeat`` text
        keeps it open (websocket pings alone do not)."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await ws.send("heartbeat")
            except ConnectionClosed:
                return

    def _take(self, message: str | bytes) -> Parsed:
        """Record, parse and count one frame; never raises for its content."""
        at = self._clock()
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self._observer.raw_frame(text, at)
        parsed = parse_frame(message, at)
        if parsed.bad is not None:
            self._observer.bad_frame(parsed.bad, text[:SAMPLE_CHARS])
        if parsed.kind != "bad":
            self._observer.frame(parsed.kind)
        if parsed.kind == "error":
            log.warning("yeastar.error_frame", errcode=parsed.errcode, sample=text[:SAMPLE_CHARS])
        return parsed

    def _deliver(self, event: Event) -> None:
        try:
            self._sink(event)
        except Exception:
            # The sink is the runtime's; its bug must not cut the PBX link.
            log.exception("yeastar.sink_failed", event_type=type(event).__name__)

    def _set_up(self) -> None:
        self._up_since = time.monotonic()
        self._connected = True
        self._detail = "subscribed to the PBX event stream"
        self._observer.link(True, self._detail)
        if self._ever_up:
            self._observer.reconnect()
        self._ever_up = True

    def _was_stable(self) -> bool:
        """Did the session that just ended stay subscribed for ``stable_s``?"""
        return self._up_since is not None and time.monotonic() - self._up_since >= self._stable_s

    def _set_down(self, detail: str) -> None:
        if self._connected or detail != self._detail:
            self._connected = False
            self._detail = detail
            self._observer.link(False, detail)
            log.info("yeastar.link_down", detail=detail)

    @staticmethod
    def _describe(exc: Exception) -> str:
        """A sentence for /healthz; never a token (URLs are redacted)."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return tls_advice(exc)
        if isinstance(exc, _SessionError | PbxUnreachable | OutcomeUnknown | YeastarError):
            return str(exc)
        if isinstance(exc, InvalidStatus):
            return f"the PBX refused the websocket handshake (HTTP {exc.response.status_code})"
        if isinstance(exc, ConnectionClosed):
            return f"the connection was lost ({exc})"
        if isinstance(exc, TimeoutError):
            return "timed out opening the websocket"
        if isinstance(exc, OSError | WebSocketException):
            return redact(f"cannot open the websocket: {type(exc).__name__}: {exc}")
        log.exception("yeastar.session_bug")
        return redact(f"unexpected error: {type(exc).__name__}")
