"""The control API (contract §3): FastAPI over the service's runtimes.

Handlers never touch the PBX: they validate, feed one event to the runtime
of the PBX concerned and, when that produced a PBX request, wait (bounded)
for its result so the caller learns whether the PBX accepted.  Every error
— ours, the engine's refusals, FastAPI's own 404/405/422 — leaves as
``{"error", "detail"}``.

This module holds what every route shares (:class:`ApiContext`: which PBX a
request means, who is asking and whether their role allows it, the error
shapes) and the routes that belong to the service as a whole (health,
metrics, the live stream).  Each family of routes lives in its own module
and is mounted by :func:`create_app` (``api_transfers``: transfers and
calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from adapters.service.audit import AuditLog, AuditMiddleware
from adapters.service.logs import get_logger
from adapters.service.roles import Principal, Role
from adapters.service.sessions import CSRF_HEADER, SESSION_COOKIE, SessionError, Sessions
from adapters.service.store import StoreError
from engine.errors import Rejected

if TYPE_CHECKING:
    from adapters.service.runtime import Runtime
    from adapters.service.server import Service, Unit

log = get_logger("xferd.api")

_STATUS_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class ApiError(Exception):
    """An error response: HTTP ``status``, contract ``code``, a sentence saying what to fix."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


class ApiContext:
    """What routes share: the service, PBX resolution, authentication and roles."""

    def __init__(self, service: Service, *, request_timeout_s: float) -> None:
        self.service = service
        self.store = service.store
        self.hub = service.hub
        self.users = service.users
        self.metrics = service.metrics
        api = service.config.api
        secret = api.session_secret.get_secret_value() if api.session_secret is not None else None
        self.sessions = Sessions(self.users, secret=secret, ttl_s=api.session_ttl_s)
        # The adapter answers within its own request timeout; wait a little longer than that.
        self.result_timeout_s = request_timeout_s + 2.0

    # -- which PBX ---------------------------------------------------------------
    @property
    def units(self) -> dict[str, Unit]:
        return self.service.units

    def unit(self, pbx: str | None) -> Unit:
        """The PBX a request names (``"pbx"`` in the body or ``?pbx=``); optional with one PBX."""
        units = self.units
        names = sorted(p.name for p in self.service.config.pbx)
        if pbx is None:
            if len(names) != 1:
                raise ApiError(422, "invalid_request", f"pbx: name the PBX, one of {', '.join(names)}")
            pbx = names[0]
        found = units.get(pbx)
        if found is None and pbx in names:  # several instances: another one owns it, or will
            detail = f"PBX {pbx!r} is being taken over by another instance; retry in a second"
            raise ApiError(503, "pbx_unavailable", detail, {"Retry-After": "1"})
        if found is None:
            raise ApiError(
                422, "invalid_request", f"pbx: no PBX named {pbx!r}; configured: {', '.join(names)}"
            )
        return found

    def runtimes(self, pbx: str | None = None) -> list[Runtime]:
        """Every runtime, or the one of ``pbx`` (validated)."""
        if pbx is not None:
            return [self.unit(pbx).runtime]
        return [unit.runtime for unit in self.units.values()]

    def holder(self, transfer_id: str) -> Runtime | None:
        """The runtime whose engine holds ``transfer_id`` (live or just finished)."""
        for unit in self.units.values():
            if unit.runtime.engine.get(transfer_id) is not None:
                return unit.runtime
        return None

    async def fetch(self, transfer_id: str) -> dict[str, Any] | None:
        """A transfer's resource from whichever PBX has it, or the store."""
        for unit in self.units.values():
            found = unit.runtime.transfer(transfer_id)
            if found is not None:
                return dict(found)
        return await self.store.get(transfer_id)

    # -- who is asking -----------------------------------------------------------
    def authenticate(self, authorization: str | None, query_token: str | None = None) -> Principal | None:
        """The principal a bearer header (or, for browsers' websockets, ``?token=``) names."""
        scheme, _, provided = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not provided:
            provided = query_token or ""
        return self.users.by_token(provided)

    def authenticate_request(self, request: HTTPConnection) -> Principal | None:
        """The principal of a request or websocket: its bearer token (or ``?token=``), else its
        console session cookie — then state-changing methods must carry the CSRF header
        (:mod:`adapters.service.sessions`).  An expired session or a CSRF failure raises ApiError."""
        authorization = request.headers.get("authorization")
        cookie = request.cookies.get(SESSION_COOKIE)
        query_token = request.query_params.get("token") if request.scope["type"] == "websocket" else None
        if authorization or query_token or cookie is None:
            return self.authenticate(authorization, query_token)
        try:
            session = self.sessions.check(cookie)
            if request.scope["type"] == "http":
                self.sessions.check_csrf(session, request.scope["method"], request.headers.get(CSRF_HEADER))
        except SessionError as exc:
            raise ApiError(exc.status, exc.code, exc.detail) from None
        return session.principal

    def requires(self, role: Role) -> Any:
        """A dependency: the request's principal, 401 without one, 403 if its role is below ``role``."""

        # async: a sync dependency would be run in a worker thread on every request.
        async def principal(
            request: Request,
            authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
        ) -> Principal:
            found = self.authenticate_request(request)
            if found is None:
                raise ApiError(401, "unauthorized", "send the API token as 'Authorization: Bearer <token>'")
            request.scope.setdefault("state", {})["principal"] = found
            if not found.allows(role):
                raise ApiError(
                    403,
                    "forbidden",
                    f"user {found.name} has role {found.role}; this request needs role {role} or higher",
                )
            return found

        return Depends(principal)


