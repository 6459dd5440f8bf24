"""Model-based testing: hypothesis drives the engine and the reference model side by side.

Theory of operation
===================

:class:`EngineVsModel` is a hypothesis ``RuleBasedStateMachine``.  It holds a
small PBX *world* (the truth: which legs are up, in which call, with which
status), the real :class:`engine.Engine` and the reference model
(:class:`chaos.reference.RefEngine`).  Two transfers run side by side, each on
its own call (an outside caller on a trunk — the transferee — talking to an
extension — the transferor), each with a target and up to two fallbacks.

Rules are what can happen around a transfer:

* **the PBX**: the target rings, answers, is held, hangs up, is busy (30015),
  does not answer; the transferee or transferor is held, resumed, hangs up;
* **the network** between PBX and xferd: each frame is delivered at once,
  twice, later (out of order) or never (lost); a reconciliation snapshot of
  the world (``call/query``) can arrive at any time;
* **operators**: complete, abort, swap, threeway — allowed or not;
* **request results**: ok (the PBX acts: its frames follow, before or after
  the answer), refused, refused as "gone", unknown (timeout) whether the PBX
  acted or not, not sent (the store failed);
* **timers**: any timer the engine ever started fires (armed or stale), the
  clock moves;
* **restarts**: every transfer is exported as the store keeps it (through
  JSON), a new engine restores them, and a snapshot follows (the reconnect);
  a final transfer is forgotten as the runtime does.

Every event goes to both the engine and the model.  After it, the commands
must be the same (requests, timers, queries, the resource of every change),
and after every step the invariants hold: at most one ``complete`` per
transfer, no request after a final state, never a second request while one
has no answer, every final state has a reason, and the engine's view of each
transfer (resource, allowed ops, the persisted request in flight and timers)
equals the model's.  At the end, everybody hangs up, every request is
answered and every timer fires: every transfer must be final (liveness).

``tests/engine/test_stateful.py`` runs a brief, derandomized share of this in
the suite; ``python -m chaos --model`` runs it long (:func:`run_model`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, invariant, precondition, rule

from chaos.reference import RefEngine, normal
from engine import Engine, Rejected
from engine.model import (
    CallFailed,
    CallsSnapshot,
    CallState,
    CallUpdated,
    Command,
    Event,
    Member,
    OperatorRequested,
    PbxRequest,
    Policy,
    RequestFinished,
    StartTimer,
    TimerFired,
    TransferChanged,
    TransferRequested,
)

T0 = 1_700_000_000.0
TRANSFERS = 2
DEFAULT = Policy(no_answer_timeout_s=20.0)
MAX_RESTARTS = 1  # per example: a restart makes every request in flight unknown

FATES = st.sampled_from(["now", "now", "now", "now", "dup", "delay", "lose"])
TRANSFER = st.integers(min_value=0, max_value=TRANSFERS - 1)
POLICIES = st.fixed_dictionaries(
    {
        "on_answer": st.sampled_from(["complete", "complete", "threeway", "hold"]),
        "answer_delay_s": st.sampled_from([0.0, 0.0, 2.0]),
        "no_answer_timeout_s": st.sampled_from([5.0, 20.0]),
        "on_transferor_hangup": st.sampled_from(["complete", "abort"]),
        "fallbacks": st.integers(min_value=0, max_value=2),
    }
)
OUTCOMES = st.sampled_from(["ok"] * 6 + ["refused", "gone", "unknown_acted", "unknown_not", "unsent"])


def target_number(k: int, attempt: int) -> str:
    """Distinct in their last four digits, so the dialled number names one attempt."""
    return f"5503{k}{attempt}01"


@dataclass
class Leg:
    call: str
    kind: str
    number: str
    status: str


@dataclass
class Tally:
    """What a run of the machine saw (for ``python -m chaos --model``)."""

    examples: int = 0
    steps: int = 0
    events: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    finals: Counter[str] = field(default_factory=Counter)
    restarts: int = 0


#: Filled by every machine that runs (the long run reports it).
TALLY = Tally()


class EngineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.engine = Engine(DEFAULT)
        self.model = RefEngine(DEFAULT)
        self.world: dict[str, Leg] = {}
        self.delayed: list[Event] = []
        self.sent: list[Event] = []
        self.started: set[str] = set()
        self.forgotten: set[str] = set()
        self.consults: dict[str, int] = Counter()  # starts the PBX carried out, per transfer
        self.open: dict[str, PbxRequest] = {}  # the request whose answer the machine may give
        self.unanswered: dict[str, str] = {}  # request ids with no answer at all yet
        self.completes: Counter[str] = Counter()
        self.sent_completes: dict[str, str] = {}
        self.final: set[str] = set()
        self.timers: dict[str, dict[str, float]] = {}  # every timer ever started, per transfer
        self.steps = 0
        self.restarts = 0
        TALLY.examples += 1
        for k in range(TRANSFERS):
            call = f"c{k}"
            self.world[self.transferee(k)] = Leg(call, "inbound", f"09442000{k}", "ANSWERED")
            self.world[self.transferor(k)] = Leg(call, "extension", f"20{k}5", "ANSWER")
            for channel in (self.transferee(k), self.transferor(k)):
                self.emit(channel, "now")

    # -- names ---------------------------------------------------------------------------
    @staticmethod
    def tid(k: int) -> str:
        return f"t{k}"

    @staticmethod
    def transferee(k: int) -> str:
        return f"PJSIP/trunk-in-{k:04x}"

    @staticmethod
    def transferor(k: int) -> str:
        return f"PJSIP/20{k}5-{k:08x}"

    def target_leg(self, k: int) -> str | None:
        """The target leg of the last consultation the PBX set up for transfer k, if up."""
        n = self.consults[self.tid(k)]
        channel = f"PJSIP/trunk-out-{k}-{n:04x}"
        return channel if n and channel in self.world else None

    # -- feeding both ----------------------------------------------------------------------
    def feed(self, event: Event) -> list[Command]:
        TALLY.events += 1
        got: list[Command] = []
        want: list[Command] = []
        got_error = want_error = None
        try:
            got = self.engine.handle(event)
        except Rejected as exc:
            got_error = (
                exc.code,
                exc.detail.rpartition("allowed now: ")[2] if exc.code == "not_allowed" else "",
            )
        try:
            want = self.model.handle(event)
        except Rejected as exc:
            want_error = (
                exc.code,
                exc.detail.rpartition("allowed now: ")[2] if exc.code == "not_allowed" else "",
            )
        assert got_error == want_error, f"{event}: engine rejected {got_error}, model {want_error}"
        assert normal(got) == normal(want), _diff(event, normal(got), normal(want))
        if isinstance(event, RequestFinished) and self.unanswered.get(event.transfer_id) == event.request_id:
            del self.unanswered[event.transfer_id]
            if not event.sent and self.sent_completes.get(event.transfer_id) == event.request_id:
                self.completes[event.transfer_id] -= 1  # it never reached the PBX
        self.observe(got)
        return got

    def observe(self, commands: list[Command]) -> None:
        """The invariants that hold between commands, judged from the commands alone."""
        for command in commands:
            if isinstance(command, PbxRequest):
                t = command.transfer_id
                assert t not in self.final, f"{command.action} request after {t} was final"
                assert t not in self.unanswered, (
                    f"{command.action} while {self.unanswered[t]} still has no answer"
                )
                self.unanswered[t] = command.request_id
                self.open[t] = command
                TALLY.requests[command.action] += 1
                if command.action == "complete":
                    self.sent_completes[t] = command.request_id
                    self.completes[t] += 1
                    assert self.completes[t] == 1, f"a second complete for {t}"
            elif isinstance(command, StartTimer):
                self.timers.setdefault(command.transfer_id, {})[command.timer] = command.at
            elif isinstance(command, TransferChanged) and command.final:
                if command.transfer_id not in self.final:
                    TALLY.finals[f"{command.resource['state']}/{command.resource['reason']}"] += 1
                self.final.add(command.transfer_id)

    def change(self, channel: str, status: str) -> CallUpdated:
        """The PBX changes a leg; the frame that reports it."""
        leg = self.world[channel]
        leg.status = status
        if status == "BYE":
            del self.world[channel]
        return CallUpdated(self.now, leg.call, (Member(leg.kind, leg.number, channel, status),))  # type: ignore[arg-type]

    def emit(self, channel: str, fate: str, status: str | None = None) -> None:
        self.network(self.change(channel, status or self.world[channel].status), fate)

    def network(self, event: Event, fate: str) -> None:
        if fate == "delay":
            self.delayed.append(event)
        elif fate != "lose":
            self.deliver(event)
            if fate == "dup":
                self.deliver(event)

    def deliver(self, event: Event) -> None:
        event = dataclasses.replace(event, at=self.now)  # stamped on arrival, as the runtime does
        self.sent.append(event)
        self.feed(event)

    def truth(self) -> CallsSnapshot:
        calls: dict[str, list[Member]] = {}
        for channel, leg in self.world.items():
            calls.setdefault(leg.call, []).append(Member(leg.kind, leg.number, channel, leg.status))  # type: ignore[arg-type]
        return CallsSnapshot(self.now, tuple(CallState(c, tuple(m)) for c, m in calls.items()))

    # -- choosing among what can happen ---------------------------------------------------
    def which(self, k: int, can: Callable[[int], bool]) -> int | None:
        """Transfer ``k`` if ``can(k)``, else the next one that can (rules never idle)."""
        for i in range(TRANSFERS):
            if can((k + i) % TRANSFERS):
                return (k + i) % TRANSFERS
        return None

    def not_started(self, k: int) -> bool:
        return self.tid(k) not in self.started

    def ringing(self, k: int) -> bool:
        channel = self.target_leg(k)
        return channel is not None and self.world[channel].status == "RING"

    def party_up(self, k: int) -> bool:
        return self.transferee(k) in self.world or self.transferor(k) in self.world

    def active(self, k: int) -> bool:
        return self.tid(k) in self.started and self.tid(k) not in self.forgotten

    def ended(self, k: int) -> bool:
        return self.tid(k) in self.final and self.tid(k) not in self.forgotten

    # -- rules: a transfer starts -----------------------------------------------------------
    @precondition(lambda self: any(self.not_started(k) for k in range(TRANSFERS)))
    @rule(k=TRANSFER, policy=POLICIES)
    def start(self, k: int, policy: dict[str, Any]) -> None:
        k = self.which(k, self.not_started)  # type: ignore[assignment]
        t = self.tid(k)
        overrides = {key: value for key, value in policy.items() if key != "fallbacks"}
        overrides["fallback_numbers"] = [target_number(k, a) for a in range(1, policy["fallbacks"] + 1)]
        self.feed(
            TransferRequested(
                self.now, t, target_number(k, 0), channel_id=self.transferor(k), policy=overrides
            )
        )
        if self.engine.transfer(t) is not None:  # accepted (the transferor may have gone already)
            self.started.add(t)

    # -- rules: the PBX ---------------------------------------------------------------------
    @precondition(lambda self: any(self.target_leg(k) for k in range(TRANSFERS)))
    @rule(
        k=TRANSFER, status=st.sampled_from(["RING", "ANSWER", "ANSWER", "ANSWER", "HOLD", "BYE"]), fate=FATES
    )
    def target(self, k: int, status: str, fate: str) -> None:
        k = self.which(k, lambda k: self.target_leg(k) is not None)  # type: ignore[assignment]
        self.emit(self.target_leg(k), fate, status)  # type: ignore[arg-type]

    @precondition(lambda self: any(self.ringing(k) for k in range(TRANSFERS)))
    @rule(k=TRANSFER, reason=st.sampled_from(["486 Busy Here", "603 Declined", "408 Request Timeout"]))
    def target_fails(self, k: int, reason: str) -> None:
        """A 30015 for the consultation call: its ringing legs are gone."""
        k = self.which(k, self.ringing)  # type: ignore[assignment]
        call = self.world.pop(self.target_leg(k)).call  # type: ignore[arg-type]
        self.network(CallFailed(self.now, call, reason), "now")

    @precondition(lambda self: any(self.party_up(k) for k in range(TRANSFERS)))
    @rule(
        k=TRANSFER,
        role=st.sampled_from(["transferee", "transferor"]),
        status=st.sampled_from(["HOLD", "ANSWER", "HOLD", "ANSWER", "BYE"]),
        fate=FATES,
    )
    def party(self, k: int, role: str, status: str, fate: str) -> None:
        k = self.which(k, self.party_up)  # type: ignore[assignment]
        channel = self.transferee(k) if role == "transferee" else self.transferor(k)
        if channel not in self.world:
            channel = self.transferor(k) if role == "transferee" else self.transferee(k)
        self.emit(channel, fate, status)

    @precondition(lambda self: any(self.active(k) or self.not_started(k) for k in range(TRANSFERS)))
    @rule(k=TRANSFER, policy=POLICIES, fate=FATES)
    def progress(self, k: int, policy: dict[str, Any], fate: str) -> None:
        """The next step of a transfer that goes well (so that deep paths are reached often):
        the PBX accepts what was asked, the target answers, or a transfer starts."""
        k = self.which(k, lambda k: self.active(k) or self.not_started(k))  # type: ignore[assignment]
        t, target = self.tid(k), self.target_leg(k)
        if t in self.open:
            self.pbx_answers(self.open[t], "ok", True, fate)
        elif target is not None and self.world[target].status != "ANSWER":
            self.emit(target, fate, "ANSWER")
        elif self.not_started(k):
            self.start(k, policy)

    # -- rules: the network -----------------------------------------------------------------
    @precondition(lambda self: bool(self.delayed))
    @rule(pick=st.integers(min_value=0, max_value=50))
    def late_frame(self, pick: int) -> None:
        self.deliver(self.delayed.pop(pick % len(self.delayed)))

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(min_value=0, max_value=50))
    def duplicate(self, pick: int) -> None:
        self.deliver(self.sent[-1 - pick % len(self.sent)])

    @precondition(lambda self: bool(self.started))
    @rule()
    def snapshot(self) -> None:
        self.feed(self.truth())

    # -- rules: operators and results ---------------------------------------------------------
    @precondition(lambda self: any(self.active(k) for k in range(TRANSFERS)))
    @rule(k=TRANSFER, op=st.sampled_from(["complete", "abort", "swap", "threeway"]))
    def operator(self, k: int, op: str) -> None:
        k = self.which(k, self.active)  # type: ignore[assignment]
        self.feed(OperatorRequested(self.now, self.tid(k), op))  # type: ignore[arg-type]

    @precondition(lambda self: bool(self.open))
    @rule(k=TRANSFER, outcome=OUTCOMES, frames_first=st.booleans(), fate=FATES)
    def answer(self, k: int, outcome: str, frames_first: bool, fate: str) -> None:
        k = self.which(k, lambda k: self.tid(k) in self.open)  # type: ignore[assignment]
        self.pbx_answers(self.open[self.tid(k)], outcome, frames_first, fate)

    def pbx_answers(self, request: PbxRequest, outcome: str, frames_first: bool, fate: str) -> None:
        """The PBX answers ``request``; if it acted, its frames come before or after the answer."""
        call_id, frames = self.act(request) if outcome in ("ok", "unknown_acted") else (None, [])
        if outcome in ("ok", "refused", "gone", "unsent"):
            del self.open[request.transfer_id]
        if frames_first:
            for frame in frames:
                self.network(frame, fate)
        self.feed(
            RequestFinished(
                self.now,
                request.transfer_id,
                request.request_id,
                "ok" if outcome == "ok" else "unknown" if outcome.startswith("unknown") else "refused",
                call_id=call_id if outcome == "ok" else None,
                errcode={"refused": 10004, "gone": 60001, "unsent": None}.get(outcome),
                errmsg="" if outcome == "ok" else "FAILURE",
                gone=outcome == "gone",
                sent=outcome != "unsent",
            )
        )
        if not frames_first:
            for frame in frames:
                self.network(frame, fate)

    def act(self, request: PbxRequest) -> tuple[str | None, list[CallUpdated]]:
        """The PBX carries ``request`` out: the world changes; the frames that report it."""
        t = request.transfer_id
        k = int(t[1:])
        transferee, transferor, target = self.transferee(k), self.transferor(k), self.target_leg(k)
        call_id = None
        changes: list[tuple[str | None, str]] = []
        if request.action == "start":  # a new consultation: the target rings, the transferee is held
            self.consults[t] += 1
            call_id = f"d{k}-{self.consults[t]}"
            target = f"PJSIP/trunk-out-{k}-{self.consults[t]:04x}"
            self.world[target] = Leg(call_id, "outbound", request.number or "", "RING")
            changes = [(target, "RING"), (transferee, "HOLD")]
        elif request.action == "complete":  # the transferor leaves, the other two talk
            changes = [(transferor, "BYE"), (transferee, "ANSWER")]
        elif request.action == "abort":  # the target leaves, the transferee is back
            changes = [(target, "BYE"), (transferee, "ANSWER")]
        elif request.action == "hangup":
            changes = [(request.channel_id, "BYE")]
        elif request.action == "swap" and target is not None:
            held = self.world[target].status == "HOLD"
            changes = [(target, "ANSWER" if held else "HOLD"), (transferee, "HOLD" if held else "ANSWER")]
        elif request.action == "threeway":
            changes = [(target, "ANSWER"), (transferee, "ANSWER")]
        frames = [self.change(c, s) for c, s in changes if c is not None and c in self.world]
        return call_id, frames

    # -- rules: time ------------------------------------------------------------------------
    @precondition(lambda self: bool(self.timers))
    @rule(k=TRANSFER, pick=st.integers(min_value=0, max_value=20))
    def timer_fires(self, k: int, pick: int) -> None:
        k = self.which(k, lambda k: self.tid(k) in self.timers)  # type: ignore[assignment]
        started = self.timers[self.tid(k)]
        tag = sorted(started)[pick % len(started)]
        self.now = max(self.now, started[tag])
        self.feed(TimerFired(self.now, self.tid(k), tag))

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0, 30.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    # -- rules: restarts --------------------------------------------------------------------
    @precondition(lambda self: bool(self.started) and self.restarts < MAX_RESTARTS)
    @rule()
    def restart(self) -> None:
        TALLY.restarts += 1
        self.restarts += 1
        kept = sorted(self.started - self.forgotten)
        records = [json.loads(json.dumps(self.engine.export(t))) for t in kept]  # through the store's JSON
        fresh = Engine(DEFAULT)
        got = fresh.restore(records)
        want = self.model.restart(kept)
        assert normal(got) == normal(want), _diff("restart", normal(got), normal(want))
        self.engine = fresh
        self.unanswered.clear()  # their answers died with the process: the outcome is unknown
        self.open.clear()
        self.observe(got)
        self.feed(self.truth())  # the reconnect's call/query

    @precondition(lambda self: any(self.ended(k) for k in range(TRANSFERS)))
    @rule(k=TRANSFER)
    def forget(self, k: int) -> None:
        t = self.tid(self.which(k, self.ended))  # type: ignore[arg-type]
        self.forgotten.add(t)
        self.engine.forget(t)
        self.model.forget(t)

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def views_agree(self) -> None:
        self.steps += 1
        TALLY.steps += 1
        for t in sorted(self.started):
            got = self.engine.transfer(t)
            mine = self.model.transfers.get(t)
            if got is None or mine is None:
                assert got is None and mine is None, f"{t}: engine has {got}, model has {mine}"
                continue
            assert got == mine.resource(), _diff(f"{t} resource", got, mine.resource())
            if got["state"] in ("completed", "aborted"):
                assert got["reason"], f"{t} is {got['state']} with no reason"
            transfer = self.engine.get(t)
            assert transfer is not None
            assert transfer.allowed_ops() == mine.allowed_ops(), f"{t}: allowed ops differ"
            saved = self.engine.export(t)
            pending = saved["pending"]
            expected = mine.pending
            assert (pending is None) == (expected is None), f"{t}: in flight {pending} vs {expected}"
            if pending is not None and expected is not None:
                assert (
                    pending["request_id"],
                    pending["action"],
                    pending["unknown"],
                    pending["rechecked"],
                ) == (
                    expected.request_id,
                    expected.action,
                    expected.unknown,
                    expected.rechecked,
                ), f"{t}: in flight {pending} vs {expected}"
            assert saved["timers"] == mine.timers, f"{t}: timers {saved['timers']} vs {mine.timers}"

    def teardown(self) -> None:
        """Liveness: everybody hangs up, every request is answered, every timer fires."""
        for _ in range(12):
            while self.delayed:
                self.deliver(self.delayed.pop(0))
            for channel in list(self.world):
                if channel in self.world:
                    self.emit(channel, "now", "BYE")
            for request in list(self.open.values()):
                self.pbx_answers(request, "ok", True, "now")
            self.feed(self.truth())
            for t in sorted(self.started - self.forgotten):
                transfer = self.engine.get(t)
                for tag, at in sorted((transfer.timers if transfer else {}).items(), key=lambda x: x[1]):
                    self.now = max(self.now, at)
                    self.feed(TimerFired(self.now, t, tag))
            if all(self.engine.transfer(t) is None or t in self.final for t in self.started):
                break
        for t in sorted(self.started - self.forgotten):
            resource = self.engine.transfer(t)
            assert resource is not None and resource["state"] in ("completed", "aborted"), (
                f"{t} never ended: {resource and resource['state']} with everybody gone"
            )


def _diff(what: object, got: Any, want: Any) -> str:
    if isinstance(got, list) and isinstance(want, list):
        lines = [f"engine and model differ after {what}:"]
        for i in range(max(len(got), len(want))):
            a = got[i] if i < len(got) else None
            b = want[i] if i < len(want) else None
            mark = "  " if a == b else "≠ "
            lines.append(f"{mark}engine {a}\n   model  {b}")
        return "\n".join(lines)
    return f"engine and model differ on {what}:\n  engine {got}\n  model  {want}"


def model_settings(examples: int, steps: int, *, derandomize: bool) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        derandomize=derandomize,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@dataclass
class ModelRun:
    examples: int
    steps: int
    events: int
    seconds: float
    requests: dict[str, int]
    finals: dict[str, int]
    restarts: int
    failure: str | None


def run_model(examples: int, steps: int, seed: int) -> ModelRun:
    """The long run for ``python -m chaos --model``: a failure is reported, not raised."""
    global TALLY
    TALLY = Tally()
    started = time.monotonic()
    failure = None
    test = get_state_machine_test(EngineVsModel, settings=model_settings(examples, steps, derandomize=False))
    try:
        hypothesis.seed(seed)(test)()
    except Exception as exc:  # the shrunk counterexample(s) and the steps to each
        found = list(exc.exceptions) if isinstance(exc, ExceptionGroup) else [exc]
        failure = "\n\n".join(
            f"{type(e).__name__}: {e}\n" + "\n".join(getattr(e, "__notes__", [])) for e in found
        )
    return ModelRun(
        TALLY.examples,
        TALLY.steps,
        TALLY.events,
        time.monotonic() - started,
        dict(TALLY.requests),
        dict(TALLY.finals),
        TALLY.restarts,
        failure,
    )
