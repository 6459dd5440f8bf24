"""Bugs the chaos runs found, each pinned down by a small deterministic test.

Each test is the smallest reproduction of a run that broke the promise
(the chaos run and seed that found it are named), written against the
pure engine or the runtime so it fails the same way every time.  They fail
until the fixes described in RELIABILITY.md ("Findings") are applied.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.service.metrics import Metrics
from adapters.service.runtime import Runtime
from adapters.service.store import Fence, Saved, SqliteStore, StoreError
from engine.chart import FINAL_STATES
from engine.engine import Engine
from engine.errors import Rejected
from engine.model import (
    CallsSnapshot,
    CallState,
    Member,
    OperatorRequested,
    PbxRequest,
    Policy,
    TransferRequested,
)
from tests.engine.harness import CONSULT, TRANSFEREE, TRANSFEROR, Harness
from tests.service.conftest import FakeAdapter, answered_call, until


def test_answer_delay_expiring_before_the_start_is_accepted_still_completes() -> None:
    """Found by ``slow_pbx`` (seed 1, run 0): the PBX answers the start request late, the target
    answers meanwhile, and the ``answer_delay`` timer fires while the transfer is still ``idle``.

    ``Transfer.timer`` pops the tag and then ignores the stimulus (``idle`` × ``timeout`` is an
    ignore cell), so ``answer_due`` is never set and the transfer stays ``consulting`` with the
    target answered forever: no complete, no no-answer timer.
    """
    h = Harness(Policy(no_answer_timeout_s=20, answer_delay_s=0.2))
    h.setup_call()
    start = h.start()
    h.target("RING")
    h.tick(0.1)
    h.target("ANSWER")
    h.tick(0.3)
    h.fire("answer_delay")  # still idle: the PBX has not answered the start request yet
    h.tick(1.0)
    h.result(start, call_id=CONSULT)
    assert h.state() == "consulting"
    assert [r.action for r in h.requests()] == ["start", "complete"]


def test_a_complete_that_happened_but_was_not_confirmed_is_not_reported_lost() -> None:
    """Found by ``webex_unknown_outcome``: Webex carried out ``transfer(callId1, callId2)`` but its
    answer came too late.  A Webex transfer that worked leaves none of the user's calls, so the
    reconciliation snapshot is empty, and ``Engine._snapshot`` declares the transfer ``lost``
    (aborted) before ``Transfer.reconcile`` can conclude "complete done: the transferor is gone".
    """
    h = Harness(Policy(no_answer_timeout_s=20))
    h.consulting()
    h.target("ANSWER")
    [complete] = h.requests("complete")
    out = h.result(complete, "unknown")
    assert any(type(c).__name__ == "QueryCalls" for c in out)
    h.snapshot()  # the user's calls are all gone: the transfer was carried out
    final = h.resource()
    assert (final["state"], final["reason"]) == ("completed", "policy")


def test_an_abort_whose_resume_failed_does_not_leave_the_transferee_on_hold() -> None:
    """Found by ``webex_server_error``: a Webex abort is ``hangup(callId2)`` then ``resume(callId1)``;
    the resume answered 503 (outcome unknown), the snapshot shows the consult call gone and the
    original call still held, and ``Transfer.reconcile`` takes "target gone" as "abort done".  The
    transfer ends aborted with the caller left on hold at the PBX.
    """
    h = Harness(Policy(no_answer_timeout_s=20))
    h.consulting()
    out = h.op("abort")
    [abort] = [r for r in out if isinstance(r, PbxRequest)]
    h.result(abort, "unknown")
    held = (
        Member("inbound", "94424722", TRANSFEREE, "HOLD"),
        Member("extension", "2005", TRANSFEROR, "HOLD"),
    )
    h.feed(CallsSnapshot(h.now, (CallState("1700000000.1", held),)))
    h.fire("recheck")  # "did not happen" is looked at twice before acting
    out = h.feed(CallsSnapshot(h.now, (CallState("1700000000.1", held),)))
    resent = [r.action for r in out if isinstance(r, PbxRequest)]
    assert resent, f"{h.state()} ({h.resource()['reason']}) with the transferee still on hold, nothing sent"


class FlakyStore(SqliteStore):
    """The real store, whose writes fail while ``locked`` (as SQLite does for a held write lock)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.locked = False

    async def commit(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        if self.locked:
            raise StoreError(f"store {self.path}: cannot write: database is locked")
        await super().commit(rows, fence)


async def _consulting(tmp_path: Path, **policy: Any) -> tuple[Runtime, FakeAdapter, FlakyStore, str]:
    adapter = FakeAdapter()
    store = FlakyStore(tmp_path / "s.db")
    runtime = Runtime(Engine(Policy(no_answer_timeout_s=30, **policy)), adapter, store, Metrics())
    await runtime.start()
    answered_call(adapter)
    commands = runtime.feed(
        TransferRequested(at=time.time(), transfer_id="t1", number="2005", extension="2000")
    )
    start = next(c for c in commands if isinstance(c, PbxRequest))
    assert (await runtime.wait_result(start.request_id, 2.0)) is not None
    adapter.call("consult-1", ("extension", "2005", "PJSIP/2005-t", "RING"))
    return runtime, adapter, store, "t1"


async def test_an_operator_complete_that_could_not_be_saved_can_be_asked_again(tmp_path: Path) -> None:
    """Found by ``sqlite_locked`` (seed 1, run 0): the operator's complete could not be made durable
    (store locked), so the runtime did not send it (``Runtime._not_sent``) and reported it
    "refused" — but ``Transfer._request`` had already set ``complete_sent``.  Once the store works
    again the transfer refuses every complete ("already sent its one complete request") although no
    complete ever reached the PBX; the API also answered 502 ``pbx_error`` "the PBX refused",
    which it did not.
    """
    runtime, adapter, store, tid = await _consulting(tmp_path, on_answer="hold")
    try:
        adapter.call("consult-1", ("extension", "2005", "PJSIP/2005-t", "ANSWER"))
        store.locked = True
        commands = runtime.feed(OperatorRequested(at=time.time(), transfer_id=tid, op="complete"))
        complete = next(c for c in commands if isinstance(c, PbxRequest))
        result = await runtime.wait_result(complete.request_id, 2.0)
        assert result is not None and result.outcome == "refused"
        assert [r.action for r in adapter.executed] == ["start"]  # it never left
        store.locked = False
        try:
            runtime.feed(OperatorRequested(at=time.time(), transfer_id=tid, op="complete"))
        except Rejected as exc:
            raise AssertionError(f"a complete that never left blocks the transfer: {exc.detail}") from None
        await until(lambda: [r.action for r in adapter.executed] == ["start", "complete"], 2.0)
    finally:
        await runtime.close()
        store.close()


async def test_a_final_state_that_could_not_be_saved_is_not_forgotten(tmp_path: Path) -> None:
    """Also ``sqlite_locked``: while the store is locked the policy's complete is not sent, the
    engine falls back to abort (not sent either) and ends the transfer ``aborted`` — in memory
    only.  ``Runtime._execute`` then ``forget``s it, so ``GET`` serves the stale ``consulting``
    record from the store for good, and nothing ever gives the held caller back.
    """
    runtime, adapter, store, tid = await _consulting(tmp_path)
    try:
        store.locked = True
        adapter.call("consult-1", ("extension", "2005", "PJSIP/2005-t", "ANSWER"))
        # The answer is handled while the store is locked: its save failed and is to be retried.
        await until(lambda: tid in runtime._unsaved, 10.0)
        store.locked = False
        # The store retry saves it (then the engine forgets it), or finds it already forgotten.
        await until(lambda: tid not in runtime._unsaved, 10.0)
        in_engine = runtime.engine.transfer(tid)
        stored = await store.get(tid)
        assert stored is not None
        assert in_engine is not None or stored["state"] in FINAL_STATES, (
            f"the engine dropped the transfer but the store still says {stored['state']}"
        )
    finally:
        await runtime.close()
        store.close()
