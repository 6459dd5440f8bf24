"""The transfer chart: theory of operation and the state × stimulus table.

Theory of operation
===================

One attended transfer is a state of :class:`TransferChart` (python-statemachine
``StateChart``) plus the facts it decides on (:class:`engine.transfer.Transfer`).
Its public states are exactly the contract's: ``idle``, ``consulting``,
``swapped``, ``threeway``, ``completed``, ``aborted`` (the last two final).
Every move of a transfer's state is a transition the chart takes; the chart
*instance* is shared (:class:`SharedChart`: one per thread, the transfer's
state bound to it for each move), because building one per transfer cost
0.3–0.8 ms and 40 KB — more than everything else a transfer costs.
The target's own progress (``dialing``/``ringing``/``answered``/``held``/
``gone``) is a fact beside the state, as in the contract's resource.

Everything that can happen to a transfer is a *stimulus*, delivered in one
ordered stream: PBX leg changes, operator ops, timer expiries and the results
of the transfer's own PBX requests.  Handling a stimulus has two steps:

1. **Record.**  The table below names, for the current state, what the
   stimulus means (a transition, an idempotent ignore, or a rejection).  Leg
   changes only record facts (``target answered``, ``transferee gone`` …);
   operator ops are checked against the allowed ops and either sent or
   rejected (409, naming the allowed ops); request results move the chart.
2. **Decide.**  If no request is in flight, the transfer looks at its facts
   and policy and issues at most one PBX request (or ends).  Deciding from
   facts rather than from the last edge is what makes lost, duplicated and
   reordered events harmless: a duplicate changes no fact, a reconciliation
   snapshot sets the facts right, and the decision follows.

Invariants kept by construction:

* **One request in flight per transfer.**  Further decisions wait for its
  result; operator ops get 409 meanwhile.
* **At most one ``complete``.**  ``complete_sent`` is set when the request
  leaves and is never cleared (a refused or unknown ``complete`` is never
  re-sent; the transfer is aborted instead if it cannot be confirmed).
* **Nothing after a final state.**  Final states absorb every stimulus.
* **Unknown outcomes are reconciled, not retried.**  A request that timed
  out makes the transfer ask the PBX for its calls (``QueryCalls``) and
  decide from the snapshot.
* **Timers are tagged** with the attempt they belong to; a timer whose tag is
  no longer armed is stale and ignored, so an answer racing the no-answer
  timeout has exactly one winner: whichever is first in the stream.
* **Restoring** a persisted transfer only sets its state value (validated
  against the chart's states): no entry action runs again, no request is
  re-sent.

State × stimulus table
======================

Cells name the handler in :data:`TABLE`; ``—`` = idempotent ignore (a
duplicate or stale stimulus), ``409`` = rejected with the allowed ops named.
"then decide" applies after every cell: if the facts call for a request and
none is in flight, it is issued (see :meth:`Transfer._decide`).

====================  ===========  ==============  ==============  ==============  ===========  ===========
stimulus              idle         consulting      swapped         threeway        completed    aborted
====================  ===========  ==============  ==============  ==============  ===========  ===========
start accepted        →consulting  —               —               —               —            —
start refused         fallback or  —               —               —               —            —
                      →aborted
                      (pbx_error)
target ringing        note         note ringing    note ringing    —               —            —
target answered       note         on_answer       note (held;     —               —            —
                                   policy          no auto op)
target busy/rejected  note         abort→fallback  abort→fallback  —               —            —
                                   or aborted      or aborted
                                   (target_busy)   (target_busy)
target hangup         note         before answer:  same as         →aborted        —            —
                                   abort→fallback  consulting      (target_hangup)
                                   /target_hangup;
                                   after: abort→
                                   aborted
transferee hangup     note         abort→aborted   abort→aborted   →aborted        —            —
                                   (transferee_    (transferee_    (transferee_
                                   hangup)         hangup)         hangup)
transferor hangup     note         on_transferor_  on_transferor_  →completed      —            —
                                   hangup policy   hangup policy   (transferor_
                                                                   hangup)
timeout (no answer)   —            abort→fallback  abort→fallback  —               —            —
                                   or aborted      or aborted
                                   (no_answer)     (no_answer)
op complete           409          complete        complete        hang up         409          409
                                                                   transferor
op abort              409          abort           abort           hang up target  409          409
op swap               409          swap→swapped    swap→consulting 409             409          409
op threeway           409          threeway (if    threeway (if    409             409          409
                                   answered)       answered)
request result ok     (start) as   per request:    per request     per request     —            —
                      above        complete→compl. …
request result        (start) as   operator: stays per request     per request     —            —
refused               above        (502); policy:
                                   abort(pbx_error)
request result        reconcile    reconcile       reconcile       reconcile       —            —
unknown               (QueryCalls) (QueryCalls)    (QueryCalls)    (QueryCalls)
====================  ===========  ==============  ==============  ==============  ===========  ===========

Notes on the cells:

* ``note`` in ``idle``: the PBX's events can beat the answer to the start
  request; the fact is kept and acted on once the start is accepted.
* In ``swapped`` the transferor is talking to the transferee again, so a
  target answering there is not auto-completed; likewise once an operator
  has swapped or joined three-way, ``on_answer`` no longer applies: a person
  has taken over.
* "abort→fallback": the consultation is aborted; when the abort is accepted
  the next ``fallback_numbers`` entry is dialled as a new attempt of the same
  transfer (``→idle`` then ``→consulting``), else the transfer is aborted
  with the reason.
* A target hang-up after answering sends ``abort`` as a clean-up (whether
  the PBX rebridges by itself is unconfirmed; "gone" counts as done).
  A hang-up in ``threeway`` needs no request: the other two still talk.
* ``on_transferor_hangup = complete`` sends ``complete`` (a refusal meaning
  "channel gone" is the PBX having merged the call itself, as Asterisk's
  "blond" transfer does); ``abort`` hangs up the target leg instead.
* In ``threeway`` the PBX's attended transfer is over (Asterisk ends it
  there), so ``complete`` means "the transferor leaves" and ``abort`` "the
  target leaves": each is a hang-up of that leg.
* An unknown outcome is settled from the PBX's view: a ``complete`` that
  did not happen is never re-sent — the consultation is aborted
  (``pbx_error``) so the caller is given back; an ``abort`` that did not
  happen is sent once more; a ``start`` that did not happen is cleaned up
  with an ``abort`` and counts as a refusal.
* Result cells move the chart only for the request in flight; results for
  anything else are stale and ignored.
"""

