"""The console's login: ``POST /console/login``, ``POST /console/logout``, ``GET /console/me``.

A browser trades an API token for a session cookie once (see
:mod:`adapters.service.sessions` for the cookies, CSRF and the rate limit);
from then on every ``/v1`` route and ``/v1/stream`` accept that cookie.
Logins are recorded in the audit log (action ``console.login``, the user or
``-``), so "who tried to log in" has an answer.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StringConstraints

from adapters.service.api import ApiError
from adapters.service.audit import entry
from adapters.service.logs import get_logger
from adapters.service.sessions import (
    LOGIN_FAILED,
    SESSION_COOKIE,
    LoginLimiter,
    SessionError,
    is_https,
)

if TYPE_CHECKING:
    from adapters.service.api import ApiContext

log = get_logger("xferd.console")


class Login(BaseModel):
    """Body of ``POST /console/login``."""

    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    """An API token (`[api] token` or a user's token from `xferd token new`)."""


def routes(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    limiter = LoginLimiter()

    def client_of(request: Request) -> str:
        return request.client.host if request.client is not None else "-"

    def audit(request: Request, status: int, actor: tuple[str, str] | None, outcome: str) -> None:
        record = entry(request.scope, status, b"")
        record.update(action="console.login", outcome=outcome, status=status)
        if actor is not None:
            record.update(actor=actor[0], role=actor[1])
        request.app.state.audit.record(record)

    @router.post("/console/login", status_code=204, responses={401: {}, 429: {}})
    async def login(request: Request, body: Login) -> Response:
        """Trade an API token for a session cookie (`xferd_session`) and a CSRF cookie (`xferd_csrf`).
        Wrong token: 401 `{"error": "login failed"}`; more than 5 failures a minute from one
        address: 429 with `Retry-After`."""
        client = client_of(request)
        wait = limiter.retry_after(client)
        if wait is not None:
            audit(request, 429, None, "rate_limited")
            seconds = max(1, int(wait + 0.999))
            return JSONResponse(
                {"error": "too_many_requests", "detail": f"too many failed logins; try again in {seconds} s"},
                429,
                headers={"Retry-After": str(seconds)},
            )
        issued = ctx.sessions.login(body.token)
        if issued is None:
            limiter.failed(client)
            audit(request, 401, None, "login_failed")
            log.warning("console_login_failed", client=client)
            return JSONResponse(LOGIN_FAILED, 401)
        limiter.succeeded(client)
        principal, value, csrf = issued
        response = Response(status_code=204)
        ctx.sessions.set_cookies(response, value, csrf, secure=is_https(request.scope))
        audit(request, 204, (principal.name, principal.role), "ok")
        log.info("console_login", user=principal.name, role=principal.role, client=client)
        return response

    @router.post("/console/logout", status_code=204)
    async def logout(request: Request) -> Response:
        """End the session: its cookies are cleared and this process refuses it from now on."""
        value = request.cookies.get(SESSION_COOKIE)
        if value is not None:
            # Expired or foreign: clearing the cookies is all there is to do.
            with contextlib.suppress(SessionError):
                ctx.sessions.revoke(ctx.sessions.check(value))
        response = Response(status_code=204)
        ctx.sessions.clear_cookies(response, secure=is_https(request.scope))
        return response

    @router.get("/console/me")
    async def me(request: Request) -> dict[str, Any]:
        """Who the session (or bearer token) belongs to: `{"name", "role"}`; 401 without one."""
        found = ctx.authenticate_request(request)
        if found is None:
            raise ApiError(401, "unauthorized", "log in at /console first")
        return {"name": found.name, "role": found.role}

    @router.get("/v1/transfers/{transfer_id}/timeline", dependencies=[ctx.requires("viewer")])
    async def transfer_timeline(
        transfer_id: Annotated[str, Path(max_length=64)],
    ) -> dict[str, Any]:
        """A transfer's story, oldest first: `{"transfer_id", "entries": [{"at", "kind", "text"}]}`
        (kinds: `client`, `request`, `answer`, `pbx`, `state`, `timer`, `reconcile`, `rule`,
        `note`) — what `xferd replay --timeline` tells, for a live or a stored transfer."""
        journal = ctx.service.journal
        resource = await ctx.fetch(transfer_id)
        if resource is None and not journal.holds(transfer_id):
            raise ApiError(404, "not_found", f"no transfer with id {transfer_id}")
        audit: list[dict[str, Any]] = []
        if not journal.holds(transfer_id):
            audit = await ctx.store.audit_list(100, transfer_id=transfer_id)
        return {"transfer_id": transfer_id, "entries": journal.entries(transfer_id, resource, audit)}

    return router
