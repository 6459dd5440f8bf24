"""Figures 1 and 4: how many 30011 frames per second the service consumes.

The service path is the real thing, end to end: ``Service`` (as ``xferd run``
assembles it: Yeastar adapter, event consumer, runtime, engine, SQLite store,
metrics, JSON logs at INFO, control API) connected to the bench PBX
(:mod:`bench.minipbx`).  It logs in, subscribes, loads the live calls from
``call/query`` and then reads frames: websocket → ``parse_frame`` → runtime →
registry → transfer routing → commands → metrics.

The bare path is the least any consumer must do with the same frames: a
``websockets`` client that receives each frame and decodes its JSON twice
(the frame, then its ``msg`` string), nothing else.

Both read the very same pre-encoded frames from the same server in the same
run, alternately (``ingest_pairs`` pairs for figure 1, ``repeats`` per size
for figure 4); medians are compared.  A run skips ``warmup`` frames, then
times ``frames`` frames: from the arrival of frame ``warmup`` to the arrival
of frame ``warmup + frames`` (each reader stamps the arrival before handling
the frame, so both windows cover the same work).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from adapters.service.metrics import Metrics, MetricsObserver
from adapters.service.server import Service
from bench.common import Child, Figure, Sizes, compact, goal, median, service_config, tempdir

TOPICS = compact({"topic_list": [30011, 30012, 30015]})


@dataclass(frozen=True, slots=True)
class Rate:
    """Frames per wall-clock second, and per second of CPU time of the thread
    that did the work (the second is immune to other processes taking the CPU)."""

    wall: float
    cpu: float


class _Counting(MetricsObserver):
    """The service's own observer, plus two timestamps: the arrival of frame
    ``start`` and of frame ``end`` (30011 frames only; acks do not count)."""

    def __init__(self, metrics: Metrics, start: int, end: int) -> None:
        super().__init__(metrics)
        self.count = 0
        self.start, self.end = start, end
        self.t0 = self.t1 = self.c0 = self.c1 = 0.0
        self.done = asyncio.Event()

    def frame(self, kind: str) -> None:
        super().frame(kind)
        if kind != "30011":
            return
        self.count += 1
        if self.count == self.start:
            self.t0, self.c0 = time.perf_counter(), time.thread_time()
        elif self.count == self.end:
            self.t1, self.c1 = time.perf_counter(), time.thread_time()
            self.done.set()


async def service_rate(pbx: dict[str, Any], warmup: int, frames: int, store: Path) -> Rate:
    """Frames/s the whole service consumes (one run)."""
    observer = _Counting(Metrics(), warmup, warmup + frames)
    config = service_config(f"http://127.0.0.1:{pbx['port']}", pbx["client_id"], pbx["client_secret"], store)
    service = Service(config, observer=observer)
    await service.start()
    try:
        async with asyncio.timeout(60 + frames / 1000):
            await observer.done.wait()
    finally:
        await service.stop()
    return Rate(frames / (observer.t1 - observer.t0), frames / (observer.c1 - observer.c0))


async def bare_rate(pbx: dict[str, Any], warmup: int, frames: int) -> Rate:
    """Frames/s a bare websocket client consumes: receive + two ``json.loads``."""
    url = f"ws://127.0.0.1:{pbx['port']}/openapi/v1.0/subscribe?access_token={pbx['token']}"
    end = warmup + frames
    t0 = t1 = c0 = c1 = 0.0
    async with asyncio.timeout(60 + frames / 1000):
        async with connect(url, user_agent_header="bench-bare", proxy=None, close_timeout=2.0) as ws:
            await ws.send(TOPICS)
            await ws.recv()  # the topic_list acknowledgement
            count = 0
            loads = json.loads
            async for message in ws:
                count += 1
                if count == warmup:
                    t0, c0 = time.perf_counter(), time.thread_time()
                elif count == end:
                    t1, c1 = time.perf_counter(), time.thread_time()
                    break
                loads(loads(message)["msg"])
    return Rate(frames / (t1 - t0), frames / (c1 - c0))


async def _measure(
    pbx: Child, calls: int, sizes: Sizes, store: Path, *, repeats: int
) -> tuple[list[Rate], list[Rate], dict[str, Any]]:
    info = await pbx.ask(
        "prepare", timeout_s=300, calls=calls, frames=sizes.warmup_frames + sizes.ingest_frames
    )
    services: list[Rate] = []
    bares: list[Rate] = []
    for run in range(repeats):
        # Alternate which path goes first so a slow start of the machine hurts neither.
        order = ("service", "bare") if run % 2 == 0 else ("bare", "service")
        for path in order:
            if path == "service":
                services.append(
                    await service_rate(
                        info, sizes.warmup_frames, sizes.ingest_frames, store / f"{calls}-{run}"
                    )
                )
            else:
                bares.append(await bare_rate(info, sizes.warmup_frames, sizes.ingest_frames))
    return services, bares, info


async def _pbx() -> Child:
    return await Child.start("bench.minipbx")


async def run_ingest(sizes: Sizes) -> list[Figure]:
    """Figure 1: service / bare at ``ingest_calls`` live calls.

    The ratio is the median of the per-pair ratios (each service run against
    the bare run next to it), which cancels most of a noisy machine's drift;
    the same ratio on CPU time is given too.
    """
    pbx = await _pbx()
    try:
        with tempdir() as tmp:
            services, bares, info = await _measure(
                pbx, sizes.ingest_calls, sizes, tmp, repeats=sizes.ingest_pairs
            )
    finally:
        await pbx.close()
    service, bare = median([r.wall for r in services]), median([r.wall for r in bares])
    ratio = median([s.wall / b.wall for s, b in zip(services, bares, strict=True)])
    cpu_ratio = median([s.cpu / b.cpu for s, b in zip(services, bares, strict=True)])
    runs = ", ".join(f"{s.wall:.0f}/{b.wall:.0f}" for s, b in zip(services, bares, strict=True))
    service_cpu, bare_cpu = median([r.cpu for r in services]), median([r.cpu for r in bares])
    size = info["bytes"] // info["frames"]
    return [
        Figure(
            "ingest",
            service,
            "frames/s",
            f"ratio {ratio:.2f} of bare client {bare:.0f} frames/s (median of per-pair ratios; on CPU time "
            f"{cpu_ratio:.2f}: {service_cpu:.0f} vs {bare_cpu:.0f} frames per CPU-second); "
            f"{len(services)} alternating runs (service/bare: {runs}); {sizes.ingest_frames} frames of "
            f"{size} bytes, {sizes.ingest_calls} live calls; {goal(ratio >= 0.5, '>= 0.5')}",
            ratio >= 0.5,
            {"service": [r.wall for r in services], "bare": [r.wall for r in bares]},
        )
    ]


async def run_scaling(sizes: Sizes) -> list[Figure]:
    """Figure 4: the service's ingest rate at each of ``scaling_calls`` live calls."""
    rates: dict[int, float] = {}
    cpu_rates: dict[int, float] = {}
    bare_rates: dict[int, float] = {}
    runs: dict[int, list[float]] = {}
    pbx = await _pbx()
    try:
        with tempdir() as tmp:
            for calls in sizes.scaling_calls:
                services, bares, _ = await _measure(pbx, calls, sizes, tmp, repeats=sizes.repeats)
                rates[calls] = median([r.wall for r in services])
                cpu_rates[calls] = median([r.cpu for r in services])
                bare_rates[calls] = median([r.wall for r in bares])
                runs[calls] = [r.wall for r in services]
    finally:
        await pbx.close()
    smallest, largest = sizes.scaling_calls[0], sizes.scaling_calls[-1]
    figures = []
    for calls in sizes.scaling_calls:
        ratio = rates[calls] / rates[smallest]
        details = (
            f"ratio {ratio:.2f} of the rate at {smallest} calls (on CPU time "
            f"{cpu_rates[calls] / cpu_rates[smallest]:.2f}: {cpu_rates[calls]:.0f} frames per CPU-second); "
            f"bare client {bare_rates[calls]:.0f} frames/s; median of {len(runs[calls])} runs: "
            f"{', '.join(f'{r:.0f}' for r in runs[calls])}"
        )
        met = None
        if calls == largest:
            met = ratio >= 0.8
            details += f"; {goal(met, f'>= 0.8 (within 20 % of the rate at {smallest})')}"
        figures.append(
            Figure(
                f"ingest_rate@{calls}", rates[calls], "frames/s", details, met, {"bare": bare_rates[calls]}
            )
        )
    return figures
