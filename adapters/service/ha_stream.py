"""The live stream across instances: every PBX's changes on every instance's ``/v1/stream``.

Theory of operation
-------------------
Each instance's runtimes publish their changes to its :class:`SharedHub`,
which hands them to its own stream clients (as the plain hub does) and
also sends them to the other instances with PostgreSQL ``NOTIFY`` on the
channel ``xferd_stream``.  Every instance ``LISTEN``\\ s on that channel and
hands what other instances sent to its own clients; its own messages
(tagged with its instance id) it skips, since they were delivered locally.

A NOTIFY payload holds at most 8000 bytes.  Messages are batched (what
accumulated since the last NOTIFY, one JSON array) into payloads of at most
:data:`PAYLOAD_BYTES`; a single message larger than that is split into
numbered chunks that the receiver joins (one session's NOTIFYs arrive in
order; different senders' chunks interleave, so they are keyed by sender
and batch).

Delivery is what LISTEN/NOTIFY gives: at most once, in order per sender,
only while connected.  A stream client that reconnects reads the current
state from the API (as after falling behind), so a message lost while the
listening connection was down is never a wrong state, only a late one.
Sending never slows a decision: the runtime's ``publish`` only queues; a
task owning its own connection sends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from adapters.service.hub import Hub
from adapters.service.leases import KEEPALIVE_OPTIONS, _brief
from adapters.service.logs import get_logger
from adapters.service.metrics import Metrics

log = get_logger("xferd.stream")

CHANNEL = "xferd_stream"
#: Bytes of one NOTIFY payload we send (PostgreSQL's limit is 8000).
PAYLOAD_BYTES = 7800
#: Messages waiting to be sent to the other instances before new ones are dropped.
OUTBOX_SIZE = 10000


def pack(sender: str, batch: int, messages: list[tuple[str | None, Mapping[str, Any]]]) -> list[str]:
    """The NOTIFY payloads carrying ``messages``: ``sender|batch|part|parts|json`` each."""
    body = json.dumps([[pbx, message] for pbx, message in messages], separators=(",", ":"), default=str)
    # ensure_ascii (the default): one character is one byte, so slicing by length is slicing by bytes.
    room = PAYLOAD_BYTES - len(sender) - 40
    parts = [body[i : i + room] for i in range(0, len(body), room)] or [body]
    return [f"{sender}|{batch}|{n}|{len(parts)}|{part}" for n, part in enumerate(parts)]


class Unpacker:
    """Joins the chunks of a sender's batches; yields the messages of each complete batch."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, str], list[str]] = {}

    def feed(self, payload: str) -> tuple[str, list[tuple[str | None, dict[str, Any]]]] | None:
        """``(sender, messages)`` once a batch is complete; None while chunks are missing (or garbage)."""
        try:
            sender, batch, part, parts, data = payload.split("|", 4)
            index, count = int(part), int(parts)
        except ValueError:
            return None
        key = (sender, batch)
        if count > 1:
            chunks = self._partial.setdefault(key, [])
            if index != len(chunks):  # a lost chunk (reconnect): drop the batch
                self._partial.pop(key, None)
                return None
            chunks.append(data)
            if len(chunks) < count:
                return None
            data = "".join(self._partial.pop(key))
        try:
            decoded = json.loads(data)
        except ValueError:
            return None
        return sender, [(pbx, message) for pbx, message in decoded]


class SharedHub(Hub):
    """A :class:`Hub` whose messages reach every instance's stream clients (LISTEN/NOTIFY)."""

    def __init__(self, metrics: Metrics, dsn: str, instance: str, *, queue_size: int = 256) -> None:
        super().__init__(metrics, queue_size=queue_size)
        self.dsn = dsn
        self.instance = instance
        self._outbox: asyncio.Queue[tuple[str | None, Mapping[str, Any]]] = asyncio.Queue(OUTBOX_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self._batch = 0
        self.received = 0

    def __bool__(self) -> bool:
        # Other instances' clients read this instance's changes: always worth building them.
        return bool(self._tasks) or super().__bool__()

    def publish(self, message: Mapping[str, Any], pbx: str | None = None) -> None:
        super().publish(message, pbx)
        if self._tasks:
            try:
                self._outbox.put_nowait((pbx, message))
            except asyncio.QueueFull:
                log.warning("stream_notify_dropped", reason="outbox full (database slow or down)")

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._send(), name="stream-notify"),
            asyncio.create_task(self._listen(), name="stream-listen"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, **KEEPALIVE_OPTIONS)

    async def _send(self) -> None:
        conn: Any = None
        pending: list[tuple[str | None, Mapping[str, Any]]] = []
        while True:
            if not pending:
                pending.append(await self._outbox.get())
            while not self._outbox.empty() and len(pending) < 200:
                pending.append(self._outbox.get_nowait())
            try:
                if conn is None or conn.closed:
                    conn = await self._connect()
                self._batch += 1
                for payload in pack(self.instance, self._batch, pending):
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                pending = []
            except asyncio.CancelledError:
                if conn is not None:
                    await conn.close()
                raise
            except Exception as exc:
                log.warning("stream_notify_failed", error=_brief(exc), dropped=len(pending))
                pending = []  # clients re-read the state when they reconnect
                if conn is not None:
                    await conn.close()
                conn = None
                await asyncio.sleep(0.5)

    async def _listen(self) -> None:
        unpacker = Unpacker()
        while True:
            conn: Any = None
            try:
                conn = await self._connect()
                await conn.execute(f"LISTEN {CHANNEL}")
                async for notify in conn.notifies():
                    done = unpacker.feed(notify.payload)
                    if done is None or done[0] == self.instance:
                        continue
                    for pbx, message in done[1]:
                        self.received += 1
                        Hub.publish(self, message, pbx)
            except asyncio.CancelledError:
                if conn is not None:
                    await conn.close()
                raise
            except Exception as exc:
                log.warning("stream_listen_failed", error=_brief(exc))
                if conn is not None:
                    await conn.close()
                await asyncio.sleep(0.5)
