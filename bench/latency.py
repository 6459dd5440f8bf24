"""Figure 2: decision latency — from the decisive frame to the ``complete`` request.

Both ends are stamped inside the simulator (:mod:`bench.simproc`), on one
clock: when the target's first ``ANSWER`` frame is handed to the subscribed
socket, and when the ``call/transfer`` ``attended_operate=complete`` request
for that transfer arrives.  Everything between is the path under test.

* **xferd**: the real service (``Service`` as ``xferd run`` builds it: adapter,
  runtime, engine, SQLite store with ``synchronous=FULL``, JSON logs at INFO,
  metrics).  Transfers are started through its control API
  (``POST /v1/transfers``, sent from the simulator's process so the API
  client's own cost does not land on xferd's core); it completes them by
  itself (policy ``on_answer = complete``).
* **bare echo**: a websocket client with no engine: it receives each frame,
  decodes it twice, and when it is the ANSWER of a target it is waiting for,
  POSTs ``call/transfer`` complete with httpx (a new connection per request,
  as the adapter does: the PBX closes after each answer).  Its transfers are
  started with ``call/transfer`` requests sent from the simulator's process.

Same load for both: ``latency_calls`` live calls, a background of
``background_fps`` hold/resume frames per second on the calls not being
transferred, transfers started at ``latency_rate`` per second, targets
answering after a random delay.  Rounds alternate the paths, each against a
fresh simulator; the samples of all rounds are pooled.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from adapters.service.server import Service
from bench.common import Child, Figure, Sizes, compact, goal, percentile, service_config, tempdir

TOPICS = compact({"topic_list": [30011, 30012, 30015]})
_UA = {"User-Agent": "bench-echo"}


class EchoClient:
    """The least a client can do to turn the decisive frame into the request."""

    def __init__(self, base_url: str, client_id: str, client_secret: str) -> None:
        self.base_url = base_url
        self.client_id = client_id
        self.client_secret = client_secret
        #: target number → the transferor channel to complete
        self.pending: dict[str, str] = {}
        self.token = ""
        self.http = httpx.AsyncClient(
            base_url=base_url + "/openapi/v1.0/",
            headers=_UA,
            timeout=10,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        answer = (
            await self.http.post(
                "get_token", json={"username": self.client_id, "password": self.client_secret}
            )
        ).json()
        self.token = answer["access_token"]
        host = self.base_url.removeprefix("http://")
        self._ws = await connect(
            f"ws://{host}/openapi/v1.0/subscribe?access_token={self.token}",
            user_agent_header="bench-echo",
            proxy=None,
            close_timeout=2.0,
        )
        await self._ws.send(TOPICS)
        await self._ws.recv()  # acknowledgement
        self._reader = asyncio.create_task(self._read(self._ws))

    async def _read(self, ws: ClientConnection) -> None:
        loads = json.loads
        async for message in ws:
            frame = loads(message)
            body = loads(frame["msg"]) if isinstance(frame.get("msg"), str) else None
            if body is None or frame.get("type") != 30011:
                continue
            for item in body.get("members") or ():
                leg = item.get("outbound")
                if leg is not None and leg.get("member_status") == "ANSWER":
                    channel = self.pending.pop(leg.get("to"), None)
                    if channel is not None:
                        task = asyncio.create_task(self._complete(channel))
                        self._posts.add(task)
                        task.add_done_callback(self._posts.discard)

    async def _complete(self, channel: str) -> None:
        await self.http.post(
            "call/transfer",
            params={"access_token": self.token},
            json={"type": "attended", "channel_id": channel, "attended_operate": "complete"},
        )

    async def close(self) -> None:
        if self._posts:
            await asyncio.wait(set(self._posts), timeout=5)
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.http.aclose()


async def _wait_completes(sim: Child, count: int, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        stats = await sim.ask("stats")
        if len(stats["complete_at"]) >= count or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


def _latencies(stats: dict[str, Any]) -> list[float]:
    out = []
    for channel, arrived in stats["complete_at"].items():
        number = stats["start_of"].get(channel)
        sent = stats["answer_sent"].get(number)
        if sent is not None:
            out.append(arrived - sent)
    return out


async def _round(
    path: str, sizes: Sizes, store: Path, store_url: str | None = None
) -> tuple[list[float], dict[str, Any]]:
    """One path against a fresh simulator; returns latencies (s) and the simulator's stats.
    ``store_url``: xferd keeps its state in that PostgreSQL database instead of SQLite."""
    transfers = sizes.latency_transfers
    sim = await Child.start("bench.simproc")
    try:
        info = await sim.ask(
            "setup", timeout_s=300, calls=sizes.latency_calls, targets=transfers,
            answer_after=list(sizes.answer_after),
        )  # fmt: skip
        rows, targets = info["calls"], info["targets"]
        background = [row[3] for row in rows[transfers:]] or [row[3] for row in rows]
        within = 30 + transfers / sizes.latency_rate + sizes.answer_after[1]
        post_for = 60 + transfers / sizes.latency_rate
        if path == "xferd":
            config = service_config(
                info["base_url"], info["client_id"], info["client_secret"], store,
                store_url=store_url, no_answer_timeout_s=60,
            )  # fmt: skip
            service = Service(config)
            await service.start()
            try:
                async with asyncio.timeout(10):
                    while not service.adapter.connected:  # noqa: ASYNC110 - the adapter has no hook
                        await asyncio.sleep(0.01)
                await sim.ask("background", channels=background, fps=sizes.background_fps)
                bodies = [{"channel_id": rows[i][2], "number": targets[i]} for i in range(transfers)]
                posted = await sim.ask(
                    "post", timeout_s=post_for, url=f"{service.base_url}/v1/transfers", bodies=bodies,
                    rate=sizes.latency_rate,
                )  # fmt: skip
                stats = await _wait_completes(sim, transfers, within)
            finally:
                await service.stop()
            refused = [answer for answer in posted["answers"] if answer[0] != 201]
            if refused:
                stats["refused"] = len(refused)
        else:
            echo = EchoClient(info["base_url"], info["client_id"], info["client_secret"])
            await echo.start()
            try:
                await sim.ask("background", channels=background, fps=sizes.background_fps)
                echo.pending = {targets[i]: rows[i][2] for i in range(transfers)}
                bodies = [
                    {
                        "type": "attended",
                        "channel_id": rows[i][2],
                        "number": targets[i],
                        "dial_permission": rows[i][1],
                    }
                    for i in range(transfers)
                ]
                await sim.ask(
                    "post", timeout_s=post_for, url=f"{info['base_url']}/openapi/v1.0/call/transfer",
                    bodies=bodies, rate=sizes.latency_rate, params={"access_token": echo.token},
                )  # fmt: skip
                stats = await _wait_completes(sim, transfers, within)
            finally:
                await echo.close()
        await sim.ask("teardown", timeout_s=30)
    finally:
        await sim.close()
    return _latencies(stats), stats


async def run_latency(sizes: Sizes) -> list[Figure]:
    samples: dict[str, list[float]] = {"xferd": [], "echo": []}
    fps: list[float] = []
    incomplete = 0
    with tempdir() as tmp:
        for r in range(sizes.latency_rounds):
            for path in ("xferd", "echo") if r % 2 == 0 else ("echo", "xferd"):
                latencies, stats = await _round(path, sizes, tmp / f"{path}-{r}")
                samples[path].extend(latencies)
                incomplete += sizes.latency_transfers - len(latencies)
                if stats["background_seconds"] > 0:
                    fps.append(stats["background_frames"] / stats["background_seconds"])
    figures = []
    for q, limit in ((50, 1.5), (99, 2.0)):
        ours = percentile(samples["xferd"], q) * 1000
        bare = percentile(samples["echo"], q) * 1000
        ratio = ours / bare
        met = ratio <= limit
        figures.append(
            Figure(
                f"decision_latency_p{q}",
                ours,
                "ms",
                f"ratio {ratio:.2f} of bare echo client {bare:.2f} ms; {len(samples['xferd'])}/"
                f"{len(samples['echo'])} transfers (xferd/echo) in {sizes.latency_rounds} alternating "
                f"round(s); {sizes.latency_calls} live calls; background {min(fps):.0f}-{max(fps):.0f} "
                f"frames/s; {incomplete} transfers without a sample; {goal(met, f'<= {limit}x')}",
                met,
                {"xferd": samples["xferd"], "echo": samples["echo"]} if q == 50 else {},
            )
        )
    return figures
