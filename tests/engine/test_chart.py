"""The shared chart: one python-statemachine instance moves every transfer.

These pin down what :class:`engine.chart.SharedChart` relies on in the
library, so that an upgrade that changes it fails here, loudly, rather than
in a transfer.
"""

from __future__ import annotations

import threading

import pytest
from statemachine.exceptions import InvalidStateValue, TransitionNotAllowed

from engine.chart import FINAL_STATES, STATES, SharedChart, TransferChart, shared_chart


def test_the_chart_declares_exactly_the_contract_states() -> None:
    assert tuple(state.id for state in TransferChart.states) == STATES
    assert {state.id for state in TransferChart.states if state.final} == FINAL_STATES


def test_a_move_takes_the_transition_the_chart_declares() -> None:
    chart = SharedChart()
    assert chart.move("idle", "consult_started") == "consulting"
    assert chart.move("consulting", "swap_away") == "swapped"
    assert chart.move("swapped", "swap_back") == "consulting"
    assert chart.move("swapped", "join") == "threeway"
    assert chart.move("consulting", "retry") == "idle"


def test_a_move_the_chart_does_not_declare_is_refused() -> None:
    chart = SharedChart()
    with pytest.raises(TransitionNotAllowed):
        chart.move("idle", "swap_away")
    with pytest.raises(TransitionNotAllowed):
        chart.move("threeway", "retry")
    # ... and the refusal leaves the shared instance usable
    assert chart.move("idle", "consult_started") == "consulting"


def test_final_states_absorb_nothing_in_the_chart() -> None:
    chart = SharedChart()
    for final in sorted(FINAL_STATES):
        for event in ("consult_started", "finish_completed", "finish_aborted", "retry"):
            with pytest.raises(TransitionNotAllowed):
                chart.move(final, event)


def test_after_one_transfer_ends_the_same_instance_moves_the_next() -> None:
    """The library stops an instance that enters a top-level final state; the
    shared chart must serve the next transfer all the same."""
    chart = SharedChart()
    assert chart.move("consulting", "finish_completed") == "completed"
    assert chart.move("idle", "consult_started") == "consulting"
    assert chart.move("threeway", "finish_aborted") == "aborted"
    assert chart.move("swapped", "finish_completed") == "completed"


def test_an_unknown_state_value_is_refused_by_the_library() -> None:
    with pytest.raises(InvalidStateValue):
        SharedChart().move("ringing", "consult_started")


def test_each_thread_has_its_own_instance() -> None:
    here = shared_chart()
    assert shared_chart() is here
    seen: list[SharedChart] = []
    thread = threading.Thread(target=lambda: seen.append(shared_chart()))
    thread.start()
    thread.join()
    assert seen and seen[0] is not here
