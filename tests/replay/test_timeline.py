"""Timelines for humans: readable text, and Mermaid that renders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adapters.replay import read, replay, timeline
from adapters.replay.runner import Entry
from tests.replay.support import LIBRARY, cli

SCENARIO = LIBRARY / "target-no-answer-fallback-answers.jsonl"
MESSAGE = re.compile(r"^    (client|xferd|PBX)->>(client|xferd|PBX): \+\d+\.\d{3} s \S")
NOTE = re.compile(r"^    Note over xferd: \+\d+\.\d{3} s \S")


def test_text_timeline_tells_who_did_what_when() -> None:
    text = timeline.text(replay(read(SCENARIO)).timeline)
    rows = text.splitlines()
    story = [row.split(maxsplit=2)[2] for row in rows]  # drop the time
    assert any(row.startswith("client -> xferd  start t1: PJSIP/2005-") for row in story)
    assert any(row.startswith("xferd            t1: no_answer timer fired") for row in story)
    decisions = [row.split("  ")[-1] for row in story if row.startswith("xferd -> PBX") and " t1" in row]
    assert [d.split()[0] for d in decisions] == ["start", "abort", "start", "complete"]
    assert "xferd            t1: consulting → completed (policy)" in story
    times = [float(row.split()[0]) for row in rows]
    assert times[0] >= 0 and max(times) < 2


def test_mermaid_is_a_sequence_diagram_with_three_participants() -> None:
    report = replay(read(SCENARIO))
    diagram = timeline.mermaid(report.timeline, "fallback").splitlines()
    assert diagram[:5] == [
        "sequenceDiagram",
        "    title fallback",
        "    participant client",
        "    participant xferd",
        "    participant PBX",
    ]
    body = diagram[5:]
    assert len(body) == len(report.timeline)
    assert all(MESSAGE.match(line) or NOTE.match(line) for line in body), body
    assert any("xferd->>PBX" in line and "abort t1" in line for line in body)


def test_mermaid_escapes_what_it_would_misread() -> None:
    diagram = timeline.mermaid([Entry(1.0, "xferd", None, "tag no_answer#0#1; a<b>c")])
    assert diagram.splitlines()[-1] == "    Note over xferd: +1.000 s tag no_answer#35;0#35;1#59; a#lt;b#gt;c"


def test_cli_timeline_and_mermaid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "t.mmd"
    code, out, _ = cli(capsys, "replay", str(SCENARIO), "--timeline", "--mermaid", str(out_file))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("PASS target-no-answer-fallback-answers (")
    assert lines[-1] == "1 passed, 0 failed"
    assert any("xferd -> PBX" in line for line in lines[1:-1])
    assert out_file.read_text().startswith("sequenceDiagram\n")

    code, out, _ = cli(capsys, "replay", str(SCENARIO), "--mermaid", "-")
    assert code == 0 and "\nsequenceDiagram\n" in out


def test_cli_mermaid_file_takes_one_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "replay", str(LIBRARY), "--mermaid", str(tmp_path / "t.mmd"))
    assert code == 2 and out == ""
    assert err.startswith("xferd: --mermaid ") and err.count("\n") == 1
