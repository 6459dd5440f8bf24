"""Supervisor call actions in the control API: listen, whisper, barge, park, retrieve, hang up.

==========================================  ===============================================
``POST /v1/calls/{channel_id}/monitor``     ``{"mode": "listen"|"whisper"|"barge",
                                            "monitor": "<supervisor's extension>"}``
``POST /v1/calls/{channel_id}/park``        ``{"slot"?}``: park that leg (the parked party)
``POST /v1/calls/{channel_id}/hangup``      hang that leg up (no body needed)
``GET  /v1/parked``                         the parked calls (viewer)
``POST /v1/parked/{slot}/retrieve``         ``{"extension"}``: that extension picks it up
==========================================  ===============================================

Instead of a channel in the path, ``POST /v1/calls/{monitor,park,hangup}``
name the call in the body by ``channel_id`` or by ``"extension": "2005"``,
resolved as for transfers (409 ``no_active_call`` / ``ambiguous``): monitor
and hang up that extension's leg; park *the party it talks to* (the caller
waits in the slot, the extension is free).  Every body may carry ``"pbx"``;
with several PBXs a channel in the path finds its PBX by itself.

Acting needs role ``supervisor`` (:mod:`adapters.service.roles`); every
request is audited as ``call.monitor.<mode>``, ``call.park``,
``call.retrieve`` or ``call.hangup``.  What each action asks of the engine
and the PBX is in :mod:`adapters.service.call_actions`.

Answers: 200 with what was done; 404 unknown channel (or empty slot); 409
``not_allowed`` when the platform cannot do it (a sentence says why; it is
also missing from ``/healthz`` ``capabilities``) or a transfer's leg is busy,
409 ``transfer_in_progress`` for parking a transfer's leg; 422 bad body or a
monitor / retriever that is not an extension; 502 ``pbx_error`` with the
PBX's errcode and message when it refused (nothing changed on our side);
503 while the PBX link is down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from adapters.base import ActionResult, CallAction
from adapters.service import call_actions
from adapters.service.api import ApiContext, ApiError
from adapters.service.api_transfers import ChannelId, Number, PbxName, require_pbx, webex_connected_call
from adapters.service.audit import note
from adapters.service.roles import Principal
from adapters.webex.events import REMOTE_SUFFIX
from engine.engine import numbers_match
from engine.model import MonitorMode

if TYPE_CHECKING:
    from adapters.service.server import Unit


def _extension_number(value: str) -> str:
    """Extensions (and Webex users' numbers) are digits, perhaps after a ``+``."""
    digits = value.removeprefix("+")
    if not digits.isdigit():
        raise ValueError(f"{value!r} is not an extension number (digits only)")
    return value


Extension = Annotated[Number, AfterValidator(_extension_number)]
Slot = Annotated[Number, AfterValidator(_extension_number)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The PBX (a ``[[pbx]]`` name); optional with one PBX, or with a channel in the path.
    pbx: PbxName | None = None


class _Party(_Body):
    """A call named in the body: exactly one of ``channel_id`` / ``extension``."""

    channel_id: ChannelId | None = None
    extension: Number | None = None

    @model_validator(mode="after")
    def _one_party(self) -> _Party:
        if (self.channel_id is None) == (self.extension is None):
            raise ValueError("give exactly one of channel_id or extension to name the call")
        return self


class MonitorBody(_Body):
    """``mode`` and the supervisor's extension that listens (``monitor``)."""

    mode: Literal["listen", "whisper", "barge"]
    monitor: Extension


class MonitorPartyBody(MonitorBody, _Party):
    pass


class ParkBody(_Body):
    #: the parking slot; the PBX picks an idle one when absent
    slot: Slot | None = None


class ParkPartyBody(ParkBody, _Party):
    pass


class HangupPartyBody(_Party):
    pass


class RetrieveBody(_Body):
    extension: Extension
    #: ask the extension's phone to answer by itself (Yeastar ``auto_answer``)
    auto_answer: bool = False


#: Why a platform cannot do an action, said to the caller (409) — for what it lacks.
_WHY_NOT = {
    (
        "webex",
        "listen",
    ): "Webex Calling's call-control API has no silent monitoring; barge is the only mode it has",
    ("webex", "whisper"): "Webex Calling's call-control API has no whisper; barge is the only mode it has",
    ("webex", "parked"): (
        "Webex Calling's user call-control API cannot list parked calls; retrieve one by the number it was "
        "parked against (POST /v1/parked/{number}/retrieve)"
    ),
}


# -- answers (the OpenAPI schema shows these) -----------------------------------------


class ErrorAnswer(BaseModel):
    error: str
    detail: str


class MonitorAnswer(BaseModel):
    """A monitor session the PBX accepted: the monitor's phone rings (or answers by itself)."""

    channel_id: str | None = Field(description="the monitored leg (None for a Webex barge-in)")
    extension: str | None = Field(description="Webex: the colleague barged in on")
    monitor: str
    mode: str
    call_id: str | None = Field(description="the call id the PBX returned")
    pbx: str


class ParkAnswer(BaseModel):
    channel_id: str = Field(description="the parked party's leg")
    slot: str | None = Field(description="where it waits (Webex: the number it is parked against)")
    call_id: str | None
    pbx: str


class ParkedItem(BaseModel):
    slot: str
    channel_id: str
    parked_party: str
    parker: str
    parked_s: float | None
    pbx: str


class ParkedList(BaseModel):
    items: list[ParkedItem]


class RetrieveAnswer(BaseModel):
    slot: str
    extension: str
    channel_id: str | None = Field(description="the parked party's leg, when the PBX lists parked calls")
    call_id: str | None
    pbx: str


class HangupAnswer(BaseModel):
    channel_id: str
    pbx: str
    transfer: dict[str, Any] | None = Field(
        description="the transfer that leg took part in (its hang-up went through it), else null"
    )


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route documents in the OpenAPI schema."""
    said = {
        403: "the user's role is below supervisor",
        404: "no such channel (or no call parked in that slot)",
        409: "no_active_call / ambiguous (extension), transfer_in_progress (park), not_allowed "
        "(the platform lacks it, or the transfer has a request in flight)",
        422: "a bad body, or a monitor / retriever that is not an extension",
        502: "pbx_error: the PBX refused (its errcode and message) or did not answer in time",
        503: "pbx_unavailable: the PBX link is down",
    }
    return {status: {"model": ErrorAnswer, "description": said[status]} for status in statuses}


_ACTING = _errors(403, 404, 409, 422, 502, 503)


def _capable(unit: Unit, capability: str) -> None:
    if capability not in unit.adapter.capabilities:
        why = _WHY_NOT.get((unit.platform, capability), f"{unit.platform} does not support {capability}")
        raise ApiError(409, "not_allowed", f"{capability} is not available on PBX {unit.name}: {why}")


def _outcome(what: str, result: ActionResult, *, fields: dict[str, str] | None = None) -> None:
    """Raise the error answer a failed action gets (nothing when it succeeded)."""
    if result.outcome == "ok":
        return
    if not result.sent:
        raise ApiError(
            503,
            "store_unavailable",
            f"the {what} request was not sent: the service could not record the decision first "
            f"({result.errmsg.removeprefix('not sent: ')}); nothing happened on the PBX",
        )
    if result.outcome == "unknown":
        raise ApiError(
            502,
            "pbx_error",
            f"the PBX did not confirm the {what} request in time ({result.errmsg}); whether it acted is "
            "unknown: GET /v1/calls shows the calls as the PBX reports them",
        )
    for field in result.invalid:
        if fields and field in fields:
            raise ApiError(
                422,
                "invalid_request",
                f"{fields[field]}: the PBX does not know it as an extension (errcode {result.errcode}: "
                f"{result.errmsg})",
            )
    if result.errcode is None:
        raise ApiError(502, "pbx_error", f"the {what} request did not reach the PBX: {result.errmsg}")
    raise ApiError(
        502,
        "pbx_error",
        f"the PBX refused the {what} request: errcode {result.errcode}: {result.errmsg or 'no message'}",
    )


def routes(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    supervisor = ctx.requires("supervisor")
    viewer = [ctx.requires("viewer")]

    def unit_of(pbx: str | None, channel_id: str | None) -> Unit:
        """The PBX a request means: named, the only one, or the one tracking ``channel_id``."""
        if pbx is not None or len(ctx.units) == 1 or channel_id is None:
            return ctx.unit(pbx)
        bare = channel_id.removesuffix(REMOTE_SUFFIX)
        holding = [
            unit
            for unit in ctx.units.values()
            if unit.runtime.engine.registry.leg(channel_id) is not None
            or unit.runtime.engine.registry.leg(bare) is not None
        ]
        if len(holding) == 1:
            return holding[0]
        if not holding:
            raise ApiError(404, "not_found", f"channel {channel_id} is not in any call the service tracks")
        raise ApiError(422, "invalid_request", "pbx: several PBXs track that channel; name the PBX")

    def party(unit: Unit, channel_id: str | None, extension: str | None, *, other: bool = False) -> str:
        """The engine channel a request names (``other``: the party that extension talks to)."""
        engine = unit.runtime.engine
        if unit.platform == "webex":
            # The user's leg is the callId; a Webex action on either leg acts on that call.
            return channel_id if channel_id is not None else webex_connected_call(unit, extension or "")
        if channel_id is not None:
            if engine.registry.leg(channel_id) is None:
                raise ApiError(
                    404, "not_found", f"channel {channel_id} is not in any call the service tracks"
                )
            return channel_id
        leg = engine.registry.active_channel(extension or "")  # Rejected: no_active_call / ambiguous
        if not other:
            return leg.channel_id
        found = engine.other_party(leg)
        if found is None:
            raise ApiError(
                409,
                "no_active_call",
                f"extension {extension}'s call {leg.channel_id} has no single other party to park; "
                "name the parked party by channel_id",
            )
        return found.channel_id

    # -- monitor ------------------------------------------------------------------
    async def do_monitor(
        request: Request, body: MonitorBody, channel_id: str | None, extension: str | None
    ) -> dict[str, Any]:
        unit = unit_of(body.pbx, channel_id)
        note(request, action=f"call.monitor.{body.mode}", pbx=unit.name, channel_id=channel_id)
        _capable(unit, body.mode)
        require_pbx(unit)
        mode: MonitorMode = body.mode
        if unit.platform == "webex":
            action, leg_number = _webex_barge(unit, body, channel_id, extension), None
        else:
            channel = party(unit, channel_id, extension)
            note(request, channel_id=channel)
            action = CallAction("monitor", channel_id=channel, extension=body.monitor, mode=mode)
            leg_number = body.monitor
        result = await call_actions.monitor(unit.runtime, action, leg_number=leg_number)
        _outcome(body.mode, result, fields={"monitor": "monitor"})
        return {
            "channel_id": action.channel_id,
            "extension": action.target,
            "monitor": body.monitor,
            "mode": body.mode,
            "call_id": result.call_id,
            "pbx": unit.name,
        }

    @router.post("/v1/calls/monitor", response_model=MonitorAnswer, responses=_ACTING)
    async def monitor_party(
        request: Request, body: MonitorPartyBody, principal: Principal = supervisor
    ) -> dict[str, Any]:
        """Listen to, whisper to or barge into the call named in the body."""
        return await do_monitor(request, body, body.channel_id, body.extension)

    @router.post("/v1/calls/{channel_id:path}/monitor", response_model=MonitorAnswer, responses=_ACTING)
    async def monitor_channel(
        request: Request, channel_id: str, body: MonitorBody, principal: Principal = supervisor
    ) -> dict[str, Any]:
        """Listen to, whisper to or barge into leg ``channel_id``."""
        return await do_monitor(request, body, channel_id, None)

    # -- park ---------------------------------------------------------------------
    async def do_park(
        request: Request, body: ParkBody, channel_id: str | None, extension: str | None
    ) -> dict[str, Any]:
        unit = unit_of(body.pbx, channel_id)
        note(request, action="call.park", pbx=unit.name, channel_id=channel_id)
        _capable(unit, "park")
        require_pbx(unit)
        channel = party(unit, channel_id, extension, other=True)
        note(request, channel_id=channel)
        result = await call_actions.park(unit.runtime, CallAction("park", channel_id=channel, slot=body.slot))
        _outcome("park", result)
        return {"channel_id": channel, "slot": result.slot, "call_id": result.call_id, "pbx": unit.name}

    @router.post("/v1/calls/park", response_model=ParkAnswer, responses=_ACTING)
    async def park_party(
        request: Request, body: ParkPartyBody, principal: Principal = supervisor
    ) -> dict[str, Any]:
        """Park the call named in the body (by extension: the party it talks to waits in the slot)."""
        return await do_park(request, body, body.channel_id, body.extension)

    @router.post("/v1/calls/{channel_id:path}/park", response_model=ParkAnswer, responses=_ACTING)
    async def park_channel(
        request: Request,
        channel_id: str,
        body: Annotated[ParkBody | None, Body()] = None,
        principal: Principal = supervisor,
    ) -> dict[str, Any]:
        """Park leg ``channel_id`` (the parked party; its partner is freed)."""
        return await do_park(request, body or ParkBody(), channel_id, None)

    # -- hang up ------------------------------------------------------------------
    async def do_hangup(
        request: Request, pbx: str | None, channel_id: str | None, extension: str | None
    ) -> dict[str, Any]:
        unit = unit_of(pbx, channel_id)
        note(request, action="call.hangup", pbx=unit.name, channel_id=channel_id)
        _capable(unit, "hangup")
        require_pbx(unit)
        channel = party(unit, channel_id, extension)
        note(request, channel_id=channel)
        transfer_id, result = await call_actions.hangup(unit.runtime, channel, ctx.result_timeout_s)
        if transfer_id is not None:
            note(request, transfer_id=transfer_id)
        _outcome("hangup", result)
        transfer = await unit.runtime.fetch(transfer_id) if transfer_id is not None else None
        return {"channel_id": channel, "pbx": unit.name, "transfer": dict(transfer) if transfer else None}

    @router.post("/v1/calls/hangup", response_model=HangupAnswer, responses=_ACTING)
    async def hangup_party(
        request: Request, body: HangupPartyBody, principal: Principal = supervisor
    ) -> dict[str, Any]:
        """Hang up the leg named in the body."""
        return await do_hangup(request, body.pbx, body.channel_id, body.extension)

    @router.post("/v1/calls/{channel_id:path}/hangup", response_model=HangupAnswer, responses=_ACTING)
    async def hangup_channel(
        request: Request,
        channel_id: str,
        body: Annotated[_Body | None, Body()] = None,
        principal: Principal = supervisor,
    ) -> dict[str, Any]:
        """Hang up leg ``channel_id``; a leg of an active transfer is hung up by that transfer."""
        return await do_hangup(request, body.pbx if body else None, channel_id, None)

    # -- parked calls -------------------------------------------------------------
    async def parked_in(unit: Unit) -> list[dict[str, Any]]:
        require_pbx(unit)
        result = await call_actions.act(unit.runtime, CallAction("parked"))
        _outcome("park_status", result)
        return [
            {
                "slot": p.slot,
                "channel_id": p.channel_id,
                "parked_party": p.parked_party,
                "parker": p.parker,
                "parked_s": p.parked_s,
                "pbx": unit.name,
            }
            for p in result.parked
        ]

    @router.get(
        "/v1/parked", dependencies=viewer, response_model=ParkedList, responses=_errors(409, 422, 502, 503)
    )
    async def parked(
        pbx: Annotated[PbxName | None, Query(description="only this PBX's parked calls")] = None,
    ) -> dict[str, Any]:
        """The parked calls (of every PBX that can list them, or of ``pbx``)."""
        items: list[dict[str, Any]] = []
        if pbx is not None:
            unit = ctx.unit(pbx)
            _capable(unit, "parked")
            items = await parked_in(unit)
        else:
            for unit in ctx.units.values():
                if "parked" in unit.adapter.capabilities:
                    items += await parked_in(unit)
        return {"items": items}

    @router.post("/v1/parked/{slot}/retrieve", response_model=RetrieveAnswer, responses=_ACTING)
    async def retrieve(
        request: Request, slot: str, body: RetrieveBody, principal: Principal = supervisor
    ) -> dict[str, Any]:
        """Extension ``extension`` picks up the call parked in ``slot``."""
        unit = ctx.unit(body.pbx)
        note(request, action="call.retrieve", pbx=unit.name)
        _capable(unit, "retrieve")
        require_pbx(unit)
        channel: str | None = None
        if "parked" in unit.adapter.capabilities:
            found = [p for p in await parked_in(unit) if p["slot"] == slot]
            if not found:
                raise ApiError(404, "not_found", f"no call is parked in slot {slot} on PBX {unit.name}")
            channel = found[0]["channel_id"]
            note(request, channel_id=channel)
        if unit.platform == "webex":
            _webex_user(unit, body.extension, "extension")
        action = CallAction("retrieve", extension=body.extension, slot=slot, auto_answer=body.auto_answer)
        result = await call_actions.act(unit.runtime, action)
        if unit.platform == "webex" and result.errcode == 404:
            raise ApiError(404, "not_found", f"Webex has no call parked against {slot}: {result.errmsg}")
        _outcome("retrieve", result, fields={"caller": "extension"})
        return {
            "slot": slot,
            "extension": body.extension,
            "channel_id": channel,
            "call_id": result.call_id,
            "pbx": unit.name,
        }

    return router


# -- Webex: the user the service acts for is the only one who can act -------------------


def _webex_user(unit: Unit, number: str, field: str) -> None:
    """On Webex every action is the token owner's: ``number`` must be that user (when known)."""
    user_number = getattr(unit.pbx, "user_number", None)
    if user_number and not numbers_match(number, user_number):
        raise ApiError(
            422,
            "invalid_request",
            f"{field}: on Webex the service acts only as its user ({user_number}, [pbx].user_number)",
        )


def _webex_barge(unit: Unit, body: MonitorBody, channel_id: str | None, extension: str | None) -> CallAction:
    """Webex barge-in: the user (the monitor) barges into a colleague's answered call, named
    by the colleague's number — a call the service does not track, as it sees only its user's."""
    if extension is None:
        tracked = channel_id is not None and unit.runtime.engine.registry.leg(channel_id) is not None
        why = (
            "that is the Webex user's own call; barging into it makes no sense"
            if tracked
            else "the service sees only its Webex user's own calls"
        )
        raise ApiError(
            409,
            "not_allowed",
            f"on Webex, barge in by naming the colleague: POST /v1/calls/monitor with "
            f'{{"extension": "<their number>"}} ({why})',
        )
    _webex_user(unit, body.monitor, "monitor")
    return CallAction("monitor", extension=body.monitor, mode="barge", target=extension)
