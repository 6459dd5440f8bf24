"""Regenerate the scenario library by recording the service against the PBX simulators.

Usage (from the project root)::

    python scenarios/generate.py            # every scenario
    python scenarios/generate.py NAME...    # just these (a prefix such as ``webex-`` selects all it starts)

Each scenario below is a short script: it places a call on the simulator,
starts a transfer the way the control API does, and makes the phones (and the
faults) behave as the scenario's name says, while the real service runtime
runs and records (:class:`adapters.replay.live.LiveRecording`).  The
expectations written into the file are what the live service did.

Before a file is written, what happened is checked against what the
contract says must happen (``actions`` and ``final`` of each scenario, from
contract §4): a recording that does not tell that story is not written, and
the generator exits 1.  Then the file is replayed and must pass.

Times are short (phones answer within 0.1 s, the no-answer timeout is 0.4 s)
so the whole library records in well under a minute; the one-hour scenario
is recorded short and its pause stretched afterwards (see its description).

The ``webex-`` scenarios record the Webex adapter against the Webex
simulator (:class:`adapters.replay.live.WebexLiveRecording`): the user of the
simulator is the transferor, callers are external numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.replay.format import RequestPattern, read
from adapters.replay.live import LiveRecording, WebexLiveRecording, expectations
from adapters.replay.runner import replay
from adapters.service import logs
from adapters.webex.simulator import SimVariant
from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig
from engine.model import PbxRequest, Policy

HERE = Path(__file__).resolve().parent

TRANSFEREE = "5551234"  # an external caller, in on trunk "stc"
TRANSFEROR = "2005"  # the extension that took the call and consults
TARGET = "2008"  # an extension
EXTERNAL = "5503301"  # external targets, dialled out through the simulator's trunk
EXTERNAL_2 = "5503302"
ANSWER_S = 0.1
TIMEOUT_S = 0.4
POLICY = Policy(no_answer_timeout_s=TIMEOUT_S)
HOLD = Policy(on_answer="hold", no_answer_timeout_s=TIMEOUT_S)
THREEWAY = Policy(on_answer="threeway", no_answer_timeout_s=TIMEOUT_S)
NEVER_RINGS = Phone(answer_after=None)
ANSWERS = Phone(answer_after=ANSWER_S)

Script = Callable[[Any], Awaitable[None]]  # a LiveRecording, or a WebexLiveRecording for webex-*


@dataclass(frozen=True)
class Spec:
    """One scenario: how to play it and what the contract says must come of it."""

    name: str
    description: str
    script: Script
    actions: dict[str, list[str]]  # per transfer: the PBX requests, in order
    final: dict[str, tuple[str, str | None]]  # per transfer: (state, reason) at the end
    policy: Policy = POLICY
    sim: SimConfig = field(default_factory=SimConfig)
    never: tuple[tuple[dict[str, Any], int], ...] = ()
    request_timeout_s: float = 5.0
    #: group requests that may come in any order (two transfers at once)
    step: Callable[[PbxRequest], str | None] | None = None
    #: stretch the recording after the first line matching this kind/op by this many seconds
    stretch: tuple[str, float] | None = None
    #: how a webex-* scenario's service and simulator are set up (WebexLiveRecording's options)
    webex: dict[str, Any] | None = None


SPECS: list[Spec] = []


def scenario(
    name: str, description: str, *, into: list[Spec] | None = None, **options: Any
) -> Callable[[Script], Script]:
    """Register a scenario script in ``into`` (this library's :data:`SPECS` by default)."""

    def register(script: Script) -> Script:
        (SPECS if into is None else into).append(Spec(name, description, script, **options))
        return script

    return register


# ------------------------------------------------------------------------------------
# helpers for the scripts
# ------------------------------------------------------------------------------------


def channel(rec: LiveRecording, number: str) -> str:
    return rec.sim.channel_of(number)


def target_status(rec: LiveRecording, transfer_id: str = "t1") -> str:
    return str(rec.resource(transfer_id)["target"]["status"])


async def talking(rec: LiveRecording) -> None:
    """The transferee (external caller) talks to the transferor."""
    await rec.call(TRANSFEREE, TRANSFEROR, inbound_trunk="stc")


async def consult(
    rec: LiveRecording, number: str = TARGET, transfer_id: str = "t1", until: str = "ringing", **policy: Any
) -> None:
    """A call, then an attended transfer of it to ``number``, until the target is ``until``."""
    await talking(rec)
    refused = rec.start(transfer_id, number, channel_id=channel(rec, TRANSFEROR), policy=policy or None)
    assert refused is None, refused
    await rec.until(lambda: target_status(rec, transfer_id) == until and rec.state(transfer_id) != "idle")


async def finish(rec: LiveRecording, transfer_id: str = "t1") -> None:
    await rec.reach(transfer_id)
    await rec.settle()


def inject(sim: PbxSimulator, text: str) -> None:
    """Send ``text`` as an event frame to every subscriber, as a misbehaving PBX would.

    Uses the simulator's private fan-out (the path every frame takes); it has
    no public way to send a malformed frame.
    """
    sim._fan_out(30011, text)


# ------------------------------------------------------------------------------------
# contract §4, row by row
# ------------------------------------------------------------------------------------


@scenario(
    "target-answers-complete",
    "The target (extension 2008) answers; on_answer=complete with no delay: the service sends complete "
    "at once and the transfer ends completed (policy). Contract §4 row 1.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    never=(({"action": "abort"}, 0),),
)
async def _target_answers_complete(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec)
    await finish(rec)


@scenario(
    "target-answers-complete-after-answer-delay",
    "An external target answers; answer_delay_s=0.3: the service waits 0.3 s after the answer, then sends "
    "complete; completed (policy). Contract §4 row 1 with a delay.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    policy=Policy(answer_delay_s=0.3, no_answer_timeout_s=TIMEOUT_S),
)
async def _answer_delay(rec: LiveRecording) -> None:
    rec.sim.set_phone(EXTERNAL, ANSWERS)
    await consult(rec, EXTERNAL)
    await finish(rec)


@scenario(
    "target-answers-threeway",
    "The target answers; on_answer=threeway: the service sends threeway and the transfer stays in "
    "threeway (all three talk; not a final state). Contract §4 row 2.",
    actions={"t1": ["start", "threeway"]},
    final={"t1": ("threeway", None)},
    policy=THREEWAY,
)
async def _target_answers_threeway(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec)
    await rec.reach("t1", "threeway")
    await rec.settle()


@scenario(
    "target-answers-hold-operator-completes",
    "The target answers; on_answer=hold: the service sends nothing by itself. An operator then asks for "
    "complete; completed (operator). Contract §4 row 3.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "operator")},
    policy=HOLD,
)
async def _hold_operator_completes(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    await rec.settle()  # nothing happens while on_answer=hold
    assert rec.operate("t1", "complete") is None
    await finish(rec)


@scenario(
    "target-answers-hold-operator-aborts",
    "The target answers; on_answer=hold. The operator aborts: abort, and the transferor is back with the "
    "transferee; aborted (operator).",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "operator")},
    policy=HOLD,
    never=(({"action": "complete"}, 0),),
)
async def _hold_operator_aborts(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    assert rec.operate("t1", "abort") is None
    await finish(rec)


@scenario(
    "target-no-answer-aborts",
    "The target rings and never answers. After no_answer_timeout_s (0.4 s) the service sends abort; no "
    "fallback numbers, so aborted (no_answer). Contract §4 row 4.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "no_answer")},
    never=(({"action": "complete"}, 0),),
)
async def _no_answer(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await consult(rec)
    await finish(rec)


@scenario(
    "target-no-answer-fallback-answers",
    "2008 never answers; after the timeout the service aborts and tries the first fallback number, an "
    "external target that answers; complete; completed (policy). Contract §4 row 4 with a fallback.",
    actions={"t1": ["start", "abort", "start", "complete"]},
    final={"t1": ("completed", "policy")},
    policy=Policy(no_answer_timeout_s=TIMEOUT_S, fallback_numbers=(EXTERNAL,)),
)
async def _no_answer_fallback(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    rec.sim.set_phone(EXTERNAL, ANSWERS)
    await consult(rec)
    await finish(rec)


@scenario(
    "target-busy-aborts",
    "The target is busy (30015 486 Busy Here). The PBX still holds the consultation, so the service sends "
    "abort; aborted (target_busy). Contract §4 row 5.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "target_busy")},
    never=(({"action": "complete"}, 0),),
)
async def _busy(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, Phone(busy=True))
    await talking(rec)
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    await finish(rec)


@scenario(
    "target-busy-fallback-answers",
    "2008 is busy; the service aborts the consultation and dials the fallback, an external target that "
    "answers; complete; completed (policy). Contract §4 row 5 with a fallback.",
    actions={"t1": ["start", "abort", "start", "complete"]},
    final={"t1": ("completed", "policy")},
    policy=Policy(no_answer_timeout_s=TIMEOUT_S, fallback_numbers=(EXTERNAL,)),
)
async def _busy_fallback(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, Phone(busy=True))
    rec.sim.set_phone(EXTERNAL, ANSWERS)
    await talking(rec)
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    await finish(rec)


@scenario(
    "target-rejects-aborts",
    "The target rings, then declines (30015 603 Declined): abort; aborted (target_busy, the contract's "
    "reason for a busy or rejecting target). Contract §4 row 5.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "target_busy")},
)
async def _rejects(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, Phone(answer_after=None, reject_after=0.1))
    await consult(rec)
    await finish(rec)


@scenario(
    "target-hangs-up-while-ringing",
    "The target's leg goes away while ringing, without a 30015 (a BYE only): abort; aborted "
    "(target_hangup). Contract §4 row 5.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "target_hangup")},
)
async def _target_hangs_up_ringing(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await consult(rec)
    rec.sim.hangup(channel(rec, TARGET))
    await finish(rec)


@scenario(
    "target-hangs-up-after-answer",
    "on_answer=hold; the target answers, talks, then hangs up. Whether the PBX puts the transferor back "
    "with the transferee by itself is unconfirmed, so the service sends abort as a clean-up (a 60001 answer "
    "would count as done) and the transferee is never left on hold: aborted (target_hangup). Contract §4 "
    "row 6.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "target_hangup")},
    policy=HOLD,
)
async def _target_hangs_up_answered(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    rec.sim.hangup(channel(rec, TARGET))
    await finish(rec)


@scenario(
    "transferee-hangs-up-while-target-rings",
    "The transferee hangs up while the target still rings. The PBX ends the transfer itself and leaves the "
    "transferor with the ringing target (Asterisk's FAIL), so the service's abort is answered 60001 (no "
    "such transfer), taken as done; aborted (transferee_hangup). Contract §4 row 7.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "transferee_hangup")},
)
async def _transferee_hangs_up_ringing(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await consult(rec)
    rec.sim.hangup(channel(rec, TRANSFEREE))
    await finish(rec)


@scenario(
    "transferor-hangs-up-consulting-completes",
    "on_answer=hold, on_transferor_hangup=complete. The target answers; the transferor hangs up: complete "
    "(the PBX has merged the call itself, so it answers 60001, taken as done); completed "
    "(transferor_hangup). Contract §4 row 8.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "transferor_hangup")},
    policy=HOLD,
)
async def _transferor_hangs_up_completes(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    rec.sim.hangup(channel(rec, TRANSFEROR))
    await finish(rec)


@scenario(
    "transferor-hangs-up-consulting-aborts",
    "on_answer=hold, on_transferor_hangup=abort. The target answers; the transferor hangs up. The PBX "
    "merges the call as Asterisk does, so the service hangs up the target leg instead of completing; the "
    "transferee, left alone, is dropped by the PBX; aborted (transferor_hangup). Contract §4 row 8.",
    actions={"t1": ["start", "hangup"]},
    final={"t1": ("aborted", "transferor_hangup")},
    policy=Policy(on_answer="hold", on_transferor_hangup="abort", no_answer_timeout_s=TIMEOUT_S),
    never=(({"action": "complete"}, 0),),
)
async def _transferor_hangs_up_aborts(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    rec.sim.hangup(channel(rec, TRANSFEROR))
    await finish(rec)


@scenario(
    "threeway-then-transferor-leaves",
    "on_answer=threeway: the three talk; then the transferor hangs up, leaving the transferee with the "
    "target: completed (transferor_hangup), no further request. Contract §4 row 9.",
    actions={"t1": ["start", "threeway"]},
    final={"t1": ("completed", "transferor_hangup")},
    policy=THREEWAY,
)
async def _threeway_transferor_leaves(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec)
    await rec.reach("t1", "threeway")
    rec.sim.hangup(channel(rec, TRANSFEROR))
    await finish(rec)


# ------------------------------------------------------------------------------------
# beyond the table
# ------------------------------------------------------------------------------------


@scenario(
    "swap-and-swap-back",
    "on_answer=hold. The operator swaps to the transferee (swapped, target held), swaps back (consulting), "
    "then completes; completed (operator).",
    actions={"t1": ["start", "swap", "swap", "complete"]},
    final={"t1": ("completed", "operator")},
    policy=HOLD,
)
async def _swap_back(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    assert rec.operate("t1", "swap") is None
    await rec.reach("t1", "swapped")
    assert rec.operate("t1", "swap") is None
    await rec.until(lambda: rec.state("t1") == "consulting" and target_status(rec) == "answered")
    assert rec.operate("t1", "complete") is None
    await finish(rec)


@scenario(
    "transferee-hangs-up-before-consultation-accepted",
    "The transferee hangs up just before the PBX gets the start request (the transfer is still idle). The "
    "PBX drops the lone transferor as well and refuses the start with 60001; nothing was consulted; "
    "aborted (transferee_hangup): the transferee left first.",
    actions={"t1": ["start"]},
    final={"t1": ("aborted", "transferee_hangup")},
)
async def _transferee_hangs_up_idle(rec: LiveRecording) -> None:
    await talking(rec)
    rec.before("start", lambda _: rec.sim.hangup(channel(rec, TRANSFEREE)))
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    await finish(rec)


@scenario(
    "transferee-hangs-up-after-target-answered",
    "on_answer=hold. The target answers, then the transferee hangs up: abort (60001: the PBX already "
    "ended the consultation, taken as done); the transferor stays with the target; aborted "
    "(transferee_hangup).",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "transferee_hangup")},
    policy=HOLD,
)
async def _transferee_hangs_up_answered(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    rec.sim.hangup(channel(rec, TRANSFEREE))
    await finish(rec)


@scenario(
    "transferee-hangs-up-while-swapped",
    "on_answer=hold. The operator swaps back to the transferee, who then hangs up: abort (60001, taken as "
    "done); aborted (transferee_hangup).",
    actions={"t1": ["start", "swap", "abort"]},
    final={"t1": ("aborted", "transferee_hangup")},
    policy=HOLD,
)
async def _transferee_hangs_up_swapped(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    assert rec.operate("t1", "swap") is None
    await rec.reach("t1", "swapped")
    rec.sim.hangup(channel(rec, TRANSFEREE))
    await finish(rec)


@scenario(
    "transferee-hangs-up-in-threeway",
    "on_answer=threeway. In the three-way call the transferee hangs up; the transferor and the target go "
    "on talking; aborted (transferee_hangup), no further request.",
    actions={"t1": ["start", "threeway"]},
    final={"t1": ("aborted", "transferee_hangup")},
    policy=THREEWAY,
)
async def _transferee_hangs_up_threeway(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec)
    await rec.reach("t1", "threeway")
    rec.sim.hangup(channel(rec, TRANSFEREE))
    await finish(rec)


@scenario(
    "transferor-hangs-up-while-target-rings",
    "The transferor hangs up while the target still rings (on_transferor_hangup=complete). The PBX does a "
    "'blond' transfer itself (the transferee hears ringback); the service's complete is answered 60001, "
    "taken as done; completed (transferor_hangup). The target answers later and talks to the transferee.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "transferor_hangup")},
)
async def _transferor_hangs_up_ringing(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await consult(rec)
    target = channel(rec, TARGET)
    rec.sim.hangup(channel(rec, TRANSFEROR))
    await rec.reach("t1")
    rec.sim.answer(target)
    await rec.settle()


@scenario(
    "target-answers-as-no-answer-timeout-fires",
    "The target answers at the moment the no-answer timeout fires, while the service's abort is on its "
    "way (a few ms after the deadline). The timeout is first in the stream and wins: abort; the late "
    "answer changes nothing and the abort drops the target; aborted (no_answer), never a complete.",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "no_answer")},
    never=(({"action": "complete"}, 0),),
)
async def _answer_races_timeout(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await consult(rec)
    target = channel(rec, TARGET)
    rec.before("abort", lambda _: rec.sim.answer(target))
    await finish(rec)


@scenario(
    "operator-complete-races-target-hangup",
    "on_answer=hold. The operator asks for complete just as the answered target hangs up. The PBX refuses "
    "the complete (the consultation's target is gone); the target's BYE decides: the service aborts as a "
    "clean-up, aborted (target_hangup); one complete at most.",
    actions={"t1": ["start", "complete", "abort"]},
    final={"t1": ("aborted", "target_hangup")},
    policy=HOLD,
    never=(({"action": "complete"}, 1),),
)
async def _complete_races_hangup(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    target = channel(rec, TARGET)
    rec.before("complete", lambda _: rec.sim.hangup(target))
    assert rec.operate("t1", "complete") is None
    await finish(rec)


@scenario(
    "duplicated-frames-complete",
    "The PBX sends every event frame twice. Duplicates change nothing: one start, one complete; completed "
    "(policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    never=(({"action": "complete"}, 1),),
)
async def _duplicated(rec: LiveRecording) -> None:
    rec.sim.duplicate_frames = 1.0
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec)
    await finish(rec)


@scenario(
    "reordered-frames-complete",
    "The PBX shuffles its event frames in groups of three (seeded). The engine merges legs by channel and "
    "decides from facts, so the story is unchanged: start, complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    sim=SimConfig(seed=7),
    never=(({"action": "complete"}, 1),),
)
async def _reordered(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await talking(rec)
    rec.sim.reorder_window = 3
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    await finish(rec)


@scenario(
    "garbage-frames-are-skipped",
    "Mid-consultation the PBX sends garbage: text that is not JSON, a JSON array, an event without call_id, "
    "a msg that is not JSON, a member with an unknown status. Each is counted and skipped; the transfer "
    "goes on: start, complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
)
async def _garbage(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, Phone(answer_after=0.3))
    await consult(rec)
    for text in (
        "this is not json",
        "[30011]",
        json.dumps({"type": 30011, "sn": "3631A0SIM001", "msg": json.dumps({"members": []})}),
        json.dumps({"type": 30011, "sn": "3631A0SIM001", "msg": "{not json"}),
        json.dumps(
            {
                "type": 30011,
                "sn": "3631A0SIM001",
                "msg": json.dumps(
                    {
                        "call_id": "1.1",
                        "members": [
                            {"extension": {"number": "2005", "channel_id": "X", "member_status": "?"}}
                        ],
                    }
                ),
            }
        ),
    ):
        inject(rec.sim, text)
    await finish(rec)


@scenario(
    "reconnect-lost-answer-reconciled-by-query",
    "While the target rings the websocket drops; the target answers during the gap, so that frame is lost. "
    "After reconnecting, the call/query snapshot shows the target answered and the service completes; "
    "completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
)
async def _reconnect(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, NEVER_RINGS)
    await consult(rec)
    target = channel(rec, TARGET)
    rec.sim.drop_sockets()
    rec.sim.answer(target)  # its frames go nowhere: no socket is subscribed
    await finish(rec)


@scenario(
    "fallback-chain-of-three-targets",
    "Per-transfer policy with two fallback numbers: 2008 is busy (abort), the first external target never "
    "answers (timeout, abort), the second answers; complete; completed (policy).",
    actions={"t1": ["start", "abort", "start", "abort", "start", "complete"]},
    final={"t1": ("completed", "policy")},
)
async def _fallback_chain(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, Phone(busy=True))
    rec.sim.set_phone(EXTERNAL, NEVER_RINGS)
    rec.sim.set_phone(EXTERNAL_2, ANSWERS)
    await talking(rec)
    policy = {"fallback_numbers": [EXTERNAL, EXTERNAL_2]}
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR), policy=policy) is None
    await finish(rec)


@scenario(
    "pbx-refuses-start",
    "The PBX refuses the consultation (errcode 10009 OPERATION FAILED): nothing was dialled; aborted "
    "(pbx_error).",
    actions={"t1": ["start"]},
    final={"t1": ("aborted", "pbx_error")},
)
async def _refused(rec: LiveRecording) -> None:
    await talking(rec)
    rec.sim.refuse("call/transfer", 10009)
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    await finish(rec)


@scenario(
    "complete-outcome-unknown-reconciled",
    "The PBX acts on complete but its answer never comes (the request times out): the outcome is unknown, "
    "so the service does not resend; it asks call/query, sees the transferor gone, and concludes completed "
    "(policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    request_timeout_s=0.3,
    never=(({"action": "complete"}, 1),),
)
async def _unknown_outcome(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec)
    rec.sim.time_out("call/transfer", act=True, seconds=1.0)
    await finish(rec)


@scenario(
    "blind-transfer",
    "A blind transfer of the transferee to 2008: one blind request; completed (blind) once the PBX accepts.",
    actions={"t1": ["blind"]},
    final={"t1": ("completed", "blind")},
)
async def _blind(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await talking(rec)
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEREE), type="blind") is None
    await finish(rec)


@scenario(
    "two-transfers-at-once",
    "Two calls, two attended transfers at the same time (2005 → 2008, 2000 → an external target). Their "
    "requests interleave, so the expectations group them: both starts (any order), then both completes.",
    actions={"t1": ["start", "complete"], "t2": ["start", "complete"]},
    final={"t1": ("completed", "policy"), "t2": ("completed", "policy")},
    step=lambda request: f"{request.action}s",
)
async def _two_at_once(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, Phone(answer_after=0.2))
    rec.sim.set_phone(EXTERNAL, Phone(answer_after=0.3))
    await talking(rec)
    await rec.call("5551235", "2000", inbound_trunk="stc")
    assert rec.start("t1", TARGET, channel_id=channel(rec, TRANSFEROR)) is None
    assert rec.start("t2", EXTERNAL, channel_id=channel(rec, "2000")) is None
    await rec.reach("t1")
    await finish(rec, "t2")


@scenario(
    "hold-operator-completes-after-an-hour",
    "on_answer=hold; the target answers and the transferor talks to it for an hour before the operator "
    "completes; completed (operator). Recorded with a short pause that was then stretched: every line "
    "from the operator's complete on is 3600 s later than recorded (the engine only sees event times). "
    "Replays in milliseconds.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "operator")},
    policy=HOLD,
    stretch=("complete", 3600.0),
)
async def _an_hour(rec: LiveRecording) -> None:
    rec.sim.set_phone(TARGET, ANSWERS)
    await consult(rec, until="answered")
    await rec.settle()
    assert rec.operate("t1", "complete") is None
    await finish(rec)


# ------------------------------------------------------------------------------------
# Webex Calling (the simulator's user is the transferor)
# ------------------------------------------------------------------------------------

WEBEX_CALLER = "+15552000001"  # the transferee, calling the user
WEBEX_TARGET = "+15553000001"
WEBEX_FALLBACK = "+15553000002"
WEBHOOK: dict[str, Any] = {}


def webex_scenario(name: str, description: str, **options: Any) -> Callable[[Script], Script]:
    options.setdefault("webex", WEBHOOK)
    return scenario(name, description, **options)


async def webex_consult(
    rec: WebexLiveRecording, number: str = WEBEX_TARGET, until: str = "ringing", **policy: Any
) -> str:
    """The caller talks to the user, who starts an attended transfer to ``number``,
    until the target is ``until``; returns the caller's callId (the original call)."""
    original = await rec.call(WEBEX_CALLER)
    refused = rec.start("t1", number, channel_id=original, policy=policy or None)
    assert refused is None, refused
    await rec.until(lambda: target_status(rec) == until and rec.state("t1") != "idle")
    return original


def consult_call(rec: WebexLiveRecording) -> str:
    return str(rec.resource("t1")["target"]["channel_id"]).removesuffix("/remote")


async def webex_finish(rec: WebexLiveRecording) -> None:
    """The transfer ended and every delivery it caused has arrived (polling: two
    more polls after the last call ended were seen)."""
    await rec.reach("t1")
    sim = rec.sim
    await sim.wait_for(lambda: not any(c.personality == "clickToDial" for c in sim.calls()))
    if rec.events == "poll":
        polls = sum(1 for r in sim.requests if r.method == "GET")
        await sim.wait_for(lambda: sum(1 for r in sim.requests if r.method == "GET") >= polls + 2)
    else:
        await sim.drained()
        await rec.settle()


@webex_scenario(
    "webex-nominal",
    "Webex: the user holds the caller and dials the target (hold, dial); the target answers; on_answer="
    "complete: transfer(callId1, callId2) at once; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    never=(({"action": "abort"}, 0),),
)
async def _webex_nominal(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=ANSWER_S)
    await webex_consult(rec)
    await webex_finish(rec)


@webex_scenario(
    "webex-no-answer",
    "Webex: the target rings and never answers; after no_answer_timeout_s (0.4 s) the service aborts: "
    "hangup(callId2), resume(callId1); aborted (no_answer).",
    actions={"t1": ["start", "abort"]},
    final={"t1": ("aborted", "no_answer")},
    never=(({"action": "complete"}, 0),),
)
async def _webex_no_answer(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=None)
    await webex_consult(rec)
    await webex_finish(rec)


@webex_scenario(
    "webex-busy-fallback-answers",
    "Webex: the target is busy — Webex gives no cause: the consult call goes disconnected without ever "
    "being answered, a failed attempt. The service aborts (the hangup finds the call gone: 404, fine; the "
    "caller is resumed) and dials the fallback, who answers; complete; completed (policy).",
    actions={"t1": ["start", "abort", "start", "complete"]},
    final={"t1": ("completed", "policy")},
    policy=Policy(no_answer_timeout_s=TIMEOUT_S, fallback_numbers=(WEBEX_FALLBACK,)),
)
async def _webex_busy_fallback(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, busy=True)
    rec.sim.set_party(WEBEX_FALLBACK, answer_after=ANSWER_S)
    original = await rec.call(WEBEX_CALLER)
    assert rec.start("t1", WEBEX_TARGET, channel_id=original) is None
    await webex_finish(rec)


@webex_scenario(
    "webex-swap-and-swap-back",
    "Webex, on_answer=hold: the target answers; the operator swaps to the caller (hold callId2, resume "
    "callId1: the target shows held), swaps back, then completes; completed (operator).",
    actions={"t1": ["start", "swap", "swap", "complete"]},
    final={"t1": ("completed", "operator")},
    policy=HOLD,
)
async def _webex_swap(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=ANSWER_S)
    await webex_consult(rec, until="answered")
    assert rec.operate("t1", "swap") is None
    await rec.until(lambda: rec.state("t1") == "swapped" and target_status(rec) == "held")
    assert rec.operate("t1", "swap") is None
    await rec.until(lambda: rec.state("t1") == "consulting" and target_status(rec) == "answered")
    assert rec.operate("t1", "complete") is None
    await webex_finish(rec)


@webex_scenario(
    "webex-duplicated-and-reordered-deliveries",
    "Webex delivers every webhook twice and swaps them in pairs. Duplicates (same eventTimestamp) and "
    "overtaken deliveries (older eventTimestamp) are counted and dropped, never applied: one start, one "
    "complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    never=(({"action": "complete"}, 1),),
)
async def _webex_duplicates(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=0.2)
    original = await rec.call(WEBEX_CALLER)
    rec.sim.duplicate_deliveries = rec.sim.reorder_deliveries = True
    assert rec.start("t1", WEBEX_TARGET, channel_id=original) is None
    await webex_finish(rec)


@webex_scenario(
    "webex-throttled-429-retried",
    "Webex answers the hold 429 with Retry-After 0.2 s: Webex did not act, so the client waits and sends "
    "it again (recorded: the 429, then the 204); the transfer goes on: start, complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
)
async def _webex_throttled(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=ANSWER_S)
    original = await rec.call(WEBEX_CALLER)
    rec.sim.throttle(1, 0.2)
    assert rec.start("t1", WEBEX_TARGET, channel_id=original) is None
    await webex_finish(rec)


@webex_scenario(
    "webex-complete-outcome-unknown-reconciled",
    "Webex carries out the transfer but its answer never comes (the request times out after 0.3 s): the "
    "outcome is unknown, so the service does not resend; the deliveries and a listing of the calls show "
    "both of the user's calls gone, and it concludes completed (policy). One complete.",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    never=(({"action": "complete"}, 1),),
    webex={"request_timeout_s": 0.3},
)
async def _webex_unknown(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=ANSWER_S)
    rec.before("complete", lambda _: rec.sim.stall(1, 1.0))
    await webex_consult(rec)
    await webex_finish(rec)


@webex_scenario(
    "webex-undocumented-state-does-not-abort",
    "While the target rings, its call reports combinations the reference does not name (personality "
    "originator with state alerting, then a state earlyMedia without a personality). A live call never loses "
    "a leg: the target's leg keeps ringing, each is counted as unmapped, nothing is decided on it; the "
    "target answers; complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    never=(({"action": "abort"}, 0),),
)
async def _webex_undocumented(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=None)
    await webex_consult(rec)
    consult = consult_call(rec)
    rec.sim.report(consult, "alerting", personality="originator")
    rec.sim.report(consult, "earlyMedia", personality="")
    await rec.sim.drained()
    await rec.settle()
    assert rec.state("t1") == "consulting" and target_status(rec) == "ringing"
    rec.sim.report(consult, "connected", personality="clickToDial")
    await webex_finish(rec)


@webex_scenario(
    "webex-remote-ringing-as-alerting",
    "A cloud that reports the ringing target as connecting, then alerting (and dial first rings the user's "
    "own device, clickToDial + alerting, until it answers): the consultation's alerting after dialling is "
    "not 'nothing dialled yet' — the target's leg keeps ringing; it answers; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    never=(({"action": "abort"}, 0),),
    webex={"variant": SimVariant(remote_ringing="alerting", device_first=True)},
)
async def _webex_alerting(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=0.2)
    original = await rec.call(WEBEX_CALLER)
    assert rec.start("t1", WEBEX_TARGET, channel_id=original) is None
    await webex_finish(rec)


@webex_scenario(
    "webex-polling-complete",
    "Webex without a public URL: events come from GET /telephony/calls every 0.05 s (each answer is "
    "recorded and replayed as the event source). The target answers; complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    webex={"events": "poll"},
)
async def _webex_polling(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=0.2)
    await webex_consult(rec)
    await webex_finish(rec)


@webex_scenario(
    "webex-vanished-call-reconciled-after-404",
    "Polling every 30 s, so the caller's hang-up goes unseen; the operator's complete gets 404 (the call "
    "is gone): the adapter lists the calls at once (recorded as a reconcile listing), ends the vanished "
    "call, and the engine aborts the consultation as a clean-up; aborted (transferee_hangup).",
    actions={"t1": ["start", "complete", "abort"]},
    final={"t1": ("aborted", "transferee_hangup")},
    policy=HOLD,
    never=(({"action": "complete"}, 1),),
    webex={"events": "poll", "poll_interval_s": 30.0, "setup": lambda sim: sim.incoming_call(WEBEX_CALLER)},
)
async def _webex_vanished(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=ANSWER_S)
    original = rec.sim.calls()[0].id  # connected before the service started: its start-up listing has it
    await rec.until(lambda: rec.leg_status(original) == "ANSWER")
    assert rec.start("t1", WEBEX_TARGET, channel_id=original) is None
    await rec.sim.wait_for(lambda: any(c.personality == "clickToDial" for c in rec.sim.calls()))
    consult = next(c.id for c in rec.sim.calls() if c.personality == "clickToDial")
    await rec.sim.wait_for(lambda: getattr(rec.sim.call(consult), "state", "") == "connected")
    rec.sim.hangup_remote(original)  # unseen: the next poll is 30 s away
    assert rec.operate("t1", "complete") is None
    await rec.reach("t1")
    await rec.sim.wait_for(lambda: not rec.sim.calls())


@webex_scenario(
    "webex-token-renewed-after-401",
    "An integration's access token is refused (401) when the consultation starts: the client renews it "
    "once with the refresh token (recorded, tokens masked) and sends the hold again, which works; the "
    "transfer goes on: start, complete; completed (policy).",
    actions={"t1": ["start", "complete"]},
    final={"t1": ("completed", "policy")},
    webex={"oauth": True},
)
async def _webex_token(rec: WebexLiveRecording) -> None:
    rec.sim.set_party(WEBEX_TARGET, answer_after=ANSWER_S)
    original = await rec.call(WEBEX_CALLER)
    rec.sim.revoke_access_tokens()
    assert rec.start("t1", WEBEX_TARGET, channel_id=original) is None
    await webex_finish(rec)


# ------------------------------------------------------------------------------------
# the generator
# ------------------------------------------------------------------------------------


def stretched(lines: list[str], op: str, seconds: float) -> list[str]:
    """Every line from the first control ``op`` on, ``seconds`` later."""
    out: list[str] = []
    shifting = False
    for text in lines:
        obj = json.loads(text)
        shifting = shifting or (obj.get("kind") == "control" and obj.get("op") == op)
        if shifting and "at" in obj:
            obj["at"] = round(obj["at"] + seconds, 3)
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        out.append(text)
    return out


def truth_problems(
    spec: Spec, made: list[PbxRequest], outcomes: dict[str, tuple[str, str | None]]
) -> list[str]:
    """Where the live run departs from what the contract says must happen."""
    problems = []
    for transfer_id, actions in spec.actions.items():
        did = [r.action for r in made if r.transfer_id == transfer_id]
        if did != actions:
            problems.append(f"{transfer_id}: requests {did}, the contract says {actions}")
    extra = sorted({r.transfer_id for r in made} - spec.actions.keys())
    if extra:
        problems.append(f"requests for unexpected transfers {extra}")
    if outcomes != spec.final:
        problems.append(f"outcomes {outcomes}, the contract says {spec.final}")
    return problems


async def generate(spec: Spec, folder: Path) -> list[str]:
    """Record ``spec`` into ``folder``; the problems found (nothing written if any)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{spec.name}.jsonl"
        live: LiveRecording | WebexLiveRecording
        if spec.webex is not None:
            live = WebexLiveRecording(
                path, name=spec.name, description=spec.description, policy=spec.policy, **spec.webex
            )
        else:
            live = LiveRecording(
                path,
                name=spec.name,
                description=spec.description,
                policy=spec.policy,
                sim=spec.sim,
                request_timeout_s=spec.request_timeout_s,
            )
        async with live as rec:
            await spec.script(rec)
            made, outcomes = rec.made, rec.outcomes()
        problems = truth_problems(spec, made, outcomes)
        if problems:
            return problems
        never = [(RequestPattern(**pattern), most) for pattern, most in spec.never]
        step = spec.step
        if step is not None:  # requests of one step next to each other, steps in order of first use
            rank = {label: i for i, label in enumerate(dict.fromkeys(step(r) for r in made))}
            made = sorted(made, key=lambda r: rank[step(r)])
        lines = path.read_text(encoding="utf-8").splitlines()
        if spec.stretch is not None:
            lines = stretched(lines, *spec.stretch)
        lines += expectations(made, outcomes, never, spec.step)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        report = replay(read(path))
        if not report.passed:
            return [report.summary(), *report.details()]
        target = folder / path.name
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        print(report.summary())
        return []


async def main(names: list[str], specs: list[Spec] | None = None) -> int:
    """Record ``names`` (all when empty) of ``specs`` (this library's by default); 1 if one failed."""
    specs = SPECS if specs is None else specs
    logs.configure("console", logging.WARNING)

    def chosen(spec: Spec) -> bool:
        return not names or any(spec.name == name or spec.name.startswith(name) for name in names)

    unknown = {name for name in names if not any(spec.name.startswith(name) for spec in specs)}
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    failed = 0
    for spec in specs:
        if not chosen(spec):
            continue
        problems = await generate(spec, HERE)
        if problems:
            failed += 1
            print(f"NOT WRITTEN {spec.name}:", *problems, sep="\n  ", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
