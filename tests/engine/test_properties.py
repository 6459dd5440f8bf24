"""Invariants over random interleavings (hypothesis).

Whatever the order of PBX events, duplicates, operator ops, request results
(ok / refused / unknown / "gone") and timer expiries — including stale ones:

* the engine never raises (except :class:`Rejected` for an operator op);
* no PBX request is emitted for a transfer after it reached a final state;
* never two ``complete`` requests for one transfer;
* never a second request while one is in flight;
* once every leg is gone and every request answered, the transfer is final.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import (
    CallFailed,
    CallsSnapshot,
    CallState,
    CallUpdated,
    Engine,
    OperatorRequested,
    PbxRequest,
    Policy,
    QueryCalls,
    Rejected,
    RequestFinished,
    StartTimer,
    TimerFired,
    TransferRequested,
)
from engine.model import Command
from tests.engine.harness import CALL, CONSULT, TARGET, TARGET_NUMBER, TRANSFEREE, TRANSFEROR, Harness, member

#: Fewer examples while mutmut runs the suite once per mutant (RELIABILITY.md, mutation testing).
EXAMPLES = 300 if os.environ.get("MUTANT_UNDER_TEST") else 1500

LEGS = {
    "target": (CONSULT, "outbound", TARGET_NUMBER, TARGET),
    "transferee": (CALL, "inbound", "94424722", TRANSFEREE),
    "transferor": (CALL, "extension", "2005", TRANSFEROR),
    "fallback": ("c2", "extension", "2008", "PJSIP/2008-00000001"),
}
STATUSES = ["RING", "ALERT", "ANSWER", "HOLD", "BYE"]

_ops = st.tuples(st.just("op"), st.sampled_from(["complete", "abort", "swap", "threeway"]))
_results = st.tuples(st.just("result"), st.sampled_from(["ok", "refused", "unknown", "gone", "dup"]))
steps = st.one_of(
    _ops,
    _results,
    st.tuples(st.just("leg"), st.sampled_from(sorted(LEGS)), st.sampled_from(STATUSES)),
    st.tuples(
        st.just("failed"), st.sampled_from([CONSULT, "c2", CALL]), st.sampled_from(["486 Busy Here", "DND"])
    ),
    _ops,
    _results,
    st.tuples(st.just("timer"), st.booleans()),
    st.tuples(st.just("snapshot"), st.booleans()),
    st.tuples(st.just("tick"), st.floats(min_value=0, max_value=30)),
)

policies = st.builds(
    Policy,
    on_answer=st.sampled_from(["complete", "threeway", "hold"]),
    answer_delay_s=st.sampled_from([0.0, 1.0]),
    no_answer_timeout_s=st.sampled_from([5.0, 20.0]),
    on_transferor_hangup=st.sampled_from(["complete", "abort"]),
    fallback_numbers=st.sampled_from([(), ("2008",), ("2008", "2010")]),
)


class Checker:
    """Feeds events and checks every command batch against the invariants."""

    def __init__(self, policy: Policy) -> None:
        self.h = Harness(policy)
        self.pending: list[PbxRequest] = []
        self.answered: list[PbxRequest] = []
        self.completes = 0
        self.final_seen = False
        self.timers: list[StartTimer] = []

    def feed(self, event: Any) -> list[Command]:
        was_final = self.final_seen
        out = self.h.feed(event)
        for command in out:
            if isinstance(command, PbxRequest):
                assert not was_final, f"request after final state: {command}"
                assert not self.pending, f"second request while {self.pending} in flight"
                self.pending.append(command)
                if command.action == "complete":
                    self.completes += 1
                    assert self.completes == 1, "two completes for one transfer"
            elif isinstance(command, StartTimer):
                self.timers.append(command)
        resource = self.h.engine.transfer("t1")
        if resource is not None and resource["state"] in ("completed", "aborted"):
            self.final_seen = True
        return out

    def answer(self, outcome: str) -> None:
        if outcome == "dup" and self.answered:
            request = self.answered[-1]
            if request in self.pending:  # a late answer to an unknown outcome settles it
                self.pending.remove(request)
            self.feed(RequestFinished(self.h.now, "t1", request.request_id, "ok"))
            return
        if not self.pending:
            return
        request = self.pending.pop()
        self.answered.append(request)
        gone = outcome == "gone"
        result = "refused" if gone else ("ok" if outcome == "dup" else outcome)
        call_id = CONSULT if request.action == "start" and request.number == TARGET_NUMBER else "c2"
        out = self.feed(
            RequestFinished(
                self.h.now,
                "t1",
                request.request_id,
                result,  # type: ignore[arg-type]
                call_id if result == "ok" else None,
                60001 if gone else None,
                "",
                gone,
            )
        )
        if result == "unknown":
            assert any(isinstance(c, QueryCalls) for c in out)
            self.pending.append(request)  # still unsettled until a snapshot

    def snapshot(self, everyone: bool) -> None:
        registry = self.h.engine.registry
        calls = [
            CallState(
                cid, tuple(member(leg.kind, leg.number, leg.channel_id, leg.status) for leg in legs.values())
            )
            for cid, legs in registry.calls.items()
        ]
        if not everyone and calls:
            calls = calls[1:]
        # A snapshot may settle an unknown outcome (and issue a new request), or
        # leave it waiting for a second look: take it out during the feed, put
        # it back if the engine still waits for it.
        unknown = [r for r in self.pending if self._unknown(r)]
        self.pending = [r for r in self.pending if r not in unknown]
        self.feed(CallsSnapshot(self.h.now, tuple(calls)))
        if not self.pending:
            self.pending = [r for r in unknown if self._unknown(r)]

    def _unknown(self, request: PbxRequest) -> bool:
        transfer = self.h.engine.get("t1")
        return bool(
            transfer
            and transfer.pending
            and transfer.pending.request_id == request.request_id
            and transfer.pending.unknown
        )

    def sync_pending(self) -> None:
        """Drop requests the engine no longer waits for (e.g. settled by a snapshot)."""
        transfer = self.h.engine.get("t1")
        live = transfer.pending.request_id if transfer and transfer.pending else None
        self.pending = [r for r in self.pending if r.request_id == live]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, script=st.lists(steps, max_size=40))
def test_random_interleavings_keep_the_invariants(policy: Policy, script: list[tuple[Any, ...]]) -> None:
    c = Checker(policy)
    c.h.setup_call()
    c.feed(TransferRequested(c.h.now, "t1", TARGET_NUMBER, channel_id=TRANSFEROR))
    for step in script:
        kind = step[0]
        if kind == "leg":
            call_id, k, number, channel = LEGS[step[1]]
            c.feed(CallUpdated(c.h.now, call_id, (member(k, number, channel, step[2]),)))
        elif kind == "failed":
            c.feed(CallFailed(c.h.now, step[1], step[2], ()))
        elif kind == "op":
            with contextlib.suppress(Rejected):
                c.feed(OperatorRequested(c.h.now, "t1", step[1]))
        elif kind == "result":
            c.answer(step[1])
        elif kind == "timer":
            if c.timers:
                tag = c.timers[-1].timer if step[1] else c.timers[0].timer
                c.feed(TimerFired(c.h.now, "t1", tag))
        elif kind == "snapshot":
            c.snapshot(step[1])
        else:
            c.h.tick(step[1])
        c.sync_pending()
    # Every leg goes, then every request is answered: the transfer must end.
    for name in ("target", "fallback", "transferee", "transferor"):
        call_id, k, number, channel = LEGS[name]
        c.feed(CallUpdated(c.h.now, call_id, (member(k, number, channel, "BYE"),)))
    for _ in range(10):
        c.sync_pending()
        if not c.pending:
            break
        if c._unknown(c.pending[0]):
            c.snapshot(True)
        else:
            c.answer("ok")
    c.sync_pending()
    assert not c.pending
    assert c.h.engine.transfer("t1")["state"] in ("completed", "aborted")  # type: ignore[index]


def test_engine_handles_thousands_of_calls_and_forgets_them() -> None:
    from engine import CallEnded

    engine = Engine()
    for i in range(5000):
        engine.handle(
            CallUpdated(float(i), f"c{i}", (member("extension", str(1000 + i % 50), f"PJSIP/x-{i}", "RING"),))
        )
    assert len(engine.registry.calls) == 5000
    for i in range(5000):
        engine.handle(CallEnded(float(i), f"c{i}"))
    assert engine.registry.calls == {} and engine.registry.legs == {}
