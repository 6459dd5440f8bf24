"""A child process of live-stream subscribers: websocket clients reading as a browser would.

Each client opens ``/v1/stream?snapshot=1`` (offering permessage-deflate, as
browsers do), decodes every message's JSON and keeps the latest state per
call and transfer (what the console's page does before it renders), and when
the service closes the stream (1013 when it fell behind, or any drop) it
reconnects after a back-off of 0.5–1 s and takes a new snapshot — the
console's own reconnect loop.  The clients run in this process, not in the
service's, at the lowest CPU priority: they stand in for browsers on other
machines, so they must not take the CPU from what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.common import pin, serve_commands


class Clients:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.messages = 0
        self.snapshots = 0
        self.bytes = 0
        self.connects = 0
        self.closes: Counter[str] = Counter()
        self.connected = 0
        self.started = 0.0

    async def start(self, url: str, count: int) -> dict[str, Any]:
        self.started = time.monotonic()
        self.tasks = [asyncio.create_task(self._client(url, n)) for n in range(count)]
        async with asyncio.timeout(60):
            while self.connected < count:  # noqa: ASYNC110 - counted by the client tasks
                await asyncio.sleep(0.05)
        return {"connected": self.connected}

    async def _client(self, url: str, n: int) -> None:
        calls: dict[str, Any] = {}
        transfers: dict[str, Any] = {}
        rng = random.Random(n)
        while True:
            try:
                async with connect(url, max_size=None, open_timeout=30, close_timeout=2) as ws:
                    self.connects += 1
                    self.connected += 1
                    try:
                        async for text in ws:
                            self.messages += 1
                            self.bytes += len(text)
                            message = json.loads(text)
                            kind = message["kind"]
                            if kind == "call":
                                calls[message["call"]["call_id"]] = message["call"]
                            elif kind == "transfer":
                                transfers[message["transfer"]["id"]] = message["transfer"]
                            elif kind == "snapshot":
                                self.snapshots += 1
                                calls = {c["call_id"]: c for c in message["calls"]}
                                transfers = {t["id"]: t for t in message["transfers"]}
                    finally:
                        self.connected -= 1
                    self.closes[str(ws.close_code)] += 1
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                self.closes[type(exc).__name__] += 1
            await asyncio.sleep(0.5 + rng.random() * 0.5)

    async def stats(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "snapshots": self.snapshots,
            "bytes": self.bytes,
            "connects": self.connects,
            "connected": self.connected,
            "closes": dict(self.closes),
            "seconds": time.monotonic() - self.started,
        }

    async def close(self) -> dict[str, Any]:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []
        return {"ok": True}


async def main() -> None:
    pin(1)
    # Browsers run on other machines: here the subscribers take only the CPU that the service
    # and the simulator being measured leave (on a 2-core machine they would otherwise compete
    # for it, and a slow subscriber is exactly what the stream must shrug off).
    os.nice(19)
    clients = Clients()
    try:
        await serve_commands({"start": clients.start, "stats": clients.stats, "close": clients.close})
    finally:
        await clients.close()


if __name__ == "__main__":
    asyncio.run(main())
