"""The live stream's fan-out: every PBX's changes to every ``/v1/stream`` client.

Theory of operation
-------------------
Runtimes (one per PBX connection) publish each transfer change and call
change as one JSON message.  The hub serialises it once and hands it to
every subscriber without waiting: a slow client must never slow the feed,
so a client that falls too far behind is dropped (its socket is closed with
1013 "try again later"; it reconnects and reads the current state again).
With no subscriber, publishing costs one ``if``.

There are two kinds of subscribers:

*Plain* subscriptions (in-process readers: the demo, tests) get every
message, in order, on a bounded queue of ``queue_size`` messages.

*Conflated* subscriptions (the ``/v1/stream`` websocket clients) get
per-call changes at most once per ``interval_s`` (0.1 s: ≤ 10 changes per
second per call per client), latest wins; transfer changes (and rule
notices) are never conflated or dropped.  Conflation happens once, in the
hub, not per client: published messages collect in one ordered buffer (a
call's newer change replaces its older one and moves to the end), and a
timer flushes the buffer every ``interval_s`` while it holds anything,
putting the same :class:`Batch` on every conflated client's queue.  So a
publish costs the same with 1 or 50 browsers attached, and each client's
sender wakes at most ten times a second.  A batch's WebSocket frames are
encoded once for every client (:func:`ws_frame`), and the stream writes a
client's waiting batches to its socket in one write
(:mod:`adapters.service.stream_writer`): per message and client there is no
system call and no framing, which is what made 50 browsers cost more than
the engine itself.  A conflated client that falls
behind (its socket is full, so its sender waits) does not pile up stale
states: once :data:`MERGE_AT` flushes wait, they are folded into one holding
each call's latest change only, so a slow browser gets fewer, fresher
updates instead of being dropped and reconnecting (a new snapshot each
time).  It is dropped (1013) only when it took nothing for ``stall_s``
seconds, or more than ``max_unconflated`` transfer changes wait for it.

The first flushes after a subscription may repeat changes that its snapshot
already shows: harmless, as each message carries the whole state of its call
or transfer.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Hashable, Mapping
from typing import Any

from adapters.service.logs import get_logger
from adapters.service.metrics import Metrics

log = get_logger("xferd.stream")

#: Seconds between flushes of conflated changes (so ≤ 10 per second per call per client).
CONFLATE_INTERVAL_S = 0.1
#: A conflated client with this many flushes waiting has them folded into one.
MERGE_AT = 4
#: A conflated client that took nothing for this long is dropped (seconds).
STALL_S = 10.0
#: … and so is one with more waiting messages that cannot be folded (transfer changes).
MAX_UNCONFLATED = 5000


def ws_frame(text: str) -> bytes:
    """``text`` as one unmasked, final WebSocket text frame (RFC 6455 §5.2: what a server sends)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Batch:
    """One flush's messages, shared by every conflated client that gets it; their WebSocket
    frames are encoded once, by the first client that asks, for all of them.  ``keys`` name
    each message: ``(pbx, call_id)`` for a call change, a unique number for anything else."""

    __slots__ = ("_frames", "keys", "texts")

    def __init__(self, texts: tuple[str, ...], keys: tuple[Hashable, ...] = ()) -> None:
        self.texts = texts
        self.keys = keys
        self._frames: bytes | None = None

    @property
    def frames(self) -> bytes:
        if self._frames is None:
            self._frames = b"".join(ws_frame(text) for text in self.texts)
        return self._frames

    @classmethod
    def merged(cls, batches: list[Batch]) -> Batch:
        """``batches`` as one, each call's latest change only (a client that fell behind)."""
        latest: dict[Hashable, str] = {}
        for batch in batches:
            for key, text in zip(batch.keys, batch.texts, strict=True):
                if type(key) is tuple:
                    latest.pop(key, None)  # latest wins, and moves to the end
                latest[key] = text
        return cls(tuple(latest.values()), tuple(latest.keys()))

    @property
    def unconflatable(self) -> int:
        """How many of its messages are not call changes (never merged away)."""
        return sum(1 for key in self.keys if type(key) is not tuple)


