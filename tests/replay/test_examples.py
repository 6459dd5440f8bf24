"""The scenarios bundled in the package are the library's own files, and replay by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.cli import main
from adapters.replay.examples import bundled

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios"


def test_every_bundled_example_is_a_library_scenario_byte_for_byte() -> None:
    examples = bundled()
    assert len(examples) >= 3
    for name, path in examples.items():
        assert path.read_bytes() == (LIBRARY / f"{name}.jsonl").read_bytes(), (
            f"{path} differs from scenarios/{name}.jsonl: copy the library's file again"
        )


def test_replay_example_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--example", "target-answers-complete"]) == 0
    out = capsys.readouterr().out
    assert "PASS target-answers-complete" in out
    assert out.rstrip().endswith("1 passed, 0 failed")


def test_replay_without_paths_or_examples_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay"]) == 2
    assert "--example NAME" in capsys.readouterr().err


def test_unknown_example_names_the_bundled_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--example", "no-such-scenario"])
    assert exited.value.code == 2
    assert "target-answers-complete" in capsys.readouterr().err
