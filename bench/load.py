"""Figure 6: many attended transfers at once through the control API.

The simulator (:mod:`bench.simproc`, its own process) holds ``load_transfers``
answered calls; the real service (as ``xferd run`` builds it) is connected to
it; API clients (run in the simulator's process, so their cost is not on
xferd's core) send one ``POST /v1/transfers`` per call, all at once.  Every
target answers after a random short delay and the service completes each
transfer by itself (``on_answer = complete``).

Counted, not assumed: each transfer's final state from ``GET
/v1/transfers/{id}``, and the ``complete`` requests the simulator accepted
per transferor channel (the contract allows exactly one per transfer).  The
rate is transfers divided by the time from the first POST to the moment no
transfer is active any more.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from adapters.service.server import Service
from bench.common import Child, Figure, Sizes, goal, percentile, service_config, tempdir


async def run_load(sizes: Sizes) -> list[Figure]:
    count = sizes.load_transfers
    sim = await Child.start("bench.simproc")
    try:
        info = await sim.ask(
            "setup", timeout_s=300, calls=count, targets=count, answer_after=list(sizes.answer_after)
        )
        rows, targets = info["calls"], info["targets"]
        with tempdir() as tmp:
            config = service_config(
                info["base_url"], info["client_id"], info["client_secret"], tmp, no_answer_timeout_s=60
            )
            service = Service(config)
            await service.start()
            try:
                result = await _blast(service, sim, rows, targets)
            finally:
                await service.stop()
        stats = await sim.ask("stats")
        await sim.ask("teardown", timeout_s=30)
    finally:
        await sim.close()
    return [_figure(count, result, stats)]


async def _blast(service: Service, sim: Child, rows: list[list[str]], targets: list[str]) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while not service.adapter.connected:  # noqa: ASYNC110 - the adapter has no hook to wait on
            await asyncio.sleep(0.01)
    count = len(targets)
    bodies = [{"channel_id": rows[i][2], "number": targets[i]} for i in range(count)]
    t0 = time.perf_counter()
    # The API clients run in the simulator's process: their cost is not xferd's.
    posted = await sim.ask("post", timeout_s=300, url=f"{service.base_url}/v1/transfers", bodies=bodies)
    # A fresh connection per request: on a kept-alive connection every request to
    # the service waits ~40 ms for a delayed ACK (its listening socket has no
    # IPPROTO_TCP, so asyncio leaves Nagle on; see bench/RESULTS.md).
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60, limits=fresh) as api:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            active = (await api.get("/v1/transfers", params={"state": "active", "limit": 1000})).json()[
                "items"
            ]
            if not active:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        answers = posted["answers"]
        states: Counter[str] = Counter()
        transferors: dict[str, str] = {}
        for status, transfer_id, _ in answers:
            if status != 201 or not transfer_id:
                continue
            resource = (await api.get(f"/v1/transfers/{transfer_id}")).json()
            states[f"{resource['state']}/{resource['reason']}"] += 1
            transferors[transfer_id] = resource["transferor"]["channel_id"]
    return {
        "codes": Counter(status for status, _, _ in answers),
        "post_s": [seconds for _, _, seconds in answers],
        "elapsed": elapsed,
        "states": states,
        "transferors": transferors,
    }


def _figure(count: int, result: dict[str, Any], stats: dict[str, Any]) -> Figure:
    states: Counter[str] = result["states"]
    final = sum(n for key, n in states.items() if key.split("/")[0] in ("completed", "aborted"))
    completes = stats["completes"]
    exactly_one = sum(1 for channel in result["transferors"].values() if completes.get(channel, 0) == 1)
    more = sum(1 for channel in result["transferors"].values() if completes.get(channel, 0) > 1)
    accepted = result["codes"].get(201, 0)
    rate = count / result["elapsed"]
    met = final == count and exactly_one == count and more == 0
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(result["codes"].items()))
    outcome = ", ".join(f"{key} {n}" for key, n in states.most_common())
    post = result["post_s"]
    return Figure(
        "transfers_at_load",
        rate,
        "transfers/s",
        f"{count} concurrent POST /v1/transfers ({codes}; {accepted} accepted; answered in "
        f"p50 {percentile(post, 50) * 1000:.0f} ms / p99 {percentile(post, 99) * 1000:.0f} ms); "
        f"{final}/{count} final ({outcome}); exactly one complete for {exactly_one}/{count}, more than one "
        f"for {more}; simulator accepted {stats['operate']['complete']} completes; all final after "
        f"{result['elapsed']:.2f} s; {goal(met, 'all final, exactly one complete each')}",
        met,
    )
