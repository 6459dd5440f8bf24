"""Replay a scenario through the engine on a virtual clock and check it.

Theory of operation
-------------------
The replay feeds the engine exactly what the live service fed it, in the
same order, stamped with the recorded times:

* ``frame`` lines go through the platform's own parser
  (:func:`adapters.yeastar.frames.parse_frame`), so a bad frame is counted
  and skipped just as live (a frame stored decoded skips only the encoding
  and decoding round trip: see :func:`parse_recorded`); Webex deliveries go
  through the Webex adapter itself (:mod:`adapters.replay.webex`);
* ``control`` lines become :class:`~engine.model.TransferRequested` /
  :class:`~engine.model.OperatorRequested` with the recorded transfer ids;
* ``snapshot`` lines become :class:`~engine.model.CallsSnapshot`;
* timers the engine starts fire when virtual time reaches them, interleaved
  with the recorded lines (a timer due at the very time of a line fires
  first: its deadline has passed when that line is handled);
* every :class:`~engine.model.PbxRequest` the engine makes is answered from
  the recording.  Requests are matched by what the PBX saw — action, channel
  and, for ``start``/``blind``, number — in order, because the PBX never sees
  transfer ids.  The answer is fed at the time it was recorded, so it
  interleaves with frames exactly as it did live.  (Webex: the adapter's own
  code turns the request into its REST calls, each answered from the
  recording.)

What differs per platform — reading frames, answering requests, which
recorded answers were never asked for — sits behind :class:`Pbx`:
:class:`_YeastarPbx` here, :class:`adapters.replay.webex.WebexPbx` there.

Nothing waits on a real clock, so an hour of recorded time replays in
milliseconds.  The timeline (who told whom what, for ``--timeline`` and
``--mermaid``) is written only when asked for: checking a scenario never
reads it, and writing it made replaying a recording of frames a third slower.

Where replay and recording disagree the scenario fails, and says where: a
request the replay made that the recording does not have (answered ``ok`` so
the replay can go on), a recorded request the replay never made, an API
request accepted in one and rejected in the other.  Then the scenario's
expectations are checked, and the contract's own rules for every transfer:
at most one ``complete``, no request after a final state.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from adapters.replay.format import (
    AskLine,
    ControlLine,
    FrameLine,
    Input,
    RequestLine,
    RequestPattern,
    Scenario,
    SnapshotLine,
    SuperviseLine,
)
from adapters.replay.timeline import (
    Entry,
    answer_text,
    change_text,
    describe,
    event_text,
    short,
    start_text,
    timer_text,
)
from adapters.yeastar.frames import (
    DATA_NOT_FOUND,
    TOKEN_EXPIRED,
    Parsed,
    answer_error,
    parse_event,
    parse_frame,
)
from engine.engine import Engine
from engine.errors import Rejected
from engine.model import (
    AskRule,
    CallChanged,
    CallsSnapshot,
    CallState,
    CancelTimer,
    Command,
    Event,
    HangupRequested,
    Member,
    MonitorAnswered,
    MonitorRequested,
    OperatorRequested,
    Outcome,
    ParkRequested,
    PbxRequest,
    QueryCalls,
    RequestFinished,
    RuleAnswered,
    RuleNotice,
    StartTimer,
    TimerFired,
    TransferChanged,
    TransferRequested,
)
from engine.rules import RuleEngine, RuleSet

#: finished() reads an answer the same way whatever request it answers: for answers to the
#: supervisor's own requests (call/listen), whose outcome and call id alone are used.
_ANY_REQUEST = PbxRequest("", "", "hangup", "")
#: Times closer than this are the same instant (offsets are recorded to the millisecond).
_EPSILON = 1e-6
#: How a PBX request is recognised in a recording: (action, channel id, number).
Key = tuple[str, str, str | None]


@dataclass(frozen=True, slots=True)
class Made:
    """A PBX request the replay made, at a virtual offset."""

    at: float
    request: PbxRequest


@dataclass(slots=True)
class Report:
    """The outcome of replaying one scenario."""

    name: str
    frames: int = 0
    bad_frames: int = 0
    made: list[Made] = field(default_factory=list)
    #: per transfer: (state, reason) when the replay ended
    states: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: the expected-vs-actual request listing, when the requests differ
    diff: list[str] = field(default_factory=list)
    virtual_s: float = 0.0
    wall_s: float = 0.0
    timeline: list[Entry] = field(default_factory=list)
    #: False for a raw recording without expect lines
    expectations: bool = True
    #: what routing rules did, at virtual offsets (scenarios with rules, ``xferd rules test``)
    rules: list[tuple[float, RuleNotice]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """``PASS name (…)`` or ``FAIL name: first difference``: one line."""
        if self.passed:
            unchecked = "" if self.expectations else ", no expectations"
            return (
                f"PASS {self.name} ({self.frames} frames, {len(self.made)} requests, "
                f"virtual {self.virtual_s:.1f} s in {self.wall_s * 1000:.0f} ms{unchecked})"
            )
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"FAIL {self.name}: {self.problems[0]}{more}"

    def details(self) -> list[str]:
        """What a failing scenario prints below its summary line."""
        if self.passed:
            return []
        return [*self.diff, *(f"  - {problem}" for problem in self.problems[1:])]


def replay(
    scenario: Scenario, *, timeline: bool = True, rules: RuleSet | None = None, dry_run: bool = False
) -> Report:
    """Run ``scenario`` and check it; never raises for what the scenario contains.

    ``timeline=False`` leaves :attr:`Report.timeline` empty and changes nothing else: the
    verdict, the requests and the states never depend on it, and writing a row per event made
    replaying a long recording of frames a third slower.

    ``rules`` replaces the routing rules the scenario carries (``meta.rules``); ``dry_run``
    lets them decide without starting anything (``xferd rules test``: what they *would* send).
    """
    return _Replay(scenario, timeline, rules=rules, dry_run=dry_run).run()


# ----------------------------------------------------------------------------------
# Yeastar: what a recorded request line means to the engine
# ----------------------------------------------------------------------------------


def request_key(request: PbxRequest) -> Key:
    number = request.number if request.action in ("start", "blind") else None
    return (request.action, request.channel_id, number)


def recorded_key(line: RequestLine) -> Key | None:
    """The engine request a recorded ``call/transfer`` / ``call/hangup`` answers (None: not one)."""
    body = line.body
    channel = body.get("channel_id")
    if not isinstance(channel, str):
        return None
    if line.endpoint == "call/hangup":
        return ("hangup", channel, None)
    if line.endpoint != "call/transfer":
        return None
    number = body.get("number")
    if body.get("type") == "blind":
        return ("blind", channel, number if isinstance(number, str) else None)
    op = body.get("attended_operate")
    if op is None:
        return ("start", channel, number if isinstance(number, str) else None)
    return (str(op), channel, None)


def parse_recorded(line: FrameLine, at: float) -> Parsed:
    """Exactly what :func:`parse_frame` makes of ``line.raw()``, without the round trip when possible.

    Why: a frame line written as ``json`` is already decoded; encoding it back to text (``msg``,
    then the frame) only for ``parse_frame`` to decode it twice again was most of the replay's
    cost per frame.  Exact by construction rather than by imitation: the decoded object is used
    only for the frames ``parse_frame`` hands to an event handler — no ``errcode``, a ``type``
    with a handler, ``msg`` an object — and goes to that very handler (:func:`parse_event`,
    shared with the live parser; an object re-encoded and decoded again is an equal ``dict``, and
    the handlers only read it).  Every other frame — text, acks, errors, tolerated or bad types,
    odd ``msg`` — goes through ``parse_frame`` itself.
    """
    frame = line.frame
    if frame is not None and "errcode" not in frame:
        type_ = frame.get("type")
        body = frame.get("msg")
        if type(body) is dict and (type(type_) is int or type(type_) is str):
            parsed = parse_event(type_, body, at)
            if parsed is not None:
                return parsed
    return parse_frame(line.raw(), at)


def finished(line: RequestLine, request: PbxRequest, at: float) -> RequestFinished:
    """The :class:`RequestFinished` the Yeastar adapter made of this answer."""
    ids = (at, request.transfer_id, request.request_id)
    if line.result == "unknown":
        return RequestFinished(*ids, "unknown", errmsg="no usable answer from the PBX")
    if line.result == "error" or line.answer is None:
        return RequestFinished(*ids, "refused", errmsg="the request did not reach the PBX")
    error = answer_error(line.answer)
    if error is None:
        call_id = line.answer.get("call_id")
        return RequestFinished(*ids, "ok", call_id=call_id if isinstance(call_id, str) else None)
    gone = error.errcode == DATA_NOT_FOUND
    return RequestFinished(*ids, "refused", errcode=error.errcode, errmsg=error.errmsg, gone=gone)


def _answers(inputs: Sequence[Input]) -> dict[Key, deque[int]]:
    """Recorded answers to engine requests, by key, in file order.

    A 10004 answer followed by the same request is the adapter renewing its
    token and sending again: only the second answer reached the engine.
    """
    transfer_lines = [
        (index, key)
        for index, line in enumerate(inputs)
        if isinstance(line, RequestLine) and (key := recorded_key(line)) is not None
    ]
    queues: dict[Key, deque[int]] = defaultdict(deque)
    for position, (index, key) in enumerate(transfer_lines):
        line = inputs[index]
        assert isinstance(line, RequestLine)
        retried = (
            line.answer is not None
            and line.answer.get("errcode") == TOKEN_EXPIRED
            and position + 1 < len(transfer_lines)
            and transfer_lines[position + 1][1] == key
        )
        if not retried:
            queues[key].append(index)
    return queues


# ----------------------------------------------------------------------------------
# words for humans
# ----------------------------------------------------------------------------------


def describe_pattern(pattern: RequestPattern) -> str:
    text = f"{pattern.action} {pattern.transfer or '*'}"
    if pattern.number:
        text += f" → {pattern.number}"
    return f"{text} ({pattern.channel_id})" if pattern.channel_id else text


def matches(pattern: RequestPattern, request: PbxRequest) -> bool:
    return (
        pattern.action == request.action
        and pattern.transfer in (None, request.transfer_id)
        and pattern.number in (None, request.number)
        and pattern.channel_id in (None, request.channel_id)
    )


_FRAME_KINDS = {
    "heartbeat": "heartbeat response",
    "ack": "topic_list acknowledged",
    "token_expired": "errcode 10004: token expired",
}


# ----------------------------------------------------------------------------------
# what differs per platform
# ----------------------------------------------------------------------------------


class Pbx(Protocol):
    """A platform's part of a replay (see the module docstring)."""

    def frame(self, line: FrameLine, at: float) -> None:
        """A recorded frame, at virtual time ``at``: count it, queue its events."""

    def request_line(self, index: int, line: RequestLine, at: float) -> None:
        """The replay reached recorded request line ``index``."""

    def made(self, request: PbxRequest) -> None:
        """The engine made ``request``: answer it from the recording (now or later)."""

    def settle(self) -> bool:
        """Run what :meth:`made` deferred; True if anything ran (more may be due)."""

    def leftovers(self) -> list[str]:
        """Recorded answers to requests the replay never made (divergences)."""

    def supervised(self, index: int, line: SuperviseLine, direct: bool) -> int | None:
        """The recorded answer to a supervisor's own request after line ``index`` — its monitor
        request, or (``direct``) the hang-up the service made itself — taken out of what engine
        requests may claim; None if the recording has none."""

    def outcome(self, line: RequestLine) -> tuple[Outcome, str | None]:
        """A recorded answer to a supervisor's own request: its outcome and the call id it names."""


