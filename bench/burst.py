"""Figures of issue 18: a burst of transfers, the store's group commit, the PBX connections.

* ``burst`` — 200 attended transfers started at once through the control API
  (``POST /v1/transfers``, all at the same moment, from the simulator's
  process), each target answering 0.2–1.0 s after it starts ringing; the
  service completes each by itself (``on_answer = complete``).  Measured inside
  the simulator on one clock, as in :mod:`bench.latency`: the target's first
  ANSWER frame handed to the socket → the ``complete`` request arriving.
  Counted: exactly one ``complete`` per transfer.  The same with the
  PostgreSQL store when :mod:`adapters.service.pgstore` is importable and a
  server answers at ``XFERD_BENCH_PG`` (default
  ``postgresql://postgres@127.0.0.1:5432/postgres``; a database of its own is
  created and dropped).
* ``pbx_connection`` — what the PBX's close-after-answer costs: sequential
  ``call/query`` requests through the service's own REST client
  (:class:`~adapters.yeastar.rest.YeastarRest`) against the simulator, once
  closing after each answer (as a P-Series does) and once keeping the
  connection open (reused by the client).

The group commit's own counters (commits, rows per commit, time in commit)
are printed with the burst figure, so the batching is seen, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from adapters.service.server import Service
from bench.common import Child, Figure, Sizes, goal, percentile, service_config, tempdir
from bench.latency import _latencies

PG_ENV = "XFERD_BENCH_PG"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


async def run_burst(sizes: Sizes) -> list[Figure]:
    figures = [await _burst(sizes, "sqlite", p50_goal=30.0, p99_goal=100.0)]
    async with _pg_database() as url:
        if url is None:
            print("# burst_pg: not run (adapters.service.pgstore not importable or no PostgreSQL server)")
        else:
            figures.append(await _burst(sizes, "pg", p50_goal=30.0, p99_goal=200.0, pg_url=url))
    return figures


async def _burst(
    sizes: Sizes, store: str, *, p50_goal: float, p99_goal: float, pg_url: str | None = None
) -> Figure:
    count = sizes.burst_transfers
    sim = await Child.start("bench.simproc")
    try:
        info = await sim.ask(
            "setup", timeout_s=300, calls=count, targets=count, answer_after=list(sizes.burst_answer_after)
        )
        rows, targets = info["calls"], info["targets"]
        if os.environ.get("XFERD_BENCH_KEEPALIVE"):
            await sim.ask("close_after_answer", close=False)
        with tempdir() as tmp:
            config = service_config(
                info["base_url"], info["client_id"], info["client_secret"], tmp, no_answer_timeout_s=60
            )
            if pg_url is not None:
                config = _with_pg(config, pg_url)
            service = Service(config)
            await service.start()
            try:
                async with asyncio.timeout(10):
                    while not service.adapter.connected:  # noqa: ASYNC110 - the adapter has no hook
                        await asyncio.sleep(0.01)
                bodies = [{"channel_id": rows[i][2], "number": targets[i]} for i in range(count)]
                await sim.ask("lag_reset")
                own_lags: list[float] = []
                watcher = asyncio.create_task(_watch_lag(own_lags))
                t0 = time.perf_counter()
                try:
                    posted = await sim.ask(
                        "post", timeout_s=300, url=f"{service.base_url}/v1/transfers", bodies=bodies
                    )
                    stats = await _wait_completes(sim, count, 60)
                finally:
                    watcher.cancel()
                elapsed = time.perf_counter() - t0
                wal = getattr(service.runtime, "wal", None)  # None: a build before the group commit
                commits, rows_written, entries = (wal.commits, wal.rows, wal.entries) if wal else (0, 0, 0)
                commit_s = wal.commit_seconds if wal else 0.0
            finally:
                await service.stop()
        await sim.ask("teardown", timeout_s=30)
    finally:
        await sim.close()
    latencies = [s * 1000 for s in _latencies(stats)]
    completes = stats["completes"]
    transferors = [rows[i][2] for i in range(count)]
    exactly_one = sum(1 for channel in transferors if completes.get(channel, 0) == 1)
    more = sum(1 for channel in transferors if completes.get(channel, 0) > 1)
    codes: dict[int, int] = {}
    for status, _, _ in posted["answers"]:
        codes[status] = codes.get(status, 0) + 1
    lags = [lag * 1000 for lag in stats.get("lags", ())] or [0.0]
    ours = [lag * 1000 for lag in own_lags] or [0.0]
    p50 = percentile(latencies, 50) if latencies else float("nan")
    p99 = percentile(latencies, 99) if latencies else float("nan")
    worst = max(latencies) if latencies else float("nan")
    met = bool(latencies) and p50 <= p50_goal and p99 <= p99_goal and exactly_one == count and more == 0
    name = "burst_answer_to_complete" + ("_pg" if store == "pg" else "")
    low, high = sizes.burst_answer_after
    return Figure(
        name,
        p99,
        "ms",
        f"the value is p99; p50 {p50:.1f} ms, max {worst:.1f} ms; {store} store; "
        f"{count} transfers POSTed at once "
        f"(answers {', '.join(f'{c}: {n}' for c, n in sorted(codes.items()))}; "
        f"{posted.get('retries', 0)} retried after 503), targets answering {low}-{high} s after ringing; "
        f"{len(latencies)} samples; exactly one complete for {exactly_one}/{count}, "
        f"more than one for {more}; all completes in {elapsed:.2f} s; group commit: {commits} commits, "
        f"{rows_written} rows ({rows_written / max(commits, 1):.1f}/commit), {entries} command batches, "
        f"{commit_s * 1000:.0f} ms in commit; the simulator's own loop lag p50 {percentile(lags, 50):.1f} / "
        f"p99 {percentile(lags, 99):.1f} ms (it stamps both ends), the service's p50 "
        f"{percentile(ours, 50):.1f} / p99 {percentile(ours, 99):.1f} ms; "
        f"{goal(met, f'p50 <= {p50_goal:.0f} ms, p99 <= {p99_goal:.0f} ms, exactly one complete each')}",
        met,
    )


async def _watch_lag(into: list[float]) -> None:
    """How late the service's loop wakes a 5 ms sleep: the length of its turns."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(0.005)
        into.append(loop.time() - began - 0.005)


