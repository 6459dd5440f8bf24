"""The suite's share of ``python -m chaos --ha``: one run of the database-cut and of the
two-PBXs-over-three-instances kinds (the rest, many runs each, in ``python -m chaos --ha``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.ha import by_name, run_kind


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["ha_db_cut_owner", "ha_kill_one_of_three"])
async def test_ha_fault_kind_keeps_the_promise(kind: str, tmp_path: Path, ha_database: str) -> None:
    # ha_database: PostgreSQL reachable (or the loud skip / CI failure); the kind makes its own database.
    result = await run_kind(by_name(kind), 1, seed=1, tmp=tmp_path)
    problems = [problem for verdict in result.verdicts for problem in verdict.problems()]
    assert problems == []
    assert result.survived == 1
    assert result.completes == 1  # the simulator carried out exactly one complete