class _YeastarPbx:
    """Yeastar: stateless frames, one recorded ``call/transfer`` answer per engine request."""

    def __init__(self, host: _Replay) -> None:
        self.host = host
        self.answers = _answers(host.scenario.inputs)
        self.bound: dict[int, PbxRequest] = {}  # recorded answer line → the request it answers

    def frame(self, line: FrameLine, at: float) -> None:
        host = self.host
        parsed = parse_recorded(line, at)
        host.report.frames += 1
        if parsed.kind == "bad":
            host.report.bad_frames += 1
            if host.notes:
                host.note(at, "PBX", "xferd", f"bad frame skipped ({parsed.bad}): {line.raw()[:60]}")
            return
        if not parsed.events:
            if host.notes:
                text = _FRAME_KINDS.get(parsed.kind)
                if text is None:
                    kind = parsed.kind
                    text = f"errcode {parsed.errcode}" if kind == "error" else f"{kind} (ignored)"
                host.note(at, "PBX", "xferd", text)
            return
        for event in parsed.events:
            if host.notes:
                skipped = f" [a member skipped: {parsed.bad}]" if parsed.bad else ""
                host.note(at, "PBX", "xferd", event_text(event) + skipped)
            host.feed(event)

    def request_line(self, index: int, line: RequestLine, at: float) -> None:
        request = self.bound.pop(index, None)
        if request is not None:
            self.host.answered(request, finished(line, request, at))
        elif self.host.notes and recorded_key(line) is None:
            self.host.note(at, "xferd", "PBX", _recorded_text(line))
        # else: an answer no request has claimed yet; a later request may claim it

    def made(self, request: PbxRequest) -> None:
        host = self.host
        queue = self.answers.get(request_key(request))
        if not queue:
            host.diverged(f"the replay made {describe(request)}, which the recording does not have")
            host.soon.append(RequestFinished(host.now, request.transfer_id, request.request_id, "ok"))
            return
        index = queue.popleft()
        if index < host.index:  # its answer was recorded before the replay asked: answer now
            line = host.scenario.inputs[index]
            assert isinstance(line, RequestLine)
            host.answered(request, finished(line, request, host.now))
        else:
            self.bound[index] = request

    def settle(self) -> bool:
        return False

    def leftovers(self) -> list[str]:
        return unclaimed(self.host.scenario.inputs, self.answers.values(), _recorded_text)

    def supervised(self, index: int, line: SuperviseLine, direct: bool) -> int | None:
        inputs = self.host.scenario.inputs
        if direct:  # a call/hangup no engine request will claim
            return take_after(self.answers.get(("hangup", line.channel_id or "", None)), index)
        return next_answer(
            inputs,
            index,
            lambda found: (
                found.endpoint == "call/listen"
                and found.body.get("channel_id") == line.channel_id
                and found.body.get("monitor") == line.monitor
            ),
        )

    def outcome(self, line: RequestLine) -> tuple[Outcome, str | None]:
        result = finished(line, _ANY_REQUEST, 0.0)
        return result.outcome, result.call_id


