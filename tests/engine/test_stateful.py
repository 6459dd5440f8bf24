"""Model-based test: the engine against the reference model, step by step (brief share).

:mod:`chaos.model` holds the state machine and its theory of operation;
``python -m chaos --model`` runs it long.  Here it runs derandomized (the same
examples every time: it never flakes) and briefly.
"""

from __future__ import annotations

import os

from hypothesis.stateful import run_state_machine_as_test

from chaos.model import EngineVsModel, model_settings

#: Fewer while mutmut runs the suite once per mutant (see RELIABILITY.md, mutation testing).
EXAMPLES = 100 if os.environ.get("MUTANT_UNDER_TEST") else 200
STEPS = 50


def test_engine_agrees_with_the_reference_model() -> None:
    run_state_machine_as_test(EngineVsModel, settings=model_settings(EXAMPLES, STEPS, derandomize=True))
