"""Contract §4, row by row, plus correlation, fallbacks and persistence."""

from __future__ import annotations

import json

import pytest

from engine import (
    CallsSnapshot,
    CallState,
    CallUpdated,
    Engine,
    Member,
    PbxRequest,
    Rejected,
    RequestFinished,
    StartTimer,
    TransferRequested,
)
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
    requests_in,
)


def final(h: Harness, transfer_id: str = "t1") -> tuple[str, str | None]:
    r = h.resource(transfer_id)
    return r["state"], r["reason"]


# -- §4 rows ---------------------------------------------------------------


def test_target_answers_complete_after_answer_delay() -> None:
    h = Harness()
    h.consulting(answer_delay_s=2.0)
    assert not requests_in(h.target("ANSWER")), "nothing before answer_delay_s"
    delay = [t for t in h.timers.values() if t.timer.startswith("answer_delay")]
    assert delay and delay[0].at == pytest.approx(h.now + 2.0)
    h.result(only_request(h.fire("answer_delay")))
    assert final(h) == ("completed", "policy")


def test_target_answers_threeway_policy_joins_all_three() -> None:
    h = Harness()
    h.consulting(on_answer="threeway")
    req = only_request(h.target("ANSWER"))
    assert req.action == "threeway"
    h.result(req)
    assert h.state() == "threeway"


def test_target_answers_hold_policy_waits_for_operator() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    assert not requests_in(h.target("ANSWER"))
    assert h.state() == "consulting" and h.resource()["target"]["status"] == "answered"
    h.result(only_request(h.op("complete")))
    assert final(h) == ("completed", "operator")


def test_no_answer_timeout_aborts_then_dials_next_fallback() -> None:
    h = Harness()
    h.consulting(no_answer_timeout_s=5, fallback_numbers=["2008"])
    abort = only_request(h.fire("no_answer"))
    assert abort.action == "abort"
    start2 = only_request(h.result(abort))
    assert (start2.action, start2.number) == ("start", "2008")
    assert h.state() == "idle" and h.resource()["attempt"] == 2
    h.result(start2, call_id="1700000000.3")
    h.leg("1700000000.3", "extension", "2008", "PJSIP/2008-000000c1", "RING")
    h.result(only_request(h.leg("1700000000.3", "extension", "2008", "PJSIP/2008-000000c1", "ANSWER")))
    assert final(h) == ("completed", "policy")
    triggers = [e["trigger"] for e in h.resource()["history"]]
    assert triggers == ["initiated", "no_answer", "fallback", "policy"]


def test_no_answer_timeout_without_fallback_aborts_no_answer() -> None:
    h = Harness()
    h.consulting()
    h.result(only_request(h.fire("no_answer")))
    assert final(h) == ("aborted", "no_answer")


@pytest.mark.parametrize(
    ("how", "reason"), [("busy", "target_busy"), ("declined", "target_busy"), ("hangup", "target_hangup")]
)
def test_target_fails_before_answer_aborts_with_reason(how: str, reason: str) -> None:
    h = Harness()
    h.consulting()
    if how == "busy":
        out = h.failed("486 Busy Here")
    elif how == "declined":
        out = h.failed("603 Declined")
    else:
        out = h.target("BYE")
    h.result(only_request(out))
    assert final(h) == ("aborted", reason)


def test_abort_answered_data_not_found_means_pbx_already_rebridged() -> None:
    h = Harness()
    h.consulting()
    h.result(only_request(h.failed()), "refused", errcode=60001, gone=True)
    assert final(h) == ("aborted", "target_busy")


def test_busy_target_with_fallback_tries_next() -> None:
    h = Harness()
    h.consulting(fallback_numbers=["2008"])
    nxt = only_request(h.result(only_request(h.failed())))
    assert (nxt.action, nxt.number) == ("start", "2008")


