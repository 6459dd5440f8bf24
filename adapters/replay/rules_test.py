"""``xferd rules test FILE SCENARIO...``: what a rules file would have done with recorded traffic.

Each scenario is replayed on its virtual clock (:func:`adapters.replay.runner.replay`) with the
rules from FILE instead of the ones it carries, in *dry run*: every rule is evaluated on every
trigger exactly as live, but a firing rule only reports the transfer it would request — the
recorded story goes on unchanged, so what one rule would do cannot hide what the next would.
(Rules chained on ``transfer.ended`` therefore see only the recorded transfers.)

Printed per scenario and per call: each rule that matched, what it decided (``fired``,
``shadow``, ``blocked`` and why, ``delayed``, ``asked``, ``skipped``, ``error``) and what it
would send.  ``--json`` prints the same as one document.  Exit 0, or 2 for a bad file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from adapters.replay.format import ScenarioError, collector_paused, discover, read
from adapters.replay.runner import replay
from engine.rules import RuleSet


def run_test(ruleset: RuleSet, paths: Sequence[str], *, as_json: bool = False) -> int:
    import sys

    try:
        with collector_paused():
            scenarios = [read(path) for path in discover(paths)]
    except ScenarioError as exc:
        sys.stderr.write(f"xferd: {exc}\n")
        return 2
    results: list[dict[str, Any]] = []
    for scenario in scenarios:
        report = replay(scenario, timeline=False, rules=ruleset, dry_run=True)
        calls: dict[str, list[dict[str, Any]]] = {}
        for offset, notice in report.rules:
            calls.setdefault(notice.call_id, []).append(
                {
                    "at": offset,
                    "rule": notice.rule,
                    "trigger": notice.trigger,
                    "mode": notice.mode,
                    "outcome": notice.outcome,
                    "detail": notice.detail,
                    "request": dict(notice.request) if notice.request else None,
                }
            )
        results.append({"scenario": scenario.name, "calls": calls})
    if as_json:
        print(json.dumps({"scenarios": results}, indent=2))
        return 0
    for result in results:
        print(f"{result['scenario']}:")
        if not result["calls"]:
            print("  no rule matched")
        for call_id, rows in result["calls"].items():
            print(f"  call {call_id}")
            for row in rows:
                mode = " [shadow]" if row["mode"] == "shadow" and row["outcome"] != "shadow" else ""
                detail = f"  {row['detail']}" if row["detail"] else ""
                when = f"+{row['at']:8.3f} s"
                print(f"    {when}  {row['rule']:<20} {row['trigger']:<15} {row['outcome']:<8}{mode}{detail}")
    fired = sum(
        1 for r in results for rows in r["calls"].values() for row in rows if row["outcome"] == "fired"
    )
    print(f"{len(results)} scenarios, {fired} transfers the rules would start")
    return 0
