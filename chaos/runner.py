"""Run fault kinds many times, check every run, add up the figures.

:func:`run_kind` keeps one world for all runs of a kind; each run draws its
plan, stage, jitter and fault parameters from ``random.Random(f"{seed}:
{kind}:{index}")`` before anything happens, plays the transfer with the fault
injected at that stage, waits for the final state, lets it settle, checks
the invariants and cleans up.  After the first run the world's resources
(tasks, engine tables, timers) are taken as the baseline; after the last
they must be back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.service.config import PolicyConfig
from chaos.faults import SCENARIO_STAGES, STAGED_SCENARIOS, Ctx, FaultKind, sim_config
from chaos.invariants import Verdict, check_webex, check_yeastar
from chaos.killworld import KillWorld
from chaos.scenarios import (
    Attempt,
    draw_plan,
    get_transfer,
    new_webex_run,
    new_yeastar_run,
    webex_transfer,
    yeastar_transfer,
)
from chaos.support import FINAL, LogWatch, WebexWorld, World, YeastarWorld, final_at, until

#: How long a run may take to reach its final state (reconnect backoffs included).
RUN_DEADLINE_S = 25.0
#: Quiet time after the final state before the checks (a late request would show).
SETTLE_S = 0.3


@dataclass(slots=True)
class RunResult:
    kind: str
    index: int
    scenario: str
    stage: str | None
    injected: int
    outcome: str
    seconds: float
    verdict: Verdict
    story: list[str] = field(default_factory=list)


@dataclass(slots=True)
class KindResult:
    """One row of the table, and the evidence behind it."""

    kind: FaultKind
    runs: list[RunResult] = field(default_factory=list)
    baseline: dict[str, int] = field(default_factory=dict)
    end: dict[str, int] = field(default_factory=dict)
    resource_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def injected(self) -> int:
        return sum(r.injected for r in self.runs)

    @property
    def survived(self) -> int:
        return sum(1 for r in self.runs if r.verdict.ok())

    def count(self, what: str) -> int:
        return sum(len(getattr(r.verdict, what)) for r in self.runs)

    def outcomes(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for r in self.runs:
            tally[r.outcome] = tally.get(r.outcome, 0) + 1
        return dict(sorted(tally.items(), key=lambda item: -item[1]))

    def problems(self) -> list[str]:
        out = [
            f"run {r.index} ({r.scenario}, {r.stage}): {p}" for r in self.runs for p in r.verdict.problems()
        ]
        return out + self.resource_problems


def make_world(kind: FaultKind, tmp: Path, watch: LogWatch, seed: int) -> Any:
    policy = PolicyConfig(no_answer_timeout_s=4)
    timeout = kind.world_options.get("request_timeout_s", 1.0)
    if kind.world == "yeastar":
        return YeastarWorld(
            tmp, watch, policy=policy, sim_config=sim_config(kind, seed), request_timeout_s=timeout
        )
    if kind.world == "webex":
        return WebexWorld(tmp, watch, policy=policy, request_timeout_s=timeout)
    return KillWorld(tmp, watch, sim_config=sim_config(kind, seed))


# -- stages ----------------------------------------------------------------------------------------


async def reached(stage: str, world: Any, run: Any, attempt: Attempt) -> bool:
    """Has the transfer reached ``stage`` (as the simulator sees it)?"""
    if stage == "final":
        if attempt.transfer_id is None:
            return False
        if isinstance(world, World):
            resource = world.transfer(attempt.transfer_id)
        else:
            resource = await get_transfer(world, attempt.transfer_id)
        return resource is not None and resource["state"] in FINAL
    if isinstance(world, WebexWorld):
        return _webex_stage(stage, world, run)
    sim = world.sim
    if stage in ("start_sent", "operate_sent"):
        operate = stage == "operate_sent"
        return any(
            r.endpoint == "call/transfer"
            and r.body.get("channel_id") == run.transferor
            and ("attended_operate" in r.body) == operate
            for r in sim.requests[run.request_mark :]
        )
    wanted = "RING" if stage == "ringing" else "ANSWER"
    return any(leg.number in run.numbers and leg.status == wanted for leg in sim.legs().values())


def _webex_stage(stage: str, world: WebexWorld, run: Any) -> bool:
    sim = world.sim
    if stage in ("start_sent", "operate_sent"):
        ops = ("hold", "dial") if stage == "start_sent" else ("transfer", "hangup")
        for r in sim.requests:
            body = r.body or {}
            if r.path.rsplit("/", 1)[-1] not in ops:
                continue
            if stage == "start_sent" and body.get("callId") == run.original:
                return True
            second = body.get("callId1") == run.original or r.path.endswith("hangup")
            if stage == "operate_sent" and second and body.get("callId") != run.original:
                return True
        return False
    wanted = "connecting" if stage == "ringing" else "connected"
    return any(c.remote_number in run.numbers and c.state == wanted for c in sim._calls.values())


async def inject_at(kind: FaultKind, ctx: Ctx, stage: str, jitter_s: float, deadline_s: float) -> None:
    """Wait for ``stage`` (bounded), then the jitter, then inject."""
    deadline = time.monotonic() + deadline_s
    step = 0.003 if isinstance(ctx.world, World) else 0.02
    while not await reached(stage, ctx.world, ctx.run, ctx.attempt):
        if time.monotonic() > deadline:
            ctx.attempt.notes.append(f"stage {stage} never reached: no fault injected")
            return
        await asyncio.sleep(step)
    await asyncio.sleep(jitter_s)
    ctx.injected += await kind.inject(ctx)


# -- one run ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Marks:
    """Counters before a run, to tell what this run added."""

    tracebacks: int
    bugs: int
    leaks: int
    unhandled: int
    api_5xx: int
    engine_errors: float
    exits: int

    @classmethod
    def take(cls, world: Any, watch: LogWatch) -> Marks:
        tracebacks, bugs, leaks = watch.mark()
        if isinstance(world, World):
            return cls(tracebacks, bugs, leaks, len(world.crashes.unhandled), len(world.api_5xx),
                       world.engine_errors(), 0)  # fmt: skip
        return cls(tracebacks, bugs, leaks, 0, len(world.api_5xx), 0.0, len(world.exits))


def crash_findings(world: Any, watch: LogWatch, before: Marks) -> tuple[list[str], list[str]]:
    """(crashes, secret leaks) this run added."""
    crashes = [f"traceback in the log: {line[:400]}" for line in watch.tracebacks[before.tracebacks :]]
    crashes += [f"bug event in the log: {line[:400]}" for line in watch.bugs[before.bugs :]]
    crashes += [f"HTTP 5xx from the control API: {text[:300]}" for text in world.api_5xx[before.api_5xx :]]
    if isinstance(world, World):
        crashes += [f"unhandled in the event loop: {u}" for u in world.crashes.unhandled[before.unhandled :]]
        errors = world.engine_errors() - before.engine_errors
        if errors:
            crashes.append(f"{errors:g} engine errors")
    else:
        crashes += world.exits[before.exits :]
        if not world.alive():
            crashes.append("xferd is not running at the end of the run")
    leaks = [f"secret in a log line: {line}" for line in watch.leaks[before.leaks :]]
    return crashes, leaks


async def one_run(
    kind: FaultKind, world: Any, watch: LogWatch, seed: int, index: int, deadline_s: float = RUN_DEADLINE_S
) -> RunResult:
    rng = random.Random(f"{seed}:{kind.name}:{index}")
    plan = draw_plan(rng, STAGED_SCENARIOS if kind.stages else None)
    stage = (
        rng.choice([s for s in kind.stages if s in SCENARIO_STAGES[plan.scenario]]) if kind.stages else None
    )
    jitter = round(rng.uniform(0.0, 0.05), 4)
    params = kind.draw(rng)
    attempt = Attempt()
    webex = isinstance(world, WebexWorld)
    run = new_webex_run(world, plan) if webex else new_yeastar_run(world, plan)
    ctx = Ctx(world, params, run, attempt)
    before = Marks.take(world, watch)
    started = time.monotonic()
    injector: asyncio.Task[None] | None = None

    async def before_start() -> None:
        nonlocal injector
        if stage in (None, "before_start"):
            ctx.injected += await kind.inject(ctx)
        else:
            injector = asyncio.create_task(inject_at(kind, ctx, stage, jitter, deadline_s))

    flow = webex_transfer if webex else yeastar_transfer
    resource = await flow(world, plan, run, attempt, before_start, within_s=deadline_s)
    if injector is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await injector
    if ctx.background:
        await asyncio.gather(*ctx.background, return_exceptions=True)
    await asyncio.sleep(SETTLE_S)
    if attempt.transfer_id is not None:
        resource = await _latest(world, attempt.transfer_id) or resource
    verdict = Verdict()
    final_time = None
    if resource is not None and resource["state"] in FINAL:
        final_time = final_at(world.store_path, resource["id"], resource)
    if webex:
        check_webex(
            verdict, resource, sim=world.sim, original=run.original, numbers=run.numbers,
            final_time=final_time, wall_minus_monotonic=world.wall_minus_monotonic,
            token_valid=not kind.disables_pbx,
        )  # fmt: skip
    else:
        check_yeastar(
            verdict, resource, transferor=run.transferor, transferee=run.transferee, numbers=run.numbers,
            legs=world.sim.legs(), requests=world.sim.requests[run.request_mark :], final_time=final_time,
        )  # fmt: skip
    if resource is None and attempt.transfer_id is None:
        verdict.lost.append("no transfer was started: " + "; ".join(attempt.notes or ["?"]))
    if isinstance(world, KillWorld):
        world.harvest()
    crashes, leaks = crash_findings(world, watch, before)
    verdict.crashes += crashes
    verdict.leaks += leaks
    ctx.injected += ctx.consumed()
    outcome = f"{resource['state']}/{resource['reason']}" if resource else "none"
    seconds = time.monotonic() - started
    await cleanup(world, run, webex)
    story = [
        f"{h['at'][11:23]} {h['from']}->{h['to']} ({h['trigger']})"
        for h in (resource or {}).get("history", [])
    ]
    story += [f"params {params}", f"plan {plan}", *attempt.notes, f"answers {attempt.answers}"]
    return RunResult(kind.name, index, plan.scenario, stage, ctx.injected, outcome, seconds, verdict, story)


async def _latest(world: Any, transfer_id: str) -> dict[str, Any] | None:
    if isinstance(world, World):
        return world.transfer(transfer_id)
    return await get_transfer(world, transfer_id)


async def cleanup(world: Any, run: Any, webex: bool) -> None:
    """Hang up the run's legs, reset the fault switches, wait for the PBX link (a Webex
    service whose token was refused is restarted first: its link stays down otherwise)."""
    if webex:
        world.clear_faults()
        ended = [run.original, *(c.id for c in world.sim._calls.values() if c.remote_number in run.numbers)]
        world.hang_up_all(ended)
        await world.restart_if_token_refused()
    else:
        world.sim.clear_faults()
        world.hang_up_all([run.receptionist, run.caller, *run.numbers])
    await world.connected(within_s=30)


# -- a fault kind ------------------------------------------------------------------------------------


#: How long the world may take to settle after a run: a store retry backs off up to 10 s.
SETTLE_DEADLINE_S = 30.0


def _quiet(world: World) -> bool:
    """Nothing in flight: the PBX link is up (its tasks exist, none is being replaced), no
    queue, no timer, no unsaved transfer waiting for its store retry, no live transfer."""
    runtime = world.svc.runtime
    return bool(
        world.svc.adapter.connected
        and not runtime._queues
        and not runtime._timers
        and not runtime._unsaved
        and not runtime.engine.transfers(True)
    )


async def settled_resources(world: World, baseline: dict[str, int] | None = None) -> dict[str, int]:
    """The world's resources once nothing is in flight (bounded wait).

    Sampled when :func:`_quiet` holds, never after a guessed sleep: a reconnect
    (a token living 1.5 s is renewed every second) or a store retry changes the
    task count for a moment.  With a ``baseline``, waits for a quiet moment that
    is back to it: a leak never goes back, a task about to end does.
    """
    sample: dict[str, int] = {}

    def settled() -> bool:
        nonlocal sample
        if not _quiet(world):
            return False
        sample = world.resources()
        return baseline is None or not compare_resources(baseline, sample)

    await until(settled, within_s=SETTLE_DEADLINE_S, step_s=0.02)
    return sample or world.resources()


async def run_kind(
    kind: FaultKind,
    runs: int,
    seed: int,
    tmp: Path,
    watch: LogWatch,
    progress: Callable[[RunResult], None] | None = None,
    deadline_s: float = RUN_DEADLINE_S,
) -> KindResult:
    result = KindResult(kind)
    started = time.monotonic()
    world = make_world(kind, tmp, watch, seed)
    await world.start()
    try:
        for index in range(runs):
            run = await one_run(kind, world, watch, seed, index, deadline_s)
            result.runs.append(run)
            if progress is not None:
                progress(run)
            if index == 0 and isinstance(world, World):
                result.baseline = await settled_resources(world)
        if isinstance(world, World) and runs:
            result.end = await settled_resources(world, result.baseline)
            result.resource_problems = compare_resources(result.baseline, result.end)
    finally:
        await world.stop()
        if isinstance(world, KillWorld):
            counted = {c for r in result.runs for c in r.verdict.crashes}
            result.resource_problems += [f"process: {c}" for c in world.exits if c not in counted]
    result.seconds = time.monotonic() - started
    return result


def compare_resources(baseline: dict[str, int], end: dict[str, int]) -> list[str]:
    """Leaks: anything that did not return to the first run's level."""
    problems = []
    for key in (
        "tasks",
        "active_transfers",
        "engine_transfers",
        "tracked_calls",
        "timers",
        "queues",
        "waiters",
    ):
        if end.get(key, 0) > baseline.get(key, 0):
            problems.append(
                f"{key} grew from {baseline.get(key)} after run 1 to {end.get(key)} after the last run"
            )
    return problems
