"""``xferd demo --console``: the service and a busy simulated PBX, kept running for a browser.

The plain demo plays one scripted transfer and exits.  This one is for
trying the supervisor console: the built-in Yeastar simulator and the real
service run in this process on loopback (throwaway store) until Ctrl-C, and
a traffic loop keeps outside callers reaching the receptionists, so there is
always a call to transfer from the page.  The transfer targets behave
differently (answer soon, answer late, never answer, busy) to show each
outcome.  Transfers use ``on_answer = "hold"``: when the target answers the
transfer waits for the user to complete it (or swap, or abort) from the
console.

The admin token is drawn for this run and printed once, on this terminal:
it is not logged (the log redactor knows it) and dies with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from adapters.service import logs
from adapters.service.config import PolicyConfig
from adapters.service.demo import simulator_config
from adapters.service.server import Service
from adapters.yeastar.simulator import PbxSimulator, Phone

RECEPTIONISTS = ("2000", "2001", "2002")
#: Transfer targets and how each phone behaves (the console shows every outcome).
TARGETS = {
    "2005": (Phone(answer_after=4.0), "answers after 4 s"),
    "2006": (Phone(answer_after=12.0), "answers after 12 s"),
    "2007": (Phone(answer_after=None), "never answers (no-answer timeout)"),
    "2008": (Phone(busy=True), "busy"),
}
#: A call ends this long after it was placed, unless a transfer is still working on it.
CALL_LENGTH_S = (60.0, 180.0)
TRAFFIC_EVERY_S = 2.0


async def run_console_demo(port: int = 0, out: TextIO = sys.stdout) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop."""
    logs.configure("console", logging.WARNING)
    sim = PbxSimulator()
    for number in RECEPTIONISTS:
        sim.add_extension(number, Phone(answer_after=1.0))
    for number, (phone, _) in TARGETS.items():
        sim.add_extension(number, phone)
    await sim.start()
    token = secrets.token_urlsafe(24)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        with tempfile.TemporaryDirectory(prefix="xferd-console-demo-") as tmp:
            config = simulator_config(
                sim,
                Path(tmp),
                f"127.0.0.1:{port}",
                token,
                PolicyConfig(on_answer="hold", no_answer_timeout_s=20),
            )
            service = Service(config)
            try:
                await service.start()
            except OSError as exc:
                print(f"xferd: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", file=sys.stderr)
                return 1
            traffic = asyncio.create_task(keep_calls_coming(sim, service))
            try:
                print(banner(service.base_url, sim.base_url, token), file=out, flush=True)
                await stop.wait()
                print("\nxferd demo: stopping", file=out, flush=True)
            finally:
                traffic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await traffic
                await service.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await sim.stop()
    return 0


def banner(base_url: str, pbx_url: str, token: str) -> str:
    targets = "\n".join(f"    {number}  {what}" for number, (_, what) in TARGETS.items())
    return (
        f"xferd demo: simulated Yeastar PBX at {pbx_url}\n"
        f"xferd demo: control API at {base_url}\n\n"
        f"  Supervisor console:  {base_url}/console\n"
        f"  Log in with this one-time admin token (valid until you stop the demo):\n\n"
        f"    {token}\n\n"
        f"  Outside callers keep reaching the receptionists {', '.join(RECEPTIONISTS)}.\n"
        f"  Transfer a call to one of:\n{targets}\n"
        f"  When the target answers, complete (or swap, abort) from the console.\n\n"
        f"  Ctrl-C stops the demo."
    )


async def keep_calls_coming(sim: PbxSimulator, service: Service) -> None:
    """Every receptionist has a caller; calls end after a few minutes unless in a transfer."""
    rng = random.Random()
    ends: dict[str, float] = {}  # call id → when it ends
    while True:
        try:
            traffic_step(sim, service, rng, ends)
        except Exception:  # the demo's traffic must not stop the demo
            logging.getLogger("xferd.demo").exception("demo traffic step failed")
        await asyncio.sleep(TRAFFIC_EVERY_S)


def traffic_step(sim: PbxSimulator, service: Service, rng: random.Random, ends: dict[str, float]) -> None:
    now = time.monotonic()
    calls = sim.calls()
    busy_channels = {
        channel
        for transfer in service.runtime.live_transfers(active_only=True)
        for party in ("transferor", "transferee", "target")
        if (channel := (transfer.get(party) or {}).get("channel_id"))
    }
    talking: set[str] = set()
    for call in calls:
        channels = [fields["channel_id"] for member in call["members"] for fields in member.values()]
        numbers = {fields.get("number") for member in call["members"] for fields in member.values()}
        talking |= {n for n in numbers if n}
        end = ends.setdefault(call["call_id"], now + rng.uniform(*CALL_LENGTH_S))
        if now >= end and not busy_channels.intersection(channels) and channels:
            sim.hangup(channels[0])
            ends.pop(call["call_id"], None)
    live = {call["call_id"] for call in calls}
    for call_id in [c for c in ends if c not in live]:
        del ends[call_id]
    for receptionist in RECEPTIONISTS:
        if receptionist not in talking:
            caller = f"55501{rng.randrange(100):02d}"
            sim.place_call(caller, receptionist, answered=False, inbound_trunk="trunk1")
