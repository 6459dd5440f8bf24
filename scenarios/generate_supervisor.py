"""Record the supervisor-action scenarios of the library (``supervisor-*.jsonl``).

Usage (from the project root)::

    python scenarios/generate_supervisor.py            # every one
    python scenarios/generate_supervisor.py NAME...    # just these

Recorded live exactly like the rest of the library (``scenarios/generate.py``,
whose machinery this reuses): the real service runtime against the Yeastar
simulator, the supervisor's actions driven through the same functions the
control API calls (:mod:`adapters.service.call_actions`).  Each file holds
the ``supervise`` lines the engine was told of (a monitor, a park, a
hang-up, refused or not) and the PBX's answers to ``call/listen``,
``call/park``, ``call/dial`` and ``call/hangup``; replay feeds the same
actions to the engine and must reach the same decisions.  The point of each
scenario is what the monitor or park does *not* change: the transfer around
it is decided as if no supervisor were there (or, for a hang-up, as if that
party had hung up).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

# ``generate`` is the library's own generator, next to this file (the script's folder is on sys.path).
from generate import (
    ANSWERS,
    HOLD,
    NEVER_RINGS,
    POLICY,
    TARGET,
    TRANSFEREE,
    TRANSFEROR,
    LiveRecording,
    Script,
    Spec,
    channel,
    finish,
    main,
    talking,
    target_status,
)
from generate import scenario as library_scenario

from adapters.base import ActionResult
from adapters.yeastar.simulator import Phone

SUPERVISOR = "2001"  # the supervisor's extension; its phone answers a monitor at once
AUTO = Phone(answer_after=0.05)
RECEPTION = "2000"

SPECS: list[Spec] = []


def scenario(name: str, description: str, **options: Any) -> Callable[[Script], Script]:
    """Register a supervisor scenario (recorded into the library's folder like the others)."""
    return library_scenario(name, description, into=SPECS, **options)


async def monitoring(rec: LiveRecording, watched: str, mode: str) -> str:
    """``SUPERVISOR`` monitors leg ``watched`` in ``mode``; its monitor leg once the engine tracks it."""
    result = await rec.monitor(watched, SUPERVISOR, mode)  # type: ignore[arg-type]
    assert isinstance(result, ActionResult) and result.outcome == "ok", result
    spy = rec.sim.channel_of(SUPERVISOR)
    monitors = rec.runtime.engine.monitors
    await rec.until(lambda: monitors.is_monitor(spy) and rec.leg_status(spy) == "ANSWER")
    return spy


@scenario(
    "supervisor-listen-then-barge",
    "A supervisor (2001) listens to the agent 2005 talking to a caller, hangs its monitor leg up through "
    "the API (no transfer holds it: hung up directly), then barges in. With "
    "the barge-in leg in the call (reported under the call's own id), the agent transfers the caller to "
    "2008: the barge-in leg is neither transferee nor target; 2008 answers; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
)
async def _listen_then_barge(rec: LiveRecording) -> None:
    rec.sim.add_extension(SUPERVISOR, AUTO)
    rec.sim.set_phone(TARGET, ANSWERS)
    await talking(rec)
    agent = channel(rec, TRANSFEROR)
    spy = await monitoring(rec, agent, "listen")
    hung_up = await rec.hangup(spy)  # through the API: a leg no transfer holds, hung up directly
    assert isinstance(hung_up, ActionResult) and hung_up.outcome == "ok", hung_up
    await rec.until(lambda: rec.leg_status(spy) is None)
    await monitoring(rec, agent, "barge")
    assert rec.start("t1", TARGET, channel_id=agent) is None
    assert rec.resource("t1")["transferee"]["channel_id"] == channel(rec, TRANSFEREE)
    await finish(rec)


@scenario(
    "supervisor-whisper-during-consultation",
    "The agent 2005 consults 2008, which rings; the supervisor 2001 whispers to the agent meanwhile: its "
    "leg appears in the consultation's call, answering, and is not taken for the target. 2008 answers "
    "later; complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
)
async def _whisper_during_consultation(rec: LiveRecording) -> None:
    rec.sim.add_extension(SUPERVISOR, AUTO)
    rec.sim.set_phone(TARGET, Phone(answer_after=0.4))
    await talking(rec)
    agent = channel(rec, TRANSFEROR)
    assert rec.start("t1", TARGET, channel_id=agent) is None
    await rec.until(lambda: target_status(rec) == "ringing" and rec.state("t1") == "consulting")
    await monitoring(rec, agent, "whisper")
    assert target_status(rec) == "ringing"
    await finish(rec)


@scenario(
    "supervisor-park-and-retrieve",
    "While 2005 consults 2008 (which never answers), the supervisor tries to park the caller, the "
    "transfer's transferee: refused (transfer_in_progress), nothing sent. The operator aborts (t1 aborted, "
    "operator); the caller is parked (2005 freed), 2000 retrieves it by dialling the slot and transfers "
    "it to 2008, which now answers: t2 completed (policy), with the retrieved caller as transferee.",
    actions={"t1": ["start", "abort"], "t2": ["start", "complete"]},
    final={"t1": ("aborted", "operator"), "t2": ("completed", "policy")},
    policy=HOLD,
)
async def _park_and_retrieve(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await talking(rec)
    caller = channel(rec, TRANSFEREE)
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    await rec.until(lambda: target_status(rec) == "ringing" and rec.state("t1") == "consulting")
    assert await rec.park(caller) == "transfer_in_progress"
    assert rec.operate("t1", "abort") is None
    await rec.reach("t1")
    await rec.until(lambda: rec.leg_status(caller) in ("ANSWER", "ANSWERED"))
    parked = await rec.park(caller)
    assert isinstance(parked, ActionResult) and parked.outcome == "ok" and parked.slot, parked
    await rec.until(lambda: rec.leg_status(caller) == "HOLD")
    retrieved = await rec.retrieve(parked.slot, RECEPTION)
    assert retrieved.outcome == "ok", retrieved
    await rec.until(lambda: rec.leg_status(caller) == "ANSWER")
    rec.sim.set_phone(TARGET, ANSWERS)
    await rec.settle(quiet_s=0.1)
    assert (
        rec.start("t2", TARGET, channel_id=channel(rec, RECEPTION), policy={"on_answer": "complete"}) is None
    )
    assert rec.resource("t2")["transferee"]["channel_id"] == caller
    await finish(rec, "t2")


@scenario(
    "supervisor-monitor-leg-present-while-transfer-completes",
    "The supervisor 2001 listens to the agent 2005 before the agent transfers the caller to 2008: the "
    "monitor leg stays in the caller's call throughout (the PBX ends it when the agent leaves). 2008 "
    "answers; complete; completed (policy); the transferee is the caller, not the monitor.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
)
async def _monitor_leg_present(rec: LiveRecording) -> None:
    rec.sim.add_extension(SUPERVISOR, AUTO)
    rec.sim.set_phone(TARGET, ANSWERS)
    await talking(rec)
    agent = channel(rec, TRANSFEROR)
    spy = await monitoring(rec, agent, "listen")
    assert rec.start("t1", TARGET, channel_id=agent) is None
    assert rec.resource("t1")["transferee"]["channel_id"] == channel(rec, TRANSFEREE)
    await finish(rec)
    assert rec.leg_status(spy) is None  # the monitor ended with the agent's leg


@scenario(
    "supervisor-listens-to-transferee-who-hangs-up",
    "2000 calls the agent 2005; the supervisor 2001 listens to 2000. The agent consults 2008 (which never "
    "answers), then 2000 hangs up: the service knows 2000 (not the monitor leg sharing its call) as the "
    "transferee, so it aborts at once; aborted (transferee_hangup), before any no-answer timeout.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "transferee_hangup")},
)
async def _transferee_hangs_up(rec: LiveRecording) -> None:
    rec.sim.add_extension(SUPERVISOR, AUTO)
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await rec.call(RECEPTION, TRANSFEROR)
    caller = channel(rec, RECEPTION)
    await monitoring(rec, caller, "listen")
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    assert rec.resource("t1")["transferee"]["channel_id"] == caller
    await rec.until(lambda: target_status(rec) == "ringing" and rec.state("t1") == "consulting")
    rec.sim.hangup(caller)
    await finish(rec)


@scenario(
    "supervisor-hangs-up-transferor-during-consultation",
    "The agent 2005 consults 2008 (ringing); the supervisor hangs the agent up. The hang-up is the "
    "transfer's own request (hangup), and once done it is the transferor hang-up: "
    "on_transferor_hangup=complete sends complete, which the PBX answers 60001 (it already completed "
    "the transfer itself when the transferor left); completed (transferor_hangup).",
    actions={"t1": ["start", "hangup", "complete"]},
    final={"t1": ("completed", "transferor_hangup")},
    policy=POLICY,
)
async def _hangup_transferor(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await talking(rec)
    agent = channel(rec, TRANSFEROR)
    assert rec.start("t1", TARGET, channel_id=agent) is None
    await rec.until(lambda: target_status(rec) == "ringing" and rec.state("t1") == "consulting")
    result = await rec.hangup(agent)
    assert isinstance(result, ActionResult) and result.outcome == "ok", result
    await finish(rec)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:], SPECS)))
