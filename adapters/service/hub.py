"""The live stream's fan-out: every PBX's changes to every ``/v1/stream`` client.

Theory of operation
-------------------
Runtimes (one per PBX connection) publish each transfer change and call
change as one JSON message.  The hub serialises it once and puts it on every
subscriber's bounded queue without waiting: a slow client must never slow
the feed, so a client whose queue is full is dropped (its socket is closed
with 1013 "try again later"; it reconnects and reads the current state from
the API).  With no subscriber, publishing costs one ``if``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from adapters.service.logs import get_logger
from adapters.service.metrics import Metrics

log = get_logger("xferd.stream")


class Subscription:
    """One live-stream client's bounded queue of JSON messages.

    ``None`` is the end marker: the client fell behind (or the service is
    stopping) and must be disconnected; it can reconnect and read the
    current state from the API.
    """

    def __init__(self, size: int, pbx: str | None = None) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(size)
        self.overflowed = False
        #: Only this PBX's messages (None: every PBX's).
        self.pbx = pbx

    async def get(self) -> str | None:
        return await self.queue.get()

    def end(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    """Subscribers of the live stream, shared by every runtime of a service."""

    def __init__(self, metrics: Metrics, *, queue_size: int = 256) -> None:
        self.metrics = metrics
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()

    def __bool__(self) -> bool:
        """True while someone reads the stream (building a message is then worth it)."""
        return bool(self._subscribers)

    def subscribe(self, pbx: str | None = None) -> Subscription:
        subscription = Subscription(self.queue_size, pbx)
        self._subscribers.add(subscription)
        self.metrics.stream_clients.set(len(self._subscribers))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        self.metrics.stream_clients.set(len(self._subscribers))

    def publish(self, message: Mapping[str, Any], pbx: str | None = None) -> None:
        """Send ``message`` (about PBX ``pbx``, if it is about one) to every subscriber that wants it."""
        if not self._subscribers:
            return
        text = json.dumps(message, separators=(",", ":"), default=str)
        for subscription in list(self._subscribers):
            if pbx is not None and subscription.pbx is not None and subscription.pbx != pbx:
                continue
            try:
                subscription.queue.put_nowait(text)
            except asyncio.QueueFull:
                # A slow consumer must never slow the feed: drop it.
                self.unsubscribe(subscription)
                subscription.overflowed = True
                subscription.end()
                self.metrics.stream_dropped.inc()
                log.warning("stream_client_dropped", reason="queue full")

    def close(self) -> None:
        """End every subscription (the service is stopping)."""
        for subscription in list(self._subscribers):
            self.unsubscribe(subscription)
            subscription.end()
