"""Shared helpers for the service tests: a scriptable fake PBX adapter and a bounded wait."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from adapters.base import EventSink
from adapters.yeastar.simulator import PbxSimulator
from engine.model import CallsSnapshot, CallUpdated, Event, Member, Outcome, PbxRequest, RequestFinished


async def until(predicate: Callable[[], bool], within_s: float = 3.0) -> None:
    """Wait until ``predicate()`` holds (TimeoutError after ``within_s``)."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


class FakeAdapter:
    """A :class:`~adapters.base.PbxAdapter` whose answers the test scripts.

    ``outcomes`` maps an action to the outcome the PBX gives; ``gates`` holds
    requests (by action) until the test sets the event; ``log`` records
    ``("execute", request_id)`` so tests can check ordering against the store.
    """

    def __init__(self, platform: str = "yeastar", log: list[tuple[str, str]] | None = None) -> None:
        self.platform = platform
        self.capabilities: tuple[str, ...] = (
            ("blind", "attended", "swap", "threeway")
            if platform == "yeastar"
            else ("blind", "attended", "swap")
        )
        self.is_connected = True
        self.sink: EventSink | None = None
        self.log = log if log is not None else []
        self.executed: list[PbxRequest] = []
        self.outcomes: dict[str, Outcome] = {}
        self.errcode = 10009
        self.gates: dict[str, asyncio.Event] = {}
        self.snapshot: CallsSnapshot | None = None
        self.queries = 0
        self.closed = False
        self.webhooks: list[tuple[bytes, str | None]] = []

    @property
    def connected(self) -> bool:
        return self.is_connected

    @property
    def detail(self) -> str:
        return "subscribed" if self.is_connected else "websocket closed"

    async def start(self, sink: EventSink) -> None:
        self.sink = sink

    async def execute(self, request: PbxRequest) -> RequestFinished:
        self.log.append(("execute", request.request_id))
        self.executed.append(request)
        gate = self.gates.get(request.action)
        if gate is not None:
            await gate.wait()
        outcome = self.outcomes.get(request.action, "ok")
        return RequestFinished(
            at=time.time(),
            transfer_id=request.transfer_id,
            request_id=request.request_id,
            outcome=outcome,
            call_id="consult-1" if outcome == "ok" and request.action == "start" else None,
            errcode=self.errcode if outcome == "refused" else None,
            errmsg="OPERATION FAILED" if outcome == "refused" else "",
        )

    async def query_calls(self) -> CallsSnapshot | None:
        self.queries += 1
        return self.snapshot

    async def close(self) -> None:
        self.closed = True

    async def handle_webhook(self, body: bytes, signature: str | None) -> int:
        self.webhooks.append((body, signature))
        return 204 if signature == "good" else 401

    def emit(self, event: Event) -> None:
        assert self.sink is not None, "start() first"
        self.sink(event)

    def call(self, call_id: str, *members: tuple[str, str, str, str]) -> None:
        """Report a call: members as (kind, number, channel_id, status)."""
        self.emit(CallUpdated(at=time.time(), call_id=call_id, members=tuple(Member(*m) for m in members)))  # type: ignore[arg-type]


def answered_call(
    adapter: FakeAdapter, call_id: str = "c1", ext: str = "2000", caller: str = "5550100"
) -> None:
    """An external caller talking to extension ``ext``."""
    adapter.call(
        call_id,
        ("inbound", caller, f"PJSIP/trunk-a-{call_id}", "ANSWERED"),
        ("extension", ext, f"PJSIP/{ext}-{call_id}", "ANSWER"),
    )


def json_of(response: Any) -> Any:
    return response.json()


# -- black-box: ``xferd run`` as a subprocess against the simulator -------------------

XFERD = [sys.executable, "-m", "adapters.cli"]
API_TOKEN = "blackbox-api-token-4321"
CALLER = "5550100"