def test_fallback_chain_of_three_targets() -> None:
    h = Harness()
    h.consulting(fallback_numbers=["2008", "2010"], no_answer_timeout_s=3)
    # attempt 1 busy, attempt 2 no answer, attempt 3 answers
    start2 = only_request(h.result(only_request(h.failed())))
    h.result(start2, call_id="c2")
    h.leg("c2", "extension", "2008", "PJSIP/2008-1", "RING")
    start3 = only_request(h.result(only_request(h.fire("no_answer"))))
    assert start3.number == "2010"
    h.result(start3, call_id="c3")
    h.leg("c3", "extension", "2010", "PJSIP/2010-1", "RING")
    h.result(only_request(h.leg("c3", "extension", "2010", "PJSIP/2010-1", "ANSWER")))
    assert final(h) == ("completed", "policy")
    assert [r.number for r in h.requests("start")] == [TARGET_NUMBER, "2008", "2010"]
    assert len(h.requests("complete")) == 1


def test_target_hangs_up_after_answering_cleans_up_and_aborts() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    abort = only_request(h.target("BYE"))
    assert abort.action == "abort"
    h.result(abort)
    assert final(h) == ("aborted", "target_hangup")
    assert not h.requests("start")[1:], "no fallback after the target answered"


def test_transferee_hangup_before_consultation_accepted_keeps_its_reason() -> None:
    h = Harness()
    h.setup_call()
    start = h.start()
    h.transferee("BYE")
    h.transferor("BYE")  # the PBX drops the transferor too
    h.result(start, "refused", errcode=60001, gone=True)
    assert final(h) == ("aborted", "transferee_hangup")


def test_transferee_hangs_up_cleans_up_consultation() -> None:
    h = Harness()
    h.consulting()
    abort = only_request(h.transferee("BYE"))
    h.result(abort)
    assert final(h) == ("aborted", "transferee_hangup")


def test_transferor_hangup_with_complete_policy_completes() -> None:
    h2 = Harness()
    h2.consulting(on_answer="hold")
    h2.target("ANSWER")
    complete = only_request(h2.transferor("BYE"))
    h2.result(complete)
    assert final(h2) == ("completed", "transferor_hangup")


def test_transferor_hangup_with_abort_policy_hangs_up_target() -> None:
    h = Harness()
    h.consulting(on_transferor_hangup="abort")
    hangup = only_request(h.transferor("BYE"))
    assert (hangup.action, hangup.channel_id) == ("hangup", TARGET)
    h.result(hangup)
    assert final(h) == ("aborted", "transferor_hangup")


def test_threeway_then_transferor_leaves_completes() -> None:
    h = Harness()
    h.consulting(on_answer="threeway")
    h.result(only_request(h.target("ANSWER")))
    assert not requests_in(h.transferor("BYE"))
    assert final(h) == ("completed", "transferor_hangup")


# -- races, duplicates, at-most-once ------------------------------------------


def test_answer_before_timeout_wins_and_timer_is_stale() -> None:
    h = Harness()
    h.consulting()
    complete = only_request(h.target("ANSWER"))
    assert not requests_in(h.fire("no_answer")), "the timer was disarmed by the answer"
    h.result(complete)
    assert final(h) == ("completed", "policy")


def test_timeout_before_answer_wins_and_answer_is_ignored() -> None:
    h = Harness()
    h.consulting()
    abort = only_request(h.fire("no_answer"))
    assert not requests_in(h.target("ANSWER")), "abort in flight: no complete"
    h.result(abort)
    assert final(h) == ("aborted", "no_answer")
    assert not h.requests("complete")


def test_operator_complete_racing_target_hangup_sends_one_request() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    complete = only_request(h.op("complete"))
    assert not requests_in(h.target("BYE"))
    h.result(complete)
    assert final(h) == ("completed", "operator")
    assert len(h.requests()) == 2  # start + complete


