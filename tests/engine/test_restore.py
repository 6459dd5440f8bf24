"""Every fact a transfer keeps survives the store: export → JSON → restore → export is the same.

A restart must resume each transfer exactly where it was (contract: no
decision lost or repeated), so each fact is checked in a state where it
matters — a request in flight, a decision that could not be sent, a swap, a
three-way call, a final state — and records saved by an older version still
resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from engine import Engine, RequestFinished, StartTimer
from engine.transfer import Transfer
from tests.engine.harness import CALL, CONSULT, TARGET, TRANSFEROR, Harness, only_request


def _consulting_unknown_complete() -> Harness:
    h = Harness()
    h.consulting()
    h.result(only_request(h.target("ANSWER")), "unknown")
    return h


def _unsent_policy_complete() -> Harness:
    h = Harness()
    h.consulting()
    complete = only_request(h.target("ANSWER"))
    h.feed(RequestFinished(h.now, "t1", complete.request_id, "refused", errmsg="not sent", sent=False))
    return h


def _unsent_fallback_start() -> Harness:
    h = Harness()
    h.consulting(fallback_numbers=["2008"])
    abort = only_request(h.failed())
    start = only_request(h.result(abort))
    h.feed(RequestFinished(h.now, "t1", start.request_id, "refused", errmsg="not sent", sent=False))
    return h


def _swapped() -> Harness:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    h.result(only_request(h.op("swap")))
    return h


def _threeway() -> Harness:
    h = Harness()
    h.consulting(on_answer="threeway", answer_delay_s=2)
    h.target("ANSWER")
    h.result(only_request(h.fire("answer_delay")))
    return h


def _completed() -> Harness:
    h = Harness()
    h.consulting()
    h.result(only_request(h.target("ANSWER")))
    return h


SCENARIOS: dict[str, Callable[[], Harness]] = {
    "consulting, complete of unknown outcome": _consulting_unknown_complete,
    "consulting, a policy complete never sent": _unsent_policy_complete,
    "idle, a fallback start never sent": _unsent_fallback_start,
    "swapped": _swapped,
    "threeway": _threeway,
    "completed": _completed,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_export_survives_the_store_and_a_restore(name: str) -> None:
    h = SCENARIOS[name]()
    saved = h.engine.export("t1")
    stored: dict[str, Any] = json.loads(json.dumps(saved))
    again = Transfer.restore(stored)
    assert again.export() == stored
    original = h.engine.get("t1")
    assert original is not None
    assert again.resource() == original.resource()
    for fact in ("original_call_id", "dial_permission", "numbers", "created_at", "unsent", "pending"):
        assert again.export()[fact] == stored[fact], fact
    assert stored["original_call_id"] == CALL
    assert again.unsent == original.unsent


def test_a_restored_transfer_sends_what_never_left_when_its_retry_fires() -> None:
    h = _unsent_fallback_start()
    fresh = Harness()
    fresh.now = h.now
    fresh.engine = Engine(h.engine.policy)
    out = fresh.engine.restore([json.loads(json.dumps(h.engine.export("t1")))])
    fresh.commands.extend(out)
    fresh.timers = {c.timer: c for c in out if isinstance(c, StartTimer)}
    start = only_request(fresh.fire("retry"))
    assert (start.action, start.number, start.channel_id) == ("start", "2008", TRANSFEROR)


def test_a_record_saved_before_unsent_existed_still_retries_its_start() -> None:
    h = _unsent_fallback_start()
    old = json.loads(json.dumps(h.engine.export("t1")))
    del old["unsent"]
    old["unsent_start"] = True
    restored = Transfer.restore(old)
    assert restored.unsent == ("start", ("consulting", "fallback"), TRANSFEROR)


def test_the_consultation_call_and_target_leg_survive_a_restore() -> None:
    h = Harness()
    h.consulting()
    saved = json.loads(json.dumps(h.engine.export("t1")))
    restored = Transfer.restore(saved)
    assert (restored.start_call_id, restored.target_channel, restored.original_call_id) == (
        CONSULT,
        TARGET,
        CALL,
    )
