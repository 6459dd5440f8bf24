"""Test doubles for the Yeastar client tests: an observer that remembers,
a settable clock, and a scriptable PBX behind ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from adapters.yeastar.rest import YeastarRest
from tests.support import RecordingObserver

SECRET = "s3cr3t-client-secret"

__all__ = ["SECRET", "RecordingObserver"]  # RecordingObserver is re-exported from tests.support


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Seen:
    method: str
    endpoint: str
    params: dict[str, str]
    headers: httpx.Headers
    body: dict[str, Any] | None


Reply = dict[str, Any] | Callable[[Seen], Any]


class FakePbx:
    """Answers like a PBX: tokens by default, anything else as scripted.

    ``script(endpoint, *replies)`` queues replies (a dict answer, or a
    callable that may raise an httpx error or return an ``httpx.Response``);
    ``default[endpoint]`` answers when the queue is empty.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.queued: dict[str, deque[Reply]] = defaultdict(deque)
        self.issued = 0
        self.default: dict[str, Reply] = {
            "get_token": lambda seen: self.new_tokens(),
            "refresh_token": lambda seen: self.new_tokens(),
            "del_token": {"errcode": 0, "errmsg": "SUCCESS"},
        }

    def new_tokens(self, ttl: int = 1800) -> dict[str, Any]:
        self.issued += 1
        return {
            "errcode": 0,
            "errmsg": "SUCCESS",
            "access_token_expire_time": ttl,
            "access_token": f"access-{self.issued}",
            "refresh_token_expire_time": 86400,
            "refresh_token": f"refresh-{self.issued}",
        }

    def script(self, endpoint: str, *replies: Reply) -> None:
        self.queued[endpoint].extend(replies)

    def calls_to(self, endpoint: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.endpoint == endpoint]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        endpoint = request.url.path.removeprefix("/openapi/v1.0/")
        body = json.loads(request.content) if request.content else None
        seen = Seen(request.method, endpoint, dict(request.url.params), request.headers, body)
        self.seen.append(seen)
        queue = self.queued[endpoint]
        reply = queue.popleft() if queue else self.default.get(endpoint, {"errcode": 0, "errmsg": "SUCCESS"})
        if callable(reply):
            reply = reply(seen)
            if asyncio.iscoroutine(reply):
                reply = await reply
        if isinstance(reply, httpx.Response):
            return reply
        return httpx.Response(200, json=reply, headers={"Connection": "close"})

    def rest(self, **kwargs: Any) -> YeastarRest:
        kwargs.setdefault("busy_retry_delays", (0.01, 0.01))
        return YeastarRest(
            "http://pbx.test:8088", "client-id", SECRET, transport=httpx.MockTransport(self.handle), **kwargs
        )


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``within`` s.

    A poll because the predicate can be anything about the client or the
    fake server; the bound keeps a broken test from hanging.
    """
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
