"""Transfers and calls (contract §3.1–§3.5): start, read, operate, list calls.

Reading needs role ``viewer``; starting and operating a transfer ``operator``
(:mod:`adapters.service.roles`).  With several PBXs a request names its PBX
(``"pbx"`` in the body, ``?pbx=`` on reads); a transfer id names its PBX by
itself.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from adapters.service.admission import Overloaded
from adapters.service.api import ApiContext, ApiError
from adapters.service.audit import note
from adapters.service.logs import get_logger
from adapters.service.roles import Principal
from adapters.service.store import StoreError
from adapters.webex.events import REMOTE_SUFFIX
from engine.engine import numbers_match
from engine.model import OPS, TALKING_STATUSES, Command, OperatorRequested, PbxRequest, TransferRequested

if TYPE_CHECKING:
    from adapters.service.runtime import Runtime
    from adapters.service.server import Unit

log = get_logger("xferd.api")

STATES = ("idle", "consulting", "swapped", "threeway", "completed", "aborted")
# Numbers, extensions and channel ids: no whitespace, bounded (they end up in PBX requests).
Number = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^\S+$")]
ChannelId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$")]
PbxName = Annotated[str, StringConstraints(min_length=1, max_length=32)]


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
    #: The PBX (a ``[[pbx]]`` name); optional when only one is configured.
    pbx: PbxName | None = None

    @model_validator(mode="after")
    def _one_party(self) -> TransferCreate:
        if (self.channel_id is None) == (self.extension is None):
            raise ValueError("give exactly one of channel_id or extension to name the party")
        return self


class WebhookReceiver(Protocol):
    """The Webex adapter's extra entry point for signed webhook deliveries."""

    async def handle_webhook(self, body: bytes, signature: str | None) -> int: ...


def require_pbx(unit: Unit) -> None:
    """503 while the unit's PBX link is down."""
    adapter = unit.adapter
    if not adapter.connected:
        where = f" {unit.name}" if unit.name != "default" else ""
        raise ApiError(503, "pbx_unavailable", f"not connected to the PBX{where}: {adapter.detail}")


def feed(runtime: Runtime, event: TransferRequested | OperatorRequested) -> PbxRequest | None:
    """Feed ``event``; the first PBX request it produced for its transfer, if any."""
    commands: Sequence[Command] = runtime.feed(event)
    return next(
        (c for c in commands if isinstance(c, PbxRequest) and c.transfer_id == event.transfer_id), None
    )


async def outcome(
    ctx: ApiContext, runtime: Runtime, transfer_id: str, request: PbxRequest | None, status: int
) -> JSONResponse:
    """Answer once the PBX answered ``request`` (if any): ``status`` + resource, or 502."""
    if request is not None:
        result = await runtime.wait_result(request.request_id, ctx.result_timeout_s)
        # What the answer shows (a refusal's final state too) is in the store that lists read.
        await runtime.wal.barrier()
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
    resource = await runtime.fetch(transfer_id)
    if resource is None:  # the engine and the store both lost it: a bug, not a caller error
        raise ApiError(500, "internal_error", f"transfer {transfer_id} vanished")
    return JSONResponse(dict(resource), status)


def webex_party(unit: Unit, body: TransferCreate) -> str:
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
    runtime = unit.runtime
    if body.channel_id is not None:
        call_id = body.channel_id.removesuffix(REMOTE_SUFFIX)
    else:
        call_id = webex_connected_call(unit, body.extension or "")
    for active in runtime.engine.transfers(active_only=True):
        if ((active.get("target") or {}).get("channel_id") or "") == call_id + REMOTE_SUFFIX:
            raise ApiError(
                409,
                "transfer_in_progress",
                f"call {call_id} is the consultation of active transfer {active['id']}; "
                "operate that transfer instead",
            )
    return call_id + REMOTE_SUFFIX if body.type == "blind" else call_id


