"""Every fault kind of issue 8, a few seeded runs each, checked against the simulator's truth.

The fast share of ``python -m chaos``: same worlds, same runs, same checks
(see ``chaos/__init__.py``), with each kind's ``quick_runs`` instead of its
full count.  A failure prints every violated promise of every run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.faults import FAULTS, FaultKind
from chaos.runner import run_kind
from chaos.support import LogWatch, watch_logs

SEED = 1
#: A run that has not ended by then is lost (the full command waits 40 s).
DEADLINE_S = 15.0


@pytest.mark.parametrize("kind", FAULTS, ids=[kind.name for kind in FAULTS])
async def test_fault_kind_keeps_the_promise(kind: FaultKind, tmp_path: Path) -> None:
    watch = LogWatch()
    watch_logs(watch)
    result = await run_kind(kind, kind.quick_runs, SEED, tmp_path, watch, deadline_s=DEADLINE_S)
    assert len(result.runs) == kind.quick_runs
    assert result.injected >= 1, f"{kind.name}: no fault was injected in {kind.quick_runs} runs"
    assert result.problems() == []
    assert watch.leaks == []
