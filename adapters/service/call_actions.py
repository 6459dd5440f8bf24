"""Supervisor call actions: what each asks of the engine and of the PBX.

Theory of operation
-------------------
Listening, whispering, barging, parking, retrieving and hanging up are not
transfer decisions: no transfer chart decides them.  Each is one short
exchange run on the event loop, like the API request that asked for it
(:mod:`adapters.service.api_calls`, and the scenario recorder drives the
very same functions).  Where an action can touch a transfer, the engine is
told first, synchronously, so it can refuse or take the action over
(:mod:`engine.supervision` says why):

* **monitor** (listen / whisper / barge): ``MonitorRequested`` is fed before
  the PBX request leaves — the monitor's leg may be reported before the
  answer, and must be known for a monitor leg from its first frame — then
  ``MonitorAnswered`` with the outcome (a refusal releases what was claimed);
* **park**: ``ParkRequested`` first: a leg of an active transfer is refused
  (``transfer_in_progress``) and nothing is sent;
* **hangup**: ``HangupRequested`` first: a leg of an active transfer becomes
  that transfer's own ``hangup`` request, which the runtime records and sends
  like any decision and whose result is awaited here; any other leg is hung
  up directly;
* **parked** and **retrieve** ask the PBX only: the engine sees the parked
  party's leg move in the events that follow.

Nothing changes on our side when the PBX refuses: a refused monitor releases
its session, a refused hang-up of a transfer's leg leaves the transfer as it
was (an operator op refused), the others changed nothing to begin with.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from adapters.base import ActionResult, CallAction
from adapters.service.logs import get_logger
from engine.model import (
    HangupRequested,
    MonitorAnswered,
    MonitorRequested,
    ParkRequested,
    PbxRequest,
    RequestFinished,
)

if TYPE_CHECKING:
    from adapters.service.runtime import Runtime

log = get_logger("xferd.call_actions")


async def act(runtime: Runtime, action: CallAction) -> ActionResult:
    """``adapter.act`` that never raises (the protocol says it does not; a bug must not
    leave a monitor session half open)."""
    try:
        result = await runtime.adapter.act(action)
    except Exception as exc:
        log.exception("adapter_error", action=action.kind)
        result = ActionResult("unknown", errmsg=f"adapter error: {type(exc).__name__}")
    log.info(
        "call_action",
        action=action.kind,
        mode=action.mode,
        channel_id=action.channel_id,
        extension=action.extension,
        slot=action.slot or result.slot,
        outcome=result.outcome,
        errcode=result.errcode,
        errmsg=result.errmsg,
    )
    return result


async def monitor(runtime: Runtime, action: CallAction, *, leg_number: str | None) -> ActionResult:
    """Start a monitor session.  ``leg_number`` is the number the monitor's own leg
    will carry (Yeastar: its extension; Webex: None, see engine.supervision).
    Raises :class:`~engine.errors.Rejected` (nothing sent) for an unknown channel."""
    session_id = uuid.uuid4().hex
    mode = action.mode or "listen"
    runtime.feed(MonitorRequested(runtime.clock(), session_id, leg_number, action.channel_id, mode))
    result = await act(runtime, action)
    runtime.feed(MonitorAnswered(runtime.clock(), session_id, result.outcome, result.call_id))
    return result


async def park(runtime: Runtime, action: CallAction) -> ActionResult:
    """Park leg ``action.channel_id``; raises Rejected for a transfer's leg (nothing sent)."""
    runtime.feed(ParkRequested(runtime.clock(), action.channel_id or ""))
    return await act(runtime, action)


async def hangup(runtime: Runtime, channel_id: str, within_s: float) -> tuple[str | None, ActionResult]:
    """Hang up a leg: through its transfer if it has one (whose id is returned), else directly.
    Raises Rejected when the transfer cannot take it now (nothing sent)."""
    commands = runtime.feed(HangupRequested(runtime.clock(), channel_id))
    request = next((c for c in commands if isinstance(c, PbxRequest)), None)
    if request is None:
        return None, await act(runtime, CallAction("hangup", channel_id=channel_id))
    # Awaited right after feed() returned it, as wait_result() requires.
    return request.transfer_id, as_action_result(await runtime.wait_result(request.request_id, within_s))


def as_action_result(finished: RequestFinished | None) -> ActionResult:
    """A transfer request's result in the terms of a call action (None: no answer in time)."""
    if finished is None:
        return ActionResult("unknown", errmsg="the PBX did not answer in time")
    if not finished.sent:
        return ActionResult("refused", errmsg=finished.errmsg, sent=False)
    if finished.outcome == "refused" and finished.gone:
        return ActionResult("ok", call_id=finished.call_id)  # already gone: what a hang-up wants
    return ActionResult(finished.outcome, finished.errcode, finished.errmsg, finished.call_id)
