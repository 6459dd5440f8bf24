"""Deep paths mutation testing showed the other tests did not pin down.

Each test names the decision it checks; they sit behind a refusal, an unknown
outcome settled by a snapshot, or a record saved by an older version.
"""

from __future__ import annotations

import json

import pytest

from engine import Rejected, RequestFinished
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
    assert h.state() == "consulting"  # not taken as joined: a second look is due
    assert any(tag.startswith("recheck#") for tag in h.engine.get("t1").timers)  # type: ignore[union-attr]


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


def test_an_answer_delay_that_ends_before_the_start_is_accepted_still_completes() -> None:
    """The target answered and answer_delay_s passed while the start was in flight (finding 1)."""
    h = Harness()
    h.setup_call()
    start = h.start(answer_delay_s=1.0)
    h.target("RING")
    h.target("ANSWER")
    assert h.state() == "idle"
    h.fire("answer_delay")
    complete = only_request(h.result(start, call_id=CONSULT))
    assert complete.action == "complete"


def test_with_the_target_gone_and_nothing_in_flight_only_abort_is_allowed() -> None:
    h = Harness()
    h.consulting()
    abort = only_request(h.failed())  # busy: the consultation is aborted …
    h.feed(RequestFinished(h.now, "t1", abort.request_id, "refused", errmsg="not sent", sent=False))
    transfer = h.engine.get("t1")  # … but that abort could not be sent yet
    assert transfer is not None
    assert (transfer.state, transfer.pending, transfer.target_status) == ("consulting", None, "gone")
    assert transfer.allowed_ops() == ["abort"]


def test_a_party_hanging_up_after_the_end_changes_nothing() -> None:
    h = Harness()
    h.consulting()
    h.result(only_request(h.target("ANSWER")))
    before = h.resource()
    h.tick(5)
    out = h.transferee("BYE")
    assert h.resource() == before
    assert not [c for c in out if type(c).__name__ == "TransferChanged"]


def test_409_details_say_why() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    complete = only_request(h.op("complete"))
    with pytest.raises(Rejected) as in_flight:
        h.op("abort")
    assert "its complete request is still awaiting the PBX's answer;" in in_flight.value.detail
    h.result(complete, "refused", errcode=10004)  # an operator's complete refused: nothing changes
    with pytest.raises(Rejected) as second:
        h.op("complete")
    assert "already sent its one complete request" in second.value.detail


def test_the_threeway_policy_is_named_in_the_history() -> None:
    h = Harness()
    h.consulting(on_answer="threeway")
    h.result(only_request(h.target("ANSWER")))
    assert h.resource()["history"][-1]["trigger"] == "policy"
    assert h.state() == "threeway"


def test_transferor_and_target_gone_with_nothing_in_flight_ends_the_transfer() -> None:
    h = Harness()
    h.consulting()
    abort = only_request(h.failed())  # busy: abort …
    h.feed(RequestFinished(h.now, "t1", abort.request_id, "refused", errmsg="not sent", sent=False))
    h.tick(0.5)
    h.transferor("BYE")  # … which could not be sent; now the transferor is gone too
    assert final(h) == ("aborted", "transferor_hangup")
    assert h.resource()["history"][-1]["at"] == h.resource()["updated_at"]


def test_a_swap_holds_the_answered_target() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    h.result(only_request(h.op("swap")))
    assert h.resource()["target"]["status"] == "held"


def test_a_sub_second_answer_delay_is_a_delay() -> None:
    h = Harness()
    h.consulting(answer_delay_s=0.5)
    out = h.target("ANSWER")
    assert not [c for c in out if type(c).__name__ == "PbxRequest"], "no complete before the delay"
    timers = [c for c in out if type(c).__name__ == "StartTimer"]
    assert len(timers) == 1 and timers[0].at == h.now + 0.5  # type: ignore[attr-defined]


def test_an_operator_hangup_refused_as_gone_is_done() -> None:
    """In three-way, 'complete' hangs the transferor up; 'gone' means it already left."""
    h = Harness()
    h.consulting(on_answer="threeway")
    h.result(only_request(h.target("ANSWER")))
    hangup = only_request(h.op("complete"))
    h.result(hangup, "refused", errcode=60001, gone=True)
    assert final(h) == ("completed", "operator")


def test_a_refused_complete_after_the_transferor_left_gives_the_caller_back() -> None:
    h = Harness()
    h.consulting()
    complete = only_request(h.transferor("BYE"))
    assert complete.action == "complete"
    abort = only_request(h.result(complete, "refused", errcode=10004))
    assert abort.action == "abort"


def test_the_transferor_leaving_before_any_target_leg_aborts_the_consultation() -> None:
    h = Harness()
    h.setup_call()
    h.result(h.start(on_transferor_hangup="abort"), call_id=CONSULT)  # no target leg seen yet
    abort = only_request(h.transferor("BYE"))
    assert (abort.action, abort.channel_id) == ("abort", TRANSFEROR)


def test_a_refused_clean_up_after_the_answered_target_hung_up_ends_the_transfer() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    abort = only_request(h.target("BYE"))
    h.result(abort, "refused", errcode=10004)
    assert final(h) == ("aborted", "target_hangup")


def test_a_refused_threeway_policy_is_not_asked_again_while_its_give_back_abort_waits() -> None:
    """Threeway policy refused → give-back abort, which the store could not record: the
    retry sends that abort, and the policy's threeway is never asked a second time."""
    h = Harness()
    h.consulting(on_answer="threeway")
    threeway = only_request(h.target("ANSWER"))
    assert threeway.action == "threeway"
    abort = only_request(h.result(threeway, "refused", errcode=10004))
    assert abort.action == "abort"
    h.feed(RequestFinished(h.now, "t1", abort.request_id, "refused", errmsg="not sent", sent=False))
    again = only_request(h.fire("retry"))
    assert again.action == "abort"
    assert len(h.requests("threeway")) == 1
    h.result(again)
    assert final(h) == ("aborted", "pbx_error")


def test_an_abort_twice_unknown_with_only_the_hold_left_still_dials_the_fallback() -> None:
    """The target was busy: the consultation's abort timed out twice, and the PBX shows the
    target leg gone with the transferee still held.  Only the hold is left, so the abort
    counts as done and the next number is dialled (not taken as a refusal that ends it)."""
    h = Harness()
    h.consulting(fallback_numbers=["5503302"])
    abort = only_request(h.failed())
    assert abort.action == "abort"
    h.ended(CONSULT)
    view = _legs(transferee="HOLD", target=None)
    h.result(abort, "unknown")
    h.snapshot(*view)
    h.fire("recheck")
    again = only_request(h.snapshot(*view))
    assert again.action == "abort" and again.request_id != abort.request_id
    h.result(again, "unknown")
    h.snapshot(*view)
    h.fire("recheck")
    fallback = only_request(h.snapshot(*view))
    assert (fallback.action, fallback.number) == ("start", "5503302")
    assert h.state() != "aborted"
