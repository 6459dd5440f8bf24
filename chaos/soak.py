"""The soak: a long day of mixed calls and transfers through one service, sampled as it goes.

Time is compressed, not virtual: the runtime's timers and the simulator's
phones run on the event loop's real clock (a virtual clock would need a
virtual event loop under uvicorn, httpx and websockets), so phones answer
in 0.05-0.5 s and no-answer timeouts last 0.3-4 s instead of 5-20 s.  What a
day brings is kept: every scenario of :mod:`chaos.scenarios`, several
transfers at once, plain calls that are never transferred, and now and
then a dropped websocket or a burst of duplicated frames.

Every transfer is checked like a chaos run (lost, wrong outcome, duplicate
complete, request after final); every ``sample_every`` transfers the
process's memory (RSS, Python's allocated blocks), its tasks, the engine's
tables and the error counters are sampled, so a leak shows as a trend.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.service.config import PolicyConfig
from adapters.yeastar.simulator import SimConfig
from chaos.invariants import Verdict, check_yeastar
from chaos.scenarios import Attempt, draw_plan, new_yeastar_run, yeastar_transfer
from chaos.support import FINAL, LogWatch, YeastarWorld, final_at


@dataclass(slots=True)
class Sample:
    transfers: int
    plain_calls: int
    seconds: float
    rss_mb: float
    blocks: int
    tasks: int
    active_transfers: int
    tracked_calls: int
    engine_errors: float
    store_errors: float
    bad_frames: float
    reconnects: float
    api_5xx: int
    tracebacks: int
    problems: int


@dataclass(slots=True)
class SoakResult:
    transfers: int = 0
    plain_calls: int = 0
    faults: int = 0
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    wrong_outcome: int = 0
    duplicate_completes: int = 0
    after_final: int = 0
    problems: list[str] = field(default_factory=list)


def rss_mb() -> float:
    """Resident memory of this process (Linux ``/proc``), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    import resource

    return pages * resource.getpagesize() / 2**20


def _metric(world: YeastarWorld, name: str) -> float:
    total = 0.0
    for family in world.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


