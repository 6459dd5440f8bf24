"""One test per cell of the state × stimulus table (engine/chart.py).

Each case puts a transfer in a state, applies one stimulus and checks the
decided outcome: the transition, the idempotent ignore, or the rejection.
``test_every_cell_has_a_case`` keeps this file and the table in step.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine import STATES, STIMULI, TABLE, PbxRequest, Rejected, TimerFired
from tests.engine.harness import CALL, CONSULT, TARGET, TRANSFEROR, Harness, member, only_request, queries_in
from tests.engine.harness import requests_in as reqs

# --------------------------------------------------------------------------
# fixtures: one transfer in each state
# --------------------------------------------------------------------------


def in_idle() -> tuple[Harness, PbxRequest]:
    h = Harness()
    h.setup_call()
    return h, h.start()


def in_consulting(**policy: object) -> Harness:
    h = Harness()
    h.consulting(**policy)
    assert h.state() == "consulting"
    return h


def in_swapped(*, answered: bool = True) -> Harness:
    h = in_consulting(on_answer="hold")
    if answered:
        h.target("ANSWER")
    h.result(only_request(h.op("swap")))
    assert h.state() == "swapped"
    return h


def in_threeway() -> Harness:
    h = in_consulting(on_answer="hold")
    h.target("ANSWER")
    h.result(only_request(h.op("threeway")))
    assert h.state() == "threeway"
    return h


def in_completed() -> Harness:
    h = in_consulting()
    h.result(only_request(h.target("ANSWER")))
    assert h.state() == "completed"
    return h


def in_aborted() -> Harness:
    h = in_consulting()
    h.result(only_request(h.op("abort")))
    assert h.state() == "aborted"
    return h


FINAL_FIXTURES = {"completed": in_completed, "aborted": in_aborted}
ACTIVE_FIXTURES: dict[str, Callable[[], Harness]] = {
    "consulting": in_consulting,
    "swapped": in_swapped,
    "threeway": in_threeway,
}


def stale_start_result(h: Harness, outcome: str) -> list[object]:
    start = h.requests("start")[0]
    return h.result(start, outcome)  # type: ignore[return-value]


def rejected(h: Harness, op: str) -> Rejected:
    before = h.resource()
    with pytest.raises(Rejected) as info:
        h.op(op)
    assert info.value.code == "not_allowed"
    assert "allowed now:" in info.value.detail
    assert h.resource() == before, "a rejected op must change nothing"
    return info.value


def nothing_happens(h: Harness, act: Callable[[Harness], object]) -> None:
    before = h.resource()
    out = act(h)
    assert not reqs(out), "an ignored stimulus must send nothing"  # type: ignore[arg-type]
    assert h.resource()["state"] == before["state"]


# --------------------------------------------------------------------------
# idle: the start request is in flight
# --------------------------------------------------------------------------


def idle_start_accepted() -> None:
    h, start = in_idle()
    out = h.result(start, call_id=CONSULT)
    assert h.state() == "consulting" and h.resource()["target"]["status"] == "dialing"
    assert not reqs(out) and h.timers, "the no-answer timer is armed"


def idle_start_refused() -> None:
    h, start = in_idle()
    h.result(start, "refused", errcode=10009)
    assert (h.state(), h.resource()["reason"]) == ("aborted", "pbx_error")


def idle_target_ringing() -> None:
    h, start = in_idle()
    assert not reqs(h.target("RING")) and h.state() == "idle"
    h.result(start, call_id=CONSULT)
    assert h.resource()["target"] == {"number": "5503301", "channel_id": TARGET, "status": "ringing"}


def idle_target_answered() -> None:
    h, start = in_idle()
    assert not reqs(h.target("ANSWER")), "no decision before the consultation is accepted"
    assert only_request(h.result(start, call_id=CONSULT)).action == "complete"


def idle_target_busy() -> None:
    h, start = in_idle()
    h.target("RING")
    assert not reqs(h.failed())
    assert only_request(h.result(start, call_id=CONSULT)).action == "abort"


def idle_target_hangup() -> None:
    h, start = in_idle()
    h.target("RING")
    assert not reqs(h.target("BYE"))
    abort = only_request(h.result(start, call_id=CONSULT))
    h.result(abort)
    assert (h.state(), h.resource()["reason"]) == ("aborted", "target_hangup")


def idle_transferee_hangup() -> None:
    h, start = in_idle()
    assert not reqs(h.transferee("BYE"))
    h.result(only_request(h.result(start, call_id=CONSULT)))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "transferee_hangup")


def idle_transferor_hangup() -> None:
    h, start = in_idle()
    assert not reqs(h.transferor("BYE"))
    h.target("RING")
    assert only_request(h.result(start, call_id=CONSULT)).action == "complete"


def idle_timeout() -> None:
    h, _ = in_idle()
    nothing_happens(h, lambda h: h.feed(TimerFired(h.now, "t1", "no_answer#0#0")))


def idle_result_ok() -> None:
    h, _ = in_idle()
    nothing_happens(h, lambda h: h.feed(PbxResult(h, "t1/99", "ok")))


def idle_result_refused() -> None:
    h, _ = in_idle()
    nothing_happens(h, lambda h: h.feed(PbxResult(h, "t1/99", "refused")))


def idle_result_unknown() -> None:
    h, start = in_idle()
    out = h.result(start, "unknown")
    assert queries_in(out) and h.state() == "idle"
    # the snapshot shows the consultation: the start did happen
    h.snapshot(
        (
            CALL,
            (
                member("inbound", "94424722", "PJSIP/trunk-stc-endpoint-000000a5", "HOLD"),
                member("extension", "2005", TRANSFEROR, "ANSWER"),
            ),
        ),
        (CONSULT, (member("outbound", "5503301", TARGET, "RING"),)),
    )
    assert h.state() == "consulting" and h.resource()["target"]["channel_id"] == TARGET


def PbxResult(h: Harness, request_id: str, outcome: str) -> object:
    from engine import RequestFinished

    return RequestFinished(h.now, "t1", request_id, outcome)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# consulting: target ringing, nothing in flight
# --------------------------------------------------------------------------


def consulting_start_accepted() -> None:
    nothing_happens(in_consulting(), lambda h: stale_start_result(h, "ok"))


def consulting_start_refused() -> None:
    nothing_happens(in_consulting(), lambda h: stale_start_result(h, "refused"))


def consulting_target_ringing() -> None:
    nothing_happens(in_consulting(), lambda h: h.target("RING"))


def consulting_target_answered() -> None:
    h = in_consulting()
    complete = only_request(h.target("ANSWER"))
    assert complete.action == "complete" and complete.channel_id == TRANSFEROR
    h.result(complete)
    assert (h.state(), h.resource()["reason"]) == ("completed", "policy")


def consulting_target_busy() -> None:
    h = in_consulting()
    abort = only_request(h.failed("486 Busy Here"))
    assert abort.action == "abort"
    h.result(abort)
    assert (h.state(), h.resource()["reason"]) == ("aborted", "target_busy")


def consulting_target_hangup() -> None:
    h = in_consulting()
    abort = only_request(h.target("BYE"))
    h.result(abort)
    assert (h.state(), h.resource()["reason"]) == ("aborted", "target_hangup")


def consulting_transferee_hangup() -> None:
    h = in_consulting()
    abort = only_request(h.transferee("BYE"))
    assert abort.action == "abort"
    h.result(abort)
    assert (h.state(), h.resource()["reason"]) == ("aborted", "transferee_hangup")


def consulting_transferor_hangup() -> None:
    h = in_consulting()
    complete = only_request(h.transferor("BYE"))
    assert complete.action == "complete"
    h.result(complete, "refused", errcode=60001, gone=True)
    assert (h.state(), h.resource()["reason"]) == ("completed", "transferor_hangup")


def consulting_timeout() -> None:
    h = in_consulting()
    abort = only_request(h.fire("no_answer"))
    h.result(abort)
    assert (h.state(), h.resource()["reason"]) == ("aborted", "no_answer")


def consulting_op_complete() -> None:
    h = in_consulting()
    h.result(only_request(h.op("complete")))
    assert (h.state(), h.resource()["reason"]) == ("completed", "operator")


def consulting_op_abort() -> None:
    h = in_consulting()
    h.result(only_request(h.op("abort")))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "operator")


def consulting_op_swap() -> None:
    h = in_consulting()
    h.result(only_request(h.op("swap")))
    assert h.state() == "swapped"


def consulting_op_threeway() -> None:
    error = rejected(in_consulting(), "threeway")
    assert "has not answered" in error.detail and "complete, abort, swap" in error.detail


def consulting_result_ok() -> None:
    h = in_consulting(on_answer="hold")
    h.target("ANSWER")
    h.result(only_request(h.op("threeway")))
    assert h.state() == "threeway"


def consulting_result_refused() -> None:
    h = in_consulting()
    swap = only_request(h.op("swap"))
    h.result(swap, "refused", errcode=10009)
    assert h.state() == "consulting", "an operator op the PBX refused changes nothing"
    assert only_request(h.op("swap")).action == "swap", "and may be asked again"


def consulting_result_unknown() -> None:
    h = in_consulting()
    complete = only_request(h.op("complete"))
    assert queries_in(h.result(complete, "unknown"))
    rejected(h, "abort")  # reconciling: nothing else goes out meanwhile
    # the PBX no longer shows the transferor: the complete happened
    h.snapshot(
        (
            CALL,
            (
                member("inbound", "94424722", "PJSIP/trunk-stc-endpoint-000000a5", "ANSWER"),
                member("outbound", "5503301", TARGET, "ANSWER"),
            ),
        )
    )
    assert (h.state(), h.resource()["reason"]) == ("completed", "operator")
    assert len(h.requests("complete")) == 1


# --------------------------------------------------------------------------
# swapped: transferor back with the transferee, target held (or ringing)
# --------------------------------------------------------------------------


def swapped_start_accepted() -> None:
    nothing_happens(in_swapped(), lambda h: stale_start_result(h, "ok"))


def swapped_start_refused() -> None:
    nothing_happens(in_swapped(), lambda h: stale_start_result(h, "refused"))


def swapped_target_ringing() -> None:
    h = in_swapped(answered=False)
    nothing_happens(h, lambda h: h.target("RING"))
    assert h.resource()["target"]["status"] == "ringing"


def swapped_target_answered() -> None:
    h = in_swapped(answered=False)
    assert not reqs(h.target("ANSWER")), "the operator is with the transferee: no automatic complete"
    assert h.resource()["target"]["status"] == "held"


def swapped_target_busy() -> None:
    h = in_swapped(answered=False)
    h.result(only_request(h.failed("User Busy")))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "target_busy")


def swapped_target_hangup() -> None:
    h = in_swapped()
    abort = only_request(h.target("BYE"))
    assert abort.action == "abort", "a clean-up, so the transferee is never left held"
    h.result(abort, "refused", errcode=60001, gone=True)  # the PBX had rebridged already
    assert (h.state(), h.resource()["reason"]) == ("aborted", "target_hangup")


def swapped_transferee_hangup() -> None:
    h = in_swapped()
    h.result(only_request(h.transferee("BYE")))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "transferee_hangup")


def swapped_transferor_hangup() -> None:
    h = in_swapped()
    h.result(only_request(h.transferor("BYE")))
    assert (h.state(), h.resource()["reason"]) == ("completed", "transferor_hangup")


def swapped_timeout() -> None:
    h = in_swapped(answered=False)
    h.result(only_request(h.fire("no_answer")))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "no_answer")


def swapped_op_complete() -> None:
    h = in_swapped()
    h.result(only_request(h.op("complete")))
    assert (h.state(), h.resource()["reason"]) == ("completed", "operator")


def swapped_op_abort() -> None:
    h = in_swapped()
    h.result(only_request(h.op("abort")))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "operator")


def swapped_op_swap() -> None:
    h = in_swapped()
    h.result(only_request(h.op("swap")))
    assert h.state() == "consulting" and h.resource()["target"]["status"] == "answered"


def swapped_op_threeway() -> None:
    h = in_swapped()
    h.result(only_request(h.op("threeway")))
    assert h.state() == "threeway"


def swapped_result_ok() -> None:
    swapped_op_swap()


def swapped_result_refused() -> None:
    h = in_swapped()
    h.result(only_request(h.op("complete")), "refused", errcode=10009)
    assert h.state() == "swapped"
    assert "complete" not in h.engine.get("t1").allowed_ops()  # type: ignore[union-attr]


def swapped_result_unknown() -> None:
    h = in_swapped()
    assert queries_in(h.result(only_request(h.op("swap")), "unknown"))
    h.snapshot(
        (
            CALL,
            (
                member("inbound", "94424722", "PJSIP/trunk-stc-endpoint-000000a5", "HOLD"),
                member("extension", "2005", TRANSFEROR, "ANSWER"),
            ),
        ),
        (CONSULT, (member("outbound", "5503301", TARGET, "ANSWER"),)),
    )
    assert h.state() == "consulting"


# --------------------------------------------------------------------------
# threeway
# --------------------------------------------------------------------------


def threeway_start_accepted() -> None:
    nothing_happens(in_threeway(), lambda h: stale_start_result(h, "ok"))


def threeway_start_refused() -> None:
    nothing_happens(in_threeway(), lambda h: stale_start_result(h, "refused"))


def threeway_target_ringing() -> None:
    nothing_happens(in_threeway(), lambda h: h.target("RING"))


def threeway_target_answered() -> None:
    nothing_happens(in_threeway(), lambda h: h.target("ANSWER"))


def threeway_target_busy() -> None:
    nothing_happens(in_threeway(), lambda h: h.failed())


def threeway_target_hangup() -> None:
    h = in_threeway()
    assert not reqs(h.target("BYE"))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "target_hangup")


def threeway_transferee_hangup() -> None:
    h = in_threeway()
    assert not reqs(h.transferee("BYE"))
    assert (h.state(), h.resource()["reason"]) == ("aborted", "transferee_hangup")


def threeway_transferor_hangup() -> None:
    h = in_threeway()
    assert not reqs(h.transferor("BYE"))
    assert (h.state(), h.resource()["reason"]) == ("completed", "transferor_hangup")


def threeway_timeout() -> None:
    nothing_happens(in_threeway(), lambda h: h.feed(TimerFired(h.now, "t1", "no_answer#0#1")))


def threeway_op_complete() -> None:
    h = in_threeway()
    leave = only_request(h.op("complete"))
    assert (leave.action, leave.channel_id) == ("hangup", TRANSFEROR), "the transferor leaves"
    h.result(leave)
    assert (h.state(), h.resource()["reason"]) == ("completed", "operator")


def threeway_op_abort() -> None:
    h = in_threeway()
    leave = only_request(h.op("abort"))
    assert (leave.action, leave.channel_id) == ("hangup", TARGET), "the target leaves"
    h.result(leave)
    assert (h.state(), h.resource()["reason"]) == ("aborted", "operator")


def threeway_op_swap() -> None:
    assert "allowed now: complete, abort" in rejected(in_threeway(), "swap").detail


def threeway_op_threeway() -> None:
    rejected(in_threeway(), "threeway")


def threeway_result_ok() -> None:
    threeway_op_complete()


def threeway_result_refused() -> None:
    h = in_threeway()
    h.result(only_request(h.op("abort")), "refused", errcode=10009)
    assert h.state() == "threeway"


def threeway_result_unknown() -> None:
    h = in_threeway()
    assert queries_in(h.result(only_request(h.op("complete")), "unknown"))
    # everyone is still there, the transferor included: the hang-up did not happen
    everyone = (
        (
            CALL,
            (
                member("inbound", "94424722", "PJSIP/trunk-stc-endpoint-000000a5", "ANSWER"),
                member("extension", "2005", TRANSFEROR, "ANSWER"),
            ),
        ),
        (CONSULT, (member("outbound", "5503301", TARGET, "ANSWER"),)),
    )
    assert not reqs(h.snapshot(*everyone)), "a first 'did not happen' is looked at again later"
    assert queries_in(h.fire("recheck"))
    h.snapshot(*everyone)
    assert h.state() == "threeway", "the transferor is still there: it did not leave"
    assert "complete" in h.engine.get("t1").allowed_ops()  # type: ignore[union-attr]


# --------------------------------------------------------------------------
# final states absorb everything
# --------------------------------------------------------------------------

FINAL_STIMULI: dict[str, Callable[[Harness], object]] = {
    "start_accepted": lambda h: stale_start_result(h, "ok"),
    "start_refused": lambda h: stale_start_result(h, "refused"),
    "target_ringing": lambda h: h.target("RING"),
    "target_answered": lambda h: h.target("ANSWER"),
    "target_busy": lambda h: h.failed(),
    "target_hangup": lambda h: h.target("BYE"),
    "transferee_hangup": lambda h: h.transferee("BYE"),
    "transferor_hangup": lambda h: h.transferor("BYE"),
    "timeout": lambda h: h.feed(TimerFired(h.now, "t1", "no_answer#0#1")),
    "result_ok": lambda h: h.result(h.requests()[-1], "ok"),
    "result_refused": lambda h: h.result(h.requests()[-1], "refused"),
    "result_unknown": lambda h: h.result(h.requests()[-1], "unknown"),
}


def final_case(state: str, stimulus: str) -> Callable[[], None]:
    def case() -> None:
        h = FINAL_FIXTURES[state]()
        sent = len(h.requests())
        if stimulus.startswith("op_"):
            error = rejected(h, stimulus[3:])
            assert "final state" in error.detail and "allowed now: none" in error.detail
        else:
            before = h.resource()
            out = FINAL_STIMULI[stimulus](h)
            assert h.resource() == before and not queries_in(out)  # type: ignore[arg-type]
        assert len(h.requests()) == sent, "nothing is ever sent after a final state"

    return case


CASES: dict[tuple[str, str], Callable[[], None]] = {}
for _name, _fn in list(globals().items()):
    if callable(_fn) and "_" in _name:
        _state, _, _stimulus = _name.partition("_")
        if _state in STATES and _stimulus in STIMULI:
            CASES[(_state, _stimulus)] = _fn
for _state in FINAL_FIXTURES:
    for _stimulus in STIMULI:
        CASES[(_state, _stimulus)] = final_case(_state, _stimulus)
for _state in ("idle",):
    for _op in ("complete", "abort", "swap", "threeway"):
        CASES[(_state, f"op_{_op}")] = lambda _op=_op: (
            lambda h: rejected(h, _op) and None  # type: ignore[func-returns-value]
        )(in_idle()[0])


def test_every_cell_has_a_case() -> None:
    assert set(CASES) == set(TABLE), sorted(set(TABLE) ^ set(CASES))


@pytest.mark.parametrize(
    ("state", "stimulus"), sorted(TABLE), ids=[f"{s}*{x}->{TABLE[s, x]}" for s, x in sorted(TABLE)]
)
def test_cell(state: str, stimulus: str) -> None:
    CASES[(state, stimulus)]()


# The table of engine/chart.py's docstring, cell by cell, as handler names:
# - ignore, 409 reject, note record the fact, op send the op, res a request's result,
# rec reconcile an unknown outcome, time a timer expiry.
GRID = {
    #                    idle  consulting swapped threeway completed aborted
    "start_accepted":    "res   -     -     -     -     -",
    "start_refused":     "res   -     -     -     -     -",
    "target_ringing":    "note  note  note  -     -     -",
    "target_answered":   "note  note  note  -     -     -",
    "target_busy":       "note  note  note  -     -     -",
    "target_hangup":     "note  note  note  note  -     -",
    "transferee_hangup": "note  note  note  note  -     -",
    "transferor_hangup": "note  note  note  note  -     -",
    "timeout":           "-     time  time  -     -     -",
    "op_complete":       "409   op    op    op    409   409",
    "op_abort":          "409   op    op    op    409   409",
    "op_swap":           "409   op    op    409   409   409",
    "op_threeway":       "409   op    op    409   409   409",
    "result_ok":         "res   res   res   res   -     -",
    "result_refused":    "res   res   res   res   -     -",
    "result_unknown":    "rec   rec   rec   rec   -     -",
}  # fmt: skip
HANDLERS = {
    "-": "ignore", "409": "reject", "note": "note", "op": "operate", "res": "result",
    "rec": "reconcile", "time": "timeout",
}  # fmt: skip


def test_the_table_is_the_documented_grid() -> None:
    """Built afresh (not the copy made at import), the table is the docstring's, cell by cell."""
    from engine.chart import _table

    built = _table()
    assert set(GRID) == set(STIMULI)
    for stimulus, row in GRID.items():
        cells = row.split()
        assert len(cells) == len(STATES), stimulus
        for state, cell in zip(STATES, cells, strict=True):
            assert built[(state, stimulus)] == HANDLERS[cell], f"{state} × {stimulus}"
    assert built == TABLE
