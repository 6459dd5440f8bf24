"""Any instance serves the API: requests about a PBX owned elsewhere go to its owner.

Theory of operation
-------------------
In a cluster each PBX is driven by the instance holding its lease
(:mod:`adapters.service.ha`).  A client may call any instance; this ASGI
middleware (outermost, so the owner — not the relay — audits the request)
finds which PBX a request is about and, when another instance owns it,
relays the request to the owner's advertised URL and the answer back
unchanged (status, body, headers), so the client cannot tell.

Which PBX: ``?pbx=``, else ``"pbx"`` in a JSON body, else — for an
operation on a transfer (``POST /v1/transfers/{id}/{op}``) — the PBX the
shared store files the transfer under, else the only configured PBX.
Requests the shared store answers as well anywhere (``GET
/v1/transfers/{id}``, history, audit) and this instance's own things
(rules, webhooks, the stream) are served locally.

The credentials travel as sent (``Authorization``, the console's cookie and
CSRF header): the owner authenticates and authorises the request itself.
A relayed request carries ``X-Xferd-Forwarded`` and is never relayed again
(an owner that just lost the PBX answers 503 instead of bouncing it).  With
no live owner (a takeover under way) the answer is 503 with ``Retry-After:
1`` — the takeover lasts at most the lease TTL plus the PBX login.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import httpx

from adapters.service.logs import get_logger

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from adapters.service.ha import Cluster

log = get_logger("xferd.forward")

FORWARDED = "x-xferd-forwarded"
#: Paths served where they arrive (this instance's own things, or what the shared store answers).
LOCAL = re.compile(r"^/v1/(stream|audit|rules|webhooks)(/|$)")
TRANSFER_OP = re.compile(r"^/v1/transfers/([^/]+)/[^/]+$")
#: Headers not relayed (hop-by-hop, or recomputed by the HTTP client).
HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}
)
#: How long a relayed request may take: the owner waits for the PBX itself (5 s + a margin).
FORWARD_TIMEOUT_S = 15.0


class ForwardMiddleware:
    """Relays ``/v1`` requests about a PBX owned by another instance to that instance."""

    def __init__(self, app: ASGIApp, cluster: Cluster) -> None:
        self.app = app
        self.cluster = cluster

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/") or LOCAL.match(path):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if FORWARDED in headers:
            await self.app(scope, receive, send)
            return
        body = b""
        consumed = scope["method"] in ("POST", "PUT", "PATCH", "DELETE")
        if consumed:
            body = await _read_body(receive)
        pbx = await self._pbx_of(scope, path, body)
        units = self.cluster.service.units
        if pbx is None or pbx in units or self.cluster.config.pbx_named(pbx) is None:
            await self.app(scope, _replay(body) if consumed else receive, send)
            return
        url = self.cluster.owner_url(pbx)
        if url is None:
            await _answer(send, 503, {"error": "pbx_unavailable", "detail": _no_owner(pbx)}, retry=True)
            return
        await self._relay(scope, headers, body, url, send)

    async def _pbx_of(self, scope: Scope, path: str, body: bytes) -> str | None:
        query = httpx.QueryParams(scope.get("query_string", b"").decode("latin-1"))
        named = query.get("pbx")
        if named:
            return str(named)
        if body:
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("pbx"), str):
                return str(decoded["pbx"])
        method = scope["method"]
        if method == "POST" and (match := TRANSFER_OP.match(path)):
            transfer_id = match.group(1)
            for name, unit in self.cluster.service.units.items():
                if unit.runtime.engine.get(transfer_id) is not None:
                    return name
            stored = await self.cluster.service.store.get(transfer_id)
            return str(stored.get("pbx", "default")) if stored else None
        if method == "GET" and path.startswith("/v1/transfers") and "state=active" not in str(query):
            return None  # the shared store answers it here
        names = [pbx.name for pbx in self.cluster.config.pbx]
        return names[0] if len(names) == 1 else None

    async def _relay(self, scope: Scope, headers: dict[str, str], body: bytes, url: str, send: Send) -> None:
        if self.cluster.http is None:  # closed by the cluster when the service stops
            self.cluster.http = httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S, trust_env=False)
        out = {k: v for k, v in headers.items() if k not in HOP}
        out[FORWARDED] = self.cluster.id
        target = url + scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            answer = await self.cluster.http.request(scope["method"], target, headers=out, content=body)
        except httpx.HTTPError as exc:
            log.warning("forward_failed", owner=url, error=type(exc).__name__)
            detail = "the instance that owns this PBX did not answer; retry in a second"
            await _answer(send, 503, {"error": "pbx_unavailable", "detail": detail}, retry=True)
            return
        relayed = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in answer.headers.multi_items()
            if k.lower() not in HOP and k.lower() != "content-encoding"
        ]
        relayed.append((b"content-length", str(len(answer.content)).encode()))
        await send({"type": "http.response.start", "status": answer.status_code, "headers": relayed})
        await send({"type": "http.response.body", "body": answer.content})


def _no_owner(pbx: str) -> str:
    return f"PBX {pbx!r} has no owner right now (another instance is taking it over); retry in a second"


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands the already-read body to the app, then waits like the real one."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        import asyncio

        await asyncio.Event().wait()  # the app only reads past the body to see a disconnect
        return {"type": "http.disconnect"}

    return receive


async def _answer(send: Send, status: int, body: dict[str, Any], *, retry: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
