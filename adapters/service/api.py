"""The control API (contract §3): FastAPI over the runtime.

Handlers never touch the PBX: they validate, feed one event to the runtime
and, when that produced a PBX request, wait (bounded) for its result so the
caller learns whether the PBX accepted.  Every error — ours, the engine's
refusals, FastAPI's own 404/405/422 — leaves as ``{"error", "detail"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol, cast

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from adapters.service.logs import get_logger
from adapters.service.runtime import Runtime
from adapters.service.store import StoreError
from adapters.webex.events import REMOTE_SUFFIX
from engine.engine import numbers_match
from engine.errors import Rejected
from engine.model import OPS, TALKING_STATUSES, Command, OperatorRequested, PbxRequest, TransferRequested

log = get_logger("xferd.api")

STATES = ("idle", "consulting", "swapped", "threeway", "completed", "aborted")
# Numbers, extensions and channel ids: no whitespace, bounded (they end up in PBX requests).
Number = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^\S+$")]
ChannelId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$")]
_STATUS_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class ApiError(Exception):
    """An error response: HTTP ``status``, contract ``code``, a sentence saying what to fix."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class PolicyOverrides(BaseModel):
    """Per-transfer overrides of the ``[policy]`` defaults (contract §2)."""

    model_config = ConfigDict(extra="forbid")

    on_answer: Literal["complete", "threeway", "hold"] | None = None
    answer_delay_s: Annotated[float, Field(ge=0, le=3600, strict=True)] | None = None
    no_answer_timeout_s: Annotated[float, Field(gt=0, le=3600, strict=True)] | None = None
    on_transferor_hangup: Literal["complete", "abort"] | None = None
    fallback_numbers: Annotated[list[Number], Field(max_length=10)] | None = None


class TransferCreate(BaseModel):
    """Body of ``POST /v1/transfers`` (contract §3.1)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["attended", "blind"] = "attended"
    channel_id: ChannelId | None = None
    extension: Number | None = None
    number: Number
    dial_permission: Number | None = None
    policy: PolicyOverrides | None = None

    @model_validator(mode="after")
    def _one_party(self) -> TransferCreate:
        if (self.channel_id is None) == (self.extension is None):
            raise ValueError("give exactly one of channel_id or extension to name the party")
        return self


class WebhookReceiver(Protocol):
    """The Webex adapter's extra entry point for signed webhook deliveries."""

    async def handle_webhook(self, body: bytes, signature: str | None) -> int: ...


