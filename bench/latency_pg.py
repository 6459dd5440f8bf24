"""Figure 2b: decision latency with the PostgreSQL store (issue 15: p50 ≤ 2× the bare echo client).

The same measurement as :mod:`bench.latency` — target ANSWER frame to the
``complete`` request, both stamped inside the simulator — with one change:
the service keeps its state in PostgreSQL (``[store] url``), so every
decision waits for a database round trip and commit before its request
leaves (write-ahead), where the SQLite figure waits for an fsync.  Rounds
alternate with the bare echo client as there.

The database is the server at ``XFERD_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``): a database of this run's
own is created there and dropped at the end.  PostgreSQL runs on the same
2 cores as everything else, so its commit (WAL flush) competes with xferd
and the simulator.

Beside it, what the difference is made of: ``store_write_<store>_p50``, the
time of one write-ahead save on each store, measured alone (a figure that a
loaded machine disturbs much less than the end-to-end one).
"""

from __future__ import annotations

import os
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

from adapters.service.pgstore import PgStore
from adapters.service.store import SqliteStore
from bench.common import Figure, Sizes, goal, percentile, tempdir
from bench.latency import _round

#: The PostgreSQL server the figure uses (its ``postgres`` database: where the run's database is made).
ADMIN_URL = os.environ.get("XFERD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The issue's goal for p50; p99 is printed beside it without one.
P50_LIMIT = 2.0


def _database_url(name: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def run_latency_pg(sizes: Sizes) -> list[Figure]:
    import psycopg

    from adapters.service.pgstore import redact_url

    name = f"xferd_bench_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise RuntimeError(
            f"no PostgreSQL at {redact_url(ADMIN_URL)} (set XFERD_BENCH_PG): {' '.join(str(exc).split())}"
        ) from None
    samples: dict[str, list[float]] = {"xferd": [], "echo": []}
    fps: list[float] = []
    incomplete = 0
    try:
        with tempdir() as tmp:
            for r in range(sizes.latency_rounds):
                for path in ("xferd", "echo") if r % 2 == 0 else ("echo", "xferd"):
                    latencies, stats = await _round(path, sizes, tmp / f"{path}-{r}", _database_url(name))
                    samples[path].extend(latencies)
                    incomplete += sizes.latency_transfers - len(latencies)
                    if stats["background_seconds"] > 0:
                        fps.append(stats["background_frames"] / stats["background_seconds"])
            writes = {
                "sqlite": _store_writes(SqliteStore(tmp / "writes.sqlite3"), sizes),
                "postgresql": _store_writes(PgStore(_database_url(name)), sizes),
            }
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    figures = []
    for q, limit in ((50, P50_LIMIT), (99, None)):
        ours = percentile(samples["xferd"], q) * 1000
        bare = percentile(samples["echo"], q) * 1000
        ratio = ours / bare
        met = None if limit is None else ratio <= limit
        verdict = goal(met, f"<= {limit}x") if met is not None else "no goal"
        figures.append(
            Figure(
                f"decision_latency_pg_p{q}",
                ours,
                "ms",
                f"PostgreSQL store; ratio {ratio:.2f} of bare echo client {bare:.2f} ms; "
                f"{len(samples['xferd'])}/{len(samples['echo'])} transfers (xferd/echo) in "
                f"{sizes.latency_rounds} alternating round(s); {sizes.latency_calls} live calls; background "
                f"{min(fps):.0f}-{max(fps):.0f} frames/s; {incomplete} transfers without a sample; {verdict}",
                met,
            )
        )
    for store, times in writes.items():
        figures.append(
            Figure(
                f"store_write_{store}_p50",
                percentile(times, 50) * 1000,
                "ms",
                f"one write-ahead save of a transfer (resource and engine state), durable on return, "
                f"as the runtime makes it before a request; p99 {percentile(times, 99) * 1000:.2f} ms over "
                f"{len(times)} saves; no goal",
            )
        )
    return figures


def _store_writes(store: SqliteStore | PgStore, sizes: Sizes) -> list[float]:
    """Seconds per ``save`` of a transfer-sized row (what a decision waits for before its request)."""
    count = 50 if sizes.quick else 1000
    resource = {
        "id": "t-0", "state": "consulting", "reason": None, "pbx": "default",
        "transferor": {"channel_id": "PJSIP/2000-00000001", "number": "2000"},
        "transferee": {"channel_id": "PJSIP/trunk-a-00000002", "number": "5550100"},
        "target": {"channel_id": "PJSIP/2005-00000003", "number": "2005", "status": "ringing"},
        "policy": {"on_answer": "complete", "answer_delay_s": 0, "no_answer_timeout_s": 20},
        "history": [{"from": "idle", "to": "consulting", "trigger": "api", "at": "2026-12-03T15:00:00.000Z"}],
        "created_at": "2026-12-03T15:00:00.000Z", "updated_at": "2026-12-03T15:00:00.100Z",
    }  # fmt: skip
    export = {
        "chart": "consulting",
        "attempt": 1,
        "pending": {"r-1": "start"},
        "deadline": 1.7e9,
        "rule": None,
    }
    times = []
    try:
        for i in range(count + 20):
            resource["id"] = f"t-{i % 50}"
            began = time.perf_counter()
            store.save(resource["id"], resource, export, False)
            if i >= 20:  # the first ones warm the connection and the caches
                times.append(time.perf_counter() - began)
    finally:
        store.close()
    return times
