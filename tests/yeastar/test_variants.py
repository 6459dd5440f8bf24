"""The engine against every unconfirmed PBX behaviour the simulator can play.

What a real P-Series reports during an attended transfer is not documented
(see the "unconfirmed" notes in the Yeastar reference): the consultation leg
may appear under a new call id that the start request returns, under the
original call id, or under a new call id nobody returns; the transferee's
HOLD may or may not be reported; frames may carry one member or the whole
list; the PBX may rebridge by itself after a failed consultation.  Each
story below runs live — the real Yeastar adapter and service runtime against
the simulator on loopback — in every combination, and each recording then
replays to the same decisions.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from adapters.replay import read, replay
from adapters.replay.live import LiveRecording
from adapters.yeastar.simulator import Phone, SimConfig
from engine.model import Policy

TRANSFEREE, TRANSFEROR, TARGET = "5551234", "2005", "2008"

VARIANTS = [
    SimConfig(
        consult_call_id=call_id, hold_reported=hold, full_member_lists=full, auto_rebridge_on_failure=rebridge
    )
    for call_id, hold, full, rebridge in itertools.product(
        ("new", "original", "unreturned"), (True, False), (False, True), (False, True)
    )
    if not (rebridge and full)  # rebridging is independent of the frame shape: halve the matrix
]


def variant_id(config: SimConfig) -> str:
    return "-".join(
        [
            config.consult_call_id,
            "hold" if config.hold_reported else "nohold",
            "full" if config.full_member_lists else "delta",
            "rebridge" if config.auto_rebridge_on_failure else "norebridge",
        ]
    )


STORIES = {
    # name: (target phone, expected requests, expected final state and reason)
    "answers": (Phone(answer_after=0.05), ["start", "complete"], ("completed", "policy")),
    "busy": (Phone(busy=True), ["start", "abort"], ("aborted", "target_busy")),
    "no_answer": (Phone(answer_after=None), ["start", "abort"], ("aborted", "no_answer")),
}


@pytest.mark.parametrize("story", sorted(STORIES))
@pytest.mark.parametrize("config", VARIANTS, ids=variant_id)
async def test_every_variant_reaches_the_same_decision(config: SimConfig, story: str, tmp_path: Path) -> None:
    phone, requests, final = STORIES[story]
    out = tmp_path / "run.jsonl"
    async with LiveRecording(
        out, name=story, description=variant_id(config), policy=Policy(no_answer_timeout_s=0.3), sim=config
    ) as rec:
        rec.sim.set_phone(TARGET, phone)
        await rec.call(TRANSFEREE, TRANSFEROR, inbound_trunk="stc")
        transferor = rec.sim.channel_of(TRANSFEROR)
        assert rec.start("t1", TARGET, channel_id=transferor) is None
        await rec.reach("t1")
        await rec.settle(quiet_s=0.1)
        resource = rec.resource("t1")
        assert (resource["state"], resource["reason"]) == final
        assert [r.action for r in rec.made] == requests
        assert rec.sim.operate_count("complete") <= 1
        if story == "answers":
            assert resource["target"]["channel_id"] == rec.sim.channel_of(TARGET)
            # the PBX's truth: the transferee now talks to the target, nobody is held
            legs = [leg for call in rec.sim.calls() for member in call["members"] for leg in member.values()]
            assert sorted(leg["member_status"] for leg in legs) == ["ANSWER", "ANSWER"]
            assert transferor not in {leg["channel_id"] for leg in legs}
    report = replay(read(out))
    assert report.passed, report.details()
    assert [made.request.action for made in report.made] == requests


MONITOR_VARIANTS = [
    SimConfig(consult_call_id=call_id, monitor_call_id=monitor_call, full_member_lists=full)
    for call_id, monitor_call, full in itertools.product(
        ("new", "original", "unreturned"), ("monitored", "new"), (False, True)
    )
]


@pytest.mark.parametrize("when", ["before", "during"])
@pytest.mark.parametrize(
    "config",
    MONITOR_VARIANTS,
    ids=lambda c: (
        f"{c.consult_call_id}-monitor_{c.monitor_call_id}-{'full' if c.full_member_lists else 'delta'}"
    ),
)
async def test_a_supervisor_listening_changes_no_decision(
    config: SimConfig, when: str, tmp_path: Path
) -> None:
    """A supervisor (2001) listens to the transferor before the consultation or while the target
    rings, wherever the PBX reports the monitor's leg: same requests, same parties, same end."""
    out = tmp_path / "run.jsonl"
    async with LiveRecording(
        out,
        name="monitored",
        description=variant_id(config),
        policy=Policy(no_answer_timeout_s=5),
        sim=config,
    ) as rec:
        rec.sim.add_extension("2001", Phone(answer_after=0.01))
        rec.sim.set_phone(TARGET, Phone(answer_after=0.3))
        await rec.call(TRANSFEREE, TRANSFEROR, inbound_trunk="stc")
        transferor, transferee = rec.sim.channel_of(TRANSFEROR), rec.sim.channel_of(TRANSFEREE)
        monitors = rec.runtime.engine.monitors

        async def listen() -> None:
            result = await rec.monitor(transferor, "2001", "listen")
            assert result.outcome == "ok", result
            spy = rec.sim.channel_of("2001")
            await rec.until(lambda: rec.leg_status(spy) == "ANSWER")
            assert monitors.is_monitor(spy)

        if when == "before":
            await listen()
        assert rec.start("t1", TARGET, channel_id=transferor) is None
        if when == "during":
            await rec.until(lambda: rec.resource("t1")["target"]["status"] == "ringing")
            await listen()
        await rec.reach("t1")
        await rec.settle(quiet_s=0.1)
        resource = rec.resource("t1")
        assert (resource["state"], resource["reason"]) == ("completed", "policy")
        assert [r.action for r in rec.made] == ["start", "complete"]
        assert resource["transferee"]["channel_id"] == transferee
        assert resource["target"]["channel_id"] == rec.sim.channel_of(TARGET)
    report = replay(read(out))
    assert report.passed, report.details()
