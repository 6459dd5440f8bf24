"""Scenario files: a bad line is one clear line naming file:line; frames keep their exact bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.replay.format import ScenarioError, compact, discover, frame_line, parse_line, read
from tests.replay.support import cli

META = {"kind": "meta", "format": 1, "platform": "yeastar", "start": 1_700_000_000.0}
FRAME = {"kind": "frame", "at": 0.5, "text": "heartbeat response"}


def scenario_file(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [
        ((META, "{not json"), 2, "not JSON: "),
        ((META, [1, 2]), 2, "not a JSON object"),
        ((META, {"kind": "frme", "at": 1}), 2, "unknown kind 'frme' (expected one of meta, frame, control"),
        ((FRAME,), 1, "the first line must be the meta line, not 'frame'"),
        ((META, META), 2, "a second meta line"),
        ((META, {"kind": "frame", "at": -1, "text": "x"}), 2, "at: Input should be greater than or equal"),
        ((META, {"kind": "frame", "at": 1}), 2, "give exactly one of text or json"),
        ((META, {**FRAME, "colour": "red"}), 2, "colour: Extra inputs are not permitted"),
        ((META, {"kind": "control", "at": 1, "op": "complete", "transfer": "t1", "body": {"number": "1"}}), 2,
         "a start carries a body; an operator op does not"),
        (({**META, "policy": {"on_answer": "later"}},), 1, "on_answer: Input should be 'complete'"),
        (({**META, "policy": {"timeout": 3}},), 1, "unknown policy key 'timeout'"),
        (({**META, "platform": "asterisk"},), 1, "platform: Input should be 'yeastar' or 'webex'"),
        ((META, {"kind": "expect", "request": {"action": "launch"}}), 2, "request.action: Input should be"),
        ((META, {"kind": "expect", "final": {"transfer": "t1", "state": "done"}}), 2, "final.state: Input"),
        ((META, {"kind": "expect", "max": 1, "final": {"transfer": "t1", "state": "aborted"}}), 2,
         "max only goes with never"),
        ((META, {"kind": "end", "at": 2}, FRAME), 3, "a frame line after the end line"),
    ],
)  # fmt: skip
def test_a_bad_line_is_one_line_naming_file_and_line(
    tmp_path: Path, lines: tuple[object, ...], where: int, message: str
) -> None:
    path = scenario_file(tmp_path, *lines)
    with pytest.raises(ScenarioError) as caught:
        read(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:{where}: {message}"), text
    assert "\n" not in text


def test_an_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ScenarioError, match="empty scenario"):
        read(empty)
    with pytest.raises(ScenarioError, match="no such file or folder"):
        discover([tmp_path / "missing.jsonl"])
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ScenarioError, match=r"no \*\.jsonl scenario in this folder"):
        discover([folder])


def test_cli_bad_file_is_exit_2_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = scenario_file(tmp_path, META, "{not json")
    code, out, err = cli(capsys, "replay", str(path))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"xferd: {path}:2: not JSON")
    assert "Traceback" not in err


def test_blank_lines_are_ignored_and_steps_group(tmp_path: Path) -> None:
    request = {"kind": "expect", "request": {"action": "start"}}
    path = scenario_file(
        tmp_path, META, "", {**request, "step": 1}, {**request, "step": 1}, request, {**request, "step": 1}
    )
    scenario = read(path)
    assert [len(step) for step in scenario.expected] == [2, 1, 1]
    assert scenario.inputs == ()


def test_a_compact_json_frame_is_shown_as_json_with_msg_decoded() -> None:
    raw = compact({"type": 30011, "sn": "X", "msg": compact({"call_id": "1.1", "members": []})})
    line = frame_line(0.25, raw)
    assert line.text is None and line.frame == {
        "type": 30011,
        "sn": "X",
        "msg": {"call_id": "1.1", "members": []},
    }
    assert line.raw() == raw
    assert parse_line(json.dumps(json.loads(line.model_dump_json(by_alias=True)))).raw() == raw  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": 30011, "msg": "{}"}',  # spaces: not what re-encoding gives back
        '{"type":30011,"msg":"{\\"a\\": 1}"}',  # msg with spaces
        '{"type":30011,"msg":{"call_id":"1"}}',  # msg as an object
        '{"a":1,"a":2}',  # duplicate keys
        "heartbeat response",
        "[1,2]",
        '{"x":1.0}',
    ],
)
def test_any_frame_gives_back_its_exact_bytes(raw: str) -> None:
    assert frame_line(0.0, raw).raw() == raw


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=8,
)


@given(JSON_VALUES)
def test_frames_round_trip_whatever_their_content(value: object) -> None:
    for raw in (json.dumps(value), compact(value), compact({"type": 30011, "msg": compact(value)})):
        assert frame_line(1.0, raw).raw() == raw
