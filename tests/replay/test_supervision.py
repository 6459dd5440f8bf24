"""Supervisor actions in scenarios: ``supervise`` lines replay as live, and the library's
``supervisor-*`` scenarios really depend on them (without them the replay decides otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.replay import read, replay
from adapters.replay.format import ScenarioError
from tests.replay.support import LIBRARY, library, write

REQUIRED = {
    "supervisor-listen-then-barge",
    "supervisor-whisper-during-consultation",
    "supervisor-park-and-retrieve",
    "supervisor-monitor-leg-present-while-transfer-completes",
}


def test_the_library_has_the_supervisor_scenarios() -> None:
    names = {path.stem for path in LIBRARY.glob("supervisor-*.jsonl")}
    assert names >= REQUIRED
    for name in names:
        kinds = {line["kind"] for line in library(name)}
        assert "supervise" in kinds, f"{name} records no supervisor action"


def test_without_its_monitor_the_transferee_is_lost_and_the_replay_says_so(tmp_path: Path) -> None:
    """The monitor leg shares the transferee's call: told nothing of it, the engine cannot tell
    which leg is the transferee, misses its hang-up and no longer aborts at once."""
    lines = library("supervisor-listens-to-transferee-who-hangs-up")
    assert replay(read(write(tmp_path / "as-recorded.jsonl", lines))).passed
    blind = [line for line in lines if line["kind"] != "supervise"]
    report = replay(read(write(tmp_path / "no-monitor.jsonl", blind)))
    assert not report.passed
    assert any("transferee_hangup" in problem for problem in report.problems), report.problems


def test_a_park_refused_live_must_be_refused_in_replay(tmp_path: Path) -> None:
    lines = library("supervisor-park-and-retrieve")
    (refused,) = [line for line in lines if line["kind"] == "supervise" and line.get("rejected")]
    assert refused["rejected"] == "transfer_in_progress"
    del refused["rejected"]
    report = replay(read(write(tmp_path / "edited.jsonl", lines)))
    assert not report.passed
    assert any("park" in p and "accepted in the recording" in p for p in report.problems), report.problems


def test_a_hangup_is_the_transfers_request_or_the_services_own() -> None:
    through = replay(read(LIBRARY / "supervisor-hangs-up-transferor-during-consultation.jsonl"))
    assert through.passed
    assert [m.request.action for m in through.made] == ["start", "hangup", "complete"]
    # The supervisor's own monitor leg, hung up through the API: no transfer's request, and the
    # recorded call/hangup answer is accounted for as the service's own (no divergence).
    direct = replay(read(LIBRARY / "supervisor-listen-then-barge.jsonl"))
    assert direct.passed
    assert [m.request.action for m in direct.made] == ["start", "complete"]
    assert any(entry.text.startswith("supervisor's call/hangup") for entry in direct.timeline)


def test_the_timeline_shows_the_supervisor(tmp_path: Path) -> None:
    report = replay(read(LIBRARY / "supervisor-listen-then-barge.jsonl"))
    texts = [entry.text for entry in report.timeline if entry.source == "client"]
    assert any(text.startswith("listen 2001 on PJSIP/2005-") for text in texts)
    assert any(text.startswith("barge 2001 on PJSIP/2005-") for text in texts)
    answers = [entry.text for entry in report.timeline if entry.text.startswith("supervisor's call/listen")]
    assert len(answers) == 2 and all(text.endswith("→ ok") for text in answers)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ({"kind": "supervise", "at": 1, "action": "monitor", "channel_id": "PJSIP/2005-1"}, "session"),
        ({"kind": "supervise", "at": 1, "action": "park"}, "channel_id"),
        ({"kind": "supervise", "at": 1, "action": "transfer", "channel_id": "x"}, "action"),
    ],
)
def test_bad_supervise_lines_name_the_line(tmp_path: Path, line: dict[str, object], words: str) -> None:
    lines = [library("supervisor-listen-then-barge")[0], line]
    with pytest.raises(ScenarioError) as error:
        read(write(tmp_path / "bad.jsonl", lines))
    assert "bad.jsonl:2" in str(error.value) and words in str(error.value)


async def test_a_webex_recording_with_supervisor_actions_replays(tmp_path: Path) -> None:
    """Webex: a barge-in (its call claimed by the answer's callId), a park, the service's own
    hang-up, then a transfer — recorded live against the Webex simulator, replayed to the same."""
    from adapters.base import ActionResult, CallAction
    from adapters.replay.live import WebexLiveRecording
    from adapters.service import call_actions
    from engine.model import Policy

    out = tmp_path / "webex.jsonl"
    colleague, target = "+15554000001", "+15554000002"
    async with WebexLiveRecording(
        out, name="webex-supervisor", description="barge, park, hangup, transfer", policy=Policy()
    ) as rec:
        rec.sim.colleague_on_call(colleague)
        rec.sim.set_party(target, answer_after=0.1)
        first = await rec.call("+15554000010")
        barge = CallAction("monitor", extension=rec.sim.user_number, mode="barge", target=colleague)
        result = await call_actions.monitor(rec.runtime, barge, leg_number=None)
        assert result.outcome == "ok" and result.call_id
        barge_call = result.call_id
        await rec.until(lambda: rec.runtime.engine.monitors.is_monitor(barge_call))
        parked = await rec.park(first)
        assert isinstance(parked, ActionResult) and parked.outcome == "ok", parked
        await rec.until(lambda: rec.leg_status(first) is None)
        hung_up = await rec.hangup(barge_call)  # the user's barge-in call: no transfer holds it
        assert isinstance(hung_up, ActionResult) and hung_up.outcome == "ok", hung_up
        await rec.until(lambda: rec.leg_status(barge_call) is None)
        second = await rec.call("+15554000011")
        assert rec.start("t1", target, channel_id=second) is None
        await rec.reach("t1")
        await rec.settle(quiet_s=0.1)
        assert rec.resource("t1")["state"] == "completed"
    report = replay(read(out))
    assert report.passed, [report.summary(), *report.details()]
    texts = [entry.text for entry in report.timeline]
    assert any(text.startswith("supervisor's /telephony/calls/bargeIn") for text in texts)
    assert any(text.startswith("supervisor's /telephony/calls/hangup") for text in texts)
