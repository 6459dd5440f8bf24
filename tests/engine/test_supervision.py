"""Supervisor actions in the pure engine: monitor legs never disturb transfers; hang-up and
park of a transfer's leg go through (or are refused by) the transfer.  See engine/supervision.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from adapters.service.rules import parse
from engine import CallUpdated, Engine, Member, Rejected, TransferRequested
from engine.model import (
    HangupRequested,
    MonitorAnswered,
    MonitorRequested,
    ParkRequested,
    PbxRequest,
    RuleNotice,
)
from engine.rules import RuleEngine
from engine.supervision import MONITOR_CLAIM_S
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
    requests_in,
)

SUPERVISOR = "2001"
MONITOR_LEG = "PJSIP/2001-000000c1"
MONITOR_CALL = "1700000000.9"  # a call of the monitor's own (the "new call id" variant)


def final(h: Harness, transfer_id: str = "t1") -> tuple[str, str | None]:
    r = h.resource(transfer_id)
    return r["state"], r["reason"]


def monitor(h: Harness, session: str = "m1", channel: str = TRANSFEROR, mode: str = "listen") -> None:
    h.feed(MonitorRequested(h.now, session, SUPERVISOR, channel, mode))  # type: ignore[arg-type]


def answered(h: Harness, session: str = "m1", call_id: str | None = CALL, outcome: str = "ok") -> None:
    h.feed(MonitorAnswered(h.now, session, outcome, call_id))  # type: ignore[arg-type]


def monitor_leg(h: Harness, status: str, call_id: str = CALL, channel: str = MONITOR_LEG) -> list[object]:
    return list(h.leg(call_id, "extension", SUPERVISOR, channel, status))


# -- monitor legs and the transferee / active call ----------------------------------------


@pytest.mark.parametrize("frame_first", [False, True], ids=["answer-first", "frame-first"])
def test_a_monitor_leg_in_the_call_is_not_the_transferee(frame_first: bool) -> None:
    h = Harness()
    h.setup_call()
    monitor(h)
    if frame_first:  # the monitor's frames beat the PBX's answer
        monitor_leg(h, "RING")
        answered(h)
    else:
        answered(h)
        monitor_leg(h, "RING")
    monitor_leg(h, "ANSWER")
    start = h.start()
    assert h.resource()["transferee"]["channel_id"] == TRANSFEREE
    h.result(start, call_id=CONSULT)
    h.target("RING")
    # The caller hangs up while the target rings: the transfer must notice its transferee left.
    req = only_request(h.transferee("BYE"))
    assert req.action == "abort"
    h.result(req)
    assert final(h) == ("aborted", "transferee_hangup")


def test_the_monitor_leg_is_shown_with_whom_it_monitors_and_never_an_active_call() -> None:
    h = Harness()
    h.setup_call()
    monitor(h, mode="whisper")
    answered(h)
    monitor_leg(h, "ANSWER")
    (call,) = h.engine.calls()
    members = {m["channel_id"]: m for m in call["members"]}  # type: ignore[attr-defined]
    assert members[MONITOR_LEG] == {
        "kind": "extension", "number": SUPERVISOR, "channel_id": MONITOR_LEG, "status": "ANSWER",
        "monitoring": TRANSFEROR, "mode": "whisper",
    }  # fmt: skip
    assert "monitoring" not in members[TRANSFEROR]
    # The supervisor's own extension has no call but the monitor leg: nothing to transfer.
    with pytest.raises(Rejected) as refused:
        h.feed(TransferRequested(h.now, "t9", "2008", extension=SUPERVISOR))
    assert refused.value.code == "no_active_call"
    # ... and with a real call besides, that one is "its call" (not ambiguous).
    h.leg("1700000000.5", "inbound", "5550199", "PJSIP/trunk-x-1", "ANSWERED")
    h.leg("1700000000.5", "extension", SUPERVISOR, "PJSIP/2001-000000d1", "ANSWER")
    h.feed(TransferRequested(h.now, "t9", "2008", extension=SUPERVISOR))
    assert h.resource("t9")["transferor"]["channel_id"] == "PJSIP/2001-000000d1"


def test_whisper_during_a_consultation_is_never_taken_for_the_target() -> None:
    """The hardest case: the consultation awaits its target leg and the monitor's leg
    appears first, in the consultation's own call, carrying a number of its own."""
    h = Harness()
    h.setup_call()
    start = h.start(number=SUPERVISOR)  # even a consultation *to* the supervisor's number
    h.result(start, call_id=CONSULT)
    monitor(h, mode="whisper")
    monitor_leg(h, "RING", call_id=CONSULT)
    monitor_leg(h, "ANSWER", call_id=CONSULT)
    answered(h, call_id=CONSULT)
    assert h.resource()["target"]["channel_id"] is None
    assert not h.requests("complete"), "the supervisor answering is not the target answering"
    target = "PJSIP/2001-000000e1"
    h.leg(CONSULT, "extension", SUPERVISOR, target, "RING")
    assert h.resource()["target"]["channel_id"] == target
    req = only_request(h.leg(CONSULT, "extension", SUPERVISOR, target, "ANSWER"))
    assert req.action == "complete"