def create_app(
    runtime: Runtime,
    *,
    token: str | None,
    request_timeout_s: float = 5.0,
    webex_user_number: str | None = None,
) -> FastAPI:
    """The control API for ``runtime``.  ``token`` None disables auth (loopback only, see config).

    ``webex_user_number`` (Webex only, optional): the number of the user the
    access token belongs to; when set, an ``extension`` naming anyone else is
    refused instead of silently meaning the token owner's call.
    """
    adapter = runtime.adapter
    platform = adapter.platform
    # The adapter answers within its own request timeout; wait a little longer than that.
    result_timeout_s = request_timeout_s + 2.0
    app = FastAPI(title="xferd", version="1", summary="Attended-transfer control API")

    def authorized(header: str | None, query_token: str | None = None) -> bool:
        if token is None:
            return True
        scheme, _, provided = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not provided:
            provided = query_token or ""
        return hmac.compare_digest(provided.encode(), token.encode())

    # async: a sync dependency would be run in a worker thread on every request.
    async def require_token(
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        if not authorized(authorization):
            raise ApiError(401, "unauthorized", "send the API token as 'Authorization: Bearer <token>'")

    auth = [Depends(require_token)]

    # -- error shapes ---------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status, headers=headers)

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
        return JSONResponse({"error": "invalid_request", "detail": _describe(errors)}, 422)

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

    # -- helpers --------------------------------------------------------------
    def require_pbx() -> None:
        if not adapter.connected:
            raise ApiError(503, "pbx_unavailable", f"not connected to the PBX: {adapter.detail}")

    def feed(event: TransferRequested | OperatorRequested) -> PbxRequest | None:
        """Feed ``event``; the first PBX request it produced for its transfer, if any."""
        commands: Sequence[Command] = runtime.feed(event)
        return next(
            (c for c in commands if isinstance(c, PbxRequest) and c.transfer_id == event.transfer_id), None
        )

    async def outcome(transfer_id: str, request: PbxRequest | None, status: int) -> JSONResponse:
        """Answer once the PBX answered ``request`` (if any): ``status`` + resource, or 502."""
        if request is not None:
            result = await runtime.wait_result(request.request_id, result_timeout_s)
            if result is None or result.outcome == "unknown":
                raise ApiError(
                    502,
                    "pbx_error",
                    f"the PBX did not confirm the {request.action} request in time; the service is "
                    f"reconciling with the PBX's view of the calls: GET /v1/transfers/{transfer_id} "
                    "shows the outcome",
                )
            if not result.sent:
                raise ApiError(
                    503,
                    "store_unavailable",
                    f"the {request.action} request was not sent: the service could not record the "
                    f"decision first ({result.errmsg.removeprefix('not sent: ')}); nothing happened "
                    "on the PBX, try again once the store is writable",
                )
            if result.outcome == "refused":
                raise ApiError(
                    502,
                    "pbx_error",
                    f"the PBX refused the {request.action} request: errcode {result.errcode}: "
                    f"{result.errmsg or 'no message'}",
                )
        resource = runtime.transfer(transfer_id)
        if resource is None:  # the engine and the store both lost it: a bug, not a caller error
            raise ApiError(500, "internal_error", f"transfer {transfer_id} vanished")
        return JSONResponse(dict(resource), status)

    def webex_party(body: TransferCreate) -> str:
        """The engine channel a Webex request names (contract §3.1).

        Webex reports one user's calls, so the engine's legs are that user's
        (``callId``, kind ``extension``) and each call's remote party
        (``callId/remote``), see :mod:`adapters.webex.events`.  ``channel_id``
        is the callId of the user's call; ``extension`` means "the user's
        single connected call" — resolved here because Webex never tells us the
        user's own number, so the engine's by-number lookup cannot.  For an
        attended transfer the party is the user's leg (the transferor); for a
        blind one the remote party (the member moved), as on Yeastar.
        """
        if body.channel_id is not None:
            call_id = body.channel_id.removesuffix(REMOTE_SUFFIX)
        else:
            call_id = webex_connected_call(body.extension or "")
        for active in runtime.engine.transfers(active_only=True):
            if ((active.get("target") or {}).get("channel_id") or "") == call_id + REMOTE_SUFFIX:
                raise ApiError(
                    409,
                    "transfer_in_progress",
                    f"call {call_id} is the consultation of active transfer {active['id']}; "
                    "operate that transfer instead",
                )
        return call_id + REMOTE_SUFFIX if body.type == "blind" else call_id

    def webex_connected_call(extension: str) -> str:
        if webex_user_number and not numbers_match(extension, webex_user_number):
            raise ApiError(
                409,
                "no_active_call",
                f"extension {extension} is not the Webex user this service acts for "
                f"({webex_user_number}, [pbx].user_number)",
            )
        legs = [
            leg
            for leg in runtime.engine.registry.legs.values()
            if leg.kind == "extension" and leg.status in TALKING_STATUSES
        ]
        if not legs:
            raise ApiError(409, "no_active_call", "the Webex user has no connected call the service tracks")
        if len(legs) > 1:
            calls = ", ".join(sorted(leg.channel_id for leg in legs))
            raise ApiError(
                409,
                "ambiguous",
                f"the Webex user has {len(legs)} connected calls ({calls}); name the call by channel_id",
            )
        return legs[0].channel_id

    # -- routes -----------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        connected = adapter.connected
        body = {
            "status": "ok" if connected else "degraded",
            "pbx": "connected" if connected else "disconnected",
            "platform": platform,
            "capabilities": list(adapter.capabilities),
            "detail": adapter.detail,
        }
        return JSONResponse(body, 200 if connected else 503)

    @app.get("/metrics", dependencies=auth)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/transfers", dependencies=auth, status_code=201)
    async def create_transfer(
        body: TransferCreate,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> JSONResponse:
        if platform == "webex" and body.policy is not None and body.policy.on_answer == "threeway":
            raise ApiError(
                422, "invalid_request", "policy.on_answer: Webex has no three-way calls; use complete or hold"
            )
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        if idempotency_key is not None:
            seen = runtime.store.idempotency_get(idempotency_key)
            if seen is not None:
                return replay(idempotency_key, fingerprint, *seen)
        require_pbx()
        channel_id, extension = body.channel_id, body.extension
        if platform == "webex":
            channel_id, extension = webex_party(body), None
        transfer_id = uuid.uuid4().hex
        event = TransferRequested(
            at=runtime.clock(),
            transfer_id=transfer_id,
            number=body.number,
            type=body.type,
            channel_id=channel_id,
            extension=extension,
            dial_permission=body.dial_permission,
            policy=body.policy.model_dump(exclude_none=True) if body.policy else None,
        )
        request = feed(event)
        if idempotency_key is not None:
            # Before any await: the key is stored before the first request can leave.
            try:
                runtime.store.idempotency_put(idempotency_key, fingerprint, transfer_id)
            except StoreError as exc:
                log.error("idempotency_key_not_saved", transfer_id=transfer_id, error=str(exc))
        log.info("transfer_requested", transfer_id=transfer_id, type=body.type, number=body.number)
        return await outcome(transfer_id, request, 201)

    def replay(key: str, fingerprint: str, transfer_id: str, seen_fingerprint: str) -> JSONResponse:
        if seen_fingerprint != fingerprint:
            raise ApiError(
                409, "conflict", "this Idempotency-Key was already used with a different request body"
            )
        resource = runtime.transfer(transfer_id)
        if resource is None:
            raise ApiError(409, "conflict", "this Idempotency-Key names a transfer the service no longer has")
        log.info("idempotent_replay", transfer_id=transfer_id)
        return JSONResponse(dict(resource), 201)

    @app.get("/v1/transfers", dependencies=auth)
    async def list_transfers(
        state: Annotated[str | None, Query(description="'active' or a state name")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        items: Sequence[Mapping[str, Any]]
        if state == "active":
            items = runtime.engine.transfers(active_only=True)[:limit]
        elif state is None or state in STATES:
            items = runtime.store.recent(limit, state)
        else:
            raise ApiError(422, "invalid_request", f"state must be 'active' or one of {', '.join(STATES)}")
        return {"items": [dict(item) for item in items]}

    @app.get("/v1/transfers/{transfer_id}", dependencies=auth)
    async def get_transfer(transfer_id: str) -> JSONResponse:
        resource = runtime.transfer(transfer_id)
        if resource is None:
            raise ApiError(404, "not_found", f"no transfer with id {transfer_id}")
        return JSONResponse(dict(resource))

    @app.post("/v1/transfers/{transfer_id}/{op}", dependencies=auth)
    async def operate(transfer_id: str, op: str) -> JSONResponse:
        if op not in OPS:
            raise ApiError(
                404, "not_found", f"unknown operation {op!r}: use complete, abort, swap or threeway"
            )
        if platform == "webex" and op == "threeway":
            raise ApiError(
                409, "not_allowed", "Webex Calling has no three-way call control; use complete, abort or swap"
            )
        if runtime.engine.transfer(transfer_id) is None:
            stored = runtime.store.get(transfer_id)
            if stored is None:
                raise ApiError(404, "not_found", f"no transfer with id {transfer_id}")
            raise ApiError(
                409,
                "not_allowed",
                f"the transfer is {stored['state']}, which is final: no operation is allowed",
            )
        require_pbx()
        request = feed(OperatorRequested(at=runtime.clock(), transfer_id=transfer_id, op=op))
        log.info("operator_requested", transfer_id=transfer_id, op=op)
        return await outcome(transfer_id, request, 200)

    @app.get("/v1/calls", dependencies=auth)
    async def calls() -> dict[str, Any]:
        return {"items": [dict(call) for call in runtime.engine.calls()]}

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        if not authorized(websocket.headers.get("authorization"), websocket.query_params.get("token")):
            denial = {"error": "unauthorized", "detail": "send the API token as a Bearer header or ?token="}
            await websocket.send_denial_response(JSONResponse(denial, 401))
            return
        await websocket.accept()
        subscription = runtime.subscribe()

        async def watch_disconnect() -> None:
            # Clients only listen; reading is how we notice they left.
            try:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
            finally:
                runtime.unsubscribe(subscription)
                subscription.end()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            while (message := await subscription.get()) is not None:
                await websocket.send_text(message)
            if watcher.done():
                return  # the client left
            # 1013 "try again later": the client fell behind; 1001: the service is stopping.
            await websocket.close(1013 if subscription.overflowed else 1001)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away mid-send
        finally:
            watcher.cancel()
            runtime.unsubscribe(subscription)

    if platform == "webex":
        receiver = cast(WebhookReceiver, adapter)

        @app.post("/v1/webhooks/webex", status_code=204)
        async def webex_webhook(request: Request) -> Response:
            status = await receiver.handle_webhook(
                await request.body(), request.headers.get("x-spark-signature")
            )
            if status == 401:
                raise ApiError(401, "unauthorized", "missing or wrong X-Spark-Signature")
            return Response(status_code=status)

    return app


def _describe(errors: Sequence[Any]) -> str:
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