def test_duplicated_frames_change_nothing() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    for _ in range(3):
        h.target("RING")
        h.target("ANSWER")
        h.transferee("HOLD")
    assert len(h.requests()) == 1 and h.resource()["target"]["status"] == "answered"


def test_late_ring_after_bye_does_not_resurrect_leg() -> None:
    h = Harness()
    h.setup_call()
    h.leg("c9", "extension", "2010", "PJSIP/2010-9", "BYE")
    h.leg("c9", "extension", "2010", "PJSIP/2010-9", "RING")
    assert h.engine.registry.leg("PJSIP/2010-9") is None


def test_refused_complete_is_never_resent() -> None:
    h = Harness()
    h.consulting()
    complete = only_request(h.target("ANSWER"))
    abort = only_request(h.result(complete, "refused", errcode=10009))
    assert abort.action == "abort", "a policy complete the PBX refused gives the call back"
    h.result(abort)
    assert final(h) == ("aborted", "pbx_error")
    assert len(h.requests("complete")) == 1


# -- correlation variants (the PBX's behaviour is unconfirmed) ---------------


@pytest.mark.parametrize("variant", ["new_call", "original_call", "unreturned_call", "leg_before_result"])
def test_target_leg_correlated_in_every_variant(variant: str) -> None:
    h = Harness()
    h.setup_call()
    start = h.start()
    if variant == "leg_before_result":
        h.target("RING", call_id=CONSULT)
        h.result(start, call_id=CONSULT)
    elif variant == "new_call":
        h.result(start, call_id=CONSULT)
        h.transferor("ANSWER", call_id=CONSULT)  # transferor re-reported under the new call
        h.target("RING", call_id=CONSULT)
    elif variant == "original_call":
        h.result(start, call_id=CALL)
        h.target("RING", call_id=CALL)
    else:
        h.result(start, call_id=CALL)
        h.target("RING", call_id="1700000000.77")
    assert h.resource()["target"]["channel_id"] == TARGET
    assert (
        only_request(
            h.target(
                "ANSWER",
                call_id={"original_call": CALL, "unreturned_call": "1700000000.77"}.get(variant, CONSULT),
            )
        ).action
        == "complete"
    )


def test_transferors_own_new_leg_in_consult_call_is_not_the_target() -> None:
    h = Harness()
    h.setup_call()
    h.result(h.start(), call_id=CONSULT)
    h.leg(CONSULT, "extension", "2005", "PJSIP/2005-000000c0", "ALERT")  # the transferor's side, new channel
    assert h.resource()["target"]["channel_id"] is None
    h.target("RING")
    assert h.resource()["target"]["channel_id"] == TARGET


def test_unrelated_leg_with_other_number_is_not_taken_for_target() -> None:
    h = Harness()
    h.setup_call()
    h.result(h.start(), call_id=CALL)
    h.leg("other", "extension", "3001", "PJSIP/3001-1", "RING")
    assert h.resource()["target"]["channel_id"] is None


# -- requests: extension resolution, conflicts ------------------------------


def test_extension_resolution_and_errors() -> None:
    h = Harness()
    with pytest.raises(Rejected) as info:
        h.feed(TransferRequested(h.now, "t1", "2008", extension="2005"))
    assert info.value.code == "no_active_call"
    h.setup_call()
    h.leg("c2", "extension", "2005", "PJSIP/2005-000000ff", "HOLD")
    out = h.feed(TransferRequested(h.now, "t1", "2008", extension="2005"))
    assert only_request(out).channel_id == TRANSFEROR, "the talking leg is preferred over a held one"
    h.leg("c3", "extension", "2005", "PJSIP/2005-00000100", "ANSWER")
    with pytest.raises(Rejected) as info:
        h.feed(TransferRequested(h.now, "t2", "2008", extension="2005"))
    assert info.value.code == "ambiguous" and "channel_id" in info.value.detail


