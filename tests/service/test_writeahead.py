"""The write-ahead pipeline (group commit) and the admission gate, around the real engine and
runtime with a fake PBX: one commit per turn, requests only after their commit, one commit in
flight, refused commits (stale fence, store failure), 503 + Retry-After when admission is full."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from adapters.service.admission import Admission, Overloaded
from adapters.service.config import ApiConfig, Config, PolicyConfig, StoreConfig, YeastarPbx
from adapters.service.metrics import Metrics
from adapters.service.runtime import Runtime
from adapters.service.server import Service
from adapters.service.store import Fence, Saved, SqliteStore, StaleFence, StoreError
from engine.engine import Engine
from engine.model import PbxRequest, Policy, RequestFinished, TransferRequested
from tests.service.conftest import FakeAdapter, answered_call, until


class ScriptedStore(SqliteStore):
    """The real store; records every commit (rows and fence), can hold commits on a gate,
    refuse them (StoreError) a number of times, or refuse fenced ones as stale."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits: list[tuple[list[str], Fence | None]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.fail_next = 0
        self.stale = False

    async def commit(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.commits.append(([row.transfer_id for row in rows], fence))
            if self.gate is not None:
                await self.gate.wait()  # a networked store's round trip, held by the test
            if self.stale and fence is not None:
                raise StaleFence(f"lease of {fence.pbx} is not {fence.owner}/{fence.token} any more")
            if self.fail_next:
                self.fail_next -= 1
                raise StoreError(f"store {self.path}: cannot write: database is locked")
            await super().commit(rows, fence)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter, ScriptedStore]]:
    adapter = FakeAdapter()
    store = ScriptedStore(tmp_path / "s.db")
    runtime = Runtime(Engine(Policy(no_answer_timeout_s=30)), adapter, store, Metrics())
    await runtime.start()
    yield runtime, adapter, store
    await runtime.close()
    store.close()


def start(runtime: Runtime, transfer_id: str, extension: str) -> PbxRequest:
    commands = runtime.feed(
        TransferRequested(at=time.time(), transfer_id=transfer_id, number="2005", extension=extension)
    )
    return next(c for c in commands if isinstance(c, PbxRequest))


def two_calls(adapter: FakeAdapter) -> None:
    answered_call(adapter, "c1", "2000")
    answered_call(adapter, "c2", "2001", "5550101")


async def test_decisions_of_one_turn_share_one_commit(
    world: tuple[Runtime, FakeAdapter, ScriptedStore],
) -> None:
    runtime, adapter, store = world
    two_calls(adapter)
    store.commits.clear()
    first, second = start(runtime, "t1", "2000"), start(runtime, "t2", "2001")  # same turn: no await between
    assert store.commits == []  # nothing written, nothing sent yet
    await until(lambda: len(adapter.executed) == 2)
    assert store.commits[0] == (["t1", "t2"], None)  # both decisions, one transaction
    assert {r.request_id for r in adapter.executed} == {first.request_id, second.request_id}
    assert (await store.get("t1") or {}).get("state") == "idle"


async def test_no_request_leaves_before_its_commit_returned(tmp_path: Path) -> None:
    store = ScriptedStore(tmp_path / "s.db")
    seen: list[tuple[str, bool, bool]] = []  # (transfer, its commit had returned, its row was on disk)

    class Checking(FakeAdapter):
        async def execute(self, request: PbxRequest) -> RequestFinished:
            on_disk = await store.get(request.transfer_id) is not None
            seen.append((request.transfer_id, store.gate is None or store.gate.is_set(), on_disk))
            return await super().execute(request)

    adapter = Checking()
    runtime = Runtime(Engine(Policy(no_answer_timeout_s=30)), adapter, store, Metrics())
    await runtime.start()
    try:
        two_calls(adapter)
        store.gate = asyncio.Event()
        start(runtime, "t1", "2000")
        await until(lambda: store.in_flight == 1)
        # A decision taken while that commit is in flight waits for the next one (one commit at a time).
        start(runtime, "t2", "2001")
        assert runtime.wal.pending and len(store.commits) == 1
        store.gate.set()
        await until(lambda: len(adapter.executed) == 2)
        assert [ids for ids, _ in store.commits[:2]] == [["t1"], ["t2"]]
        assert seen == [("t1", True, True), ("t2", True, True)]
        assert store.most_in_flight == 1
    finally:
        await runtime.close()
        store.close()