from __future__ import annotations

import threading

from statemachine import State, StateChart
from statemachine.model import Model

STATES: tuple[str, ...] = ("idle", "consulting", "swapped", "threeway", "completed", "aborted")
FINAL_STATES = frozenset({"completed", "aborted"})
ACTIVE_STATES = frozenset(STATES) - FINAL_STATES

STIMULI: tuple[str, ...] = (
    "start_accepted",
    "start_refused",
    "target_ringing",
    "target_answered",
    "target_busy",
    "target_hangup",
    "transferee_hangup",
    "transferor_hangup",
    "timeout",
    "op_complete",
    "op_abort",
    "op_swap",
    "op_threeway",
    "result_ok",
    "result_refused",
    "result_unknown",
)

_PARTY = (
    "target_ringing",
    "target_answered",
    "target_busy",
    "target_hangup",
    "transferee_hangup",
    "transferor_hangup",
)
_OPS = ("op_complete", "op_abort", "op_swap", "op_threeway")
_RESULTS = ("start_accepted", "start_refused", "result_ok", "result_refused")


def _table() -> dict[tuple[str, str], str]:
    """Build :data:`TABLE`; every (state, stimulus) pair gets a decided cell.

    Cell values name a :class:`~engine.transfer.Transfer` handler:
    ``ignore`` (idempotent/stale), ``reject`` (409 with the allowed ops),
    ``note`` (record the fact; the decide step acts on it), ``operate``
    (send the op), ``result`` / ``reconcile`` (request results), ``timeout``.
    """
    table: dict[tuple[str, str], str] = {}
    for state in STATES:
        final = state in FINAL_STATES
        for stimulus in STIMULI:
            if final:
                cell = "reject" if stimulus in _OPS else "ignore"
            elif stimulus in _OPS:
                cell = "reject" if state == "idle" else "operate"
            elif stimulus in _PARTY:
                cell = "note"
            elif stimulus == "timeout":
                cell = "ignore" if state in ("idle", "threeway") else "timeout"
            elif stimulus == "result_unknown":
                cell = "reconcile"
            elif stimulus in ("start_accepted", "start_refused"):
                cell = "result" if state == "idle" else "ignore"
            else:  # result_ok / result_refused of the request in flight
                cell = "result"
            table[(state, stimulus)] = cell
    # Cells that differ from the pattern above, decided one by one:
    for op in ("op_swap", "op_threeway"):
        table[("threeway", op)] = "reject"  # already all together; complete or abort
    for stimulus in ("target_ringing", "target_answered", "target_busy"):
        table[("threeway", stimulus)] = "ignore"  # the target answered long ago
    return table