def test_a_monitor_known_by_no_number_claims_its_own_call_even_before_the_answer_names_it() -> None:
    """Webex: the barge-in is a call of the user's own, with legs that carry no extension number."""
    h = Harness()
    h.consulting()
    h.feed(MonitorRequested(h.now, "m1", None, None, "barge"))
    user, remote = "Y2FsbC05", "Y2FsbC05/remote"
    h.feed(
        CallUpdated(
            h.now,
            MONITOR_CALL,
            (Member("outbound", TARGET_NUMBER, remote, "RING"), Member("extension", "", user, "ALERT")),
            full=True,
        )
    )
    answered(h, call_id=MONITOR_CALL)
    assert h.resource()["target"]["channel_id"] == TARGET
    assert h.engine.monitors.is_monitor(remote) and h.engine.monitors.is_monitor(user)
    h.feed(
        CallUpdated(
            h.now,
            MONITOR_CALL,
            (Member("outbound", TARGET_NUMBER, remote, "ANSWER"), Member("extension", "", user, "ANSWERED")),
            full=True,
        )
    )
    assert not h.requests("complete")
    req = only_request(h.target("ANSWER"))
    assert req.action == "complete"
    h.ended(MONITOR_CALL)
    assert not h.engine.monitors.sessions and not h.engine.monitors.legs


def test_a_refused_monitor_releases_the_leg_it_claimed() -> None:
    h = Harness()
    h.setup_call()
    monitor(h)
    h.leg("1700000000.5", "inbound", "5550199", "PJSIP/trunk-x-1", "ANSWERED")
    h.leg("1700000000.5", "extension", SUPERVISOR, "PJSIP/2001-000000d1", "ANSWER")  # a real call after all
    answered(h, outcome="refused", call_id=None)
    assert not h.engine.monitors.legs and not h.engine.monitors.sessions
    h.feed(TransferRequested(h.now, "t9", "2008", extension=SUPERVISOR))
    assert h.resource("t9")["transferee"]["channel_id"] == "PJSIP/trunk-x-1"


def test_the_claim_window_and_the_session_end_with_its_leg() -> None:
    h = Harness()
    h.setup_call()
    monitor(h)
    answered(h)
    h.tick(MONITOR_CLAIM_S + 1)
    h.leg("1700000000.5", "extension", SUPERVISOR, "PJSIP/2001-000000d1", "RING")  # too late: a real call
    assert not h.engine.monitors.legs and not h.engine.monitors.sessions
    monitor(h, "m2")
    answered(h, "m2")
    monitor_leg(h, "ANSWER")
    assert h.engine.monitors.is_monitor(MONITOR_LEG)
    monitor_leg(h, "BYE")
    assert not h.engine.monitors.legs and not h.engine.monitors.sessions
    h.leg("1700000000.6", "extension", SUPERVISOR, "PJSIP/2001-000000d2", "RING")
    assert not h.engine.monitors.is_monitor("PJSIP/2001-000000d2")


def test_monitor_requests_name_a_tracked_ordinary_leg() -> None:
    h = Harness()
    with pytest.raises(Rejected) as unknown:
        monitor(h, channel="PJSIP/2005-0000ffff")
    assert unknown.value.code == "not_found"
    h.setup_call()
    monitor(h)
    answered(h)
    monitor_leg(h, "ANSWER")
    with pytest.raises(Rejected) as nested:
        monitor(h, "m2", channel=MONITOR_LEG)
    assert nested.value.code == "not_allowed"