# ----------------------------------------------------------------------------------
# the replay
# ----------------------------------------------------------------------------------


class _Replay:
    def __init__(
        self,
        scenario: Scenario,
        timeline: bool = True,
        *,
        rules: RuleSet | None = None,
        dry_run: bool = False,
    ) -> None:
        self.scenario = scenario
        #: write the timeline (``note``); every note's text is built only when this is set
        self.notes = timeline
        self.start = scenario.meta.start
        self.engine = Engine(scenario.meta.engine_policy())
        self.report = Report(scenario.name)
        self.now = self.start  # the virtual clock: never goes back
        self.at = self.start  # the time stamped on the event being handled
        self.index = -1
        self.timers: dict[tuple[str, str], float] = {}
        self.heap: list[tuple[float, int, str, str]] = []
        self.seq = itertools.count()
        self.soon: deque[Event] = deque()  # answers due at once, fed after the current batch
        self.history: dict[str, int] = {}  # history entries already shown, per transfer
        self.final: set[str] = set()
        self.divergences: list[str] = []
        self.invariants: list[str] = []
        self.pbx: Pbx
        if scenario.meta.platform == "webex":
            from adapters.replay.webex import WebexPbx  # the Webex adapter, only when needed

            self.pbx = WebexPbx(self)
        else:
            self.pbx = _YeastarPbx(self)
        self._rules_setup(rules if rules is not None else scenario.ruleset, dry_run)
        #: recorded answers to supervisors' own requests → the monitor session (None: a direct hang-up)
        self.supervised: dict[int, str | None] = {}

    # -- driving -----------------------------------------------------------------
    def run(self) -> Report:
        started = time.perf_counter()
        inputs = self.scenario.inputs
        start, heap = self.start, self.heap
        for index, line in enumerate(inputs):
            self.index = index
            at = start + line.at
            if heap and heap[0][0] <= at + _EPSILON:  # the test of _fire_until, without the call per line
                self._fire_until(at)
            if at > self.now:
                self.now = at
            if isinstance(line, FrameLine):
                self.pbx.frame(line, at)
                self.drain()
            elif isinstance(line, ControlLine):
                self._control(line, at)
            elif isinstance(line, SnapshotLine):
                self._snapshot(line, at)
            elif isinstance(line, AskLine):
                self._ask_line(index, line, at)
            elif isinstance(line, SuperviseLine):
                self._supervise(index, line, at)
            elif self.supervised and index in self.supervised:
                self._supervised_answer(index, line, at)
            else:
                self.pbx.request_line(index, line, at)
                self.drain()
        end = self.scenario.end if self.scenario.end is not None else (inputs[-1].at if inputs else 0.0)
        self._fire_until(self.start + end)
        self.divergences.extend(self.pbx.leftovers())
        report = self.report
        report.virtual_s = end
        report.wall_s = time.perf_counter() - started
        self._check()
        return report

    def _control(self, line: ControlLine, at: float) -> None:
        event: TransferRequested | OperatorRequested
        if line.body is not None:
            body = line.body
            event = TransferRequested(
                at=at,
                transfer_id=line.transfer,
                number=body.number,
                type=body.type,
                channel_id=body.channel_id,
                extension=body.extension,
                dial_permission=body.dial_permission,
                policy=body.policy,
            )
            text = start_text(line.transfer, body.channel_id, body.extension, body.number, body.type)
        else:
            assert line.op != "start"
            event = OperatorRequested(at=at, transfer_id=line.transfer, op=line.op)
            text = f"{line.op} {line.transfer}"
        self._client(event, text, f"{line.op} {line.transfer}", line.at, line.rejected)

    def _client(
        self, event: Event, text: str, what: str, offset: float, recorded: str | None
    ) -> list[Command] | None:
        """Feed a client's request (API or supervisor) as live: the engine's commands when it
        accepted it, None when it refused.  Accepted in one and refused in the other (or refused
        with another code) is a divergence."""
        at = event.at
        self.at = at
        commands: list[Command] | None = None
        try:
            commands = self.engine.handle(event)
        except Rejected as exc:
            self.note(at, "client", "xferd", f"{text} → rejected: {exc.code}")
            rejected: str | None = exc.code
        except Exception as exc:  # an engine bug: report it and go on, as the runtime does
            self.invariants.append(f"+{offset:.3f} s: the engine raised {type(exc).__name__}: {exc}")
            return None
        else:
            self.note(at, "client", "xferd", text)
            rejected = None
            self._apply(commands)
            self.drain()
        if rejected != recorded:
            said = f"rejected ({recorded})" if recorded else "accepted"
            did = f"rejected it ({rejected})" if rejected else "accepted it"
            self.diverged(f"{what} was {said} in the recording; the replay {did}")
        return commands

    # -- supervisor call actions (engine.supervision) ---------------------------------
    def _supervise(self, index: int, line: SuperviseLine, at: float) -> None:
        """Feed a supervisor's action as live; set aside the answers to its own PBX requests."""
        channel = line.channel_id or ""
        event: MonitorRequested | HangupRequested | ParkRequested
        if line.action == "monitor":
            assert line.session is not None and line.mode is not None
            event = MonitorRequested(at, line.session, line.monitor, line.channel_id, line.mode)
            text = f"{line.mode} {line.monitor or 'the user'} on {channel or 'a colleague'}"
        elif line.action == "park":
            event, text = ParkRequested(at, channel), f"park {channel}"
        else:
            event, text = HangupRequested(at, channel), f"hangup {channel}"
        commands = self._client(event, text, text, line.at, line.rejected)
        if commands is None or line.action == "park":
            return  # a park's answer changes nothing in the engine: the frames that follow show it
        # A hang-up of a transfer's leg is that transfer's request: answered as any other.
        direct = line.action == "hangup"
        if direct and any(isinstance(c, PbxRequest) for c in commands):
            return
        found = self.pbx.supervised(index, line, direct)
        if found is None:
            self.diverged(f"the recording has no answer to the supervisor's {text}")
        else:
            self.supervised[found] = line.session if line.action == "monitor" else None

    def _supervised_answer(self, index: int, line: RequestLine, at: float) -> None:
        """The answer to a supervisor's own request: a monitor's outcome goes to the engine."""
        session = self.supervised.pop(index)
        if self.notes:
            self.note(at, "PBX", "xferd", f"supervisor's {request_text(line)}")
        if session is not None:
            outcome, call_id = self.pbx.outcome(line)
            self.feed(MonitorAnswered(at, session, outcome, call_id))

    def _snapshot(self, line: SnapshotLine, at: float) -> None:
        calls = tuple(
            CallState(
                call.call_id,
                tuple(Member(m.kind, m.number, m.channel_id, m.status) for m in call.members),
            )
            for call in line.calls
        )
        if self.notes:
            legs = sum(len(call.members) for call in calls)
            self.note(at, "PBX", "xferd", f"call/query snapshot: {len(calls)} calls, {legs} legs")
        self.feed(CallsSnapshot(at, calls))

    def answered(self, request: PbxRequest, result: RequestFinished) -> None:
        """The platform's answer to ``request``: fed after the current batch."""
        if self.notes:
            self.note(result.at, "PBX", "xferd", answer_text(request, result))
        self.soon.append(result)

    # -- the engine ---------------------------------------------------------------
    def feed(self, event: Event) -> None:
        self.soon.append(event)
        self.drain()

    def drain(self) -> None:
        """Feed the engine what is due, and let the platform run what that started."""
        while True:
            while self.soon:
                event = self.soon.popleft()
                self.at = event.at
                try:
                    commands = self.engine.handle(event)
                except Exception as exc:  # an engine bug: report it, go on as the runtime does
                    self.invariants.append(
                        f"+{self.offset(event.at):.3f} s: the engine raised {type(exc).__name__}: {exc}"
                    )
                    continue
                if commands:  # most frames change no transfer
                    self._apply(commands)
            if not self.pbx.settle():
                return

    def _apply(self, commands: list[Command]) -> None:
        finished_now: list[str] = []
        for command in commands:
            if isinstance(command, CallChanged):
                continue  # the commonest command, for the API's event stream: a replay has no subscriber
            if isinstance(command, PbxRequest):
                self._made(command)
            elif isinstance(command, StartTimer):
                self.timers[(command.transfer_id, command.timer)] = command.at
                heapq.heappush(self.heap, (command.at, next(self.seq), command.transfer_id, command.timer))
            elif isinstance(command, CancelTimer):
                self.timers.pop((command.transfer_id, command.timer), None)
            elif isinstance(command, QueryCalls):
                self.note(self.at, "xferd", None, f"{command.transfer_id}: reconcile ({command.reason})")
            elif isinstance(command, TransferChanged):
                self._changed(command)
                if command.final:
                    finished_now.append(command.transfer_id)
            elif isinstance(command, RuleNotice):
                self._rule_notice(command)
            elif isinstance(command, AskRule):
                self._asked(command)
        for transfer_id in finished_now:
            # As the runtime does: a final transfer leaves the engine, its timers are dropped.
            self.engine.forget(transfer_id)
            for key in [key for key in self.timers if key[0] == transfer_id]:
                del self.timers[key]

    def _made(self, request: PbxRequest) -> None:
        at = self.at
        self.report.made.append(Made(self.offset(at), request))
        if self.notes:
            self.note(at, "xferd", "PBX", describe(request))
        if request.transfer_id in self.final:
            self.invariants.append(
                f"+{self.offset(at):.3f} s: {short(request)} was made after the transfer had ended"
            )
        self.pbx.made(request)

    def _changed(self, command: TransferChanged) -> None:
        resource = command.resource
        transfer_id = command.transfer_id
        history = resource.get("history") or []
        if self.notes:
            for entry in history[self.history.get(transfer_id, 0) :]:
                self.note(self.at, "xferd", None, change_text(transfer_id, entry))
        self.history[transfer_id] = len(history)
        self.report.states[transfer_id] = (str(resource.get("state")), resource.get("reason"))
        if command.final:
            self.final.add(transfer_id)

    def _fire_until(self, at: float) -> None:
        while self.heap and self.heap[0][0] <= at + _EPSILON:
            due, _, transfer_id, tag = heapq.heappop(self.heap)
            if self.timers.get((transfer_id, tag)) != due:
                continue  # cancelled or restarted
            del self.timers[(transfer_id, tag)]
            self.now = max(self.now, due)
            if self.notes:
                self.note(due, "xferd", None, timer_text(transfer_id, tag))
            self.feed(TimerFired(due, transfer_id, tag))

    # -- routing rules ----------------------------------------------------------------
    def _rules_setup(self, rules: RuleSet | None, dry_run: bool) -> None:
        """Rules decide in the replay as live; their ``ask`` answers come from ``ask`` lines."""
        self.dry_run = dry_run
        self.asks: dict[str, deque[int]] = defaultdict(deque)  # ask id -> recorded answer lines
        self.asked: dict[int, AskRule] = {}  # recorded answer line -> the ask it answers
        if rules is None:
            return
        self.engine.rules = RuleEngine(rules, dry_run=dry_run)
        for index, line in enumerate(self.scenario.inputs):
            if isinstance(line, AskLine):
                self.asks[line.ask_id].append(index)

    def _rule_notice(self, notice: RuleNotice) -> None:
        self.report.rules.append((self.offset(notice.at), notice))
        if self.notes:
            detail = f": {notice.detail}" if notice.detail else ""
            mode = " (shadow)" if notice.mode == "shadow" and notice.outcome != "shadow" else ""
            self.note(
                notice.at,
                "xferd",
                None,
                f"rule {notice.rule} {notice.outcome}{mode} on {notice.trigger}{detail}",
            )

    def _asked(self, command: AskRule) -> None:
        if self.notes:
            self.note(self.at, "xferd", "URL", f"ask {command.url} for rule {command.rule}")
        queue = self.asks.get(command.ask_id)
        if not queue:
            if not self.dry_run:
                self.diverged(
                    f"rule {command.rule} asked {command.url}, which the recording has no answer to"
                )
            return  # unanswered: the rule stays undecided (what ``rules test`` shows as "asked")
        index = queue.popleft()
        if index < self.index:
            line = self.scenario.inputs[index]
            assert isinstance(line, AskLine)
            self._ask_answer(line, self.now)
        else:
            self.asked[index] = command

    def _ask_line(self, index: int, line: AskLine, at: float) -> None:
        if self.asked.pop(index, None) is not None:
            self._ask_answer(line, at)
            self.drain()

    def _ask_answer(self, line: AskLine, at: float) -> None:
        if self.notes:
            said = json.dumps(line.answer, separators=(",", ":")) if line.answer is not None else line.error
            self.note(at, "URL", "xferd", f"answer for {line.ask_id}: {said}")
        self.soon.append(RuleAnswered(at, line.ask_id, line.answer, line.error))

    # -- bookkeeping ------------------------------------------------------------------
    def offset(self, at: float) -> float:
        return round(at - self.start, 6)  # epoch + offset carries float noise; microseconds are plenty

    def note(self, at: float, source: str, dest: str | None, text: str) -> None:
        """One timeline row; callers on a hot path check :attr:`notes` first, to skip the text too."""
        if self.notes:
            self.report.timeline.append(Entry(self.offset(at), source, dest, text))

    def diverged(self, text: str) -> None:
        self.divergences.append(f"+{self.offset(self.at):.3f} s: {text}")
        self.note(self.at, "xferd", None, f"DIVERGENCE: {text}")

    # -- checking -------------------------------------------------------------------
    def _check(self) -> None:
        report = self.report
        scenario = self.scenario
        made = [m.request for m in report.made]
        problems: list[str] = []
        # A raw recording (no expect line yet) is checked for consistency with itself only.
        report.expectations = bool(
            scenario.expected or scenario.finals or scenario.never or scenario.rules_expected
        )
        first, message = _first_difference(scenario.expected, made)
        if message is not None and report.expectations:
            problems.append(message)
            report.diff = _listing(scenario.expected, made, first)
        for final in scenario.finals:
            actual = report.states.get(final.transfer)
            wanted = _state_text(final.state, final.reason)
            if actual is None:
                problems.append(f"{final.transfer}: expected {wanted}, but the replay has no such transfer")
            elif actual != (final.state, final.reason):
                problems.append(f"{final.transfer}: expected {wanted}, got {_state_text(*actual)}")
        for pattern, most in scenario.never:
            count = sum(1 for request in made if matches(pattern, request))
            if count > most:
                problems.append(
                    f"never {describe_pattern(pattern)}: made {count} times, at most {most} allowed"
                )
        for expected, count in scenario.rules_expected:
            done = sum(
                1
                for _, notice in report.rules
                if notice.rule == expected.name
                and notice.outcome == expected.outcome
                and expected.call_id in (None, notice.call_id)
            )
            if done != count:
                problems.append(
                    f"rule {expected.name} {expected.outcome}: expected {count} time(s), happened {done}"
                )
        completes = Counter(r.transfer_id for r in made if r.action == "complete")
        for transfer_id, count in sorted(completes.items()):
            if count > 1:
                self.invariants.append(f"{transfer_id}: {count} complete requests (the contract allows one)")
        report.problems = problems + self.invariants + self.divergences


