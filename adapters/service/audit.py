"""The audit log: who asked the service to change what, and what came of it.

Theory of operation
-------------------
Every state-changing request to the control API (any method but GET/HEAD/
OPTIONS under ``/v1/``, except the Webex webhook, which is the PBX talking)
is recorded once it has been answered: when, who (the principal's name and
role, :mod:`adapters.service.roles`), what (an action name such as
``transfer.complete``), on which PBX, transfer and channel, the HTTP status
and the outcome (``ok`` or the error code of the answer).

The recording is an ASGI middleware, not a call in each route, so a route
added later cannot forget it; routes only *note* what the request was about
(:func:`note`) when the path alone does not say (a new transfer's id).
Refused requests are recorded too (a 401 as actor ``-``): a console that
lies about what was tried is as bad as one that lies about calls.

Entries are written in batches by a background task (one transaction per
batch), never on the request's path: auditing must not slow the decisive
path.  ``close()`` writes what is left; an entry the store cannot take is
logged and counted, and the service goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from adapters.service.logs import get_logger
from adapters.service.roles import Principal
from adapters.service.store import StoreError, TransferStore

log = get_logger("xferd.audit")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds between batch writes.
FLUSH_EVERY_S = 0.2
_READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})


def note(request: Request, **fields: Any) -> None:
    """Tell the audit log what this request is about (``action``, ``pbx``,
    ``transfer_id``, ``channel_id``); later notes add to earlier ones."""
    state = request.scope.setdefault("state", {})
    state.setdefault("audit", {}).update({k: v for k, v in fields.items() if v is not None})


def audited(scope: Scope) -> bool:
    """Whether a request is state-changing API traffic that the log records."""
    path = str(scope.get("path", ""))
    return (
        scope["type"] == "http"
        and scope.get("method") not in _READ_ONLY
        and path.startswith("/v1/")
        and not path.startswith("/v1/webhooks/")
    )


class AuditLog:
    """Collects entries and writes them to the store in batches."""

    def __init__(self, store: TransferStore, *, on_error: Callable[[], None] | None = None) -> None:
        self.store = store
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._on_error = on_error

    def record(self, entry: dict[str, Any]) -> None:
        self._pending.append(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_EVERY_S)
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self.store.audit_append(batch)
        except StoreError as exc:
            if self._on_error is not None:
                self._on_error()
            log.error("audit_not_saved", entries=len(batch), error=str(exc))

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.flush()


class AuditMiddleware:
    """Pure ASGI (no per-request task or body buffering beyond error answers)."""

    def __init__(self, app: App, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not audited(scope):
            await self.app(scope, receive, send)
            return
        status = 0
        error_body = bytearray()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < 8192:
                error_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.audit.record(entry(scope, status or 500, bytes(error_body)))


def entry(scope: Scope, status: int, error_body: bytes) -> dict[str, Any]:
    """The audit entry for an answered request (see the store's ``AUDIT_FIELDS``)."""
    state = scope.get("state") or {}
    principal: Principal | None = state.get("principal")
    noted: dict[str, Any] = state.get("audit") or {}
    params: dict[str, Any] = scope.get("path_params") or {}
    outcome, detail = "ok", ""
    if status >= 400:
        try:
            answer = json.loads(error_body)
            outcome, detail = str(answer.get("error", "error")), str(answer.get("detail", ""))[:500]
        except (ValueError, AttributeError):
            outcome = "error"
    route = scope.get("route")
    template = getattr(route, "path", None) or str(scope.get("path", ""))
    return {
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": principal.name if principal is not None else "-",
        "role": principal.role if principal is not None else "-",
        "action": noted.get("action") or f"{scope.get('method')} {template}",
        "pbx": noted.get("pbx"),
        "transfer_id": noted.get("transfer_id") or params.get("transfer_id"),
        "channel_id": noted.get("channel_id") or params.get("channel_id"),
        "status": status,
        "outcome": outcome,
        "detail": detail,
    }
