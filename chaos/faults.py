"""Every fault kind of issue 8: what it does to the PBX, the network, the store or the process.

A fault kind names the world it needs, the *stages* of a transfer where it
may land (``()``: it is switched on for the whole run), the scenarios it is
played against, how to draw its parameters (up front, from the run's seeded
generator) and how to inject it.  ``inject`` returns how many faults it put
in right away; queued faults (a refusal, a timeout, a slow answer waiting
for the next request) are counted when the simulator consumes them, see
:meth:`Ctx.consumed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.yeastar.simulator import SimConfig
from chaos.scenarios import FULL_STAGES, SCENARIOS, Attempt

#: Where a fault can land, in the order a transfer goes through them.
STAGES = ("before_start", "start_sent", "ringing", "answered", "operate_sent", "final")
#: The stages each scenario goes through (a busy target never shows ringing…).
SCENARIO_STAGES: dict[str, tuple[str, ...]] = {
    **{name: STAGES for name in SCENARIOS},
    "no_answer": ("before_start", "start_sent", "ringing", "operate_sent", "final"),
    "busy": ("before_start", "start_sent", "operate_sent", "final"),
    "caller_hangs_up": ("before_start", "start_sent", "ringing", "operate_sent", "final"),
}
#: Stages after which a queued request fault still has a request to hit.
BEFORE_A_REQUEST = ("before_start", "ringing")


@dataclass(slots=True)
class Ctx:
    """One run as a fault sees it."""

    world: Any
    params: dict[str, Any]
    run: Any
    attempt: Attempt
    injected: int = 0
    background: list[asyncio.Task[None]] = field(default_factory=list)
    queued: list[tuple[str, str, int]] = field(default_factory=list)  # (queue, endpoint, entries queued)

    def later(self, delay_s: float, action: Callable[[], Any]) -> None:
        """Run ``action`` after ``delay_s`` (undoing a fault); awaited before the run is checked."""

        async def wait_then() -> None:
            await asyncio.sleep(delay_s)
            result = action()
            if asyncio.iscoroutine(result):
                await result

        self.background.append(asyncio.create_task(wait_then()))

    def queue(self, which: str, endpoint: str, count: int) -> None:
        """Remember a queued simulator fault so the entries it consumed can be counted."""
        self.queued.append((which, endpoint, count))

    def consumed(self) -> int:
        """Queued faults the simulator used during the run (the rest are cleared unused)."""
        total = 0
        sim = self.world.sim
        for which, endpoint, count in self.queued:
            if which == "webex_refuse":
                fault, _ = sim._refusals.get(endpoint, (None, ""))
                left = fault.count if fault is not None else 0
            elif which == "webex_throttle":
                left = sim._throttle.count
            elif which == "webex_stall":
                left = sim._stall.count
            else:
                left = len(getattr(sim, which).get(endpoint, ()))
            total += max(0, count - left)
        return total


Inject = Callable[[Ctx], Awaitable[int]]
Draw = Callable[[random.Random], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class FaultKind:
    """One row of the table."""

    name: str
    world: str  # "yeastar" | "webex" | "kill"
    what: str
    inject: Inject
    draw: Draw = lambda rng: {}
    stages: tuple[str, ...] = ()
    scenarios: tuple[str, ...] | None = None
    runs: int = 20
    quick_runs: int = 2
    world_options: dict[str, Any] = field(default_factory=dict)
    #: The fault takes away what the service needs to act (a refused token):
    #: legs are then not held against it, everything else is.
    disables_pbx: bool = False


# -- Yeastar -------------------------------------------------------------------------------------


async def ws_drop(ctx: Ctx) -> int:
    ctx.world.sim.drop_sockets()
    return 1


def draw_down(rng: random.Random) -> dict[str, Any]:
    return {"down_s": round(rng.uniform(0.2, 1.5), 3)}


async def ws_down(ctx: Ctx) -> int:
    """Drop the websocket and refuse reconnects for a while: events in between are lost."""
    sim = ctx.world.sim
    sim.accept_then_close = True
    sim.drop_sockets()
    ctx.later(ctx.params["down_s"], lambda: setattr(sim, "accept_then_close", False))
    return 1


def draw_duplicates(rng: random.Random) -> dict[str, Any]:
    return {"p": round(rng.uniform(0.3, 1.0), 2)}


async def duplicate_frames(ctx: Ctx) -> int:
    ctx.world.sim.duplicate_frames = ctx.params["p"]
    return 1


def draw_reorder(rng: random.Random) -> dict[str, Any]:
    return {"window": rng.randint(2, 5)}


async def reorder_frames(ctx: Ctx) -> int:
    ctx.world.sim.reorder_window = ctx.params["window"]
    return 1


def draw_timeout(rng: random.Random) -> dict[str, Any]:
    return {"extra_s": round(rng.uniform(0.1, 0.6), 3)}


def _time_out(act: bool) -> Inject:
    async def inject(ctx: Ctx) -> int:
        # Held past the adapter's timeout: the service cannot know whether the PBX acted.
        seconds = ctx.world.request_timeout_s + ctx.params["extra_s"]
        ctx.world.sim.time_out("call/transfer", 1, act=act, seconds=seconds)
        ctx.queue("_timeouts", "call/transfer", 1)
        return 0

    return inject


def draw_errcode(rng: random.Random) -> dict[str, Any]:
    return {"errcode": rng.choice([10009, 60001, -2, 40002, 10005, 60002])}


async def errcode_refusal(ctx: Ctx) -> int:
    ctx.world.sim.refuse("call/transfer", ctx.params["errcode"], 1)
    ctx.queue("_refusals", "call/transfer", 1)
    return 0


async def token_expired_request(ctx: Ctx) -> int:
    """The PBX answers the next transfer request 10004 (without acting)."""
    ctx.world.sim.refuse("call/transfer", 10004, 1)
    ctx.queue("_refusals", "call/transfer", 1)
    return 0


async def token_expired_stream(ctx: Ctx) -> int:
    """Every token dies: the socket gets a 10004 frame and closes, REST calls get 10004."""
    ctx.world.sim.expire_tokens()
    return 1


def draw_refresh(rng: random.Random) -> dict[str, Any]:
    how = rng.choice(["refuse", "refuse", "time_out"])
    return {
        "how": how,
        "errcode": rng.choice([-2, 10004, 10009, 60002]),
        "count": rng.randint(1, 3),
        "act": rng.random() < 0.5,
    }


async def refresh_failure(ctx: Ctx) -> int:
    """The next refresh_token requests fail (refused, or no answer in time).

    Then waits until the service's token is due for refresh (its token
    manager's ``refresh_in``), so the transfer's first request is the one
    that meets the failing refresh.
    """
    sim, p = ctx.world.sim, ctx.params
    if p["how"] == "refuse":
        sim.refuse("refresh_token", p["errcode"], p["count"])
        ctx.queue("_refusals", "refresh_token", p["count"])
    else:
        sim.time_out("refresh_token", p["count"], act=p["act"], seconds=ctx.world.request_timeout_s + 0.3)
        ctx.queue("_timeouts", "refresh_token", p["count"])
    tokens = ctx.world.svc.adapter._rest.tokens
    await asyncio.sleep(min(2.0, tokens.refresh_in() + 0.01))
    return 0


async def pbx_restart(ctx: Ctx) -> int:
    ctx.world.sim.restart()
    return 1


def draw_kill(rng: random.Random) -> dict[str, Any]:
    return {"dead_s": round(rng.uniform(0.0, 0.8), 3)}


async def sigkill(ctx: Ctx) -> int:
    """kill -9 the service, leave it dead for a while (the phones go on), start it again."""
    world = ctx.world
    await world.kill()
    await asyncio.sleep(ctx.params["dead_s"])
    await world.launch()
    return 1


async def sigkill_after_commit(ctx: Ctx) -> int:
    """kill -9 exactly between a decision's commit and its request (the write-ahead window):
    the decision is durable, the request never left; then start again.

    Armed now; the run goes on (the transfer's next decision springs it), and a background
    task restarts the service once it died, counting the fault then."""
    world = ctx.world
    world.arm_kill_after_commit()

    async def restart_once_killed() -> None:
        if await world.killed_after_commit(within_s=10.0):
            ctx.injected += 1
            await asyncio.sleep(ctx.params["dead_s"])
            await world.launch()

    ctx.background.append(asyncio.create_task(restart_once_killed()))
    return 0


def draw_lock(rng: random.Random) -> dict[str, Any]:
    return {"hold_s": round(rng.uniform(1.2, 2.5), 3)}


async def store_locked(ctx: Ctx) -> int:
    """Another process holds the store's write lock longer than the service's busy timeout."""
    other = sqlite3.connect(ctx.world.store_path, isolation_level=None, timeout=5)
    other.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        other.execute("ROLLBACK")
        other.close()

    ctx.later(ctx.params["hold_s"], release)
    return 1


def draw_full(rng: random.Random) -> dict[str, Any]:
    return {"full_s": round(rng.uniform(0.5, 2.0), 3)}


async def disk_full(ctx: Ctx) -> int:
    """The store's file may not grow (SQLite's own SQLITE_FULL: "database or disk is full").

    ``PRAGMA max_page_count`` on the service's connection (its private ``_db``):
    the same error a full disk gives, without filling the machine's disk.
    """
    db = ctx.world.svc.store._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")

    def release() -> None:
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA max_page_count = 1073741823")

    ctx.later(ctx.params["full_s"], release)
    return 1


def draw_slow(rng: random.Random) -> dict[str, Any]:
    return {
        "request_s": [round(rng.uniform(0.5, 2.5), 3) for _ in range(8)],
        "frame_delay_s": round(rng.uniform(0.05, 0.5), 3),
    }


async def slow_pbx(ctx: Ctx) -> int:
    """Every call/transfer and call/query answers seconds late (within the 5 s timeout);
    every event frame comes late too."""
    sim, p = ctx.world.sim, ctx.params
    for seconds in p["request_s"]:
        sim.time_out("call/transfer", 1, act=True, seconds=seconds)
        sim.time_out("call/query", 1, act=True, seconds=seconds / 2)
    ctx.queue("_timeouts", "call/transfer", len(p["request_s"]))
    ctx.queue("_timeouts", "call/query", len(p["request_s"]))
    sim.frame_delay_s = p["frame_delay_s"]
    return 1


# -- Webex ---------------------------------------------------------------------------------------


async def webex_duplicates(ctx: Ctx) -> int:
    ctx.world.sim.duplicate_deliveries = True
    return 1


async def webex_reorder(ctx: Ctx) -> int:
    ctx.world.sim.reorder_deliveries = True
    return 1


def draw_throttle(rng: random.Random) -> dict[str, Any]:
    return {"count": rng.randint(1, 3), "retry_after": round(rng.uniform(0.05, 0.5), 3)}


async def webex_throttle(ctx: Ctx) -> int:
    ctx.world.sim.throttle(ctx.params["count"], ctx.params["retry_after"])
    ctx.queue("webex_throttle", "", ctx.params["count"])
    return 0


WEBEX_OPS = ("hold", "dial", "transfer", "hangup", "resume")


def draw_webex_refusal(rng: random.Random) -> dict[str, Any]:
    return {"status": rng.choice([400, 403, 404, 409])}


def draw_webex_5xx(rng: random.Random) -> dict[str, Any]:
    return {"status": rng.choice([500, 502, 503])}


async def webex_refusal(ctx: Ctx) -> int:
    """The next call-control request, whichever it is, is refused with the drawn status."""
    sim, status = ctx.world.sim, ctx.params["status"]
    for op in WEBEX_OPS:
        sim.refuse(op, status, f"chaos: {op} refused with {status}", 1)

    def one_used() -> bool:
        return any(sim._refusals[op][0].count == 0 for op in WEBEX_OPS)

    async def keep_one() -> None:
        # Once one refusal is used, the others are withdrawn: one fault per run.
        deadline = asyncio.get_running_loop().time() + 40
        while not one_used() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - polls the sim
            await asyncio.sleep(0.001)
        used = [op for op in WEBEX_OPS if sim._refusals[op][0].count == 0]
        for op in WEBEX_OPS:
            sim._refusals.pop(op, None)
        for op in used:
            sim._refusals[op] = (type(sim._throttle)(0), "")  # keep a spent entry for the count
            ctx.queue("webex_refuse", op, 1)

    ctx.background.append(asyncio.create_task(keep_one()))
    return 0


async def webex_stall(ctx: Ctx) -> int:
    """The next request is acted on but answered after the adapter gave up: outcome unknown."""
    ctx.world.sim.stall(1, ctx.world.request_timeout_s + ctx.params["extra_s"])
    ctx.queue("webex_stall", "", 1)
    return 0


def draw_token(rng: random.Random) -> dict[str, Any]:
    return {"refused_s": round(rng.uniform(0.2, 1.5), 3)}


async def webex_token_refused(ctx: Ctx) -> int:
    """Webex refuses the access token (401) for a while, then accepts it again."""
    sim = ctx.world.sim
    sim.expire_token()
    ctx.later(ctx.params["refused_s"], lambda: setattr(sim, "_token_expired", False))
    return 1


FAULTS: tuple[FaultKind, ...] = (
    # Reconnect-heavy kinds: the consumer's backoff (up to 10 s) dominates each run, hence fewer runs.
    FaultKind("ws_dropped", "yeastar", "websocket dropped at every stage, reconnect at once", ws_drop,
              stages=STAGES, runs=12),
    FaultKind("ws_down_events_lost", "yeastar", "websocket down 0.2-1.5 s (reconnects refused): events lost",
              ws_down, draw_down, stages=STAGES, runs=12),
    FaultKind("duplicated_frames", "yeastar", "30-100 % of event frames sent twice", duplicate_frames,
              draw_duplicates),
    FaultKind("reordered_frames", "yeastar", "event frames shuffled in windows of 2-5", reorder_frames,
              draw_reorder),
    FaultKind("timeout_pbx_acted", "yeastar", "call/transfer times out, the PBX did act", _time_out(True),
              draw_timeout, stages=BEFORE_A_REQUEST),
    FaultKind("timeout_pbx_did_not_act", "yeastar", "call/transfer times out, the PBX did not act",
              _time_out(False), draw_timeout, stages=BEFORE_A_REQUEST),
    FaultKind("errcode_refusal", "yeastar", "call/transfer refused (10009, 60001, -2, 40002, 10005, 60002)",
              errcode_refusal, draw_errcode, stages=BEFORE_A_REQUEST),
    FaultKind("token_expired_mid_request", "yeastar", "10004 TOKEN EXPIRED answered to call/transfer",
              token_expired_request, stages=BEFORE_A_REQUEST),
    FaultKind("token_expired_mid_stream", "yeastar", "every token expires: 10004 frame, socket closed",
              token_expired_stream, stages=STAGES, runs=12),
    FaultKind("refresh_failure", "yeastar", "refresh_token refused or unanswered (token lives 1.5 s)",
              refresh_failure, draw_refresh, stages=("before_start",),
              world_options={"sim_config": {"access_token_ttl": 1.5}}),
    # Not before the start: after a restart there is no call left to transfer (409 no_active_call).
    FaultKind("pbx_restart", "yeastar", "PBX restart: every call vanishes, sockets drop", pbx_restart,
              stages=STAGES[1:], runs=12),
    FaultKind("service_sigkill", "kill", "xferd run SIGKILLed at every stage, restarted 0-0.8 s later",
              sigkill, draw_kill, stages=STAGES, runs=16, quick_runs=1,
              # A killed process cannot revoke its token, and the PBX allows 8 live tokens: with the
              # real 30 min lifetime the 9th restart is refused 60002 (see RELIABILITY.md, findings).
              world_options={"sim_config": {"access_token_ttl": 12.0}}),
    FaultKind("sigkill_after_commit", "kill", "SIGKILL after a decision is committed, before its request",
              sigkill_after_commit, draw_kill, stages=BEFORE_A_REQUEST, runs=12, quick_runs=2,
              world_options={"sim_config": {"access_token_ttl": 12.0}}),
    FaultKind("sqlite_locked", "yeastar", "store write-locked by another process for 1.2-2.5 s",
              store_locked, draw_lock, stages=STAGES, runs=15),
    FaultKind("sqlite_disk_full", "yeastar", "store cannot grow (SQLITE_FULL) for 0.5-2 s", disk_full,
              draw_full, stages=STAGES, runs=15),
    FaultKind("slow_pbx", "yeastar", "requests answered 0.5-2.5 s late, frames 0.05-0.5 s late", slow_pbx,
              draw_slow, runs=8, quick_runs=1, world_options={"request_timeout_s": 5.0}),
    FaultKind("webex_duplicated_deliveries", "webex", "every webhook delivered twice", webex_duplicates),
    FaultKind("webex_reordered_deliveries", "webex", "webhook deliveries swapped in pairs", webex_reorder),
    FaultKind("webex_throttled", "webex", "429 + Retry-After on 1-3 requests", webex_throttle, draw_throttle,
              stages=STAGES),
    FaultKind("webex_refusal", "webex", "the next operation refused 400/403/404/409", webex_refusal,
              draw_webex_refusal, stages=BEFORE_A_REQUEST),
    FaultKind("webex_server_error", "webex", "the next operation answered 500/502/503 (not acted on)",
              webex_refusal,
              draw_webex_5xx, stages=BEFORE_A_REQUEST),
    FaultKind("webex_unknown_outcome", "webex", "a request acted on but answered too late", webex_stall,
              draw_timeout, stages=STAGES),
    FaultKind("webex_token_refused", "webex", "the access token refused (401) for 0.2-1.5 s",
              webex_token_refused, draw_token, stages=STAGES, disables_pbx=True),
)  # fmt: skip

#: Scenarios a staged fault is played against (every stage reachable in them).
STAGED_SCENARIOS = FULL_STAGES


def by_name(name: str) -> FaultKind:
    for kind in FAULTS:
        if kind.name == name:
            return kind
    raise KeyError(f"no fault kind {name!r}; known: {', '.join(k.name for k in FAULTS)}")


def sim_config(kind: FaultKind, seed: int) -> SimConfig:
    config = SimConfig(seed=seed)
    for key, value in kind.world_options.get("sim_config", {}).items():
        setattr(config, key, value)
    return config
