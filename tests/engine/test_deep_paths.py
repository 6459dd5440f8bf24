"""Deep paths mutation testing showed the other tests did not pin down.

Each test names the decision it checks; they sit behind a refusal, an unknown
outcome settled by a snapshot, or a record saved by an older version.
"""

from __future__ import annotations

import json

from engine.transfer import Transfer
from tests.engine.harness import (
    CALL,
    CONSULT,
    TARGET,
    TARGET_NUMBER,
    TRANSFEREE,
    TRANSFEROR,
    Harness,
    member,
    only_request,
    queries_in,
)


def final(h: Harness) -> tuple[str, str | None]:
    r = h.resource()
    return r["state"], r["reason"]


def _legs(transferee: str = "HOLD", target: str | None = "RING", transferor: bool = True) -> list:
    original = [member("inbound", "94424722", TRANSFEREE, transferee)]
    if transferor:
        original.append(member("extension", "2005", TRANSFEROR, "ANSWER"))
    calls = [(CALL, tuple(original))]
    if target is not None:
        calls.append((CONSULT, (member("outbound", TARGET_NUMBER, TARGET, target),)))
    return calls


def test_a_refused_give_back_abort_ends_the_transfer() -> None:
    """Policy complete refused → abort to give the caller back → refused too → aborted, not stuck."""
    h = Harness()
    h.consulting()
    complete = only_request(h.target("ANSWER"))
    abort = only_request(h.result(complete, "refused", errcode=10004))
    assert abort.action == "abort"
    h.result(abort, "refused", errcode=10004)
    assert final(h) == ("aborted", "pbx_error")


def test_an_unknown_swap_seen_done_in_the_snapshot_moves_to_swapped() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    swap = only_request(h.op("swap"))
    assert queries_in(h.result(swap, "unknown"))
    h.snapshot(*_legs(transferee="ANSWER", target="HOLD"))
    assert h.state() == "swapped"


def test_an_unknown_threeway_is_not_taken_as_done_once_the_transferor_left() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    threeway = only_request(h.op("threeway"))
    h.result(threeway, "unknown")
    h.snapshot(*_legs(transferee="ANSWER", target="ANSWER", transferor=False))
    assert h.state() != "threeway"


def test_a_refused_clean_up_hangup_ends_the_transfer() -> None:
    """Transferor gone, policy abort: the target leg is hung up; a refusal still ends it."""
    h = Harness()
    h.consulting(on_transferor_hangup="abort")
    hangup = only_request(h.transferor("BYE"))
    assert (hangup.action, hangup.channel_id) == ("hangup", TARGET)
    h.result(hangup, "refused", errcode=10004)
    assert final(h) == ("aborted", "transferor_hangup")


def test_a_start_refused_after_the_transferor_left_says_so() -> None:
    h = Harness()
    h.setup_call()
    start = h.start()
    h.transferor("BYE")
    h.result(start, "refused", errcode=10004)
    assert final(h) == ("aborted", "transferor_hangup")


def test_an_abort_that_twice_did_not_happen_hangs_the_target_up() -> None:
    h = Harness()
    h.consulting()
    abort = only_request(h.op("abort"))
    view = _legs(target="RING")  # the target still rings, the transferee is still held
    h.result(abort, "unknown")
    h.snapshot(*view)  # not done: a second look later
    h.fire("recheck")
    h.snapshot(*view)
    again = h.requests()[-1]
    assert again.action == "abort" and again.request_id != abort.request_id
    h.result(again, "unknown")
    h.snapshot(*view)
    h.fire("recheck")
    h.snapshot(*view)
    hangup = h.requests()[-1]
    assert (hangup.action, hangup.channel_id) == ("hangup", TARGET)
    h.result(hangup)
    assert final(h) == ("aborted", "operator")


def test_a_record_from_an_older_version_keeps_the_defaults_of_newer_facts() -> None:
    h = Harness()
    h.consulting()
    h.result(only_request(h.op("abort")), "unknown")
    old = json.loads(json.dumps(h.engine.export("t1")))
    for fact in ("abort_resent", "operator_took_over", "unsent"):
        del old[fact]
    del old["pending"]["channel_id"]
    del old["pending"]["rechecked"]
    restored = Transfer.restore(old)
    assert (restored.abort_resent, restored.operator_took_over, restored.unsent) == (False, False, None)
    assert restored.pending is not None
    assert (restored.pending.channel_id, restored.pending.rechecked) == ("", False)
