"""The Yeastar simulator in a child process, with two stopwatches.

Figures 2 and 6 run xferd (or a bare echo client) against the real
:class:`~adapters.yeastar.simulator.PbxSimulator`.  It runs here, in its own
process on its own core, so the simulator's work (its call world, uvicorn,
the background frames) does not take the CPU of the code being measured.

:class:`BenchSimulator` adds what the benchmarks need and changes nothing
else:

* the moment each watched target's first ``ANSWER`` frame is handed to the
  subscribed socket (the decisive frame of an attended transfer);
* the moment each ``attended_operate=complete`` request arrives, and how many
  were accepted per transferor channel (exactly one each is the contract);
* background traffic: hold/resume on live calls at a fixed frame rate;
* the API clients: the POSTs that start transfers are sent from here too, so
  that their cost (httpx is not cheap) lands on this core, not on the one
  running the code under test.

Both stopwatches read ``time.perf_counter`` in this one process, so a latency
is the difference of two readings of the same clock.  Driven over
stdin/stdout by :class:`bench.common.Child` (``python -m bench.simproc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from typing import Any

import httpx

from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig
from bench.common import pin, serve_commands


class BenchSimulator(PbxSimulator):
    """The simulator, timing the decisive frame and the ``complete`` request."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.watch: set[str] = set()
        self.answer_sent: dict[str, float] = {}  # target number → its first ANSWER frame left
        self.start_of: dict[str, str] = {}  # transferor channel → target number (start requests)
        self.complete_at: dict[str, float] = {}  # transferor channel → first complete arrived
        self.completes: Counter[str] = Counter()  # transferor channel → completes accepted

    def _publish(self, topic: int, msg: dict[str, Any]) -> None:
        super()._publish(topic, msg)
        if topic != 30011 or not self.watch:
            return
        for item in msg.get("members") or ():
            leg = item.get("outbound") or item.get("extension")
            if leg is None or leg.get("member_status") != "ANSWER":
                continue
            number = leg.get("to") or leg.get("number")
            if number in self.watch and number not in self.answer_sent:
                self.answer_sent[number] = time.perf_counter()

    def _transfer(self, body: dict[str, Any], token: str) -> dict[str, Any]:
        arrived = time.perf_counter()
        answer = super()._transfer(body, token)  # raises SimError for a refusal: not counted
        channel = str(body.get("channel_id"))
        op = body.get("attended_operate")
        if op is None and body.get("type") == "attended":
            self.start_of[channel] = str(body.get("number"))
        elif op == "complete":
            self.completes[channel] += 1
            self.complete_at.setdefault(channel, arrived)
        return answer