def test_second_transfer_on_same_channel_is_in_progress() -> None:
    h = Harness()
    h.consulting()
    with pytest.raises(Rejected) as info:
        h.feed(TransferRequested(h.now, "t2", "2008", channel_id=TRANSFEROR))
    assert info.value.code == "transfer_in_progress"


def test_blind_transfer_moves_the_named_member() -> None:
    h = Harness()
    h.setup_call()
    blind = only_request(h.feed(TransferRequested(h.now, "b1", "2008", type="blind", channel_id=TRANSFEREE)))
    assert (blind.action, blind.channel_id, blind.dial_permission) == ("blind", TRANSFEREE, "2005")
    h.result(blind)
    assert final(h, "b1") == ("completed", "blind")
    assert [e["to"] for e in h.resource("b1")["history"]] == ["completed"]


def test_blind_transfer_refused_is_pbx_error() -> None:
    h = Harness()
    h.setup_call()
    blind = only_request(h.feed(TransferRequested(h.now, "b1", "2008", type="blind", channel_id=TRANSFEREE)))
    h.result(blind, "refused", errcode=40002)
    assert final(h, "b1") == ("aborted", "pbx_error")


# -- persistence ---------------------------------------------------------------


def test_export_restore_round_trip_resumes_without_reentering() -> None:
    h = Harness()
    h.consulting(no_answer_timeout_s=10, fallback_numbers=["2008"])
    data = json.loads(json.dumps(h.engine.export("t1")))  # must survive JSON
    fresh = Engine()
    fresh.handle(
        CallUpdated(
            h.now,
            CALL,
            (
                Member("inbound", "94424722", TRANSFEREE, "HOLD"),
                Member("extension", "2005", TRANSFEROR, "ANSWER"),
            ),
        )
    )
    fresh.handle(CallUpdated(h.now, CONSULT, (Member("outbound", TARGET_NUMBER, TARGET, "RING"),)))
    out = fresh.restore([data])
    assert [type(c) for c in out] == [StartTimer], "only the armed timer again; no request re-sent"
    assert fresh.transfer("t1") == h.engine.transfer("t1")
    complete = fresh.handle(
        CallUpdated(h.now + 1, CONSULT, (Member("outbound", TARGET_NUMBER, TARGET, "ANSWER"),))
    )
    assert [c.action for c in complete if isinstance(c, PbxRequest)] == ["complete"]


def test_restore_with_request_in_flight_reconciles_instead_of_resending() -> None:
    h = Harness()
    h.consulting()
    only_request(h.target("ANSWER"))  # complete sent; then the service dies
    data = h.engine.export("t1")
    fresh = Engine()
    out = fresh.restore([data])
    assert queries_in(out) and not requests_in(out)
    # the PBX shows the transfer done: transferor gone, the other two talking
    out = fresh.handle(
        CallsSnapshot(
            h.now,
            (
                CallState(
                    CALL,
                    (
                        member("inbound", "94424722", TRANSFEREE, "ANSWER"),
                        member("outbound", TARGET_NUMBER, TARGET, "ANSWER"),
                    ),
                ),
            ),
        )
    )
    assert not requests_in(out)
    assert fresh.transfer("t1")["state"] == "completed"  # type: ignore[index]


def test_snapshot_where_every_leg_vanished_is_lost() -> None:
    h = Harness()
    h.consulting()
    out = h.snapshot()
    assert not requests_in(out)
    assert final(h) == ("aborted", "lost")


def test_restore_rejects_bogus_state() -> None:
    h = Harness()
    h.consulting()
    data = h.engine.export("t1")
    data["state"] = "ringing"
    with pytest.raises(ValueError):
        Engine().restore([data])


def test_registry_forgets_ended_calls() -> None:
    h = Harness()
    h.consulting()
    h.result(only_request(h.target("ANSWER")))
    h.ended(CALL)
    h.ended(CONSULT)
    assert h.engine.registry.calls == {} and h.engine.registry.legs == {}


