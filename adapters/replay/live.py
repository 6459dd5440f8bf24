"""Record a scenario live: the real service runtime against a PBX simulator.

This is how the scenario library is made (``scenarios/generate.py``,
``scenarios/generate_webex.py``) and how the tests check that a live run
replays to the same decisions.  Nothing here is a mock: the Yeastar adapter
talks HTTP and WebSocket to its simulator on loopback (:class:`LiveRecording`),
the Webex adapter talks HTTP to the Webex simulator and receives its signed
webhooks on a loopback listener (:class:`WebexLiveRecording`), and the
:class:`~adapters.replay.recorder.RecordingRuntime` feeds the engine and
records exactly what a production service with recording switched on would
record.

A script drives the world through :attr:`LiveRecording.sim` (place calls,
hang up, answer) and the service through :meth:`LiveRecording.start` /
:meth:`LiveRecording.operate` — the same events the control API feeds.
:meth:`LiveRecording.before` makes a race happen on purpose: it changes the
world just before the service's request of a given action reaches the PBX.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from adapters.base import ActionResult, CallAction, EventSink, Observer, PbxAdapter
from adapters.replay.format import ExpectLine, FinalExpect, RequestPattern, dump_line
from adapters.replay.recorder import Recorder, RecordingRuntime
from adapters.service import call_actions
from adapters.service.metrics import Metrics
from adapters.service.store import SqliteStore
from adapters.webex.adapter import WebexAdapter
from adapters.webex.oauth import integration
from adapters.webex.simulator import SimVariant, WebexSimulator, WebhookReceiver
from adapters.yeastar.adapter import YeastarAdapter
from adapters.yeastar.simulator import PbxSimulator, SimConfig
from engine.engine import Engine
from engine.errors import Rejected
from engine.model import (
    TALKING_STATUSES,
    CallsSnapshot,
    MonitorMode,
    Op,
    OperatorRequested,
    PbxRequest,
    Policy,
    RequestFinished,
    TransferRequested,
    TransferType,
)

FINAL = ("completed", "aborted")


class _Staged:
    """A platform adapter with a stage hand: hooks that change the world right
    before a request of a given action is sent, and a list of what was sent."""

    def __init__(self, inner: PbxAdapter) -> None:
        self.inner = inner
        self.platform = inner.platform
        self.capabilities = inner.capabilities
        self.hooks: dict[str, Callable[[PbxRequest], None]] = {}
        self.made: list[PbxRequest] = []

    @property
    def connected(self) -> bool:
        return self.inner.connected

    @property
    def detail(self) -> str:
        return self.inner.detail

    async def start(self, sink: EventSink) -> None:
        await self.inner.start(sink)

    async def execute(self, request: PbxRequest) -> RequestFinished:
        self.made.append(request)
        hook = self.hooks.pop(request.action, None)
        if hook is not None:
            hook(request)
        return await self.inner.execute(request)

    async def query_calls(self) -> CallsSnapshot | None:
        return await self.inner.query_calls()

    async def act(self, action: CallAction) -> ActionResult:
        return await self.inner.act(action)

    async def close(self) -> None:
        await self.inner.close()


class _Live:
    """What recording live needs whatever the platform: a store, the recorder,
    the recording runtime around the platform's adapter, and the driving."""

    platform = ""
    request_timeout_s = 5.0  # the adapter's; each platform's recording sets its own

    def __init__(self, out: Path, *, name: str, description: str, policy: Policy) -> None:
        self.out = out
        self.name = name
        self.description = description
        self.policy = policy
        self.transfers: list[str] = []

    # -- what each platform provides --------------------------------------------------
    async def _start_pbx(self) -> None:
        raise NotImplementedError

    async def _stop_pbx(self) -> None:
        raise NotImplementedError

    def _adapter(self, observer: Observer) -> PbxAdapter:
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        return []

    def _settings(self) -> dict[str, Any]:
        return {}

    async def _ready(self) -> None:
        """Wait until the adapter is connected (and anything else the platform needs)."""
        await self.until(lambda: self.adapter.connected)

    # -- the context ---------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self._start_pbx()
        self._tmp = tempfile.TemporaryDirectory(prefix="xferd-live-")
        self.store = SqliteStore(Path(self._tmp.name) / "xferd.sqlite3")
        self.recorder = Recorder.open(
            self.out,
            name=self.name,
            platform=self.platform,
            policy=self.policy,
            secrets=self._secrets(),
            description=self.description,
            pbx=self._settings(),
        )
        self.adapter = _Staged(self._adapter(self.recorder))
        self.runtime = RecordingRuntime(
            Engine(self.policy), self.adapter, self.store, Metrics(), recorder=self.recorder
        )
        await self.runtime.start()
        await self._ready()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.runtime.close()
        finally:
            self.recorder.close()
            await self._stop_pbx()
            self.store.close()
            self._tmp.cleanup()

    # -- driving ----------------------------------------------------------------------
    async def until(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (TimeoutError after ``within_s``)."""
        async with asyncio.timeout(within_s):
            while not predicate():  # noqa: ASYNC110 - polling state of several parties
                await asyncio.sleep(0.002)

    def leg_status(self, channel_id: str) -> str | None:
        """The status the service's engine holds for a leg (None: not tracked)."""
        leg = self.runtime.engine.registry.leg(channel_id)
        return leg.status if leg is not None else None

    def start(
        self,
        transfer_id: str,
        number: str,
        *,
        channel_id: str | None = None,
        extension: str | None = None,
        type: TransferType = "attended",
        policy: Mapping[str, Any] | None = None,
    ) -> str | None:
        """What ``POST /v1/transfers`` feeds; returns the refusal code, if any."""
        self.transfers.append(transfer_id)
        event = TransferRequested(
            time.time(), transfer_id, number, type, channel_id, extension, policy=policy
        )  # fmt: skip
        return self._feed(event)

    def operate(self, transfer_id: str, op: Op) -> str | None:
        """What ``POST /v1/transfers/{id}/{op}`` feeds; returns the refusal code, if any."""
        return self._feed(OperatorRequested(time.time(), transfer_id, op))

    def _feed(self, event: TransferRequested | OperatorRequested) -> str | None:
        try:
            self.runtime.feed(event)
        except Rejected as exc:
            return exc.code
        return None

    # -- supervisor call actions: what the control API does (adapters.service.call_actions)
    async def monitor(self, channel_id: str, monitor: str, mode: MonitorMode = "listen") -> ActionResult:
        action = CallAction("monitor", channel_id=channel_id, extension=monitor, mode=mode)
        return await call_actions.monitor(self.runtime, action, leg_number=monitor)

    async def park(self, channel_id: str, slot: str | None = None) -> ActionResult | str:
        """Park a leg; the engine's refusal code instead when it refused (nothing sent)."""
        try:
            return await call_actions.park(self.runtime, CallAction("park", channel_id=channel_id, slot=slot))
        except Rejected as exc:
            return exc.code

    async def retrieve(self, slot: str, extension: str) -> ActionResult:
        action = CallAction("retrieve", extension=extension, slot=slot, auto_answer=True)
        return await call_actions.act(self.runtime, action)

    async def hangup(self, channel_id: str) -> ActionResult | str:
        """Hang a leg up as a supervisor; the engine's refusal code instead when it refused."""
        try:
            return (await call_actions.hangup(self.runtime, channel_id, self.request_timeout_s + 2))[1]
        except Rejected as exc:
            return exc.code

    def before(self, action: str, hook: Callable[[PbxRequest], None]) -> None:
        """Run ``hook`` just before the next ``action`` request goes to the PBX."""
        self.adapter.hooks[action] = hook

    def resource(self, transfer_id: str) -> Mapping[str, Any]:
        found = self.runtime.transfer(transfer_id)
        if found is None:
            raise KeyError(f"no transfer {transfer_id}")
        return found

    def state(self, transfer_id: str) -> str:
        return str(self.resource(transfer_id)["state"])

    async def reach(self, transfer_id: str, *states: str, within_s: float = 5.0) -> None:
        """Wait until the transfer is in one of ``states`` (default: a final state)."""
        wanted = states or FINAL
        await self.until(lambda: self.state(transfer_id) in wanted, within_s)

    async def settle(self, quiet_s: float = 0.2, within_s: float = 5.0) -> None:
        """Wait until nothing was recorded for ``quiet_s``: trailing frames have arrived."""
        async with asyncio.timeout(within_s):
            while True:
                lines = self.recorder.lines
                await asyncio.sleep(quiet_s)
                if self.recorder.lines == lines:
                    return

    # -- what happened ------------------------------------------------------------------
    @property
    def made(self) -> list[PbxRequest]:
        """The PBX requests the service made, in the order they were sent."""
        return list(self.adapter.made)

    def outcomes(self) -> dict[str, tuple[str, str | None]]:
        """(state, reason) of every transfer the engine accepted."""
        found = {tid: self.runtime.transfer(tid) for tid in self.transfers}
        return {tid: (str(r["state"]), r["reason"]) for tid, r in found.items() if r is not None}


class LiveRecording(_Live):
    """Yeastar: the PBX simulator (``sim``) with extensions, recording to ``out``."""

    platform = "yeastar"

    def __init__(
        self,
        out: Path,
        *,
        name: str,
        description: str,
        policy: Policy,
        sim: SimConfig | None = None,
        extensions: Iterable[str] = ("2000", "2005", "2008"),
        request_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(out, name=name, description=description, policy=policy)
        self.sim = PbxSimulator(sim)
        self.extensions = tuple(extensions)
        self.request_timeout_s = request_timeout_s

    async def _start_pbx(self) -> None:
        await self.sim.start()
        for number in self.extensions:
            self.sim.add_extension(number)

    async def _stop_pbx(self) -> None:
        await self.sim.stop()

    def _secrets(self) -> list[str]:
        return [self.sim.config.client_secret]

    def _adapter(self, observer: Observer) -> PbxAdapter:
        config = self.sim.config
        return YeastarAdapter(
            self.sim.base_url,
            config.client_id,
            config.client_secret,
            observer=observer,
            request_timeout_s=self.request_timeout_s,
        )

    async def call(self, caller: str, callee: str, *, inbound_trunk: str | None = None) -> str:
        """Place an answered call and wait until the service tracks both parties talking."""
        call_id = self.sim.place_call(caller, callee, inbound_trunk=inbound_trunk)
        legs = [self.sim.channel_of(caller), self.sim.channel_of(callee)]
        await self.until(lambda: all(self.leg_status(leg) in TALKING_STATUSES for leg in legs))
        return call_id


class WebexLiveRecording(_Live):
    """Webex: the Webex simulator (``sim``, playing ``variant``) for its one
    user, events by webhook (registered at start, to a loopback listener) or
    by polling, recording to ``out``."""

    platform = "webex"

    def __init__(
        self,
        out: Path,
        *,
        name: str,
        description: str,
        policy: Policy,
        variant: SimVariant | None = None,
        events: Literal["webhook", "poll"] = "webhook",
        poll_interval_s: float = 0.05,
        request_timeout_s: float = 5.0,
        oauth: bool = False,
        setup: Callable[[WebexSimulator], object] | None = None,
    ) -> None:
        """``oauth``: authenticate as an integration (renewing tokens) instead of
        with the simulator's static token; ``setup``: change the simulated world
        before the service starts (so its start-up listing sees it)."""
        super().__init__(out, name=name, description=description, policy=policy)
        self.sim = WebexSimulator(variant=variant)
        self.oauth = oauth
        self.setup = setup
        self.events = events
        self.poll_interval_s = poll_interval_s
        self.request_timeout_s = request_timeout_s
        self._listener = WebhookReceiver()

    async def _start_pbx(self) -> None:
        await self.sim.start()
        await self._listener.start()
        if self.setup is not None:
            self.setup(self.sim)

    async def _stop_pbx(self) -> None:
        await self._listener.stop()
        await self.sim.stop()

    def _secrets(self) -> list[str]:
        return [self.sim.access_token, self.sim.webhook_secret, self.sim.client_secret]

    def _settings(self) -> dict[str, Any]:
        return {"events": self.events, "user_number": self.sim.user_number}

    def _adapter(self, observer: Observer) -> PbxAdapter:
        sim = self.sim
        oauth = None
        if self.oauth:
            refresh_token = sim.issue_refresh_token()
            oauth = integration(sim.base_url, sim.client_id, sim.client_secret, refresh_token, None, observer)
        adapter = WebexAdapter(
            sim.base_url,
            access_token=None if oauth else sim.access_token,
            oauth=oauth,
            webhook_secret=self.sim.webhook_secret,
            events=self.events,
            public_url=self._listener.public_url if self.events == "webhook" else None,
            poll_interval_s=self.poll_interval_s,
            user_number=self.sim.user_number,
            observer=observer,
            request_timeout_s=self.request_timeout_s,
        )
        self._listener.adapter = adapter
        return adapter

    async def _ready(self) -> None:
        await super()._ready()
        if self.events == "webhook":
            await self.until(lambda: bool(self.sim.webhooks))

    async def call(self, caller: str) -> str:
        """``caller`` calls the user, who answers; returns the callId once the
        service tracks the user's leg of it talking."""
        call_id = self.sim.incoming_call(caller)
        await self.until(lambda: self.leg_status(call_id) in TALKING_STATUSES)
        return call_id


def expectations(
    made: Iterable[PbxRequest],
    outcomes: Mapping[str, tuple[str, str | None]],
    never: Iterable[tuple[RequestPattern, int]] = (),
    step: Callable[[PbxRequest], str | None] | None = None,
) -> list[str]:
    """Expectation lines stating what a live run did: its requests in order
    (``step`` labels requests that may come in any order among themselves),
    the state each transfer ended in, and the requests it must never make."""
    lines = [
        ExpectLine(
            kind="expect",
            request=RequestPattern(
                transfer=request.transfer_id,
                action=request.action,
                number=request.number if request.action in ("start", "blind") else None,
            ),
            step=step(request) if step is not None else None,
        )
        for request in made
    ]
    for tid, (state, reason) in outcomes.items():
        final = FinalExpect.model_validate({"transfer": tid, "state": state, "reason": reason})
        lines.append(ExpectLine(kind="expect", final=final))
    lines += [ExpectLine(kind="expect", never=pattern, max=most) for pattern, most in never]
    return [dump_line(line) for line in lines]