async def soak(
    tmp: Path,
    watch: LogWatch,
    *,
    transfers: int,
    seed: int,
    concurrency: int = 6,
    sample_every: int = 50,
    max_seconds: float = 600.0,
) -> SoakResult:
    """Play ``transfers`` transfers (and as many plain calls), ``concurrency`` at a time."""
    rng = random.Random(f"{seed}:soak")
    world = YeastarWorld(
        tmp, watch, policy=PolicyConfig(no_answer_timeout_s=4), sim_config=SimConfig(seed=seed)
    )
    await world.start()
    result = SoakResult()
    started = time.monotonic()
    next_index = 0
    in_flight: dict[int, float] = {}  # run index -> wall time it started
    lock = asyncio.Lock()

    def sample() -> None:
        resources = world.resources()
        result.samples.append(
            Sample(
                transfers=result.transfers,
                plain_calls=result.plain_calls,
                seconds=round(time.monotonic() - started, 1),
                rss_mb=round(rss_mb(), 1),
                blocks=resources["allocated_blocks"],
                tasks=resources["tasks"],
                active_transfers=resources["active_transfers"],
                tracked_calls=resources["tracked_calls"],
                engine_errors=world.engine_errors(),
                store_errors=_metric(world, "xferd_store_errors_total"),
                bad_frames=_metric(world, "xferd_bad_frames_total"),
                reconnects=_metric(world, "xferd_reconnects_total"),
                api_5xx=len(world.api_5xx),
                tracebacks=len(watch.tracebacks),
                problems=len(result.problems),
            )
        )

    async def one(index: int) -> None:
        run_rng = random.Random(f"{seed}:soak:{index}")
        plan = draw_plan(run_rng)
        run = new_yeastar_run(world, plan)
        attempt = Attempt()
        wall = time.time()
        in_flight[index] = wall

        async def nothing() -> None:
            return None

        resource = await yeastar_transfer(world, plan, run, attempt, nothing, within_s=40)
        await asyncio.sleep(0.3)
        if attempt.transfer_id is not None:
            resource = world.transfer(attempt.transfer_id) or resource
        verdict = Verdict()
        final_time = None
        if resource is not None and resource["state"] in FINAL:
            final_time = final_at(world.store_path, resource["id"], resource)
        requests = [r for r in world.sim.requests if r.at >= wall]
        check_yeastar(
            verdict, resource, transferor=run.transferor, transferee=run.transferee, numbers=run.numbers,
            legs=world.sim.legs(), requests=requests, final_time=final_time,
        )  # fmt: skip
        if attempt.transfer_id is None:
            verdict.lost.append("no transfer was started: " + "; ".join(attempt.notes))
        result.lost += len(verdict.lost)
        result.wrong_outcome += len(verdict.wrong_outcome)
        result.duplicate_completes += len(verdict.duplicate_completes)
        result.after_final += len(verdict.after_final)
        result.problems += [f"transfer {index} ({plan.scenario}): {p}" for p in verdict.problems()]
        outcome = f"{resource['state']}/{resource['reason']}" if resource else "none"
        result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
        world.hang_up_all([run.receptionist, run.caller, *run.numbers])
        del in_flight[index]

    async def plain_call() -> None:
        """A call that is answered, talks a little and ends: no transfer."""
        extension = world.extension()
        caller = f"5551{index_for_plain()}"
        world.sim.place_call(caller, extension, inbound_trunk="trunk1")
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        world.hang_up_all([extension, caller])
        result.plain_calls += 1

    plain_numbers = iter(range(10**6))

    def index_for_plain() -> int:
        return next(plain_numbers)

    async def worker() -> None:
        nonlocal next_index
        while time.monotonic() - started < max_seconds:
            async with lock:
                if next_index >= transfers:
                    return
                index = next_index
                next_index += 1
            await one(index)
            await plain_call()
            result.transfers += 1
            if result.transfers % sample_every == 0:
                sample()
            if result.transfers % 97 == 0:  # now and then the network hiccups
                result.faults += 1
                if rng.random() < 0.5:
                    world.sim.drop_sockets()
                else:
                    world.sim.duplicate_frames = 0.5
                    await asyncio.sleep(1.0)
                    world.sim.duplicate_frames = 0.0
            _trim(world, in_flight)

    sample()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await world.connected(30)
        await asyncio.sleep(0.5)
        sample()
    finally:
        result.seconds = time.monotonic() - started
        await world.stop()
    return result


def _trim(world: YeastarWorld, in_flight: dict[int, float]) -> None:
    """Forget simulator requests no running transfer can still ask about (the simulator keeps all)."""
    oldest = min(in_flight.values(), default=time.time()) - 1.0
    requests = world.sim.requests
    keep = next((i for i, r in enumerate(requests) if r.at >= oldest), len(requests))
    if keep > 1000:
        del requests[:keep]


def soak_table(result: SoakResult) -> list[str]:
    """The soak's samples as a Markdown table."""
    head = (
        "| transfers | plain calls | wall s | RSS MiB | Python blocks | tasks | active transfers "
        "| tracked calls | engine errors | store errors | bad frames | reconnects | API 5xx | tracebacks "
        "| problems |"
    )
    lines = [head, "|" + "---|" * 15]
    for s in result.samples:
        lines.append(
            f"| {s.transfers} | {s.plain_calls} | {s.seconds:g} | {s.rss_mb:g} | {s.blocks} | {s.tasks} "
            f"| {s.active_transfers} | {s.tracked_calls} | {s.engine_errors:g} | {s.store_errors:g} "
            f"| {s.bad_frames:g} | {s.reconnects:g} | {s.api_5xx} | {s.tracebacks} | {s.problems} |"
        )
    return lines


def soak_summary(result: SoakResult) -> dict[str, Any]:
    return {
        "transfers": result.transfers,
        "plain_calls": result.plain_calls,
        "network_faults": result.faults,
        "seconds": round(result.seconds, 1),
        "lost": result.lost,
        "wrong_outcome": result.wrong_outcome,
        "duplicate_completes": result.duplicate_completes,
        "after_final": result.after_final,
        "outcomes": result.outcomes,
    }
