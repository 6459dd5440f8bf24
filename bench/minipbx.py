"""The bench PBX: a Yeastar-speaking server that sends 30011 frames as fast as TCP takes them.

Why not the simulator: its frames come from a call world, one at a time,
through uvicorn's websocket stack — far slower than a client can read, so a
client would be measured waiting.  This server pre-encodes every frame into
websocket wire bytes once, then writes them in large chunks: sending costs it
next to nothing, and whatever reads the socket is the bottleneck.

It speaks just enough of the PBX's protocol for both readers — the real
service (``YeastarAdapter`` → ``EventConsumer`` → runtime → engine) and the
bare client — to use it unchanged:

* ``POST /openapi/v1.0/get_token`` (and ``refresh_token``, ``del_token``):
  one fixed access token, answered with ``Connection: close`` like a PBX;
* ``GET /openapi/v1.0/call/query?type=…``: the live calls of the prepared
  traffic (``inbound``), nothing for the other types;
* ``/openapi/v1.0/subscribe?access_token=…``: the websocket.  A
  ``topic_list`` is acknowledged (``{"errcode":0,"errmsg":"SUCCESS"}``), the
  text ``heartbeat`` is answered ``heartbeat response``, pings get pongs; after
  the acknowledgement the prepared frames are sent, once, as fast as possible.

No permessage-deflate is negotiated (neither reader pays for inflating).
Loopback only.  Run as a child process (``python -m bench.minipbx``) and
driven over stdin/stdout by :class:`bench.common.Child`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.common import Traffic, compact, pin, serve_commands

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CHUNK = 256 * 1024
_ACK = compact({"errcode": 0, "errmsg": "SUCCESS"})
_PREFIX = "/openapi/v1.0/"


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked, unfragmented server frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return header + payload


class MiniPbx:
    """See the module docstring.  One prepared traffic at a time."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.client_id = "bench"
        self.client_secret = "bench-secret"
        self.port = 0
        self._query = b""
        self._chunks: list[bytes] = []
        self._frames = 0
        self._sent: list[dict[str, float]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def prepare(self, calls: int, frames: int, seed: int = 7) -> dict[str, Any]:
        """Make ``calls`` live calls and ``frames`` frames of traffic over them."""
        started = time.perf_counter()
        traffic = Traffic(calls, seed)
        self._query = compact({"errcode": 0, "errmsg": "SUCCESS", "data": traffic.query_rows()}).encode()
        texts = traffic.frames(frames)
        chunks: list[bytes] = []
        current: list[bytes] = []
        size = 0
        for text in texts:
            wire = ws_frame(text.encode())
            current.append(wire)
            size += len(wire)
            if size >= _CHUNK:
                chunks.append(b"".join(current))
                current, size = [], 0
        if current:
            chunks.append(b"".join(current))
        self._chunks = chunks
        self._frames = len(texts)
        return {
            "port": self.port,
            "token": self.token,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "frames": len(texts),
            "bytes": sum(len(t) for t in texts),
            "sample": texts[0] if texts else "",
            "seconds": time.perf_counter() - started,
        }

    async def sent(self) -> dict[str, Any]:
        """How long each blast took to hand to the kernel (the sender's own speed)."""
        return {"blasts": self._sent}

    # -- connections ---------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            url = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if headers.get("upgrade", "").lower() == "websocket":
                await self._websocket(reader, writer, headers, query)
            else:
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                await self._http(writer, method, url.path, query, body)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _http(
        self, writer: asyncio.StreamWriter, method: str, path: str, query: dict[str, str], body: bytes
    ) -> None:
        endpoint = path.removeprefix(_PREFIX)
        answer: bytes
        if endpoint in ("get_token", "refresh_token"):
            answer = compact(
                {
                    "errcode": 0,
                    "errmsg": "SUCCESS",
                    "access_token_expire_time": 1800,
                    "access_token": self.token,
                    "refresh_token_expire_time": 86400,
                    "refresh_token": self.token + "r",
                }
            ).encode()
        elif endpoint == "del_token":
            answer = _ACK.encode()
        elif endpoint == "call/query":
            if query.get("access_token") != self.token:
                answer = compact({"errcode": 10004, "errmsg": "TOKEN EXPIRED"}).encode()
            elif query.get("type", "inbound") == "inbound":
                answer = self._query
            else:
                answer = compact({"errcode": 0, "errmsg": "SUCCESS", "data": []}).encode()
        else:
            answer = compact({"errcode": 10001, "errmsg": "INTERFACE NOT EXISTED"}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode()
            + answer
        )
        await writer.drain()

    async def _websocket(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        query: dict[str, str],
    ) -> None:
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        if query.get("access_token") != self.token:
            writer.write(ws_frame(compact({"errcode": 10004, "errmsg": "TOKEN EXPIRED"}).encode()))
            writer.write(ws_frame((1000).to_bytes(2, "big"), 0x8))
            await writer.drain()
            return
        blast: asyncio.Task[None] | None = None
        try:
            while True:
                opcode, payload = await _read_frame(reader)
                if opcode == 0x8:  # close: answer it and end
                    writer.write(ws_frame(payload[:2], 0x8))
                    await writer.drain()
                    return
                if opcode == 0x9:
                    writer.write(ws_frame(payload, 0xA))
                elif opcode == 0x1:
                    text = payload.decode()
                    if text.strip() == "heartbeat":
                        writer.write(ws_frame(b"heartbeat response"))
                    elif "topic_list" in text:
                        writer.write(ws_frame(_ACK.encode()))
                        if blast is None:
                            blast = asyncio.create_task(self._blast(writer))
                await writer.drain()
        finally:
            if blast is not None:
                blast.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await blast

    async def _blast(self, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        for chunk in self._chunks:
            writer.write(chunk)
            await writer.drain()
        self._sent.append({"frames": self._frames, "seconds": time.perf_counter() - started})


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (clients mask; these are small and never fragmented)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(n)
    return b0 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def main() -> None:
    pin(1)
    pbx = MiniPbx()
    await pbx.start()
    await serve_commands({"prepare": pbx.prepare, "sent": pbx.sent})


if __name__ == "__main__":
    asyncio.run(main())
