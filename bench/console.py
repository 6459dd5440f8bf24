"""Figure 8: the supervisor console's cost — live-stream subscribers must not slow the engine.

The issue's goal: with 50 stream subscribers (websocket clients reading as a
browser would) on 1,000 live calls at 2,000 frames/s, ingest ≥ 0.8 of the
rate with no subscriber and decision latency p99 ≤ 1.2× that with no
subscriber.

Set-up as figure 2 (:mod:`bench.latency`, the ``xferd`` path): the real
service against the simulator (:mod:`bench.simproc`, its own process) with
``latency_calls`` live calls, a background of ``background_fps`` hold/resume
frames per second — every one a call change the stream publishes — and
``latency_transfers`` attended transfers started through the API, completed
by the service itself when the target answers; the decision latency is
stamped inside the simulator.  Rounds alternate between no subscriber and
:data:`SUBSCRIBERS` subscribers (:mod:`bench.streamclients`, another process:
``/v1/stream?snapshot=1``, every message decoded, reconnect after a 1013).

*Ingest* is the background rate the simulator achieved: it writes frames
paced at ``background_fps`` on the websocket the service reads, so a service
that falls behind slows it down through TCP back-pressure.  The service's
CPU use (its process: the simulator and the subscribers are children) and
what the subscribers received (messages, snapshots, drops) are reported too.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from adapters.service.server import Service
from bench.common import Child, Figure, Sizes, goal, percentile, service_config, tempdir
from bench.latency import _latencies, _wait_completes

#: Subscribers in a full run (the issue's 50); a quick run uses a few.
SUBSCRIBERS = 50


async def _round(subscribers: int, sizes: Sizes, store: Path) -> dict[str, Any]:
    transfers = sizes.latency_transfers
    sim = await Child.start("bench.simproc")
    clients: Child | None = None
    try:
        info = await sim.ask(
            "setup", timeout_s=300, calls=sizes.latency_calls, targets=transfers,
            answer_after=list(sizes.answer_after),
        )  # fmt: skip
        rows, targets = info["calls"], info["targets"]
        background = [row[3] for row in rows[transfers:]] or [row[3] for row in rows]
        within = 30 + transfers / sizes.latency_rate + sizes.answer_after[1]
        config = service_config(
            info["base_url"], info["client_id"], info["client_secret"], store, no_answer_timeout_s=60
        )
        service = Service(config)
        await service.start()
        stream: dict[str, Any] = {}
        try:
            async with asyncio.timeout(10):
                while not service.adapter.connected:  # noqa: ASYNC110 - the adapter has no hook
                    await asyncio.sleep(0.01)
            await sim.ask("background", channels=background, fps=sizes.background_fps)
            if subscribers:
                clients = await Child.start("bench.streamclients")
                url = service.base_url.replace("http://", "ws://") + "/v1/stream?snapshot=1"
                await clients.ask("start", timeout_s=90, url=url, count=subscribers)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            dropped0 = service.metrics.stream_dropped._value.get()
            bodies = [{"channel_id": rows[i][2], "number": targets[i]} for i in range(transfers)]
            await sim.ask(
                "post", timeout_s=60 + transfers / sizes.latency_rate, url=f"{service.base_url}/v1/transfers",
                bodies=bodies, rate=sizes.latency_rate,
            )  # fmt: skip
            stats = await _wait_completes(sim, transfers, within)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            if clients is not None:
                stream = await clients.ask("stats")
            stream["dropped"] = service.metrics.stream_dropped._value.get() - dropped0
        finally:
            if clients is not None:
                await clients.close()
            await service.stop()
        await sim.ask("teardown", timeout_s=30)
    finally:
        await sim.close()
    seconds = stats["background_seconds"]
    return {
        "latencies": _latencies(stats),
        "fps": stats["background_frames"] / seconds if seconds > 0 else 0.0,
        "cpu": cpu / wall,
        "stream": stream,
    }


async def run_console(sizes: Sizes) -> list[Figure]:
    count = SUBSCRIBERS if not sizes.quick else 5
    results: dict[int, list[dict[str, Any]]] = {0: [], count: []}
    with tempdir() as tmp:
        for r in range(sizes.latency_rounds):
            for subscribers in (0, count) if r % 2 == 0 else (count, 0):
                results[subscribers].append(await _round(subscribers, sizes, tmp / f"{subscribers}-{r}"))

    def pooled(n: int) -> list[float]:
        return [x for result in results[n] for x in result["latencies"]]

    def mean(n: int, key: str) -> float:
        return float(sum(result[key] for result in results[n])) / len(results[n])

    alone, watched = pooled(0), pooled(count)
    fps_alone, fps_watched = mean(0, "fps"), mean(count, "fps")
    ingest_ratio = fps_watched / fps_alone
    p50 = (percentile(alone, 50) * 1000, percentile(watched, 50) * 1000)
    p99 = (percentile(alone, 99) * 1000, percentile(watched, 99) * 1000)
    latency_ratio = p99[1] / p99[0]
    streams = [result["stream"] for result in results[count]]
    received = sum(s.get("messages", 0) for s in streams)
    seconds = sum(s.get("seconds", 0.0) for s in streams) or 1.0
    snapshots = sum(s.get("snapshots", 0) for s in streams)
    dropped = int(sum(s.get("dropped", 0) for s in streams))
    common = (
        f"{count} subscribers vs none, {sizes.latency_rounds} alternating round(s) each; "
        f"{sizes.latency_calls} live calls, background offered {sizes.background_fps:.0f} frames/s; "
        f"service CPU {mean(0, 'cpu') * 100:.0f} % alone, {mean(count, 'cpu') * 100:.0f} % watched; "
        f"subscribers received {received / seconds:.0f} messages/s in all, {snapshots} snapshots, "
        f"{dropped} drops (1013)"
    )
    ingest_met = ingest_ratio >= 0.8
    latency_met = latency_ratio <= 1.2
    return [
        Figure(
            "console_ingest",
            fps_watched,
            "frames/s",
            f"ratio {ingest_ratio:.2f} of {fps_alone:.0f} frames/s with no subscriber; {common}; "
            f"{goal(ingest_met, '>= 0.8')}",
            ingest_met,
        ),
        Figure(
            "console_latency_p99",
            p99[1],
            "ms",
            f"ratio {latency_ratio:.2f} of {p99[0]:.2f} ms with no subscriber (p50 {p50[1]:.2f} vs "
            f"{p50[0]:.2f} ms); {len(watched)}/{len(alone)} transfers (watched/alone); "
            f"{goal(latency_met, '<= 1.2x')}",
            latency_met,
        ),
    ]