def test_a_monitor_leg_answering_fires_no_rule() -> None:
    engine = Engine()
    engine.rules = RuleEngine(
        parse(
            '[[rules]]\nname = "sup"\non = "call.answered"\nextensions = ["2001"]\n'
            'then = { blind = "2100" }\n',
            "t",
        )
    )
    at = 1_700_000_000.0
    out = []
    for kind, number, channel, status in (
        ("inbound", "5550100", "PJSIP/trunk-a", "ANSWERED"),
        ("extension", "2005", "PJSIP/2005-a", "ANSWER"),
    ):
        out += engine.handle(CallUpdated(at, "c1", (Member(kind, number, channel, status),)))  # type: ignore[arg-type]
    out += engine.handle(MonitorRequested(at, "m1", "2001", "PJSIP/2005-a", "barge"))
    for status in ("RING", "ANSWER"):
        out += engine.handle(CallUpdated(at, "c1", (Member("extension", "2001", "PJSIP/2001-a", status),)))
    out += engine.handle(MonitorAnswered(at, "m1", "ok", "c1"))
    assert not [c for c in out if isinstance(c, RuleNotice | PbxRequest)]


# -- monitor legs never disturb correlation: every interleaving --------------------------

Step = Callable[[Harness], object]

STORY: list[tuple[str, Step]] = [
    ("start", lambda h: h.result(h.start(), call_id=CONSULT)),
    ("target rings", lambda h: h.target("RING")),
    ("target answers", lambda h: h.target("ANSWER")),
]


def _run(
    monitor_call: str | None, at: int | None
) -> tuple[list[tuple[str, str]], tuple[str, str | None], dict]:
    """The standard story (complete on answer), with a monitor session on the transferor whose
    leg appears in ``monitor_call`` right before story step ``at`` (None: no monitor at all)."""
    h = Harness()
    h.setup_call()
    for index, (_, step) in enumerate(STORY):
        if at == index and monitor_call is not None:
            monitor(h)
            call_id = CONSULT if monitor_call == "consultation" else monitor_call
            monitor_leg(h, "RING", call_id=call_id)
            answered(h, call_id=call_id)
            monitor_leg(h, "ANSWER", call_id=call_id)
        step(h)
    complete = h.requests("complete")
    if complete:
        h.result(complete[-1])
    made = [(r.action, r.channel_id) for r in h.requests()]
    resource = h.resource()
    parties = {k: resource[k]["channel_id"] for k in ("transferor", "transferee", "target")}
    return made, final(h), parties


@pytest.mark.parametrize(
    ("monitor_call", "at"),
    list(itertools.product((CALL, "consultation", MONITOR_CALL), range(len(STORY)))),
)
def test_monitor_legs_never_disturb_correlation(monitor_call: str, at: int) -> None:
    baseline = _run(None, None)
    assert baseline[1] == ("completed", "policy")
    assert _run(monitor_call, at) == baseline


# -- hang-up through the transfer -------------------------------------------------------


def hangup(h: Harness, channel: str) -> list[PbxRequest]:
    return requests_in(h.feed(HangupRequested(h.now, channel)))


def test_hanging_up_the_transferor_is_the_transferor_hangup_stimulus() -> None:
    h = Harness()
    h.consulting()
    req = only_request(h.feed(HangupRequested(h.now, TRANSFEROR)))
    assert (req.action, req.channel_id, req.transfer_id) == ("hangup", TRANSFEROR, "t1")
    assert h.resource()["state"] == "consulting"
    complete = only_request(h.result(req))  # on_transferor_hangup = complete
    assert complete.action == "complete"
    h.result(complete, errcode=60001, outcome="refused", gone=True)  # the PBX merged it itself
    assert final(h) == ("completed", "transferor_hangup")


def test_hanging_up_the_transferor_with_abort_policy_hangs_up_the_target() -> None:
    h = Harness()
    h.consulting(on_transferor_hangup="abort")
    h.result(only_request(h.feed(HangupRequested(h.now, TRANSFEROR))))
    (req,) = [r for r in h.requests() if r.channel_id == TARGET]
    assert req.action == "hangup"
    h.result(req)
    assert final(h) == ("aborted", "transferor_hangup")