# -- a decision the runtime could not make durable never left -----------------


def test_unsent_operator_complete_may_be_asked_again() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    complete = only_request(h.op("complete"))
    h.feed(
        RequestFinished(h.now, "t1", complete.request_id, "refused", errmsg="not sent: locked", sent=False)
    )
    assert h.state() == "consulting" and "complete" in h.engine.get("t1").allowed_ops()  # type: ignore[union-attr]
    assert only_request(h.op("complete")).action == "complete"


def test_unsent_policy_complete_is_decided_again_after_a_pause() -> None:
    h = Harness()
    h.consulting()
    complete = only_request(h.target("ANSWER"))
    out = h.feed(RequestFinished(h.now, "t1", complete.request_id, "refused", errmsg="not sent", sent=False))
    assert not requests_in(out), "no tight loop while the store fails"
    again = only_request(h.fire("retry"))
    assert again.action == "complete"
    h.result(again)
    assert final(h) == ("completed", "policy")


def test_unsent_first_start_ends_the_transfer() -> None:
    h = Harness()
    h.setup_call()
    start = h.start()
    h.feed(RequestFinished(h.now, "t1", start.request_id, "refused", errmsg="not sent", sent=False))
    assert final(h) == ("aborted", "pbx_error")


def test_unknown_start_not_seen_by_the_pbx_is_cleaned_up_then_refused() -> None:
    h = Harness()
    h.setup_call()
    start = h.start()
    assert queries_in(h.result(start, "unknown"))
    view = (
        CALL,
        (
            member("inbound", "94424722", TRANSFEREE, "HOLD"),
            member("extension", "2005", TRANSFEROR, "ANSWER"),
        ),
    )
    assert not requests_in(h.snapshot(view)), "a busy PBX may still act: look again before deciding"
    assert queries_in(h.fire("recheck"))
    cleanup = only_request(h.snapshot(view))
    assert cleanup.action == "abort", "the start may have half happened: give the held caller back"
    h.result(cleanup, "refused", errcode=60001, gone=True)
    assert final(h) == ("aborted", "pbx_error")


def test_unknown_complete_that_did_not_happen_gives_the_caller_back() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    complete = only_request(h.op("complete"))
    assert queries_in(h.result(complete, "unknown"))
    everyone = (
        (
            CALL,
            (
                member("inbound", "94424722", TRANSFEREE, "HOLD"),
                member("extension", "2005", TRANSFEROR, "ANSWER"),
            ),
        ),
        (CONSULT, (member("outbound", TARGET_NUMBER, TARGET, "ANSWER"),)),
    )
    assert not requests_in(h.snapshot(*everyone))
    assert queries_in(h.fire("recheck"))
    abort = only_request(h.snapshot(*everyone))
    assert abort.action == "abort", "never a second complete: abort instead"
    h.result(abort)
    assert final(h) == ("aborted", "pbx_error")
    assert len(h.requests("complete")) == 1


def test_unknown_complete_carried_out_late_is_seen_on_the_second_look() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    h.target("ANSWER")
    complete = only_request(h.op("complete"))
    h.result(complete, "unknown")
    before = (
        (
            CALL,
            (
                member("inbound", "94424722", TRANSFEREE, "HOLD"),
                member("extension", "2005", TRANSFEROR, "ANSWER"),
            ),
        ),
        (CONSULT, (member("outbound", TARGET_NUMBER, TARGET, "ANSWER"),)),
    )
    assert not requests_in(h.snapshot(*before))
    h.fire("recheck")
    # meanwhile the PBX carried the complete out: the transferor is gone
    after = (
        (
            CALL,
            (
                member("inbound", "94424722", TRANSFEREE, "ANSWER"),
                member("outbound", TARGET_NUMBER, TARGET, "ANSWER"),
            ),
        ),
    )
    assert not requests_in(h.snapshot(*after))
    assert final(h) == ("completed", "operator")