def write_config(path: Path, sim: PbxSimulator, store: Path, **policy: Any) -> Path:
    """A config file for ``sim`` (client secret left to the environment, as admins may do)."""
    lines = [
        "[pbx]",
        'kind = "yeastar"',
        f'base_url = "{sim.base_url}"',
        f'client_id = "{sim.config.client_id}"',
        "[api]",
        'listen = "127.0.0.1:0"',
        f'token = "{API_TOKEN}"',
        "[store]",
        f'path = "{store}"',
        "[policy]",
        *(f"{key} = {json.dumps(value)}" for key, value in policy.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


#: Bound on an ``xferd run`` start-up (imports, store, PBX login, first ``/healthz`` 200): a cold
#: start on a loaded 2-core machine takes seconds, and the bound only stops a broken start.
START_WITHIN_S = 60.0


class ApiClient:
    """An ``xferd run`` subprocess as a client sees it: its JSON log lines on
    stderr and its control API (``config``, ``http``, ``lines``, ``port``,
    ``proc``, ``_started``, ``_reader`` are set up by the subclass)."""

    config: Path
    http: httpx.AsyncClient
    lines: list[str]
    port: int
    proc: asyncio.subprocess.Process | None
    _started: asyncio.Event
    _reader: asyncio.Task[None] | None

    async def _launch(self, env: dict[str, str]) -> None:
        """Start ``xferd run --config`` and wait for its ``service_started`` line.

        A start that fails (no such line within :data:`START_WITHIN_S`, the
        process exited, or the caller gave up and cancelled) kills the process
        before failing: nothing is left running.
        """
        self.port = 0
        self._started.clear()
        self.proc = await asyncio.create_subprocess_exec(
            *XFERD, "run", "--config", str(self.config), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self.proc))
        try:
            async with asyncio.timeout(START_WITHIN_S):
                await self._started.wait()
        except BaseException as exc:
            await self._stop_process()
            if isinstance(exc, TimeoutError):
                raise AssertionError("xferd did not start:\n" + "\n".join(self.lines[-20:])) from None
            raise
        if not self.port:
            await self._stop_process()
            raise AssertionError("xferd exited:\n" + "\n".join(self.lines[-20:]))
        self.http.base_url = httpx.URL(f"http://127.0.0.1:{self.port}")

    async def _until_healthy(self) -> None:
        """Wait for ``/healthz`` 200 after :meth:`_launch`; kill the process if it never comes
        (or the caller gave up)."""
        try:
            await until_http(lambda r: r.status_code == 200, self.http, "/healthz", START_WITHIN_S)
        except BaseException:
            await self._stop_process()
            raise

    async def terminate(self) -> int:
        """SIGTERM; the exit code (bounded: a shutdown that hangs fails the test)."""
        assert self.proc is not None and self._reader is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(START_WITHIN_S):
            code = await self.proc.wait()
            await self._reader
        return code

    async def close(self) -> None:
        await self._stop_process()
        await self.http.aclose()

    async def _stop_process(self) -> None:
        """Kill the process if it still runs; wait for it and for its log reader."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if '"service_started"' in line:
                self.port = int(json.loads(line)["listen"].rsplit(":", 1)[1])
                self._started.set()
        self._started.set()  # exited: let start() report it

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines (every line must be JSON)."""
        return [json.loads(line) for line in self.lines]

    async def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return await self.http.post(path, json=body, headers=headers)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path)

    async def transfer(self, transfer_id: str) -> dict[str, Any]:
        response = await self.get(f"/v1/transfers/{transfer_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def final(self, transfer_id: str, within_s: float = 8) -> dict[str, Any]:
        """Wait until the transfer is completed or aborted; its resource."""
        response = await until_http(
            lambda r: r.json()["state"] in ("completed", "aborted"),
            self.http,
            f"/v1/transfers/{transfer_id}",
            within_s,
        )
        return dict(response.json())

    async def state(self, transfer_id: str, state: str, target_status: str | None = None) -> dict[str, Any]:
        def reached(r: httpx.Response) -> bool:
            body = r.json()
            return bool(body["state"] == state and target_status in (None, body["target"]["status"]))

        return dict((await until_http(reached, self.http, f"/v1/transfers/{transfer_id}", 8)).json())


class Xferd(ApiClient):
    """One ``xferd run`` subprocess: its JSON log lines, its API, signals."""

    def __init__(self, config: Path, sim: PbxSimulator) -> None:
        self.config = config
        self.sim = sim
        self.lines: list[str] = []
        self.port = 0
        self._started = asyncio.Event()
        self.proc = None
        self._reader = None
        self.http = httpx.AsyncClient(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)

    async def start(self) -> Xferd:
        await self._launch({**os.environ, "XFERD_PBX_CLIENT_SECRET": self.sim.config.client_secret})
        await self._until_healthy()
        return self

    async def connected(self, within_s: float = 10) -> None:
        await until_http(lambda r: r.status_code == 200, self.http, "/healthz", within_s)

    async def kill(self) -> None:
        assert self.proc is not None
        await self._stop_process()

    async def call_in(self, extension: str) -> str:
        """An outside caller talks to ``extension``; returns the extension's channel once xferd tracks it."""
        self.sim.place_call(CALLER, extension, inbound_trunk="trunk1")
        channel = self.sim.channel_of(extension)

        def tracked(r: httpx.Response) -> bool:
            members = [m for call in r.json()["items"] for m in call["members"]]
            return any(m["channel_id"] == channel and m["status"] in ("ANSWER", "ANSWERED") for m in members)

        await until_http(tracked, self.http, "/v1/calls", 5)
        return channel


async def until_http(
    predicate: Callable[[httpx.Response], bool], http: httpx.AsyncClient, path: str, within_s: float
) -> httpx.Response:
    """Poll ``GET path`` until ``predicate(response)`` (a client has no other way to wait)."""
    last: httpx.Response | None = None
    try:
        async with asyncio.timeout(within_s):
            while True:
                try:
                    last = await http.get(path)
                    if predicate(last):
                        return last
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"GET {path} never matched; last: {last.text if last else None}") from None
