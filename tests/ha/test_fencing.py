"""Fenced writes on a real PostgreSQL: a decision written with a stale lease token is refused,
and its request never reaches the PBX; a current token writes and sends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from adapters.service.leases import DDL
from adapters.service.metrics import Metrics
from adapters.service.pgstore import PgStore
from adapters.service.runtime import Runtime
from adapters.service.store import Fence
from engine.engine import Engine
from engine.model import PbxRequest, Policy, TransferRequested
from tests.service.conftest import FakeAdapter, answered_call, until


@pytest.fixture
async def store(ha_db: str) -> AsyncIterator[PgStore]:
    opened = PgStore(ha_db)
    with psycopg.connect(ha_db, autocommit=True) as conn:
        for statement in DDL:  # the same tables the store's migration made: a no-op, as promised
            conn.execute(statement)
        conn.execute(
            "INSERT INTO xferd_leases (pbx, owner, token, expires_at)"
            " VALUES ('acme', 'me', 7, now() + interval '1 minute')"
        )
    yield opened
    await opened.aclose()


def fenced_runtime(store: PgStore, token: int, stale: list[str]) -> tuple[Runtime, FakeAdapter]:
    adapter = FakeAdapter()
    runtime = Runtime(
        Engine(Policy(no_answer_timeout_s=30)), adapter, store, Metrics(), pbx="acme",
        fence=lambda: Fence("acme", "me", token), on_stale=lambda: stale.append("stale"),
    )  # fmt: skip
    return runtime, adapter


def request() -> TransferRequested:
    return TransferRequested(at=time.time(), transfer_id="t1", number="2005", extension="2000")


async def test_a_current_fence_writes_the_decision_then_sends_it(store: PgStore) -> None:
    stale: list[str] = []
    runtime, adapter = fenced_runtime(store, 7, stale)
    await runtime.start()
    try:
        answered_call(adapter)
        commands = runtime.feed(request())
        start = next(c for c in commands if isinstance(c, PbxRequest))
        result = await runtime.wait_result(start.request_id, 5.0)
        assert result is not None and result.outcome == "ok"
        assert [r.request_id for r in adapter.executed] == [start.request_id]
        stored = await store.get("t1")
        assert stored is not None and stored["pbx"] == "acme"
        assert stale == [] and not runtime.stale
    finally:
        await runtime.close()


async def test_a_stale_fence_writes_nothing_sends_nothing_and_stops_the_runtime(store: PgStore) -> None:
    stale: list[str] = []
    runtime, adapter = fenced_runtime(store, 6, stale)  # the lease is at token 7: another grant since
    await runtime.start()
    try:
        answered_call(adapter)
        runtime.feed(request())
        await until(lambda: stale == ["stale"], 5)
        assert adapter.executed == []  # the PBX never heard of it
        assert await store.get("t1") is None  # nothing written
        assert runtime.stale
        refused = runtime.metrics.registry.get_sample_value("xferd_stale_writes_total")
        assert refused is not None and refused >= 1  # every refused write counts (one or more batches)
    finally:
        await runtime.close()
    assert adapter.executed == []


async def test_an_expired_lease_refuses_even_its_own_token(store: PgStore, ha_db: str) -> None:
    with psycopg.connect(ha_db, autocommit=True) as conn:
        conn.execute("UPDATE xferd_leases SET expires_at = now() - interval '1 second' WHERE pbx = 'acme'")
    stale: list[str] = []
    runtime, adapter = fenced_runtime(store, 7, stale)
    await runtime.start()
    try:
        answered_call(adapter)
        runtime.feed(request())
        await until(lambda: stale == ["stale"], 5)
        assert adapter.executed == [] and await store.get("t1") is None
    finally:
        await runtime.close()