def _recorded_text(line: RequestLine) -> str:
    key = recorded_key(line)
    if key is not None:
        action, channel, number = key
        what = f"{action} → {number}" if number else action
        return f"{what} ({channel}) answered {line.result}"
    return request_text(line)


def request_text(line: RequestLine) -> str:
    """A recorded request as a person reads it: endpoint, plain body fields, result (and HTTP status)."""
    params = " ".join(f"{k}={v}" for k, v in line.body.items() if isinstance(v, str | int))
    status = f" {line.status}" if line.status else ""
    return f"{line.endpoint}{' ' + params if params else ''} → {line.result}{status}"


def take_after(queue: deque[int] | None, index: int) -> int | None:
    """Take the first recorded answer after line ``index`` out of ``queue`` (engine requests may
    no longer claim it); None if there is none."""
    later = next((i for i in queue or () if i > index), None)
    if queue is not None and later is not None:
        queue.remove(later)
    return later


def next_answer(inputs: Sequence[Input], index: int, wanted: Callable[[RequestLine], bool]) -> int | None:
    """The first recorded request line after ``index`` that is ``wanted``; None if there is none."""
    return next(
        (
            later
            for later in range(index + 1, len(inputs))
            if isinstance(found := inputs[later], RequestLine) and wanted(found)
        ),
        None,
    )


