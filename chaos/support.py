"""Worlds: a PBX simulator and the real service against it, on loopback, in this process.

A world is long-lived on purpose: every run of one fault kind goes through
the same service, so whatever a run leaks (tasks, timers, transfers, calls)
piles up and shows in :meth:`World.resources`.  Runs use fresh extension and
caller numbers, so their calls never mix.

Everything the service logs goes through :class:`LogWatch`, which counts
tracebacks and scans every line for secrets as it is written (a soak writes
far too many lines to keep them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from adapters.base import Observer
from adapters.replay.recorder import Recorder, Tee
from adapters.service import logs
from adapters.service.config import (
    ApiConfig,
    Config,
    PolicyConfig,
    StoreConfig,
    WebexPbx,
    YeastarPbx,
)
from adapters.service.metrics import Metrics, MetricsObserver
from adapters.service.server import Service, secrets_of
from adapters.webex import WebexAdapter, WebexSimulator
from adapters.yeastar.adapter import YeastarAdapter
from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig

API_TOKEN = "chaos-api-token-7f3a9c21"
CLIENT_SECRET = "chaos-client-secret-5be0"
WEBEX_TOKEN = "chaos-webex-token-c0ffee42"
WEBHOOK_SECRET = "chaos-webhook-secret-9d1e"
FINAL = ("completed", "aborted")
#: Log events whose presence means a bug, even without a traceback.
BUG_EVENTS = frozenset(
    {"engine_error", "adapter_error", "yeastar.session_bug", "yeastar.sink_failed", "query_calls_failed"}
)

_numbers = itertools.count(3000)


def fresh_number(prefix: str = "") -> str:
    """A number no earlier run used (extensions 3000…, callers 55503000…)."""
    return f"{prefix}{next(_numbers)}"


async def until(predicate: Callable[[], bool], within_s: float, step_s: float = 0.005) -> bool:
    """Poll ``predicate`` until it holds or ``within_s`` passes; whether it held.

    A poll because the predicates look at the simulator, the engine and the
    store at once; bounded in time like every loop here.
    """
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step_s)
    return True


# -- logs ---------------------------------------------------------------------------------------


class LogWatch(io.TextIOBase):
    """The service's log stream: counts lines, tracebacks and bug events, and finds secrets.

    ``secrets`` may grow while the world runs (the simulator issues tokens);
    a token can only be logged after it was issued, so checking each line
    against the secrets known when it is written misses nothing.
    ``keep`` retains every line (the fast tests grep them again).
    """

    def __init__(self, secrets: Iterable[str] = (), *, keep: bool = False) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}
        self.keep = keep
        self.lines: list[str] = []
        self.count = 0
        self.tracebacks: list[str] = []
        self.bugs: list[str] = []
        self.leaks: list[str] = []
        self.error_lines = 0
        self.not_json = 0
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            if line:
                self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        self.count += 1
        if self.keep:
            self.lines.append(line)
        for secret in self.secrets:
            if secret in line:
                self.leaks.append(line[:300])
        try:
            record = json.loads(line)
        except ValueError:
            self.not_json += 1
            return
        if record.get("level") in ("error", "critical"):
            self.error_lines += 1
        if "exception" in record:
            self.tracebacks.append(line[:2000])
        if record.get("event") in BUG_EVENTS:
            self.bugs.append(line[:2000])

    def mark(self) -> tuple[int, int, int]:
        """Counters to diff a run against: (tracebacks, bugs, leaks)."""
        return len(self.tracebacks), len(self.bugs), len(self.leaks)


def watch_logs(watch: LogWatch) -> None:
    """Send every log line of this process (ours and the libraries') through ``watch``, as JSON."""
    logs.configure("json", logging.INFO, stream=watch)  # type: ignore[arg-type]


# -- the simulators -------------------------------------------------------------------------------


class ChaosSimulator(PbxSimulator):
    """The Yeastar simulator, remembering every token it issued (secrets for the log grep)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        super().__init__(config)
        self.issued: list[str] = []
        self.on_token: Callable[[str], None] | None = None

    def _issue_tokens(self) -> dict[str, Any]:
        answer = super()._issue_tokens()
        for key in ("access_token", "refresh_token"):
            self.issued.append(answer[key])
            if self.on_token is not None:
                self.on_token(answer[key])
        return answer

    def clear_faults(self) -> None:
        """Every fault switch back to normal, queued refusals and timeouts dropped.

        The queues are the simulator's private state; there is no public reset
        (proposed to the lead as ``PbxSimulator.clear_faults``).
        """
        self.frame_delay_s = 0.0
        self.duplicate_frames = 0.0
        self.reorder_window = 0
        self.accept_then_close = False
        self._refusals.clear()
        self._timeouts.clear()

    def legs(self) -> dict[str, Leg]:
        """Every live leg by channel id: what the PBX really has."""
        out: dict[str, Leg] = {}
        for call in self.calls():
            for member in call["members"]:
                ((kind, fields),) = member.items()
                number = fields.get("number") or (fields["from"] if kind == "inbound" else fields.get("to"))
                out[fields["channel_id"]] = Leg(
                    fields["channel_id"], call["call_id"], kind, str(number), fields["member_status"]
                )
        return out


@dataclass(frozen=True, slots=True)
class Leg:
    """One live leg as the simulator reports it."""

    channel_id: str
    call_id: str
    kind: str
    number: str
    status: str


class RawRecording(Observer):
    """Every raw frame and PBX exchange the adapter reports, one JSON line each, as handed over."""

    def __init__(self, path: Path) -> None:
        self._out = path.open("w", encoding="utf-8")

    def raw_frame(self, text: str, at: float) -> None:
        self._write({"kind": "frame", "at": at, "text": text})

    def pbx_request(
        self,
        endpoint: str,
        body: dict[str, Any],
        answer: dict[str, Any] | None,
        result: str,
        seconds: float,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self._write(
            {"kind": "request", "endpoint": endpoint, "body": body, "answer": answer, "result": result}
        )

    def _write(self, line: dict[str, Any]) -> None:
        if not self._out.closed:
            self._out.write(json.dumps(line, default=str) + "\n")

    def close(self) -> None:
        self._out.close()


# -- the service side ------------------------------------------------------------------------------


@dataclass(slots=True)
class Crashes:
    """What the event loop saw go wrong outside any handler."""

    unhandled: list[str] = field(default_factory=list)

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.unhandled.append(str(context.get("message")) + ": " + repr(context.get("exception")))


class World:
    """Base of the Yeastar and Webex worlds: the service, its API client, its logs."""

    platform = ""

    def __init__(self, tmp: Path, watch: LogWatch, *, policy: PolicyConfig | None = None) -> None:
        self.tmp = tmp
        self.watch = watch
        self.policy = policy or PolicyConfig(no_answer_timeout_s=3)
        self.metrics = Metrics()
        self.crashes = Crashes()
        self.service: Service | None = None
        self.http: httpx.AsyncClient | None = None
        self.recordings: list[Path] = []
        self.api_5xx: list[str] = []
        self.store_path = tmp / "xferd.sqlite3"

    @property
    def svc(self) -> Service:
        assert self.service is not None, "start() first"
        return self.service

    @property
    def api(self) -> httpx.AsyncClient:
        assert self.http is not None, "start() first"
        return self.http

    def _observer(self, config: Config) -> tuple[MetricsObserver, Observer]:
        """The service's metrics observer, and the adapter's (metrics + a recording).

        Yeastar runs are recorded by the replay recorder, as ``xferd record``
        would; it records Yeastar only, so Webex runs get :class:`RawRecording`
        (what the adapter hands any observer, as it hands it).
        """
        metrics_observer = MetricsObserver(self.metrics)
        path = self.tmp / f"recording-{self.platform}.jsonl"
        self.recorder: Recorder | RawRecording
        if self.platform == "yeastar":
            self.recorder = Recorder.open(
                path,
                name=f"chaos-{self.platform}",
                platform=self.platform,
                policy=config.policy.engine_policy(),
                secrets=secrets_of(config),
            )
        else:
            self.recorder = RawRecording(path)
        self.recordings.append(path)
        return metrics_observer, Tee(metrics_observer, self.recorder)

    async def _serve(self, config: Config, adapter_for: Callable[[Observer], Any]) -> None:
        asyncio.get_running_loop().set_exception_handler(self.crashes.handler)
        metrics_observer, adapter_observer = self._observer(config)
        self.service = Service(config, observer=metrics_observer, adapter=adapter_for(adapter_observer))
        await self.service.start()
        self.http = httpx.AsyncClient(
            base_url=self.service.base_url,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=20,
            event_hooks={"response": [self._check_response]},
        )

    async def _check_response(self, response: httpx.Response) -> None:
        # 502/503 are the contract's answers about the PBX; any other 5xx is our bug.
        if response.status_code >= 500 and response.status_code not in (502, 503):
            await response.aread()
            self.api_5xx.append(f"{response.request.method} {response.request.url.path}: {response.text}")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.service is not None:
            await self.service.stop()
        if self.recordings:
            self.recorder.close()

    async def connected(self, within_s: float = 20.0) -> bool:
        return await until(lambda: self.svc.adapter.connected, within_s, 0.01)

    def transfer(self, transfer_id: str) -> dict[str, Any] | None:
        found = self.svc.runtime.transfer(transfer_id)
        return dict(found) if found is not None else None

    def resources(self) -> dict[str, int]:
        """What a leak would make grow: live tasks, engine tables, runtime timers and queues."""
        runtime = self.svc.runtime
        engine = runtime.engine
        return {
            "tasks": len(asyncio.all_tasks()),
            "active_transfers": len(engine.transfers(active_only=True)),
            "engine_transfers": len(engine.transfers()),
            "tracked_calls": len(engine.calls()),
            "timers": len(runtime._timers),
            "queues": len(runtime._queues),
            "waiters": len(runtime._waiters),
            "allocated_blocks": sys.getallocatedblocks(),
        }

    def engine_errors(self) -> float:
        return self.metrics.registry.get_sample_value("xferd_engine_errors_total") or 0.0

    def store_integrity(self) -> str:
        """``PRAGMA integrity_check`` on the store file, through a connection of our own."""
        with contextlib.closing(sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True)) as db:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def final_at(store_path: Path, transfer_id: str, resource: dict[str, Any]) -> float:
    """When the transfer became final, to the microsecond, from the store's export.

    The resource's ISO times are cut to milliseconds; the export keeps the
    engine's float.  Falls back to the resource if the final save failed.
    """
    with contextlib.closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute("SELECT export FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
    if row is not None:
        history = json.loads(row[0]).get("history") or []
        if history and history[-1]["to"] in FINAL:
            return float(history[-1]["at"])
    last = resource["history"][-1]["at"]
    from datetime import datetime

    return datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp()


class YeastarWorld(World):
    """The Yeastar simulator and the service with a real :class:`YeastarAdapter`."""

    platform = "yeastar"

    def __init__(
        self,
        tmp: Path,
        watch: LogWatch,
        *,
        policy: PolicyConfig | None = None,
        sim_config: SimConfig | None = None,
        request_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(tmp, watch, policy=policy)
        config = sim_config or SimConfig()
        config.client_secret = CLIENT_SECRET
        self.sim = ChaosSimulator(config)
        self.sim.on_token = lambda token: watch.secrets.add(token)
        self.request_timeout_s = request_timeout_s
        watch.secrets.update({API_TOKEN, CLIENT_SECRET})

    def config(self) -> Config:
        return Config(
            pbx=YeastarPbx(
                kind="yeastar",
                base_url=self.sim.base_url,
                client_id=self.sim.config.client_id,
                client_secret=SecretStr(CLIENT_SECRET),
            ),
            api=ApiConfig(listen="127.0.0.1:0", token=SecretStr(API_TOKEN)),
            store=StoreConfig(path=self.store_path),
            policy=self.policy,
        )

    async def start(self) -> None:
        await self.sim.start()
        config = self.config()

        def adapter(observer: Observer) -> YeastarAdapter:
            return YeastarAdapter(
                self.sim.base_url,
                self.sim.config.client_id,
                CLIENT_SECRET,
                observer=observer,
                request_timeout_s=self.request_timeout_s,
            )

        await self._serve(config, adapter)
        await self.connected()

    async def stop(self) -> None:
        await super().stop()
        await self.sim.stop()

    def extension(self, phone: Phone | None = None) -> str:
        number = fresh_number()
        self.sim.add_extension(number, phone or Phone(answer_after=0.05))
        return number

    def hang_up_all(self, numbers: Iterable[str]) -> None:
        """Clean-up after a run: every leg of these numbers goes (quietly if already gone)."""
        wanted = set(numbers)
        for leg in self.sim.legs().values():
            if leg.number in wanted:
                with contextlib.suppress(Exception):
                    self.sim.hangup(leg.channel_id)


class WebexWorld(World):
    """The Webex simulator and the service with a real :class:`WebexAdapter` (signed webhooks)."""

    platform = "webex"

    def __init__(
        self,
        tmp: Path,
        watch: LogWatch,
        *,
        policy: PolicyConfig | None = None,
        request_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(tmp, watch, policy=policy)
        self.sim = WebexSimulator(access_token=WEBEX_TOKEN, webhook_secret=WEBHOOK_SECRET)
        self.request_timeout_s = request_timeout_s
        # The simulator logs request times on the monotonic clock; the engine on the wall clock.
        self.wall_minus_monotonic = time.time() - time.monotonic()
        watch.secrets.update({API_TOKEN, WEBEX_TOKEN, WEBHOOK_SECRET})

    def config(self) -> Config:
        return Config(
            pbx=WebexPbx(
                kind="webex",
                base_url=self.sim.base_url,
                access_token=SecretStr(WEBEX_TOKEN),
                webhook_secret=SecretStr(WEBHOOK_SECRET),
            ),
            api=ApiConfig(listen="127.0.0.1:0", token=SecretStr(API_TOKEN)),
            store=StoreConfig(path=self.store_path),
            policy=self.policy,
        )

    async def start(self) -> None:
        await self.sim.start()
        config = self.config()

        def adapter(observer: Observer) -> WebexAdapter:
            return WebexAdapter(
                self.sim.base_url,
                access_token=WEBEX_TOKEN,
                webhook_secret=WEBHOOK_SECRET,
                events="webhook",
                user_number=self.sim.user_number,
                observer=observer,
                request_timeout_s=self.request_timeout_s,
            )

        await self._serve(config, adapter)
        self.sim.deliver_to(f"{self.svc.base_url}/v1/webhooks/webex")
        await self.connected()

    async def stop(self) -> None:
        await super().stop()
        await self.sim.stop()

    def clear_faults(self) -> None:
        """Fault switches back to normal (private fields: the simulator has no reset)."""
        sim = self.sim
        sim.duplicate_deliveries = False
        sim.reorder_deliveries = False
        sim.throttle(0, 0)
        sim.stall(0, 0)
        sim._refusals.clear()
        sim._token_expired = False

    def hang_up_all(self, call_ids: Iterable[str]) -> None:
        for call_id in call_ids:
            call = self.sim.call(call_id)
            if call is not None and call.state != "disconnected":
                self.sim.hangup_remote(call_id)


async def bounded(awaitable: Awaitable[Any], within_s: float) -> Any:
    """``awaitable`` with a deadline; None when it passed."""
    try:
        async with asyncio.timeout(within_s):
            return await awaitable
    except TimeoutError:
        return None
