"""``xferd demo``: one attended transfer, end to end, on loopback, in a few seconds.

The built-in Yeastar simulator and the real service (adapter, engine,
runtime, store, control API) run in this process on random free ports with a
throwaway store and API token.  The script then behaves like an API client:
an outside caller reaches the receptionist (extension 2000), the client asks
``POST /v1/transfers`` to hand the caller to extension 2005, 2005 rings and
answers, and the service completes the transfer by itself.  The timeline
shows what the PBX reported, what the service decided and what it asked the
PBX to do, with times relative to the start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import SecretStr

from adapters.service import logs
from adapters.service.config import ApiConfig, Config, PolicyConfig, StoreConfig, YeastarPbx
from adapters.service.hub import Subscription
from adapters.service.metrics import Metrics, MetricsObserver
from adapters.service.server import Service
from adapters.yeastar.simulator import PbxSimulator, Phone

CALLER, RECEPTIONIST, TARGET = "5550100", "2000", "2005"
FINAL = ("completed", "aborted")


class Timeline:
    """Prints one line per happening, stamped relative to the demo's start."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.closed = False  # set once the summary is printed: shutdown chatter is not part of the story

    def __call__(self, who: str, what: str) -> None:
        if not self.closed:
            print(f"  {time.monotonic() - self.t0:+7.3f}s  {who:<8} {what}", file=self.out, flush=True)


class TimelineObserver(MetricsObserver):
    """The service's usual observer, plus a timeline line per PBX request."""

    def __init__(self, metrics: Metrics, timeline: Timeline) -> None:
        super().__init__(metrics)
        self.timeline = timeline

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
        super().pbx_request(endpoint, body, answer, result, seconds, status=status, retry_after=retry_after)
        shown = {k: v for k, v in body.items() if k in ("type", "channel_id", "number", "attended_operate")}
        args = " ".join(f"{k}={v}" for k, v in shown.items())
        self.timeline(
            "REQUEST", f"{endpoint} {args} -> {result} ({seconds * 1000:.0f} ms)".replace("  ", " ")
        )


def simulator_config(sim: PbxSimulator, tmp: Path, listen: str, token: str, policy: PolicyConfig) -> Config:
    """The config both demos run with: the simulator as the one PBX, a store in ``tmp``,
    the control API on ``listen`` with ``token`` as its admin token."""
    return Config(
        pbx=(
            YeastarPbx(
                kind="yeastar",
                base_url=sim.base_url,
                client_id=sim.config.client_id,
                client_secret=SecretStr(sim.config.client_secret),
            ),
        ),
        api=ApiConfig(listen=listen, token=SecretStr(token)),
        store=StoreConfig(path=tmp / "xferd.sqlite3"),
        policy=policy,
    )


async def watch(
    subscription: Subscription, timeline: Timeline, finished: asyncio.Future[dict[str, Any]]
) -> None:
    """Turn the live stream into timeline lines: leg status changes and transfer changes."""
    legs: dict[str, str] = {}
    last: tuple[Any, ...] = ()
    while (text := await subscription.get()) is not None:
        message = json.loads(text)
        if message["kind"] == "call":
            call = message["call"]
            for member in call["members"]:
                if legs.get(member["channel_id"]) != member["status"]:
                    legs[member["channel_id"]] = member["status"]
                    party = f"{member['number']} ({member['kind']})"
                    timeline("EVENT", f"call {call['call_id']}: {party:<20} {member['status']}")
            continue
        transfer = message["transfer"]
        now = (transfer["state"], transfer["target"]["status"], transfer["reason"])
        if now != last:
            last = now
            reason = f", reason {transfer['reason']}" if transfer["reason"] else ""
            timeline("STATE", f"transfer {transfer['state']} (target {transfer['target']['status']}{reason})")
        if transfer["state"] in FINAL and not finished.done():
            finished.set_result(transfer)


async def wait_until_connected(http: httpx.AsyncClient, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while True:  # a client polls; it has no hook into the service
            if (await http.get("/healthz")).status_code == 200:
                return
            await asyncio.sleep(0.02)


async def receptionist_answered(http: httpx.AsyncClient, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while True:
            calls = (await http.get("/v1/calls")).json()["items"]
            members = [m for call in calls for m in call["members"]]
            if any(m["number"] == RECEPTIONIST and m["status"] in ("ANSWER", "ANSWERED") for m in members):
                return
            await asyncio.sleep(0.02)


async def run_demo(out: TextIO = sys.stdout) -> int:
    """Play the scripted transfer; 0 when it completed, 1 (with a message) otherwise."""
    logs.configure("console", logging.WARNING)
    timeline = Timeline(out)
    sim = PbxSimulator()
    sim.add_extension(RECEPTIONIST, Phone(answer_after=0.3))
    sim.add_extension(TARGET, Phone(answer_after=1.0))
    await sim.start()
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="xferd-demo-") as tmp:
        config = simulator_config(sim, Path(tmp), "127.0.0.1:0", token, PolicyConfig(no_answer_timeout_s=10))
        service = Service(config, observer=TimelineObserver(Metrics(), timeline))
        print(f"xferd demo: simulated Yeastar PBX at {sim.base_url}", file=out)
        await service.start()
        print(f"xferd demo: control API at {service.base_url}\n", file=out, flush=True)
        finished: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(watch(service.hub.subscribe(), timeline, finished))
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with httpx.AsyncClient(base_url=service.base_url, headers=headers, timeout=10) as http:
                return await script(http, sim, timeline, finished, out)
        except TimeoutError:
            print("xferd demo: failed: timed out waiting for the PBX or the transfer", file=out)
            return 1
        finally:
            timeline.closed = True
            await service.stop()
            watcher.cancel()
            await sim.stop()


async def script(
    http: httpx.AsyncClient,
    sim: PbxSimulator,
    timeline: Timeline,
    finished: asyncio.Future[dict[str, Any]],
    out: TextIO,
) -> int:
    await wait_until_connected(http, 5)
    timeline("CALLER", f"{CALLER} calls the receptionist, extension {RECEPTIONIST}")
    sim.place_call(CALLER, RECEPTIONIST, answered=False, inbound_trunk="trunk1")
    await receptionist_answered(http, 5)

    body = {"extension": RECEPTIONIST, "number": TARGET}
    timeline("CLIENT", f"POST /v1/transfers {json.dumps(body)}")
    response = await http.post("/v1/transfers", json=body)
    answer = response.json()
    timeline("CLIENT", f"<- {response.status_code} {answer.get('state') or answer.get('error')}")
    if response.status_code != 201:
        print(f"xferd demo: failed: the service answered {response.status_code}: {answer}", file=out)
        return 1

    async with asyncio.timeout(10):
        transfer = await finished
    started = _seconds(transfer["created_at"])
    took = _seconds(transfer["updated_at"]) - started
    print(f"\nxferd demo: transfer {transfer['id']} {transfer['state']}", end="", file=out)
    print(f" (reason: {transfer['reason']}) {took:.2f} s after it was requested.", file=out)
    if transfer["state"] != "completed":
        return 1
    print("history:", file=out)
    for step in transfer["history"]:
        print(f"  {step['at']}  {step['from']} -> {step['to']} ({step['trigger']})", file=out)
    return 0


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
