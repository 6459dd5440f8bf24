"""One transfer, driven the way an API client and the phones would drive it.

A :class:`Plan` is drawn up front from the run's random generator (the
phones' scripts, the policy, what the operator or the caller will do, and
when): drawing everything before anything happens keeps a run's schedule
reproducible however the event loop interleaves it.

The client side only uses the control API (``POST /v1/transfers`` with an
``Idempotency-Key``, operations, ``GET``), retrying the way a careful client
does: after ``503`` (PBX link down), after a connection error (service
restarting), after ``502`` "did not confirm in time" (same key: the service
answers with the transfer it started), and never re-sending an operation
whose outcome is unknown.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from adapters.yeastar.simulator import Phone
from chaos.support import FINAL, ChaosSimulator, fresh_number

#: Scenario names → how often they are drawn.
SCENARIOS: dict[str, int] = {
    "answer_complete": 4,
    "answer_delay_complete": 1,
    "no_answer": 2,
    "busy": 1,
    "fallback": 2,
    "operator_complete": 2,
    "operator_abort": 1,
    "operator_swap_complete": 1,
    "caller_hangs_up": 1,
}
#: Scenarios in which every stage (ringing, answered, second request) happens.
FULL_STAGES = ("answer_complete", "answer_delay_complete", "operator_complete", "fallback")


@dataclass(slots=True)
class Plan:
    """Everything a run will do, drawn before it starts."""

    scenario: str
    phones: list[Phone]  # target, then fallbacks
    policy: dict[str, Any]
    operator: list[str] = field(default_factory=list)  # ops, in order, once the target answered
    operator_abort_ringing_after: float | None = None
    caller_hangs_up_after: float | None = None
    answer_after: float = 0.2


def draw_plan(rng: random.Random, scenarios: tuple[str, ...] | None = None) -> Plan:
    names = list(scenarios or SCENARIOS)
    scenario = rng.choices(names, weights=[SCENARIOS[n] for n in names])[0]
    answer = round(rng.uniform(0.05, 0.5), 3)
    ringing = Phone(answer_after=None)
    policy: dict[str, Any] = {"no_answer_timeout_s": 4.0}
    plan = Plan(scenario, [Phone(answer_after=answer)], policy, answer_after=answer)
    if scenario == "answer_delay_complete":
        policy["answer_delay_s"] = round(rng.uniform(0.05, 0.4), 3)
    elif scenario == "no_answer":
        plan.phones = [ringing]
        policy["no_answer_timeout_s"] = round(rng.uniform(0.3, 1.0), 3)
    elif scenario == "busy":
        plan.phones = [Phone(busy=True)]
    elif scenario == "fallback":
        first = rng.choice([Phone(busy=True), ringing, Phone(answer_after=None, reject_after=answer)])
        plan.phones = [first, Phone(answer_after=answer)]
        policy["no_answer_timeout_s"] = round(rng.uniform(0.3, 0.8), 3)
    elif scenario.startswith("operator_"):
        policy["on_answer"] = "hold"
        if scenario == "operator_abort":
            if rng.random() < 0.5:
                plan.phones = [ringing]
                plan.operator_abort_ringing_after = round(rng.uniform(0.05, 0.4), 3)
            else:
                plan.operator = ["abort"]
        elif scenario == "operator_swap_complete":
            plan.operator = ["swap", "swap", "complete"]
        else:
            plan.operator = ["complete"]
    elif scenario == "caller_hangs_up":
        plan.phones = [ringing]
        plan.caller_hangs_up_after = round(rng.uniform(0.05, 0.5), 3)
    return plan


class ClientWorld(Protocol):
    """What the client flow needs from a world (in-process or subprocess)."""

    @property
    def api(self) -> httpx.AsyncClient: ...


@dataclass(slots=True)
class Attempt:
    """The client's view of one transfer: its id, what the API said, what went oddly."""

    transfer_id: str | None = None
    answers: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def request(world: ClientWorld, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
    """One API call; None when the service could not be reached (it may be restarting)."""
    try:
        return await world.api.request(method, path, **kwargs)
    except (httpx.TransportError, RuntimeError):  # RuntimeError: that process's client is closed
        return None


async def tracked(world: ClientWorld, channel: str, within_s: float) -> bool:
    """Wait until the service tracks ``channel`` as talking (a client's only way: GET /v1/calls)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        response = await request(world, "GET", "/v1/calls")
        if response is not None and response.status_code == 200:
            members = [m for call in response.json()["items"] for m in call["members"]]
            if any(m["channel_id"] == channel and m["status"] in ("ANSWER", "ANSWERED") for m in members):
                return True
        await asyncio.sleep(0.02)
    return False


async def start_transfer(
    world: ClientWorld, body: dict[str, Any], attempt: Attempt, within_s: float = 30.0
) -> dict[str, Any] | None:
    """``POST /v1/transfers`` until the service answers with a transfer (same key every time)."""
    key = uuid.uuid4().hex
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        response = await request(world, "POST", "/v1/transfers", json=body, headers={"Idempotency-Key": key})
        if response is None:
            await asyncio.sleep(0.1)
            continue
        attempt.answers.append(response.status_code)
        if response.status_code == 201:
            resource: dict[str, Any] = response.json()
            attempt.transfer_id = resource["id"]
            return resource
        error = response.json().get("error")
        if response.status_code in (502, 503) or error in ("no_active_call", "store_unavailable"):
            # 502: the PBX refused or did not confirm: the same key returns the transfer it became.
            await asyncio.sleep(0.1)
            continue
        attempt.notes.append(f"POST /v1/transfers answered {response.status_code}: {response.text}")
        return None
    attempt.notes.append("POST /v1/transfers never answered with a transfer")
    return None


async def get_transfer(world: ClientWorld, transfer_id: str) -> dict[str, Any] | None:
    response = await request(world, "GET", f"/v1/transfers/{transfer_id}")
    if response is None or response.status_code != 200:
        return None
    found: dict[str, Any] = response.json()
    return found


async def wait_transfer(
    world: ClientWorld, transfer_id: str, reached: Callable[[dict[str, Any]], bool], within_s: float
) -> dict[str, Any] | None:
    """Poll ``GET /v1/transfers/{id}`` until ``reached``; the last resource seen."""
    deadline = time.monotonic() + within_s
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = await get_transfer(world, transfer_id) or last
        if last is not None and reached(last):
            return last
        await asyncio.sleep(0.02)
    return last


async def operate(world: ClientWorld, transfer_id: str, op: str, attempt: Attempt, within_s: float) -> None:
    """An operator's op: retried while the service says "not now" (a request in flight, link down),
    never after an unknown outcome (502: the service reconciles; a resend could repeat it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        response = await request(world, "POST", f"/v1/transfers/{transfer_id}/{op}")
        if response is None:
            await asyncio.sleep(0.1)
            continue
        attempt.answers.append(response.status_code)
        detail = response.json().get("detail", "")
        if response.status_code == 502 and "refused" in detail and op != "abort":
            # The PBX refused: the service allows no second try of a complete; a person gives the call back.
            await operate(world, transfer_id, "abort", attempt, max(1.0, deadline - time.monotonic()))
            return
        if response.status_code in (200, 502):
            return
        if response.status_code == 409 and ("final" in detail or "allowed now: none" not in detail):
            return  # final, or this op makes no sense any more (the target left…)
        await asyncio.sleep(0.05)


def is_final(resource: dict[str, Any]) -> bool:
    return resource["state"] in FINAL


@dataclass(slots=True)
class YeastarRun:
    """The parties of one Yeastar run."""

    receptionist: str
    caller: str
    numbers: list[str]
    transferor: str = ""
    transferee: str = ""
    request_mark: int = 0


class YeastarSide(ClientWorld, Protocol):
    sim: ChaosSimulator

    def extension(self, phone: Phone | None = None) -> str: ...


async def yeastar_transfer(
    world: YeastarSide,
    plan: Plan,
    run: YeastarRun,
    attempt: Attempt,
    before_start: Callable[[], Awaitable[None]],
    within_s: float = 40.0,
) -> dict[str, Any] | None:
    """Place the call, start the transfer, play the plan; the final resource (or the last seen)."""
    sim = world.sim
    sim.place_call(run.caller, run.receptionist, inbound_trunk="trunk1")
    run.transferor = sim.channel_of(run.receptionist)
    run.transferee = sim.channel_of(run.caller)
    if not await tracked(world, run.transferor, within_s=20):
        attempt.notes.append("the service never tracked the receptionist's call")
        return None
    body: dict[str, Any] = {
        "channel_id": run.transferor,
        "number": run.numbers[0],
        "policy": dict(plan.policy),
    }
    hangup = (
        _caller_hangs_up(sim, run.transferee, plan.caller_hangs_up_after)
        if plan.caller_hangs_up_after is not None
        else None
    )
    return await _play(world, plan, run.numbers, body, attempt, before_start, hangup, within_s)


async def _play(
    world: ClientWorld,
    plan: Plan,
    numbers: list[str],
    body: dict[str, Any],
    attempt: Attempt,
    before_start: Callable[[], Awaitable[None]],
    hangup: Coroutine[Any, Any, None] | None,
    within_s: float,
) -> dict[str, Any] | None:
    """Start the transfer through the API and play the plan's operator side, on either platform."""
    if len(numbers) > 1:
        body["policy"]["fallback_numbers"] = numbers[1:]
    await before_start()
    started = time.monotonic()
    side = [asyncio.create_task(hangup)] if hangup is not None else []
    resource = await start_transfer(world, body, attempt)
    try:
        if resource is None:
            return None
        transfer_id = resource["id"]
        if plan.operator_abort_ringing_after is not None:
            await asyncio.sleep(plan.operator_abort_ringing_after)
            await operate(world, transfer_id, "abort", attempt, within_s=15)
        for op in plan.operator:
            current = await wait_transfer(
                world,
                transfer_id,
                lambda r: is_final(r) or r["target"]["status"] in ("answered", "held"),
                within_s=20,
            )
            if current is None or is_final(current):
                break
            await operate(world, transfer_id, op, attempt, within_s=15)
        remaining = max(1.0, within_s - (time.monotonic() - started))
        return await wait_transfer(world, transfer_id, is_final, remaining)
    finally:
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)


async def _caller_hangs_up(sim: ChaosSimulator, channel: str, after_s: float) -> None:
    await asyncio.sleep(after_s)
    if channel in sim.legs():
        sim.hangup(channel)


def new_yeastar_run(world: YeastarSide, plan: Plan) -> YeastarRun:
    """Fresh numbers: a receptionist, an outside caller, the target and its fallbacks."""
    receptionist = world.extension(Phone(answer_after=0.05))
    numbers = [world.extension(phone) for phone in plan.phones]
    return YeastarRun(receptionist, fresh_number("5550"), numbers, request_mark=len(world.sim.requests))


@dataclass(slots=True)
class WebexRun:
    """The calls of one Webex run: the user's call with the caller, and the target's number."""

    caller: str
    numbers: list[str]
    original: str = ""


class WebexSide(ClientWorld, Protocol):
    sim: Any


def new_webex_run(world: WebexSide, plan: Plan) -> WebexRun:
    numbers = [f"+1666{fresh_number()}" for _ in plan.phones]
    for number, phone in zip(numbers, plan.phones, strict=True):
        if phone.busy:
            world.sim.set_party(number, answer_after=None, busy=True, busy_after=0.05)
        elif phone.reject_after is not None:
            world.sim.set_party(number, answer_after=None, busy=True, busy_after=phone.reject_after)
        else:
            world.sim.set_party(number, answer_after=phone.answer_after)
    return WebexRun(f"+1555{fresh_number()}", numbers)


async def webex_transfer(
    world: WebexSide,
    plan: Plan,
    run: WebexRun,
    attempt: Attempt,
    before_start: Callable[[], Awaitable[None]],
    within_s: float = 40.0,
) -> dict[str, Any] | None:
    """The Webex twin of :func:`yeastar_transfer`: the user answers a call, then transfers it."""
    sim = world.sim
    run.original = sim.incoming_call(run.caller)
    if not await tracked(world, run.original, within_s=20):
        attempt.notes.append("the service never tracked the user's call")
        return None
    body: dict[str, Any] = {"channel_id": run.original, "number": run.numbers[0], "policy": dict(plan.policy)}
    hangup = (
        _remote_hangs_up(sim, run.original, plan.caller_hangs_up_after)
        if plan.caller_hangs_up_after is not None
        else None
    )
    return await _play(world, plan, run.numbers, body, attempt, before_start, hangup, within_s)


async def _remote_hangs_up(sim: Any, call_id: str, after_s: float) -> None:
    await asyncio.sleep(after_s)
    call = sim.call(call_id)
    if call is not None and call.state != "disconnected":
        sim.hangup_remote(call_id)
