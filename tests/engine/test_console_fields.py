"""The resource fields the supervisor console reads: ``allowed_ops``, ``in_flight``, ``no_answer_at``."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.engine.harness import Harness, only_request


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_fields_follow_the_transfer() -> None:
    h = Harness()
    h.setup_call()
    start = h.start(no_answer_timeout_s=20)
    r = h.resource()
    assert (r["in_flight"], r["allowed_ops"], r["no_answer_at"]) == ("start", [], None)
    h.result(start, call_id="consult-1")
    h.target("RING")
    r = h.resource()
    assert r["in_flight"] is None
    assert r["allowed_ops"] == ["complete", "abort", "swap"]  # no threeway before the target answers
    assert r["no_answer_at"] is not None
    assert _epoch(r["no_answer_at"]) == pytest.approx(h.now + 20, abs=1)
    complete = only_request(h.op("complete"))
    r = h.resource()
    assert (r["in_flight"], r["allowed_ops"]) == ("complete", [])  # no second click while it is sent
    h.result(complete)
    r = h.resource()
    assert r["state"] == "completed" and r["in_flight"] is None and r["allowed_ops"] == []


def test_no_answer_at_clears_when_the_target_answers() -> None:
    h = Harness()
    h.consulting(on_answer="hold")
    assert h.resource()["no_answer_at"] is not None
    h.target("ANSWER")
    r = h.resource()
    assert r["no_answer_at"] is None
    assert r["allowed_ops"] == ["complete", "abort", "swap", "threeway"]
