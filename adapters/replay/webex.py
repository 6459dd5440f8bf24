"""Replaying a Webex recording: the real Webex adapter, answered from the file.

Theory of operation
-------------------
The Webex adapter is stateful: it de-duplicates and orders deliveries per
call, maps a call's state against the legs it showed before, remembers which
calls it dialled and which it is ending (an end that is not a failed
attempt), and turns one engine request into several REST calls (hold then
dial; hang up then resume; a re-read of the calls after a 404).  Imitating
all that in the replay would test the imitation.  So a replay runs the
adapter itself (:class:`~adapters.webex.adapter.WebexAdapter`) with three
things swapped:

* its clock is the replay's virtual clock, and its events go to the replay's
  engine — except the snapshots it builds from a listing: the service
  recorded every snapshot it fed the engine as a ``snapshot`` line, and the
  replay feeds those, as on Yeastar;
* its inputs come from the file: a ``frame`` line is a delivery whose
  signature was checked live (:meth:`~adapters.webex.adapter.WebexAdapter.
  accept_delivery`); a ``request`` line of ``GET /telephony/calls`` with the
  plain label — the start-up listing and the polls — is its event source
  (:meth:`~adapters.webex.adapter.WebexAdapter.listed`, or
  :meth:`~adapters.webex.adapter.WebexAdapter.listing_failed`);
* its REST client sends nothing: each request it makes waits for the
  recorded answer to the same request — endpoint label and body — taken in
  file order, and resumes when the replay reaches that line, so answers
  interleave with deliveries as they did live.  The client's own retry logic
  runs: a recorded 429 is retried as live (without the wait), a recorded 401
  makes it renew the token, which works if the recording holds a successful
  token renewal after that 401.

No event loop is involved: :meth:`~adapters.webex.adapter.WebexAdapter.execute`
is a coroutine whose only suspension points are these recorded answers, so
the replay drives it by hand (``send``), one step per answer — deterministic
and as fast as the rest of the replay.  As in the runtime, one transfer's
requests run one at a time, in order, and a request starts only once the
events being handled when it was decided have all reached the engine (the
runtime hands it to a task that runs after the current callback).

Recorded requests nobody asked for: call control and ``(reconcile)``
listings the replay never made are divergences; ``(query)`` listings (their
``snapshot`` line says what they gave), webhook registrations and token
renewals are notes.  A supervisor's own requests (``engine.supervision``) are
not the engine's: a barge-in's answer gives its monitor session the call id,
a hang-up the service made itself is set aside, and parks and retrieves
(whose effect the deliveries show) are notes.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

import structlog

from adapters.base import Observer
from adapters.replay.format import FrameLine, RequestLine, Scenario, SuperviseLine, compact
from adapters.replay.runner import next_answer, request_text, take_after, unclaimed
from adapters.replay.timeline import event_text
from adapters.webex.adapter import CALLS, RECONCILE, WebexAdapter
from adapters.webex.client import ErrorKind, WebexClient, WebexError, redact
from adapters.webex.events import call_id_of
from engine.model import (
    CallsSnapshot,
    Event,
    Outcome,
    PbxRequest,
    RequestFinished,
)

TOKEN_ENDPOINT = "/access_token"
#: Call control only supervisors' actions use (adapters.webex.adapter.WebexAdapter.act): never an
#: engine request's answer.
SUPERVISOR_ENDPOINTS = frozenset({f"{CALLS}/bargeIn", f"{CALLS}/park", f"{CALLS}/retrieve"})
#: (endpoint label, body as compact JSON): how a recorded answer is matched to a request.
Key = tuple[str, str]
_TOKEN_KEY: Key = (TOKEN_ENDPOINT, "")
_QUIET = structlog.ReturnLogger()


class Host(Protocol):
    """What :class:`WebexPbx` uses of the replay (``adapters.replay.runner._Replay``)."""

    scenario: Scenario
    now: float
    index: int
    notes: bool
    soon: deque[Event]
    invariants: list[str]

    @property
    def report(self) -> Any: ...

    def note(self, at: float, source: str, dest: str | None, text: str) -> None: ...

    def diverged(self, text: str) -> None: ...

    def offset(self, at: float) -> float: ...

    def answered(self, request: PbxRequest, result: RequestFinished) -> None: ...


class _Awaiting:
    """What a replayed request yields: it waits for the recorded answer ``key``
    (``token``: the next token renewal recorded after its last answer)."""

    __slots__ = ("key", "token")

    def __init__(self, key: Key, *, token: bool = False) -> None:
        self.key = key
        self.token = token

    def __await__(self) -> Generator[_Awaiting, RequestLine | None, RequestLine | None]:
        line = yield self
        return line


def _key(label: str, body: dict[str, Any] | None) -> Key:
    return (label, compact(redact(body or {})))


class _RecordedExchange:
    """The client's "send": the recorded answer instead (None line: the
    recording has no such request — answered as a bare success)."""

    async def __call__(
        self, method: str, path: str, body: dict[str, Any] | None, label: str, token: str
    ) -> dict[str, Any] | None:
        line = await _Awaiting(_key(label, body))
        if line is None:
            return None
        return answer_of(line)

    async def aclose(self) -> None:
        return None


class _RecordedTokens:
    """The client's token source: no token to send; a renewal after a 401 works
    when the recording shows one that worked."""

    problem: str | None = None

    async def token(self) -> str:
        return "replay"

    async def renew(self, rejected: str) -> bool:
        line = await _Awaiting(_TOKEN_KEY, token=True)
        return line is not None and line.result == "ok"


async def _no_sleep(seconds: float) -> None:
    return None


def answer_of(line: RequestLine) -> dict[str, Any] | None:
    """What the live client returned for ``line``; raises the :class:`WebexError` it raised."""
    if line.result == "ok":
        return line.answer
    if line.result == "error":
        raise WebexError("unreachable", "the request did not reach Webex")
    answer = line.answer or {}
    message = str(answer.get("message") or (f"HTTP {line.status}" if line.status else "no answer"))
    kind: ErrorKind = "unknown" if line.result == "unknown" else "refused"
    raise WebexError(kind, message, status=line.status, retry_after=line.retry_after)


class _Counting(Observer):
    """The adapter's observer in a replay: counts skipped deliveries for the report."""

    def __init__(self, pbx: WebexPbx) -> None:
        self._pbx = pbx

    def bad_frame(self, reason: str, sample: str) -> None:
        host = self._pbx.host
        host.report.bad_frames += 1
        if host.notes:
            host.note(host.now, "PBX", "xferd", f"delivery skipped ({reason})")

    def unmapped_state(self, state: str, personality: str) -> None:
        host = self._pbx.host
        if host.notes:
            host.note(host.now, "PBX", "xferd", f"unmapped state {state}/{personality}: legs kept")