def unclaimed(
    inputs: Sequence[Input], queues: Iterable[Iterable[int]], text: Callable[[RequestLine], str]
) -> list[str]:
    """A divergence per recorded answer left in ``queues`` (line indexes): the replay never made it."""
    left = []
    for queue in queues:
        for index in queue:
            line = inputs[index]
            assert isinstance(line, RequestLine)
            left.append(f"+{line.at:.3f} s: the recording has {text(line)}, which the replay never made")
    return left


def _state_text(state: str, reason: str | None) -> str:
    return f"{state} ({reason})" if reason else state


def _assign(patterns: Sequence[RequestPattern], requests: Sequence[PbxRequest]) -> bool:
    """Can every pattern be matched to a distinct request (any order)?  Bipartite matching."""
    if len(patterns) != len(requests):
        return False
    owner: dict[int, int] = {}  # request index → pattern index

    def place(p: int, seen: set[int]) -> bool:
        for r, request in enumerate(requests):
            if r not in seen and matches(patterns[p], request):
                seen.add(r)
                if r not in owner or place(owner[r], seen):
                    owner[r] = p
                    return True
        return False

    return all(place(p, set()) for p in range(len(patterns)))


def _first_difference(
    steps: Sequence[Sequence[RequestPattern]], made: Sequence[PbxRequest]
) -> tuple[int, str | None]:
    """Position and sentence of the first difference between expected steps and made requests."""
    position = 0
    for step in steps:
        chunk = made[position : position + len(step)]
        if len(step) == 1:
            if not chunk:
                return position, (
                    f"request {position + 1}: expected {describe_pattern(step[0])}, "
                    "but the replay made no more requests"
                )
            if not matches(step[0], chunk[0]):
                return position, (
                    f"request {position + 1}: expected {describe_pattern(step[0])}, got {describe(chunk[0])}"
                )
        elif not _assign(step, chunk):
            wanted = ", ".join(describe_pattern(p) for p in step)
            got = ", ".join(describe(r) for r in chunk) or "nothing"
            return position, (
                f"requests {position + 1}-{position + len(step)}: expected {{{wanted}}} in any order, "
                f"got {{{got}}}"
            )
        position += len(step)
    if position < len(made):
        extra = describe(made[position])
        return position, f"request {position + 1}: unexpected {extra} (no more were expected)"
    return -1, None


def _listing(steps: Sequence[Sequence[RequestPattern]], made: Sequence[PbxRequest], first: int) -> list[str]:
    """Expected and actual requests side by side, the first difference marked ``>``."""
    expected: list[str] = []
    for step in steps:
        for pattern in step:
            expected.append(describe_pattern(pattern) + (" (any order)" if len(step) > 1 else ""))
    width = max([len("expected"), *(len(text) for text in expected)])
    rows = [f"{'':8}{'expected':<{width}}  actual"]
    for i in range(max(len(expected), len(made))):
        mark = ">" if i == first else " "
        want = expected[i] if i < len(expected) else "-"
        got = describe(made[i]) if i < len(made) else "-"
        rows.append(f"  {mark} {i + 1:>2}  {want:<{width}}  {got}")
    return rows
