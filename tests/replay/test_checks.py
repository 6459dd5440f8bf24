"""What a replay checks, and how it says what differs.

Each test takes a library scenario, edits it the way a person (or a
regression) would, and checks the verdict and the message.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from adapters.replay import read, replay
from adapters.replay.runner import Report
from tests.replay.support import cli, library, write


def run(tmp_path: Path, lines: list[dict[str, Any]], name: str = "edited") -> Report:
    return replay(read(write(tmp_path / f"{name}.jsonl", lines)))


def expect_lines(lines: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["kind"] == "expect" and what in line]


def test_unedited_scenario_passes(tmp_path: Path) -> None:
    assert run(tmp_path, library("target-busy-aborts")).passed


def test_expecting_a_wrong_request_fails_and_shows_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = library("target-busy-aborts")
    expect_lines(lines, "request")[1]["request"]["action"] = "complete"
    path = write(tmp_path / "target-busy-aborts.jsonl", lines)

    code, out, _ = cli(capsys, "replay", str(path))

    assert code == 1
    first, *details = out.splitlines()
    assert first.startswith(
        "FAIL target-busy-aborts: request 2: expected complete t1, got abort t1 (PJSIP/2005-"
    )
    marked = [row for row in details if row.lstrip().startswith(">")]
    assert len(marked) == 1 and "complete t1" in marked[0] and "abort t1" in marked[0]
    assert any(row.split()[:3] == ["1", "start", "t1"] for row in details)  # the matching row, unmarked
    assert details[-1] == "0 passed, 1 failed"


def test_a_request_the_expectations_do_not_list_fails(tmp_path: Path) -> None:
    lines = library("target-busy-aborts")
    lines.remove(expect_lines(lines, "request")[1])
    report = run(tmp_path, lines)
    assert report.problems[0].startswith("request 2: unexpected abort t1")


def test_an_expected_request_never_made_fails(tmp_path: Path) -> None:
    lines = library("target-busy-aborts")
    lines.append({"kind": "expect", "request": {"transfer": "t1", "action": "start", "number": "2009"}})
    report = run(tmp_path, lines)
    assert report.problems == ["request 3: expected start t1 → 2009, but the replay made no more requests"]
    assert report.diff[-1].split() == [">", "3", "start", "t1", "→", "2009", "-"]


def test_a_wrong_final_state_fails(tmp_path: Path) -> None:
    lines = library("target-busy-aborts")
    expect_lines(lines, "final")[0]["final"]["reason"] = "no_answer"
    report = run(tmp_path, lines)
    assert report.problems == ["t1: expected aborted (no_answer), got aborted (target_busy)"]


def test_a_request_that_must_never_be_made_fails(tmp_path: Path) -> None:
    lines = library("target-busy-aborts")
    lines.append({"kind": "expect", "never": {"action": "abort"}})
    report = run(tmp_path, lines)
    assert report.problems == ["never abort *: made 1 times, at most 0 allowed"]


def test_requests_of_one_step_may_come_in_any_order(tmp_path: Path) -> None:
    lines = library("two-transfers-at-once")
    starts = [line for line in expect_lines(lines, "request") if line["step"] == "starts"]
    a, b = (lines.index(line) for line in starts)
    lines[a], lines[b] = lines[b], lines[a]
    assert run(tmp_path, lines).passed


def test_steps_still_order_requests_between_them(tmp_path: Path) -> None:
    lines = library("two-transfers-at-once")
    _, start_t2, complete_t1, _ = expect_lines(lines, "request")
    lines.remove(complete_t1)
    lines.insert(lines.index(start_t2), complete_t1)  # t1's complete expected before t2's start
    report = run(tmp_path, lines)
    assert report.problems[0] == (
        "request 2: expected complete t1, got start t2 → 5503301 (PJSIP/2000-00000004)"
    )


def test_a_decision_the_recording_does_not_have_is_a_divergence(tmp_path: Path) -> None:
    lines = library("target-busy-aborts")
    aborts = [
        line
        for line in lines
        if line["kind"] == "request" and line.get("body", {}).get("attended_operate") == "abort"
    ]
    assert len(aborts) == 1
    lines.remove(aborts[0])
    report = run(tmp_path, lines)
    # The replay answered the abort "ok" itself and went on: the expectations still hold.
    assert report.states["t1"] == ("aborted", "target_busy")
    assert len(report.problems) == 1
    assert "the replay made abort t1 (PJSIP/2005-" in report.problems[0]
    assert "which the recording does not have" in report.problems[0]


def test_a_recorded_request_the_replay_never_made_is_a_divergence(tmp_path: Path) -> None:
    lines = library("target-busy-aborts")
    abort = next(line for line in lines if line.get("body", {}).get("attended_operate") == "abort")
    lines.insert(lines.index(abort) + 1, copy.deepcopy(abort))
    report = run(tmp_path, lines)
    assert len(report.problems) == 1
    assert report.problems[0].endswith("abort (PJSIP/2005-00000002) answered ok, which the replay never made")


def test_an_api_request_rejected_only_in_the_recording_is_a_divergence(tmp_path: Path) -> None:
    lines = library("target-answers-hold-operator-completes")
    control = next(line for line in lines if line["kind"] == "control" and line["op"] == "complete")
    control["rejected"] = "not_allowed"
    report = run(tmp_path, lines)
    assert any(
        "complete t1 was rejected (not_allowed) in the recording; the replay accepted it" in problem
        for problem in report.problems
    )


def test_a_token_renewal_retry_answers_the_request_once(tmp_path: Path) -> None:
    """The adapter resends a request answered 10004 after renewing its token: only the
    second answer reached the engine, and the replay must use that one."""
    lines = library("target-answers-complete")
    start = next(line for line in lines if line["kind"] == "request" and line["endpoint"] == "call/transfer")
    expired = {
        **copy.deepcopy(start),
        "answer": {"errcode": 10004, "errmsg": "TOKEN EXPIRED"},
        "result": "refused",
    }
    lines.insert(lines.index(start), expired)
    assert run(tmp_path, lines).passed


def test_bad_frames_are_counted_and_skipped(tmp_path: Path) -> None:
    report = run(tmp_path, library("garbage-frames-are-skipped"))
    assert report.passed
    assert report.bad_frames == 4  # not JSON, an array, no call_id, msg not JSON
    skipped = [entry.text for entry in report.timeline if entry.text.startswith("bad frame skipped")]
    assert [text.split()[3] for text in skipped] == [
        "(not_json):",
        "(not_object):",
        "(missing_call_id):",
        "(msg_not_json):",
    ]


def _race(tmp_path: Path, shift: float) -> Report:
    """The answer-vs-timeout race with the target's answer frame moved to the
    timer's deadline plus ``shift`` seconds."""
    lines = library("target-answers-as-no-answer-timeout-fires")
    fired = next(
        e for e in replay(read(write(tmp_path / "race.jsonl", lines))).timeline if "timer fired" in e.text
    )
    answer = next(
        line
        for line in lines
        if line["kind"] == "frame"
        and "json" in line
        and any(
            member.get("extension", {}).get("number") == "2008"
            and member["extension"]["member_status"] == "ANSWER"
            for member in line["json"].get("msg", {}).get("members", [])
        )
    )
    answer["at"] = round(fired.at + shift, 3)
    return run(tmp_path, lines, "race-edited")


def test_an_answer_at_the_very_deadline_loses_to_the_timeout(tmp_path: Path) -> None:
    report = _race(tmp_path, 0.0)
    assert report.passed, report.details()
    assert [m.request.action for m in report.made] == ["start", "abort"]


def test_an_answer_a_millisecond_before_the_deadline_wins(tmp_path: Path) -> None:
    report = _race(tmp_path, -0.001)
    # The engine now completes: the recording has no such request, and the expectations say abort.
    assert [m.request.action for m in report.made][:2] == ["start", "complete"]
    assert report.problems[0].startswith("request 2: expected abort t1, got complete t1")
    assert any("which the recording does not have" in problem for problem in report.problems)
