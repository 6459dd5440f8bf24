"""Fixtures for the Webex adapter: the simulator, a stand-in for the control
API's webhook route, an observer and an event sink that record everything;
and, for the black-box tests, ``xferd run`` as a subprocess on Webex."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.webex import WEBHOOK_PATH, WebexAdapter, WebexSimulator, WebhookReceiver
from engine.model import CallEnded, CallFailed, CallUpdated, Event, Member
from tests.service.conftest import API_TOKEN, XFERD, ApiClient, until_http
from tests.support import RecordingObserver


def statuses(members: tuple[Member, ...]) -> tuple[str, ...]:
    """Leg statuses, the user's leg (kind ``extension``) first."""
    return tuple(m.status for m in sorted(members, key=lambda m: m.kind != "extension"))


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
        """Per event about ``call_id``: its legs' statuses as (user's leg, remote
        leg) — the order of the mapping table in :mod:`adapters.webex.events`,
        whatever order the adapter lists them in — ``("FAILED",)`` or ``("ENDED",)``."""
        out: list[tuple[str, ...]] = []
        for event in self.events:
            if isinstance(event, CallUpdated) and event.call_id == call_id:
                out.append(statuses(event.members))
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


# -- black-box: ``xferd run`` as a subprocess against the Webex simulator -------------------


def webex_config(
    path: Path,
    sim: WebexSimulator,
    store: Path,
    *,
    events: str = "webhook",
    listen: str = "127.0.0.1:0",
    extra_pbx: dict[str, Any] | None = None,
    **policy: Any,
) -> Path:
    """A ``kind = "webex"`` config for ``sim``; the access token and webhook
    secret are left to the environment (``XFERD_PBX_ACCESS_TOKEN``,
    ``XFERD_WEBHOOK_SECRET``), as an admin keeping secrets out of files would."""
    lines = [
        "[pbx]",
        'kind = "webex"',
        f'base_url = "{sim.base_url}"',
        f"events = {json.dumps(events)}",
        *(f"{key} = {json.dumps(value)}" for key, value in (extra_pbx or {}).items()),
        "[api]",
        f"listen = {json.dumps(listen)}",
        f'token = "{API_TOKEN}"',
        "[store]",
        f'path = "{store}"',
        "[policy]",
        *(f"{key} = {json.dumps(value)}" for key, value in policy.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_loopback_port() -> int:
    """A port free right now, for a service whose public URL must be known
    before it starts (webhook registration).  The OS does not hand the same
    ephemeral port out again at once, so the window for a clash is tiny."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class WebexXferd(ApiClient):
    """One ``xferd run`` subprocess on Webex: its JSON log lines, its API, signals."""

    def __init__(
        self,
        config: Path,
        sim: WebexSimulator,
        *,
        access_token: str | None = None,
        refresh_token: str | None = None,
    ) -> None:
        """``refresh_token``: run as an integration (the config names ``client_id``;
        its secret and this refresh token come from the environment) instead of
        with the simulator's static access token."""
        self.config = config
        self.sim = sim
        self.access_token = access_token if access_token is not None else sim.access_token
        self.refresh_token = refresh_token
        self.lines: list[str] = []
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.http = httpx.AsyncClient(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
        self._started = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def env(self) -> dict[str, str]:
        env = {**os.environ, "XFERD_WEBHOOK_SECRET": self.sim.webhook_secret}
        if self.refresh_token is None:
            return env | {"XFERD_PBX_ACCESS_TOKEN": self.access_token}
        env = {key: value for key, value in env.items() if key != "XFERD_PBX_ACCESS_TOKEN"}
        return env | {
            "XFERD_PBX_CLIENT_SECRET": self.sim.client_secret,
            "XFERD_PBX_REFRESH_TOKEN": self.refresh_token,
        }

    async def start(self, *, deliver: bool = True) -> WebexXferd:
        """Start and wait for ``/healthz`` 200; ``deliver``: have the simulator
        post its webhooks to this service (as a registered webhook would)."""
        self.proc = await asyncio.create_subprocess_exec(
            *XFERD, "run", "--config", str(self.config), env=self.env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self.proc))
        try:
            async with asyncio.timeout(15):
                await self._started.wait()
        except TimeoutError:
            raise AssertionError("xferd did not start:\n" + "\n".join(self.lines[-20:])) from None
        if not self.port:
            raise AssertionError("xferd exited:\n" + "\n".join(self.lines[-20:]))
        self.http.base_url = httpx.URL(self.base_url)
        if deliver:
            self.sim.deliver_to(self.webhook_url)
        await until_http(lambda r: r.status_code == 200, self.http, "/healthz", 10)
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.base_url + WEBHOOK_PATH

    async def terminate(self) -> int:
        assert self.proc is not None and self._reader is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await self.proc.wait()
            await self._reader
        return code

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
        await self.http.aclose()

    # -- the API, as a client uses it -------------------------------------------
    async def metric(self, name: str) -> float:
        """One sample of ``/metrics`` (``name`` with its labels), 0 when absent."""
        for line in (await self.get("/metrics")).text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def tracked(self, predicate: Callable[[list[dict[str, Any]]], bool], within_s: float = 5) -> None:
        """Wait until ``predicate(members of every tracked call)`` holds."""

        def check(r: httpx.Response) -> bool:
            return predicate([m for call in r.json()["items"] for m in call["members"]])

        await until_http(check, self.http, "/v1/calls", within_s)

    async def call_in(self, caller: str) -> str:
        """``caller`` calls the Webex user, who answers; returns the callId once
        xferd tracks the user's leg of it as talking."""
        call_id = self.sim.incoming_call(caller)
        await self.tracked(
            lambda members: any(m["channel_id"] == call_id and m["status"] == "ANSWER" for m in members)
        )
        return call_id