Step = Coroutine[Any, Any, RequestFinished]


class WebexPbx:
    """The Webex part of a replay (``adapters.replay.runner.Pbx``)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        inputs = host.scenario.inputs
        #: recorded answers the replayed requests may claim, per key, in file order
        self.queues: dict[Key, deque[int]] = defaultdict(deque)
        self.token_lines: list[int] = []
        self.claimed_tokens: set[int] = set()
        for index, line in enumerate(inputs):
            if not isinstance(line, RequestLine):
                continue
            if line.endpoint == TOKEN_ENDPOINT:
                self.token_lines.append(index)
            elif line.endpoint in SUPERVISOR_ENDPOINTS:
                continue  # a supervisor's own request (see supervised())
            elif line.endpoint.startswith(CALLS + "/") or line.endpoint == RECONCILE:
                self.queues[_key(line.endpoint, line.body)].append(index)
        self.bound: dict[int, tuple[Step, PbxRequest]] = {}
        self.waiting: dict[str, deque[PbxRequest]] = defaultdict(deque)  # per transfer, not started
        self.running: set[str] = set()
        self.last: dict[str, int] = {}  # per transfer: the last recorded line its request was given
        settings = host.scenario.meta.pbx
        client = WebexClient(
            "replay", _RecordedTokens(), exchange=_RecordedExchange(), sleep=_no_sleep, logger=_QUIET
        )
        self.adapter = WebexAdapter(
            client=client,
            webhook_secret=None,
            events="poll" if settings.get("events") == "poll" else "webhook",
            user_number=settings.get("user_number"),
            observer=_Counting(self),
            clock=lambda: host.now,
            logger=_QUIET,
        )
        self.adapter.attach(self._sink)

    # -- inputs --------------------------------------------------------------

    def frame(self, line: FrameLine, at: float) -> None:
        self.host.report.frames += 1
        if self.host.notes:
            self.host.note(at, "PBX", "xferd", _delivery_text(line))
        self.adapter.accept_delivery(line.raw().encode(), at)

    def request_line(self, index: int, line: RequestLine, at: float) -> None:
        host = self.host
        entry = self.bound.pop(index, None)
        if entry is not None:
            step, request = entry
            self._run(step, request, self._give(request.transfer_id, index))
            return
        if line.endpoint == CALLS and line.result == "ok":
            host.report.frames += 1  # the event source, as a delivery is
            if host.notes:
                items = (line.answer or {}).get("items")
                host.note(at, "PBX", "xferd", f"calls listed: {len(items) if isinstance(items, list) else 0}")
            self.adapter.listed(line.answer)
        elif line.endpoint == CALLS:
            self.adapter.listing_failed(_error_of(line))
            if host.notes:
                host.note(at, "PBX", "xferd", f"calls listing failed: {request_text(line)}")
        elif host.notes and not self._claimable(index, line):
            host.note(at, "xferd", "PBX", request_text(line))

    def _claimable(self, index: int, line: RequestLine) -> bool:
        """Whether a request still to come may claim this answer (said when claimed)."""
        if line.endpoint == TOKEN_ENDPOINT:
            return False
        return index in self.queues.get(_key(line.endpoint, line.body), ())

    def _sink(self, event: Event) -> None:
        if isinstance(event, CallsSnapshot):
            return  # its recorded snapshot line feeds the engine
        if self.host.notes:
            self.host.note(event.at, "PBX", "xferd", event_text(event, {}))
        self.host.soon.append(event)

    # -- requests ------------------------------------------------------------

    def made(self, request: PbxRequest) -> None:
        self.waiting[request.transfer_id].append(request)

    def settle(self) -> bool:
        started = False
        for transfer_id, queue in list(self.waiting.items()):
            if transfer_id in self.running or not queue:
                continue
            request = queue.popleft()
            if not queue:
                del self.waiting[transfer_id]
            self.running.add(transfer_id)
            self._run(self.adapter.execute(request), request, None)
            started = True
        return started

    def _run(self, step: Step, request: PbxRequest, value: RequestLine | None) -> None:
        """Drive ``step`` with ``value`` until it waits for an answer still to come, or ends."""
        host = self.host
        transfer_id = request.transfer_id
        while True:
            try:
                waiting = step.send(value)
            except StopIteration as done:
                self.running.discard(transfer_id)
                host.answered(request, done.value)
                return
            except Exception as exc:  # the adapter raised: its contract says never
                self.running.discard(transfer_id)
                host.invariants.append(
                    f"+{host.offset(host.now):.3f} s: the Webex adapter raised {type(exc).__name__}: {exc}"
                )
                return
            if not isinstance(waiting, _Awaiting):
                step.close()
                self.running.discard(transfer_id)
                host.invariants.append(
                    f"+{host.offset(host.now):.3f} s: the Webex adapter waited on something a replay "
                    f"cannot give ({type(waiting).__name__})"
                )
                return
            index = self._claim(waiting, transfer_id)
            if index is not None and index > host.index:
                self.bound[index] = (step, request)
                return
            value = None
            if index is not None:
                value = self._give(transfer_id, index)

    def _give(self, transfer_id: str, index: int) -> RequestLine:
        """Recorded line ``index`` as the answer a transfer's request gets."""
        self.last[transfer_id] = index
        line = self.host.scenario.inputs[index]
        assert isinstance(line, RequestLine)
        if self.host.notes:
            self.host.note(self.host.now, "xferd", "PBX", request_text(line))
        return line

    def _claim(self, waiting: _Awaiting, transfer_id: str) -> int | None:
        """The recorded line answering ``waiting``, or None (said as a divergence)."""
        if waiting.token:
            after = self.last.get(transfer_id, -1)
            for index in self.token_lines:
                if index > after and index not in self.claimed_tokens:
                    self.claimed_tokens.add(index)
                    return index
            return None
        queue = self.queues.get(waiting.key)
        if queue:
            return queue.popleft()
        label, body = waiting.key
        self.host.diverged(f"the replay made {label} {body}, which the recording does not have")
        return None

    def leftovers(self) -> list[str]:
        return unclaimed(self.host.scenario.inputs, self.queues.values(), request_text)

    # -- supervisors' own requests -----------------------------------------------

    def supervised(self, index: int, line: SuperviseLine, direct: bool) -> int | None:
        inputs = self.host.scenario.inputs
        if direct:  # the service hung the user's call up itself: no engine request claims it
            key = _key(f"{CALLS}/hangup", {"callId": call_id_of(line.channel_id or "")})
            return take_after(self.queues.get(key), index)
        return next_answer(inputs, index, lambda found: found.endpoint == f"{CALLS}/bargeIn")

    def outcome(self, line: RequestLine) -> tuple[Outcome, str | None]:
        try:
            answer = answer_of(line) or {}
        except WebexError as error:
            return ("unknown" if error.kind == "unknown" else "refused"), None
        call_id = answer.get("callId")
        return "ok", call_id if isinstance(call_id, str) else None


# -- words for humans -----------------------------------------------------------


def _error_of(line: RequestLine) -> WebexError:
    try:
        answer_of(line)
    except WebexError as error:
        return error
    raise AssertionError("only for a failed request")  # pragma: no cover - callers check the result


def _delivery_text(line: FrameLine) -> str:
    data = (line.frame or {}).get("data")
    if isinstance(data, dict):
        call, state, personality = data.get("callId"), data.get("state"), data.get("personality")
        return f"delivery: call {call} {state} ({personality})"
    return f"delivery: {line.raw()[:60]}"