async def _wait_completes(sim: Child, count: int, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        stats = await sim.ask("stats")
        if len(stats["complete_at"]) >= count or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


def _with_pg(config: Any, url: str) -> Any:
    """``config`` with ``[store] url`` set (the PostgreSQL store's key)."""
    from pydantic import SecretStr

    store = config.store.model_copy(update={"url": SecretStr(url)})
    return config.model_copy(update={"store": store})


@contextlib.asynccontextmanager
async def _pg_database() -> AsyncIterator[str | None]:
    """A fresh PostgreSQL database for one run (dropped after), or None when that cannot be had."""
    try:
        import psycopg

        import adapters.service.pgstore  # noqa: F401 - only whether the PostgreSQL store exists
    except ImportError:
        yield None
        return
    admin_url = os.environ.get(PG_ENV, PG_DEFAULT)
    name = f"xferd_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = await psycopg.AsyncConnection.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.Error:
        yield None
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = admin_url.rpartition("/")
        yield f"{base}/{name}"
    finally:
        with contextlib.suppress(psycopg.Error):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run_pbx_connection(sizes: Sizes) -> list[Figure]:
    """Per-request cost of a new connection (the PBX closes after each answer) vs a reused one."""
    from adapters.yeastar.rest import YeastarRest

    sim = await Child.start("bench.simproc")
    per: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, float] = {True: 0.0, False: 0.0}  # this process's CPU seconds: what the service pays
    try:
        info = await sim.ask("setup", timeout_s=60, calls=10, targets=1, answer_after=[0.5, 0.5])
        for round_ in range(sizes.connection_rounds):
            for close in (True, False) if round_ % 2 == 0 else (False, True):
                await sim.ask("close_after_answer", close=close)
                rest = YeastarRest(info["base_url"], info["client_id"], info["client_secret"])
                try:
                    await rest.query(type="inbound")  # the token, and a first connection
                    cpu_began = time.process_time()
                    for _ in range(sizes.connection_requests):
                        began = time.perf_counter()
                        await rest.query(type="inbound")
                        per[close].append(time.perf_counter() - began)
                    cpu[close] += time.process_time() - cpu_began
                finally:
                    await rest.aclose()
        await sim.ask("teardown", timeout_s=30)
    finally:
        await sim.close()
    closing = percentile(per[True], 50) * 1000
    reused = percentile(per[False], 50) * 1000
    saved = closing - reused
    return [
        Figure(
            "pbx_request_close_after_answer",
            closing,
            "ms",
            f"median of {len(per[True])} sequential call/query requests through YeastarRest when the PBX "
            f"closes after each answer (a P-Series does), a new TCP connection each; kept open and reused: "
            f"{reused:.2f} ms (p99 {percentile(per[False], 99) * 1000:.2f} vs "
            f"{percentile(per[True], 99) * 1000:.2f} ms); reuse saves {saved:.2f} ms per request "
            f"({saved / closing * 100:.0f} %); client CPU per request "
            f"{cpu[True] / len(per[True]) * 1000:.2f} ms new connection vs "
            f"{cpu[False] / len(per[False]) * 1000:.2f} ms reused; "
            f"{sizes.connection_rounds} alternating rounds; no goal",
        )
    ]
