"""The figures, as a terminal table and as RELIABILITY.md.

Every number printed here was counted in the run that prints it; nothing is
carried over from earlier runs or typed in by hand.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Any

from chaos.fuzz import FuzzStats
from chaos.runner import KindResult, RunResult
from chaos.soak import SoakResult, soak_summary, soak_table
from chaos.support import LogWatch

COLUMNS = (
    "fault kind",
    "runs",
    "faults injected",
    "survived",
    "transfers lost",
    "wrong outcome",
    "duplicate completes",
    "requests after final",
    "crashes",
)


def print_run(run: RunResult) -> None:
    mark = "ok " if run.verdict.ok() else "BAD"
    print(
        f"  {mark} {run.kind} #{run.index} {run.scenario} @ {run.stage}: {run.injected} faults -> "
        f"{run.outcome} ({run.seconds:.2f} s)",
        file=sys.stderr,
        flush=True,
    )
    for problem in run.verdict.problems():
        print(f"      {problem[:400]}", file=sys.stderr, flush=True)


def rows(results: list[KindResult]) -> list[list[str]]:
    out = []
    for r in results:
        out.append(
            [
                r.kind.name,
                str(len(r.runs)),
                str(r.injected),
                str(r.survived),
                str(r.count("lost")),
                str(r.count("wrong_outcome")),
                str(r.count("duplicate_completes")),
                str(r.count("after_final")),
                str(r.count("crashes")),
            ]
        )
    total = ["**total**"] + [str(sum(int(row[i]) for row in out)) for i in range(1, len(COLUMNS))]
    return [*out, total]


def table(
    results: list[KindResult], soak: SoakResult | None, fuzz: list[FuzzStats], watch: LogWatch
) -> list[str]:
    """The Markdown table of fault kinds (also fine in a terminal)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    if fuzz:
        lines += ["", "| fuzzer | examples | rejected with a clear message | crashes |", "|---|---|---|---|"]
        lines += [f"| {f.name} | {f.examples} | {f.rejected} | {len(f.crashes)} |" for f in fuzz]
    lines += ["", f"log lines scanned: {watch.count}; secrets found in them: {len(watch.leaks)}"]
    if soak is not None:
        summary = soak_summary(soak)
        lines += ["", "soak: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "outcomes")]
    return lines


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
            )
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
            memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores "
        f"({model or 'unknown CPU'}){memory}, "
        f"Python {platform.python_version()}"
    )


def markdown(
    args: argparse.Namespace,
    results: list[KindResult],
    soak: SoakResult | None,
    fuzz: list[FuzzStats],
    watch: LogWatch,
    seconds: float,
    ok: bool,
) -> str:
    """RELIABILITY.md's measured part, from this run."""
    command = "python -m chaos" + " ".join(
        [""] + [a for a in sys.argv[1:] if not a.startswith("--write") and not a.endswith(".md")]
    )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Reliability under faults and bad input — measured",
        "",
        f"Measured by `{command.strip()}` (seed {args.seed}) on {when}, {seconds / 60:.1f} min wall time.",
        f"Machine: {machine()}.",
        f"Verdict: **{'every run kept the promise' if ok else 'PROMISE BROKEN: see the problems below'}**.",
        "",
        "How to read it, how the runs work and what each check means: see the bottom of this file and",
        "`chaos/__init__.py`. Regenerate with `python -m chaos --write RELIABILITY.md`.",
        "",
        "## Faults",
        "",
        "| fault kind | what is done | " + " | ".join(COLUMNS[1:]) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    whats = {r.kind.name: r.kind.what for r in results}
    for row in rows(results):
        out.append("| " + " | ".join([row[0], whats.get(row[0], ""), *row[1:]]) + " |")
    out += ["", "Outcomes per fault kind (final state/reason, runs):", ""]
    for r in results:
        out.append(f"- `{r.kind.name}`: " + ", ".join(f"{k} ×{v}" for k, v in r.outcomes().items()))
    out += ["", "Resources after the first and the last run of each kind (tasks, engine tables, timers):", ""]
    for r in results:
        if r.baseline:
            growth = r.end.get("allocated_blocks", 0) - r.baseline.get("allocated_blocks", 0)
            per_run = growth / max(1, len(r.runs) - 1)
            keys = (
                "tasks",
                "active_transfers",
                "engine_transfers",
                "tracked_calls",
                "timers",
                "queues",
                "waiters",
            )
            shown = ", ".join(f"{k} {r.baseline.get(k)}→{r.end.get(k)}" for k in keys)
            out.append(f"- `{r.kind.name}`: {shown}; Python blocks {growth:+d} ({per_run:+.0f}/run)")
    problems = [f"- `{r.kind.name}` {p}" for r in results for p in r.problems()]
    out += ["", "## Problems found by this run", ""]
    out += [p[:600] for p in problems] or ["None."]
    if fuzz:
        out += ["", "## Bad input", "", "| fuzzer | examples | rejected with a clear message | crashes |",
                "|---|---|---|---|"]  # fmt: skip
        out += [f"| {f.name} | {f.examples} | {f.rejected} | {len(f.crashes)} |" for f in fuzz]
        for f in fuzz:
            out += [f"- `{f.name}`: {f.what}"]
            out += [f"  - crash: {c[:300]}" for c in f.crashes[:5]]
    out += [
        "",
        "## Secrets",
        "",
        f"{watch.count} log lines scanned as they were written, against the API token, the PBX client",
        "secret, the Webex token and webhook secret, and every access/refresh token the simulator issued:",
        f"**{len(watch.leaks)}** contained a secret.",
    ]
    if soak is not None:
        summary: dict[str, Any] = soak_summary(soak)
        out += [
            "",
            "## Soak",
            "",
            f"{summary['transfers']} transfers and {summary['plain_calls']} plain calls through one service,",
            f"6 at a time, {summary['network_faults']} network faults along the way, "
            f"{summary['seconds']} s wall",
            "time (compressed: phones answer in 0.05-0.5 s, no-answer timeouts 0.3-4 s).",
            f"Lost {summary['lost']}, wrong outcome {summary['wrong_outcome']}, duplicate completes "
            f"{summary['duplicate_completes']}, requests after final {summary['after_final']}.",
            "Outcomes: " + ", ".join(f"{k} ×{v}" for k, v in summary["outcomes"].items()) + ".",
            "",
            *soak_table(soak),
        ]
        if soak.problems:
            out += ["", "Soak problems:", *[f"- {p[:500]}" for p in soak.problems[:20]]]
    return "\n".join(out) + "\n"