class Subscription:
    """One live-stream client's bounded queue of JSON messages.

    ``None`` is the end marker: the client fell behind (or the service is
    stopping) and must be disconnected; it can reconnect and read the
    current state from the API.  A conflated subscription's queue holds
    tuples of messages (one per flush) instead of single messages.
    """

    def __init__(self, size: int, pbx: str | None = None, *, conflated: bool = False) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(size)
        self.overflowed = False
        #: When the client last took what waited (monotonic): a conflated client that takes
        #: nothing for the hub's ``stall_s`` is dropped.
        self.taken_at = time.monotonic()
        #: Only this PBX's messages (None: every PBX's).
        self.pbx = pbx
        self.conflated = conflated

    async def get(self) -> str | None:
        """The next message (plain subscriptions)."""
        item: str | None = await self.queue.get()
        return item

    async def batches(self) -> list[Batch] | None:
        """Every batch waiting (at least one; waits for it), or None at the end."""
        item = await self.queue.get()
        self.taken_at = time.monotonic()
        batches: list[Batch] = []
        while True:
            if item is None:
                if batches:  # deliver what came before the end marker; the next call ends
                    self.queue.put_nowait(None)
                    return batches
                return None
            batches.append(Batch((item,)) if isinstance(item, str) else item)
            if self.queue.empty():
                if self.conflated and len(batches) > 1:
                    return [Batch.merged(batches)]  # several flushes at once: latest per call
                return batches
            item = self.queue.get_nowait()

    async def batch(self) -> list[str] | None:
        """Every message waiting (at least one; waits for it), or None at the end."""
        batches = await self.batches()
        return None if batches is None else [text for batch in batches for text in batch.texts]

    def end(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    """Subscribers of the live stream, shared by every runtime of a service."""

    def __init__(
        self, metrics: Metrics, *, queue_size: int = 256, interval_s: float = CONFLATE_INTERVAL_S
    ) -> None:
        self.metrics = metrics
        self.queue_size = queue_size
        self.interval_s = interval_s
        self.stall_s = STALL_S
        self.max_unconflated = MAX_UNCONFLATED
        self._subscribers: set[Subscription] = set()
        self._plain: set[Subscription] = set()
        self._conflated: set[Subscription] = set()
        # Waiting for the next flush: call key → (text, pbx), others under a sequence number.
        self._pending: dict[Hashable, tuple[str, str | None]] = {}
        self._seq = 0
        self._flush_handle: asyncio.TimerHandle | None = None

    def __bool__(self) -> bool:
        """True while someone reads the stream (building a message is then worth it)."""
        return bool(self._subscribers)

    def subscribe(self, pbx: str | None = None, *, conflated: bool = False) -> Subscription:
        size = MERGE_AT + 1 if conflated else self.queue_size
        subscription = Subscription(size, pbx, conflated=conflated)
        self._subscribers.add(subscription)
        (self._conflated if conflated else self._plain).add(subscription)
        self.metrics.stream_clients.set(len(self._subscribers))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        self._plain.discard(subscription)
        self._conflated.discard(subscription)
        self.metrics.stream_clients.set(len(self._subscribers))

    def publish(self, message: Mapping[str, Any], pbx: str | None = None) -> None:
        """Send ``message`` (about PBX ``pbx``, if it is about one) to every subscriber that wants it."""
        if not self._subscribers:
            return
        text = json.dumps(message, separators=(",", ":"), default=str)
        for subscription in list(self._plain):
            if pbx is not None and subscription.pbx is not None and subscription.pbx != pbx:
                continue
            try:
                subscription.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._drop(subscription)
        if not self._conflated:
            return
        key: Hashable
        if message.get("kind") == "call":
            key = (pbx, message["call"].get("call_id"))
            self._pending.pop(key, None)  # latest wins, and moves to the end
        else:
            self._seq += 1
            key = self._seq
        self._pending[key] = (text, pbx)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.interval_s, self._flush)

    def _flush(self) -> None:
        """Hand what collected since the last flush to every conflated subscriber."""
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        if not pending or not self._conflated:
            return
        every = Batch(tuple(text for text, _ in pending.values()), tuple(pending))
        of_pbx: dict[str, Batch] = {}
        now = time.monotonic()
        for subscription in list(self._conflated):
            batch = every
            if subscription.pbx is not None:
                only = subscription.pbx
                if only not in of_pbx:
                    mine = [(key, text) for key, (text, pbx) in pending.items() if pbx in (None, only)]
                    of_pbx[only] = Batch(tuple(t for _, t in mine), tuple(k for k, _ in mine))
                batch = of_pbx[only]
                if not batch.texts:
                    continue
            queue = subscription.queue
            if queue.qsize() >= MERGE_AT:
                # Behind: fold what waits into one batch, each call's latest change only.
                waiting = [queue.get_nowait() for _ in range(queue.qsize())]
                batch = Batch.merged([*waiting, batch])
                stalled = now - subscription.taken_at > self.stall_s
                if stalled or batch.unconflatable > self.max_unconflated:
                    self._drop(subscription)
                    continue
            queue.put_nowait(batch)

    def _drop(self, subscription: Subscription) -> None:
        # A slow consumer must never slow the feed: drop it.
        self.unsubscribe(subscription)
        subscription.overflowed = True
        subscription.end()
        self.metrics.stream_dropped.inc()
        log.warning("stream_client_dropped", reason="queue full")

    def close(self) -> None:
        """End every subscription (the service is stopping)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        for subscription in list(self._subscribers):
            self.unsubscribe(subscription)
            subscription.end()