async def test_a_stale_fence_sends_nothing_and_reports_the_lost_lease(tmp_path: Path) -> None:
    adapter = FakeAdapter()
    store = ScriptedStore(tmp_path / "s.db")
    fence = Fence("default", "instance-a", 7)
    lost: list[str] = []
    runtime = Runtime(
        Engine(Policy(no_answer_timeout_s=30)),
        adapter,
        store,
        Metrics(),
        fence=lambda: fence,
        on_stale=lambda: lost.append("lost_lease"),
    )
    await runtime.start()
    try:
        two_calls(adapter)
        store.stale = True
        first, second = start(runtime, "t1", "2000"), start(runtime, "t2", "2001")
        # Both waiters are registered before the commit's outcome can be delivered (next turns).
        results = await asyncio.gather(*(runtime.wait_result(r.request_id, 2.0) for r in (first, second)))
        assert all(r is not None and not r.sent for r in results)
        assert adapter.executed == []  # none of the batch's requests
        assert lost == ["lost_lease"]  # once for the episode
        assert store.commits[-1][1] == fence  # the commit carried the runtime's fence
        assert await store.get("t1") is None  # nothing written
        # Once the lease is lost the runtime acts no more, even if a commit would pass now.
        store.stale = False
        commits = len(store.commits)
        answered_call(adapter, "c3", "2002", "5550102")
        third = start(runtime, "t3", "2002")
        result = await runtime.wait_result(third.request_id, 2.0)
        assert result is not None and not result.sent
        assert runtime.stale and len(store.commits) == commits and adapter.executed == []
        assert lost == ["lost_lease"]
    finally:
        await runtime.close()
        store.close()


async def test_a_failed_commit_sends_nothing_and_is_saved_again(
    world: tuple[Runtime, FakeAdapter, ScriptedStore],
) -> None:
    runtime, adapter, store = world
    answered_call(adapter)
    store.fail_next = 1
    request = start(runtime, "t1", "2000")
    result = await runtime.wait_result(request.request_id, 2.0)
    assert isinstance(result, RequestFinished) and not result.sent and result.outcome == "refused"
    assert "database is locked" in result.errmsg
    assert adapter.executed == []
    # The store works again: what the engine decided since (a start that could not be recorded
    # ends the transfer, contract: 503 store_unavailable) reaches it.
    await until(lambda: "t1" not in runtime._unsaved, 5.0)
    stored, live = await store.get("t1"), runtime.transfer("t1")
    assert stored is not None and live is not None and stored["state"] == live["state"] == "aborted"
    assert adapter.executed == []


async def test_a_change_that_decides_nothing_rides_along(
    world: tuple[Runtime, FakeAdapter, ScriptedStore],
) -> None:
    runtime, adapter, store = world
    two_calls(adapter)
    adapter.gates["start"] = asyncio.Event()
    start(runtime, "t1", "2000")
    await until(lambda: len(adapter.executed) == 1)
    store.commits.clear()
    adapter.gates["start"].set()
    # The start's answer makes t1 "consulting" (no request): no commit of its own at once…
    await until(lambda: (runtime.transfer("t1") or {}).get("state") == "consulting")
    assert store.commits == []
    # …but it joins the next decision's commit, or is written on its own shortly after.
    await runtime.wal.barrier()
    assert store.commits == [(["t1"], None)]
    assert (await store.get("t1") or {}).get("state") == "consulting"


async def test_admission_lets_one_in_per_turn_and_refuses_beyond_the_bound() -> None:
    admission = Admission(limit=3, concurrency=2)
    entered: list[int] = []
    release = asyncio.Event()

    async def transfer(n: int) -> None:
        async with admission.slot():
            entered.append(n)
            await release.wait()

    tasks = [asyncio.create_task(transfer(n)) for n in range(3)]
    await until(lambda: len(entered) == 2)
    assert entered == [0, 1]  # in arrival order; the third waits for a free place
    with pytest.raises(Overloaded):
        async with admission.slot():
            pass
    assert admission.refused == 1
    release.set()
    await asyncio.gather(*tasks)
    assert entered == [0, 1, 2] and admission.pending == 0 and admission.active == 0


async def test_a_full_admission_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    config = Config(
        pbx=YeastarPbx(
            kind="yeastar",
            base_url="http://127.0.0.1:9",
            client_id="id",
            client_secret=SecretStr("pbx-secret"),
        ),
        api=ApiConfig(listen="127.0.0.1:0", token=SecretStr("test-api-token-0123"), max_pending_transfers=1),
        store=StoreConfig(path=tmp_path / "s.db"),
        policy=PolicyConfig(no_answer_timeout_s=30),
    )
    adapter = FakeAdapter()
    service = Service(config, adapter=adapter)
    await service.start()
    auth = {"Authorization": "Bearer test-api-token-0123"}
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=5, headers=auth) as http:
            two_calls(adapter)
            adapter.gates["start"] = asyncio.Event()  # the first start stays with the PBX
            first = asyncio.create_task(
                http.post("/v1/transfers", json={"extension": "2000", "number": "2005"})
            )
            await until(lambda: len(adapter.executed) == 1)
            refused = await http.post("/v1/transfers", json={"extension": "2001", "number": "2005"})
            assert refused.status_code == 503
            assert refused.json()["error"] == "overloaded"
            assert "max_pending_transfers" in refused.json()["detail"]
            assert int(refused.headers["retry-after"]) >= 1
            adapter.gates["start"].set()
            assert (await first).status_code == 201
            # A place is free again: the same request is taken now.
            again = await http.post("/v1/transfers", json={"extension": "2001", "number": "2005"})
            assert again.status_code == 201
    finally:
        await service.stop()