def test_hanging_up_the_ringing_target_tries_the_next_number() -> None:
    h = Harness()
    h.consulting(fallback_numbers=["2100"])
    (req,) = hangup(h, TARGET)
    abort = only_request(h.result(req))
    assert abort.action == "abort"
    again = only_request(h.result(abort))
    assert (again.action, again.number) == ("start", "2100")


def test_hanging_up_the_transferee_aborts() -> None:
    h = Harness()
    h.consulting()
    (req,) = hangup(h, TRANSFEREE)
    abort = only_request(h.result(req))
    assert abort.action == "abort"
    h.result(abort)
    assert final(h) == ("aborted", "transferee_hangup")


def test_hanging_up_in_threeway_ends_the_transfer() -> None:
    h = Harness()
    h.consulting(on_answer="threeway")
    h.result(only_request(h.target("ANSWER")))
    assert h.state() == "threeway"
    (req,) = hangup(h, TRANSFEROR)
    assert not requests_in(h.result(req))
    assert final(h) == ("completed", "transferor_hangup")


def test_a_hangup_waits_for_the_request_in_flight_and_the_accepted_start() -> None:
    h = Harness()
    h.setup_call()
    start = h.start()
    with pytest.raises(Rejected) as idle:
        hangup(h, TRANSFEROR)
    assert idle.value.code == "not_allowed" and "start" in idle.value.detail
    h.result(start, call_id=CONSULT)
    h.target("RING")
    assert len(hangup(h, TARGET)) == 1
    with pytest.raises(Rejected) as busy:
        hangup(h, TRANSFEROR)
    assert busy.value.code == "not_allowed" and "hangup" in busy.value.detail
    with pytest.raises(Rejected):
        h.op("complete")


def test_a_refused_hangup_changes_nothing_and_an_unknown_one_is_reconciled() -> None:
    h = Harness()
    h.consulting()
    (req,) = hangup(h, TARGET)
    assert not requests_in(h.result(req, outcome="refused", errcode=10009))
    resource = h.resource()
    assert (resource["state"], resource["target"]["status"]) == ("consulting", "ringing")
    assert h.engine.get("t1").allowed_ops() == ["complete", "abort", "swap"]  # type: ignore[union-attr]
    (again,) = hangup(h, TARGET)
    h.result(again, outcome="unknown")
    # The PBX's view: the target is gone.
    abort = only_request(
        h.snapshot(
            (
                CALL,
                (
                    member("inbound", "94424722", TRANSFEREE, "HOLD"),
                    member("extension", "2005", TRANSFEROR, "ANSWER"),
                ),
            )
        )
    )
    assert abort.action == "abort"


def test_a_leg_no_transfer_holds_is_the_services_to_hang_up() -> None:
    h = Harness()
    h.setup_call()
    assert h.feed(HangupRequested(h.now, TRANSFEROR)) == []
    with pytest.raises(Rejected) as unknown:
        h.feed(HangupRequested(h.now, "PJSIP/9999-00000001"))
    assert unknown.value.code == "not_found"


def test_a_pending_hangup_survives_a_restart() -> None:
    h = Harness()
    h.consulting()
    (req,) = hangup(h, TRANSFEROR)
    record = h.engine.export("t1")
    fresh = Harness()
    fresh.setup_call()
    fresh.engine.restore([record])
    complete = only_request(fresh.result(req))
    assert complete.action == "complete"


# -- park -------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [TRANSFEREE, TRANSFEROR, TARGET])
def test_parking_a_leg_of_an_active_transfer_is_refused(channel: str) -> None:
    h = Harness()
    h.consulting()
    with pytest.raises(Rejected) as refused:
        h.feed(ParkRequested(h.now, channel))
    assert refused.value.code == "transfer_in_progress" and "t1" in refused.value.detail


def test_parking_any_other_leg_needs_nothing_from_the_engine() -> None:
    h = Harness()
    h.setup_call()
    assert h.feed(ParkRequested(h.now, TRANSFEREE)) == []
    with pytest.raises(Rejected) as unknown:
        h.feed(ParkRequested(h.now, "PJSIP/9999-00000001"))
    assert unknown.value.code == "not_found"
