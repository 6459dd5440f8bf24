"""The Yeastar P-Series platform behind :class:`adapters.base.PbxAdapter`.

Glue only: :mod:`.rest` talks HTTP, :mod:`.tokens` keeps the token,
:mod:`.consumer` runs the event websocket, :mod:`.frames` parses.  Here the
engine's PBX-neutral requests become ``call/transfer`` / ``call/hangup``
bodies, and every way a request can end becomes a
:class:`~engine.model.RequestFinished` (``execute`` never raises for PBX
trouble).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from adapters.base import (
    CALL_ACTIONS,
    ActionResult,
    CallAction,
    Clock,
    CredentialStore,
    EventSink,
    FatalPbxError,
    Observer,
    ParkedCall,
)
from adapters.yeastar.consumer import EventConsumer
from adapters.yeastar.frames import (
    DATA_NOT_FOUND,
    OutcomeUnknown,
    PbxUnreachable,
    TlsVerifyError,
    YeastarError,
    parse_parked,
    parse_query,
)
from adapters.yeastar.rest import API_PATH, YeastarRest, tls_context
from engine.model import CallsSnapshot, Outcome, PbxRequest, RequestFinished

log = structlog.get_logger(__name__)

#: ``call/query`` errcodes that mean the query itself failed (not understood,
#: not allowed, PBX trouble).  Any other non-zero errcode is taken to mean
#: "no such calls" — an assumption Yeastar's docs leave open.  Treating an
#: access problem as "no calls" would make the engine drop live transfers.
_QUERY_FAILED = frozenset({-2, 10001, 10002, 10003, 10004, 10005, 40001, 40002, 70004, 70087})
#: The call types ``call/query?type=`` knows.  Assumption: together they list
#: every live call, so their union is a complete snapshot.
_QUERY_TYPES = ("inbound", "outbound", "internal")


def subscribe_url(base_url: str) -> str:
    """``http(s)://host:port`` → ``ws(s)://host:port/openapi/v1.0/subscribe``."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + API_PATH + "subscribe", "", ""))


