"""Fixtures for the Webex adapter: the simulator, a stand-in for the control
API's webhook route, an observer and an event sink that record everything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.base import Observer
from adapters.webex import WEBHOOK_PATH, LoopbackServer, WebexAdapter, WebexSimulator
from engine.model import CallEnded, CallFailed, CallUpdated, Event


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.frames: list[str] = []
        self.bad: list[tuple[str, str]] = []
        self.raw: list[str] = []
        self.requests: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = []
        self.links: list[tuple[bool, str]] = []
        self.reconnects = 0

    def frame(self, kind: str) -> None:
        self.frames.append(kind)

    def bad_frame(self, reason: str, sample: str) -> None:
        self.bad.append((reason, sample))

    def raw_frame(self, text: str, at: float) -> None:
        self.raw.append(text)

    def pbx_request(
        self, endpoint: str, body: dict[str, Any], answer: dict[str, Any] | None, result: str, seconds: float
    ) -> None:
        self.requests.append((endpoint, body, answer, result))

    def reconnect(self) -> None:
        self.reconnects += 1

    def link(self, connected: bool, detail: str) -> None:
        self.links.append((connected, detail))

    def bad_reasons(self) -> list[str]:
        return [reason for reason, _ in self.bad]


class Sink:
    """Collects engine events; lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def history(self, call_id: str) -> list[tuple[str, ...]]:
        """Per event about ``call_id``: its legs' statuses, ``("FAILED",)`` or ``("ENDED",)``."""
        out: list[tuple[str, ...]] = []
        for event in self.events:
            if isinstance(event, CallUpdated) and event.call_id == call_id:
                out.append(tuple(m.status for m in event.members))
            elif isinstance(event, CallFailed) and event.call_id == call_id:
                out.append(("FAILED",))
            elif isinstance(event, CallEnded) and event.call_id == call_id:
                out.append(("ENDED",))
        return out

    def last(self, call_id: str) -> tuple[str, ...] | None:
        history = self.history(call_id)
        return history[-1] if history else None

    async def wait_last(self, call_id: str, statuses: tuple[str, ...], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda: self.last(call_id) == statuses, timeout)


class WebhookReceiver:
    """The control API's ``POST /v1/webhooks/webex`` alone, forwarding to the adapter under test."""

    def __init__(self) -> None:
        self.adapter: WebexAdapter | None = None
        self._server = LoopbackServer(
            Starlette(routes=[Route(WEBHOOK_PATH, self._receive, methods=["POST"])])
        )

    async def _receive(self, request: Request) -> Response:
        assert self.adapter is not None
        status = await self.adapter.handle_webhook(
            await request.body(), request.headers.get("x-spark-signature")
        )
        return Response(status_code=status)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"


MakeAdapter = Callable[..., Awaitable[WebexAdapter]]


@pytest.fixture
async def sim() -> AsyncIterator[WebexSimulator]:
    simulator = WebexSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = WebhookReceiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
async def make_adapter(
    sim: WebexSimulator, receiver: WebhookReceiver, observer: RecordingObserver, sink: Sink
) -> AsyncIterator[MakeAdapter]:
    """Build and start an adapter against the simulator (webhooks registered
    to the receiver unless overridden); closed after the test."""
    started: list[WebexAdapter] = []

    async def make(**overrides: Any) -> WebexAdapter:
        options: dict[str, Any] = {
            "access_token": sim.access_token,
            "webhook_secret": sim.webhook_secret,
            "public_url": receiver.public_url,
            "user_number": sim.user_number,
            "observer": observer,
        }
        options.update(overrides)
        adapter = WebexAdapter(sim.base_url, **options)
        receiver.adapter = adapter
        await adapter.start(sink)
        started.append(adapter)
        return adapter

    yield make
    for adapter in started:
        await adapter.close()