#: (state, stimulus) → handler name.  See the module docstring for meanings.
TABLE: dict[tuple[str, str], str] = _table()
assert set(TABLE) == {(s, x) for s in STATES for x in STIMULI}
assert not set(_RESULTS) - set(STIMULI)


class TransferChart(StateChart[Model]):
    """The six public states and the transitions between them.

    No callbacks: decisions live in :class:`~engine.transfer.Transfer`, which
    sends these events through :class:`SharedChart` and records the history
    (source, target, trigger) from what the chart did.
    """

    allow_event_without_transition = False
    catch_errors_as_events = False

    idle = State(initial=True)
    consulting = State()
    swapped = State()
    threeway = State()
    completed = State(final=True)
    aborted = State(final=True)

    consult_started = idle.to(consulting)
    swap_away = consulting.to(swapped)
    swap_back = swapped.to(consulting)
    join = consulting.to(threeway) | swapped.to(threeway)
    retry = consulting.to(idle) | swapped.to(idle)
    finish_completed = (
        idle.to(completed) | consulting.to(completed) | swapped.to(completed) | threeway.to(completed)
    )
    finish_aborted = idle.to(aborted) | consulting.to(aborted) | swapped.to(aborted) | threeway.to(aborted)


class SharedChart:
    """One :class:`TransferChart` instance that moves every transfer of a thread.

    Why shared: python-statemachine resolves every callback of every state and
    transition for each new instance (``_register_callbacks``) and enters the
    initial state through a full SCXML microstep — 0.3–0.8 ms and 40 KB per
    instance, which capped the engine near 1,000 transfers/s.  The chart keeps
    a transfer's state only in its model's state field, so one instance can
    serve them all: :meth:`move` binds the transfer's state (the library's
    public ``current_state_value``, checked against the chart's states), sends
    the event (the library selects and takes the transition, or raises
    ``TransitionNotAllowed``) and reads the new state back.  The engine is
    single-threaded and the chart has no callbacks, so a move never nests in
    another; one instance per thread keeps that true even when several engines
    run in several threads.

    One thing must be undone by hand: on entering a top-level final state the
    library stops the instance's SCXML engine for good (``is_terminated``), and
    it has no public call to start it again, so :meth:`move` re-arms it — the
    next transfer needs the same instance.  ``tests/engine/test_chart.py``
    fails loudly if a library upgrade changes that.
    """

    __slots__ = ("_chart",)

    def __init__(self) -> None:
        self._chart = TransferChart()

    def move(self, state: str, event: str) -> str:
        """Take ``event`` from ``state``; return the state the chart reached."""
        chart = self._chart
        chart.current_state_value = state
        chart.send(event)
        reached = str(chart.current_state_value)
        if chart.is_terminated:
            chart._engine.running = True  # see the class docstring
        return reached


_local = threading.local()


def shared_chart() -> SharedChart:
    """This thread's :class:`SharedChart` (built on first use)."""
    chart: SharedChart | None = getattr(_local, "chart", None)
    if chart is None:
        chart = _local.chart = SharedChart()
    return chart
