"""The scenario library is the regression suite: every recorded scenario replays and passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.replay import read, replay
from tests.replay.support import LIBRARY, cli

SCENARIOS = sorted(LIBRARY.glob("*.jsonl"))

#: Contract §4 rows and the issue's extra situations the library must cover.
REQUIRED = {
    "target-answers-complete",
    "target-answers-threeway",
    "target-answers-hold-operator-completes",
    "target-no-answer-aborts",
    "target-busy-aborts",
    "target-rejects-aborts",
    "target-hangs-up-while-ringing",
    "target-hangs-up-after-answer",
    "transferee-hangs-up-while-target-rings",
    "transferor-hangs-up-consulting-completes",
    "transferor-hangs-up-consulting-aborts",
    "threeway-then-transferor-leaves",
    "swap-and-swap-back",
    "transferee-hangs-up-after-target-answered",
    "transferee-hangs-up-while-swapped",
    "transferee-hangs-up-in-threeway",
    "transferor-hangs-up-while-target-rings",
    "target-answers-as-no-answer-timeout-fires",
    "operator-complete-races-target-hangup",
    "duplicated-frames-complete",
    "reordered-frames-complete",
    "garbage-frames-are-skipped",
    "reconnect-lost-answer-reconciled-by-query",
    "fallback-chain-of-three-targets",
    # Webex (issue 11): nominal, no answer, busy + fallback, swap, duplicates + out of order, 429,
    # unknown outcome reconciled, an undocumented state that must not abort
    "webex-nominal",
    "webex-no-answer",
    "webex-busy-fallback-answers",
    "webex-swap-and-swap-back",
    "webex-duplicated-and-reordered-deliveries",
    "webex-throttled-429-retried",
    "webex-complete-outcome-unknown-reconciled",
    "webex-undocumented-state-does-not-abort",
}


def test_library_covers_the_contract_and_the_issue() -> None:
    assert {path.stem for path in SCENARIOS} >= REQUIRED


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_scenario_replays_and_passes(path: Path) -> None:
    scenario = read(path)
    report = replay(scenario)
    assert report.passed, "\n".join([report.summary(), *report.details()])
    assert scenario.name == path.stem
    assert scenario.meta.description, "every scenario says what it shows"
    assert scenario.finals, "every scenario states how its transfers end"


def test_cli_replays_the_whole_library(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "replay", str(LIBRARY))
    lines = out.splitlines()
    assert code == 0, out + err
    assert len([line for line in lines if line.startswith("PASS ")]) == len(SCENARIOS)
    assert lines[-1] == f"{len(SCENARIOS)} passed, 0 failed"


def test_an_hour_of_virtual_time_replays_in_well_under_a_second() -> None:
    report = replay(read(LIBRARY / "hold-operator-completes-after-an-hour.jsonl"))
    assert report.passed
    assert report.virtual_s > 3600
    # Generous bound (measured: a few ms); the point is that nothing waits on a real clock.
    assert report.wall_s < 1.0, report.summary()
    print(report.summary())