class Controller:
    """The commands the parent sends."""

    def __init__(self) -> None:
        self.sim: BenchSimulator | None = None
        self._background: asyncio.Task[None] | None = None
        self._bg_frames = 0
        self._bg_seconds = 0.0
        self._lags: list[float] = []  # how late this process's loop woke a 5 ms sleep (s)
        self._lag_task: asyncio.Task[None] | None = None

    async def setup(
        self, calls: int, targets: int, answer_after: list[float], seed: int = 11
    ) -> dict[str, Any]:
        """Start a simulator with ``calls`` answered calls (outside caller → its own
        extension) and ``targets`` external numbers that answer after a delay."""
        rng = random.Random(seed)
        if self._lag_task is None:
            self._lag_task = asyncio.create_task(self._watch_lag())
        sim = BenchSimulator(SimConfig(seed=seed, external=Phone(answer_after=None)))
        await sim.start()
        self.sim = sim
        rows = []
        for i in range(calls):
            extension = str(20000 + i)
            sim.add_extension(extension)
            call_id = sim.place_call(f"0{944200000 + i}", extension, inbound_trunk="siptrunk")
            rows.append([call_id, extension, sim.channel_of(extension), sim.channel_of(f"0{944200000 + i}")])
        numbers = []
        low, high = answer_after
        for i in range(targets):
            number = f"0{777000000 + i}"
            sim.set_phone(number, Phone(answer_after=rng.uniform(low, high)))
            sim.watch.add(number)
            numbers.append(number)
        return {
            "base_url": sim.base_url,
            "client_id": sim.config.client_id,
            "client_secret": sim.config.client_secret,
            "calls": rows,
            "targets": numbers,
        }

    async def _watch_lag(self) -> None:
        """The simulator's own loop lag: a busy feeder delays what it stamps."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(0.005)
            self._lags.append(loop.time() - began - 0.005)

    async def lag_reset(self) -> dict[str, Any]:
        self._lags.clear()
        return {"ok": True}

    async def background(self, channels: list[str], fps: float) -> dict[str, Any]:
        """Hold/resume ``channels`` in turn: one 30011 frame each, ``fps`` per second."""
        self._background = asyncio.create_task(self._toggle(channels, fps))
        return {"ok": True}

    async def _toggle(self, channels: list[str], fps: float) -> None:
        assert self.sim is not None
        world = self.sim.world
        held: set[str] = set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        i = 0
        try:
            while True:
                await asyncio.sleep(0.005)
                due = int((loop.time() - started) * fps) - self._bg_frames
                for _ in range(max(0, due)):
                    channel = channels[i % len(channels)]
                    i += 1
                    if channel in held:
                        world.unhold(channel)
                        held.discard(channel)
                    else:
                        world.hold(channel)
                        held.add(channel)
                    self._bg_frames += 1
                self._bg_seconds = loop.time() - started
        except asyncio.CancelledError:
            self._bg_seconds = loop.time() - started
            raise

    async def post(
        self, url: str, bodies: list[dict[str, Any]], rate: float = 0.0, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """POST each body to ``url``: all at once (``rate`` 0) or ``rate`` per second on an
        absolute schedule.  Returns ``[status, id, seconds]`` per body, in order."""
        limits = httpx.Limits(max_connections=len(bodies) + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            timeout=120, limits=limits, headers={"User-Agent": "bench-client"}, trust_env=False
        ) as http:

            async def one(body: dict[str, Any]) -> list[Any]:
                nonlocal retries
                began = time.perf_counter()
                try:
                    response = await http.post(url, json=body, params=params)
                    # A full admission queue answers 503 + Retry-After: a client waits and asks again.
                    while response.status_code == 503 and "retry-after" in response.headers:
                        retries += 1
                        await asyncio.sleep(float(response.headers["retry-after"]))
                        response = await http.post(url, json=body, params=params)
                    answer = response.json()
                    status, ident = (
                        response.status_code,
                        answer.get("id") if isinstance(answer, dict) else None,
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    status, ident = 0, type(exc).__name__
                return [status, ident, time.perf_counter() - began]

            retries = 0
            loop = asyncio.get_running_loop()
            started = loop.time()
            tasks = []
            for i, body in enumerate(bodies):
                if rate > 0:
                    delay = started + i / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(body)))
            answers = await asyncio.gather(*tasks)
        return {"answers": answers, "seconds": loop.time() - started, "retries": retries}

    async def close_after_answer(self, close: bool) -> dict[str, Any]:
        """Whether the simulator closes each HTTP connection after its answer (a P-Series does)."""
        if self.sim is None:
            raise RuntimeError("no simulator: setup first")
        self.sim.config.close_after_answer = close
        return {"ok": True}

    async def stats(self) -> dict[str, Any]:
        sim = self.sim
        if sim is None:
            raise RuntimeError("no simulator: setup first")
        return {
            "answer_sent": sim.answer_sent,
            "complete_at": sim.complete_at,
            "start_of": sim.start_of,
            "completes": dict(sim.completes),
            "operate": {op: sim.operate_count(op) for op in ("complete", "abort", "swap", "threeway")},
            "background_frames": self._bg_frames,
            "background_seconds": self._bg_seconds,
            "requests": len(sim.requests),
            "lags": self._lags[-20000:],
        }

    async def teardown(self) -> dict[str, Any]:
        background, self._background = self._background, None
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        lag, self._lag_task = self._lag_task, None
        if lag is not None:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
        sim, self.sim = self.sim, None
        if sim is not None:
            await sim.stop()
        return {"ok": True}


async def main() -> None:
    pin(1)
    controller = Controller()
    try:
        await serve_commands(
            {
                "setup": controller.setup,
                "background": controller.background,
                "post": controller.post,
                "close_after_answer": controller.close_after_answer,
                "lag_reset": controller.lag_reset,
                "stats": controller.stats,
                "teardown": controller.teardown,
            }
        )
    finally:
        await controller.teardown()


if __name__ == "__main__":
    asyncio.run(main())
