"""Writing the live stream's batches to a client's socket in one system call.

Theory of operation
-------------------
ASGI has one way to send a WebSocket message: one ``websocket.send`` per
message, which uvicorn turns into a frame and a ``socket.send`` each.  With
50 browsers and a thousand live calls that is 100,000 system calls a second
— more CPU than the engine and the PBX link together (bench figure
``console``).  The hub already encodes each flush's frames once for every
client (:class:`~adapters.service.hub.Batch`); what remains is to hand a
client's waiting frames to its transport in one ``write``.

:class:`RawWriter` finds the uvicorn protocol object behind the ASGI
``send`` callable (Starlette wraps it in one closure) and writes the bytes
to its transport, observing what uvicorn's own send observes: it waits while
the transport is paused (flow control: a slow client's socket buffer is
full, so its queue in the hub grows until the hub drops it) and stops once
the connection is closing.  Only data frames are written this way, and only
while per-message compression is off (the service turns it off), so the
protocol's own state is not bypassed: a text frame needs no state, and close
frames still go through ASGI.

When the protocol is not the expected one (another server, a test client,
a uvicorn that changed its internals), :meth:`RawWriter.find` returns None
and the stream sends message by message through ASGI, as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect


class RawWriter:
    """Writes pre-encoded frames to the transport of a uvicorn WebSocket connection."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    @classmethod
    def find(cls, websocket: WebSocket) -> RawWriter | None:
        """The writer for ``websocket``'s connection, or None if it is not one we can write to."""
        protocol = _protocol_behind(getattr(websocket, "_send", None))
        if protocol is None:
            return None
        conn = getattr(protocol, "conn", None)
        if getattr(conn, "extensions", None):  # per-message compression negotiated: frames differ
            return None
        return cls(protocol)

    async def write(self, frames: bytes) -> None:
        """Write ``frames`` (complete frames); WebSocketDisconnect once the connection is closing."""
        protocol = self._protocol
        await protocol.writable.wait()
        transport = protocol.transport
        if protocol.disconnected or protocol.close_sent or transport.is_closing():
            raise WebSocketDisconnect(1006)
        transport.write(frames)


def _protocol_behind(send: Any, depth: int = 4) -> Any:
    """uvicorn's WebSocket protocol whose bound ``send`` is at the end of ``send``'s wrappers."""
    seen: deque[tuple[Any, int]] = deque([(send, 0)])
    while seen:
        candidate, level = seen.popleft()
        owner = getattr(candidate, "__self__", None)
        needed = ("transport", "conn", "close_sent", "disconnected")
        if isinstance(getattr(owner, "writable", None), asyncio.Event) and all(
            hasattr(owner, n) for n in needed
        ):
            return owner
        if level >= depth:
            continue
        for cell in getattr(candidate, "__closure__", None) or ():
            try:
                inner = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(inner):
                seen.append((inner, level + 1))
    return None
