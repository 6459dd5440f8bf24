"""The benchmarks run: ``python -m bench --quick`` prints every figure line, parseable.

Only structure is checked — never a timing or a goal: the quick sizes are
too small for the figures to mean anything, and a benchmark reports, it does
not judge.  The run is a subprocess because the benchmarks configure logging
and pin CPUs for the whole process, and start child processes of their own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import LINE, Figure, Sizes, parse_line

ROOT = Path(__file__).resolve().parents[2]


def expected_names(sizes: Sizes) -> set[str]:
    names = {"ingest", "decision_latency_p50", "decision_latency_p99", "replay_registry", "replay_transfers"}
    names.add("transfers_at_load")
    names |= {"rules_ingest_indexed", "rules_ingest_unfiltered", "rule_decision_latency_p50"}
    names.add("rule_decision_latency_p99")
    names |= {"console_ingest", "console_latency_p99"}
    for calls in sizes.memory_calls:
        names |= {f"memory_per_call@{calls}", f"memory_per_transfer@{calls}", f"memory_after_end@{calls}"}
    names |= {f"ingest_rate@{calls}" for calls in sizes.scaling_calls}
    return names


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )


@pytest.mark.timeout(300)
def test_quick_run_prints_every_figure_line(quick_run: subprocess.CompletedProcess[str]) -> None:
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    lines = [line for line in quick_run.stdout.splitlines() if line and not line.startswith("#")]
    parsed = [parse_line(line) for line in lines]
    assert all(p is not None for p in parsed), [
        line for line, p in zip(lines, parsed, strict=True) if p is None
    ]
    names = [p["name"] for p in parsed if p is not None]
    assert len(names) == len(set(names)), "a figure was printed twice"
    assert set(names) == expected_names(Sizes.tiny())
    for p in parsed:
        assert p is not None
        float(p["value"])  # a number, whatever it is
        assert p["unit"]


@pytest.mark.timeout(300)
def test_goal_figures_say_met_or_missed(quick_run: subprocess.CompletedProcess[str]) -> None:
    goals = [line for line in quick_run.stdout.splitlines() if "goal " in line and not line.startswith("#")]
    assert goals
    assert all(line.endswith(": met)") or line.endswith(": MISSED)") for line in goals), goals


def test_figure_line_round_trips() -> None:
    line = Figure("ingest_rate@100000", 41234.5678, "frames/s", "ratio 0.93; goal x: met").line()
    parsed = parse_line(line)
    assert parsed == {
        "name": "ingest_rate@100000",
        "value": "41235",
        "unit": "frames/s",
        "details": "ratio 0.93; goal x: met",
    }
    assert LINE.match("memory_after_end@200: -1.2 % (ratio 0.988)")
    assert parse_line("not a figure") is None


def test_plot_draws_from_figures(tmp_path: Path) -> None:
    from bench.plot import draw

    latency = Figure("decision_latency_p50", 5.0, "ms", "", None, {"xferd": [0.004, 0.006], "echo": [0.003]})
    scaling = [Figure(f"ingest_rate@{n}", 1000.0, "frames/s", "", None, {"bare": 2000.0}) for n in (10, 100)]
    out = tmp_path / "plot.png"
    assert "drawn" in draw({"latency": [latency], "scaling": scaling}, str(out))
    assert out.stat().st_size > 0