class YeastarAdapter:
    """One Yeastar P-Series PBX: events in over the websocket, requests out over REST."""

    platform = "yeastar"
    capabilities: tuple[str, ...] = ("blind", "attended", "swap", "threeway", *CALL_ACTIONS)

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        verify_tls: bool = True,
        ca_file: str | None = None,
        topics: Sequence[int] = (30011, 30012, 30015),
        observer: Observer | None = None,
        clock: Clock = time.time,
        heartbeat_s: float = 25.0,
        request_timeout_s: float = 5.0,
        user_agent: str = "xferd/0.1",
        credentials: CredentialStore | None = None,
    ) -> None:
        """``credentials``: where the OpenAPI token pair is kept, so a restarted
        service (or the instance taking this PBX over) refreshes it instead of
        logging in again (Yeastar allows 8 live tokens)."""
        self._ssl = tls_context(verify_tls, ca_file) if urlsplit(base_url).scheme == "https" else None
        self._observer = observer or Observer()
        self._clock = clock
        self._topics = tuple(topics)
        self._heartbeat_s = heartbeat_s
        self._user_agent = user_agent
        self._ws_url = subscribe_url(base_url)
        self._rest = YeastarRest(
            base_url,
            client_id,
            client_secret,
            ssl_context=self._ssl,
            timeout_s=request_timeout_s,
            user_agent=user_agent,
            observer=self._observer,
            credentials=credentials,
        )
        self._consumer: EventConsumer | None = None

    @property
    def connected(self) -> bool:
        return self._consumer is not None and self._consumer.connected

    @property
    def detail(self) -> str:
        return self._consumer.detail if self._consumer is not None else "not started"

    async def start(self, sink: EventSink) -> None:
        """Log in, then run the event websocket in the background.

        Bad credentials, a blocked or forbidden IP and an untrusted TLS
        certificate raise :class:`FatalPbxError`; a PBX that is merely down
        is retried in the background (see :attr:`detail`).
        """
        try:
            await self._rest.tokens.token()
        except TlsVerifyError as exc:
            raise FatalPbxError(str(exc)) from None
        except (PbxUnreachable, OutcomeUnknown, YeastarError) as exc:
            log.warning("yeastar.login_deferred", error=str(exc))
        self._consumer = EventConsumer(
            self._ws_url,
            self._rest.tokens,
            self.query_calls,
            sink,
            observer=self._observer,
            clock=self._clock,
            topics=self._topics,
            ssl_context=self._ssl,
            user_agent=self._user_agent,
            heartbeat_s=self._heartbeat_s,
        )
        self._consumer.start()

    async def execute(self, request: PbxRequest) -> RequestFinished:
        """Perform ``request``; refusals and timeouts come back as outcomes."""
        if request.action in ("start", "blind") and not request.number:
            return self._finished(request, "refused", errmsg=f"a {request.action} request needs a number")
        try:
            answer = await self._perform(request)
        except YeastarError as exc:
            return self._finished(
                request,
                "refused",
                errcode=exc.errcode,
                errmsg=exc.errmsg,
                gone=exc.errcode == DATA_NOT_FOUND,  # "already gone", e.g. an abort after the PBX rebridged
            )
        except (PbxUnreachable, FatalPbxError) as exc:
            return self._finished(request, "refused", errmsg=str(exc))  # nothing reached the PBX
        except OutcomeUnknown as exc:
            return self._finished(request, "unknown", errmsg=str(exc))
        call_id = answer.get("call_id")
        return self._finished(request, "ok", call_id=call_id if isinstance(call_id, str) else None)

    async def _perform(self, request: PbxRequest) -> dict[str, Any]:
        action, channel_id = request.action, request.channel_id
        if action == "hangup":
            return await self._rest.hangup(channel_id)
        if action in ("complete", "abort", "swap", "threeway"):
            return await self._rest.transfer_operate(channel_id, action)
        number = request.number
        assert number is not None  # checked by execute
        if action == "start":
            return await self._rest.transfer_attended(channel_id, number, request.dial_permission)
        return await self._rest.transfer_blind(channel_id, number, request.dial_permission)

    async def act(self, action: CallAction) -> ActionResult:
        """A supervisor's call action: ``call/listen``, ``call/park``, ``call/park_status``,
        retrieve by ``call/dial`` of the slot, ``call/hangup``.  Outcomes as for :meth:`execute`."""
        try:
            answer = await self._act(action)
        except YeastarError as exc:
            return ActionResult("refused", exc.errcode, exc.errmsg, invalid=exc.invalid)
        except (PbxUnreachable, FatalPbxError) as exc:
            return ActionResult("refused", errmsg=str(exc))  # nothing reached the PBX
        except OutcomeUnknown as exc:
            return ActionResult("unknown", errmsg=str(exc))
        call_id = answer.get("call_id")
        slot = answer.get("parking_slot")
        return ActionResult(
            "ok",
            call_id=call_id if isinstance(call_id, str) else None,
            slot=str(slot) if isinstance(slot, str | int) else action.slot,
            parked=tuple(ParkedCall(**row) for row in parse_parked(answer))
            if action.kind == "parked"
            else (),
        )

    async def _act(self, action: CallAction) -> dict[str, Any]:
        rest, channel = self._rest, action.channel_id or ""
        if action.kind == "monitor":
            return await rest.listen(channel, action.extension or "", action.mode or "listen")
        if action.kind == "park":
            return await rest.park(channel, action.slot)
        if action.kind == "parked":
            return await rest.park_status()
        if action.kind == "retrieve":
            # Dialling the slot from the extension picks the parked call up.
            return await rest.dial(action.extension or "", action.slot or "", auto_answer=action.auto_answer)
        return await rest.hangup(channel)

    def _finished(self, request: PbxRequest, outcome: Outcome, **fields: Any) -> RequestFinished:
        return RequestFinished(self._clock(), request.transfer_id, request.request_id, outcome, **fields)

    async def query_calls(self) -> CallsSnapshot | None:
        """Every live call, from ``call/query`` by each call type, or None
        when the PBX cannot be asked now."""
        at = self._clock()
        rows: list[Any] = []
        try:
            for call_type in _QUERY_TYPES:
                try:
                    answer = await self._rest.query(type=call_type)
                except YeastarError as exc:
                    if exc.errcode in _QUERY_FAILED:
                        raise
                    continue  # no calls of this type
                data = answer.get("data")
                if isinstance(data, list):
                    rows.extend(data)
                elif data is not None:
                    rows.append(data)  # malformed: parse_query reports it
        except (YeastarError, PbxUnreachable, OutcomeUnknown, FatalPbxError) as exc:
            log.warning("yeastar.query_failed", error=str(exc))
            return None
        return parse_query(
            {"errcode": 0, "data": rows}, at, lambda reason: self._observer.bad_frame(reason, "call/query")
        )

    async def close(self) -> None:
        """Close the websocket cleanly, then revoke the token."""
        if self._consumer is not None:
            await self._consumer.close()
        await self._rest.aclose()