def webex_connected_call(unit: Unit, extension: str) -> str:
    """The Webex user's single connected call; ``extension`` must be the user (if known)."""
    user_number = getattr(unit.pbx, "user_number", None)
    if user_number and not numbers_match(extension, user_number):
        raise ApiError(
            409,
            "no_active_call",
            f"extension {extension} is not the Webex user this service acts for "
            f"({user_number}, [pbx].user_number)",
        )
    registry = unit.runtime.engine.registry
    hidden = registry.hidden  # a barge-in of the user's is not "its call" (engine.supervision)
    legs = [
        leg
        for leg in registry.legs.values()
        if leg.kind == "extension" and leg.status in TALKING_STATUSES and leg.channel_id not in hidden
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


def routes(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    viewer = [ctx.requires("viewer")]
    operator_principal = ctx.requires("operator")
    operator = [operator_principal]

    @router.post("/v1/transfers", status_code=201)
    async def create_transfer(
        request: Request,
        body: TransferCreate,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
        # A default, not Annotated: the dependency is local, and annotations are strings here.
        principal: Principal = operator_principal,
    ) -> JSONResponse:
        unit = ctx.unit(body.pbx)
        runtime = unit.runtime
        note(request, action=f"transfer.start.{body.type}", pbx=unit.name, channel_id=body.channel_id)
        if unit.platform == "webex" and body.policy is not None and body.policy.on_answer == "threeway":
            raise ApiError(
                422, "invalid_request", "policy.on_answer: Webex has no three-way calls; use complete or hold"
            )
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        if idempotency_key is not None:
            seen = await ctx.store.idempotency_get(idempotency_key)
            if seen is not None:
                note(request, transfer_id=seen[0])
                return await replay(fingerprint, *seen)
        require_pbx(unit)
        try:
            async with runtime.admission.slot():
                return await start(request, unit, body, principal, idempotency_key, fingerprint)
        except Overloaded as exc:
            raise ApiError(
                503,
                "overloaded",
                f"{exc.limit} transfers are already starting on this PBX ([api] max_pending_transfers); "
                f"try again in {exc.retry_after_s} s",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None

    async def start(
        request: Request,
        unit: Unit,
        body: TransferCreate,
        principal: Principal,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> JSONResponse:
        """Start the transfer (its turn came at the admission gate): feed it, answer once the PBX did."""
        runtime = unit.runtime
        require_pbx(unit)  # the link may have dropped while it waited for its turn
        channel_id, extension = body.channel_id, body.extension
        if unit.platform == "webex":
            channel_id, extension = webex_party(unit, body), None
        transfer_id = uuid.uuid4().hex
        note(request, transfer_id=transfer_id)
        event = TransferRequested(
            at=runtime.clock(),
            transfer_id=transfer_id,
            number=body.number,
            type=body.type,
            channel_id=channel_id,
            extension=extension,
            dial_permission=body.dial_permission,
            policy=body.policy.model_dump(exclude_none=True) if body.policy else None,
            initiated_by=f"{'console' if principal.via == 'session' else 'api'}:{principal.name}",
        )
        pbx_request = feed(runtime, event)
        if idempotency_key is not None:
            # Before the request can leave (SQLite answers without yielding to the loop).
            try:
                await ctx.store.idempotency_put(idempotency_key, fingerprint, transfer_id)
            except StoreError as exc:
                log.error("idempotency_key_not_saved", transfer_id=transfer_id, error=str(exc))
        log.info("transfer_requested", transfer_id=transfer_id, type=body.type, number=body.number)
        return await outcome(ctx, runtime, transfer_id, pbx_request, 201)

    async def replay(fingerprint: str, transfer_id: str, seen_fingerprint: str) -> JSONResponse:
        if seen_fingerprint != fingerprint:
            raise ApiError(
                409, "conflict", "this Idempotency-Key was already used with a different request body"
            )
        resource = await ctx.fetch(transfer_id)
        if resource is None:
            raise ApiError(409, "conflict", "this Idempotency-Key names a transfer the service no longer has")
        log.info("idempotent_replay", transfer_id=transfer_id)
        return JSONResponse(resource, 201)

    @router.get("/v1/transfers", dependencies=viewer)
    async def list_transfers(
        state: Annotated[str | None, Query(description="'active' or a state name")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        pbx: Annotated[PbxName | None, Query(description="only this PBX's transfers")] = None,
    ) -> dict[str, Any]:
        items: Sequence[Any]
        if state == "active":
            items = [r for runtime in ctx.runtimes(pbx) for r in runtime.live_transfers(active_only=True)]
            items = sorted(items, key=lambda r: str(r["created_at"]), reverse=True)[:limit]
        elif state is None or state in STATES:
            if pbx is not None:
                ctx.unit(pbx)  # 422 for an unknown name
            items = await ctx.store.recent(limit, state, pbx)
        else:
            raise ApiError(422, "invalid_request", f"state must be 'active' or one of {', '.join(STATES)}")
        return {"items": [dict(item) for item in items]}

    @router.get("/v1/transfers/{transfer_id}", dependencies=viewer)
    async def get_transfer(transfer_id: str) -> JSONResponse:
        resource = await ctx.fetch(transfer_id)
        if resource is None:
            raise ApiError(404, "not_found", f"no transfer with id {transfer_id}")
        return JSONResponse(resource)

    @router.post("/v1/transfers/{transfer_id}/{op}", dependencies=operator)
    async def operate(request: Request, transfer_id: str, op: str) -> JSONResponse:
        note(request, action=f"transfer.{op}")
        if op not in OPS:
            raise ApiError(
                404, "not_found", f"unknown operation {op!r}: use complete, abort, swap or threeway"
            )
        runtime = ctx.holder(transfer_id)
        if runtime is None:
            stored = await ctx.store.get(transfer_id)
            if stored is None:
                raise ApiError(404, "not_found", f"no transfer with id {transfer_id}")
            raise ApiError(
                409,
                "not_allowed",
                f"the transfer is {stored['state']}, which is final: no operation is allowed",
            )
        unit = ctx.units[runtime.pbx]
        note(request, pbx=unit.name)
        if unit.platform == "webex" and op == "threeway":
            raise ApiError(
                409, "not_allowed", "Webex Calling has no three-way call control; use complete, abort or swap"
            )
        require_pbx(unit)
        pbx_request = feed(runtime, OperatorRequested(at=runtime.clock(), transfer_id=transfer_id, op=op))
        log.info("operator_requested", transfer_id=transfer_id, op=op)
        return await outcome(ctx, runtime, transfer_id, pbx_request, 200)

    @router.get("/v1/calls", dependencies=viewer)
    async def calls(
        pbx: Annotated[PbxName | None, Query(description="only this PBX's calls")] = None,
    ) -> dict[str, Any]:
        return {"items": [call for runtime in ctx.runtimes(pbx) for call in runtime.calls()]}

    return router
