"""The engine against every Webex behaviour the reference leaves open.

What a real cloud reports during a consultation is not all documented (see
``reference/webex-calling.md``): the remote party ringing may show as
``connecting`` throughout or as ``alerting`` once it rings; ``dial`` may
first ring the user's own device (click-to-dial) and place the call only
when it answers; a held call may be held by the user (``held``) or by the
remote party (``remoteHeld``); and clouds send combinations the reference
does not name at all.  Each story below runs live — the real Webex adapter
and service runtime against the Webex simulator on loopback, webhooks
signed and delivered over HTTP — in every variant, and each recording then
replays to the same decisions.

The rule under test (``adapters.webex.events``): a live call never ends or
loses a leg; only ``disconnected`` (or the call missing from a fresh
listing) ends one.  Before it, the ``alerting`` variants aborted every
consultation the moment the target started ringing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from adapters.replay import read, replay
from adapters.replay.live import WebexLiveRecording
from adapters.webex.simulator import SimVariant
from engine.model import Policy

TRANSFEREE, TARGET = "+15552000001", "+15553000001"

VARIANTS = [
    SimVariant(remote_ringing=ringing, device_first=device)
    for ringing, device in itertools.product(("connecting", "alerting"), (False, True))
]


def variant_id(variant: SimVariant) -> str:
    return f"{variant.remote_ringing}-{'device-first' if variant.device_first else 'direct'}"


STORIES = {
    # name: (answer_after, busy, expected requests, expected final state and reason)
    "answers": (0.15, False, ["start", "complete"], ("completed", "policy")),
    "busy": (None, True, ["start", "abort"], ("aborted", "target_busy")),
    "no_answer": (None, False, ["start", "abort"], ("aborted", "no_answer")),
}


def replays_the_same(out: Path, requests: list[str]) -> None:
    report = replay(read(out))
    assert report.passed, [report.summary(), *report.details()]
    assert [made.request.action for made in report.made] == requests


@pytest.mark.parametrize("story", sorted(STORIES))
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
async def test_every_variant_reaches_the_same_decision(
    variant: SimVariant, story: str, tmp_path: Path
) -> None:
    answer_after, busy, requests, final = STORIES[story]
    out = tmp_path / "run.jsonl"
    async with WebexLiveRecording(
        out,
        name=story,
        description=variant_id(variant),
        policy=Policy(no_answer_timeout_s=0.6),
        variant=variant,
    ) as rec:
        rec.sim.set_party(TARGET, answer_after=answer_after, busy=busy)
        original = await rec.call(TRANSFEREE)
        assert rec.start("t1", TARGET, channel_id=original) is None
        if story == "no_answer":
            # the target rings, however the cloud reports it: never taken for gone
            await rec.until(lambda: rec.resource("t1")["target"]["status"] == "ringing")
            if variant.remote_ringing == "alerting":
                consult = rec.resource("t1")["target"]["channel_id"].removesuffix("/remote")
                await rec.sim.wait_for(lambda: rec.sim.call(consult).state == "alerting")  # type: ignore[union-attr]
                assert rec.state("t1") == "consulting"
        await rec.reach("t1")
        await rec.settle(quiet_s=0.1)
        resource = rec.resource("t1")
        assert (resource["state"], resource["reason"]) == final
        assert [r.action for r in rec.made] == requests
        assert rec.sim.transfer_count() <= 1
        # the simulator's truth: the caller is handed over, or talks to the user again
        caller = rec.sim.call(original)
        assert caller is not None
        assert caller.state == ("disconnected" if story == "answers" else "connected")
    replays_the_same(out, requests)


@pytest.mark.parametrize("variant", VARIANTS[:2], ids=variant_id)
async def test_who_holds_whom_changes_nothing_by_itself(variant: SimVariant, tmp_path: Path) -> None:
    """``remoteHeld`` (the target holds the user) leaves the target answered;
    ``held`` (the user holds it, by a swap) shows it held; only the operator
    decides, and one complete moves the caller."""
    out = tmp_path / "run.jsonl"
    async with WebexLiveRecording(
        out, name="holds", description=variant_id(variant), policy=Policy(on_answer="hold"), variant=variant
    ) as rec:
        rec.sim.set_party(TARGET, answer_after=0.05)
        original = await rec.call(TRANSFEREE)
        rec.sim.hold_remote(original)  # the caller holds the user before the transfer: held from remoteHeld
        await rec.until(lambda: rec.leg_status(original) == "HOLD")
        assert rec.start("t1", TARGET, channel_id=original) is None
        await rec.until(lambda: rec.resource("t1")["target"]["status"] == "answered")
        consult = rec.resource("t1")["target"]["channel_id"].removesuffix("/remote")
        rec.sim.hold_remote(consult)  # the target holds the user
        await rec.until(lambda: rec.leg_status(consult) == "HOLD")
        await rec.settle(quiet_s=0.1)
        assert (rec.state("t1"), rec.resource("t1")["target"]["status"]) == ("consulting", "answered")
        rec.sim.resume_remote(consult)
        assert rec.operate("t1", "swap") is None
        await rec.until(
            lambda: rec.state("t1") == "swapped" and rec.resource("t1")["target"]["status"] == "held"
        )
        assert rec.operate("t1", "swap") is None
        await rec.until(lambda: rec.state("t1") == "consulting")
        assert rec.operate("t1", "complete") is None
        await rec.reach("t1")
        await rec.settle(quiet_s=0.1)
        assert (rec.state("t1"), rec.resource("t1")["reason"]) == ("completed", "operator")
        assert rec.sim.transfer_count() == 1
    replays_the_same(out, ["start", "swap", "swap", "complete"])


@pytest.mark.parametrize("events", ["webhook", "poll"])
async def test_an_undocumented_state_never_aborts(events: str, tmp_path: Path) -> None:
    """The target's call reports a personality and a state the reference does
    not name while it rings: the legs stay as they were, nothing is decided,
    the target answers and the transfer completes."""
    out = tmp_path / "run.jsonl"
    async with WebexLiveRecording(
        out,
        name="undocumented",
        description=events,
        policy=Policy(no_answer_timeout_s=5),
        events=events,  # type: ignore[arg-type]
    ) as rec:
        rec.sim.set_party(TARGET, answer_after=None)
        original = await rec.call(TRANSFEREE)
        assert rec.start("t1", TARGET, channel_id=original) is None
        await rec.until(lambda: rec.resource("t1")["target"]["status"] == "ringing")
        consult = rec.resource("t1")["target"]["channel_id"].removesuffix("/remote")
        rec.sim.report(consult, "alerting", personality="originator")
        rec.sim.report(consult, "earlyMedia", personality="")
        # wait until the service has seen it (its recording has), by webhook or by a poll
        await rec.until(lambda: "earlyMedia" in out.read_text())
        assert (rec.state("t1"), rec.resource("t1")["target"]["status"]) == ("consulting", "ringing")
        assert rec.leg_status(consult + "/remote") == "RING"
        rec.sim.report(consult, "connected", personality="clickToDial")
        await rec.reach("t1")
        assert (rec.state("t1"), rec.resource("t1")["reason"]) == ("completed", "policy")
        await rec.sim.wait_for(lambda: rec.sim.calls() == [])
    replays_the_same(out, ["start", "complete"])
