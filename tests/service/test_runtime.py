"""The runtime around the real engine, with a fake PBX adapter: write-ahead, ordering, timers,
restore, slow stream clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.service.metrics import Metrics
from adapters.service.runtime import Runtime
from adapters.service.store import Fence, Saved, SqliteStore, StoreError
from engine.engine import Engine
from engine.model import (
    CallsSnapshot,
    CallState,
    Command,
    Event,
    Member,
    PbxRequest,
    Policy,
    TransferRequested,
)
from tests.service.conftest import FakeAdapter, answered_call, until


class RecordingStore(SqliteStore):
    """The real store, logging each save into the shared ordering log."""

    def __init__(self, path: Path, log: list[tuple[str, str]]) -> None:
        super().__init__(path)
        self.log = log
        self.fail: str | None = None

    async def commit(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        if self.fail:
            raise StoreError(self.fail)
        await super().commit(rows, fence)
        self.log.extend(("save", f"{row.transfer_id}:{row.resource['state']}") for row in rows)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter, RecordingStore]]:
    log: list[tuple[str, str]] = []
    adapter = FakeAdapter(log=log)
    store = RecordingStore(tmp_path / "s.db", log)
    runtime = Runtime(Engine(Policy(no_answer_timeout_s=0.2)), adapter, store, Metrics())
    await runtime.start()
    yield runtime, adapter, store
    await runtime.close()
    store.close()


def sample(runtime: Runtime, name: str, **labels: str) -> float | None:
    return runtime.metrics.registry.get_sample_value(name, labels)


def request(transfer_id: str = "t1", extension: str = "2000", **policy: Any) -> TransferRequested:
    return TransferRequested(
        at=time.time(), transfer_id=transfer_id, number="2005", extension=extension, policy=policy or None
    )


async def test_decision_is_saved_before_its_request_leaves(world: tuple[Runtime, FakeAdapter, Any]) -> None:
    runtime, adapter, _ = world
    answered_call(adapter)
    commands = runtime.feed(request())
    start = next(c for c in commands if isinstance(c, PbxRequest))
    result = await runtime.wait_result(start.request_id, 2.0)
    assert result is not None and result.outcome == "ok"
    await runtime.wal.flush()  # "consulting" decides nothing: it rides along with a later commit
    assert adapter.log[:3] == [("save", "t1:idle"), ("execute", "t1/1"), ("save", "t1:consulting")]
    resource = runtime.transfer("t1")
    assert resource is not None and resource["state"] == "consulting"
    assert sample(runtime, "xferd_decision_latency_seconds_count") == 1


async def test_transfers_run_concurrently_but_never_block_the_feed(
    world: tuple[Runtime, FakeAdapter, Any],
) -> None:
    runtime, adapter, _ = world
    answered_call(adapter, "c1", "2000")
    answered_call(adapter, "c2", "2001", "5550101")
    adapter.gates["start"] = asyncio.Event()
    runtime.feed(request("t1", "2000"))
    runtime.feed(request("t2", "2001"))
    # both start requests are with the PBX at once; the feed returned immediately
    await until(lambda: len(adapter.executed) == 2)
    assert {r.transfer_id for r in adapter.executed} == {"t1", "t2"}
    adapter.gates["start"].set()
    await until(lambda: all(runtime.engine.transfer(t)["state"] == "consulting" for t in ("t1", "t2")))  # type: ignore[index]


class TwoRequests(Engine):
    """An engine stub emitting two requests for one transfer and one for another (FIFO check)."""

    def handle(self, event: Event) -> list[Command]:
        if isinstance(event, TransferRequested):
            return [
                PbxRequest("t1/1", "t1", "start", "A"),
                PbxRequest("t1/2", "t1", "hangup", "B"),
                PbxRequest("t2/1", "t2", "start", "C"),
            ]
        return []


async def test_one_transfers_requests_run_in_emission_order(tmp_path: Path) -> None:
    adapter = FakeAdapter()
    adapter.gates["start"] = asyncio.Event()
    runtime = Runtime(TwoRequests(), adapter, SqliteStore(tmp_path / "s.db"), Metrics())
    await runtime.start()
    runtime.feed(request())
    await until(lambda: len(adapter.executed) == 2)
    # t1's hangup waits behind t1's start; t2 is not held up by t1
    assert [r.request_id for r in adapter.executed] == ["t1/1", "t2/1"]
    adapter.gates["start"].set()
    await until(lambda: len(adapter.executed) == 3)
    assert adapter.executed[2].request_id == "t1/2"
    await runtime.close()


async def test_no_answer_timer_fires_and_aborts(world: tuple[Runtime, FakeAdapter, Any]) -> None:
    runtime, adapter, _ = world
    answered_call(adapter)
    runtime.feed(request())
    await until(lambda: any(r.action == "abort" for r in adapter.executed), within_s=2.0)
    await until(lambda: (runtime.transfer("t1") or {}).get("state") == "aborted")
    resource = runtime.transfer("t1")
    assert resource is not None and resource["reason"] == "no_answer"
    # final: forgotten by the engine once the final state is on disk, then served from the store
    await until(lambda: runtime.engine.transfer("t1") is None)
    assert (await runtime.store.get("t1") or {}).get("state") == "aborted"
    assert sample(runtime, "xferd_transfers_finished_total", state="aborted", reason="no_answer") == 1


async def test_unsaved_decision_is_not_sent(world: tuple[Runtime, FakeAdapter, RecordingStore]) -> None:
    runtime, adapter, store = world
    answered_call(adapter)
    store.fail = "store s.db: cannot write: database or disk is full"
    commands = runtime.feed(request())
    start = next(c for c in commands if isinstance(c, PbxRequest))
    result = await runtime.wait_result(start.request_id, 2.0)
    assert result is not None and result.outcome == "refused"
    assert "disk is full" in result.errmsg
    assert adapter.executed == []
    assert (sample(runtime, "xferd_store_errors_total") or 0) >= 1


async def test_restart_restores_and_reconciles(tmp_path: Path) -> None:
    adapter = FakeAdapter()
    store = SqliteStore(tmp_path / "s.db")
    runtime = Runtime(Engine(), adapter, store, Metrics())
    await runtime.start()
    answered_call(adapter)
    adapter.gates["start"] = asyncio.Event()  # the start is in flight when we "crash"
    runtime.feed(request())
    await until(lambda: len(adapter.executed) == 1)
    store.close()  # no runtime.close(): as after kill -9

    adapter2 = FakeAdapter()
    store2 = SqliteStore(tmp_path / "s.db")
    runtime2 = Runtime(Engine(), adapter2, store2, Metrics())
    await runtime2.start()
    resource = runtime2.engine.transfer("t1")
    assert resource is not None and resource["state"] == "idle"
    # the in-flight start is not resent: the runtime asks the PBX what happened instead
    await until(lambda: adapter2.queries >= 1)
    assert adapter2.executed == []
    # call/query keeps failing for a while: the runtime retries until the PBX answers
    await until(lambda: adapter2.queries >= 2, within_s=3.0)
    adapter2.snapshot = CallsSnapshot(time.time(), ())  # every call has vanished meanwhile
    await until(lambda: (runtime2.transfer("t1") or {}).get("state") == "aborted", within_s=5.0)
    assert (runtime2.transfer("t1") or {}).get("reason") == "lost"
    assert adapter2.executed == [], "reconciled from the PBX's view, nothing re-sent"
    await runtime2.close()
    store2.close()


async def test_slow_stream_client_is_dropped_others_keep_order(
    world: tuple[Runtime, FakeAdapter, Any],
) -> None:
    runtime, adapter, _ = world
    runtime.hub.queue_size = 2
    slow = runtime.hub.subscribe()
    runtime.hub.queue_size = 100
    fast = runtime.hub.subscribe()
    for n in range(5):
        answered_call(adapter, f"c{n}")
    assert slow.overflowed and await slow.get() is None
    messages = [json.loads(fast.queue.get_nowait() or "null") for _ in range(5)]
    assert [m["call"]["call_id"] for m in messages] == ["c0", "c1", "c2", "c3", "c4"]
    assert sample(runtime, "xferd_stream_dropped_total") == 1
    assert sample(runtime, "xferd_stream_clients") == 1


async def test_close_closes_adapter_and_hub_ends_streams(world: tuple[Runtime, FakeAdapter, Any]) -> None:
    runtime, adapter, _ = world
    subscription = runtime.hub.subscribe()
    await runtime.close()
    assert adapter.closed
    runtime.hub.close()  # the service ends the shared stream when it stops
    assert await subscription.get() is None


async def test_timer_while_pbx_link_is_down_reconciles_before_deciding(
    world: tuple[Runtime, FakeAdapter, Any],
) -> None:
    """The target answered while events were not flowing: the no-answer timer
    must not abort on stale facts — the PBX's view comes first."""
    runtime, adapter, _ = world
    answered_call(adapter)
    runtime.feed(request())
    await until(lambda: (runtime.transfer("t1") or {}).get("state") == "consulting")
    adapter.call("consult-1", ("extension", "2005", "PJSIP/2005-t", "RING"))
    adapter.is_connected = False  # the websocket dropped; the target answers meanwhile
    resource = runtime.transfer("t1") or {}
    assert resource["target"]["status"] == "ringing"
    legs = [leg for call in runtime.engine.calls() for leg in call["members"]]  # type: ignore[union-attr]
    adapter.snapshot = CallsSnapshot(
        time.time(),
        tuple(
            CallState(
                str(call["call_id"]),
                tuple(
                    Member(
                        m["kind"],
                        m["number"],
                        m["channel_id"],
                        "ANSWER" if m["channel_id"] == "PJSIP/2005-t" else m["status"],
                    )
                    for m in call["members"]  # type: ignore[union-attr]
                ),
            )
            for call in runtime.engine.calls()
        ),
    )
    assert legs
    await until(lambda: adapter.queries >= 1, within_s=2.0)
    await until(lambda: (runtime.transfer("t1") or {}).get("state") == "completed", within_s=2.0)
    assert [r.action for r in adapter.executed] == ["start", "complete"], "no abort on stale facts"