def create_app(service: Service, *, request_timeout_s: float = 5.0) -> FastAPI:
    """The control API for ``service`` (every PBX it drives)."""
    from adapters.service import api_calls, api_console, api_rules, api_transfers, console_static
    from adapters.service.stream import same_origin, send_batches, stream_snapshot

    ctx = ApiContext(service, request_timeout_s=request_timeout_s)
    app = FastAPI(title="xferd", version="1", summary="Attended-transfer control API")
    app.state.ctx = ctx
    app.state.audit = audit = AuditLog(service.store)
    app.add_middleware(AuditMiddleware, audit=audit)
    _error_shapes(app)

    viewer = [ctx.requires("viewer")]

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if ctx.service.cluster is not None:  # several instances: each PBX's owner, role, lease token
            return JSONResponse(*ctx.service.cluster.health())
        pbxs = []
        for name, unit in ctx.units.items():
            adapter = unit.adapter
            pbxs.append(
                {
                    "name": name,
                    "pbx": "connected" if adapter.connected else "disconnected",
                    "platform": adapter.platform,
                    "capabilities": list(adapter.capabilities),
                    "detail": adapter.detail,
                }
            )
        connected = all(p["pbx"] == "connected" for p in pbxs)
        platforms = {p["platform"] for p in pbxs}
        capabilities = [c for c in pbxs[0]["capabilities"] if all(c in p["capabilities"] for p in pbxs)]
        body: dict[str, Any] = {
            "status": "ok" if connected else "degraded",
            "pbx": "connected" if connected else "disconnected",
            "platform": platforms.pop() if len(platforms) == 1 else "mixed",
            "capabilities": capabilities,
            "detail": pbxs[0]["detail"] if len(pbxs) == 1 else _links(pbxs),
            "pbxs": pbxs,
        }
        return JSONResponse(body, 200 if connected else 503)

    @app.get("/metrics", dependencies=viewer)
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/audit", dependencies=[ctx.requires("supervisor")])
    async def audit_log(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        transfer_id: Annotated[str | None, Query(max_length=64)] = None,
        actor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """State-changing requests, newest first (who, role, what, on what, outcome)."""
        await audit.flush()  # what was just done is part of the answer
        return {"items": await ctx.store.audit_list(limit, transfer_id=transfer_id, actor=actor)}

    @app.websocket("/v1/stream")
    async def stream(
        websocket: WebSocket,
        pbx: Annotated[str | None, Query(max_length=32)] = None,
        snapshot: Annotated[bool, Query()] = False,
    ) -> None:
        try:
            principal = ctx.authenticate_request(websocket)
        except ApiError as exc:
            await websocket.send_denial_response(JSONResponse({"error": exc.code, "detail": exc.detail}, 401))
            return
        if principal is not None and principal.via == "session" and not same_origin(websocket):
            denial = {"error": "forbidden", "detail": "the stream's Origin is not this service"}
            await websocket.send_denial_response(JSONResponse(denial, 403))
            return
        if principal is None:
            denial = {"error": "unauthorized", "detail": "send the API token as a Bearer header or ?token="}
            await websocket.send_denial_response(JSONResponse(denial, 401))
            return
        if pbx is not None and ctx.service.config.pbx_named(pbx) is None:
            denial = {"error": "invalid_request", "detail": f"pbx: no PBX named {pbx!r}"}
            await websocket.send_denial_response(JSONResponse(denial, 422))
            return
        await websocket.accept()
        subscription = ctx.hub.subscribe(pbx, conflated=True)
        # Built after subscribing: every change from then on is queued too.
        first = await stream_snapshot(ctx, app, pbx) if snapshot else None

        async def watch_disconnect() -> None:
            # Clients only listen; reading is how we notice they left.
            try:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
            finally:
                ctx.hub.unsubscribe(subscription)
                subscription.end()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            if first is not None:
                await websocket.send_text(first)
            await send_batches(websocket, subscription)
            if watcher.done():
                return  # the client left
            # 1013 "try again later": the client fell behind; 1001: the service is stopping.
            await websocket.close(1013 if subscription.overflowed else 1001)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away mid-send
        finally:
            watcher.cancel()
            ctx.hub.unsubscribe(subscription)

    app.include_router(api_transfers.routes(ctx))
    app.include_router(api_rules.routes(ctx))
    app.include_router(api_calls.routes(ctx))
    app.include_router(api_console.routes(ctx))
    console_static.mount(app)  # the supervisor console's page and files (/console/)
    _webhooks(app, ctx)
    return app


def _links(pbxs: Sequence[dict[str, Any]]) -> str:
    down = [f"{p['name']}: {p['detail']}" for p in pbxs if p["pbx"] != "connected"]
    return "; ".join(down) if down else f"all {len(pbxs)} PBX links up"


def _webhooks(app: FastAPI, ctx: ApiContext) -> None:
    """``POST /v1/webhooks/webex`` (one Webex PBX) and ``/v1/webhooks/webex/{pbx}`` (any):
    no bearer token — Webex authenticates each delivery by its signature."""
    from adapters.service.api_transfers import WebhookReceiver

    webex = {name: unit for name, unit in ctx.units.items() if unit.platform == "webex"}
    if not webex:
        return

    async def deliver(unit: Unit, request: Request) -> Response:
        receiver = cast(WebhookReceiver, unit.adapter)
        status = await receiver.handle_webhook(await request.body(), request.headers.get("x-spark-signature"))
        if status == 401:
            raise ApiError(401, "unauthorized", "missing or wrong X-Spark-Signature")
        return Response(status_code=status)

    if len(webex) == 1:
        only = next(iter(webex.values()))

        @app.post("/v1/webhooks/webex", status_code=204)
        async def webex_webhook(request: Request) -> Response:
            return await deliver(only, request)

    @app.post("/v1/webhooks/webex/{pbx}", status_code=204)
    async def webex_webhook_of(pbx: str, request: Request) -> Response:
        unit = webex.get(pbx)
        if unit is None:
            raise ApiError(404, "not_found", f"no Webex PBX named {pbx!r}")
        return await deliver(unit, request)


def _error_shapes(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404:
            detail = f"no such path: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": code, "detail": detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error["type"] == "json_invalid" for error in errors):
            return JSONResponse(
                {"error": "invalid_json", "detail": "the request body is not valid JSON"}, 400
            )
        return JSONResponse({"error": "invalid_request", "detail": describe(errors)}, 422)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store_error", error=str(exc))
        return JSONResponse({"error": "store_unavailable", "detail": str(exc)}, 503)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # uvicorn logs the traceback; the client still gets the contract's error shape.
        return JSONResponse({"error": "internal_error", "detail": "the service failed; see its log"}, 500)

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse(
            {"error": exc.code, "detail": exc.detail}, 404 if exc.code == "not_found" else 409
        )


def describe(errors: Sequence[Any]) -> str:
    """FastAPI validation errors as one sentence: ``number: Field required; …``."""
    parts = []
    for error in errors[:3]:
        loc = [str(part) for part in error["loc"]]
        if loc and loc[0] == "body":
            loc = loc[1:]
        where = ".".join(loc) or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
